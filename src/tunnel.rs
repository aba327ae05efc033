//! The lifecycle operations behind the JavaScript API, in plain Rust.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use crate::backend::{self, Backend};
use crate::cmd;
use crate::confdir;
use crate::config::{RawConfig, TunnelConfig};
use crate::dns;
use crate::error::{Result, WgError};
use crate::netdev;
use crate::registry::{self, Active};
use crate::teardown::TeardownReport;

/// How long the kernel may take to show the interface up after `wg-quick up` returned.
const READY_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// What `connect` brought up.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    pub name: String,
    pub config_path: String,
    pub backend: String,
    pub full_tunnel: bool,
    pub addresses: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub endpoint: String,
    pub mtu: u32,
    pub dns: Vec<String>,
    pub dns_method: Option<String>,
    pub ipv6: bool,
    pub replaced_stale: bool,
    pub connect_ms: f64,
    pub steps: Vec<(String, f64)>,
}

/// What the kernel says of a tunnel interface now.
#[derive(Debug, Clone)]
pub struct TunnelStatus {
    pub name: String,
    pub exists: bool,
    pub up: bool,
    pub mtu: u32,
    pub index: u32,
    pub managed: bool,
    pub uptime_ms: Option<f64>,
    pub full_tunnel: Option<bool>,
    pub backend: Option<String>,
}

/// Refuse a caller who may not manage interfaces, before anything is written or run
/// (wg-quick would otherwise re-run itself under sudo and wait for a password).
pub fn check_privileges() -> Result<()> {
    if confdir::euid() != 0 {
        return Err(WgError::PermissionDenied(format!(
            "managing WireGuard interfaces needs root (euid is {}); run the agent as root, \
             never through an interactive sudo",
            confdir::euid()
        )));
    }
    Ok(())
}

/// Bring a tunnel up. Converges over a stale interface of the same name; on any failure
/// everything done so far is rolled back by the cleanup routine.
pub fn connect(raw: RawConfig, owner: u64, progress: &dyn Fn(&str, &str)) -> Result<TunnelInfo> {
    let t0 = Instant::now();
    let mut steps: Vec<(String, f64)> = Vec::new();
    let mark = |step: &str, detail: &str, steps: &mut Vec<(String, f64)>| {
        steps.push((step.to_string(), t0.elapsed().as_secs_f64() * 1000.0));
        progress(step, detail);
    };

    let cfg = TunnelConfig::from_raw(raw)?;
    let name = cfg.name.clone();
    mark("validate", &name, &mut steps);
    check_privileges()?;
    let be: &dyn Backend = backend::default_backend();
    be.available()?;
    mark("preflight", be.name(), &mut steps);

    let _op = registry::op_lock();
    let dir = confdir::ensure_private_dir()?;
    let conf: PathBuf = dir.join(format!("{name}.conf"));
    mark("config-dir", &dir.to_string_lossy(), &mut steps);

    // Converge: a leftover of the same name (a crashed run's, or our own) is the normal case.
    let stale = netdev::exists(&name) || dns::pending(&name) || conf.exists();
    if stale {
        let r = registry::cleanup_locked(&name, Some(&conf));
        if !r.gone {
            let tried: Vec<String> = r
                .steps
                .iter()
                .map(|s| format!("{}: {}", s.step, s.detail))
                .collect();
            return Err(WgError::setup(
                "converge",
                format!(
                    "a leftover interface {name} could not be removed ({})",
                    tried.join("; ")
                ),
            ));
        }
        confdir::shred(&conf);
        mark(
            "converge",
            &format!("removed a leftover {name}"),
            &mut steps,
        );
    }

    let ipv6 = netdev::ipv6_enabled();
    registry::insert(Active {
        name: name.clone(),
        conf_path: conf.clone(),
        full_tunnel: cfg.full_tunnel(),
        backend: be.name(),
        started: Instant::now(),
        owner,
    });
    let result = bring_up(be, &cfg, &conf, ipv6, &mut |s, d| mark(s, d, &mut steps));
    let dns_method = match result {
        Ok(m) => m,
        Err(e) => {
            registry::cleanup_locked(&name, Some(&conf));
            return Err(e);
        }
    };
    let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    mark("ready", &name, &mut steps);
    let fmt = |v: &[ipnet::IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    Ok(TunnelInfo {
        name,
        config_path: conf.to_string_lossy().into_owned(),
        backend: be.name().into(),
        full_tunnel: cfg.full_tunnel(),
        addresses: fmt(&cfg.addresses),
        allowed_ips: fmt(&cfg
            .peer
            .allowed_ips
            .iter()
            .filter(|n| ipv6 || n.addr().is_ipv4())
            .copied()
            .collect::<Vec<_>>()),
        endpoint: cfg.peer.endpoint.to_string(),
        mtu: cfg.mtu as u32,
        dns: cfg.dns.iter().map(IpAddr::to_string).collect(),
        dns_method: dns_method.map(|m| m.as_str().to_string()),
        ipv6,
        replaced_stale: stale,
        connect_ms,
        steps,
    })
}

fn bring_up(
    be: &dyn Backend,
    cfg: &TunnelConfig,
    conf: &std::path::Path,
    ipv6: bool,
    mark: &mut dyn FnMut(&str, &str),
) -> Result<Option<dns::DnsMethod>> {
    confdir::write_private_file(conf, cfg.render(ipv6).as_bytes())?;
    mark("write-config", &conf.to_string_lossy());
    be.up(cfg, conf)?;
    mark("interface-up", &cfg.name);
    cmd::wait_until(READY_BOUND, || {
        netdev::link_state(&cfg.name).filter(|s| s.up)
    })
    .ok_or_else(|| {
        WgError::setup(
            "wait-ready",
            format!("{} was not up within {:?}", cfg.name, READY_BOUND),
        )
    })?;
    mark("kernel-ready", &cfg.name);
    if cfg.dns.is_empty() {
        return Ok(None);
    }
    let m = dns::apply(&cfg.name, &cfg.dns)?;
    mark("dns", m.as_str());
    Ok(Some(m))
}

/// Take down `name`, or the latest tunnel of this process. None when there was nothing to
/// take down. Idempotent.
pub fn disconnect(name: Option<&str>) -> Result<Option<TeardownReport>> {
    let name = match name {
        Some(n) => {
            crate::config::validate_interface_name(n)?;
            n.to_string()
        }
        None => match registry::latest() {
            Some(a) => a.name,
            None => return Ok(None),
        },
    };
    let _op = registry::op_lock();
    let conf = registry::get(&name)
        .map(|a| a.conf_path)
        .unwrap_or_else(|| confdir::conf_path(&name));
    if registry::get(&name).is_none()
        && !netdev::exists(&name)
        && !dns::pending(&name)
        && !conf.exists()
    {
        return Ok(None);
    }
    Ok(Some(registry::cleanup_locked(&name, Some(&conf))))
}

/// Read the kernel for `name` (default: the latest tunnel of this process, else `wgsent0`).
pub fn status(name: Option<&str>) -> Result<TunnelStatus> {
    let name = match name {
        Some(n) => {
            crate::config::validate_interface_name(n)?;
            n.to_string()
        }
        None => registry::latest()
            .map(|a| a.name)
            .unwrap_or_else(|| crate::config::DEFAULT_NAME.to_string()),
    };
    let link = netdev::link_state(&name);
    let active = registry::get(&name);
    Ok(TunnelStatus {
        exists: link.is_some(),
        up: link.as_ref().map(|l| l.up).unwrap_or(false),
        mtu: link.as_ref().map(|l| l.mtu).unwrap_or(0),
        index: link.as_ref().map(|l| l.index).unwrap_or(0),
        managed: active.is_some() && link.is_some(),
        uptime_ms: active
            .as_ref()
            .map(|a| a.started.elapsed().as_secs_f64() * 1000.0),
        full_tunnel: active.as_ref().map(|a| a.full_tunnel),
        backend: active.map(|a| a.backend.to_string()),
        name,
    })
}
