//! A small synchronous netlink client: one socket per call, requests sent with
//! `NLM_F_REQUEST | NLM_F_ACK` and answered within a bound, dumps read to `NLMSG_DONE`.
//! `NETLINK_ROUTE` (links, addresses, routes, rules) by default; `NETLINK_GENERIC` for the
//! kernel WireGuard device (`open_generic`, messages of `netlink-packet-generic`).
//!
//! Why not the `rtnetlink` crate: it is async (netlink-proto on tokio), and our core is
//! synchronous: it runs on the libuv threadpool, in exit hooks on the JavaScript thread, and
//! in the watchdog process, which has no tokio runtime at all. The messages themselves are
//! `netlink-packet-route`'s (the types `rtnetlink` 0.24 uses), so a move to `rtnetlink` later
//! changes only this file. The socket lives in the calling thread's network namespace.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{
    protocols::{NETLINK_GENERIC, NETLINK_ROUTE},
    Socket, SocketAddr,
};

/// How long the kernel may take to answer one request (it answers in microseconds).
pub const ANSWER_BOUND: Duration = Duration::from_secs(5);
const RECV_BUF: usize = 64 * 1024;

/// An open netlink socket.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

/// Set `SO_RCVTIMEO`, so no `recv` waits longer than `bound`.
fn set_recv_timeout(sock: &Socket, bound: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: bound.as_secs() as libc::time_t,
        tv_usec: bound.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A netlink socket of `protocol` (close-on-exec), bound, connected to the kernel, whose
/// `recv` waits at most `ANSWER_BOUND`. Also `nft`'s (`NETLINK_NETFILTER`).
pub fn open_socket(protocol: isize) -> io::Result<Socket> {
    let mut sock = Socket::new(protocol)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    set_recv_timeout(&sock, ANSWER_BOUND)?;
    Ok(sock)
}

/// The bytes of one request.
pub fn encode<M: NetlinkSerializable>(msg: M, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// Overwrite `buf` in a way the compiler keeps (a request may carry a private key).
fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: a valid, aligned, exclusive reference to a byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

impl Netlink {
    /// An rtnetlink (`NETLINK_ROUTE`) socket.
    pub fn open() -> io::Result<Netlink> {
        Self::open_protocol(NETLINK_ROUTE)
    }

    /// A generic netlink (`NETLINK_GENERIC`) socket.
    pub fn open_generic() -> io::Result<Netlink> {
        Self::open_protocol(NETLINK_GENERIC)
    }

    fn open_protocol(protocol: isize) -> io::Result<Netlink> {
        Ok(Netlink {
            sock: open_socket(protocol)?,
            seq: 0,
        })
    }

    fn send<M: NetlinkSerializable>(&mut self, msg: M, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut buf = encode(msg, flags, self.seq);
        let sent = self.sock.send(&buf, 0);
        // The request's bytes may hold a key (`WG_CMD_SET_DEVICE`): not left in freed memory.
        wipe(&mut buf);
        sent?;
        Ok(self.seq)
    }

    /// Read the answers to request `seq`, passing each message to `each`, until the ACK
    /// (`NLMSG_ERROR` with code 0) or `NLMSG_DONE`. An error answer becomes an `io::Error`
    /// with the kernel's errno (e.g. `EEXIST`, `ENOENT`).
    fn answers<M>(&mut self, seq: u32, mut each: impl FnMut(M)) -> io::Result<()>
    where
        M: NetlinkDeserializable,
    {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let n = match self.sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the kernel did not answer within {ANSWER_BOUND:?}"),
                    ))
                }
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<M>::deserialize(&buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue; // an answer to an earlier request (one that timed out)
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => each(m),
                    _ => {}
                }
            }
        }
    }

    /// Send `msg` with `NLM_F_REQUEST | NLM_F_ACK | flags` and wait for its ACK.
    pub fn request<M>(&mut self, msg: M, flags: u16) -> io::Result<()>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.answers(seq, |_: M| {})
    }

    /// A request whose answers are messages (e.g. `CTRL_CMD_GETFAMILY`): every message of
    /// the answer, up to its ACK.
    pub fn query<M>(&mut self, msg: M, flags: u16) -> io::Result<Vec<M>>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        let mut out = Vec::new();
        self.answers(seq, |m| out.push(m))?;
        Ok(out)
    }

    /// A dump request: every message of the answer.
    pub fn dump<M>(&mut self, msg: M) -> io::Result<Vec<M>>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.answers(seq, |m| out.push(m))?;
        Ok(out)
    }
}

/// True for the errno `code`.
pub fn is_errno(e: &io::Error, code: i32) -> bool {
    e.raw_os_error() == Some(code)
}
