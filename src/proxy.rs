//! Rootless mode (`openProxy`): WireGuard inside the process over an ordinary UDP socket, a
//! userspace TCP/IP stack (`netstack`) behind it, and a local proxy in front of it. Needs no
//! root, no capability, no TUN device; creates no interface, route, rule or file.
//!
//! One listener on 127.0.0.1 speaks both HTTP proxy (absolute-form requests and `CONNECT`)
//! and SOCKS5 (chosen by the first byte: 5 is SOCKS). Every request must carry this proxy's
//! random credentials (HTTP `Proxy-Authorization: Basic`, SOCKS5 username/password, RFC
//! 1929), so other local users cannot spend the agent's bandwidth. Host names are resolved by
//! the tunnel's DNS server through the tunnel (socks5h semantics), never by the host.
//!
//! An absolute-form HTTP request is one request per client connection: the request goes to
//! its origin with `Connection: close` and `Host` set from its URL, the client's bytes are
//! passed on only until the answer begins, and the answer's head says `Connection: close`,
//! so a client never sends a second request down a connection to the first one's origin.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gotatun::device::{self, Device};
use gotatun::udp::socket::UdpSocketFactory;
use gotatun::x25519::{PublicKey, StaticSecret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::backend::Stats;
use crate::config::TunnelConfig;
use crate::error::{Result, WgError};
use crate::netstack::{self, NetError, NetStack, TcpConn};

/// The proxy's user name; the password is random per proxy.
pub const USER: &str = "bw";
/// An HTTP request or response head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take, from connecting, to authenticate and say where it goes.
const PREAUTH_BOUND: Duration = Duration::from_secs(10);
/// Connections not yet authenticated, at most (a local user without the credentials cannot
/// use up the agent's descriptors).
const PREAUTH_MAX: usize = 128;
/// Once the client has closed its side, how long the far end may stay silent before the
/// connection is dropped.
const LINGER_BOUND: Duration = Duration::from_secs(30);
/// How long the device's own stop, and the tasks' ends, may take on `close`.
const STOP_BOUND: Duration = Duration::from_secs(2);

type Dev = Device<(UdpSocketFactory, netstack::ToStack, netstack::FromStack)>;

/// A running proxy. `close` (or dropping it) stops the listener, every connection, the stack
/// and the device.
pub struct Proxy {
    pub port: u16,
    pub password: String,
    /// From the device's start to its first completed handshake, ms.
    pub handshake_ms: f64,
    /// From the call to the proxy being ready, ms.
    pub open_ms: f64,
    runtime: tokio::runtime::Handle,
    device: Mutex<Option<Dev>>,
    peer: PublicKey,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
}

/// What the caller asked for besides the tunnel's config.
pub struct Options {
    /// 0: any free port.
    pub port: u16,
    pub handshake_timeout: Duration,
}

/// The tunnel's DNS server: the first of the config's that the tunnel can reach (an address
/// family the tunnel has, inside the allowed IPs), else the node's side of our subnet.
fn dns_server(cfg: &TunnelConfig) -> Option<IpAddr> {
    let usable = |ip: &IpAddr| {
        cfg.addresses
            .iter()
            .any(|a| a.addr().is_ipv4() == ip.is_ipv4())
            && cfg.peer.allowed_ips.iter().any(|n| n.contains(ip))
    };
    cfg.dns
        .iter()
        .copied()
        .find(usable)
        .or_else(|| crate::handshake::probe_target(cfg).filter(usable))
}

fn random_bytes(b: &mut [u8]) -> Result<()> {
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(WgError::io(
            "cannot draw random bytes for the proxy",
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Bring the listener, the stack and the device up, then wait for the first handshake.
pub fn open(cfg: TunnelConfig, opts: Options, rt: tokio::runtime::Handle) -> Result<Proxy> {
    let t0 = Instant::now();
    let endpoint = cfg.peer.endpoint.resolve(crate::config::RESOLVE_BOUND)?;
    let mut secret = [0u8; 24];
    random_bytes(&mut secret)?;
    let password: String = secret.iter().map(|x| format!("{x:02x}")).collect();
    let mut seed = [0u8; 8];
    random_bytes(&mut seed)?;
    let _enter = rt.enter();
    // The listener first: a port in use fails before anything else starts.
    let listener = rt
        .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, opts.port)))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                WgError::invalid("options.port", format!("{} is in use", opts.port))
            }
            std::io::ErrorKind::PermissionDenied => WgError::invalid(
                "options.port",
                format!("{} needs privileges this process lacks", opts.port),
            ),
            _ => WgError::io("cannot listen on 127.0.0.1", &e),
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| WgError::io("cannot read the proxy's port", &e))?
        .port();

    let parts = netstack::new(
        &cfg.addresses,
        cfg.mtu,
        dns_server(&cfg),
        u64::from_le_bytes(seed),
    );
    let (stack, to_stack, from_stack, stack_task) = parts.spawn(&rt);
    let peer_key = PublicKey::from(cfg.peer.public_key.0);
    let peer = crate::backend::embedded::peer_of(&cfg, &cfg.peer.allowed_ips, endpoint);
    crate::backend::embedded::wait_handshake_gap(cfg.peer.public_key.0);
    let dev = rt
        .block_on(
            device::build()
                .with_default_udp()
                .with_ip_pair(to_stack, from_stack)
                .with_private_key(StaticSecret::from(cfg.private_key.0))
                .with_peer(peer)
                .build(),
        )
        .map_err(|e| {
            stack_task.abort();
            WgError::setup("device", e.to_string())
        })?;
    let (shutdown, _) = watch::channel(false);
    // From here on, dropping `proxy` stops everything.
    let mut proxy = Proxy {
        port,
        password,
        handshake_ms: 0.0,
        open_ms: 0.0,
        runtime: rt.clone(),
        device: Mutex::new(Some(dev)),
        peer: peer_key,
        tasks: Mutex::new(vec![stack_task]),
        shutdown,
    };
    proxy.handshake_ms = proxy.wait_handshake(&cfg, opts.handshake_timeout)?;
    let ctx = Arc::new(Ctx {
        stack,
        user: USER.into(),
        password: proxy.password.clone(),
        v4: cfg.addresses.iter().any(|a| a.addr().is_ipv4()),
        v6: cfg.addresses.iter().any(|a| a.addr().is_ipv6()),
        preauth: Arc::new(Semaphore::new(PREAUTH_MAX)),
        shutdown: proxy.shutdown.subscribe(),
    });
    let accept = rt.spawn(accept_loop(listener, ctx));
    proxy
        .tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(accept);
    proxy.open_ms = t0.elapsed().as_secs_f64() * 1000.0;
    Ok(proxy)
}

impl Proxy {
    fn wait_handshake(&self, cfg: &TunnelConfig, bound: Duration) -> Result<f64> {
        let t = Instant::now();
        if bound.is_zero() {
            return Ok(0.0);
        }
        {
            let guard = self.device.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(dev) = guard.as_ref() {
                let _ = self.runtime.block_on(async {
                    tokio::time::timeout(Duration::from_millis(50), dev.force_handshake(&self.peer))
                        .await
                });
            }
        }
        let mut last = None;
        let seen = crate::cmd::wait_until_every(bound, Duration::from_millis(5), || {
            let s = self.stats().ok()?;
            let done = s.last_handshake_ms.is_some();
            last = Some(s);
            done.then_some(())
        });
        if seen.is_some() {
            return Ok(t.elapsed().as_secs_f64() * 1000.0);
        }
        Err(match &last {
            Some(s) => crate::handshake::no_connectivity(cfg, bound, s),
            None => WgError::setup("handshake", "the device's state could not be read"),
        })
    }

    /// The node's counters, as `status()` gives them for a tunnel.
    pub fn stats(&self) -> Result<Stats> {
        let guard = self.device.lock().unwrap_or_else(|p| p.into_inner());
        let dev = guard
            .as_ref()
            .ok_or_else(|| WgError::NotConnected("the proxy is closed".into()))?;
        crate::backend::embedded::peer_stats(&self.runtime, dev, &self.peer)
    }

    /// Stop listening, reset every connection, stop the device; it
    /// returns once they are over (bounded). Idempotent; true the first time.
    pub fn close(&self) -> bool {
        let _ = self.shutdown.send(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in &tasks {
            t.abort();
        }
        let dev = self.device.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(dev) = dev else { return false };
        crate::backend::embedded::note_stop(self.peer.to_bytes());
        let rt = self.runtime.clone();
        // Never let a panic (a runtime shutting down at exit) escape.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                let _ = tokio::time::timeout(STOP_BOUND, async {
                    // The listener is closed once its task has ended.
                    for t in tasks {
                        let _ = t.await;
                    }
                    dev.stop().await;
                })
                .await;
            })
        }));
        true
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.close();
    }
}

/// What every connection task shares.
struct Ctx {
    stack: NetStack,
    user: String,
    password: String,
    v4: bool,
    v6: bool,
    preauth: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Ctx {
    /// Constant-time comparison of what the client sent with the credentials.
    fn accepts(&self, user: &[u8], password: &[u8]) -> bool {
        fn eq(a: &[u8], b: &[u8]) -> bool {
            let mut d = a.len() ^ b.len();
            for (i, x) in a.iter().enumerate() {
                d |= (*x ^ b.get(i).copied().unwrap_or(0)) as usize;
            }
            d == 0
        }
        eq(user, self.user.as_bytes()) & eq(password, self.password.as_bytes())
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(_) => {
                // Out of descriptors (or a connection reset before accept): the listener stays
                // readable, so give the process a moment instead of spinning on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Beyond PREAUTH_MAX connections that have not authenticated yet, new ones are closed.
        let Ok(permit) = ctx.preauth.clone().try_acquire_owned() else {
            drop(client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = serve(client, &ctx, permit).await;
        });
    }
}

/// Where a client wants to go.
enum Target {
    Ip(SocketAddr),
    Name(String, u16),
}

async fn reach(ctx: &Ctx, t: &Target) -> std::result::Result<TcpConn, NetError> {
    let addr = match t {
        Target::Ip(a) => *a,
        Target::Name(n, port) => {
            // A first, where the tunnel has IPv4; AAAA where it has IPv6 (and A found nothing).
            let mut found = Err(NetError::NotFound);
            for v6 in [false, true] {
                if (v6 && ctx.v6) || (!v6 && ctx.v4) {
                    found = ctx.stack.resolve(n, v6).await;
                    if found.is_ok() {
                        break;
                    }
                }
            }
            SocketAddr::new(found?, *port)
        }
    };
    ctx.stack.connect(addr).await
}

/// A host as given (a name, an IPv4 address, or an IPv6 one with or without brackets).
fn host_target(host: &str, port: u16) -> Option<Target> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(Target::Ip(SocketAddr::new(ip, port)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    valid_host_name(name).then(|| Target::Name(name.to_ascii_lowercase(), port))
}

/// Parse `host:port`, `[v6]:port`, or a bare host / `[v6]` (with `default_port`).
fn parse_target(s: &str, default_port: Option<u16>) -> Option<Target> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(Target::Ip(a));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (h, p.parse::<u16>().ok()?),
            None if after.is_empty() => (h, default_port?),
            None => return None,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p.parse::<u16>().ok()?),
            Some(_) => (s, default_port?), // a bare IPv6 address
            None => (s, default_port?),
        }
    };
    if port == 0 {
        return None;
    }
    host_target(host, port)
}

fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// How the bytes flow once the far end is reached.
enum Mode {
    /// CONNECT and SOCKS5: both ways until both sides are done.
    Tunnel,
    /// One absolute-form request: see the module's doc.
    OneRequest,
}

/// Authenticate and route one client; then pass the bytes.
async fn serve(
    mut client: TcpStream,
    ctx: &Ctx,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> std::io::Result<()> {
    // Until it is authenticated and routed, a client also ends with `close()`; after that,
    // the stack going away ends its connection (with a reset, see `pump`).
    let mut stop = ctx.shutdown.clone();
    let opened = tokio::select! {
        o = tokio::time::timeout(PREAUTH_BOUND, async {
            let mut first = [0u8; 1];
            if client.peek(&mut first).await? == 0 {
                return Ok(None);
            }
            if first[0] == 5 {
                socks5(&mut client, ctx).await
            } else {
                http(&mut client, ctx).await
            }
        }) => o.map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
        _ = stop.wait_for(|s| *s) => None,
    };
    drop(permit);
    match opened {
        Some((conn, head, mode)) => pump(client, conn, head, mode).await,
        None => Ok(()),
    }
}

/// Copy bytes both ways until both sides are done. `head` goes to the tunnel first. A far end
/// that ended without its FIN (reset, timeout, the proxy closed) ends the client's connection
/// with a reset too, never a FIN (a client with unread data may still see the reset as an end
/// of stream: Linux does that; length-delimited answers are how it tells).
async fn pump(
    mut client: TcpStream,
    conn: TcpConn,
    head: Vec<u8>,
    mode: Mode,
) -> std::io::Result<()> {
    let TcpConn {
        mut from_tunnel,
        to_tunnel,
        clean_eof,
        wake,
    } = conn;
    let one_request = matches!(mode, Mode::OneRequest);
    let answered = AtomicBool::new(false);
    let client_done = tokio::sync::Notify::new();
    // Set when the far end's side ended without its FIN: the client gets a reset.
    let cut = tokio::sync::Notify::new();
    let reset = AtomicBool::new(false);
    // Borrowed halves: dropping them closes nothing, so the socket is closed once, below,
    // with or without a reset.
    let (mut rd, mut wr) = client.split();
    let up = async {
        if !head.is_empty() {
            if to_tunnel.send(head).await.is_err() {
                return;
            }
            wake.notify_one();
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = cut.notified() => break,
            };
            // One request: what the client sends after the answer began is not for this
            // origin (a keep-alive client's next request); it is dropped.
            if one_request && answered.load(Ordering::Acquire) {
                continue;
            }
            if to_tunnel.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
            wake.notify_one();
        }
        drop(to_tunnel);
        wake.notify_one();
        client_done.notify_one();
    };
    let down = async {
        let mut head_pending = one_request.then(Vec::new);
        let mut client_gone = false;
        loop {
            // Once the client has closed its side, the far end gets LINGER_BOUND of silence.
            let next = if client_gone {
                tokio::time::timeout(LINGER_BOUND, from_tunnel.recv())
                    .await
                    .unwrap_or(None)
            } else {
                tokio::select! {
                    c = from_tunnel.recv() => c,
                    _ = client_done.notified() => {
                        client_gone = true;
                        continue;
                    }
                }
            };
            let Some(chunk) = next else { break };
            wake.notify_one();
            answered.store(true, Ordering::Release);
            let out = match head_pending.as_mut() {
                None => chunk,
                Some(h) => {
                    h.extend_from_slice(&chunk);
                    match close_response_head(h) {
                        Some(out) => {
                            head_pending = None;
                            out
                        }
                        // Not an HTTP answer we can vouch for: end it.
                        None if h.len() > MAX_HEAD => break,
                        None => continue,
                    }
                }
            };
            if wr.write_all(&out).await.is_err() {
                break;
            }
        }
        from_tunnel.close();
        wake.notify_one();
        if head_pending.is_none() && clean_eof.load(Ordering::Acquire) {
            let _ = wr.shutdown().await;
        } else {
            reset.store(true, Ordering::Release);
            cut.notify_one();
        }
    };
    tokio::join!(up, down);
    if reset.load(Ordering::Acquire) {
        // Closing the socket with a zero linger sends a reset.
        let _ = client.set_zero_linger();
    }
    drop(client);
    Ok(())
}

/// In a complete HTTP response head at the start of `buf`, make the connection one that
/// closes: `Connection: close`, no `Keep-Alive`. Returns the rewritten bytes (head and what
/// followed it), or None while the head is incomplete.
fn close_response_head(buf: &[u8]) -> Option<Vec<u8>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &buf[..end];
    let mut out = Vec::with_capacity(buf.len() + 24);
    for (i, line) in head.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let name = line
            .split(|&b| b == b':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if i > 0 && (name == b"connection" || name == b"keep-alive" || name == b"proxy-connection")
        {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&buf[end + 4..]);
    Some(out)
}

/// SOCKS5 (RFC 1928) with username/password (RFC 1929); CONNECT only.
async fn socks5(c: &mut TcpStream, ctx: &Ctx) -> std::io::Result<Option<(TcpConn, Vec<u8>, Mode)>> {
    let mut h = [0u8; 2];
    c.read_exact(&mut h).await?;
    let mut methods = vec![0u8; h[1] as usize];
    c.read_exact(&mut methods).await?;
    if !methods.contains(&2) {
        c.write_all(&[5, 0xff]).await?;
        return Ok(None);
    }
    c.write_all(&[5, 2]).await?;
    let mut v = [0u8; 2];
    c.read_exact(&mut v).await?;
    let mut user = vec![0u8; v[1] as usize];
    c.read_exact(&mut user).await?;
    let mut pl = [0u8; 1];
    c.read_exact(&mut pl).await?;
    let mut pass = vec![0u8; pl[0] as usize];
    c.read_exact(&mut pass).await?;
    if v[0] != 1 || !ctx.accepts(&user, &pass) {
        c.write_all(&[1, 1]).await?;
        return Ok(None);
    }
    c.write_all(&[1, 0]).await?;
    let mut r = [0u8; 4];
    c.read_exact(&mut r).await?;
    let reply = |code: u8| [5, code, 0, 1, 0, 0, 0, 0, 0, 0];
    if r[0] != 5 || r[1] != 1 {
        c.write_all(&reply(7)).await?; // command not supported
        return Ok(None);
    }
    let target = match r[3] {
        1 => {
            let mut a = [0u8; 6];
            c.read_exact(&mut a).await?;
            let ip = IpAddr::from([a[0], a[1], a[2], a[3]]);
            Some(Target::Ip(SocketAddr::new(
                ip,
                u16::from_be_bytes([a[4], a[5]]),
            )))
        }
        4 => {
            let mut a = [0u8; 18];
            c.read_exact(&mut a).await?;
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[16], a[17]]);
            Some(Target::Ip(SocketAddr::new(IpAddr::from(o), port)))
        }
        3 => {
            let mut l = [0u8; 1];
            c.read_exact(&mut l).await?;
            let mut name = vec![0u8; l[0] as usize + 2];
            c.read_exact(&mut name).await?;
            let port = u16::from_be_bytes([name[name.len() - 2], name[name.len() - 1]]);
            // Some clients send an address as a name: it is taken as the address.
            std::str::from_utf8(&name[..name.len() - 2])
                .ok()
                .and_then(|h| host_target(h, port))
        }
        _ => {
            c.write_all(&reply(8)).await?; // address type not supported
            return Ok(None);
        }
    };
    let Some(target) = target.filter(|t| !matches!(t, Target::Ip(a) if a.port() == 0)) else {
        c.write_all(&reply(1)).await?;
        return Ok(None);
    };
    match reach(ctx, &target).await {
        Ok(conn) => {
            c.write_all(&reply(0)).await?;
            Ok(Some((conn, Vec::new(), Mode::Tunnel)))
        }
        Err(e) => {
            let code = match e {
                NetError::Refused => 5,
                NetError::NotFound => 4,
                NetError::Timeout => 6,
                _ => 1,
            };
            c.write_all(&reply(code)).await?;
            Ok(None)
        }
    }
}

/// Read an HTTP request head (through the blank line); the bytes after it are returned too.
async fn read_head(c: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        // Only the new bytes (and the 3 before them) can complete the blank line.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(from + i + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(c: &mut TcpStream, status: &str, extra: &str) -> std::io::Result<()> {
    let body = format!("{status}\n");
    c.write_all(
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

/// Hop-by-hop request headers, which a proxy must not pass on (RFC 9110 7.6.1), plus `Host`
/// (set from the URL) and our own `Proxy-*`.
fn hop_by_hop(name: &str, listed: &[String]) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("proxy-")
        || matches!(
            n.as_str(),
            "host" | "connection" | "keep-alive" | "te" | "trailer" | "upgrade"
        )
        || listed.contains(&n)
}

/// HTTP proxy: `CONNECT host:port` (a tunnel) or one absolute-form `http://` request.
async fn http(c: &mut TcpStream, ctx: &Ctx) -> std::io::Result<Option<(TcpConn, Vec<u8>, Mode)>> {
    let Some((head, rest)) = read_head(c).await? else {
        respond(c, "400 Bad Request", "").await?;
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
        respond(c, "400 Bad Request", "").await?;
        return Ok(None);
    }
    let (method, uri, version) = (parts[0], parts[1], parts[2]);
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let authorized = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
        .and_then(|(_, v)| {
            let (scheme, b) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(b)
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|d| {
            let i = d.iter().position(|&b| b == b':')?;
            Some(ctx.accepts(&d[..i], &d[i + 1..]))
        })
        .unwrap_or(false);
    if !authorized {
        respond(
            c,
            "407 Proxy Authentication Required",
            "Proxy-Authenticate: Basic realm=\"blue-wireguard\"\r\n",
        )
        .await?;
        return Ok(None);
    }
    if method == "CONNECT" {
        let Some(target) = parse_target(uri, None) else {
            respond(c, "400 Bad Request", "").await?;
            return Ok(None);
        };
        return match reach(ctx, &target).await {
            Ok(conn) => {
                c.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await?;
                Ok(Some((conn, rest, Mode::Tunnel)))
            }
            Err(e) => {
                respond(c, &gateway_status(&e), "").await?;
                Ok(None)
            }
        };
    }
    let Some(after) = uri
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &uri[7..])
    else {
        // Only plain-HTTP absolute form here; HTTPS goes through CONNECT.
        respond(c, "400 Bad Request", "").await?;
        return Ok(None);
    };
    let cut = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, path) = after.split_at(cut);
    let path = match path.split('#').next().unwrap_or_default() {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let Some(target) = parse_target(authority, Some(80)) else {
        respond(c, "400 Bad Request", "").await?;
        return Ok(None);
    };
    // Headers the client named in its Connection header are hop-by-hop too.
    let listed: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let mut out = format!("{method} {path} {version}\r\nHost: {authority}\r\n");
    for (k, v) in &headers {
        if !hop_by_hop(k, &listed) {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut head = out.into_bytes();
    head.extend_from_slice(&rest);
    match reach(ctx, &target).await {
        Ok(conn) => Ok(Some((conn, head, Mode::OneRequest))),
        Err(e) => {
            respond(c, &gateway_status(&e), "").await?;
            Ok(None)
        }
    }
}

fn gateway_status(e: &NetError) -> String {
    match e {
        NetError::Timeout => "504 Gateway Timeout".into(),
        _ => "502 Bad Gateway".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(t: Option<Target>) -> Option<(String, u16)> {
        match t {
            Some(Target::Name(h, p)) => Some((h, p)),
            _ => None,
        }
    }
    fn ip(t: Option<Target>) -> Option<SocketAddr> {
        match t {
            Some(Target::Ip(a)) => Some(a),
            _ => None,
        }
    }

    #[test]
    fn targets_parse_and_hostile_names_are_refused() {
        assert_eq!(
            ip(parse_target("10.0.0.1:80", None)),
            Some("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            ip(parse_target("[::1]:443", None)),
            Some("[::1]:443".parse().unwrap())
        );
        assert_eq!(
            ip(parse_target("[2001:db8::1]", Some(80))),
            Some("[2001:db8::1]:80".parse().unwrap())
        );
        assert_eq!(
            ip(parse_target("2001:db8::1", Some(80))),
            Some("[2001:db8::1]:80".parse().unwrap())
        );
        assert_eq!(
            name(parse_target("example.org:443", None)),
            Some(("example.org".into(), 443))
        );
        assert_eq!(
            name(parse_target("Example.ORG.", Some(80))),
            Some(("example.org".into(), 80))
        );
        assert!(parse_target("example.org", None).is_none());
        assert!(parse_target("example.org:0", None).is_none());
        assert!(parse_target("a b:80", None).is_none());
        assert!(parse_target("..:80", None).is_none());
        assert!(parse_target("[::1]x", Some(80)).is_none());
        assert!(parse_target(&format!("{}:80", "a".repeat(64)), None).is_none());
        // an address given as a SOCKS5 name is the address
        assert_eq!(
            ip(host_target("10.1.2.3", 5)),
            Some("10.1.2.3:5".parse().unwrap())
        );
    }

    #[test]
    fn credentials_must_match_exactly() {
        let (shutdown, _) = watch::channel(false);
        let parts = netstack::new(&[], 1280, None, 1);
        let a = Ctx {
            stack: parts.stack.clone(),
            user: "bw".into(),
            password: "secret".into(),
            v4: true,
            v6: false,
            preauth: Arc::new(Semaphore::new(1)),
            shutdown: shutdown.subscribe(),
        };
        assert!(a.accepts(b"bw", b"secret"));
        assert!(!a.accepts(b"bw", b"secre"));
        assert!(!a.accepts(b"bw", b"secret!"));
        assert!(!a.accepts(b"", b"secret"));
        assert!(!a.accepts(b"bw", b""));
    }

    #[test]
    fn a_response_head_is_made_to_close_and_the_body_is_kept() {
        let r = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nhi";
        let out = close_response_head(r).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".to_vec()
        );
        assert!(close_response_head(b"HTTP/1.1 200 OK\r\nContent-Le").is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_not_passed_on() {
        let listed = vec!["x-secret".to_string()];
        for h in [
            "Host",
            "Connection",
            "Proxy-Authorization",
            "Keep-Alive",
            "TE",
            "Upgrade",
            "X-Secret",
        ] {
            assert!(hop_by_hop(h, &listed), "{h}");
        }
        for h in ["Accept", "Cookie", "Content-Length", "Transfer-Encoding"] {
            assert!(!hop_by_hop(h, &listed), "{h}");
        }
    }
}
