//! A userspace TCP/IP stack (smoltcp) behind an embedded WireGuard device, for `openProxy`:
//! the tunnel's IP packets never reach a TUN device or the kernel's stack. gotatun hands the
//! decrypted packets to this stack over a channel and takes the stack's packets to encrypt over
//! another (`gotatun::tun::{IpSend, IpRecv}` implemented on channels); the stack runs as one
//! task on the runtime and serves TCP connections and DNS queries to the proxy's connection
//! tasks through requests and per-connection byte channels.
//!
//! Backpressure both ways: bytes from a client wait in a bounded channel until the TCP socket
//! takes them; bytes from the tunnel stay in the socket's receive buffer (closing the window
//! towards the far end) while the client's channel is full. Nothing here sleeps for a fixed
//! time: the task waits for a packet, a request, a wake-up from a connection, or smoltcp's own
//! next timer.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use ipnet::IpNet;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{dns, tcp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{DnsQueryType, HardwareAddress, IpAddress, IpCidr};
use tokio::sync::{mpsc, oneshot, Notify};

/// Each TCP socket's buffers: big enough for a few hundred Mbit/s at the tunnel's RTT.
const TCP_BUFFER: usize = 1 << 20;
/// Chunks a connection task sends towards the tunnel, at most this many in flight.
const CLIENT_CHUNKS: usize = 16;
/// How long a TCP connect through the tunnel may take.
pub const CONNECT_BOUND: Duration = Duration::from_secs(10);
/// How long a DNS query through the tunnel may take.
pub const RESOLVE_BOUND: Duration = Duration::from_secs(5);
/// Packets in flight between gotatun and the stack, each way.
const PACKET_QUEUE: usize = 1024;
/// Local TCP ports: the IANA dynamic range.
const FIRST_PORT: u16 = 49152;
const PORTS: u16 = 16384;
/// A silent far end: keep-alive probes after this much quiet, and the connection is dropped
/// when nothing at all is acknowledged for `TCP_TIMEOUT` (a dead node, a vanished host).
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
const TCP_TIMEOUT: Duration = Duration::from_secs(90);
/// While a connect or a query waits, its bound is checked at least this often.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Egress rounds per wake-up: smoltcp sends one segment per socket per round.
const EGRESS_ROUNDS: usize = 256;

/// Why a connect or a query through the tunnel failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// The far end answered with a reset.
    Refused,
    /// Nothing answered in time.
    Timeout,
    /// The name has no address (or the DNS server said so).
    NotFound,
    /// The stack is gone (the proxy was closed).
    Closed,
    /// Anything else, said in words.
    Other(String),
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetError::Refused => write!(f, "connection refused"),
            NetError::Timeout => write!(f, "timed out"),
            NetError::NotFound => write!(f, "no such host"),
            NetError::Closed => write!(f, "the tunnel is closed"),
            NetError::Other(s) => write!(f, "{s}"),
        }
    }
}

/// One TCP connection through the tunnel, as the proxy's connection task sees it.
pub struct TcpConn {
    /// Bytes from the far end; `None` once it closed its side, or the connection ended
    /// otherwise (see `clean_eof`).
    pub from_tunnel: mpsc::Receiver<Vec<u8>>,
    /// Bytes to the far end; dropping it closes our side.
    pub to_tunnel: mpsc::Sender<Vec<u8>>,
    /// True when `from_tunnel` ended because the far end closed its side (a FIN, after all its
    /// data); false when it ended by a reset, a timeout, or the stack going away: then the
    /// client must not take the end of the stream for a complete answer.
    pub clean_eof: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) wake: Arc<Notify>,
}

enum Request {
    Connect {
        dst: SocketAddr,
        reply: oneshot::Sender<Result<TcpConn, NetError>>,
    },
    Resolve {
        name: String,
        v6: bool,
        reply: oneshot::Sender<Result<IpAddr, NetError>>,
    },
}

/// The handle on a running stack: ask it for connections and names. Dropping every handle
/// (and every connection) ends the stack's task.
#[derive(Clone)]
pub struct NetStack {
    requests: mpsc::UnboundedSender<Request>,
    wake: Arc<Notify>,
}

impl NetStack {
    /// Open a TCP connection to `dst` through the tunnel.
    pub async fn connect(&self, dst: SocketAddr) -> Result<TcpConn, NetError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Connect { dst, reply })
            .map_err(|_| NetError::Closed)?;
        self.wake.notify_one();
        answer.await.map_err(|_| NetError::Closed)?
    }

    /// Resolve `name` with the tunnel's DNS server (A, or AAAA when `v6`).
    pub async fn resolve(&self, name: &str, v6: bool) -> Result<IpAddr, NetError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Resolve {
                name: name.to_string(),
                v6,
                reply,
            })
            .map_err(|_| NetError::Closed)?;
        self.wake.notify_one();
        answer.await.map_err(|_| NetError::Closed)?
    }
}

/// gotatun's side of the packet channels: it sends decrypted packets in (`IpSend`) and takes
/// the stack's packets out (`IpRecv`).
pub struct ToStack(mpsc::Sender<Vec<u8>>);
pub struct FromStack {
    rx: mpsc::Receiver<Vec<u8>>,
    mtu: u16,
}

impl IpSend for ToStack {
    async fn send(&mut self, packet: Packet<Ip>) -> std::io::Result<()> {
        let bytes = packet.into_bytes();
        // A full queue drops the packet, as a congested link would (TCP resends).
        let _ = self.0.try_send(bytes.to_vec());
        Ok(())
    }
}

impl IpRecv for FromStack {
    async fn recv<'a>(
        &'a mut self,
        _pool: &mut PacketBufPool,
    ) -> std::io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        let first = self.rx.recv().await.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the stack stopped")
        })?;
        let mut batch = vec![first];
        while batch.len() < 64 {
            match self.rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        Ok(batch.into_iter().filter_map(|p| {
            Packet::from_bytes(BytesMut::from(&p[..]))
                .try_into_ip()
                .ok()
        }))
    }

    fn mtu(&self) -> MtuWatcher {
        MtuWatcher::new(self.mtu)
    }
}

/// smoltcp's device: two queues of whole IP packets.
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _t: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// A TCP connection as the stack keeps it.
struct Flow {
    handle: SocketHandle,
    /// Set when the far end's FIN ended the stream to the client (see `TcpConn::clean_eof`).
    clean: Arc<std::sync::atomic::AtomicBool>,
    /// Over: removed at the next pass, after one more poll sent what it owes (a RST, a FIN).
    closing: bool,
    /// The far end closed its side with a FIN (as opposed to a reset or a timeout).
    fin_seen: bool,
    /// Until established: where the connection goes.
    reply: Option<oneshot::Sender<Result<TcpConn, NetError>>>,
    /// Given to the caller once established.
    ends: Option<TcpConn>,
    started: std::time::Instant,
    to_client: Option<mpsc::Sender<Vec<u8>>>,
    from_client: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    sent: usize,
    client_done: bool,
}

struct Query {
    handle: dns::QueryHandle,
    reply: oneshot::Sender<Result<IpAddr, NetError>>,
    started: std::time::Instant,
}

/// The packet channels for gotatun, and the stack they lead to (not yet running).
pub struct Parts {
    pub to_stack: ToStack,
    pub from_stack: FromStack,
    pub stack: NetStack,
    runner: Runner,
}

/// Build a stack with the tunnel's addresses (its first IPv4 and first IPv6 one), MTU and DNS
/// server. `seed` (random, per stack) drives TCP initial sequence numbers, DNS query ids and
/// source ports, and the first local port.
pub fn new(addresses: &[IpNet], mtu: u16, dns_server: Option<IpAddr>, seed: u64) -> Parts {
    let first = |v4: bool| addresses.iter().find(|a| a.addr().is_ipv4() == v4).copied();
    let addresses: Vec<IpNet> = [first(true), first(false)].into_iter().flatten().collect();
    let (in_tx, in_rx) = mpsc::channel(PACKET_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(PACKET_QUEUE);
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let wake = Arc::new(Notify::new());
    Parts {
        to_stack: ToStack(in_tx),
        from_stack: FromStack { rx: out_rx, mtu },
        stack: NetStack {
            requests: req_tx,
            wake: wake.clone(),
        },
        runner: Runner {
            addresses,
            mtu,
            dns_server,
            seed,
            packets_in: in_rx,
            packets_out: out_tx,
            requests: req_rx,
            wake,
        },
    }
}

impl Parts {
    /// Start the stack's task on `rt`; it ends when every `NetStack` handle and connection
    /// is gone, or when the returned handle aborts it.
    pub fn spawn(
        self,
        rt: &tokio::runtime::Handle,
    ) -> (NetStack, ToStack, FromStack, tokio::task::JoinHandle<()>) {
        let task = rt.spawn(self.runner.run());
        (self.stack, self.to_stack, self.from_stack, task)
    }
}

struct Runner {
    addresses: Vec<IpNet>,
    mtu: u16,
    dns_server: Option<IpAddr>,
    seed: u64,
    packets_in: mpsc::Receiver<Vec<u8>>,
    packets_out: mpsc::Sender<Vec<u8>>,
    requests: mpsc::UnboundedReceiver<Request>,
    wake: Arc<Notify>,
}

fn smol_addr(a: IpAddr) -> IpAddress {
    match a {
        IpAddr::V4(v) => IpAddress::Ipv4(v),
        IpAddr::V6(v) => IpAddress::Ipv6(v),
    }
}

fn std_addr(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4(v) => IpAddr::V4(v),
        IpAddress::Ipv6(v) => IpAddr::V6(v),
    }
}

impl Runner {
    async fn run(mut self) {
        let mut dev = Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: self.mtu as usize,
        };
        let start = std::time::Instant::now();
        let now = || SmolInstant::from_micros(start.elapsed().as_micros() as i64);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = self.seed;
        let mut iface = Interface::new(config, &mut dev, now());
        iface.update_ip_addrs(|ips| {
            for a in &self.addresses {
                let _ = ips.push(IpCidr::new(smol_addr(a.addr()), a.prefix_len()));
            }
        });
        // Everything goes into the tunnel: a default route through our own address (the IP
        // medium has no neighbours to resolve).
        for a in &self.addresses {
            match a.addr() {
                IpAddr::V4(v) => {
                    let _ = iface.routes_mut().add_default_ipv4_route(v);
                }
                IpAddr::V6(v) => {
                    let _ = iface.routes_mut().add_default_ipv6_route(v);
                }
            }
        }
        let mut sockets = SocketSet::new(vec![]);
        let dns_handle = self.dns_server.map(|s| {
            sockets.add(dns::Socket::new(
                &[smol_addr(s)],
                vec![None, None, None, None, None, None, None, None],
            ))
        });
        let mut flows: Vec<Flow> = Vec::new();
        let mut queries: Vec<Query> = Vec::new();
        let mut next_port: u16 = FIRST_PORT + (self.seed % u64::from(PORTS)) as u16;
        let v4_src = self.addresses.iter().any(|a| a.addr().is_ipv4());
        let v6_src = self.addresses.iter().any(|a| a.addr().is_ipv6());

        loop {
            // Take in whatever arrived.
            while let Ok(p) = self.packets_in.try_recv() {
                dev.rx.push_back(p);
            }
            loop {
                let req = match self.requests.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        if flows.is_empty() {
                            return;
                        }
                        break;
                    }
                };
                match req {
                    Request::Connect { dst, reply } => {
                        let fits = if dst.is_ipv4() { v4_src } else { v6_src };
                        if !fits {
                            let _ = reply.send(Err(NetError::Other(format!(
                                "the tunnel has no {} address",
                                if dst.is_ipv4() { "IPv4" } else { "IPv6" }
                            ))));
                            continue;
                        }
                        let mut sock = tcp::Socket::new(
                            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                        );
                        sock.set_nagle_enabled(false);
                        sock.set_keep_alive(Some(TCP_KEEPALIVE.into()));
                        sock.set_timeout(Some(TCP_TIMEOUT.into()));
                        let Some(port) = pick_port(&mut next_port, &flows, &sockets) else {
                            let _ = reply.send(Err(NetError::Other(
                                "no free local port in the tunnel".into(),
                            )));
                            continue;
                        };
                        if let Err(e) =
                            sock.connect(iface.context(), (smol_addr(dst.ip()), dst.port()), port)
                        {
                            let _ = reply.send(Err(NetError::Other(format!("connect: {e}"))));
                            continue;
                        }
                        let handle = sockets.add(sock);
                        let (to_client, from_tunnel) = mpsc::channel(CLIENT_CHUNKS);
                        let (to_tunnel, from_client) = mpsc::channel(CLIENT_CHUNKS);
                        let clean = Arc::new(std::sync::atomic::AtomicBool::new(false));
                        flows.push(Flow {
                            handle,
                            reply: Some(reply),
                            ends: Some(TcpConn {
                                from_tunnel,
                                to_tunnel,
                                clean_eof: clean.clone(),
                                wake: self.wake.clone(),
                            }),
                            clean,
                            closing: false,
                            fin_seen: false,
                            started: std::time::Instant::now(),
                            to_client: Some(to_client),
                            from_client,
                            pending: Vec::new(),
                            sent: 0,
                            client_done: false,
                        });
                    }
                    Request::Resolve { name, v6, reply } => {
                        let Some(h) = dns_handle else {
                            let _ = reply
                                .send(Err(NetError::Other("the tunnel has no DNS server".into())));
                            continue;
                        };
                        let kind = if v6 {
                            DnsQueryType::Aaaa
                        } else {
                            DnsQueryType::A
                        };
                        let sock = sockets.get_mut::<dns::Socket>(h);
                        match sock.start_query(iface.context(), &name, kind) {
                            Ok(handle) => queries.push(Query {
                                handle,
                                reply,
                                started: std::time::Instant::now(),
                            }),
                            Err(e) => {
                                let _ = reply.send(Err(NetError::Other(format!("{name:?}: {e}"))));
                            }
                        }
                    }
                }
            }

            iface.poll(now(), &mut dev, &mut sockets);
            service_flows(&mut flows, &mut sockets);
            if let Some(h) = dns_handle {
                service_queries(&mut queries, sockets.get_mut::<dns::Socket>(h));
            }
            // Whatever the flows queued goes out in the same round (one segment per socket
            // per egress pass: repeat while they still produce some).
            iface.poll(now(), &mut dev, &mut sockets);
            for _ in 0..EGRESS_ROUNDS {
                let before = dev.tx.len();
                iface.poll_egress(now(), &mut dev, &mut sockets);
                if dev.tx.len() == before {
                    break;
                }
            }
            while let Some(p) = dev.tx.pop_front() {
                if self.packets_out.try_send(p).is_err() {
                    break; // gotatun is behind: drop, TCP resends
                }
            }
            dev.tx.clear();
            if !dev.rx.is_empty() {
                continue;
            }

            // smoltcp's next timer; our own bounds (a connect's, a query's) are checked at
            // least every 250 ms while one is pending. An idle stack sleeps until something
            // arrives: no periodic wake-ups.
            let pending = flows.iter().any(|f| f.reply.is_some()) || !queries.is_empty();
            let mut delay = iface
                .poll_delay(now(), &sockets)
                .map(|d| Duration::from_micros(d.total_micros()));
            if pending {
                delay = Some(delay.map_or(CHECK_EVERY, |d| d.min(CHECK_EVERY)));
            }
            if delay.is_some_and(|d| d.is_zero()) {
                tokio::task::yield_now().await;
                continue;
            }
            let timer = async {
                match delay {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                p = self.packets_in.recv() => match p {
                    Some(p) => dev.rx.push_back(p),
                    None => return,
                },
                _ = self.wake.notified() => {}
                _ = timer => {}
            }
        }
    }
}

/// A local port no flow uses, from the (randomly started) rotation; None when all are taken.
fn pick_port(next: &mut u16, flows: &[Flow], sockets: &SocketSet) -> Option<u16> {
    let used: std::collections::HashSet<u16> = flows
        .iter()
        .filter_map(|f| sockets.get::<tcp::Socket>(f.handle).local_endpoint())
        .map(|e| e.port)
        .collect();
    for _ in 0..PORTS {
        let p = *next;
        *next = next.checked_add(1).unwrap_or(FIRST_PORT); // 65535 wraps to 49152
        if !used.contains(&p) {
            return Some(p);
        }
    }
    None
}

/// Move bytes between each TCP socket and its connection task; settle connects; drop flows
/// that are over (one pass after they ended, so the RST or FIN they owe is sent).
fn service_flows(flows: &mut Vec<Flow>, sockets: &mut SocketSet) {
    flows.retain_mut(|f| {
        if f.closing {
            sockets.remove(f.handle);
            return false;
        }
        let sock = sockets.get_mut::<tcp::Socket>(f.handle);
        if let Some(reply) = f.reply.take() {
            match sock.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    if f.started.elapsed() > CONNECT_BOUND || reply.is_closed() {
                        let _ = reply.send(Err(NetError::Timeout));
                        sock.abort();
                        f.closing = true;
                    } else {
                        f.reply = Some(reply);
                    }
                    return true;
                }
                tcp::State::Closed | tcp::State::Listen => {
                    let _ = reply.send(Err(NetError::Refused));
                    f.closing = true;
                    return true;
                }
                // Established, or further already (an answer and its FIN in one go).
                _ => {
                    let _ = reply.send(Ok(f.ends.take().expect("once")));
                }
            }
        }
        // tunnel -> client, while the client's channel has room
        if let Some(tx) = &f.to_client {
            if tx.is_closed() {
                // The client stopped reading: nothing more goes to it.
                sock.abort();
                f.to_client = None;
                f.client_done = true;
            } else {
                while sock.can_recv() {
                    let Ok(permit) = tx.try_reserve() else { break };
                    let chunk = sock
                        .recv(|b| {
                            let n = b.len().min(64 * 1024);
                            (n, b[..n].to_vec())
                        })
                        .unwrap_or_default();
                    if chunk.is_empty() {
                        break;
                    }
                    permit.send(chunk);
                }
            }
        }
        // The far end's FIN shows as "may not receive" in one of the closing states (a reset
        // or a timeout goes straight to Closed); noted the first pass it shows, since the
        // socket may reach Closed before the client has taken all the data.
        if !sock.may_recv() && !matches!(sock.state(), tcp::State::Closed) {
            f.fin_seen = true;
        }
        if f.to_client.is_some() && !sock.may_recv() && !sock.can_recv() {
            // Everything the far end sent was handed over.
            f.clean
                .store(f.fin_seen, std::sync::atomic::Ordering::Release);
            f.to_client = None;
        }
        // client -> tunnel, while the socket has room
        loop {
            if f.sent == f.pending.len() {
                if f.client_done {
                    break;
                }
                match f.from_client.try_recv() {
                    Ok(v) => {
                        f.pending = v;
                        f.sent = 0;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        f.client_done = true;
                        sock.close();
                        break;
                    }
                }
            }
            if !sock.can_send() {
                break;
            }
            match sock.send_slice(&f.pending[f.sent..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => f.sent += n,
            }
        }
        // Over once the socket is done and the client has everything it will get.
        if !sock.is_open() && f.to_client.is_none() {
            f.closing = true;
        }
        true
    });
}

fn service_queries(queries: &mut Vec<Query>, sock: &mut dns::Socket) {
    queries.retain_mut(|q| match sock.get_query_result(q.handle) {
        Err(dns::GetQueryResultError::Pending) => {
            if q.started.elapsed() > RESOLVE_BOUND || q.reply.is_closed() {
                sock.cancel_query(q.handle);
                let (tx, _) = oneshot::channel();
                let reply = std::mem::replace(&mut q.reply, tx);
                let _ = reply.send(Err(NetError::Timeout));
                false
            } else {
                true
            }
        }
        Err(dns::GetQueryResultError::Failed) => {
            let (tx, _) = oneshot::channel();
            let _ = std::mem::replace(&mut q.reply, tx).send(Err(NetError::NotFound));
            false
        }
        Ok(addrs) => {
            let (tx, _) = oneshot::channel();
            let r = addrs
                .first()
                .map(|a| std_addr(*a))
                .ok_or(NetError::NotFound);
            let _ = std::mem::replace(&mut q.reply, tx).send(r);
            false
        }
    });
}
