//! Routing in-process over rtnetlink, with wg-quick's semantics, for the native backends.
//!
//! - The link: up, MTU, the tunnel's addresses.
//! - Split tunnel: a route for each allowed IP via the interface (main table). A prefix the
//!   kernel already routes there (the address's own subnet) is left as it is.
//! - Full tunnel (an allowed IP of prefix length 0): the device marks its own UDP packets
//!   with fwmark `T`; table `T` (51820, or the next free) holds the default route via the
//!   interface; two policy rules per family send everything that is not marked `T` to table
//!   `T`, after letting the main table answer for anything more specific than a default:
//!
//!   ```text
//!   <p>     from all lookup main suppress_prefixlength 0
//!   <p + 1> not from all fwmark T lookup T
//!   ```
//!
//!   For IPv4 and, where the host has IPv6, for IPv6 (wg-quick does the same whenever `::/0`
//!   is allowed: without it a full tunnel would leak IPv6 past the tunnel).
//!
//! Unlike wg-quick, every rule gets an explicit priority derived from its table
//! (`p = 32000 + 2 * (T - 51820)`), is added with `NLM_F_EXCL` (so a reconnect never duplicates it:
//! the kernel silently adds a second identical rule without it) and is removed by exact
//! match, so the rules of two full tunnels never touch each other. Routes on the interface
//! (also the table's default route) go with the interface; rules do not, and are removed by
//! `remove_full_tunnel_rules`, which also serves a dead owner's leftovers (from its record).
//! Rules left pointing at an empty table fall through to the main table: traffic is never
//! black-holed by them.
//!
//! wg-quick's nftables table (drop packets for the tunnel address arriving on another
//! interface; conntrack zones for marked traffic) is not installed: it hardens against a
//! host on the local network spoofing packets to the tunnel address, and is not needed for
//! the tunnel to route. See ENGINE.md.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{is_errno, Netlink};

/// The first table (and fwmark) a full tunnel tries, as wg-quick.
pub const TABLE_BASE: u32 = 51820;
/// How many tables after `TABLE_BASE` may be tried.
pub const TABLE_SPAN: u32 = 256;
/// Priority of the first full tunnel's `suppress_prefixlength 0` rule.
pub const PRIORITY_BASE: u32 = 32000;
/// Priority of the first full tunnel's exclusion rules (`to <net> lookup main`), before any
/// tunnel's own rules: an excluded destination takes the host's own route.
pub const EXCLUDE_BASE: u32 = 31000;
const RT_TABLE_MAIN: u32 = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// (suppress rule, `not fwmark` rule) priorities of the full tunnel using `table`.
pub fn priorities(table: u32) -> (u32, u32) {
    let k = table.saturating_sub(TABLE_BASE) % TABLE_SPAN;
    (PRIORITY_BASE + 2 * k, PRIORITY_BASE + 2 * k + 1)
}

/// The table field of a header: the id itself when it fits in a byte, else `RT_TABLE_UNSPEC`
/// (the attribute carries it), as iproute2 does.
fn header_table(table: u32) -> u8 {
    if table < 256 {
        table as u8
    } else {
        0
    }
}

// ------------------------------------------------------------------------- messages

/// `ip link set dev <index> up mtu <mtu>`.
pub fn link_up(index: u32, mtu: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    m
}

/// `ip address add <net> dev <index>`.
pub fn address(index: u32, net: &IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = Family::of(&net.addr()).af();
    m.header.prefix_len = net.prefix_len();
    m.header.scope = AddressScope::Universe;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(net.addr()));
    m.attributes.push(AddressAttribute::Address(net.addr()));
    m
}

/// `ip route add <net> dev <index> [table <table>]`.
pub fn route(index: u32, net: &IpNet, table: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    let fam = Family::of(&net.addr());
    m.header.address_family = fam.af();
    m.header.destination_prefix_length = net.prefix_len();
    m.header.table = header_table(table);
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = match fam {
        Family::V4 => RouteScope::Link,
        Family::V6 => RouteScope::Universe,
    };
    m.header.kind = RouteType::Unicast;
    if net.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(match net.network() {
                IpAddr::V4(a) => RouteAddress::Inet(a),
                IpAddr::V6(a) => RouteAddress::Inet6(a),
            }));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    m.attributes.push(RouteAttribute::Table(table));
    m
}

fn rule_base(family: Family, priority: u32, table: u32) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family.af();
    m.header.table = header_table(table);
    // Without it the kernel stores a rule with no action, and matching traffic fails.
    m.header.action = RuleAction::ToTable;
    m.attributes.push(RuleAttribute::Priority(priority));
    m.attributes.push(RuleAttribute::Table(table));
    m
}

/// `ip rule add not fwmark <table> table <table> priority <p + 1>`.
pub fn not_fwmark_rule(family: Family, table: u32) -> RuleMessage {
    let mut m = rule_base(family, priorities(table).1, table);
    m.header.flags = RuleFlags::Invert;
    m.attributes.push(RuleAttribute::FwMark(table));
    m
}

/// The priority of the exclusion rules of the full tunnel on `table`.
pub fn exclude_priority(table: u32) -> u32 {
    EXCLUDE_BASE + table.saturating_sub(TABLE_BASE).min(TABLE_SPAN)
}

/// The rule protocol (`FRA_PROTOCOL`) our exclusion rules carry, so that removing them by
/// priority never matches a rule of another tool (`ip rule ... protocol 218`).
const EXCLUDE_PROTOCOL: u8 = 218;

/// The base of an exclusion rule of `table`: priority, `lookup main`, our protocol.
fn exclude_base(fam: Family, table: u32) -> RuleMessage {
    let mut m = rule_base(fam, exclude_priority(table), RT_TABLE_MAIN);
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Other(
            EXCLUDE_PROTOCOL,
        )));
    m
}

/// `ip rule add to <net> table main priority <exclude_priority(table)> protocol 218`.
pub fn exclude_rule(net: &IpNet, table: u32) -> RuleMessage {
    let fam = Family::of(&net.addr());
    let mut m = exclude_base(fam, table);
    m.header.dst_len = net.prefix_len();
    m.attributes.push(RuleAttribute::Destination(net.network()));
    m
}

/// Add the exclusion rules of the full tunnel on `table` (a family this host does not have
/// is skipped). Existing ones are kept.
pub fn add_exclusions(table: u32, nets: &[IpNet], ipv6: bool) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| ctx("netlink socket", e))?;
    for net in nets.iter().filter(|n| ipv6 || n.addr().is_ipv4()) {
        create(
            &mut nl,
            RouteNetlinkMessage::NewRule(exclude_rule(net, table)),
        )
        .map_err(|e| ctx(&format!("rule add to {net} lookup main"), e))?;
    }
    Ok(())
}

/// Remove the exclusion rules of `table` for `nets`, by exact match.
pub fn remove_exclusions(table: u32, nets: &[IpNet]) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| ctx("netlink socket", e))?;
    for net in nets {
        match nl.request(RouteNetlinkMessage::DelRule(exclude_rule(net, table)), 0) {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(ctx(&format!("rule del to {net} lookup main"), e)),
        }
    }
    Ok(())
}

/// `ip rule add table main suppress_prefixlength 0 priority <p>`.
pub fn suppress_rule(family: Family, table: u32) -> RuleMessage {
    let mut m = rule_base(family, priorities(table).0, RT_TABLE_MAIN);
    m.attributes.push(RuleAttribute::SuppressPrefixLen(0));
    m
}

// ------------------------------------------------------------------------- operations

fn ctx(what: &str, e: io::Error) -> String {
    format!("{what}: {e}")
}

fn create(nl: &mut Netlink, msg: RouteNetlinkMessage) -> io::Result<()> {
    match nl.request(msg, NLM_F_CREATE | NLM_F_EXCL) {
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// What `up` routed, needed to undo it and to report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// The full tunnel's table (and fwmark), if any.
    pub table: Option<u32>,
    /// The families whose rules were added.
    pub families: Vec<Family>,
    /// Notes for the report (e.g. a read-only `/proc/sys`).
    pub notes: Vec<String>,
}

impl Routed {
    /// The `routing` progress detail: the full tunnel's table and rule families, or how many
    /// routes a split tunnel got (`routes`), then the notes.
    pub fn describe(&self, routes: usize) -> String {
        let mut detail = match self.table {
            Some(t) => {
                let fams: Vec<&str> = self.families.iter().map(|f| f.as_str()).collect();
                format!(
                    "full tunnel: table {t}, fwmark {t:#x}, rules for {}",
                    fams.join(" ")
                )
            }
            None => format!("{routes} route(s)"),
        };
        for n in &self.notes {
            detail.push_str("; note: ");
            detail.push_str(n);
        }
        detail
    }
}

/// Link up with `mtu`, the addresses, then routes for `allowed` (and, with `table`, the full
/// tunnel's default routes and rules). `allowed` holds only the families to route (the
/// caller leaves IPv6 out on a host without it). On error, what was added may remain: the
/// caller removes the interface (its routes go with it) and calls
/// `remove_full_tunnel_rules`.
pub fn up(
    index: u32,
    mtu: u32,
    addresses: &[IpNet],
    allowed: &[IpNet],
    table: Option<u32>,
) -> Result<Routed, String> {
    let mut nl = Netlink::open().map_err(|e| ctx("netlink socket", e))?;
    for a in addresses {
        create(&mut nl, RouteNetlinkMessage::NewAddress(address(index, a)))
            .map_err(|e| ctx(&format!("address add {a}"), e))?;
    }
    nl.request(RouteNetlinkMessage::SetLink(link_up(index, mtu)), 0)
        .map_err(|e| ctx("link set up", e))?;
    let mut routed = Routed::default();
    for net in allowed {
        let t = table_for(net, table)?;
        create(&mut nl, RouteNetlinkMessage::NewRoute(route(index, net, t)))
            .map_err(|e| ctx(&format!("route add {net} table {t}"), e))?;
    }
    if let Some(t) = table {
        add_full_tunnel_rules(&mut nl, allowed, t, &mut routed)?;
    }
    Ok(routed)
}

/// The table a route for `net` goes in: the full tunnel's for a default, main otherwise.
fn table_for(net: &IpNet, table: Option<u32>) -> Result<u32, String> {
    match (net.prefix_len() == 0, table) {
        (true, Some(t)) => Ok(t),
        (true, None) => Err(format!("{net} needs a routing table")),
        (false, _) => Ok(RT_TABLE_MAIN),
    }
}

/// Add the full tunnel's two rules per family of the defaults in `allowed`; the families
/// are recorded in `routed` before their rules are added.
fn add_full_tunnel_rules(
    nl: &mut Netlink,
    allowed: &[IpNet],
    t: u32,
    routed: &mut Routed,
) -> Result<(), String> {
    routed.table = Some(t);
    let mut fams: Vec<Family> = allowed
        .iter()
        .filter(|n| n.prefix_len() == 0)
        .map(|n| Family::of(&n.addr()))
        .collect();
    fams.dedup();
    for fam in fams {
        // Recorded first: a rule half-added is still removed.
        routed.families.push(fam);
        for rule in [suppress_rule(fam, t), not_fwmark_rule(fam, t)] {
            create(nl, RouteNetlinkMessage::NewRule(rule))
                .map_err(|e| ctx(&format!("rule add ({}) for table {t}", fam.as_str()), e))?;
        }
        if fam == Family::V4 {
            if let Some(note) = set_src_valid_mark() {
                routed.notes.push(note);
            }
        }
    }
    Ok(())
}

/// Move a live tunnel's routing from `old` allowed IPs (and full-tunnel table) to `new`,
/// without a moment in which traffic for an address in both has no route: the new routes
/// and rules are added first, then the old rules and the old routes that are not also new
/// are removed (only routes this module adds: protocol `boot`, on this interface; the
/// kernel's own prefix routes are never touched). The device must already mark its packets
/// with `new_table` when that is a new full tunnel.
pub fn reroute(
    index: u32,
    (old, old_table): (&[IpNet], Option<u32>),
    (new, new_table): (&[IpNet], Option<u32>),
) -> Result<Routed, String> {
    let mut nl = Netlink::open().map_err(|e| ctx("netlink socket", e))?;
    let mut keep = BTreeSet::new();
    for net in new {
        let t = table_for(net, new_table)?;
        keep.insert((*net, t));
        create(&mut nl, RouteNetlinkMessage::NewRoute(route(index, net, t)))
            .map_err(|e| ctx(&format!("route add {net} table {t}"), e))?;
    }
    let mut routed = Routed::default();
    if let Some(t) = new_table {
        add_full_tunnel_rules(&mut nl, new, t, &mut routed)?;
    }
    if let Some(t) = old_table.filter(|t| Some(*t) != new_table) {
        let done = remove_full_tunnel_rules(t);
        if let Some(bad) = done.iter().find(|d| d.contains("NOT removed")) {
            return Err(bad.clone());
        }
    } else if let Some(t) = new_table {
        // The same table: a family it no longer routes (e.g. `::/0` dropped) loses its rules.
        for fam in [Family::V4, Family::V6] {
            if routed.families.contains(&fam) {
                continue;
            }
            for rule in [suppress_rule(fam, t), not_fwmark_rule(fam, t)] {
                match nl.request(RouteNetlinkMessage::DelRule(rule), 0) {
                    Ok(()) => {}
                    Err(e)
                        if is_errno(&e, libc::ENOENT)
                            || is_errno(&e, libc::EAFNOSUPPORT)
                            || is_errno(&e, libc::ESRCH) => {}
                    Err(e) => {
                        return Err(ctx(&format!("rule del ({}) table {t}", fam.as_str()), e))
                    }
                }
            }
        }
    }
    for net in old {
        let Ok(t) = table_for(net, old_table) else {
            continue;
        };
        if keep.contains(&(*net, t)) {
            continue;
        }
        match nl.request(RouteNetlinkMessage::DelRoute(route(index, net, t)), 0) {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => {}
            Err(e) => return Err(ctx(&format!("route del {net} table {t}"), e)),
        }
    }
    Ok(routed)
}

/// Delete the link with this index (`ip link delete`): a tun device goes at once, also
/// while its owner still holds it open. ENODEV (already gone) is success.
pub fn delete_link(index: u32) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    let mut m = LinkMessage::default();
    m.header.index = index;
    match nl.request(RouteNetlinkMessage::DelLink(m), 0) {
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
        other => other,
    }
}

/// Remove the rules of the full tunnel that used `table` (both families), by exact match.
/// Never fails; returns what was removed and what could not be.
pub fn remove_full_tunnel_rules(table: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut nl = match Netlink::open() {
        Ok(n) => n,
        Err(e) => return vec![ctx("netlink socket", e)],
    };
    // Its exclusions, whatever their destinations (a dead owner's record does not list
    // them): the rules of their priority that look up main, one per request.
    for fam in [Family::V4, Family::V6] {
        let mut n = 0;
        for _ in 0..(4 * crate::config::MAX_LIST) {
            let rule = exclude_base(fam, table);
            match nl.request(RouteNetlinkMessage::DelRule(rule), 0) {
                Ok(()) => n += 1,
                Err(_) => break,
            }
        }
        if n > 0 {
            out.push(format!(
                "{} {n} exclusion rule(s) of table {table}",
                fam.as_str()
            ));
        }
    }
    for fam in [Family::V4, Family::V6] {
        for (what, rule) in [
            ("suppress_prefixlength 0", suppress_rule(fam, table)),
            ("not fwmark", not_fwmark_rule(fam, table)),
        ] {
            match nl.request(RouteNetlinkMessage::DelRule(rule), 0) {
                Ok(()) => out.push(format!("{} rule {what} table {table}", fam.as_str())),
                Err(e)
                    if is_errno(&e, libc::ENOENT)
                        || is_errno(&e, libc::EAFNOSUPPORT)
                        || is_errno(&e, libc::ESRCH) => {}
                Err(e) => out.push(format!(
                    "{} rule {what} table {table} NOT removed: {e}",
                    fam.as_str()
                )),
            }
        }
    }
    out
}

/// Re-add the rules of a live full tunnel (after another tool, e.g. wg-quick's down, removed
/// every `suppress_prefixlength 0` rule). Returns what was added.
pub fn ensure_full_tunnel_rules(table: u32, families: &[Family]) -> Vec<String> {
    let Ok(mut nl) = Netlink::open() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for fam in families {
        for rule in [suppress_rule(*fam, table), not_fwmark_rule(*fam, table)] {
            if nl
                .request(
                    RouteNetlinkMessage::NewRule(rule),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .is_ok()
            {
                out.push(format!("{} rules of table {table}", fam.as_str()));
            }
        }
    }
    out.dedup();
    out
}

/// Every table id a rule or a route of this namespace uses (both families).
pub fn tables_in_use() -> io::Result<BTreeSet<u32>> {
    let mut nl = Netlink::open()?;
    let mut used = BTreeSet::new();
    for fam in [Family::V4, Family::V6] {
        let mut rule = RuleMessage::default();
        rule.header.family = fam.af();
        match nl.dump(RouteNetlinkMessage::GetRule(rule)) {
            Ok(msgs) => {
                for m in msgs {
                    if let RouteNetlinkMessage::NewRule(r) = m {
                        used.insert(r.header.table as u32);
                        for a in r.attributes {
                            if let RuleAttribute::Table(t) = a {
                                used.insert(t);
                            }
                        }
                    }
                }
            }
            Err(e) if fam == Family::V6 && is_errno(&e, libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(e),
        }
        let mut route = RouteMessage::default();
        route.header.address_family = fam.af();
        match nl.dump(RouteNetlinkMessage::GetRoute(route)) {
            Ok(msgs) => {
                for m in msgs {
                    if let RouteNetlinkMessage::NewRoute(r) = m {
                        used.insert(r.header.table as u32);
                        for a in r.attributes {
                            if let RouteAttribute::Table(t) = a {
                                used.insert(t);
                            }
                        }
                    }
                }
            }
            Err(e) if fam == Family::V6 && is_errno(&e, libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(used)
}

/// The first table from `TABLE_BASE` that no rule or route uses and that is not in `taken`
/// (tables recorded by other live tunnels).
pub fn pick_table(taken: &[u32]) -> Result<u32, String> {
    let used = tables_in_use().map_err(|e| ctx("reading rules and routes", e))?;
    (TABLE_BASE..TABLE_BASE + TABLE_SPAN)
        .find(|t| !used.contains(t) && !taken.contains(t))
        .ok_or_else(|| {
            format!(
                "no free routing table in {TABLE_BASE}..{}",
                TABLE_BASE + TABLE_SPAN
            )
        })
}

/// `net.ipv4.conf.all.src_valid_mark = 1`, as wg-quick sets it for a full tunnel (so reverse
/// path filtering takes the fwmark into account). A read-only `/proc/sys` (Docker) is
/// tolerated: the note says so.
pub fn set_src_valid_mark() -> Option<String> {
    const PATH: &str = "/proc/sys/net/ipv4/conf/all/src_valid_mark";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return None;
    }
    match std::fs::write(PATH, b"1") {
        Ok(()) => None,
        Err(e) => Some(format!(
            "could not set net.ipv4.conf.all.src_valid_mark=1 ({e}); fine unless strict \
             reverse-path filtering drops the tunnel's replies"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};

    fn has(attrs: &[RuleAttribute], a: RuleAttribute) -> bool {
        attrs.contains(&a)
    }

    #[test]
    fn the_not_fwmark_rule_jumps_to_its_table_inverted_with_a_fixed_priority() {
        let r = not_fwmark_rule(Family::V4, 51820);
        assert_eq!(r.header.family, AddressFamily::Inet);
        assert_eq!(r.header.action, RuleAction::ToTable);
        assert_eq!(r.header.flags, RuleFlags::Invert);
        // 51820 does not fit the header's byte: the attribute carries it.
        assert_eq!(r.header.table, 0);
        assert!(has(&r.attributes, RuleAttribute::Table(51820)));
        assert!(has(&r.attributes, RuleAttribute::FwMark(51820)));
        assert!(has(&r.attributes, RuleAttribute::Priority(32001)));
        assert!(!r
            .attributes
            .iter()
            .any(|a| matches!(a, RuleAttribute::SuppressPrefixLen(_))));
    }

    #[test]
    fn the_suppress_rule_looks_up_main_with_prefixlength_0_before_the_mark_rule() {
        let r = suppress_rule(Family::V6, 51822);
        assert_eq!(r.header.family, AddressFamily::Inet6);
        assert_eq!(r.header.action, RuleAction::ToTable);
        assert_eq!(r.header.flags, RuleFlags::empty());
        assert_eq!(r.header.table, 254);
        assert!(has(&r.attributes, RuleAttribute::Table(254)));
        assert!(has(&r.attributes, RuleAttribute::SuppressPrefixLen(0)));
        assert!(has(&r.attributes, RuleAttribute::Priority(32004)));
        assert!(!r
            .attributes
            .iter()
            .any(|a| matches!(a, RuleAttribute::FwMark(_))));
        let (p, q) = priorities(51822);
        assert_eq!((p, q), (32004, 32005));
        assert!(p < q && q < 32766, "before the main rule");
    }

    #[test]
    fn two_tables_never_share_a_priority() {
        let mut seen = BTreeSet::new();
        for t in TABLE_BASE..TABLE_BASE + TABLE_SPAN {
            let (p, q) = priorities(t);
            assert!(seen.insert(p) && seen.insert(q));
            assert!(q < 32764, "below wg-quick's own rules");
        }
    }

    #[test]
    fn routes_and_addresses_carry_interface_table_and_scope() {
        let def: IpNet = "0.0.0.0/0".parse().unwrap();
        let r = route(7, &def, 51820);
        assert_eq!(r.header.destination_prefix_length, 0);
        assert_eq!(r.header.scope, RouteScope::Link);
        assert_eq!(r.header.kind, RouteType::Unicast);
        assert!(r.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(r.attributes.contains(&RouteAttribute::Table(51820)));
        assert!(!r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        let net: IpNet = "198.18.0.0/15".parse().unwrap();
        let r = route(7, &net, RT_TABLE_MAIN);
        assert_eq!(r.header.table, 254);
        assert!(r
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                "198.18.0.0".parse().unwrap()
            ))));
        let v6: IpNet = "::/0".parse().unwrap();
        assert_eq!(route(7, &v6, 51820).header.scope, RouteScope::Universe);

        let a = address(7, &"10.8.0.2/24".parse().unwrap());
        assert_eq!(a.header.prefix_len, 24);
        assert_eq!(a.header.index, 7);
        assert!(a
            .attributes
            .contains(&AddressAttribute::Local("10.8.0.2".parse().unwrap())));
        let l = link_up(7, 1280);
        assert_eq!(l.header.flags, LinkFlags::Up);
        assert_eq!(l.header.change_mask, LinkFlags::Up);
        assert!(l.attributes.contains(&LinkAttribute::Mtu(1280)));
    }

    #[test]
    fn a_request_round_trips_with_its_flags() {
        let bytes = crate::netlink::encode(
            RouteNetlinkMessage::NewRule(not_fwmark_rule(Family::V4, 51820)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            9,
        );
        let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(
            back.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(back.header.sequence_number, 9);
        assert_eq!(back.header.message_type, 32); // RTM_NEWRULE
        match back.payload {
            netlink_packet_core::NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRule(r)) => {
                assert_eq!(r, not_fwmark_rule(Family::V4, 51820));
            }
            other => panic!("{other:?}"),
        }
    }
}
