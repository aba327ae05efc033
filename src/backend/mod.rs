//! Ways of bringing a tunnel up: one seam, one file per backend.
//!
//! A `Backend` brings a tunnel up and returns a `Tunnel` handle that owns it (stats, live
//! reconfiguration, stop); the registry keeps the handle while the tunnel lives. A backend
//! can also `reap` what a dead owner's tunnel of its kind left, from the ownership record
//! alone (the watchdog and the sweep run in other processes, with no handle). Routing
//! (`routing`) and DNS (`dns`) are modules beside the backends; the cleanup routine restores
//! DNS itself, before the backend removes the tunnel.
//!
//! - `wg-quick`: `wg-quick up` of a rendered file (kernel module or wireguard-go).
//! - `embedded`: WireGuard inside this process (gotatun) on a non-persistent tun, routing
//!   over rtnetlink; no subprocess, no key file.
//! - `kernel`: the kernel's WireGuard module, created and configured over rtnetlink and
//!   generic netlink, routing as `embedded`; no subprocess, no key file. Its interface
//!   outlives its process (the watchdog and the sweep reap it).

use std::path::Path;

use ipnet::IpNet;

use crate::config::TunnelConfig;
use crate::error::{Result, WgError};
use crate::owner::Record;
use crate::teardown::TeardownReport;

pub mod embedded;
pub mod kernel;
pub mod uapi;
pub mod wg_quick;

/// Counters of a live tunnel, read from the device itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Milliseconds since the last completed handshake; None before the first.
    pub last_handshake_ms: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// The peer's endpoint as the device sees it now (`ip:port`), if known.
    pub endpoint: Option<String>,
}

/// A live tunnel, owned by this handle.
pub trait Tunnel: Send + Sync {
    fn name(&self) -> &str;
    fn backend(&self) -> &'static str;
    /// What the device says now.
    fn stats(&self) -> Result<Stats>;
    /// Make the device start a handshake with the node now (it may not have a packet to
    /// send yet). Best effort; `handshake::wait` says what came of it.
    fn initiate_handshake(&self, cfg: &TunnelConfig) {
        crate::handshake::nudge_if_quiet(cfg);
    }
    /// Change the live tunnel in place, on the same interface, without dropping open
    /// connections: the peer (allowed IPs, endpoint, keepalive), the fwmark and the routing
    /// that go with them. On error the caller puts the old config back (or takes the tunnel
    /// down). DNS is the caller's.
    fn update(&self, change: &Change) -> Result<()> {
        let _ = change;
        Err(WgError::NotAvailable(format!(
            "the {} backend cannot change a live tunnel; reconnect instead",
            self.backend()
        )))
    }
    /// Take the tunnel down: interface, routes, rules and the key file, if any (DNS is the
    /// cleanup routine's). Idempotent; never fails: the report says what was done.
    fn stop(&self) -> TeardownReport;
}

/// A change of a live tunnel (`Tunnel::update`).
pub struct Change<'a> {
    pub old: &'a TunnelConfig,
    pub new: &'a TunnelConfig,
    /// IPv6 is enabled in this namespace (else `::/0` is left out).
    pub ipv6: bool,
    /// The full tunnel's table before and after (recorded by the caller before any rule of
    /// a new one exists).
    pub old_table: Option<u32>,
    pub new_table: Option<u32>,
}

impl Change<'_> {
    /// The allowed IPs to route, before and after.
    pub fn allowed(&self) -> (Vec<IpNet>, Vec<IpNet>) {
        (routable(self.old, self.ipv6), routable(self.new, self.ipv6))
    }
}

/// The peer's allowed IPs that are routed here: without IPv6 ones on a host without IPv6.
pub fn routable(cfg: &TunnelConfig, ipv6: bool) -> Vec<IpNet> {
    cfg.peer
        .allowed_ips
        .iter()
        .filter(|n| ipv6 || n.addr().is_ipv4())
        .copied()
        .collect()
}

/// What a native backend routes for `cfg`: the routable allowed IPs, and the full tunnel's
/// table (the caller's, chosen and recorded before `up`) when one of them is a default.
pub fn routes_of(cfg: &TunnelConfig, ctx: &UpContext) -> Result<(Vec<IpNet>, Option<u32>)> {
    let allowed = routable(cfg, ctx.ipv6);
    let table = if allowed.iter().any(|n| n.prefix_len() == 0) {
        Some(
            ctx.table
                .ok_or_else(|| WgError::setup("routing", "a full tunnel needs a routing table"))?,
        )
    } else {
        None
    };
    Ok((allowed, table))
}

/// The routing part of a native backend's `update`, once its device carries the new config.
pub fn reroute(index: u32, change: &Change) -> Result<()> {
    let (old, new) = change.allowed();
    crate::routing::reroute(index, (&old, change.old_table), (&new, change.new_table))
        .map(|_| ())
        .map_err(|e| WgError::setup("routing", e))
}

/// What `up` needs besides the config.
pub struct UpContext<'a> {
    /// The key file to write and hand to wg-quick (unused by the native backends).
    pub conf_path: &'a Path,
    /// IPv6 is enabled in this namespace (else `::/0` is left out).
    pub ipv6: bool,
    /// The full tunnel's routing table and fwmark (recorded before `up`); None for a split
    /// tunnel or a backend that picks its own.
    pub table: Option<u32>,
    /// The async runtime of the embedded backend (napi's, in the addon).
    pub runtime: Option<&'a tokio::runtime::Handle>,
    /// Progress events: (step, detail).
    pub progress: &'a mut dyn FnMut(&str, &str),
}

pub trait Backend: Send + Sync {
    /// The name reported to the caller and written in ownership records, e.g. `wg-quick`.
    fn name(&self) -> &'static str;
    /// Ok when a tunnel can really be brought up on this host; `WG_NOT_AVAILABLE` otherwise.
    /// Cheap: no subprocess.
    fn available(&self) -> Result<()>;
    /// `WG_PERMISSION_DENIED` when this process may not run this backend.
    fn check_privileges(&self) -> Result<()>;
    /// The backend writes a key file for an external tool (only wg-quick).
    fn writes_config(&self) -> bool {
        false
    }
    /// The backend routes a full tunnel itself through a table of ours (chosen and recorded
    /// by the caller before `up`).
    fn routes_full_tunnel(&self) -> bool {
        false
    }
    /// Bring the tunnel up. On error the backend has removed what it made; the caller then
    /// runs the cleanup routine (which reaps by the record) as well.
    fn up(&self, cfg: &TunnelConfig, ctx: &mut UpContext) -> Result<Box<dyn Tunnel>>;
    /// Remove what a tunnel of this backend left, knowing only its record (its owner is
    /// dead, or it never got a handle). Never fails.
    fn reap(&self, record: &Record) -> TeardownReport;
}

pub const AUTO: &str = "auto";
pub const KERNEL: &str = kernel::NAME;
/// The values `options.backend` and `BLUE_WG_BACKEND` accept.
pub const CHOICES: [&str; 4] = [AUTO, embedded::NAME, wg_quick::NAME, KERNEL];

/// The backend of a record (an old record or one without a backend: wg-quick).
pub fn by_name(name: &str) -> &'static dyn Backend {
    match name {
        embedded::NAME => &embedded::Embedded,
        kernel::NAME => &kernel::Kernel,
        _ => &wg_quick::WgQuick,
    }
}

/// The backends `auto` tries, in order: the kernel's module where it is loaded or loadable,
/// else WireGuard inside the process, else wg-quick.
pub fn auto_order() -> [&'static dyn Backend; 3] {
    [&kernel::Kernel, &embedded::Embedded, &wg_quick::WgQuick]
}

/// Check a requested backend name (`field` names where it came from).
pub fn parse_choice(field: &str, v: &str) -> Result<&'static str> {
    CHOICES.iter().copied().find(|c| *c == v).ok_or_else(|| {
        WgError::invalid(
            field,
            format!("must be one of {}, got {v:?}", CHOICES.join(", ")),
        )
    })
}

/// The choice of the environment (`BLUE_WG_BACKEND`), if set.
pub fn env_choice() -> Result<Option<&'static str>> {
    match std::env::var("BLUE_WG_BACKEND") {
        Ok(v) if !v.is_empty() => parse_choice("BLUE_WG_BACKEND", &v).map(Some),
        _ => Ok(None),
    }
}

/// The backend for a connect: `requested` (already checked by `parse_choice`), else
/// `BLUE_WG_BACKEND`, else `auto`. `auto` takes the first of `auto_order` that can run
/// (cheap checks, no subprocess): `kernel` (module loaded or loadable, CAP_NET_ADMIN), else
/// `embedded` (`/dev/net/tun` and CAP_NET_ADMIN), else `wg-quick`.
pub fn select(requested: Option<&str>) -> Result<&'static dyn Backend> {
    let choice = match requested {
        Some(c) => parse_choice("options.backend", c)?,
        None => env_choice()?.unwrap_or(AUTO),
    };
    match choice {
        AUTO => match auto_order().into_iter().find(|b| b.available().is_ok()) {
            Some(b) => Ok(b),
            None => Err(WgError::NotAvailable(format!(
                "no backend can run here: {}",
                unavailable_reason().unwrap_or_default()
            ))),
        },
        other => Ok(by_name(other)),
    }
}

/// Why no backend can run here, or None when one can (for `availability()`). Cheap.
pub fn unavailable_reason() -> Option<String> {
    let mut why = Vec::new();
    for b in auto_order() {
        match b.available() {
            Ok(()) => return None,
            Err(e) => why.push(format!("{}: {e}", b.name())),
        }
    }
    Some(why.join("; "))
}

/// Does this process have `cap` in its effective capability set?
pub fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|bits| bits & (1u64 << cap) != 0)
}

pub const CAP_NET_ADMIN: u32 = 12;

/// `Backend::available` from a backend's "why not" (None: it can run).
pub(crate) fn available_unless(why: Option<String>) -> Result<()> {
    match why {
        None => Ok(()),
        Some(why) => Err(WgError::NotAvailable(why)),
    }
}

/// `Backend::check_privileges` of a native backend: CAP_NET_ADMIN (the uid does not matter).
pub(crate) fn require_net_admin(backend: &str) -> Result<()> {
    if has_capability(CAP_NET_ADMIN) {
        return Ok(());
    }
    Err(WgError::PermissionDenied(format!(
        "the {backend} backend needs CAP_NET_ADMIN (root, setcap cap_net_admin+ep on node, or \
         systemd AmbientCapabilities=CAP_NET_ADMIN)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_checked_and_records_name_their_backend() {
        assert_eq!(parse_choice("x", "embedded").unwrap(), "embedded");
        let e = parse_choice("options.backend", "boringtun").unwrap_err();
        assert_eq!(e.code(), "INVALID_OPTIONS");
        assert!(e.to_string().contains("options.backend"));
        // An explicit choice is taken as such; `connect` checks that it can run.
        assert_eq!(select(Some("kernel")).ok().unwrap().name(), "kernel");
        assert_eq!(by_name("").name(), "wg-quick");
        assert_eq!(by_name("embedded").name(), "embedded");
        assert_eq!(by_name("kernel").name(), "kernel");
        let order: Vec<&str> = auto_order().iter().map(|b| b.name()).collect();
        assert_eq!(order, ["kernel", "embedded", "wg-quick"]);
        // Whatever this host has, `auto` picks the first of them that can run.
        if let Ok(b) = select(Some("auto")) {
            let first = auto_order()
                .into_iter()
                .find(|b| b.available().is_ok())
                .unwrap();
            assert_eq!(b.name(), first.name());
        }
    }
}
