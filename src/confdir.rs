//! The private config directory `<std::env::temp_dir()>/sentinel-wg` and the files in it.
//!
//! A key is written only into a directory we can trust: a real directory (not a symlink),
//! owned by our effective uid, mode 0700. Files are created 0600, exclusively, without
//! following links, and removed by zero-filling, syncing and unlinking them.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, WgError};

pub const DIR_NAME: &str = "sentinel-wg";

/// The temp directory as Node's `os.tmpdir()` finds it: the first non-empty of `TMPDIR`,
/// `TMP`, `TEMP`, else `/tmp`, without a trailing slash. (Rust's `std::env::temp_dir()`
/// would return an empty, relative path for `TMPDIR=""`.)
pub fn temp_dir() -> PathBuf {
    let dir = ["TMPDIR", "TMP", "TEMP"]
        .iter()
        .filter_map(std::env::var_os)
        .find(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let s = dir.to_string_lossy();
    if s.len() > 1 && s.ends_with('/') {
        PathBuf::from(s.trim_end_matches('/'))
    } else {
        dir
    }
}

/// `<temp dir>/sentinel-wg`; honours `TMPDIR` like Node's `os.tmpdir()`.
pub fn config_dir() -> PathBuf {
    temp_dir().join(DIR_NAME)
}

/// The config file of tunnel `name`.
pub fn conf_path(name: &str) -> PathBuf {
    config_dir().join(format!("{name}.conf"))
}

pub fn euid() -> u32 {
    crate::trust::euid()
}

/// Create the directory 0700, or check that the existing one is safe. Returns its path.
pub fn ensure_private_dir() -> Result<PathBuf> {
    let dir = config_dir();
    match DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            // The umask may have narrowed the mode; make it exactly 0700.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| WgError::io(format!("cannot chmod {}", dir.display()), &e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(WgError::io(format!("cannot create {}", dir.display()), &e)),
    }
    check_private_dir(&dir)?;
    Ok(dir)
}

/// Refuse a directory another local user could read or have planted: checked on its opened
/// descriptor, and every directory above it (see `trust`).
pub fn check_private_dir(dir: &Path) -> Result<()> {
    crate::trust::open_private_dir(dir)
        .map(|_| ())
        .map_err(|why| WgError::ConfigDirUnsafe {
            path: dir.display().to_string(),
            reason: why.0,
        })
}

/// Write `contents` to `path`, created 0600 and exclusively, never through a link.
/// Anything already at `path` (a stale file from a crashed run, or a planted link) is removed
/// first. On a failed write the partial file is removed.
///
/// Not `fsync`ed: what is written here (ownership records, the state directory's cookie, a
/// wg-quick config) describes kernel state that a reboot erases, and is read only by processes
/// of the same boot, which see the page cache. Where `/run` is a disk (containers, this
/// testbed's host) a sync cost ~0.3-0.5 ms on every connect for nothing.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    shred(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| WgError::io(format!("cannot create {}", path.display()), &e))?;
    if let Err(e) = f.write_all(contents) {
        drop(f);
        shred(path);
        return Err(WgError::io(format!("cannot write {}", path.display()), &e));
    }
    Ok(())
}

/// Zero-fill, sync and delete a file. A symbolic link is unlinked without touching its
/// target; a file that is not ours alone (another owner, several hard links, not a regular
/// file) is unlinked without being written. Returns true when something was removed. Never
/// fails. Callers only pass paths in directories they have checked.
pub fn shred(path: &Path) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if meta.is_file() {
        if let Ok(mut f) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
        {
            let ours = f
                .metadata()
                .is_ok_and(|m| crate::trust::check_file(&m, "").is_ok());
            if ours {
                let _ = zero_fill(&mut f, meta.len());
            }
        }
    }
    fs::remove_file(path).is_ok()
}

/// Overwrite the first `len` bytes of `f` with zeros and sync it.
pub(crate) fn zero_fill(f: &mut File, len: u64) -> io::Result<()> {
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn private_file_is_0600_and_shred_removes_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.conf");
        write_private_file(&p, b"secret").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // A second write replaces a stale file instead of failing.
        write_private_file(&p, b"secret2").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret2");
        assert!(shred(&p));
        assert!(!p.exists());
        assert!(!shred(&p));
    }

    #[test]
    fn a_planted_link_is_removed_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let p = d.path().join("a.conf");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        write_private_file(&p, b"secret").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }

    #[test]
    fn unsafe_dirs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let loose = d.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_private_dir(&loose).unwrap_err();
        assert_eq!(e.code(), "WG_CONFIG_DIR_UNSAFE");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&loose, &link).unwrap();
        assert!(check_private_dir(&link)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_private_dir(&loose).is_ok());
    }
}
