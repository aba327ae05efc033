//! The error type of the core, with the string codes the SDK already uses.

use std::fmt;

/// Every failure the addon reports. `code()` is the contract string surfaced to JavaScript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WgError {
    /// A config value is missing, of the wrong type or unsafe. Fatal: retrying will not help.
    InvalidOptions { field: String, reason: String },
    /// The private config directory exists but cannot be trusted with a key.
    ConfigDirUnsafe { path: String, reason: String },
    /// The caller may not do what the tunnel needs: manage network interfaces (no
    /// CAP_NET_ADMIN; not root for wg-quick), or apply the DNS it asked for.
    PermissionDenied(String),
    /// WireGuard cannot run on this host (no wg-quick, no kernel module, no userspace fallback).
    NotAvailable(String),
    /// A step of bring-up failed; everything done so far was rolled back. Retryable.
    SetupFailed { step: String, detail: String },
    /// Another live process owns a tunnel of this name.
    NameInUse { name: String, pid: u32 },
    /// An interface of this name exists and is not a WireGuard interface: never deleted.
    NotWireGuard { name: String, driver: String },
    /// Reading or writing a local file failed.
    Io { what: String, detail: String },
    /// `update` of a tunnel this process does not have up.
    NotConnected(String),
    /// The node's host name did not resolve (within its bound). Nothing was changed.
    EndpointUnresolved { host: String, detail: String },
    /// The tunnel came up but no handshake with the node completed in time; everything was
    /// rolled back. `detail` says what was seen.
    NoConnectivity {
        endpoint: String,
        waited_ms: u64,
        detail: String,
    },
}

impl WgError {
    /// The stable string code, e.g. `INVALID_OPTIONS`.
    pub fn code(&self) -> &'static str {
        match self {
            WgError::InvalidOptions { .. } => "INVALID_OPTIONS",
            WgError::ConfigDirUnsafe { .. } => "WG_CONFIG_DIR_UNSAFE",
            WgError::PermissionDenied(_) => "WG_PERMISSION_DENIED",
            WgError::NotAvailable(_) => "WG_NOT_AVAILABLE",
            WgError::SetupFailed { .. } => "TUNNEL_SETUP_FAILED",
            WgError::NameInUse { .. } | WgError::NotWireGuard { .. } => "WG_NAME_IN_USE",
            WgError::Io { .. } => "WG_IO_ERROR",
            WgError::EndpointUnresolved { .. } => "WG_ENDPOINT_UNRESOLVED",
            WgError::NotConnected(_) => "WG_NOT_CONNECTED",
            WgError::NoConnectivity { .. } => "WG_NO_CONNECTIVITY",
        }
    }

    /// Whether the same call, made again unchanged, may succeed: the failure came from a
    /// state that can pass (a node that did not answer, a step that raced another process),
    /// not from the input or the host (a bad key, a missing capability, a name nobody can
    /// resolve, a name another process owns).
    pub fn retryable(&self) -> bool {
        match self {
            WgError::SetupFailed { .. } | WgError::Io { .. } | WgError::NoConnectivity { .. } => {
                true
            }
            WgError::InvalidOptions { .. }
            | WgError::ConfigDirUnsafe { .. }
            | WgError::PermissionDenied(_)
            | WgError::NotAvailable(_)
            | WgError::NameInUse { .. }
            | WgError::NotWireGuard { .. }
            | WgError::EndpointUnresolved { .. }
            | WgError::NotConnected(_) => false,
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        WgError::InvalidOptions {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn setup(step: impl Into<String>, detail: impl Into<String>) -> Self {
        WgError::SetupFailed {
            step: step.into(),
            detail: detail.into(),
        }
    }

    pub fn io(what: impl Into<String>, err: &std::io::Error) -> Self {
        WgError::Io {
            what: what.into(),
            detail: err.to_string(),
        }
    }
}

impl fmt::Display for WgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WgError::InvalidOptions { field, reason } => write!(f, "invalid {field}: {reason}"),
            WgError::ConfigDirUnsafe { path, reason } => write!(
                f,
                "{path} cannot be trusted: {reason}; nothing in it was read or written. Another \
                 local user may have prepared it: remove it (rm -rf {path}) or point TMPDIR \
                 (or BLUE_WG_STATE_DIR) at a private directory, then retry"
            ),
            WgError::PermissionDenied(m) => write!(f, "{m}"),
            WgError::NotAvailable(m) => write!(f, "{m}"),
            WgError::SetupFailed { step, detail } => {
                write!(f, "tunnel setup failed at step '{step}': {detail}")
            }
            WgError::NameInUse { name, pid } => write!(
                f,
                "tunnel {name} belongs to live process {pid}; pass another name, or name: 'auto' \
                 to get the first free wgsentN"
            ),
            WgError::NotWireGuard { name, driver } => write!(
                f,
                "an interface named {name} exists and is not a WireGuard interface (driver \
                 {driver}); refusing to replace it: choose another name"
            ),
            WgError::Io { what, detail } => write!(f, "{what}: {detail}"),
            WgError::NotConnected(name) => write!(
                f,
                "no tunnel {name} of this process is up: connect it first"
            ),
            WgError::EndpointUnresolved { host, detail } => write!(
                f,
                "the node's endpoint host {host:?} did not resolve: {detail}; nothing was \
                 changed (check the name, or pass the node's IP address)"
            ),
            WgError::NoConnectivity {
                endpoint,
                waited_ms,
                detail,
            } => write!(
                f,
                "no handshake with the node at {endpoint} within {waited_ms} ms ({detail}); \
                 the tunnel was rolled back and nothing is left. The node may be down or \
                 unreachable, or its public key (or the node's copy of ours) may be wrong"
            ),
        }
    }
}

impl std::error::Error for WgError {}

pub type Result<T> = std::result::Result<T, WgError>;
