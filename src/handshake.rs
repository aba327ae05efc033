//! "Connected" means packets flow: after bring-up, `connect` waits (bounded) for the first
//! completed handshake with the node, read from the device itself (`Tunnel::stats`), and
//! rolls everything back if none completes.
//!
//! What starts the handshake: a device with a persistent keepalive sends one as soon as it
//! is up (the kernel and wireguard-go both do; the embedded device is asked directly, see
//! `Tunnel::initiate_handshake`). Without a keepalive nothing would be sent until the
//! caller's first packet, so one empty UDP datagram is sent into the tunnel (bound to the
//! interface) to an address the node routes: the node's side of our subnet (Sentinel's
//! gateway, e.g. 10.8.0.1), else the first host of the first allowed network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::backend::{Stats, Tunnel};
use crate::cmd;
use crate::config::TunnelConfig;
use crate::error::{Result, WgError};

/// The default bound of the wait (`options.handshakeTimeoutMs`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest bound a caller may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// WireGuard's REJECT_AFTER_TIME: a session older than this carries no traffic, so a tunnel
/// whose last handshake is older is not healthy.
pub const REJECT_AFTER: Duration = Duration::from_secs(180);
/// The longest pause between two reads of the device while waiting (a read is ~20 µs in
/// process or over netlink, more over wireguard-go's socket).
const POLL_MAX: Duration = Duration::from_millis(5);
/// The discard port: where the nudge datagram goes (nothing answers it, nothing needs to).
const DISCARD_PORT: u16 = 9;

fn nth_host(net: &IpNet, n: u128) -> Option<IpAddr> {
    match net.trunc() {
        IpNet::V4(v) => {
            let base = u32::from(v.network()) as u128;
            let ip = u32::try_from(base + n).ok()?;
            let ip = Ipv4Addr::from(ip);
            v.contains(&ip).then_some(IpAddr::V4(ip))
        }
        IpNet::V6(v) => {
            let ip = Ipv6Addr::from(u128::from(v.network()).checked_add(n)?);
            v.contains(&ip).then_some(IpAddr::V6(ip))
        }
    }
}

/// Where the nudge goes: an address the peer's allowed IPs cover and that is not ours.
pub fn probe_target(cfg: &TunnelConfig) -> Option<IpAddr> {
    let allowed = |ip: &IpAddr| cfg.peer.allowed_ips.iter().any(|n| n.contains(ip));
    let ours = |ip: &IpAddr| cfg.addresses.iter().any(|a| a.addr() == *ip);
    let subnets = cfg
        .addresses
        .iter()
        .filter(|a| a.prefix_len() < a.max_prefix_len());
    subnets
        .chain(cfg.peer.allowed_ips.iter().filter(|n| n.prefix_len() > 0))
        // A host route is its own host; a network's hosts start after its address.
        .flat_map(|net| {
            let first = u128::from(net.prefix_len() < net.max_prefix_len());
            (first..first + 2).filter_map(move |n| nth_host(net, n))
        })
        // Else the tunnel's DNS server (Sentinel's is the node's side, 10.8.0.1).
        .chain(cfg.dns.iter().copied())
        .find(|ip| allowed(ip) && !ours(ip) && !ip.is_unspecified())
}

/// Send one empty UDP datagram to `dst` out of interface `name`: the device then has a
/// packet for the node and starts a handshake.
pub fn nudge(name: &str, dst: IpAddr) -> std::io::Result<()> {
    let any: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any)?;
    // SAFETY: a valid socket and a buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.send_to(&[], (dst, DISCARD_PORT)).map(|_| ())
}

/// Start a handshake on a device that would not start one by itself (no keepalive).
pub fn nudge_if_quiet(cfg: &TunnelConfig) {
    if cfg.peer.persistent_keepalive > 0 {
        return;
    }
    if let Some(dst) = probe_target(cfg) {
        // Best effort: the wait below says what came of it.
        let _ = nudge(&cfg.name, dst);
    }
}

/// Wait until the device reports a completed handshake with the node, at most `bound`.
/// Returns when it was seen; `WG_NO_CONNECTIVITY` (saying what was seen) otherwise.
pub fn wait(tunnel: &dyn Tunnel, cfg: &TunnelConfig, bound: Duration) -> Result<Instant> {
    tunnel.initiate_handshake(cfg);
    let mut last = None;
    // A stats read costs ~20 µs: probe often, the caller is waiting for this.
    let seen = cmd::wait_until_every(bound, POLL_MAX, || {
        let s = tunnel.stats().ok()?;
        // A session younger than REJECT_AFTER carries traffic (a new device has none before
        // its first handshake; a live one being reconnected in place may have one).
        let done = s
            .last_handshake_ms
            .is_some_and(|ms| ms < REJECT_AFTER.as_secs_f64() * 1000.0);
        last = Some(s);
        done.then(Instant::now)
    });
    seen.ok_or_else(|| match &last {
        None => WgError::setup(
            "handshake",
            format!(
                "the handshake state of {} could not be read, so the node's answer \
                 cannot be verified; pass handshakeTimeoutMs: 0 to skip the check",
                cfg.name
            ),
        ),
        Some(s) => no_connectivity(cfg, bound, s),
    })
}

/// `WG_NO_CONNECTIVITY` for a node that did not complete a handshake within `bound`, saying
/// what the device saw (`last`: its counters when the wait ended).
pub fn no_connectivity(cfg: &TunnelConfig, bound: Duration, last: &Stats) -> WgError {
    let detail = if last.rx_bytes == 0 {
        format!("no reply at all; {} bytes sent", last.tx_bytes)
    } else {
        format!(
            "{} bytes came back but no handshake completed: a reply our keys do not match",
            last.rx_bytes
        )
    };
    WgError::NoConnectivity {
        endpoint: cfg.peer.endpoint.to_string(),
        waited_ms: bound.as_millis() as u64,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawConfig, RawKey, RawPeer};

    fn cfg(addresses: &[&str], allowed: &[&str]) -> TunnelConfig {
        let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        TunnelConfig::from_raw(RawConfig {
            private_key: Some(RawKey::Text(key.into())),
            addresses: Some(addresses.iter().map(|s| s.to_string()).collect()),
            peer: Some(RawPeer {
                public_key: Some("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into()),
                endpoint: Some("192.0.2.1:51820".into()),
                allowed_ips: Some(allowed.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn the_nudge_goes_to_the_nodes_side_of_our_subnet_or_the_first_allowed_host() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            probe_target(&cfg(&["10.8.0.2/24"], &["0.0.0.0/0"])),
            ip("10.8.0.1")
        );
        assert_eq!(
            probe_target(&cfg(&["10.8.0.1/24"], &["0.0.0.0/0"])),
            ip("10.8.0.2")
        );
        assert_eq!(
            probe_target(&cfg(&["10.8.0.2/32"], &["198.18.0.10/32"])),
            ip("198.18.0.10")
        );
        assert_eq!(
            probe_target(&cfg(&["10.8.0.2/24"], &["198.18.0.0/24"])),
            ip("198.18.0.1")
        );
        // Our subnet is not routed to the node and the only allowed network is a default:
        // the tunnel's DNS server (a full tunnel's default, 10.8.0.1).
        assert_eq!(
            probe_target(&cfg(&["10.8.0.2/32"], &["0.0.0.0/0"])),
            ip("10.8.0.1")
        );
        assert_eq!(
            probe_target(&cfg(&["10.8.0.2/32"], &["198.18.0.0/31"])),
            ip("198.18.0.1")
        );
    }
}
