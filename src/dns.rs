//! Applying a tunnel's DNS servers without wg-quick's `DNS =` (which needs `resolvconf`):
//! per-link through systemd-resolved where it manages DNS, else `resolvconf` when installed,
//! else rewriting `resolv.conf` in place.
//!
//! The rewrite keeps the pre-tunnel file twice: as `<name>.resolv` in the private config
//! directory, and as `#~ ` comment lines inside the rewritten file itself, so the original
//! comes back on disconnect, from the exit hooks, and on the next start even when a crashed
//! run's temp dir is gone. A marker file `<name>.dns` records which method was used.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::cmd;
use crate::confdir;
use crate::error::{Result, WgError};

const TIMEOUT: Duration = Duration::from_secs(5);
const HEADER: &str = "# blue-wireguard tunnel DNS for ";
const ORIG: &str = "#~ ";

/// How DNS was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMethod {
    Resolved,
    Resolvconf,
    File,
}

impl DnsMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            DnsMethod::Resolved => "systemd-resolved",
            DnsMethod::Resolvconf => "resolvconf",
            DnsMethod::File => "resolv.conf",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [DnsMethod::Resolved, DnsMethod::Resolvconf, DnsMethod::File]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// The resolv.conf this process sees (`BLUE_WG_RESOLV_CONF` overrides it for unit tests).
pub fn resolv_conf_path() -> PathBuf {
    std::env::var_os("BLUE_WG_RESOLV_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"))
}

fn marker_path(name: &str) -> PathBuf {
    confdir::config_dir().join(format!("{name}.dns"))
}

fn backup_path(name: &str) -> PathBuf {
    confdir::config_dir().join(format!("{name}.resolv"))
}

/// Which method this host uses.
pub fn detect() -> DnsMethod {
    let current = fs::read_to_string(resolv_conf_path()).unwrap_or_default();
    let stub = current
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["nameserver", "127.0.0.53"]);
    if stub && cmd::find_program("resolvectl").is_some() {
        DnsMethod::Resolved
    } else if cmd::find_program("resolvconf").is_some() {
        DnsMethod::Resolvconf
    } else {
        DnsMethod::File
    }
}

/// Point the host's DNS at `servers` for tunnel `name`. Call `restore(name)` first if a
/// previous run may have left its DNS in place.
pub fn apply(name: &str, servers: &[IpAddr]) -> Result<DnsMethod> {
    let method = detect();
    confdir::write_private_file(&marker_path(name), method.as_str().as_bytes())?;
    let result = match method {
        DnsMethod::Resolved => apply_resolved(name, servers),
        DnsMethod::Resolvconf => apply_resolvconf(name, servers),
        DnsMethod::File => apply_file(name, servers),
    };
    if let Err(e) = result {
        restore(name);
        return Err(e);
    }
    Ok(method)
}

fn run_ok(program: &str, args: &[String], input: Option<&[u8]>) -> Result<()> {
    let path = cmd::find_program(program)
        .ok_or_else(|| WgError::setup("dns", format!("{program} not found")))?;
    let out = cmd::run(&path, args, input, TIMEOUT).map_err(|e| WgError::setup("dns", e))?;
    if out.success {
        Ok(())
    } else {
        Err(WgError::setup(
            "dns",
            format!("{program} {}: {}", args.join(" "), out.describe()),
        ))
    }
}

fn apply_resolved(name: &str, servers: &[IpAddr]) -> Result<()> {
    let mut args = vec!["dns".to_string(), name.to_string()];
    args.extend(servers.iter().map(|s| s.to_string()));
    run_ok("resolvectl", &args, None)?;
    run_ok(
        "resolvectl",
        &["domain".into(), name.into(), "~.".into()],
        None,
    )?;
    run_ok(
        "resolvectl",
        &["default-route".into(), name.into(), "true".into()],
        None,
    )
}

fn apply_resolvconf(name: &str, servers: &[IpAddr]) -> Result<()> {
    let body: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    run_ok(
        "resolvconf",
        &[
            "-a".into(),
            name.into(),
            "-m".into(),
            "0".into(),
            "-x".into(),
        ],
        Some(body.as_bytes()),
    )
}

fn apply_file(name: &str, servers: &[IpAddr]) -> Result<()> {
    let path = resolv_conf_path();
    let current = fs::read_to_string(&path).unwrap_or_default();
    // If a crashed run left its DNS here, the original is inside it: never back up tunnel DNS.
    let original = original_from(&current).unwrap_or(current);
    confdir::write_private_file(&backup_path(name), original.as_bytes())?;
    let mut body = format!("{HEADER}{name}; lines starting '{ORIG}' are the original file\n");
    for s in servers {
        body.push_str(&format!("nameserver {s}\n"));
    }
    for line in original.lines() {
        body.push_str(ORIG);
        body.push_str(line);
        body.push('\n');
    }
    write_in_place(&body).map_err(|e| WgError::setup("dns", e))
}

/// The original file embedded in one of our rewrites, or None if `current` is not ours.
fn original_from(current: &str) -> Option<String> {
    let mut lines = current.lines();
    if !lines.next()?.starts_with(HEADER) {
        return None;
    }
    Some(
        lines
            .filter_map(|l| l.strip_prefix(ORIG))
            .map(|l| format!("{l}\n"))
            .collect(),
    )
}

/// The tunnel named in our header, if the current resolv.conf is one of our rewrites.
fn owner_of(current: &str) -> Option<&str> {
    let rest = current.lines().next()?.strip_prefix(HEADER)?;
    rest.split(';').next()
}

/// Rewrite resolv.conf in place: it may be a bind mount (`ip netns exec`) that a rename
/// could not replace.
fn write_in_place(body: &str) -> std::result::Result<(), String> {
    let path = resolv_conf_path();
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(body.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Undo what `apply` did for `name`, also for a crashed run. Returns true when something was
/// restored. Never fails; cheap (no subprocess) when there is nothing to restore.
pub fn restore(name: &str) -> bool {
    let marker = marker_path(name);
    let method = fs::read_to_string(&marker)
        .ok()
        .and_then(|s| DnsMethod::parse(s.trim()));
    let mut restored = false;
    if method == Some(DnsMethod::Resolvconf) {
        restored |= run_ok("resolvconf", &["-d".into(), name.into(), "-f".into()], None).is_ok();
    }
    // systemd-resolved forgets a link's DNS when the link is deleted: nothing to undo.
    let current = fs::read_to_string(resolv_conf_path());
    // `write_in_place` truncates, then writes: an owner killed between the two (on the way up
    // or down) leaves an empty file while its marker still says we rewrite it. That empty
    // file is our cut-short rewrite, not someone else's: put the backup back.
    let cut_short = method == Some(DnsMethod::File) && matches!(&current, Ok(s) if s.is_empty());
    let current = current.unwrap_or_default();
    if owner_of(&current) == Some(name) || cut_short {
        let backup = fs::read_to_string(backup_path(name)).ok();
        if let Some(original) = backup.or_else(|| original_from(&current)) {
            restored |= write_in_place(&original).is_ok();
        }
    }
    confdir::shred(&backup_path(name));
    confdir::shred(&marker);
    restored || method.is_some()
}

/// True when `name` has DNS state to restore (a marker, or our rewrite in resolv.conf).
pub fn pending(name: &str) -> bool {
    marker_path(name).exists()
        || owner_of(&fs::read_to_string(resolv_conf_path()).unwrap_or_default()) == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_embeds_the_original_and_a_crashed_rewrite_is_never_backed_up() {
        let orig = "nameserver 192.0.2.53\nsearch example\n";
        let t = original_from(&format!(
            "{HEADER}wgsent0; x\nnameserver 10.8.0.1\n{ORIG}nameserver 192.0.2.53\n{ORIG}search example\n"
        ));
        assert_eq!(t.as_deref(), Some(orig));
        assert_eq!(original_from(orig), None);
        assert_eq!(owner_of(&format!("{HEADER}wgsent3; x\n")), Some("wgsent3"));
    }
}
