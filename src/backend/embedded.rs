//! The embedded backend: WireGuard inside this process (`gotatun`, Mullvad's maintained fork
//! of boringtun) on a tun device that is not persistent, so the kernel deletes the interface
//! the moment the process dies, however it dies. Routing over rtnetlink (`routing`); DNS by
//! the caller (`dns`). No subprocess, and the private key goes from memory to the device,
//! never to a file.
//!
//! gotatun is async: it runs on the tokio runtime handed in through `UpContext::runtime`
//! (napi's own, in the addon: no second runtime, no extra threads, no signal handling). Its
//! `Device` must be stopped inside that runtime (its destructor needs one), so `stop` hands
//! its explicit, bounded stop to the runtime and waits for the tun to disappear (deleting it
//! over rtnetlink if it does not). The runtime's threads are not libuv handles: nothing here
//! keeps the Node event loop alive.
//!
//! What a dead owner leaves: the tun and every route on it are gone with the process; the
//! full tunnel's policy rules stay (falling through to the main table, so nothing is
//! black-holed) until `reap` removes them by exact match, from the table in the record.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use gotatun::device::{self, DefaultDeviceTransports, Device, Peer};
use gotatun::tun::tun_async_device::TunDevice;
use gotatun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use super::{Backend, Stats, Tunnel, UpContext};
use crate::cmd;
use crate::config::TunnelConfig;
use crate::error::{Result, WgError};
use crate::netdev;
use crate::owner::Record;
use crate::routing;
use crate::teardown::{StepReport, TeardownReport};

pub const NAME: &str = "embedded";
/// How long the kernel may take to remove the tun once its last descriptor is closed (and
/// the device to let go of it).
const GONE_BOUND: Duration = Duration::from_secs(1);
/// How long the device's own stop may take on the runtime (it only stops its tasks).
const STOP_BOUND: Duration = Duration::from_secs(2);
const TUN_DEVICE: &str = "/dev/net/tun";
/// How long `initiate_handshake` waits for the handshake it asked for, holding the device.
const HANDSHAKE_PUSH: Duration = Duration::from_millis(50);
/// wireguard-go (what nodes run) drops a handshake initiation that arrives within 20 ms of
/// the last one it accepted from the same peer (its flood guard); the initiator then retries
/// only after REKEY_TIMEOUT (5 s). A new device for a node whose previous device of ours
/// stopped less than this ago waits for the rest of it before it starts.
const HANDSHAKE_GAP: Duration = Duration::from_millis(25);

/// When this process last stopped a device for each node (by the node's public key).
static LAST_STOP: Mutex<Vec<([u8; 32], Instant)>> = Mutex::new(Vec::new());

pub(crate) fn note_stop(node: [u8; 32]) {
    let mut v = LAST_STOP.lock().unwrap_or_else(|p| p.into_inner());
    v.retain(|(k, t)| *k != node && t.elapsed() < HANDSHAKE_GAP);
    v.push((node, Instant::now()));
}

/// Wait until `HANDSHAKE_GAP` has passed since the last device for `node` stopped.
pub(crate) fn wait_handshake_gap(node: [u8; 32]) {
    let stopped = LAST_STOP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(k, _)| *k == node)
        .map(|(_, t)| *t);
    if let Some(t) = stopped {
        cmd::wait_until(HANDSHAKE_GAP, || {
            (t.elapsed() >= HANDSHAKE_GAP).then_some(())
        });
    }
}

type Dev = Device<DefaultDeviceTransports>;

pub struct Embedded;

/// Why the embedded backend cannot run here, or None.
pub fn unavailable_reason() -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(TUN_DEVICE) {
        Ok(m) if m.file_type().is_char_device() => {}
        _ => {
            return Some(format!(
                "{TUN_DEVICE} is missing (in a container: --device /dev/net/tun)"
            ))
        }
    }
    if !super::has_capability(super::CAP_NET_ADMIN) {
        return Some(
            "this process lacks CAP_NET_ADMIN (run as root, or grant the capability)".into(),
        );
    }
    None
}

pub(crate) fn step(name: &str, ok: bool, detail: String, t: Instant) -> StepReport {
    StepReport {
        step: name.into(),
        ran: true,
        ok,
        detail,
        elapsed_ms: t.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Remove the full tunnel's rules recorded as `table`; a step for the report.
pub(super) fn rules_step(table: u32) -> StepReport {
    let t = Instant::now();
    let done = routing::remove_full_tunnel_rules(table);
    let ok = !done.iter().any(|d| d.contains("NOT removed"));
    let detail = if done.is_empty() {
        format!("no rules of table {table} left")
    } else {
        format!("removed {}", done.join(", "))
    };
    step("rules", ok, detail, t)
}

/// Wait (bounded) until the kernel has removed `name`; true when it is gone.
fn wait_gone(name: &str) -> bool {
    cmd::wait_until(GONE_BOUND, || (!netdev::exists(name)).then_some(())).is_some()
}

/// The node's counters as a gotatun device (of any transports) reports them.
pub(crate) fn peer_stats<T: gotatun::device::DeviceTransports>(
    runtime: &tokio::runtime::Handle,
    dev: &Device<T>,
    peer: &PublicKey,
) -> Result<Stats> {
    let p = runtime
        .block_on(dev.peers())
        .into_iter()
        .find(|p| p.peer.public_key == *peer)
        .ok_or_else(|| WgError::setup("stats", "the peer is gone"))?;
    Ok(Stats {
        last_handshake_ms: p.stats.last_handshake.map(|d| d.as_secs_f64() * 1000.0),
        rx_bytes: p.stats.rx_bytes as u64,
        tx_bytes: p.stats.tx_bytes as u64,
        endpoint: p.peer.endpoint.map(|e| e.to_string()),
    })
}

/// The node as gotatun's peer: key, endpoint, allowed IPs, keepalive, preshared key.
pub(crate) fn peer_of(
    cfg: &TunnelConfig,
    allowed: &[IpNet],
    endpoint: std::net::SocketAddr,
) -> Peer {
    let mut peer = Peer::new(PublicKey::from(cfg.peer.public_key.0))
        .with_endpoint(endpoint)
        .with_allowed_ips(allowed.iter().map(network));
    if cfg.peer.persistent_keepalive > 0 {
        peer.keepalive = Some(cfg.peer.persistent_keepalive);
    }
    if let Some(psk) = &cfg.peer.preshared_key {
        peer = peer.with_preshared_key(psk.0);
    }
    peer
}

fn network(n: &IpNet) -> ipnetwork::IpNetwork {
    ipnetwork::IpNetwork::new(n.addr(), n.prefix_len()).expect("a valid prefix length")
}

/// A tunnel served by gotatun inside this process.
pub struct EmbeddedTunnel {
    name: String,
    runtime: tokio::runtime::Handle,
    device: Mutex<Option<Dev>>,
    /// The tun's interface index (ours while we hold the device).
    index: u32,
    peer: PublicKey,
    /// The full tunnel's table (and fwmark), whose rules `stop` removes (changed by
    /// `update`).
    table: Mutex<Option<u32>>,
}

impl EmbeddedTunnel {
    /// Stop the device inside its runtime: the stop is handed to the runtime (it can wait for
    /// a task's next wake-up), and the tun goes when the device's state is dropped there. The
    /// caller waits for the interface to disappear, which the kernel shows as soon as it
    /// unlists it (before the rest of its unregistering, which nobody needs to wait for).
    fn stop_device(&self) -> Option<StepReport> {
        let dev = self
            .device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let t = Instant::now();
        let rt = self.runtime.clone();
        // Never let a panic (e.g. a runtime being shut down) escape an exit path.
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            rt.spawn(async move {
                let _ = tokio::time::timeout(STOP_BOUND, dev.stop()).await;
            });
        }));
        note_stop(self.peer.to_bytes());
        let (ok, detail) = match spawned {
            Ok(()) => (true, "stopping".to_string()),
            Err(_) => (false, "the runtime refused the device's stop".to_string()),
        };
        Some(step("stop device", ok, detail, t))
    }
}

impl Tunnel for EmbeddedTunnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        NAME
    }

    fn stats(&self) -> Result<Stats> {
        let guard = self.device.lock().unwrap_or_else(|p| p.into_inner());
        let dev = guard
            .as_ref()
            .ok_or_else(|| WgError::setup("stats", "the tunnel is stopped"))?;
        peer_stats(&self.runtime, dev, &self.peer)
    }

    /// gotatun is asked directly: it sends an initiation unless one is under way, and its
    /// answer is awaited here for a moment (usually all it takes); `handshake::wait` goes on
    /// from the device's stats. (The device stays locked meanwhile, hence the short bound.)
    fn initiate_handshake(&self, _cfg: &TunnelConfig) {
        let guard = self.device.lock().unwrap_or_else(|p| p.into_inner());
        let Some(dev) = guard.as_ref() else { return };
        let _ = self.runtime.block_on(async {
            tokio::time::timeout(HANDSHAKE_PUSH, dev.force_handshake(&self.peer)).await
        });
    }

    /// The peer changes in place (gotatun `modify_peer`: its session and keys stay), the
    /// socket's mark follows the full tunnel's table, then the routing moves.
    fn update(&self, change: &super::Change) -> Result<()> {
        // Until the routing has moved, `stop` removes the rules of whichever table there is.
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) =
            change.new_table.or(change.old_table);
        let (_, allowed) = change.allowed();
        let endpoint = change
            .new
            .peer
            .endpoint
            .resolve(crate::config::RESOLVE_BOUND)?;
        let keepalive = change.new.peer.persistent_keepalive;
        {
            let guard = self.device.lock().unwrap_or_else(|p| p.into_inner());
            let dev = guard
                .as_ref()
                .ok_or_else(|| WgError::setup("update", "the tunnel is stopped"))?;
            let nets: Vec<ipnetwork::IpNetwork> = allowed.iter().map(network).collect();
            let peer = self.peer;
            let found = self
                .runtime
                .block_on(async {
                    dev.write(async move |d| {
                        if let Some(mark) = change.new_table {
                            d.set_fwmark(mark)?;
                        }
                        Ok(d.modify_peer(&peer, move |p| {
                            p.clear_allowed_ips();
                            p.add_allowed_ips(nets);
                            p.set_endpoint(Some(endpoint));
                            p.set_keepalive((keepalive > 0).then_some(keepalive));
                        })
                        .await)
                    })
                    .await?
                })
                .map_err(|e: gotatun::device::Error| WgError::setup("device", e.to_string()))?;
            if !found {
                return Err(WgError::setup("device", "the peer is gone"));
            }
        }
        super::reroute(self.index, change)?;
        // Both tables' rules are now where they should be: the handle keeps the new one.
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = change.new_table;
        if change.new_table.is_none() && change.old_table.is_some() {
            // Split again: the device's packets need no mark (best effort; a stale mark only
            // matters to a rule of that table, and there is none now).
            let guard = self.device.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(dev) = guard.as_ref() {
                let _ = self.runtime.block_on(async { dev.set_fwmark(0).await });
            }
        }
        Ok(())
    }

    fn stop(&self) -> TeardownReport {
        let existed = netdev::exists(&self.name);
        let mut steps = Vec::new();
        steps.extend(self.stop_device());
        let mut gone = wait_gone(&self.name);
        if !gone {
            // The device did not let go of the tun in time: delete the link (ours: we
            // created it with this index and held it until now).
            let t = Instant::now();
            let r = routing::delete_link(self.index);
            gone = !netdev::exists(&self.name);
            let detail = match r {
                Ok(()) => format!("still there {GONE_BOUND:?} after the stop: deleted"),
                Err(e) => format!("still there {GONE_BOUND:?} after the stop; delete: {e}"),
            };
            steps.push(step("delete link", gone, detail, t));
        }
        if let Some(t) = *self.table.lock().unwrap_or_else(|p| p.into_inner()) {
            steps.push(rules_step(t));
        }
        TeardownReport {
            name: self.name.clone(),
            existed,
            gone,
            steps,
            config_removed: false,
            config_path: None,
        }
    }
}

impl Drop for EmbeddedTunnel {
    fn drop(&mut self) {
        // A handle dropped without `stop` (it should not happen) still stops its device
        // inside the runtime, as gotatun requires.
        let _ = self.stop_device();
    }
}

impl Backend for Embedded {
    fn name(&self) -> &'static str {
        NAME
    }

    fn available(&self) -> Result<()> {
        super::available_unless(unavailable_reason())
    }

    fn check_privileges(&self) -> Result<()> {
        super::require_net_admin(NAME)
    }

    fn routes_full_tunnel(&self) -> bool {
        true
    }

    fn up(&self, cfg: &TunnelConfig, ctx: &mut UpContext) -> Result<Box<dyn Tunnel>> {
        let runtime = ctx
            .runtime
            .cloned()
            .ok_or_else(|| WgError::setup("embedded", "no async runtime was given"))?;
        let (allowed, table) = super::routes_of(cfg, ctx)?;
        let endpoint = cfg.peer.endpoint.resolve(crate::config::RESOLVE_BOUND)?;

        // The tun: created by this process, not persistent (gone with the last descriptor).
        let _enter = runtime.enter();
        let mut tc = gotatun::tun::tun::Configuration::default();
        tc.tun_name(&cfg.name).mtu(cfg.mtu);
        let tun = gotatun::tun::tun::create_as_async(&tc)
            .map_err(|e| WgError::setup("tun", format!("cannot create {}: {e}", cfg.name)))?;
        let tun = TunDevice::from_tun_device(tun)
            .map_err(|e| WgError::setup("tun", format!("{}: {e}", cfg.name)))?;
        let index = netdev::index(&cfg.name)
            .ok_or_else(|| WgError::setup("tun", format!("{} did not appear", cfg.name)))?;

        let peer_key = PublicKey::from(cfg.peer.public_key.0);
        let peer = peer_of(cfg, &allowed, endpoint);
        wait_handshake_gap(cfg.peer.public_key.0);
        let mut builder = device::build()
            .with_default_udp()
            .with_ip(tun)
            .with_private_key(StaticSecret::from(cfg.private_key.0))
            .with_peer(peer);
        if let Some(mark) = table {
            // Its UDP packets carry the mark, so the `not fwmark` rule lets them out.
            builder = builder.with_fwmark(mark);
        }
        let dev = runtime
            .block_on(builder.build())
            .map_err(|e| WgError::setup("device", e.to_string()))?;
        let tunnel = EmbeddedTunnel {
            name: cfg.name.clone(),
            runtime: runtime.clone(),
            device: Mutex::new(Some(dev)),
            index,
            peer: peer_key,
            table: Mutex::new(table),
        };
        (ctx.progress)("interface-up", &cfg.name);

        match routing::up(index, cfg.mtu as u32, &cfg.addresses, &allowed, table) {
            Ok(routed) => {
                (ctx.progress)("routing", &routed.describe(allowed.len()));
                Ok(Box::new(tunnel))
            }
            Err(e) => {
                drop(_enter);
                tunnel.stop();
                Err(WgError::setup("routing", e))
            }
        }
    }

    fn reap(&self, record: &Record) -> TeardownReport {
        let existed = netdev::exists(&record.name);
        let mut steps = Vec::new();
        // The kernel removes the tun with its owner; a just-killed owner may need a moment.
        let gone = !existed || wait_gone(&record.name);
        if !gone {
            steps.push(StepReport::note(
                "wait",
                &format!(
                    "{} is still there: its owner's descriptor is open somewhere",
                    record.name
                ),
            ));
        } else if existed {
            steps.push(StepReport::note(
                "tun",
                "the kernel removed the tun with its owner",
            ));
        }
        if let Some(t) = record.table {
            steps.push(rules_step(t));
        }
        if steps.is_empty() {
            steps.push(StepReport::note("all", "nothing was left"));
        }
        TeardownReport {
            name: record.name.clone(),
            existed,
            gone,
            steps,
            config_removed: false,
            config_path: None,
        }
    }
}
