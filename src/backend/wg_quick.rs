//! The wg-quick backend: `wg-quick up <conf>` with the kernel module or a userspace
//! implementation (`wireguard-go`, or `WG_QUICK_USERSPACE_IMPLEMENTATION`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Backend;
use crate::cmd;
use crate::config::TunnelConfig;
use crate::error::{Result, WgError};

const UP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct WgQuick;

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
        "wg-quick"
    }

    fn available(&self) -> Result<()> {
        match unavailable_reason() {
            None => Ok(()),
            Some(why) => Err(WgError::NotAvailable(why)),
        }
    }

    fn up(&self, _cfg: &TunnelConfig, conf_path: &Path) -> Result<()> {
        let wq = cmd::find_program("wg-quick")
            .ok_or_else(|| WgError::NotAvailable("wg-quick is not installed".into()))?;
        let conf = conf_path.to_string_lossy();
        let out = cmd::run(&wq, &["up", conf.as_ref()], None, UP_TIMEOUT)
            .map_err(|e| WgError::setup("wg-quick up", e))?;
        if out.success {
            Ok(())
        } else {
            Err(WgError::setup("wg-quick up", out.describe()))
        }
    }
}
