//! The only module that knows napi: argument conversion, result objects, and the one place
//! where a core error becomes a JavaScript `Error` with a string `code`.
// Under `cargo test` nothing calls the exported functions.
#![cfg_attr(test, allow(dead_code))]

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsValue, Status, Task, ValueType};
use napi_derive::napi;

use crate::config::{Input, RawConfig};
use crate::error::WgError;
use crate::teardown::TeardownReport as CoreReport;
use crate::{confdir, registry, tunnel};

/// The JS error for a core error: `message`, `code` set to the contract string, and
/// `retryable` (whether the same call, made again, may succeed).
fn js_error(env: &Env, e: &WgError) -> napi::Error {
    let err: napi::Error<String> = napi::Error::new(e.code().to_string(), e.to_string());
    // SAFETY: env is the live env of this call; the value is converted on its own thread.
    match unsafe { ToNapiValue::to_napi_value(env.raw(), err) } {
        Ok(v) => {
            // SAFETY: `v` is the Error object just made in this env.
            if let Ok(mut obj) = unsafe { Object::from_napi_value(env.raw(), v) } {
                let _ = obj.set_named_property("retryable", e.retryable());
            }
            napi::Error::from(unsafe { Unknown::from_raw_unchecked(env.raw(), v) })
        }
        Err(e) => e,
    }
}

const MAX_DEPTH: usize = 4;
const MAX_ITEMS: u32 = 1024;

/// Reduce a JS value to plain data; type checks happen in `config::RawConfig::from_input`.
fn to_input(v: &Unknown, depth: usize) -> Result<Input> {
    Ok(match v.get_type()? {
        ValueType::Undefined | ValueType::Null => Input::Missing,
        ValueType::String => Input::Str(unsafe { v.cast::<String>()? }),
        ValueType::Number => Input::Num(unsafe { v.cast::<f64>()? }),
        ValueType::Boolean => Input::Bool(unsafe { v.cast::<bool>()? }),
        ValueType::Object if v.is_typedarray()? => {
            if is_uint8_array(v) {
                Input::Bytes(unsafe { v.cast::<Uint8Array>()? }.to_vec())
            } else {
                Input::Other("typed array other than Uint8Array")
            }
        }
        // napi_is_buffer is true for any ArrayBufferView: here only a DataView is left.
        ValueType::Object if v.is_buffer()? => Input::Other("DataView"),
        ValueType::Object if depth >= MAX_DEPTH => Input::Other("nested object"),
        ValueType::Object if v.is_array()? => {
            let arr = unsafe { v.cast::<Object>()? };
            let len = arr.get_array_length()?;
            if len > MAX_ITEMS {
                Input::Other("array too long")
            } else {
                let mut items = Vec::with_capacity(len as usize);
                for i in 0..len {
                    let item: Unknown = arr.get_element(i)?;
                    items.push(to_input(&item, depth + 1)?);
                }
                Input::List(items)
            }
        }
        ValueType::Object => {
            let obj = unsafe { v.cast::<Object>()? };
            let keys = Object::keys(&obj)?;
            if keys.len() as u32 > MAX_ITEMS {
                Input::Other("object too large")
            } else {
                let mut m = Vec::with_capacity(keys.len());
                for k in keys {
                    let item: Unknown = obj.get(&k)?.unwrap_or(unsafe {
                        Unknown::from_raw_unchecked(v.value().env, std::ptr::null_mut())
                    });
                    let val = if item.raw().is_null() {
                        Input::Missing
                    } else {
                        to_input(&item, depth + 1)?
                    };
                    m.push((k, val));
                }
                Input::Map(m)
            }
        }
        ValueType::Function => Input::Other("function"),
        ValueType::Symbol => Input::Other("symbol"),
        ValueType::BigInt => Input::Other("bigint"),
        _ => Input::Other("unknown"),
    })
}

/// How long a finished connect waits for the JS thread to run its last progress callbacks.
const PROGRESS_FLUSH_BOUND: Duration = Duration::from_secs(1);

/// True for a `Uint8Array` (a Buffer is one); false for any other typed array, whose bytes
/// would be reinterpreted.
fn is_uint8_array(v: &Unknown) -> bool {
    let env = v.value().env;
    let mut kind = napi::sys::TypedarrayType::int8_array;
    let mut len = 0usize;
    let mut data = std::ptr::null_mut();
    let mut buffer = std::ptr::null_mut();
    let mut offset = 0usize;
    // SAFETY: v is a typed array of this env (checked by the caller); out-pointers are valid.
    let status = unsafe {
        napi::sys::napi_get_typedarray_info(
            env,
            v.raw(),
            &mut kind,
            &mut len,
            &mut data,
            &mut buffer,
            &mut offset,
        )
    };
    status == napi::sys::Status::napi_ok && kind == napi::sys::TypedarrayType::uint8_array
}

type ProgressArgs = FnArgs<(String, String)>;
type Progress = ThreadsafeFunction<ProgressArgs, (), ProgressArgs, Status, false>;

thread_local! {
    /// Which JS environment (main thread or a worker) this thread runs; 0 = none.
    static ENV_ID: Cell<u64> = const { Cell::new(0) };
}
static NEXT_ENV_ID: AtomicU64 = AtomicU64::new(1);

/// Registers a napi env cleanup hook for each environment that loads the addon: when a worker
/// (or the main thread's env) is torn down, the tunnels it connected are removed. It is the
/// backstop; the JavaScript exit hooks in `lib/hooks.js` are the main path.
#[napi(module_exports)]
pub fn init(_exports: Object, env: Env) -> Result<()> {
    let id = NEXT_ENV_ID.fetch_add(1, Ordering::Relaxed);
    ENV_ID.with(|c| c.set(id));
    env.add_env_cleanup_hook(id, |id| {
        registry::cleanup_env(id);
    })?;
    Ok(())
}

/// Options of `connect`.
/// (Declared for `index.d.ts`; values are converted by `to_input`.)
#[allow(dead_code)]
#[napi(object, object_to_js = false)]
pub struct ConnectOptions {
    /// Called at each step of bring-up: `validate`, `preflight`, `state-dir` (the namespace's
    /// state directory), `sweep` (only when dead owners' leftovers were removed), `converge`
    /// (only when a leftover of the same name was removed), `owner-record`, `write-config`
    /// (wg-quick backend only), `interface-up`, `routing` (native backends), `kernel-ready`,
    /// `exclude` and `kill-switch` (when asked for), `handshake` (the first completed
    /// handshake with the node), `dns` (when DNS is applied),
    /// `ready`. `resolve` comes after `validate` when the endpoint (or an `exclude` entry) is
    /// a host name. A connect done in place (same tunnel again): `validate`, `update`,
    /// `handshake`.
    #[napi(ts_type = "(step: string, detail: string) => void")]
    pub on_progress: Option<()>,
    /// Which backend brings the tunnel up: `auto` (the default, or `BLUE_WG_BACKEND`):
    /// `kernel` where the WireGuard module is loaded or loadable, else `embedded` where
    /// `/dev/net/tun` is there, else `wg-quick` (the native ones need CAP_NET_ADMIN);
    /// `kernel` (the kernel's WireGuard over netlink, no external tool, no key file);
    /// `embedded` (WireGuard inside this process, no external tool, no key file);
    /// `wg-quick`.
    #[napi(ts_type = "'auto' | 'embedded' | 'wg-quick' | 'kernel'")]
    pub backend: Option<String>,
    /// How long `connect` waits for the first completed handshake with the node before it
    /// rolls everything back and rejects with `WG_NO_CONNECTIVITY` (default 5000, at most
    /// 120000). `0` does not wait: the Promise then resolves once the interface is up, before
    /// anything is known of the node.
    pub handshake_timeout_ms: Option<u32>,
    /// `connectConfigFile` only (a wg-quick file cannot say it): as `TunnelConfig.killSwitch`.
    pub kill_switch: Option<bool>,
    /// `connectConfigFile` only: as `TunnelConfig.allowLan`.
    pub allow_lan: Option<bool>,
    /// `connectConfigFile` only: as `TunnelConfig.exclude`.
    pub exclude: Option<Vec<String>>,
}

/// The tunnel config. Values from the node are hostile: every field is validated before
/// anything is written or run, and a bad one rejects with `code: 'INVALID_OPTIONS'`.
/// (Declared for `index.d.ts`; values are converted by `to_input`.)
#[allow(dead_code)]
#[napi(object, object_to_js = false)]
pub struct TunnelConfig {
    /// Our private key: base64 text of 32 bytes, or a 32-byte Buffer.
    #[napi(ts_type = "string | Buffer")]
    pub private_key: (),
    /// Our tunnel addresses (CIDRs from the node, e.g. `["10.8.0.2/24"]`).
    pub addresses: Vec<String>,
    pub peer: PeerConfig,
    /// 576-9000, default 1280 (Sentinel nodes use 1280).
    pub mtu: Option<u32>,
    /// DNS servers while the tunnel is up. Default `["10.8.0.1", "1.1.1.1"]` for a full tunnel,
    /// none for a split tunnel; `[]` leaves DNS alone.
    pub dns: Option<Vec<String>>,
    /// Interface name, default `wgsent0`.
    pub name: Option<String>,
    /// While the tunnel exists, the host sends nothing outside it: only through the tunnel
    /// interface, the tunnel's own flow to the node's endpoint, loopback, `exclude`d
    /// destinations and (with `allowLan`) private and link-local ones; DNS (port 53) only
    /// through the tunnel; also against sockets bound to another interface and deleted
    /// policy rules. An nftables table of this process (`inet blue-wg-<name>`), gone with the
    /// tunnel and, by the kernel, the moment this process dies. Default false. One per network
    /// namespace. Kernel and embedded backends.
    pub kill_switch: Option<bool>,
    /// With `killSwitch`: let private (RFC 1918), link-local and local multicast destinations
    /// out (a LAN database, a cloud metadata service, DHCP renewal). Default false.
    pub allow_lan: Option<bool>,
    /// CIDRs (a bare IP is a host) and host names (resolved at connect, in-process, at most
    /// 3 s) that go around a full tunnel by the host's own route, and through the kill switch:
    /// e.g. the agent's chain RPC, so it can still end or switch its session when the node
    /// dies. Kernel and embedded backends.
    pub exclude: Option<Vec<String>>,
}

/// The node's side of the tunnel.
/// (Declared for `index.d.ts`; values are converted by `to_input`.)
#[allow(dead_code)]
#[napi(object, object_to_js = false)]
pub struct PeerConfig {
    /// The node's public key, base64 of 32 bytes.
    pub public_key: String,
    /// `IPv4:port`, `[IPv6]:port` or `hostname:port`.
    pub endpoint: String,
    /// Routed through the tunnel; default `["0.0.0.0/0", "::/0"]` (full tunnel). A bare IP
    /// becomes /32 or /128.
    pub allowed_ips: Option<Vec<String>>,
    /// Seconds, 0-65535, default 15; 0 turns it off.
    pub persistent_keepalive: Option<u32>,
    /// Optional preshared key, base64 of 32 bytes.
    pub preshared_key: Option<String>,
}

/// The time of one step of `connect`, in ms since the call.
#[napi(object)]
pub struct StepTime {
    pub step: String,
    pub ms: f64,
}

/// A duration for JavaScript, rounded to 0.01 ms (what the clocks and the numbers mean);
/// the core keeps full precision.
fn round_ms(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

/// What `connect` brought up.
#[napi(object)]
pub struct TunnelInfo {
    pub name: String,
    /// The wg-quick backend's config (0600, in `configDir()`); removed when the tunnel goes
    /// down. Absent for the native backends (kernel, embedded), which write no key file.
    pub config_path: Option<String>,
    /// `kernel`, `embedded` or `wg-quick`: the backend that brought the tunnel up.
    pub backend: String,
    pub full_tunnel: bool,
    pub addresses: Vec<String>,
    /// AllowedIPs as installed (without `::/0` when IPv6 is disabled on this host).
    pub allowed_ips: Vec<String>,
    pub endpoint: String,
    pub mtu: u32,
    /// DNS servers applied, empty for none.
    pub dns: Vec<String>,
    /// `systemd-resolved`, `resolvconf`, `resolv.conf` (rewritten, restored on teardown) or null.
    pub dns_method: Option<String>,
    pub ipv6: bool,
    /// A leftover interface of the same name (e.g. from a killed run) was removed first.
    pub replaced_stale: bool,
    /// Pid of the watchdog that removes the tunnel if this process dies without its exit
    /// hooks (SIGKILL, OOM); absent with `BLUE_WG_NO_WATCHDOG=1`.
    pub watchdog_pid: Option<u32>,
    /// The kill switch is on.
    pub kill_switch: bool,
    /// The destinations that go around the tunnel (host names resolved), as CIDRs.
    pub exclude: Vec<String>,
    pub connect_ms: f64,
    /// From the call to the first completed handshake with the node; absent when
    /// `handshakeTimeoutMs: 0` turned the wait off.
    pub handshake_ms: Option<f64>,
    pub steps: Vec<StepTime>,
}

/// One step of a teardown.
#[napi(object)]
pub struct TeardownStep {
    /// `wg-quick down <conf>`, `wg-quick down <name>`, `ip link delete`, `sweep` or `all`.
    pub step: String,
    /// False when skipped; `detail` says why.
    pub ran: bool,
    pub ok: bool,
    pub detail: String,
    pub elapsed_ms: f64,
}

/// What a teardown did.
#[napi(object)]
pub struct TeardownReport {
    pub name: String,
    /// The interface existed when the teardown started.
    pub existed: bool,
    /// The interface does not exist now.
    pub gone: bool,
    pub steps: Vec<TeardownStep>,
    /// The config file was zero-filled and deleted (only ever after the interface is gone).
    pub config_removed: bool,
    pub config_path: Option<String>,
}

impl From<CoreReport> for TeardownReport {
    fn from(r: CoreReport) -> Self {
        TeardownReport {
            name: r.name,
            existed: r.existed,
            gone: r.gone,
            steps: r
                .steps
                .into_iter()
                .map(|s| TeardownStep {
                    step: s.step,
                    ran: s.ran,
                    ok: s.ok,
                    detail: s.detail,
                    elapsed_ms: round_ms(s.elapsed_ms),
                })
                .collect(),
            config_removed: r.config_removed,
            config_path: r.config_path,
        }
    }
}

/// What the kernel says of a tunnel interface now.
#[napi(object)]
pub struct TunnelStatus {
    pub name: String,
    /// An interface of this name exists in this network namespace.
    pub exists: bool,
    pub up: bool,
    pub mtu: u32,
    pub index: u32,
    /// This process brought it up and it still exists.
    pub managed: bool,
    pub uptime_ms: Option<f64>,
    pub full_tunnel: Option<bool>,
    pub backend: Option<String>,
    /// Milliseconds since the last completed handshake with the node, read from the device
    /// (every backend); absent before the first handshake, or when this process does not
    /// manage the tunnel.
    pub last_handshake_ago_ms: Option<f64>,
    /// Bytes received from / sent to the node, read from the device.
    pub rx_bytes: Option<f64>,
    pub tx_bytes: Option<f64>,
    /// The node's endpoint as the device uses it now (`ip:port`).
    pub endpoint: Option<String>,
    /// The interface is up and its last handshake is younger than WireGuard's reject-after
    /// time (180 s): traffic can flow. False when unknown.
    pub healthy: bool,
}

/// What a connect brings up: a config object, or a wg-quick file (the compat path).
enum Source {
    Config(Box<RawConfig>),
    File(PathBuf),
}

pub struct ConnectTask {
    raw: std::result::Result<Source, WgError>,
    /// `killSwitch`, `allowLan`, `exclude` of the options of `connectConfigFile`.
    file_extras: RawConfig,
    backend: Option<String>,
    handshake_timeout: Option<Duration>,
    progress: Option<Progress>,
    env_id: u64,
    ticket: Option<registry::Ticket>,
}

impl Task for ConnectTask {
    type Output = std::result::Result<tunnel::TunnelInfo, WgError>;
    type JsValue = TunnelInfo;

    fn compute(&mut self) -> Result<Self::Output> {
        match self.ticket.take() {
            Some(t) => t.run(|| self.connect()),
            None => self.connect(),
        }
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<TunnelInfo> {
        resolve_info(&env, output)
    }
}

impl ConnectTask {
    fn connect(&mut self) -> Result<std::result::Result<tunnel::TunnelInfo, WgError>> {
        let mut source = None;
        let raw = match std::mem::replace(&mut self.raw, Err(WgError::invalid("config", "used"))) {
            Ok(Source::Config(r)) => *r,
            Ok(Source::File(path)) => match tunnel::read_config_file(&path) {
                Ok(mut r) => {
                    source = Some(path);
                    // What a wg-quick file cannot say comes from the options.
                    let extra = std::mem::take(&mut self.file_extras);
                    r.kill_switch = extra.kill_switch;
                    r.allow_lan = extra.allow_lan;
                    r.exclude = extra.exclude;
                    r
                }
                Err(e) => return Ok(Err(e)),
            },
            Err(e) => return Ok(Err(e)),
        };
        let progress = self.progress.take();
        // Each event counts as delivered once the JS callback has returned, so every event
        // of a connect reaches the caller before its Promise settles.
        let delivered = Arc::new((Mutex::new(0usize), Condvar::new()));
        let emitted = Cell::new(0usize);
        let report = |step: &str, detail: &str| {
            if let Some(p) = &progress {
                let d = Arc::clone(&delivered);
                let status = p.call_with_return_value(
                    (step.to_string(), detail.to_string()).into(),
                    ThreadsafeFunctionCallMode::NonBlocking,
                    move |_, _| {
                        *d.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                        d.1.notify_all();
                        Ok(())
                    },
                );
                if status == Status::Ok {
                    emitted.set(emitted.get() + 1);
                }
            }
        };
        // napi's own tokio runtime (feature `tokio_rt`) carries the embedded backend: no
        // second runtime. (A drained runtime, at process teardown, panics: then none.)
        let runtime = std::panic::catch_unwind(|| {
            napi::bindgen_prelude::within_runtime_if_available(tokio::runtime::Handle::current)
        })
        .ok();
        let opts = tunnel::ConnectOptions {
            backend: self.backend.take(),
            runtime,
            handshake_timeout: self.handshake_timeout,
        };
        let result = tunnel::connect(raw, source.as_deref(), self.env_id, opts, &report);
        let (lock, cv) = &*delivered;
        let count = lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = cv.wait_timeout_while(count, PROGRESS_FLUSH_BOUND, |n| *n < emitted.get());
        Ok(result)
    }
}

fn resolve_info(
    env: &Env,
    output: std::result::Result<tunnel::TunnelInfo, WgError>,
) -> Result<TunnelInfo> {
    let i = output.map_err(|e| js_error(env, &e))?;
    {
        Ok(TunnelInfo {
            name: i.name,
            config_path: i.config_path,
            backend: i.backend,
            full_tunnel: i.full_tunnel,
            addresses: i.addresses,
            allowed_ips: i.allowed_ips,
            endpoint: i.endpoint,
            mtu: i.mtu,
            dns: i.dns,
            dns_method: i.dns_method,
            ipv6: i.ipv6,
            replaced_stale: i.replaced_stale,
            watchdog_pid: i.watchdog_pid,
            kill_switch: i.kill_switch,
            exclude: i.exclude,
            connect_ms: round_ms(i.connect_ms),
            handshake_ms: i.handshake_ms.map(round_ms),
            steps: i
                .steps
                .into_iter()
                .map(|(step, ms)| StepTime {
                    step,
                    ms: round_ms(ms),
                })
                .collect(),
        })
    }
}

/// Bring a WireGuard tunnel up. Converges over a leftover interface of the same name (the
/// normal case after a killed run). Rejects with a `code`: `INVALID_OPTIONS`,
/// `WG_PERMISSION_DENIED`, `WG_NOT_AVAILABLE`, `WG_CONFIG_DIR_UNSAFE`, `TUNNEL_SETUP_FAILED`,
/// `WG_IO_ERROR`; a failure leaves no interface, rule, DNS change or key file behind.
#[napi(
    ts_args_type = "config: TunnelConfig, options?: ConnectOptions",
    ts_return_type = "Promise<TunnelInfo>"
)]
pub fn connect(config: Unknown, options: Option<Unknown>) -> Result<AsyncTask<ConnectTask>> {
    let raw = match to_input(&config, 0).map(|i| RawConfig::from_input(&i)) {
        Ok(r) => r.map(|c| Source::Config(Box::new(c))),
        Err(e) => Err(WgError::invalid("config", e.reason.clone())),
    };
    connect_task(raw, options)
}

/// Bring a tunnel up from a wg-quick config file of the shape the SDK writes (what
/// `blue-wireguard/compat`'s `installWgTunnel` uses). The tunnel is named after the file
/// (`/x/wgsent0.conf` -> `wgsent0`). A file with `PostUp`, `PreUp`, `PostDown`, `PreDown`,
/// `SaveConfig`, `Table`, an unknown key or a second section is refused with
/// `INVALID_OPTIONS` before anything runs; every value is validated as for `connect`.
#[napi(
    ts_args_type = "confPath: string, options?: ConnectOptions",
    ts_return_type = "Promise<TunnelInfo>"
)]
pub fn connect_config_file(
    conf_path: Unknown,
    options: Option<Unknown>,
) -> Result<AsyncTask<ConnectTask>> {
    let source = match string_arg(Some(&conf_path), "confPath") {
        Ok(Some(p)) => Ok(Source::File(PathBuf::from(p))),
        Ok(None) => Err(WgError::invalid("confPath", "is required")),
        Err(e) => Err(e),
    };
    connect_task(source, options)
}

/// An optional string argument: `undefined`/`null` -> None; anything but a string ->
/// `INVALID_OPTIONS` naming the argument.
fn string_arg(v: Option<&Unknown>, field: &str) -> std::result::Result<Option<String>, WgError> {
    let Some(v) = v else { return Ok(None) };
    match v.get_type() {
        Ok(ValueType::Undefined | ValueType::Null) => Ok(None),
        Ok(ValueType::String) => unsafe { v.cast::<String>() }
            .map(Some)
            .map_err(|_| WgError::invalid(field, "must be a string")),
        Ok(t) => Err(WgError::invalid(
            field,
            format!("must be a string, not {}", format!("{t:?}").to_lowercase()),
        )),
        Err(_) => Err(WgError::invalid(field, "must be a string")),
    }
}

/// `options.handshakeTimeoutMs`: absent, or a whole number of ms up to the maximum.
fn handshake_timeout_arg(v: Option<&Unknown>) -> std::result::Result<Option<Duration>, WgError> {
    let field = "options.handshakeTimeoutMs";
    let max = crate::handshake::MAX_TIMEOUT.as_millis() as f64;
    let Some(v) = v else { return Ok(None) };
    match v.get_type() {
        Ok(ValueType::Undefined | ValueType::Null) => Ok(None),
        Ok(ValueType::Number) => {
            let n = unsafe { v.cast::<f64>() }
                .map_err(|_| WgError::invalid(field, "must be a number"))?;
            if n.fract() != 0.0 || !(0.0..=max).contains(&n) {
                return Err(WgError::invalid(
                    field,
                    format!("must be a whole number of ms from 0 to {max}, got {n}"),
                ));
            }
            Ok(Some(Duration::from_millis(n as u64)))
        }
        _ => Err(WgError::invalid(field, "must be a number")),
    }
}

fn connect_task(
    mut raw: std::result::Result<Source, WgError>,
    options: Option<Unknown>,
) -> Result<AsyncTask<ConnectTask>> {
    let mut progress = None;
    let mut backend = None;
    let mut handshake_timeout = None;
    let mut file_extras = RawConfig::default();
    if let Some(opts) = options {
        match opts.get_type()? {
            ValueType::Undefined | ValueType::Null => {}
            ValueType::Object => {
                let obj = unsafe { opts.cast::<Object>()? };
                match string_arg(obj.get::<Unknown>("backend")?.as_ref(), "options.backend") {
                    Ok(None) => {}
                    Ok(Some(b)) => match crate::backend::parse_choice("options.backend", &b) {
                        Ok(c) => backend = Some(c.to_string()),
                        Err(e) => raw = Err(e),
                    },
                    Err(e) => raw = Err(e),
                }
                if matches!(raw, Ok(Source::Config(_))) {
                    // A config object says these itself: an option would be silently lost.
                    for k in ["killSwitch", "allowLan", "exclude"] {
                        if obj
                            .get::<Unknown>(k)?
                            .is_some_and(|v| !matches!(v.get_type(), Ok(ValueType::Undefined)))
                        {
                            raw = Err(WgError::invalid(
                                format!("options.{k}"),
                                format!(
                                    "is for connectConfigFile; with connect, put {k} in the config"
                                ),
                            ));
                        }
                    }
                }
                if matches!(raw, Ok(Source::File(_))) {
                    // The config-file path only: the file cannot say these.
                    let mut m = Vec::new();
                    for k in ["killSwitch", "allowLan", "exclude"] {
                        if let Some(v) = obj.get::<Unknown>(k)? {
                            match to_input(&v, 1) {
                                Ok(i) => m.push((k.to_string(), i)),
                                Err(e) => {
                                    raw = Err(WgError::invalid(
                                        format!("options.{k}"),
                                        e.reason.clone(),
                                    ))
                                }
                            }
                        }
                    }
                    match RawConfig::from_input(&crate::config::Input::Map(m)) {
                        Ok(r) => file_extras = r,
                        Err(e) => raw = Err(e),
                    }
                }
                match handshake_timeout_arg(obj.get::<Unknown>("handshakeTimeoutMs")?.as_ref()) {
                    Ok(t) => handshake_timeout = t,
                    Err(e) => raw = Err(e),
                }
                if let Some(f) = obj.get::<Unknown>("onProgress")? {
                    match f.get_type()? {
                        ValueType::Undefined | ValueType::Null => {}
                        ValueType::Function => {
                            let f: Function<ProgressArgs, ()> = unsafe { f.cast()? };
                            progress = Some(
                                f.build_threadsafe_function::<ProgressArgs>()
                                    .callee_handled::<false>()
                                    .build()?,
                            );
                        }
                        _ => {
                            raw = Err(WgError::invalid("options.onProgress", "must be a function"))
                        }
                    }
                }
            }
            _ => raw = Err(WgError::invalid("options", "must be an object")),
        }
    }
    Ok(AsyncTask::new(ConnectTask {
        raw,
        file_extras,
        backend,
        handshake_timeout,
        progress,
        env_id: ENV_ID.with(|c| c.get()),
        ticket: Some(registry::Ticket::take()),
    }))
}

pub struct DisconnectTask {
    name: std::result::Result<Option<String>, WgError>,
    ticket: Option<registry::Ticket>,
}

impl Task for DisconnectTask {
    type Output = std::result::Result<Option<CoreReport>, WgError>;
    type JsValue = Option<TeardownReport>;

    fn compute(&mut self) -> Result<Self::Output> {
        let name = std::mem::replace(&mut self.name, Ok(None));
        let run = || name.and_then(|n| tunnel::disconnect(n.as_deref()));
        Ok(match self.ticket.take() {
            Some(t) => t.run(run),
            None => run(),
        })
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output.map_err(|e| js_error(&env, &e))?.map(Into::into))
    }
}

/// Take down the named tunnel, or the one this process connected last: DNS restored, interface,
/// rules, key file, ownership record and watchdog removed. Resolves with the teardown report
/// (check `gone`), or null when there was nothing to take down. Idempotent. Rejects with
/// `WG_NAME_IN_USE` for a tunnel another live process owns (`teardownLinuxInterface` is the
/// explicit tool for that), `WG_NAME_IN_USE` for an interface that is not WireGuard (never
/// deleted), `WG_CONFIG_DIR_UNSAFE` when the state directory cannot be trusted (nothing in it
/// is read), `INVALID_OPTIONS` for a name that is not a string or not an interface name.
/// Runs after every `connect`/`disconnect` called before it, awaited or not.
#[napi(
    ts_args_type = "name?: string | undefined | null",
    ts_return_type = "Promise<TeardownReport | null>"
)]
pub fn disconnect(name: Option<Unknown>) -> AsyncTask<DisconnectTask> {
    AsyncTask::new(DisconnectTask {
        name: string_arg(name.as_ref(), "name"),
        ticket: Some(registry::Ticket::take()),
    })
}

pub struct UpdateTask {
    args: std::result::Result<(String, crate::config::Patch), WgError>,
    ticket: Option<registry::Ticket>,
}

impl Task for UpdateTask {
    type Output = std::result::Result<tunnel::TunnelInfo, WgError>;
    type JsValue = TunnelInfo;

    fn compute(&mut self) -> Result<Self::Output> {
        let args = std::mem::replace(&mut self.args, Err(WgError::invalid("patch", "used")));
        let run = || args.and_then(|(name, patch)| tunnel::update(&name, &patch));
        Ok(match self.ticket.take() {
            Some(t) => t.run(run),
            None => run(),
        })
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<TunnelInfo> {
        resolve_info(&env, output)
    }
}

/// Change this process's live tunnel `name` in place: same interface, open connections kept,
/// a few milliseconds. `patch` may set `allowedIps` (split <-> full, with the routing, rules
/// and DNS that go with them), `dns`, `persistentKeepalive` and `endpoint`, validated as for
/// `connect` before anything changes (an unknown key, or one that needs a new connect, is
/// `INVALID_OPTIONS`). `dns` left out keeps what the tunnel was given (none given: the
/// default of the new split or full tunnel). Resolves with the new `TunnelInfo`
/// (`connectMs` is the update's time). Rejects with `WG_NOT_CONNECTED` when this process
/// has no such tunnel up, `WG_NOT_AVAILABLE` for a wg-quick tunnel (reconnect instead); a
/// failed change puts the old config back. Native backends (kernel, embedded) only.
#[napi(
    ts_args_type = "name: string, patch: TunnelPatch",
    ts_return_type = "Promise<TunnelInfo>"
)]
pub fn update(name: Unknown, patch: Unknown) -> AsyncTask<UpdateTask> {
    let args = match string_arg(Some(&name), "name") {
        Ok(Some(n)) => to_input(&patch, 0)
            .map_err(|e| WgError::invalid("patch", e.reason.clone()))
            .and_then(|i| crate::config::Patch::from_input(&i))
            .map(|p| (n, p)),
        Ok(None) => Err(WgError::invalid("name", "is required")),
        Err(e) => Err(e),
    };
    AsyncTask::new(UpdateTask {
        args,
        ticket: Some(registry::Ticket::take()),
    })
}

/// What `update` may change on a live tunnel.
/// (Declared for `index.d.ts`; values are converted by `to_input`.)
#[allow(dead_code)]
#[napi(object, object_to_js = false)]
pub struct TunnelPatch {
    /// The node's allowed IPs, as in `PeerConfig.allowedIps` (a `/0` makes a full tunnel).
    pub allowed_ips: Option<Vec<String>>,
    /// DNS servers; `[]` leaves DNS alone (restoring what the tunnel had changed).
    pub dns: Option<Vec<String>>,
    /// Seconds, 0-65535; 0 turns it off.
    pub persistent_keepalive: Option<u32>,
    /// `IPv4:port`, `[IPv6]:port` or `hostname:port` (resolved, bounded, before any change).
    pub endpoint: Option<String>,
    /// As `TunnelConfig.exclude` (routes around a full tunnel and the kill switch follow).
    pub exclude: Option<Vec<String>>,
}

/// Remove interface `name` in three escalating steps (`wg-quick down <confPath>`,
/// `wg-quick down <name>`, `ip link delete dev <name>`), stopping once it is gone; then
/// zero-fill and delete `confPath`. Synchronous; never throws.
#[napi(ts_args_type = "name: string, confPath?: string | undefined | null")]
pub fn teardown_linux_interface(name: Unknown, conf_path: Option<Unknown>) -> TeardownReport {
    let text = |v: &Unknown| match v.get_type() {
        Ok(ValueType::String) => unsafe { v.cast::<String>() }.ok(),
        _ => None,
    };
    let Some(name) = text(&name) else {
        return CoreReport::refused("", "name must be a string").into();
    };
    let conf = match &conf_path {
        None => None,
        Some(c) if matches!(c.get_type(), Ok(ValueType::Undefined | ValueType::Null)) => None,
        Some(c) => match text(c) {
            Some(c) => Some(c),
            None => return CoreReport::refused(&name, "confPath must be a string").into(),
        },
    };
    registry::teardown_named(&name, conf.as_deref().map(std::path::Path::new)).into()
}

/// Remove this process's tunnels, and what dead processes left (their tunnels, DNS changes,
/// records and key files). Never touches a tunnel whose owner is alive, nor an interface
/// without an ownership record. Synchronous, never throws, safe in exit handlers; no
/// subprocess when there is nothing to remove.
/// Returns what was removed and, in `warnings`, anything it refused to read (e.g. a
/// `sentinel-wg` directory another user created).
#[napi]
pub fn emergency_cleanup_sync() -> CleanupReport {
    let r = registry::emergency_cleanup();
    CleanupReport {
        removed: r.reports.into_iter().map(Into::into).collect(),
        warnings: r.warnings,
    }
}

/// What `emergencyCleanupSync` did.
#[napi(object)]
pub struct CleanupReport {
    /// One teardown report per tunnel removed (this process's, and dead owners').
    pub removed: Vec<TeardownReport>,
    /// Directories or files that were not trusted and therefore not read, and why.
    pub warnings: Vec<String>,
}

/// Remove only the tunnels this process brought up (what the exit hooks run).
/// Synchronous, never throws.
#[napi]
pub fn cleanup_own_tunnels_sync() {
    registry::cleanup_owned();
}

/// The kernel's view of `name` (default: this process's latest tunnel, else `wgsent0`).
#[napi(ts_args_type = "name?: string | undefined | null")]
pub fn status(env: Env, name: Option<Unknown>) -> Result<TunnelStatus> {
    let name = string_arg(name.as_ref(), "name").map_err(|e| js_error(&env, &e))?;
    let s = tunnel::status(name.as_deref()).map_err(|e| js_error(&env, &e))?;
    Ok(TunnelStatus {
        name: s.name,
        exists: s.exists,
        up: s.up,
        mtu: s.mtu,
        index: s.index,
        managed: s.managed,
        uptime_ms: s.uptime_ms.map(round_ms),
        full_tunnel: s.full_tunnel,
        backend: s.backend,
        healthy: s.healthy,
        last_handshake_ago_ms: s
            .stats
            .as_ref()
            .and_then(|x| x.last_handshake_ms)
            .map(round_ms),
        rx_bytes: s.stats.as_ref().map(|x| x.rx_bytes as f64),
        tx_bytes: s.stats.as_ref().map(|x| x.tx_bytes as f64),
        endpoint: s.stats.and_then(|x| x.endpoint),
    })
}

/// Whether a tunnel can be brought up on this host. Cheap: no subprocess, no network.
#[napi(object)]
pub struct Availability {
    /// Some backend can run: `kernel` (the WireGuard module loaded or loadable, and
    /// CAP_NET_ADMIN), `embedded` (`/dev/net/tun` and CAP_NET_ADMIN; neither needs
    /// wireguard-tools) or `wg-quick` (installed, with the kernel module or a userspace
    /// implementation).
    pub available: bool,
    /// Why not, when `available` is false.
    pub reason: Option<String>,
    /// Absolute path of `wg-quick`, if installed.
    pub wg_quick: Option<String>,
    /// This process may manage interfaces (effective uid 0, or CAP_NET_ADMIN for the
    /// native backends).
    pub is_admin: bool,
    /// The backends that can run here, in the order `auto` tries them.
    pub backends: Vec<String>,
}

/// What this host offers, found in-process (PATH search, file checks).
#[napi]
pub fn availability() -> Availability {
    let reason = crate::backend::unavailable_reason();
    let backends: Vec<String> = crate::backend::auto_order()
        .into_iter()
        .filter(|b| b.available().is_ok())
        .map(|b| b.name().to_string())
        .collect();
    Availability {
        available: reason.is_none(),
        reason,
        wg_quick: crate::cmd::find_program("wg-quick").map(|p| p.to_string_lossy().into_owned()),
        is_admin: confdir::euid() == 0
            || crate::backend::has_capability(crate::backend::CAP_NET_ADMIN),
        backends,
    }
}

/// Create the private config directory (0700) or check the existing one, and return its
/// path. Throws `WG_CONFIG_DIR_UNSAFE` when it cannot be trusted with a key.
#[napi]
pub fn prepare_config_dir(env: Env) -> Result<String> {
    confdir::ensure_private_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| js_error(&env, &e))
}

/// Zero-fill, sync and delete a config file, but only a trusted one: a regular file of ours,
/// not writable by others, with one link, reached through directories only root and we can
/// change and no symbolic link. Returns true when it was removed. Synchronous, never throws
/// (what `blue-wireguard/compat`'s `uninstallWgTunnel` uses for the SDK's file).
#[napi(ts_args_type = "confPath: string")]
pub fn shred_config_file(conf_path: Unknown) -> bool {
    match string_arg(Some(&conf_path), "confPath") {
        Ok(Some(p)) => crate::trust::shred_trusted(std::path::Path::new(&p)),
        _ => false,
    }
}

/// The private config directory: `<os temp dir>/sentinel-wg` (honours `TMPDIR`).
#[napi]
pub fn config_dir() -> String {
    confdir::config_dir().to_string_lossy().into_owned()
}

// ------------------------------------------------------------------------------ openProxy

pub struct OpenProxyTask {
    raw: std::result::Result<RawConfig, WgError>,
    port: u16,
    handshake_timeout: Duration,
}

impl Task for OpenProxyTask {
    type Output = std::result::Result<crate::proxy::Proxy, WgError>;
    type JsValue = RootlessProxy;

    fn compute(&mut self) -> Result<Self::Output> {
        let raw = std::mem::replace(&mut self.raw, Err(WgError::invalid("config", "used")));
        Ok((|| {
            let raw = raw?;
            let cfg = crate::config::TunnelConfig::from_raw(raw)?;
            if cfg.kill_switch || !cfg.exclude.is_empty() || !cfg.exclude_hosts.is_empty() {
                return Err(WgError::invalid(
                    "config",
                    "killSwitch and exclude are for connect: a proxy changes nothing on the host",
                ));
            }
            let runtime = std::panic::catch_unwind(|| {
                napi::bindgen_prelude::within_runtime_if_available(tokio::runtime::Handle::current)
            })
            .map_err(|_| WgError::setup("proxy", "no async runtime (the process is exiting)"))?;
            crate::proxy::open(
                cfg,
                crate::proxy::Options {
                    port: self.port,
                    handshake_timeout: self.handshake_timeout,
                },
                runtime,
            )
        })())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<RootlessProxy> {
        let p = output.map_err(|e| js_error(&env, &e))?;
        Ok(RootlessProxy { inner: Arc::new(p) })
    }
}

/// A running rootless proxy (see `openProxy` in index.js, which wraps it).
#[napi]
pub struct RootlessProxy {
    inner: Arc<crate::proxy::Proxy>,
}

/// The proxy's counters of the node, as `status()` gives them for a tunnel.
#[napi(object)]
pub struct ProxyStats {
    pub last_handshake_ago_ms: Option<f64>,
    pub rx_bytes: f64,
    pub tx_bytes: f64,
    pub endpoint: Option<String>,
    /// False once the last handshake is older than 180 s (the session is dead).
    pub healthy: bool,
}

#[napi]
impl RootlessProxy {
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.inner.port as u32
    }
    #[napi(getter)]
    pub fn user(&self) -> String {
        crate::proxy::USER.to_string()
    }
    #[napi(getter)]
    pub fn password(&self) -> String {
        self.inner.password.clone()
    }
    #[napi(getter)]
    pub fn handshake_ms(&self) -> f64 {
        round_ms(self.inner.handshake_ms)
    }
    #[napi(getter)]
    pub fn open_ms(&self) -> f64 {
        round_ms(self.inner.open_ms)
    }
    /// Counters of the node; throws `WG_NOT_CONNECTED` once closed.
    #[napi]
    pub fn stats(&self, env: Env) -> Result<ProxyStats> {
        let s = self.inner.stats().map_err(|e| js_error(&env, &e))?;
        let reject = crate::handshake::REJECT_AFTER.as_secs_f64() * 1000.0;
        Ok(ProxyStats {
            healthy: s.last_handshake_ms.is_some_and(|ms| ms < reject),
            last_handshake_ago_ms: s.last_handshake_ms.map(round_ms),
            rx_bytes: s.rx_bytes as f64,
            tx_bytes: s.tx_bytes as f64,
            endpoint: s.endpoint,
        })
    }
    /// Stop listening, end every connection, stop WireGuard. Idempotent: true the first time.
    #[napi]
    pub fn close(&self) -> bool {
        self.inner.close()
    }
}

/// Rootless mode: WireGuard in this process over a UDP socket, a userspace TCP/IP stack, and
/// a local HTTP + SOCKS5 proxy on 127.0.0.1 that requires its random credentials. No root, no
/// capability, no TUN device; nothing is created on the host. Resolves after the first
/// handshake with the node. Use `openProxy` from the package (it wraps this).
#[napi(
    ts_args_type = "config: TunnelConfig, options?: { port?: number, handshakeTimeoutMs?: number }",
    ts_return_type = "Promise<RootlessProxy>"
)]
pub fn open_proxy_native(
    config: Unknown,
    options: Option<Unknown>,
) -> Result<AsyncTask<OpenProxyTask>> {
    let mut raw = match to_input(&config, 0).map(|i| RawConfig::from_input(&i)) {
        Ok(r) => r,
        Err(e) => Err(WgError::invalid("config", e.reason.clone())),
    };
    let mut port = 0u16;
    let mut handshake_timeout = crate::handshake::DEFAULT_TIMEOUT;
    if let Some(opts) = options {
        match opts.get_type()? {
            ValueType::Undefined | ValueType::Null => {}
            ValueType::Object => {
                let obj = unsafe { opts.cast::<Object>()? };
                if let Some(p) = obj.get::<Unknown>("port")? {
                    match p.get_type()? {
                        ValueType::Undefined | ValueType::Null => {}
                        ValueType::Number => {
                            let n = unsafe { p.cast::<f64>()? };
                            if n.fract() != 0.0 || !(0.0..=65535.0).contains(&n) {
                                raw = Err(WgError::invalid(
                                    "options.port",
                                    format!("must be a whole number from 0 to 65535, got {n}"),
                                ));
                            } else {
                                port = n as u16;
                            }
                        }
                        _ => raw = Err(WgError::invalid("options.port", "must be a number")),
                    }
                }
                match handshake_timeout_arg(obj.get::<Unknown>("handshakeTimeoutMs")?.as_ref()) {
                    Ok(Some(t)) => handshake_timeout = t,
                    Ok(None) => {}
                    Err(e) => raw = Err(e),
                }
            }
            _ => raw = Err(WgError::invalid("options", "must be an object")),
        }
    }
    Ok(AsyncTask::new(OpenProxyTask {
        raw,
        port,
        handshake_timeout,
    }))
}
