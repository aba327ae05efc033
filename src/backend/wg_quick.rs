//! The wg-quick backend: `wg-quick up <conf>` with the kernel module or a userspace
//! implementation (`wireguard-go`, or `WG_QUICK_USERSPACE_IMPLEMENTATION`). The key file is
//! rendered here (`config::TunnelConfig::render`) and written 0600 to the private config
//! directory; the tunnel is taken down by `teardown::teardown_linux_interface` (its three
//! steps: `wg-quick down <conf>`, `wg-quick down <name>`, `ip link delete`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Backend, Stats, Tunnel, UpContext};
use crate::cmd;
use crate::confdir;
use crate::config::TunnelConfig;
use crate::error::{Result, WgError};
use crate::owner::{self, Owner, Record};
use crate::state::StateDir;
use crate::teardown::{self, StepReport, TeardownReport};

const UP_TIMEOUT: Duration = Duration::from_secs(20);
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
pub const NAME: &str = "wg-quick";

pub struct WgQuick;

/// A tunnel brought up by `wg-quick up <conf>`.
pub struct WgQuickTunnel {
    name: String,
    conf: PathBuf,
    /// The node's public key (its stats are read by it).
    peer: [u8; 32],
}

impl Tunnel for WgQuickTunnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        NAME
    }

    /// From the kernel over netlink when the module serves the tunnel, else from
    /// wireguard-go's control socket: no program is run.
    fn stats(&self) -> Result<Stats> {
        match crate::netdev::driver(&self.name).as_deref() {
            Some("wireguard") => super::kernel::device_stats(&self.name, &self.peer),
            _ => super::uapi::stats(&self.name, &self.peer),
        }
    }

    fn stop(&self) -> TeardownReport {
        teardown::teardown_linux_interface(&self.name, Some(&self.conf))
    }
}

/// The userspace implementation wg-quick would start when the kernel has no module.
fn userspace_impl() -> Option<PathBuf> {
    let name = std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "wireguard-go".into());
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    cmd::find_program(&name)
}

/// Why a tunnel cannot be brought up here, or None when it can. Cheap: no subprocess.
pub fn unavailable_reason() -> Option<String> {
    if cmd::find_program("wg-quick").is_none() {
        return Some(
            "wg-quick is not installed (Debian/Ubuntu: apt-get install wireguard-tools)".into(),
        );
    }
    if cmd::find_program("wg").is_none() {
        return Some("wg is not installed (apt-get install wireguard-tools)".into());
    }
    if cmd::find_program("ip").is_none() {
        return Some("ip is not installed (apt-get install iproute2)".into());
    }
    if Path::new("/sys/module/wireguard").exists() {
        return None;
    }
    if userspace_impl().is_none() {
        // A variable that names nothing usable is the caller's mistake: say so, not "install".
        if let Some(v) = std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION")
            .ok()
            .filter(|v| !v.is_empty())
        {
            return Some(format!(
                "WG_QUICK_USERSPACE_IMPLEMENTATION={v:?} is not a file or a program on PATH \
                 (and the kernel has no WireGuard module)"
            ));
        }
        return Some(
            "the kernel has no WireGuard module and no userspace implementation is installed \
             (apt-get install wireguard-go, or set WG_QUICK_USERSPACE_IMPLEMENTATION)"
                .into(),
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("userspace WireGuard needs /dev/net/tun, which this host lacks".into());
    }
    None
}

impl Backend for WgQuick {
    fn name(&self) -> &'static str {
        NAME
    }

    fn writes_config(&self) -> bool {
        true
    }

    /// wg-quick re-runs itself under sudo when not root (and may wait for a password):
    /// refused before anything is written or run.
    fn check_privileges(&self) -> Result<()> {
        if confdir::euid() != 0 {
            return Err(WgError::PermissionDenied(format!(
                "the wg-quick backend needs root (euid is {}); run the agent as root, never \
                 through an interactive sudo, or use the embedded backend with CAP_NET_ADMIN",
                confdir::euid()
            )));
        }
        Ok(())
    }

    fn available(&self) -> Result<()> {
        super::available_unless(unavailable_reason())
    }

    fn up(&self, cfg: &TunnelConfig, ctx: &mut UpContext) -> Result<Box<dyn Tunnel>> {
        let conf_path = ctx.conf_path;
        confdir::write_private_file(conf_path, cfg.render(ctx.ipv6).as_bytes())?;
        (ctx.progress)("write-config", &conf_path.to_string_lossy());
        let wq = cmd::find_program("wg-quick")
            .ok_or_else(|| WgError::NotAvailable("wg-quick is not installed".into()))?;
        let conf = conf_path.to_string_lossy();
        let out = cmd::run(&wq, &["up", conf.as_ref()], None, UP_TIMEOUT)
            .map_err(|e| WgError::setup("wg-quick up", e))?;
        if !out.success {
            return Err(WgError::setup("wg-quick up", out.describe()));
        }
        (ctx.progress)("interface-up", &cfg.name);
        Ok(Box::new(WgQuickTunnel {
            name: cfg.name.clone(),
            conf: conf_path.to_path_buf(),
            peer: cfg.peer.public_key.0,
        }))
    }

    fn reap(&self, record: &Record) -> TeardownReport {
        teardown::teardown_linux_interface(&record.name, Some(&record.conf_path))
    }
}

/// After a wg-quick full tunnel `name` went down: wg-quick's down removes *every*
/// `suppress_prefixlength 0` rule, also those of other live full tunnels of this namespace.
/// Put back what they need: the exact rules of native (embedded, kernel) ones, and wg-quick's
/// generic rule for wg-quick ones.
pub fn restore_rules_of_live_tunnels(
    dir: &StateDir,
    name: &str,
    is_own_live: &dyn Fn(&str) -> bool,
) -> Option<StepReport> {
    let live: Vec<Record> = owner::list_classified(dir)
        .into_iter()
        .filter_map(|o| match o {
            Owner::Me(rec) if rec.name != name && is_own_live(&rec.name) => Some(rec),
            Owner::Alive(rec) => Some(rec),
            _ => None,
        })
        .filter(|r| r.full_tunnel)
        .collect();
    if live.is_empty() {
        return None;
    }
    // Native backends (embedded, kernel) route a full tunnel with exact rules of their own
    // table; the others rely on wg-quick's shared rule.
    let native = |r: &Record| super::by_name(&r.backend).routes_full_tunnel();
    let mut step = if live.iter().any(|r| !native(r)) {
        restore_shared_rules()
    } else {
        StepReport::note("shared-rules", "")
    };
    let mut done = Vec::new();
    for r in live.iter().filter(|r| native(r)) {
        if let Some(t) = r.table {
            let fams = [crate::routing::Family::V4, crate::routing::Family::V6];
            done.extend(crate::routing::ensure_full_tunnel_rules(t, &fams));
        }
    }
    if !done.is_empty() {
        step.ran = true;
        step.ok = true;
        step.detail = format!("{}; restored {}", step.detail, done.join(", "));
    }
    Some(step)
}

/// Put back the `suppress_prefixlength 0` rules (IPv4, and IPv6 where enabled) that wg-quick's
/// down removes all of, when another live wg-quick full tunnel still needs them.
fn restore_shared_rules() -> StepReport {
    let t = std::time::Instant::now();
    let mut done = Vec::new();
    if let Some(ip) = cmd::find_program("ip") {
        let fams: &[&str] = if crate::netdev::ipv6_enabled() {
            &["-4", "-6"]
        } else {
            &["-4"]
        };
        for fam in fams {
            let present = cmd::run(&ip, &[*fam, "rule", "show"], None, STEP_TIMEOUT)
                .map(|o| o.stdout.contains("suppress_prefixlength 0"))
                .unwrap_or(true);
            if present {
                continue;
            }
            let args = [
                *fam,
                "rule",
                "add",
                "table",
                "main",
                "suppress_prefixlength",
                "0",
            ];
            if cmd::run(&ip, &args, None, STEP_TIMEOUT).is_ok_and(|o| o.success) {
                done.push(format!("{fam} rule suppress_prefixlength 0"));
            }
        }
    }
    StepReport {
        step: "shared-rules".into(),
        ran: true,
        ok: true,
        detail: if done.is_empty() {
            "still in place".into()
        } else {
            format!("restored {} for another live full tunnel", done.join(", "))
        },
        elapsed_ms: t.elapsed().as_secs_f64() * 1000.0,
    }
}
