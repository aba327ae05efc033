//! The kernel backend: the kernel's own WireGuard (the `wireguard` module), created and
//! configured over netlink, with no subprocess and no key file.
//!
//! 1. The interface: `RTM_NEWLINK` with `IFLA_INFO_KIND "wireguard"` (what `ip link add
//!    <name> type wireguard` sends). The kernel loads the module itself when it is loadable
//!    (its `rtnl-link-wireguard` alias); `EOPNOTSUPP` means it cannot: `WG_NOT_AVAILABLE`.
//! 2. The device: `WG_CMD_SET_DEVICE` over generic netlink (the `wireguard` family, resolved
//!    with `CTRL_CMD_GETFAMILY`): the private key straight from memory, listen port 0 (the
//!    kernel picks one), the full tunnel's fwmark (= its recorded table), and the one peer
//!    (public key, preshared key, endpoint, persistent keepalive, allowed IPs), with
//!    `WGDEVICE_F_REPLACE_PEERS` and `WGPEER_F_REPLACE_ALLOWEDIPS` so the device holds exactly
//!    this config.
//! 3. Addresses, MTU, routes and rules: `routing::up`, exactly as the embedded backend.
//!
//! `stats` reads `WG_CMD_GET_DEVICE` (a dump): last handshake, byte counters, endpoint.
//!
//! Unlike the embedded backend's tun, a kernel interface outlives its process: a SIGKILLed
//! owner leaves it up and routing. The watchdog (or the next start's sweep) calls `reap`,
//! which deletes it, but only when it is a kernel WireGuard link, and removes its rules by the
//! table in the record.
//!
//! Messages are `netlink-packet-route`'s and `netlink-packet-wireguard`'s, sent over the
//! synchronous socket of `netlink` (the watchdog and the exit hooks reap kernel interfaces
//! too, and have no async runtime).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_generic::ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};

use super::embedded::{note_stop, rules_step, step, wait_handshake_gap};
use super::{Backend, Stats, Tunnel, UpContext};
use crate::cmd;
use crate::config::TunnelConfig;
use crate::error::{Result, WgError};
use crate::netdev;
use crate::netlink::{is_errno, Netlink};
use crate::owner::Record;
use crate::routing;
use crate::teardown::{StepReport, TeardownReport};

pub const NAME: &str = "kernel";
/// The link kind, the kernel driver's name and the generic netlink family's name.
pub const KIND: &str = "wireguard";

pub struct Kernel;

/// The running kernel's release (`uname -r`), read in-process.
fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// Why the kernel has no WireGuard module it can use, or None. Cheap: a few file checks
/// (loaded: `/sys/module/wireguard`; loadable: `wireguard.ko*` where every distribution puts
/// it under `/lib/modules/<release>`; built in: listed in `modules.builtin`), no subprocess.
pub fn module_reason_in(sys_module: &Path, lib_modules: &Path, release: &str) -> Option<String> {
    if sys_module.join(KIND).exists() {
        return None;
    }
    let dir = lib_modules.join(release);
    for ext in ["", ".xz", ".zst", ".gz"] {
        let ko = format!("kernel/drivers/net/wireguard/wireguard.ko{ext}");
        if dir.join(ko).exists() {
            return None;
        }
    }
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    if builtin.lines().any(|l| l.ends_with("/wireguard.ko")) {
        return None;
    }
    Some(format!(
        "the kernel ({release}) has no WireGuard module: no /sys/module/wireguard and no \
         wireguard.ko under {} (in a container: load it on the host with `modprobe wireguard`)",
        dir.display()
    ))
}

fn module_reason() -> Option<String> {
    let release = kernel_release().unwrap_or_default();
    module_reason_in(
        Path::new("/sys/module"),
        Path::new("/lib/modules"),
        &release,
    )
}

/// Why the kernel backend cannot run here, or None. Cheap: no subprocess.
pub fn unavailable_reason() -> Option<String> {
    if let Some(why) = module_reason() {
        return Some(why);
    }
    if !super::has_capability(super::CAP_NET_ADMIN) {
        return Some(
            "this process lacks CAP_NET_ADMIN (run as root, or grant the capability)".into(),
        );
    }
    None
}

// ------------------------------------------------------------------------- messages

/// `ip link add <name> type wireguard`.
pub fn new_link(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Wireguard,
        )]));
    m
}

/// `CTRL_CMD_GETFAMILY` for the `wireguard` generic netlink family.
pub fn get_family() -> GenlMessage<GenlCtrl> {
    GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(KIND.to_string())],
    })
}

/// The one peer of a tunnel, as `WG_CMD_SET_DEVICE` carries it.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub public_key: [u8; 32],
    pub preshared_key: Option<[u8; 32]>,
    pub endpoint: SocketAddr,
    /// Seconds; 0 is off.
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.trunc().addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

fn peer(p: &PeerSpec) -> WireguardPeer {
    let mut attrs = vec![
        WireguardPeerAttribute::PublicKey(p.public_key),
        // The peer's allowed IPs are exactly these (not added to what it had).
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
    ];
    if let Some(psk) = p.preshared_key {
        attrs.push(WireguardPeerAttribute::PresharedKey(psk));
    }
    attrs.push(WireguardPeerAttribute::Endpoint(p.endpoint));
    attrs.push(WireguardPeerAttribute::PersistentKeepalive(
        p.persistent_keepalive,
    ));
    attrs.push(WireguardPeerAttribute::AllowedIps(
        p.allowed_ips.iter().map(allowed_ip).collect(),
    ));
    WireguardPeer(attrs)
}

/// `WG_CMD_SET_DEVICE` for the device with index `index`: key, random listen port, fwmark
/// (0: none), and `p` as its only peer.
pub fn set_device(
    index: u32,
    private_key: [u8; 32],
    fwmark: Option<u32>,
    p: &PeerSpec,
) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfIndex(index),
            WireguardAttribute::PrivateKey(private_key),
            WireguardAttribute::ListenPort(0),
            WireguardAttribute::Fwmark(fwmark.unwrap_or(0)),
            // Any peer the device had goes: it holds exactly this one.
            WireguardAttribute::Flags(WireguardDeviceFlags::ReplacePeers),
            WireguardAttribute::Peers(vec![peer(p)]),
        ],
    }
}

/// `WG_CMD_SET_DEVICE` changing a live device: its fwmark (0: none) and its one peer `p`
/// (allowed IPs replaced), without its key or listen port (so its socket stays).
pub fn update_device(index: u32, fwmark: Option<u32>, p: &PeerSpec) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfIndex(index),
            WireguardAttribute::Fwmark(fwmark.unwrap_or(0)),
            WireguardAttribute::Peers(vec![peer(p)]),
        ],
    }
}

/// `WG_CMD_GET_DEVICE` (sent as a dump) for the device with index `index`.
pub fn get_device(index: u32) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfIndex(index)],
    }
}

/// A message of the `wireguard` family, whose id the kernel assigned (`family`).
pub fn genl(family: u16, msg: WireguardMessage) -> GenlMessage<WireguardMessage> {
    let mut g = GenlMessage::from_payload(msg);
    g.set_resolved_family_id(family);
    g
}

// ------------------------------------------------------------------------- operations

/// The `wireguard` generic netlink family's id (assigned when the module loaded; stable while
/// any WireGuard interface exists, since the module cannot unload then).
fn family_id(nl: &mut Netlink) -> io::Result<u16> {
    for answer in nl.query(get_family(), 0)? {
        for a in answer.payload.nlas {
            if let GenlCtrlAttrs::FamilyId(id) = a {
                return Ok(id);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "the kernel named no id for the wireguard family",
    ))
}

/// Create the interface. `EOPNOTSUPP` (no module, none loadable) is `WG_NOT_AVAILABLE`.
fn create_link(name: &str) -> Result<()> {
    let mut nl = Netlink::open().map_err(|e| WgError::setup("netlink", e.to_string()))?;
    match nl.request(
        RouteNetlinkMessage::NewLink(new_link(name)),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::EOPNOTSUPP) => Err(WgError::NotAvailable(format!(
            "the kernel cannot create a WireGuard interface ({e}): the wireguard module is \
             missing or cannot be loaded; use the 'embedded' backend"
        ))),
        Err(e) => Err(WgError::setup(
            "link",
            format!("ip link add {name} type wireguard: {e}"),
        )),
    }
}

/// What a `WG_CMD_GET_DEVICE` dump says of the peer `key`.
pub fn peer_stats(answers: &[WireguardMessage], key: &[u8; 32], now: SystemTime) -> Option<Stats> {
    let mut found: Option<Stats> = None;
    for m in answers {
        for a in &m.attributes {
            let WireguardAttribute::Peers(peers) = a else {
                continue;
            };
            for p in peers {
                if !p
                    .iter()
                    .any(|x| matches!(x, WireguardPeerAttribute::PublicKey(k) if k == key))
                {
                    continue;
                }
                // A peer split over two messages (many allowed IPs) repeats its key only.
                let s = found.get_or_insert_with(Stats::default);
                for x in p.iter() {
                    match x {
                        WireguardPeerAttribute::LastHandshake(t)
                            if t.seconds != 0 || t.nano_seconds != 0 =>
                        {
                            let at = UNIX_EPOCH
                                + Duration::new(
                                    t.seconds.max(0) as u64,
                                    t.nano_seconds.clamp(0, 999_999_999) as u32,
                                );
                            let age = now.duration_since(at).unwrap_or_default();
                            s.last_handshake_ms = Some(age.as_secs_f64() * 1000.0);
                        }
                        WireguardPeerAttribute::RxBytes(n) => s.rx_bytes = *n,
                        WireguardPeerAttribute::TxBytes(n) => s.tx_bytes = *n,
                        WireguardPeerAttribute::Endpoint(ep) => {
                            s.endpoint = Some(ep.to_string());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    found
}

/// How long `stop` waits for the kernel to unlist the interface it is deleting.
const UNLIST_BOUND: Duration = Duration::from_secs(5);

/// `RTM_DELLINK` of our interface on a thread of its own, waiting only until the kernel has
/// unlisted `name` (or answered). The kernel does the whole unregistering inside the
/// request's `sendmsg` (the device's close, then RCU barriers and its workqueues after it is
/// unlisted), but the name is free, its routes gone and its traffic stopped once it is
/// unlisted; the thread finishes the rest. A process exiting meanwhile still completes it (a
/// thread inside a system call finishes it before it dies). Measured only under TCG, where
/// the close before the unlisting dominates (0.5-1.4 s), so the gain there is small; the
/// part after it (what the embedded backend saves ~20 ms of on the host) is not measured on
/// real hardware here. Returns (gone, detail).
fn delete_unlisted(index: u32, name: &str) -> (bool, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("blue-wg-dellink".into())
        .spawn(move || {
            let _ = tx.send(routing::delete_link(index));
        });
    if spawned.is_err() {
        let r = routing::delete_link(index);
        let gone = netdev::index(name) != Some(index);
        return match r {
            Ok(()) => (gone, "deleted".into()),
            Err(e) => (gone, format!("RTM_DELLINK: {e}")),
        };
    }
    let answer = cmd::wait_until(UNLIST_BOUND, || match rx.try_recv() {
        Ok(r) => Some(Some(r)),
        Err(TryRecvError::Disconnected) => Some(None),
        Err(TryRecvError::Empty) => (netdev::index(name) != Some(index)).then_some(None),
    });
    let gone = netdev::index(name) != Some(index);
    let detail = match answer {
        Some(Some(Ok(()))) => "deleted".to_string(),
        Some(Some(Err(e))) => format!("RTM_DELLINK: {e}"),
        Some(None) if gone => {
            "unlisted (the kernel finishes unregistering it in the background)".to_string()
        }
        Some(None) => "the deleting thread ended without an answer".to_string(),
        None => format!("still listed {UNLIST_BOUND:?} after RTM_DELLINK"),
    };
    (gone, detail)
}

/// Delete the kernel WireGuard interface `name` if it is one (and, with `index`, only if it
/// still has that index: ours, which `stop` waits for only until it is unlisted). A step for
/// the report, and whether `name` is gone.
fn delete_step(name: &str, index: Option<u32>) -> (StepReport, bool) {
    let t = Instant::now();
    let Some(now) = netdev::index(name) else {
        return (step("delete link", true, "already gone".into(), t), true);
    };
    if index.is_some_and(|i| i != now) {
        let detail = format!("{name} is another interface now (index {now}): left alone");
        return (step("delete link", false, detail, t), false);
    }
    let driver = netdev::driver(name).unwrap_or_else(|| "unknown".into());
    if driver != KIND {
        let detail =
            format!("{name} is not a kernel WireGuard interface (driver {driver}): left alone");
        return (step("delete link", false, detail, t), false);
    }
    let (gone, detail) = if index.is_some() {
        delete_unlisted(now, name)
    } else {
        // A dead owner's (the watchdog, a sweep): nobody waits for it but the next connect,
        // which must not find it half-gone.
        let r = routing::delete_link(now);
        let gone = !netdev::exists(name);
        match r {
            Ok(()) => (gone, "deleted".to_string()),
            Err(e) => (gone, format!("RTM_DELLINK: {e}")),
        }
    };
    (step("delete link", gone, detail, t), gone)
}

/// A tunnel on a kernel WireGuard interface.
pub struct KernelTunnel {
    name: String,
    /// The interface's index (ours: we created it).
    index: u32,
    /// The `wireguard` generic netlink family's id.
    family: u16,
    peer: [u8; 32],
    /// The full tunnel's table (and fwmark), whose rules `stop` removes.
    table: std::sync::Mutex<Option<u32>>,
}

impl KernelTunnel {
    fn read_device(&self) -> io::Result<Vec<WireguardMessage>> {
        let mut nl = Netlink::open_generic()?;
        let answers = nl.dump(genl(self.family, get_device(self.index)))?;
        Ok(answers.into_iter().map(|g| g.payload).collect())
    }
}

/// The stats of peer `key` of the kernel WireGuard interface `name`, whoever configured it
/// (the wg-quick backend's tunnels on a host with the module).
pub fn device_stats(name: &str, key: &[u8; 32]) -> Result<Stats> {
    let fail = |e: io::Error| WgError::setup("stats", format!("WG_CMD_GET_DEVICE: {e}"));
    let index = netdev::index(name)
        .ok_or_else(|| WgError::setup("stats", format!("{name} does not exist")))?;
    let mut nl = Netlink::open_generic().map_err(fail)?;
    let family = family_id(&mut nl).map_err(fail)?;
    let answers: Vec<WireguardMessage> = nl
        .dump(genl(family, get_device(index)))
        .map_err(fail)?
        .into_iter()
        .map(|g| g.payload)
        .collect();
    peer_stats(&answers, key, SystemTime::now())
        .ok_or_else(|| WgError::setup("stats", "the peer is gone"))
}

impl Tunnel for KernelTunnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        NAME
    }

    fn stats(&self) -> Result<Stats> {
        let answers = self
            .read_device()
            .map_err(|e| WgError::setup("stats", format!("WG_CMD_GET_DEVICE: {e}")))?;
        peer_stats(&answers, &self.peer, SystemTime::now())
            .ok_or_else(|| WgError::setup("stats", "the peer is gone"))
    }

    /// `WG_CMD_SET_DEVICE` with the peer's new allowed IPs, endpoint and keepalive and the
    /// new fwmark, and no key or port (the socket and the session stay), then the routing.
    fn update(&self, change: &super::Change) -> Result<()> {
        // Until the routing has moved, `stop` removes the rules of whichever table there is.
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) =
            change.new_table.or(change.old_table);
        let (_, allowed) = change.allowed();
        let spec = PeerSpec {
            public_key: self.peer,
            preshared_key: change.new.peer.preshared_key.as_ref().map(|k| k.0),
            endpoint: change
                .new
                .peer
                .endpoint
                .resolve(crate::config::RESOLVE_BOUND)?,
            persistent_keepalive: change.new.peer.persistent_keepalive,
            allowed_ips: allowed,
        };
        Netlink::open_generic()
            .and_then(|mut nl| {
                let msg = update_device(self.index, change.new_table, &spec);
                nl.request(genl(self.family, msg), 0)
            })
            .map_err(|e| WgError::setup("device", format!("WG_CMD_SET_DEVICE: {e}")))?;
        super::reroute(self.index, change)?;
        // Both tables' rules are now where they should be: the handle keeps the new one.
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = change.new_table;
        Ok(())
    }

    fn stop(&self) -> TeardownReport {
        let existed = netdev::exists(&self.name);
        let mut steps = Vec::new();
        let (s, gone) = delete_step(&self.name, Some(self.index));
        steps.push(s);
        note_stop(self.peer);
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

impl Backend for Kernel {
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
        let (allowed, table) = super::routes_of(cfg, ctx)?;
        // Resolved before anything is created (a failure leaves nothing to undo).
        let endpoint = cfg.peer.endpoint.resolve(crate::config::RESOLVE_BOUND)?;
        let spec = PeerSpec {
            public_key: cfg.peer.public_key.0,
            preshared_key: cfg.peer.preshared_key.as_ref().map(|k| k.0),
            endpoint,
            persistent_keepalive: cfg.peer.persistent_keepalive,
            allowed_ips: allowed.clone(),
        };

        create_link(&cfg.name)?;
        let Some(index) = netdev::index(&cfg.name) else {
            return Err(WgError::setup(
                "link",
                format!("{} vanished after it was created", cfg.name),
            ));
        };
        // From here on a failure deletes the link (and any rule) through the handle.
        let mut tunnel = KernelTunnel {
            name: cfg.name.clone(),
            index,
            family: 0,
            peer: spec.public_key,
            table: std::sync::Mutex::new(table),
        };
        let fail = |tunnel: &KernelTunnel, e: WgError| {
            tunnel.stop();
            Err(e)
        };

        wait_handshake_gap(spec.public_key);
        let configured = Netlink::open_generic().and_then(|mut nl| {
            let family = family_id(&mut nl)?;
            let msg = genl(family, set_device(index, cfg.private_key.0, table, &spec));
            nl.request(msg, 0).map(|()| family)
        });
        match configured {
            Ok(family) => tunnel.family = family,
            Err(e) => {
                return fail(
                    &tunnel,
                    WgError::setup("device", format!("WG_CMD_SET_DEVICE: {e}")),
                )
            }
        }
        (ctx.progress)("interface-up", &cfg.name);

        match routing::up(index, cfg.mtu as u32, &cfg.addresses, &allowed, table) {
            Ok(routed) => {
                (ctx.progress)("routing", &routed.describe(allowed.len()));
                Ok(Box::new(tunnel))
            }
            Err(e) => fail(&tunnel, WgError::setup("routing", e)),
        }
    }

    fn reap(&self, record: &Record) -> TeardownReport {
        let existed = netdev::exists(&record.name);
        let mut steps = Vec::new();
        // A kernel interface outlives its owner: it goes here, if it is one.
        let gone = if existed {
            let (s, gone) = delete_step(&record.name, None);
            steps.push(s);
            gone
        } else {
            true
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
    };
    use netlink_packet_wireguard::WireguardTimeSpec;

    fn spec() -> PeerSpec {
        PeerSpec {
            public_key: [7; 32],
            preshared_key: Some([9; 32]),
            endpoint: "192.0.2.1:51820".parse().unwrap(),
            persistent_keepalive: 25,
            allowed_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        }
    }

    #[test]
    fn the_link_is_asked_for_by_name_with_kind_wireguard() {
        let m = new_link("wgsent0");
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("wgsent0".into())));
        assert!(m
            .attributes
            .contains(&LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Wireguard
            )])));
        // On the wire: RTM_NEWLINK, create exclusively, acknowledged; the kind is the
        // string "wireguard" nested in IFLA_LINKINFO.
        let bytes = crate::netlink::encode(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            3,
        );
        let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(back.header.message_type, 16); // RTM_NEWLINK
        assert_eq!(
            back.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert!(bytes.windows(10).any(|w| w == b"wireguard\0"));
    }

    #[test]
    fn set_device_carries_key_port_fwmark_flags_and_one_peer() {
        let m = set_device(5, [1; 32], Some(51820), &spec());
        assert_eq!(m.cmd, WireguardCmd::SetDevice);
        let a = &m.attributes;
        assert!(a.contains(&WireguardAttribute::IfIndex(5)));
        assert!(a.contains(&WireguardAttribute::PrivateKey([1; 32])));
        assert!(a.contains(&WireguardAttribute::ListenPort(0)));
        assert!(a.contains(&WireguardAttribute::Fwmark(51820)));
        assert!(a.contains(&WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers
        )));
        let peers: Vec<&WireguardPeer> = a
            .iter()
            .filter_map(|x| match x {
                WireguardAttribute::Peers(p) => Some(p),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(peers.len(), 1);
        let p = &peers[0].0;
        assert!(p.contains(&WireguardPeerAttribute::PublicKey([7; 32])));
        assert!(p.contains(&WireguardPeerAttribute::PresharedKey([9; 32])));
        assert!(p.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        assert!(p.contains(&WireguardPeerAttribute::Endpoint(
            "192.0.2.1:51820".parse().unwrap()
        )));
        assert!(p.contains(&WireguardPeerAttribute::PersistentKeepalive(25)));
        let ips = p
            .iter()
            .find_map(|x| match x {
                WireguardPeerAttribute::AllowedIps(v) => Some(v.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            ips,
            vec![
                WireguardAllowedIp(vec![
                    WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                    WireguardAllowedIpAttr::IpAddr("0.0.0.0".parse().unwrap()),
                    WireguardAllowedIpAttr::Cidr(0),
                ]),
                WireguardAllowedIp(vec![
                    WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv6),
                    WireguardAllowedIpAttr::IpAddr("::".parse().unwrap()),
                    WireguardAllowedIpAttr::Cidr(0),
                ]),
            ]
        );
    }

    #[test]
    fn a_split_tunnel_has_no_fwmark_no_psk_and_masked_networks() {
        let mut s = spec();
        s.preshared_key = None;
        s.persistent_keepalive = 0;
        s.allowed_ips = vec!["10.8.0.7/24".parse().unwrap()];
        let m = set_device(9, [1; 32], None, &s);
        assert!(m.attributes.contains(&WireguardAttribute::Fwmark(0)));
        let WireguardAttribute::Peers(peers) = m.attributes.last().unwrap() else {
            panic!("peers last")
        };
        let p = &peers[0].0;
        assert!(!p
            .iter()
            .any(|x| matches!(x, WireguardPeerAttribute::PresharedKey(_))));
        assert!(p.contains(&WireguardPeerAttribute::PersistentKeepalive(0)));
        assert!(p.contains(&WireguardPeerAttribute::AllowedIps(vec![
            WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                WireguardAllowedIpAttr::IpAddr("10.8.0.0".parse().unwrap()),
                WireguardAllowedIpAttr::Cidr(24),
            ])
        ])));
    }

    /// Walk the attributes of a serialized generic netlink message (after the 16-byte
    /// netlink header and the 4-byte genl header): (type with flags, payload).
    fn nlas(buf: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + 4 <= buf.len() {
            let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
            let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]);
            out.push((kind, &buf[off + 4..off + len]));
            off += (len + 3) & !3;
        }
        out
    }

    #[test]
    fn on_the_wire_set_device_is_acked_with_the_family_id_and_nested_peers() {
        const NLA_F_NESTED: u16 = 1 << 15;
        let msg = genl(0x1d, set_device(5, [1; 32], Some(51820), &spec()));
        let bytes = crate::netlink::encode(msg, NLM_F_REQUEST | NLM_F_ACK, 4);
        let back = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(&bytes).unwrap();
        assert_eq!(back.header.message_type, 0x1d);
        assert_eq!(back.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let NetlinkPayload::InnerMessage(g) = back.payload else {
            panic!("a message")
        };
        assert_eq!(g.header.cmd, 1); // WG_CMD_SET_DEVICE
        assert_eq!(g.header.version, 1);
        assert_eq!(g.payload, set_device(5, [1; 32], Some(51820), &spec()));

        // The raw attributes: WGDEVICE_A_* 1 ifindex, 3 private key, 6 port, 7 fwmark,
        // 5 flags, 8 peers (nested); each peer nested (type 0); its WGPEER_A_ALLOWEDIPS (9)
        // nested, each allowed IP nested (type 0) with family, address and mask.
        let top = nlas(&bytes[20..]);
        let kinds: Vec<u16> = top.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![1, 3, 6, 7, 5, 8 | NLA_F_NESTED]);
        assert_eq!(top[3].1, &51820u32.to_ne_bytes());
        assert_eq!(top[4].1, &1u32.to_ne_bytes()); // WGDEVICE_F_REPLACE_PEERS
        let peers = nlas(top[5].1);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].0, NLA_F_NESTED);
        let pattrs = nlas(peers[0].1);
        let pk: Vec<u16> = pattrs.iter().map(|(k, _)| *k).collect();
        assert_eq!(pk, vec![1, 3, 2, 4, 5, 9 | NLA_F_NESTED]);
        assert_eq!(pattrs[1].1, &2u32.to_ne_bytes()); // WGPEER_F_REPLACE_ALLOWEDIPS
                                                      // sockaddr_in: family AF_INET, port in network order, address.
        assert_eq!(&pattrs[3].1[..8], &[2, 0, 0xca, 0x6c, 192, 0, 2, 1]);
        let ips = nlas(pattrs[5].1);
        assert_eq!(ips.len(), 2);
        assert!(ips.iter().all(|(k, _)| *k == NLA_F_NESTED));
        let v6 = nlas(ips[1].1);
        assert_eq!(v6[0], (1, &10u16.to_ne_bytes()[..])); // AF_INET6
        assert_eq!(v6[1].1.len(), 16);
        assert_eq!(v6[2], (3, &[0u8][..]));
    }

    #[test]
    fn get_family_and_get_device_requests() {
        let bytes = crate::netlink::encode(get_family(), NLM_F_REQUEST | NLM_F_ACK, 1);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 0x10); // GENL_ID_CTRL
        assert_eq!(bytes[16], 3); // CTRL_CMD_GETFAMILY
        let a = nlas(&bytes[20..]);
        assert_eq!(a, vec![(2, &b"wireguard\0"[..])]); // CTRL_ATTR_FAMILY_NAME

        let bytes =
            crate::netlink::encode(genl(0x1d, get_device(5)), NLM_F_REQUEST | NLM_F_DUMP, 2);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 0x1d);
        assert_eq!(
            u16::from_ne_bytes([bytes[6], bytes[7]]),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(bytes[16], 0); // WG_CMD_GET_DEVICE
        assert_eq!(nlas(&bytes[20..]), vec![(1, &5u32.to_ne_bytes()[..])]);
    }

    #[test]
    fn stats_come_from_our_peer_across_messages() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let other = WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey([8; 32]),
            WireguardPeerAttribute::RxBytes(99),
        ]);
        let ours = WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey([7; 32]),
            WireguardPeerAttribute::Endpoint("192.0.2.1:51820".parse().unwrap()),
            WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                seconds: 998,
                nano_seconds: 500_000_000,
            }),
            WireguardPeerAttribute::RxBytes(1234),
            WireguardPeerAttribute::TxBytes(5678),
        ]);
        let rest = WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey([7; 32]),
            WireguardPeerAttribute::AllowedIps(vec![]),
        ]);
        let answers = vec![
            WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::Peers(vec![other, ours])],
            },
            WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::Peers(vec![rest])],
            },
        ];
        let s = peer_stats(&answers, &[7; 32], now).unwrap();
        assert_eq!(s.rx_bytes, 1234);
        assert_eq!(s.tx_bytes, 5678);
        assert_eq!(s.last_handshake_ms, Some(1500.0));
        assert_eq!(s.endpoint.as_deref(), Some("192.0.2.1:51820"));
        assert!(peer_stats(&answers, &[6; 32], now).is_none());

        // Before the first handshake the kernel reports a zero time: no handshake.
        let fresh = vec![WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey([7; 32]),
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec::default()),
            ])])],
        }];
        assert_eq!(
            peer_stats(&fresh, &[7; 32], now).unwrap().last_handshake_ms,
            None
        );
    }

    #[test]
    fn the_module_is_found_loaded_loadable_or_built_in() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        let lib = d.path().join("lib");
        std::fs::create_dir_all(&sys).unwrap();
        let why = module_reason_in(&sys, &lib, "6.1.0-x").unwrap();
        assert!(why.contains("6.1.0-x") && why.contains("no WireGuard module"));
        // Loadable (compressed, as Fedora and Ubuntu ship it).
        let dir = lib.join("6.1.0-x/kernel/drivers/net/wireguard");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("wireguard.ko.zst"), b"").unwrap();
        assert_eq!(module_reason_in(&sys, &lib, "6.1.0-x"), None);
        assert!(module_reason_in(&sys, &lib, "6.2.0-y").is_some());
        // Built in.
        std::fs::create_dir_all(lib.join("6.2.0-y")).unwrap();
        std::fs::write(
            lib.join("6.2.0-y/modules.builtin"),
            "kernel/net/ipv4/tcp_cubic.ko\nkernel/drivers/net/wireguard/wireguard.ko\n",
        )
        .unwrap();
        assert_eq!(module_reason_in(&sys, &lib, "6.2.0-y"), None);
        // Loaded.
        std::fs::create_dir_all(sys.join("wireguard")).unwrap();
        assert_eq!(module_reason_in(&sys, &lib, "7.0"), None);
    }
}
