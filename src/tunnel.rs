//! The lifecycle operations behind the JavaScript API, in plain Rust.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{self, Backend, UpContext};
use crate::cmd;
use crate::confdir;
use crate::config::{RawConfig, TunnelConfig};
use crate::dns;
use crate::error::{Result, WgError};
use crate::netdev;
use crate::owner::{self, Owner, Record};
use crate::registry::{self, Active};
use crate::state::{Claim, NameLock, NsClaim, StateDir};
use crate::teardown::TeardownReport;
use crate::watchdog::Watchdog;

/// How long the kernel may take to show the interface up after `wg-quick up` returned.
const READY_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// How `connect` should bring the tunnel up, besides the config.
#[derive(Default)]
pub struct ConnectOptions {
    /// `auto`, `embedded`, `wg-quick` or `kernel` (None: `BLUE_WG_BACKEND`, else `auto`).
    pub backend: Option<String>,
    /// The async runtime the embedded backend runs on (napi's, in the addon).
    pub runtime: Option<tokio::runtime::Handle>,
    /// How long to wait for the first handshake (None: `handshake::DEFAULT_TIMEOUT`; zero:
    /// do not wait).
    pub handshake_timeout: Option<std::time::Duration>,
}

/// What `connect` brought up.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    pub name: String,
    /// The key file (wg-quick backend only).
    pub config_path: Option<String>,
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
    pub watchdog_pid: Option<u32>,
    pub kill_switch: bool,
    pub exclude: Vec<String>,
    pub connect_ms: f64,
    /// From the call to the first completed handshake (None when not waited for).
    pub handshake_ms: Option<f64>,
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
    /// From the device itself.
    pub stats: Option<backend::Stats>,
    /// Up, with a handshake younger than WireGuard's reject-after time.
    pub healthy: bool,
}

/// Read a wg-quick file for `connectConfigFile`: a regular file of at most 64 KiB, named
/// `<interface>.conf`; the tunnel takes its name from the file.
pub fn read_config_file(path: &std::path::Path) -> Result<RawConfig> {
    use std::io::Read;
    let field = "confPath";
    let name = path
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_suffix(".conf"))
        .ok_or_else(|| {
            WgError::invalid(
                field,
                format!("{} is not a <name>.conf file", path.display()),
            )
        })?;
    crate::config::validate_interface_name(name).map_err(|_| {
        WgError::invalid(
            field,
            format!("{name:?} (from the file name) is not a valid interface name"),
        )
    })?;
    // Checked on the opened descriptor: never a FIFO (O_NONBLOCK, regular files only), never
    // a file or directory another local user could have prepared or can still change.
    let (_, f) = crate::trust::open_trusted_path(path).map_err(|why| {
        match std::fs::symlink_metadata(path) {
            Err(e) => WgError::invalid(field, format!("cannot open {}: {e}", path.display())),
            Ok(_) => WgError::ConfigDirUnsafe {
                path: path.display().to_string(),
                reason: why.0,
            },
        }
    })?;
    let meta = f
        .metadata()
        .map_err(|e| WgError::io("cannot stat the config file", &e))?;
    if meta.len() > crate::config::MAX_CONF_FILE {
        return Err(WgError::invalid(
            field,
            "must be a regular file of at most 64 KiB",
        ));
    }
    let mut text = String::new();
    f.take(crate::config::MAX_CONF_FILE)
        .read_to_string(&mut text)
        .map_err(|e| WgError::invalid(field, format!("cannot read {}: {e}", path.display())))?;
    let mut raw = crate::config::parse_wg_quick(&text)?;
    raw.name = Some(name.to_string());
    Ok(raw)
}

/// Bring a tunnel up. Converges over a stale interface of the same name; on any failure
/// everything done so far is rolled back by the cleanup routine.
/// `source` is the caller's config file (`connectConfigFile`), recorded so that the cleanup of
/// a dead owner can also remove that key file.
pub fn connect(
    raw: RawConfig,
    source: Option<&std::path::Path>,
    owner: u64,
    opts: ConnectOptions,
    progress: &dyn Fn(&str, &str),
) -> Result<TunnelInfo> {
    let t0 = Instant::now();
    let mut steps: Vec<(String, f64)> = Vec::new();
    let mark = |step: &str, detail: &str, steps: &mut Vec<(String, f64)>| {
        steps.push((step.to_string(), t0.elapsed().as_secs_f64() * 1000.0));
        progress(step, detail);
    };

    let given = raw.clone();
    let mut cfg = TunnelConfig::from_raw(raw)?;
    let name = cfg.name.clone();
    let be: &dyn Backend = backend::select(opts.backend.as_deref())?;
    mark("validate", &name, &mut steps);
    // A host-name endpoint is resolved here, bounded, before anything is changed; every
    // backend then gets the address.
    if cfg.peer.endpoint.literal().is_none() {
        let host = cfg.peer.endpoint.host.clone();
        let addr = cfg.peer.endpoint.resolve(crate::config::RESOLVE_BOUND)?;
        cfg.peer.endpoint = crate::config::Endpoint::from(addr);
        mark("resolve", &format!("{host} -> {addr}"), &mut steps);
    }
    let handshake = opts
        .handshake_timeout
        .unwrap_or(crate::handshake::DEFAULT_TIMEOUT);
    if (cfg.kill_switch || !cfg.exclude.is_empty() || !cfg.exclude_hosts.is_empty())
        && !be.routes_full_tunnel()
    {
        return Err(WgError::invalid(
            if cfg.kill_switch {
                "killSwitch"
            } else {
                "exclude"
            },
            format!(
                "needs the kernel or embedded backend (this connect uses {})",
                be.name()
            ),
        ));
    }
    resolve_exclusions(&mut cfg, &mut |d| mark("resolve", d, &mut steps))?;
    if let Some(mut info) = connect_in_place(&given, &cfg, be, owner)? {
        mark("update", &name, &mut steps);
        // "Connected" still means the node answers: a session younger than REJECT_AFTER, or
        // a new handshake within the bound.
        if !handshake.is_zero() {
            if let Some(t) = registry::get(&name).and_then(|a| a.tunnel) {
                crate::handshake::wait(t.as_ref(), &cfg, handshake)?;
                mark("handshake", &cfg.peer.endpoint.to_string(), &mut steps);
                info.handshake_ms = steps.last().map(|(_, ms)| *ms);
            }
        }
        info.connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
        info.steps = steps;
        return Ok(info);
    }
    // Refused before anything is written or run (wg-quick would otherwise re-run itself
    // under sudo and wait for a password).
    be.check_privileges()?;
    be.available()?;
    // DNS this process could not apply (resolv.conf not writable without root) is refused
    // here too, not at the last step with the tunnel already up.
    dns::preflight(&cfg.dns)?;
    mark("preflight", be.name(), &mut steps);

    let state = StateDir::create()?;
    let _guard = registry::lock();
    // Replacing a live tunnel of ours that has a kill switch (e.g. switching nodes): its table
    // stays, narrowed to the new node, so nothing leaks while the old tunnel goes and the new
    // one comes up; the new tunnel adopts it (or, if it fails, its cleanup removes it).
    let kept_kill_switch = if cfg.kill_switch {
        registry::take_kill_switch(&cfg.name)
    } else {
        None
    };
    if let Some(k) = &kept_kill_switch {
        k.update(&kill_switch_spec(&cfg, None, netdev::ipv6_enabled()))
            .map_err(|e| WgError::setup("kill-switch", e))?;
    }
    // The start-of-process sweep: what dead owners left here goes first.
    let swept: Vec<String> = registry::sweep_dead_locked(&state)
        .reports
        .into_iter()
        .filter(|r| r.gone)
        .map(|r| r.name)
        .collect();
    let (name, (lock, ns_claim), replaced_own) = match claim_name(&state, &cfg.name) {
        Ok(c) => c,
        Err(e) => {
            // The old tunnel may still be there (it could not be removed): it keeps its kill
            // switch, with its own rules back.
            if let Some(k) = kept_kill_switch {
                if let Some(live) = registry::get(&cfg.name).and_then(|a| a.live) {
                    let _ = k.update(&kill_switch_spec(&live.cfg, live.table, live.ipv6));
                    registry::put_kill_switch(&cfg.name, k);
                }
            }
            return Err(e);
        }
    };
    // The wg-quick backend's key file lives in the namespace's private state directory
    // (root-only, per namespace): no other user can pre-create or watch it, and agents in
    // other namespaces never see it. The native backends write no key file at all.
    let conf: PathBuf = state.file(&format!("{name}.conf"));
    mark("state-dir", &state.path.to_string_lossy(), &mut steps);
    if cfg.kill_switch {
        refuse_second_kill_switch(&state, &name)?;
    }
    // Whoever owned the name before (nobody, a dead owner, a forged record): an interface of
    // that name that is not WireGuard is never replaced. The embedded tun of an owner that
    // is still exiting (a plain tun, which its backend's reap never deletes, only waits for)
    // is converged over instead.
    if netdev::exists(&name)
        && !netdev::is_wireguard(&name)
        && !registry::is_dying_owners_tun(&state, &name)
    {
        return Err(WgError::NotWireGuard {
            driver: netdev::driver(&name).unwrap_or_else(|| "unknown".into()),
            name,
        });
    }

    // Converge: a leftover of the same name (a killed run's) is the normal case. We hold the
    // name's lock, so no live owner of ours is at work on it.
    let stale = match owner::owner_of(&state, &name) {
        Owner::Alive(r) => return Err(WgError::NameInUse { name, pid: r.pid }),
        Owner::Me(_) | Owner::Dead(_) | Owner::Stranger(_) => true,
        Owner::Nobody => {
            netdev::exists(&name)
                || dns::pending(&state.path, state.netns.inode, &name)
                || conf.exists()
        }
    };
    let stale = stale || swept.contains(&name) || replaced_own;
    let others: Vec<&str> = swept
        .iter()
        .map(String::as_str)
        .filter(|n| *n != name)
        .collect();
    if !others.is_empty() {
        let detail = format!("removed what dead owners left: {}", others.join(", "));
        mark("sweep", &detail, &mut steps);
    }
    if swept.contains(&name) || replaced_own {
        let detail = format!("removed a leftover {name}");
        mark("converge", &detail, &mut steps);
    } else if stale {
        let r = registry::cleanup_locked(&state, &name, Some(&conf));
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
        mark(
            "converge",
            &format!("removed a leftover {name}"),
            &mut steps,
        );
    }

    // The full tunnel's table (for a backend that routes it itself): chosen before the
    // watchdog starts, so the watchdog knows it even if the record is lost (a removed state
    // directory), and recorded before any rule exists, so whoever reaps it finds them all.
    let table = if be.routes_full_tunnel() && cfg.full_tunnel() {
        let taken = owner::live_tables(&state);
        Some(crate::routing::pick_table(&taken).map_err(|e| WgError::setup("routing", e))?)
    } else {
        None
    };
    // The watchdog first, then the record naming it: every record has a watchdog, and the
    // record exists before the interface does.
    let watchdog = if std::env::var_os("BLUE_WG_NO_WATCHDOG").is_some_and(|v| v == "1") {
        None
    } else {
        Some(Arc::new(Watchdog::spawn(&name, be.name(), table)?))
    };
    let ipv6 = netdev::ipv6_enabled();
    // The key file (wg-quick only): an empty path in the record means none.
    let key_file: PathBuf = if be.writes_config() {
        conf.clone()
    } else {
        PathBuf::new()
    };
    let mut record = Record::mine(
        &name,
        state.netns,
        &key_file,
        be.name(),
        cfg.full_tunnel(),
        cfg.dns.iter().map(IpAddr::to_string).collect(),
    );
    record.watchdog_pid = watchdog.as_ref().map(|w| w.pid);
    record.table = table;
    record.source = source.map(std::path::Path::to_path_buf);
    if let Err(e) = owner::claim(&state, &record) {
        if let Some(w) = watchdog {
            w.dismiss();
        }
        return Err(e);
    }
    mark(
        "owner-record",
        &watchdog
            .as_ref()
            .map(|w| format!("watchdog pid {}", w.pid))
            .unwrap_or_else(|| "no watchdog".into()),
        &mut steps,
    );

    registry::insert(Active {
        name: name.clone(),
        conf_path: key_file.clone(),
        full_tunnel: cfg.full_tunnel(),
        backend: be.name(),
        started: Instant::now(),
        owner,
        watchdog: watchdog.clone(),
        lock: Arc::new(lock),
        tunnel: None,
        ns_claim: ns_claim.map(Arc::new),
        live: None,
        kill_switch: kept_kill_switch,
    });
    let mut cfg = cfg;
    cfg.name = name.clone();
    let delegate = watchdog.clone().map(|w| w as Arc<dyn cmd::Delegate>);
    let result = cmd::with_delegate(delegate, || {
        let mut progress = |s: &str, d: &str| mark(s, d, &mut steps);
        let mut ctx = UpContext {
            conf_path: &key_file,
            ipv6,
            table: record.table,
            runtime: opts.runtime.as_ref(),
            progress: &mut progress,
        };
        bring_up(be, &state, &cfg, &mut ctx, handshake)
    });
    // The watchdog started while the tunnel came up: it must be watching before we return.
    let result = result.and_then(|m| match &watchdog {
        Some(w) => w.confirm().map(|()| m),
        None => Ok(m),
    });
    let dns_method = match result {
        Ok(m) => m,
        Err(e) => {
            // Everything this call made (we hold the name, and it was clear before): undone.
            let own = (!key_file.as_os_str().is_empty()).then_some(key_file.as_path());
            let r = registry::cleanup_locked(&state, &name, own);
            if !r.gone {
                // The interface there is not one this call made (something else created a
                // link of that name meanwhile): leave it, but take back our own key file,
                // record and watchdog.
                registry::forget_own(&state, &name, &key_file);
            }
            return Err(e);
        }
    };
    let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let handshake_ms = steps
        .iter()
        .find(|(s, _)| s == "handshake")
        .map(|(_, ms)| *ms);
    mark("ready", &name, &mut steps);
    let live = registry::Live {
        raw: given,
        cfg,
        table: record.table,
        ipv6,
        dns_method,
    };
    let mut info = describe(be, &live, key_file.as_path());
    info.watchdog_pid = watchdog.map(|w| w.pid);
    info.replaced_stale = stale;
    info.connect_ms = connect_ms;
    info.handshake_ms = handshake_ms;
    info.steps = steps;
    registry::set_live(&name, live);
    Ok(info)
}

/// The `TunnelInfo` of a live tunnel (times, steps and watchdog left for the caller).
fn describe(be: &dyn Backend, live: &registry::Live, key_file: &std::path::Path) -> TunnelInfo {
    let cfg = &live.cfg;
    let fmt = |v: &[ipnet::IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    TunnelInfo {
        watchdog_pid: None,
        name: cfg.name.clone(),
        config_path: be
            .writes_config()
            .then(|| key_file.to_string_lossy().into_owned()),
        backend: be.name().into(),
        full_tunnel: cfg.full_tunnel(),
        addresses: fmt(&cfg.addresses),
        allowed_ips: fmt(&backend::routable(cfg, live.ipv6)),
        endpoint: cfg.peer.endpoint.to_string(),
        mtu: cfg.mtu as u32,
        dns: cfg.dns.iter().map(IpAddr::to_string).collect(),
        dns_method: live.dns_method.map(|m| m.as_str().to_string()),
        ipv6: live.ipv6,
        replaced_stale: false,
        kill_switch: cfg.kill_switch,
        exclude: fmt(&cfg.exclude),
        connect_ms: 0.0,
        handshake_ms: None,
        steps: Vec::new(),
    }
}

/// Move a full tunnel's exclusion rules from `old` (on `old_table`) to `new` (on
/// `new_table`): new ones first. Rules of a table that goes are removed with its other rules.
fn exclusions(
    old: &[ipnet::IpNet],
    old_table: Option<u32>,
    new: &[ipnet::IpNet],
    new_table: Option<u32>,
    ipv6: bool,
) -> Result<()> {
    let fail = |e| WgError::setup("exclude", e);
    if let Some(t) = new_table {
        crate::routing::add_exclusions(t, new, ipv6).map_err(fail)?;
    }
    if let Some(t) = old_table.filter(|t| Some(*t) == new_table) {
        let gone: Vec<ipnet::IpNet> = old.iter().filter(|n| !new.contains(n)).copied().collect();
        crate::routing::remove_exclusions(t, &gone).map_err(fail)?;
    }
    Ok(())
}

/// Resolve `exclude`'s host names (bounded) into `cfg.exclude`; `progress` hears of it.
fn resolve_exclusions(cfg: &mut TunnelConfig, progress: &mut dyn FnMut(&str)) -> Result<()> {
    if cfg.exclude_hosts.is_empty() {
        return Ok(());
    }
    let found = crate::config::resolve_excluded(&cfg.exclude_hosts, crate::config::RESOLVE_BOUND)?;
    progress(&format!(
        "exclude {} -> {}",
        cfg.exclude_hosts.join(", "),
        found
            .iter()
            .map(|n| n.addr().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for n in found {
        if !cfg.exclude.contains(&n) {
            cfg.exclude.push(n);
        }
    }
    Ok(())
}

/// What the kill switch of `cfg` lets out (its endpoint is resolved by now).
fn kill_switch_spec(
    cfg: &TunnelConfig,
    table: Option<u32>,
    ipv6: bool,
) -> crate::nft::KillSwitchSpec {
    crate::nft::KillSwitchSpec {
        tunnel_if: cfg.name.clone(),
        endpoint: cfg
            .peer
            .endpoint
            .literal()
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], cfg.peer.endpoint.port))),
        fwmark: table,
        exclude: cfg.exclude.clone(),
        allow_lan: cfg.allow_lan,
        tunnel_has_ipv6: ipv6 && cfg.addresses.iter().any(|a| a.addr().is_ipv6()),
    }
}

/// One kill switch per network namespace: every table must accept a packet for it to leave,
/// and another tunnel's table knows nothing of this tunnel, so two would block each other.
fn refuse_second_kill_switch(state: &StateDir, name: &str) -> Result<()> {
    for other in owner::names(state).into_iter().filter(|n| n != name) {
        if crate::nft::table_exists(&crate::nft::table_name(&other)).unwrap_or(false)
            && registry::is_live(state, &other)
        {
            return Err(WgError::invalid(
                "killSwitch",
                format!(
                    "tunnel {other} already has a kill switch in this network namespace, and \
                     two would block each other: disconnect it first, or connect this one \
                     without killSwitch"
                ),
            ));
        }
    }
    Ok(())
}

/// The highest N that `name: 'auto'` tries for `wgsentN`.
const AUTO_MAX: u32 = 255;

/// How long `connect` waits for another process that is removing a dead owner's tunnel of
/// the same name (a watchdog, a sweep) before giving up with a retryable error.
const NAME_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// Take the name for this connect, with its lock: `auto` becomes the first `wgsentN` with no
/// interface, no live owner, nobody at work on it and no wireguard-go socket of another
/// namespace; any other name is taken as given (a live owner's is refused with
/// `WG_NAME_IN_USE`). A live tunnel of this process with that name is removed first (the
/// SDK's second `installWgTunnel` for verify-before-capture). Returns the name, its lock and
/// whether an own tunnel was replaced.
fn claim_name(state: &StateDir, requested: &str) -> Result<(String, Claimed, bool)> {
    if requested == "auto" {
        for n in (0..=AUTO_MAX).map(|i| format!("wgsent{i}")) {
            if registry::get(&n).is_some()
                || netdev::exists(&n)
                || std::path::Path::new(&format!("/run/wireguard/{n}.sock")).exists()
            {
                continue;
            }
            if let Some(lock) = NameLock::try_acquire(state, &n)? {
                if !matches!(owner::owner_of(state, &n), Owner::Alive(_) | Owner::Me(_)) {
                    match NsClaim::take(&n) {
                        Claim::TakenBy(_) => continue,
                        Claim::Held(c) => return Ok((n, (lock, Some(c)), false)),
                        Claim::Squatted => return Ok((n, (lock, None), false)),
                    }
                }
            }
        }
        return Err(WgError::setup(
            "name",
            format!("no free wgsentN for N up to {AUTO_MAX}"),
        ));
    }
    let name = requested.to_string();
    let mut replaced = false;
    if registry::get(&name).is_some() {
        if netdev::exists(&name) && !registry::is_own_native(&name) && !netdev::is_wireguard(&name)
        {
            return Err(WgError::NotWireGuard {
                driver: netdev::driver(&name).unwrap_or_else(|| "unknown".into()),
                name,
            });
        }
        let r = registry::cleanup_locked(state, &name, None);
        if !r.gone {
            return Err(WgError::setup(
                "converge",
                format!("this process's own {name} could not be removed"),
            ));
        }
        replaced = true;
    }
    let lock = match NameLock::try_acquire(state, &name)? {
        Some(lock) => lock,
        None => {
            if let Owner::Alive(r) = owner::owner_of(state, &name) {
                return Err(WgError::NameInUse { name, pid: r.pid });
            }
            match NameLock::acquire(state, &name, NAME_BOUND)? {
                Some(lock) => lock,
                None => {
                    return match owner::owner_of(state, &name) {
                        Owner::Alive(r) => Err(WgError::NameInUse { name, pid: r.pid }),
                        _ => Err(WgError::setup(
                            "name",
                            format!(
                                "another process held {name} for more than {NAME_BOUND:?}; retry"
                            ),
                        )),
                    }
                }
            }
        }
    };
    // The namespace-wide claim: a live agent whose state lives elsewhere (another /run,
    // another BLUE_WG_STATE_DIR) holds it for its tunnel.
    match NsClaim::take(&name) {
        Claim::Held(c) => Ok((name, (lock, Some(c)), replaced)),
        Claim::Squatted => Ok((name, (lock, None), replaced)),
        Claim::TakenBy(pid) => Err(WgError::NameInUse { name, pid }),
    }
}

/// A name this connect holds: its lock in the state directory, and its namespace-wide claim
/// (None when another user squats on the claim's socket).
type Claimed = (NameLock, Option<NsClaim>);

/// The steps after `connect` holds the name: the backend's bring-up, the interface up, the
/// first handshake (unless `handshake` is zero), DNS.
fn bring_up(
    be: &dyn Backend,
    state: &StateDir,
    cfg: &TunnelConfig,
    ctx: &mut UpContext,
    handshake: std::time::Duration,
) -> Result<Option<dns::DnsMethod>> {
    let tunnel: Arc<dyn backend::Tunnel> = Arc::from(be.up(cfg, ctx)?);
    // From here on the cleanup routine stops the tunnel through its handle.
    registry::set_tunnel(&cfg.name, Arc::clone(&tunnel));
    cmd::wait_until(READY_BOUND, || {
        netdev::link_state(&cfg.name).filter(|s| s.up)
    })
    .ok_or_else(|| {
        WgError::setup(
            "wait-ready",
            format!("{} was not up within {:?}", cfg.name, READY_BOUND),
        )
    })?;
    (ctx.progress)("kernel-ready", &cfg.name);
    if let Some(t) = ctx.table.filter(|_| !cfg.exclude.is_empty()) {
        crate::routing::add_exclusions(t, &cfg.exclude, ctx.ipv6)
            .map_err(|e| WgError::setup("exclude", e))?;
        (ctx.progress)(
            "exclude",
            &format!("{} destination(s) around the tunnel", cfg.exclude.len()),
        );
    }
    if cfg.kill_switch {
        let spec = kill_switch_spec(cfg, ctx.table, ctx.ipv6);
        let detail = match registry::get(&cfg.name).and_then(|a| a.kill_switch) {
            // Adopted from the tunnel this one replaced.
            Some(k) => {
                k.update(&spec)
                    .map_err(|e| WgError::setup("kill-switch", e))?;
                format!("table inet {} (kept from the tunnel replaced)", k.table())
            }
            None => {
                let ks = crate::nft::KillSwitch::install(&spec)
                    .map_err(|e| WgError::setup("kill-switch", e))?;
                let mut d = format!("table inet {}", ks.table());
                for n in ks.notes() {
                    d.push_str("; note: ");
                    d.push_str(n);
                }
                registry::set_kill_switch(&cfg.name, ks);
                d
            }
        };
        (ctx.progress)("kill-switch", &detail);
    }
    // Before DNS: a node that does not answer costs the host nothing but this wait.
    if !handshake.is_zero() {
        let t = std::time::Instant::now();
        crate::handshake::wait(tunnel.as_ref(), cfg, handshake)?;
        let waited = t.elapsed().as_secs_f64() * 1000.0;
        (ctx.progress)(
            "handshake",
            &format!("{} after {waited:.1} ms", cfg.peer.endpoint),
        );
    }
    if cfg.dns.is_empty() {
        return Ok(None);
    }
    let m = dns::apply(&state.path, state.netns.inode, &cfg.name, &cfg.dns)?;
    (ctx.progress)("dns", m.as_str());
    Ok(Some(m))
}

/// Change this process's live tunnel `name` in place (same interface, open connections
/// kept): the peer's allowed IPs (split <-> full, with the routing, rules and DNS that go
/// with them), DNS, keepalive, endpoint. Validated like a connect before anything changes; a
/// failure puts the old config back (or, if even that fails, takes the tunnel down and says
/// so). Ordered after every lifecycle call made before it.
pub fn update(name: &str, patch: &crate::config::Patch) -> Result<TunnelInfo> {
    crate::config::validate_interface_name(name)?;
    let r = reconfigure(name, |live, _| {
        let raw = patch.apply_to(&live.raw);
        let cfg = TunnelConfig::from_raw(raw.clone())?;
        Ok(Some((raw, cfg)))
    })?;
    r.ok_or_else(|| WgError::NotConnected(name.to_string()))
}

/// A second connect of a live tunnel of this process that differs only in what `update`
/// can change (the SDK's verify-before-capture: split, then full): done in place. None when
/// it cannot be (not ours, another backend, other keys, addresses or MTU): the caller
/// replaces the tunnel instead.
fn connect_in_place(
    given: &RawConfig,
    cfg: &TunnelConfig,
    be: &dyn Backend,
    owner: u64,
) -> Result<Option<TunnelInfo>> {
    reconfigure(&cfg.name, |live, active| {
        let old = &live.cfg;
        // Same backend and the same JavaScript environment (a worker's tunnel goes with the
        // worker: another environment's connect replaces it instead).
        let same = active.backend == be.name()
            && active.owner == owner
            && old.kill_switch == cfg.kill_switch
            && old.allow_lan == cfg.allow_lan
            && be.routes_full_tunnel()
            && old.private_key == cfg.private_key
            && old.addresses == cfg.addresses
            && old.mtu == cfg.mtu
            && old.peer.public_key == cfg.peer.public_key
            && old.peer.preshared_key == cfg.peer.preshared_key;
        Ok(same.then(|| (given.clone(), cfg.clone())))
    })
}

/// Change live tunnel `name` to the config `next(live, backend)` returns (raw as given, and
/// validated); None from it (or no such live tunnel): nothing is done and None returned.
fn reconfigure(
    name: &str,
    next: impl FnOnce(&registry::Live, &Active) -> Result<Option<(RawConfig, TunnelConfig)>>,
) -> Result<Option<TunnelInfo>> {
    let t0 = Instant::now();
    let _guard = registry::lock();
    let not_up = || WgError::NotConnected(name.to_string());
    let Some(active) = registry::get(name) else {
        return Ok(None);
    };
    let (Some(live), Some(tunnel)) = (active.live.clone(), active.tunnel.clone()) else {
        return Ok(None);
    };
    let be = backend::by_name(active.backend);
    let Some((raw, mut new)) = next(&live, &active)? else {
        return Ok(None);
    };
    // Only the native backends change a live tunnel; refused before anything is touched.
    if !be.routes_full_tunnel() {
        return Err(WgError::NotAvailable(format!(
            "{name} runs on the {} backend, which cannot change a live tunnel: reconnect \
             instead (the kernel and embedded backends can)",
            be.name()
        )));
    }
    new.name = name.to_string();
    // The endpoint as given is resolved again only when it changed (a host name of the old
    // one may not resolve any more, e.g. while DNS goes through a dead node).
    new.peer.endpoint = if raw.peer.as_ref().and_then(|p| p.endpoint.as_ref())
        == live.raw.peer.as_ref().and_then(|p| p.endpoint.as_ref())
    {
        live.cfg.peer.endpoint.clone()
    } else {
        new.peer
            .endpoint
            .resolve(crate::config::RESOLVE_BOUND)?
            .into()
    };
    // Excluded host names are resolved again only when `exclude` changed.
    if raw.exclude == live.raw.exclude {
        new.exclude = live.cfg.exclude.clone();
    } else {
        resolve_exclusions(&mut new, &mut |_| {})?;
    }
    // What DNS will need, before anything changes (as connect's preflight).
    if new.dns != live.cfg.dns {
        dns::preflight(&new.dns)?;
    }
    let state = StateDir::existing()?.ok_or_else(not_up)?;
    let mut record = owner::read(&state, name).ok_or_else(|| {
        WgError::setup("update", format!("the ownership record of {name} is gone"))
    })?;
    let new_table = match (be.routes_full_tunnel() && new.full_tunnel(), live.table) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => {
            let taken = owner::live_tables(&state);
            Some(crate::routing::pick_table(&taken).map_err(|e| WgError::setup("routing", e))?)
        }
    };
    // Recorded before any rule of a new table exists (whoever reaps finds them); an old
    // table stays recorded until its rules are gone.
    let before = record.clone();
    record.table = new_table.or(live.table);
    record.full_tunnel = new.full_tunnel() || live.cfg.full_tunnel();
    owner::rewrite(&state, &record)?;
    let change = backend::Change {
        old: &live.cfg,
        new: &new,
        ipv6: live.ipv6,
        old_table: live.table,
        new_table,
    };
    let kill_switch = active.kill_switch.clone();
    let applied = (|| {
        // The kill switch lets the node's flow out unmarked while the mark changes.
        if let Some(k) = &kill_switch {
            let passing = new_table.filter(|_| live.table == new_table);
            k.update(&kill_switch_spec(&new, passing, live.ipv6))
                .map_err(|e| WgError::setup("kill-switch", e))?;
        }
        tunnel.update(&change)?;
        exclusions(
            &live.cfg.exclude,
            live.table,
            &new.exclude,
            new_table,
            live.ipv6,
        )?;
        if let Some(k) = &kill_switch {
            k.update(&kill_switch_spec(&new, new_table, live.ipv6))
                .map_err(|e| WgError::setup("kill-switch", e))?;
        }
        Ok(())
    })()
    .and_then(|()| {
        if new.dns == live.cfg.dns {
            return Ok(live.dns_method);
        }
        if new.dns.is_empty() {
            dns::restore_live(&state.path, state.netns.inode, name, &|n| {
                n != name && registry::is_live(&state, n)
            });
            return Ok(None);
        }
        dns::apply(&state.path, state.netns.inode, name, &new.dns).map(Some)
    });
    let dns_method = match applied {
        Ok(m) => m,
        Err(e) => {
            return Err(undo_update(
                &state,
                &before,
                tunnel.as_ref(),
                &change,
                &live,
                e,
            ))
        }
    };
    record.table = new_table;
    record.full_tunnel = new.full_tunnel();
    record.dns = new.dns.iter().map(IpAddr::to_string).collect();
    // The tunnel has changed: a record that cannot be narrowed now still names everything
    // there is to reap (both tables, full), so this is not undone.
    let _ = owner::rewrite(&state, &record);
    let next = registry::Live {
        raw,
        cfg: new,
        table: new_table,
        ipv6: live.ipv6,
        dns_method,
    };
    let mut info = describe(be, &next, &active.conf_path);
    info.watchdog_pid = active.watchdog.as_ref().map(|w| w.pid);
    info.connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    info.steps = vec![("update".to_string(), info.connect_ms)];
    registry::set_live(name, next);
    Ok(Some(info))
}

/// After a failed `update`: the old config back on the device, its routing and DNS, and the
/// old record. If that fails too, the tunnel is taken down (by the cleanup routine) rather
/// than left half-changed; the error says which.
fn undo_update(
    state: &StateDir,
    before: &Record,
    tunnel: &dyn backend::Tunnel,
    change: &backend::Change,
    live: &registry::Live,
    e: WgError,
) -> WgError {
    let name = &live.cfg.name;
    let back = backend::Change {
        old: change.new,
        new: change.old,
        ipv6: change.ipv6,
        old_table: change.new_table,
        new_table: change.old_table,
    };
    let restored = tunnel.update(&back).and_then(|()| {
        exclusions(
            &change.new.exclude,
            change.new_table,
            &change.old.exclude,
            change.old_table,
            change.ipv6,
        )?;
        if let Some(k) = registry::get(name).and_then(|a| a.kill_switch) {
            k.update(&kill_switch_spec(change.old, change.old_table, change.ipv6))
                .map_err(|e| WgError::setup("kill-switch", e))?;
        }
        if live.cfg.dns.is_empty() {
            dns::restore_live(&state.path, state.netns.inode, name, &|n| {
                n != name && registry::is_live(state, n)
            });
            Ok(())
        } else {
            dns::apply(&state.path, state.netns.inode, name, &live.cfg.dns).map(|_| ())
        }
    });
    match restored.and_then(|()| owner::rewrite(state, before)) {
        Ok(()) => e,
        Err(again) => {
            registry::cleanup_locked(state, name, None);
            WgError::setup(
                "update",
                format!("{e}; putting the old config back failed too ({again}), so {name} was taken down"),
            )
        }
    }
}

/// Take down `name`, or the latest tunnel of this process. None when there was nothing to
/// take down. Idempotent. Ordered after every lifecycle call made before it (`Ticket`).
pub fn disconnect(name: Option<&str>) -> Result<Option<TeardownReport>> {
    if let Some(n) = name {
        crate::config::validate_interface_name(n)?;
    }
    let _guard = registry::lock();
    let name = match name {
        Some(n) => n.to_string(),
        None => match registry::latest() {
            Some(a) => a.name,
            None => return Ok(None),
        },
    };
    if registry::get(&name).is_some() {
        return Ok(registry::cleanup_own(&name));
    }
    let exists = netdev::exists(&name);
    // Not ours: only with a trusted state directory (an unsafe one is refused, not read).
    let state = StateDir::existing()?;
    // A live owner's tunnel is refused as such (an embedded one is a plain tun device).
    if let Some(Owner::Alive(r)) = state.as_ref().map(|s| owner::owner_of(s, &name)) {
        return Err(WgError::NameInUse { name, pid: r.pid });
    }
    if exists
        && !netdev::is_wireguard(&name)
        && !state
            .as_ref()
            .is_some_and(|s| registry::is_dying_owners_tun(s, &name))
    {
        return Err(WgError::NotWireGuard {
            driver: netdev::driver(&name).unwrap_or_else(|| "unknown".into()),
            name,
        });
    }
    let claimed = match &state {
        Some(s) => registry::claimed_by_other(s, &name),
        None => registry::claimed_elsewhere(&name),
    };
    if let Some(pid) = claimed {
        return Err(WgError::NameInUse { name, pid });
    }
    let Some(state) = state else {
        let conf = confdir::conf_path(&name);
        if !exists {
            return Ok(None);
        }
        return Ok(Some(crate::teardown::teardown_linux_interface(
            &name,
            Some(&conf),
        )));
    };
    if let Owner::Alive(r) = owner::owner_of(&state, &name) {
        return Err(WgError::NameInUse { name, pid: r.pid });
    }
    let conf = state.file(&format!("{name}.conf"));
    if !exists
        && !dns::pending(&state.path, state.netns.inode, &name)
        && !conf.exists()
        && owner::read(&state, &name).is_none()
    {
        return Ok(None);
    }
    let Some(_held) = NameLock::acquire(&state, &name, NAME_BOUND)? else {
        return Err(WgError::setup(
            "lock",
            format!("another process is working on {name}; retry"),
        ));
    };
    let conf = owner::read(&state, &name)
        .map(|r| r.conf_path)
        .unwrap_or(conf);
    Ok(Some(registry::cleanup_locked(&state, &name, Some(&conf))))
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
    let stats = active
        .as_ref()
        .and_then(|a| a.tunnel.as_ref())
        .and_then(|t| t.stats().ok());
    let healthy = link.as_ref().is_some_and(|l| l.up)
        && stats
            .as_ref()
            .and_then(|s| s.last_handshake_ms)
            .is_some_and(|ms| ms < crate::handshake::REJECT_AFTER.as_secs_f64() * 1000.0);
    Ok(TunnelStatus {
        healthy,
        stats,
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
