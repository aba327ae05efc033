//! Ways of bringing a tunnel up. One trait; one file per backend. Taking a tunnel down is
//! backend-independent (`teardown`), so a new process can remove what any backend left.

use std::path::Path;

use crate::config::TunnelConfig;
use crate::error::Result;

pub mod wg_quick;

pub trait Backend: Send + Sync {
    /// A short name reported to the caller, e.g. `wg-quick`.
    fn name(&self) -> &'static str;
    /// Ok when a tunnel can really be brought up on this host; `WG_NOT_AVAILABLE` otherwise.
    fn available(&self) -> Result<()>;
    /// Bring the interface up from the rendered config at `conf_path`. On error the caller
    /// runs the cleanup routine; the backend need not roll back itself.
    fn up(&self, cfg: &TunnelConfig, conf_path: &Path) -> Result<()>;
}

/// The backend used on this host.
pub fn default_backend() -> &'static dyn Backend {
    &wg_quick::WgQuick
}
