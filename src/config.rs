//! TunnelConfig: parse and validate what the caller (and, through it, the remote node) gave us,
//! then render the wg-quick file from validated fields only. Nothing unvalidated reaches a file.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ipnet::IpNet;

use crate::error::{Result, WgError};

pub const DEFAULT_NAME: &str = "wgsent0";
pub const DEFAULT_MTU: u16 = 1280;
pub const DEFAULT_KEEPALIVE: u16 = 15;
pub const DEFAULT_DNS: [&str; 2] = ["10.8.0.1", "1.1.1.1"];
pub const FULL_TUNNEL: [&str; 2] = ["0.0.0.0/0", "::/0"];
/// Upper bound of any single text value; a key is 44 characters, a hostname at most 253.
const MAX_TEXT: usize = 512;
/// Upper bound of any list (addresses, AllowedIPs, DNS servers).
pub const MAX_LIST: usize = 64;

/// A 32-byte WireGuard key. The bytes are zeroed when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: b is a valid, aligned &mut u8; volatile keeps the write from being elided.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// A private key as the caller gave it: base64 text or raw bytes.
#[derive(Debug, Clone)]
pub enum RawKey {
    Text(String),
    Bytes(Vec<u8>),
}

/// The caller's config before validation: plain values, each possibly hostile.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    pub private_key: Option<RawKey>,
    pub addresses: Option<Vec<String>>,
    pub peer: Option<RawPeer>,
    pub mtu: Option<f64>,
    pub dns: Option<Vec<String>>,
    pub name: Option<String>,
    pub kill_switch: Option<bool>,
    pub allow_lan: Option<bool>,
    pub exclude: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct RawPeer {
    pub public_key: Option<String>,
    pub endpoint: Option<String>,
    pub allowed_ips: Option<Vec<String>>,
    pub persistent_keepalive: Option<f64>,
    pub preshared_key: Option<String>,
}

/// A JavaScript value reduced to plain data by the binding layer, so type checks of the
/// caller's config (with the field's name in the error) live here and run under `cargo test`.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `undefined` or `null`, or an absent property.
    Missing,
    Str(String),
    Num(f64),
    Bool(bool),
    /// A Buffer or Uint8Array.
    Bytes(Vec<u8>),
    List(Vec<Input>),
    Map(Vec<(String, Input)>),
    /// Any other kind of value (function, symbol, bigint, ...): its `typeof`.
    Other(&'static str),
}

impl Input {
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Missing => "undefined",
            Input::Str(_) => "string",
            Input::Num(_) => "number",
            Input::Bool(_) => "boolean",
            Input::Bytes(_) => "Buffer",
            Input::List(_) => "array",
            Input::Map(_) => "object",
            Input::Other(k) => k,
        }
    }

    fn field(&self, key: &str) -> &Input {
        match self {
            Input::Map(m) => m
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or(&Input::Missing),
            _ => &Input::Missing,
        }
    }
}

fn wrong(field: &str, want: &str, got: &Input) -> WgError {
    WgError::invalid(field, format!("must be {want}, got {}", got.kind()))
}

fn opt_str(field: &str, v: &Input) -> Result<Option<String>> {
    match v {
        Input::Missing => Ok(None),
        Input::Str(s) => Ok(Some(s.clone())),
        other => Err(wrong(field, "a string", other)),
    }
}

fn opt_num(field: &str, v: &Input) -> Result<Option<f64>> {
    match v {
        Input::Missing => Ok(None),
        Input::Num(n) => Ok(Some(*n)),
        other => Err(wrong(field, "a number", other)),
    }
}

fn opt_bool(field: &str, v: &Input) -> Result<Option<bool>> {
    match v {
        Input::Missing => Ok(None),
        Input::Bool(b) => Ok(Some(*b)),
        other => Err(wrong(field, "a boolean", other)),
    }
}

fn opt_str_list(field: &str, v: &Input) -> Result<Option<Vec<String>>> {
    match v {
        Input::Missing => Ok(None),
        Input::List(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Input::Str(s) => Ok(s.clone()),
                other => Err(wrong(&format!("{field}[{i}]"), "a string", other)),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        other => Err(wrong(field, "an array of strings", other)),
    }
}

/// Refuse keys we do not know: a misspelt `allowedIPs` must not silently become a full tunnel.
fn only_keys(field: &str, v: &Input, allowed: &[&str]) -> Result<()> {
    if let Input::Map(m) = v {
        if let Some((k, _)) = m.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            let at = if field.is_empty() {
                String::new()
            } else {
                format!("{field}.")
            };
            return Err(WgError::invalid(
                format!("{at}{k}"),
                format!("is not a known option (known: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

impl RawConfig {
    /// Type-check the caller's config object. Values are validated later by `from_raw`.
    pub fn from_input(v: &Input) -> Result<Self> {
        if !matches!(v, Input::Map(_)) {
            return Err(wrong("config", "an object", v));
        }
        only_keys(
            "",
            v,
            &[
                "privateKey",
                "addresses",
                "peer",
                "mtu",
                "dns",
                "name",
                "killSwitch",
                "allowLan",
                "exclude",
            ],
        )?;
        let private_key = match v.field("privateKey") {
            Input::Missing => None,
            Input::Str(s) => Some(RawKey::Text(s.clone())),
            Input::Bytes(b) => Some(RawKey::Bytes(b.clone())),
            other => {
                return Err(wrong(
                    "privateKey",
                    "a base64 string or a 32-byte Buffer",
                    other,
                ))
            }
        };
        let peer = match v.field("peer") {
            Input::Missing => None,
            p @ Input::Map(_) => {
                only_keys(
                    "peer",
                    p,
                    &[
                        "publicKey",
                        "endpoint",
                        "allowedIps",
                        "persistentKeepalive",
                        "presharedKey",
                    ],
                )?;
                Some(RawPeer {
                    public_key: opt_str("peer.publicKey", p.field("publicKey"))?,
                    endpoint: opt_str("peer.endpoint", p.field("endpoint"))?,
                    allowed_ips: opt_str_list("peer.allowedIps", p.field("allowedIps"))?,
                    persistent_keepalive: opt_num(
                        "peer.persistentKeepalive",
                        p.field("persistentKeepalive"),
                    )?,
                    preshared_key: opt_str("peer.presharedKey", p.field("presharedKey"))?,
                })
            }
            other => return Err(wrong("peer", "an object", other)),
        };
        Ok(RawConfig {
            private_key,
            addresses: opt_str_list("addresses", v.field("addresses"))?,
            peer,
            mtu: opt_num("mtu", v.field("mtu"))?,
            dns: opt_str_list("dns", v.field("dns"))?,
            name: opt_str("name", v.field("name"))?,
            kill_switch: opt_bool("killSwitch", v.field("killSwitch"))?,
            allow_lan: opt_bool("allowLan", v.field("allowLan"))?,
            exclude: opt_str_list("exclude", v.field("exclude"))?,
        })
    }
}

/// What `update` may change on a live tunnel: the keys of the patch object. Everything else
/// (keys, addresses, MTU, name) needs a new connect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    pub allowed_ips: Option<Vec<String>>,
    pub dns: Option<Vec<String>>,
    pub persistent_keepalive: Option<f64>,
    pub endpoint: Option<String>,
    pub exclude: Option<Vec<String>>,
}

impl Patch {
    /// Type-check the caller's patch object; values are validated by `apply_to` +
    /// `TunnelConfig::from_raw`, as for a connect.
    pub fn from_input(v: &Input) -> Result<Self> {
        if !matches!(v, Input::Map(_)) {
            return Err(wrong("patch", "an object", v));
        }
        only_keys(
            "patch",
            v,
            &[
                "allowedIps",
                "dns",
                "persistentKeepalive",
                "endpoint",
                "exclude",
            ],
        )
        .map_err(|e| match e {
            WgError::InvalidOptions { field, reason } => WgError::InvalidOptions {
                field,
                reason: format!(
                    "{reason} (a live tunnel can change allowedIps, dns, persistentKeepalive, \
                     endpoint and exclude; anything else needs a new connect)"
                ),
            },
            other => other,
        })?;
        Ok(Patch {
            allowed_ips: opt_str_list("patch.allowedIps", v.field("allowedIps"))?,
            dns: opt_str_list("patch.dns", v.field("dns"))?,
            persistent_keepalive: opt_num(
                "patch.persistentKeepalive",
                v.field("persistentKeepalive"),
            )?,
            endpoint: opt_str("patch.endpoint", v.field("endpoint"))?,
            exclude: opt_str_list("patch.exclude", v.field("exclude"))?,
        })
    }

    /// The config `raw` with this patch applied. `dns` absent keeps the caller's choice
    /// (none given: the default of the new split or full tunnel).
    pub fn apply_to(&self, raw: &RawConfig) -> RawConfig {
        let mut out = raw.clone();
        let peer = out.peer.get_or_insert_with(RawPeer::default);
        if let Some(v) = &self.allowed_ips {
            peer.allowed_ips = Some(v.clone());
        }
        if let Some(v) = self.persistent_keepalive {
            peer.persistent_keepalive = Some(v);
        }
        if let Some(v) = &self.endpoint {
            peer.endpoint = Some(v.clone());
        }
        if let Some(v) = &self.dns {
            out.dns = Some(v.clone());
        }
        if let Some(v) = &self.exclude {
            out.exclude = Some(v.clone());
        }
        out
    }
}

/// Largest config file `parse_wg_quick` reads.
pub const MAX_CONF_FILE: u64 = 64 * 1024;

/// Parse a wg-quick file of the shape the SDK writes: one `[Interface]` (PrivateKey, Address,
/// MTU, DNS) and one `[Peer]` (PublicKey, PresharedKey, Endpoint, AllowedIPs,
/// PersistentKeepalive). Anything else (`PostUp`, `PreUp`, `PostDown`, `PreDown`,
/// `SaveConfig`, `Table`, unknown keys, a second section) is refused with `INVALID_OPTIONS`
/// naming the line: we never run what a file says to run. Values are validated afterwards by
/// `TunnelConfig::from_raw`, exactly as for a config object. A missing `DNS` means DNS is
/// left alone, a missing `PersistentKeepalive` means none, as wg-quick would do.
pub fn parse_wg_quick(text: &str) -> Result<RawConfig> {
    #[derive(PartialEq)]
    enum Section {
        None,
        Interface,
        Peer,
    }
    let mut section = Section::None;
    let (mut interfaces, mut peers) = (0, 0);
    let mut raw = RawConfig {
        dns: Some(Vec::new()),
        ..Default::default()
    };
    let mut peer = RawPeer {
        persistent_keepalive: Some(0.0),
        ..Default::default()
    };
    let mut seen: Vec<String> = Vec::new();
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    };
    for (i, line) in text.split('\n').enumerate() {
        let at = format!("line {}", i + 1);
        if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(WgError::invalid(
                at,
                format!("contains a forbidden character {c:?}"),
            ));
        }
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = match line.to_ascii_lowercase().as_str() {
                "[interface]" => {
                    interfaces += 1;
                    Section::Interface
                }
                "[peer]" => {
                    peers += 1;
                    Section::Peer
                }
                _ => return Err(WgError::invalid(at, format!("unknown section {line}"))),
            };
            if interfaces > 1 || peers > 1 {
                return Err(WgError::invalid(
                    at,
                    format!("a second {line} section is not supported"),
                ));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(WgError::invalid(at, "is not 'Key = Value'"));
        };
        let (key, value) = (key.trim(), value.trim());
        let lower = key.to_ascii_lowercase();
        let field = |name: &str| format!("{name} ({at})");
        if [
            "postup",
            "preup",
            "postdown",
            "predown",
            "saveconfig",
            "table",
        ]
        .contains(&lower.as_str())
        {
            return Err(WgError::invalid(
                field(key),
                "is not allowed: blue-wireguard never runs commands or routing options from a config file",
            ));
        }
        let repeatable = matches!(lower.as_str(), "address" | "allowedips" | "dns");
        let slot = format!("{}:{lower}", section == Section::Peer);
        if !repeatable && seen.contains(&slot) {
            return Err(WgError::invalid(field(key), "appears twice"));
        }
        seen.push(slot);
        let number = |v: &str| -> Result<f64> {
            v.parse::<u32>()
                .map(f64::from)
                .map_err(|_| WgError::invalid(field(key), format!("{v:?} is not a whole number")))
        };
        match (&section, lower.as_str()) {
            (Section::Interface, "privatekey") => {
                raw.private_key = Some(RawKey::Text(value.into()))
            }
            (Section::Interface, "address") => raw
                .addresses
                .get_or_insert_with(Vec::new)
                .extend(list(value)),
            (Section::Interface, "mtu") => raw.mtu = Some(number(value)?),
            (Section::Interface, "dns") => raw.dns.get_or_insert_with(Vec::new).extend(list(value)),
            (Section::Peer, "publickey") => peer.public_key = Some(value.into()),
            (Section::Peer, "presharedkey") => peer.preshared_key = Some(value.into()),
            (Section::Peer, "endpoint") => peer.endpoint = Some(value.into()),
            (Section::Peer, "allowedips") => peer
                .allowed_ips
                .get_or_insert_with(Vec::new)
                .extend(list(value)),
            (Section::Peer, "persistentkeepalive") => {
                peer.persistent_keepalive = Some(if value == "off" { 0.0 } else { number(value)? })
            }
            (Section::None, _) => {
                return Err(WgError::invalid(
                    field(key),
                    "stands outside [Interface] and [Peer]",
                ))
            }
            _ => {
                return Err(WgError::invalid(
                    field(key),
                    "is not a key blue-wireguard accepts here",
                ))
            }
        }
    }
    if interfaces == 0 {
        return Err(WgError::invalid(
            "config file",
            "has no [Interface] section",
        ));
    }
    if peers == 0 {
        return Err(WgError::invalid("config file", "has no [Peer] section"));
    }
    if peer.allowed_ips.is_none() {
        return Err(WgError::invalid("AllowedIPs", "is missing from [Peer]"));
    }
    raw.peer = Some(peer);
    Ok(raw)
}

/// Where the peer listens. `host` is an IP literal or a validated hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// How long a host-name endpoint may take to resolve.
pub const RESOLVE_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

impl Endpoint {
    /// The endpoint as a socket address when its host is an IP literal.
    pub fn literal(&self) -> Option<std::net::SocketAddr> {
        IpAddr::from_str(&self.host)
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, self.port))
    }

    /// Resolve the endpoint: an IP literal at once; a host name through the C library
    /// (`/etc/hosts`, then DNS as the namespace configures it; no program is run), in a
    /// thread of its own so that a resolver that hangs costs at most `bound` (the thread is
    /// left to finish on its own). The first address the resolver gives is used.
    pub fn resolve(&self, bound: std::time::Duration) -> Result<std::net::SocketAddr> {
        if let Some(a) = self.literal() {
            return Ok(a);
        }
        Ok(self.resolve_all(bound)?[0])
    }

    /// Every address the host name resolves to (at least one), within `bound`.
    pub fn resolve_all(&self, bound: std::time::Duration) -> Result<Vec<std::net::SocketAddr>> {
        use std::net::ToSocketAddrs;
        if let Some(a) = self.literal() {
            return Ok(vec![a]);
        }
        let unresolved = |detail: String| WgError::EndpointUnresolved {
            host: self.host.clone(),
            detail,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (host, port) = (self.host.clone(), self.port);
        std::thread::Builder::new()
            .name("blue-wg-resolve".into())
            .spawn(move || {
                let r = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<_>>());
                let _ = tx.send(r);
            })
            .map_err(|e| unresolved(format!("cannot start the resolver: {e}")))?;
        match rx.recv_timeout(bound) {
            Ok(Ok(a)) if !a.is_empty() => Ok(a),
            Ok(Ok(_)) => Err(unresolved("it has no address".into())),
            Ok(Err(e)) => Err(unresolved(e.to_string())),
            Err(_) => Err(unresolved(format!(
                "no answer within {} ms",
                bound.as_millis()
            ))),
        }
    }
}

impl From<std::net::SocketAddr> for Endpoint {
    fn from(a: std::net::SocketAddr) -> Self {
        Endpoint {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match IpAddr::from_str(&self.host) {
            Ok(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub public_key: Key,
    pub endpoint: Endpoint,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: u16,
    pub preshared_key: Option<Key>,
}

/// A validated tunnel config. Every field here is safe to render.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub private_key: Key,
    pub addresses: Vec<IpNet>,
    pub peer: Peer,
    pub mtu: u16,
    pub dns: Vec<IpAddr>,
    pub name: String,
    /// While the tunnel exists, nothing leaves the host outside it (`nft`).
    pub kill_switch: bool,
    /// With the kill switch: private and link-local destinations may still be reached.
    pub allow_lan: bool,
    /// Destinations that go around a full tunnel (and through the kill switch): the CIDRs
    /// given, plus the addresses of `exclude_hosts` once resolved.
    pub exclude: Vec<IpNet>,
    /// Host names in `exclude`, resolved (bounded) at connect and at each update.
    pub exclude_hosts: Vec<String>,
}

impl TunnelConfig {
    /// Validate every field. The first problem found is reported with its field name.
    pub fn from_raw(raw: RawConfig) -> Result<Self> {
        let name = match raw.name {
            None => DEFAULT_NAME.to_string(),
            Some(n) => {
                validate_interface_name(&n)?;
                n
            }
        };
        let private_key = match raw.private_key {
            None => return Err(WgError::invalid("privateKey", "is required")),
            Some(RawKey::Text(t)) => parse_key("privateKey", &t)?,
            Some(RawKey::Bytes(b)) => {
                let arr: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                    WgError::invalid(
                        "privateKey",
                        format!("a Buffer key must be exactly 32 bytes, got {}", b.len()),
                    )
                })?;
                check_nonzero("privateKey", Key(arr))?
            }
        };
        let addresses = parse_cidr_list(
            "addresses",
            raw.addresses
                .ok_or_else(|| WgError::invalid("addresses", "is required"))?,
        )?;
        let peer = raw
            .peer
            .ok_or_else(|| WgError::invalid("peer", "is required"))?;
        let public_key = parse_key(
            "peer.publicKey",
            peer.public_key
                .as_deref()
                .ok_or_else(|| WgError::invalid("peer.publicKey", "is required"))?,
        )?;
        let endpoint = parse_endpoint(
            peer.endpoint
                .as_deref()
                .ok_or_else(|| WgError::invalid("peer.endpoint", "is required"))?,
        )?;
        let allowed_ips = parse_cidr_list(
            "peer.allowedIps",
            peer.allowed_ips
                .unwrap_or_else(|| FULL_TUNNEL.iter().map(|s| s.to_string()).collect()),
        )?
        .into_iter()
        .map(|n| n.trunc())
        .collect::<Vec<_>>();
        let persistent_keepalive = int_in(
            "peer.persistentKeepalive",
            peer.persistent_keepalive,
            DEFAULT_KEEPALIVE,
            0,
            65535,
        )?;
        let preshared_key = match peer.preshared_key.as_deref() {
            None => None,
            Some(k) => Some(parse_key("peer.presharedKey", k)?),
        };
        let mtu = int_in("mtu", raw.mtu, DEFAULT_MTU, 576, 9000)?;
        let full = allowed_ips.iter().any(|n| n.prefix_len() == 0);
        let dns = match raw.dns {
            Some(list) => parse_ip_list("dns", list)?,
            None if full => DEFAULT_DNS.iter().map(|s| s.parse().unwrap()).collect(),
            None => Vec::new(),
        };
        let (exclude, exclude_hosts) = parse_exclude(raw.exclude.unwrap_or_default())?;
        Ok(TunnelConfig {
            kill_switch: raw.kill_switch.unwrap_or(false),
            allow_lan: raw.allow_lan.unwrap_or(false),
            exclude,
            exclude_hosts,
            private_key,
            addresses,
            peer: Peer {
                public_key,
                endpoint,
                allowed_ips,
                persistent_keepalive,
                preshared_key,
            },
            mtu,
            dns,
            name,
        })
    }

    /// A full tunnel routes a default route (some AllowedIPs entry is a /0).
    pub fn full_tunnel(&self) -> bool {
        self.peer.allowed_ips.iter().any(|n| n.prefix_len() == 0)
    }

    /// Render the wg-quick file. There is deliberately no `DNS =` line (we apply DNS ourselves,
    /// so wg-quick never needs resolvconf) and no hook directive of any kind.
    /// With `ipv6 == false` (IPv6 disabled on this host) IPv6 AllowedIPs are left out.
    pub fn render(&self, ipv6: bool) -> String {
        let join = |v: &[IpNet]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let allowed: Vec<IpNet> = self
            .peer
            .allowed_ips
            .iter()
            .filter(|n| ipv6 || matches!(n, IpNet::V4(_)))
            .copied()
            .collect();
        let mut s = String::with_capacity(512);
        s.push_str("# written by blue-wireguard; removed when the tunnel goes down\n");
        s.push_str("[Interface]\n");
        let _ = writeln!(s, "PrivateKey = {}", self.private_key.to_base64());
        let _ = writeln!(s, "Address = {}", join(&self.addresses));
        let _ = writeln!(s, "MTU = {}", self.mtu);
        s.push_str("\n[Peer]\n");
        let _ = writeln!(s, "PublicKey = {}", self.peer.public_key.to_base64());
        if let Some(psk) = &self.peer.preshared_key {
            let _ = writeln!(s, "PresharedKey = {}", psk.to_base64());
        }
        let _ = writeln!(s, "Endpoint = {}", self.peer.endpoint);
        let _ = writeln!(s, "AllowedIPs = {}", join(&allowed));
        if self.peer.persistent_keepalive > 0 {
            let _ = writeln!(
                s,
                "PersistentKeepalive = {}",
                self.peer.persistent_keepalive
            );
        }
        s
    }
}

/// Reject control characters (newline, NUL, ...), non-ASCII and oversize text: no value can
/// smuggle a second line or directive into the rendered file.
pub fn check_text(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(WgError::invalid(field, "must not be empty"));
    }
    if v.len() > MAX_TEXT {
        return Err(WgError::invalid(
            field,
            format!("is {} characters long, at most {MAX_TEXT} allowed", v.len()),
        ));
    }
    if let Some(c) = v.chars().find(|c| c.is_control() || !c.is_ascii()) {
        return Err(WgError::invalid(
            field,
            format!("contains a forbidden character {:?}", c),
        ));
    }
    if v.contains('=') && !v.trim_end_matches('=').chars().all(is_b64_char) {
        return Err(WgError::invalid(field, "contains '='"));
    }
    Ok(())
}

fn is_b64_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '+' || c == '/'
}

/// A WireGuard key: standard base64 of exactly 32 bytes, 44 characters, nothing else.
pub fn parse_key(field: &str, v: &str) -> Result<Key> {
    check_text(field, v)?;
    if v.len() != 44 || !v.ends_with('=') || !v[..43].chars().all(is_b64_char) {
        return Err(WgError::invalid(
            field,
            "must be the base64 text of exactly 32 bytes (44 characters)",
        ));
    }
    let bytes = B64
        .decode(v)
        .map_err(|e| WgError::invalid(field, format!("is not valid base64: {e}")))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| WgError::invalid(field, "must decode to exactly 32 bytes"))?;
    check_nonzero(field, Key(arr))
}

fn check_nonzero(field: &str, k: Key) -> Result<Key> {
    if k.0.iter().all(|b| *b == 0) {
        return Err(WgError::invalid(field, "is all zeros"));
    }
    Ok(k)
}

/// A CIDR, or a bare IP which becomes /32 or /128.
pub fn parse_cidr(field: &str, v: &str) -> Result<IpNet> {
    check_text(field, v)?;
    if let Ok(n) = IpNet::from_str(v) {
        return Ok(n);
    }
    if let Ok(ip) = IpAddr::from_str(v) {
        return Ok(IpNet::from(ip));
    }
    Err(WgError::invalid(
        field,
        format!("{v:?} is not an IP address or CIDR"),
    ))
}

fn parse_cidr_list(field: &str, list: Vec<String>) -> Result<Vec<IpNet>> {
    check_list(field, list.len())?;
    list.iter()
        .enumerate()
        .map(|(i, v)| parse_cidr(&format!("{field}[{i}]"), v))
        .collect()
}

/// `exclude`: CIDRs (a bare IP is a host) and host names; a default route (/0) would exclude
/// everything and is refused.
fn parse_exclude(list: Vec<String>) -> Result<(Vec<IpNet>, Vec<String>)> {
    if !list.is_empty() {
        check_list("exclude", list.len())?;
    }
    let (mut nets, mut hosts) = (Vec::new(), Vec::new());
    for (i, v) in list.iter().enumerate() {
        let field = format!("exclude[{i}]");
        let looks_ip = v.contains(':')
            || v.contains('/')
            || v.parse::<IpAddr>().is_ok()
            || v.chars().all(|c| c.is_ascii_digit() || c == '.');
        if looks_ip {
            let net = parse_cidr(&field, v)?.trunc();
            // Two halves make a default: anything wider than a /8 (IPv4) or /16 (IPv6) would
            // take most traffic around the tunnel and through the kill switch.
            let widest = if net.addr().is_ipv4() { 8 } else { 16 };
            if net.prefix_len() < widest {
                return Err(WgError::invalid(
                    field,
                    format!("{net} is wider than a /{widest}: too much would go around the tunnel"),
                ));
            }
            nets.push(net);
        } else {
            validate_hostname(v).map_err(|why| WgError::invalid(&field, why))?;
            hosts.push(v.to_ascii_lowercase());
        }
    }
    Ok((nets, hosts))
}

/// The most addresses one excluded host name contributes.
const MAX_HOST_ADDRESSES: usize = 16;

/// Resolve `exclude`'s host names (each within `bound`): every address each has (up to
/// `MAX_HOST_ADDRESSES`), as a host.
pub fn resolve_excluded(hosts: &[String], bound: std::time::Duration) -> Result<Vec<IpNet>> {
    let mut out = Vec::new();
    for h in hosts {
        let ep = Endpoint {
            host: h.clone(),
            port: 0,
        };
        // A name that resolves to many addresses is not a way around the list's bound.
        for a in ep.resolve_all(bound)?.into_iter().take(MAX_HOST_ADDRESSES) {
            out.push(IpNet::from(a.ip()));
        }
    }
    Ok(out)
}

fn parse_ip_list(field: &str, list: Vec<String>) -> Result<Vec<IpAddr>> {
    if list.len() > MAX_LIST {
        return Err(WgError::invalid(
            field,
            format!("has {} entries, at most {MAX_LIST} allowed", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let f = format!("{field}[{i}]");
            check_text(&f, v)?;
            IpAddr::from_str(v)
                .map_err(|_| WgError::invalid(&f, format!("{v:?} is not an IP address")))
        })
        .collect()
}

fn check_list(field: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(WgError::invalid(field, "must list at least one entry"));
    }
    if n > MAX_LIST {
        return Err(WgError::invalid(
            field,
            format!("has {n} entries, at most {MAX_LIST} allowed"),
        ));
    }
    Ok(())
}

fn int_in(field: &str, v: Option<f64>, default: u16, min: u16, max: u16) -> Result<u16> {
    match v {
        None => Ok(default),
        Some(x) if x.fract() == 0.0 && x >= min as f64 && x <= max as f64 => Ok(x as u16),
        Some(x) => Err(WgError::invalid(
            field,
            format!("must be a whole number from {min} to {max}, got {x}"),
        )),
    }
}

/// `IPv4:port`, `[IPv6]:port` or `hostname:port`, port 1-65535.
pub fn parse_endpoint(v: &str) -> Result<Endpoint> {
    const F: &str = "peer.endpoint";
    check_text(F, v)?;
    let bad = |why: &str| WgError::invalid(F, format!("{v:?} {why}"));
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| bad("must be [IPv6]:port"))?;
        let ip: std::net::Ipv6Addr = h.parse().map_err(|_| bad("has an invalid IPv6 address"))?;
        (ip.to_string(), p)
    } else {
        let (h, p) = v.rsplit_once(':').ok_or_else(|| bad("must be host:port"))?;
        if h.contains(':') {
            return Err(bad("must put an IPv6 address in brackets: [addr]:port"));
        }
        if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
            (ip.to_string(), p)
        } else {
            validate_hostname(h).map_err(&bad)?;
            (h.to_ascii_lowercase(), p)
        }
    };
    if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("must end in a port number 1-65535"));
    }
    let port: u32 = port.parse().map_err(|_| bad("has an invalid port"))?;
    if !(1..=65535).contains(&port) {
        return Err(bad("must end in a port number 1-65535"));
    }
    Ok(Endpoint {
        host,
        port: port as u16,
    })
}

fn validate_hostname(h: &str) -> std::result::Result<(), &'static str> {
    if h.is_empty() || h.len() > 253 {
        return Err("has a host name of invalid length");
    }
    // A dotted-numeric string that did not parse as IPv4 is a malformed address, not a name.
    if h.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Err("has an invalid IPv4 address");
    }
    for label in h.trim_end_matches('.').split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err("has an invalid host name");
        }
    }
    Ok(())
}

/// A Linux interface name that wg-quick also accepts: 1-15 of `[A-Za-z0-9_=+.-]`.
pub fn validate_interface_name(n: &str) -> Result<()> {
    check_text("name", n)?;
    if n.len() > 15
        || n == "."
        || n == ".."
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_=+.-".contains(c))
    {
        return Err(WgError::invalid(
            "name",
            format!("{n:?} is not a valid interface name (1-15 of A-Z a-z 0-9 _ = + . -)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn raw() -> RawConfig {
        RawConfig {
            private_key: Some(RawKey::Text(K1.into())),
            addresses: Some(vec!["10.8.0.2/24".into()]),
            peer: Some(RawPeer {
                public_key: Some(K2.into()),
                endpoint: Some("192.0.2.1:51820".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_render_a_full_tunnel_without_dns_line() {
        let c = TunnelConfig::from_raw(raw()).unwrap();
        assert_eq!(c.name, "wgsent0");
        assert_eq!(c.mtu, 1280);
        assert!(c.full_tunnel());
        assert_eq!(c.dns.len(), 2);
        let s = c.render(true);
        assert!(s.contains("AllowedIPs = 0.0.0.0/0, ::/0\n"));
        assert!(s.contains("PersistentKeepalive = 15\n"));
        assert!(s.contains(&format!("PrivateKey = {K1}\n")));
        assert!(!s.contains("DNS"));
        assert!(c.render(false).contains("AllowedIPs = 0.0.0.0/0\n"));
    }

    #[test]
    fn split_tunnel_bare_ip_becomes_host_route_and_no_default_dns() {
        let mut r = raw();
        r.peer.as_mut().unwrap().allowed_ips = Some(vec!["198.18.0.10".into(), "fd00::1".into()]);
        let c = TunnelConfig::from_raw(r).unwrap();
        assert!(!c.full_tunnel());
        assert!(c.dns.is_empty());
        assert!(c
            .render(true)
            .contains("AllowedIPs = 198.18.0.10/32, fd00::1/128\n"));
    }

    #[test]
    fn injected_directives_are_refused_naming_the_field() {
        type Mutation = Box<dyn Fn(&mut RawConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "privateKey",
                Box::new(|r: &mut RawConfig| {
                    r.private_key = Some(RawKey::Text(format!("{K1}\nPostUp = touch /tmp/x")))
                }),
            ),
            (
                "peer.publicKey",
                Box::new(|r: &mut RawConfig| {
                    r.peer.as_mut().unwrap().public_key = Some(format!("{K2}\nPostUp = id"))
                }),
            ),
            (
                "peer.endpoint",
                Box::new(|r: &mut RawConfig| {
                    r.peer.as_mut().unwrap().endpoint = Some("1.2.3.4:51820\nPostUp = id".into())
                }),
            ),
            (
                "addresses[0]",
                Box::new(|r: &mut RawConfig| r.addresses = Some(vec!["10.8.0.2/24\0".into()])),
            ),
            (
                "peer.allowedIps[1]",
                Box::new(|r: &mut RawConfig| {
                    r.peer.as_mut().unwrap().allowed_ips = Some(vec![
                        "10.0.0.0/8".into(),
                        "1.1.1.1/32, 0.0.0.0/0 PostUp=x".into(),
                    ])
                }),
            ),
            (
                "name",
                Box::new(|r: &mut RawConfig| r.name = Some("wg0\nPostUp".into())),
            ),
            (
                "name",
                Box::new(|r: &mut RawConfig| r.name = Some("averyveryverylongname".into())),
            ),
            (
                "dns[0]",
                Box::new(|r: &mut RawConfig| r.dns = Some(vec!["1.1.1.1 PostUp = x".into()])),
            ),
            ("mtu", Box::new(|r: &mut RawConfig| r.mtu = Some(100.0))),
            ("mtu", Box::new(|r: &mut RawConfig| r.mtu = Some(1280.5))),
            (
                "peer.persistentKeepalive",
                Box::new(|r: &mut RawConfig| {
                    r.peer.as_mut().unwrap().persistent_keepalive = Some(70000.0)
                }),
            ),
            (
                "privateKey",
                Box::new(|r: &mut RawConfig| r.private_key = Some(RawKey::Bytes(vec![1; 31]))),
            ),
            (
                "privateKey",
                Box::new(|r: &mut RawConfig| r.private_key = Some(RawKey::Text("x".repeat(5000)))),
            ),
            (
                "peer.presharedKey",
                Box::new(|r: &mut RawConfig| {
                    r.peer.as_mut().unwrap().preshared_key = Some("AAAA=PostUp".into())
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut r = raw();
            mutate(&mut r);
            match TunnelConfig::from_raw(r) {
                Err(WgError::InvalidOptions { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected INVALID_OPTIONS, got {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_types_and_unknown_keys_name_the_field() {
        let peer = Input::Map(vec![
            ("publicKey".into(), Input::Str(K2.into())),
            ("endpoint".into(), Input::Str("192.0.2.1:51820".into())),
        ]);
        let ok = Input::Map(vec![
            ("privateKey".into(), Input::Bytes(vec![7; 32])),
            (
                "addresses".into(),
                Input::List(vec![Input::Str("10.8.0.2/24".into())]),
            ),
            ("peer".into(), peer.clone()),
        ]);
        let c = TunnelConfig::from_raw(RawConfig::from_input(&ok).unwrap()).unwrap();
        assert_eq!(c.private_key.0, [7; 32]);
        let field_of = |v: Input| match RawConfig::from_input(&v) {
            Err(WgError::InvalidOptions { field, .. }) => field,
            other => panic!("expected INVALID_OPTIONS, got {other:?}"),
        };
        assert_eq!(field_of(Input::Str("x".into())), "config");
        let mut m = vec![
            ("privateKey".into(), Input::Num(5.0)),
            ("peer".into(), peer.clone()),
        ];
        assert_eq!(field_of(Input::Map(m.clone())), "privateKey");
        m[0] = ("addresses".into(), Input::List(vec![Input::Num(1.0)]));
        assert_eq!(field_of(Input::Map(m.clone())), "addresses[0]");
        m[0] = ("mtu".into(), Input::Str("1280".into()));
        assert_eq!(field_of(Input::Map(m.clone())), "mtu");
        m[0] = ("PostUp".into(), Input::Str("touch /tmp/x".into()));
        assert_eq!(field_of(Input::Map(m.clone())), "PostUp");
        let bad_peer = Input::Map(vec![("allowedIPs".into(), Input::List(vec![]))]);
        assert_eq!(
            field_of(Input::Map(vec![("peer".into(), bad_peer)])),
            "peer.allowedIPs"
        );
    }

    const SDK_FILE: &str = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.8.0.2/24\nMTU = 1280\nDNS = 10.8.0.1, 1.1.1.1\n\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 0.0.0.0/0, ::/0\nPersistentKeepalive = 15\n";

    #[test]
    fn the_sdk_file_parses_to_the_same_tunnel() {
        let c = TunnelConfig::from_raw(parse_wg_quick(SDK_FILE).unwrap()).unwrap();
        assert!(c.full_tunnel());
        assert_eq!(c.dns.len(), 2);
        assert_eq!(c.mtu, 1280);
        assert_eq!(c.peer.persistent_keepalive, 15);
        let split = SDK_FILE
            .replace("DNS = 10.8.0.1, 1.1.1.1\n", "")
            .replace("0.0.0.0/0, ::/0", "1.1.1.1/32, 1.0.0.1/32");
        let c = TunnelConfig::from_raw(parse_wg_quick(&split).unwrap()).unwrap();
        assert!(!c.full_tunnel() && c.dns.is_empty());
    }

    #[test]
    fn files_with_anything_else_are_refused() {
        for (extra, field) in [
            ("PostUp = touch /tmp/x\n", "PostUp (line 6)"),
            ("preup = id\n", "preup (line 6)"),
            ("PostDown = id\n", "PostDown (line 6)"),
            ("PreDown = id\n", "PreDown (line 6)"),
            ("SaveConfig = true\n", "SaveConfig (line 6)"),
            ("Table = off\n", "Table (line 6)"),
            ("ListenPort = 5\n", "ListenPort (line 6)"),
            ("[Interface]\n", "line 6"),
            ("[Peer]\n", "line 8"),
            ("[Other]\n", "line 6"),
            ("Endpoint = 1.2.3.4:5\n", "Endpoint (line 6)"),
            ("garbage\n", "line 6"),
            ("PublicKey = a\rPostUp = x\n", "line 6"),
        ] {
            let text = SDK_FILE.replacen("\n[Peer]", &format!("{extra}\n[Peer]"), 1);
            let text = if extra.starts_with("Endpoint") {
                SDK_FILE.to_string() + extra
            } else {
                text
            };
            match parse_wg_quick(&text) {
                Err(WgError::InvalidOptions { field: f, .. }) => {
                    let want = if extra.starts_with("Endpoint") {
                        "Endpoint (line 12)"
                    } else {
                        field
                    };
                    assert_eq!(f, want, "{extra}")
                }
                other => panic!("{extra}: expected INVALID_OPTIONS, got {other:?}"),
            }
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("[fd00::1]:51820").unwrap().to_string(),
            "[fd00::1]:51820"
        );
        assert_eq!(
            parse_endpoint("Node.Example.com:443").unwrap().host,
            "node.example.com"
        );
        for bad in [
            "1.2.3.4",
            "1.2.3.4:0",
            "1.2.3.4:65536",
            "fd00::1:51820",
            "999.1.1.1:5",
            "a b:5",
            "-x.com:5",
            "host:+5",
            "[fd00::1]51820",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn keys_must_be_exactly_32_bytes_of_base64() {
        assert!(parse_key("k", K1).is_ok());
        assert!(parse_key("k", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_err()); // all zero
        assert!(parse_key("k", &K1[..43]).is_err());
        assert!(parse_key("k", "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBm==").is_err());
    }
}
