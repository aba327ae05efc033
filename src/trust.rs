//! Opening files and directories that another local user, or another agent, may have
//! prepared. The addon runs as root on shared hosts: anything it reads from a shared temp dir
//! or a caller's path is untrusted until checked *on the opened descriptor*.
//!
//! A path is trusted when no one but root and us can change what it names:
//! - every directory from `/` down is opened with `O_NOFOLLOW` (no symbolic link anywhere),
//!   owned by root or by our effective uid, and not writable by group or others unless it is
//!   sticky (like `/tmp`, where others cannot rename or remove what we own);
//! - the file itself is opened `O_NOFOLLOW | O_NONBLOCK` (a FIFO cannot block us), and its
//!   `fstat` says: a regular file, owned by our effective uid, not writable by group or
//!   others, one link (not a hard link planted to a file elsewhere).
//!
//! When every component passes, the path names the same file for as long as we use it, so it
//! may also be handed to a program (wg-quick) by name.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why a path or file is not trusted (for the caller's error message and reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted(pub String);

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn untrusted<T>(msg: String) -> Result<T, Untrusted> {
    Err(Untrusted(msg))
}

fn cstr(s: &std::ffi::OsStr) -> Result<CString, Untrusted> {
    CString::new(s.as_bytes()).map_err(|_| Untrusted("the path holds a NUL byte".into()))
}

fn openat(dir: Option<&OwnedFd>, name: &std::ffi::OsStr, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let base = dir.map(|d| d.as_raw_fd()).unwrap_or(libc::AT_FDCWD);
    // SAFETY: c is NUL-terminated; base is a valid directory fd or AT_FDCWD.
    let fd = unsafe { libc::openat(base, c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> io::Result<std::fs::Metadata> {
    // Borrow the descriptor as a File without taking ownership of it.
    let f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) });
    f.metadata()
}

fn fs_is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// Make `p` absolute and free of `.`/`..` without following links (those are checked later).
fn absolute(p: &Path) -> Result<PathBuf, Untrusted> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Untrusted(format!("no current directory: {e}")))?
            .join(p)
    };
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return untrusted(format!("{} holds '..'", p.display()));
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return untrusted("not a Unix path".into()),
        }
    }
    Ok(out)
}

/// Check one directory of a chain: owned by root or us; not writable by others unless sticky.
fn check_chain_dir(path: &Path, meta: &std::fs::Metadata) -> Result<(), Untrusted> {
    if !meta.is_dir() {
        return untrusted(format!("{} is not a directory", path.display()));
    }
    let uid = meta.uid();
    if uid != 0 && uid != euid() {
        return untrusted(format!(
            "{} is owned by uid {uid}, not by root or us (uid {})",
            path.display(),
            euid()
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return untrusted(format!(
            "{} is writable by other users (mode {:o}) and not sticky",
            path.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Open directory `path` (absolute or relative to the cwd), checking every directory from `/`
/// down on its opened descriptor. The returned descriptor is the last directory's.
pub fn open_dir_chain(path: &Path) -> Result<(OwnedFd, std::fs::Metadata), Untrusted> {
    let abs = absolute(path)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut fd = openat(None, std::ffi::OsStr::new("/"), flags)
        .map_err(|e| Untrusted(format!("cannot open /: {e}")))?;
    let mut here = PathBuf::from("/");
    let mut meta = fstat(&fd).map_err(|e| Untrusted(format!("cannot stat /: {e}")))?;
    check_chain_dir(&here, &meta)?;
    for c in abs.components().skip(1) {
        let Component::Normal(n) = c else { continue };
        here.push(n);
        let _ = cstr(n)?;
        fd = openat(Some(&fd), n, flags).map_err(|e| {
            let link = fs_is_symlink(&here);
            match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) if link => {
                    Untrusted(format!("{} is a symbolic link", here.display()))
                }
                Some(libc::ENOTDIR) => Untrusted(format!("{} is not a directory", here.display())),
                _ => Untrusted(format!("cannot open {}: {e}", here.display())),
            }
        })?;
        meta = fstat(&fd).map_err(|e| Untrusted(format!("cannot stat {}: {e}", here.display())))?;
        check_chain_dir(&here, &meta)?;
    }
    Ok((fd, meta))
}

/// Open a directory we keep secrets or state in: a trusted chain, and the directory itself
/// owned by our effective uid with mode 0700.
pub fn open_private_dir(path: &Path) -> Result<OwnedFd, Untrusted> {
    let (fd, meta) = open_dir_chain(path)?;
    if meta.uid() != euid() {
        return untrusted(format!(
            "it is owned by uid {}, not by us (uid {})",
            meta.uid(),
            euid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o700 {
        return untrusted(format!("its mode is {mode:o}, not 700"));
    }
    Ok(fd)
}

/// Check an opened file: regular, owned by us, not writable by group/others, one link.
pub fn check_file(meta: &std::fs::Metadata, what: &str) -> Result<(), Untrusted> {
    if !meta.file_type().is_file() {
        return untrusted(format!("{what} is not a regular file"));
    }
    if meta.uid() != euid() {
        return untrusted(format!(
            "{what} is owned by uid {}, not by us (uid {})",
            meta.uid(),
            euid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return untrusted(format!(
            "{what} is writable by other users (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    if meta.nlink() != 1 {
        return untrusted(format!("{what} has {} hard links", meta.nlink()));
    }
    Ok(())
}

/// Open `name` inside the opened directory `dir` read-only (`O_NOFOLLOW | O_NONBLOCK`: never a
/// link, never a blocking FIFO), and check it with `check_file`. `Ok(None)` when it does not
/// exist.
pub fn open_file_in(dir: &OwnedFd, name: &str) -> Result<Option<File>, Untrusted> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd = match openat(Some(dir), std::ffi::OsStr::new(name), flags) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return untrusted(format!("{name} is a symbolic link"))
        }
        Err(e) => return untrusted(format!("cannot open {name}: {e}")),
    };
    let meta = fstat(&fd).map_err(|e| Untrusted(format!("cannot stat {name}: {e}")))?;
    check_file(&meta, name)?;
    Ok(Some(File::from(fd)))
}

/// Read at most `max` bytes of a file through `open_file_in`.
pub fn read_file_in(dir: &OwnedFd, name: &str, max: u64) -> Result<Option<Vec<u8>>, Untrusted> {
    use std::io::Read;
    let Some(f) = open_file_in(dir, name)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Untrusted(format!("cannot read {name}: {e}")))?;
    if buf.len() as u64 > max {
        return untrusted(format!("{name} is larger than {max} bytes"));
    }
    Ok(Some(buf))
}

/// A trusted file at an arbitrary path: the directory chain and the file are checked as
/// above. No link is followed anywhere, not even in the directories above it (a path that goes
/// through a link is refused): resolving links first and checking the result would let
/// another user point a path of theirs at any root-owned file. Returns the absolute path
/// (safe to hand on by name: only root and we can change what it names) and the opened file.
pub fn open_trusted_path(path: &Path) -> Result<(PathBuf, File), Untrusted> {
    let (abs, dir, base) = open_parent(path)?;
    let f = open_file_in(&dir, &base)?
        .ok_or_else(|| Untrusted(format!("{} does not exist", abs.display())))?;
    Ok((abs, f))
}

/// The absolute form of `path`, its parent directory opened and checked as a chain, and its
/// final component.
fn open_parent(path: &Path) -> Result<(PathBuf, OwnedFd, String), Untrusted> {
    let abs = absolute(path)?;
    let (Some(parent), Some(base)) = (abs.parent(), abs.file_name()) else {
        return untrusted(format!("{} is not a file path", abs.display()));
    };
    let base = base
        .to_str()
        .ok_or_else(|| Untrusted("a non-UTF-8 file name".into()))?
        .to_string();
    let (dir, _) = open_dir_chain(parent)?;
    Ok((abs, dir, base))
}

/// Zero-fill, sync and remove the trusted file at `path` (see `open_trusted_path`), through
/// descriptors of the checked directory: never a link, never a file that is not ours alone.
/// Returns true when it was removed.
pub fn shred_trusted(path: &Path) -> bool {
    let Ok((_, dir, base)) = open_parent(path) else {
        return false;
    };
    let flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let Ok(fd) = openat(Some(&dir), std::ffi::OsStr::new(&base), flags) else {
        return false;
    };
    let Ok(meta) = fstat(&fd) else { return false };
    if check_file(&meta, &base).is_err() {
        return false;
    }
    let mut f = File::from(fd);
    let _ = crate::confdir::zero_fill(&mut f, meta.len());
    let Ok(c) = CString::new(base) else {
        return false;
    };
    // SAFETY: dir is an open directory descriptor and c a NUL-terminated name in it.
    unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_dir_must_be_ours_and_0700() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p");
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(open_private_dir(&p).is_ok());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(open_private_dir(&p).unwrap_err().0.contains("mode is 755"));
        let link = d.path().join("l");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(open_private_dir(&link)
            .unwrap_err()
            .0
            .contains("symbolic link"));
    }

    #[test]
    fn a_world_writable_non_sticky_ancestor_is_refused_a_sticky_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let inner = open.join("inner");
        fs::create_dir(&inner).unwrap();
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(open_private_dir(&inner)
            .unwrap_err()
            .0
            .contains("writable by other users"));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(open_private_dir(&inner).is_ok());
    }

    #[test]
    fn a_path_through_a_link_is_refused_and_never_shredded() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::write(real.join("victim.conf"), b"keep").unwrap();
        fs::set_permissions(real.join("victim.conf"), fs::Permissions::from_mode(0o600)).unwrap();
        // A link as the file, and a link as a directory on the way.
        std::os::unix::fs::symlink(real.join("victim.conf"), d.path().join("x.conf")).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("via")).unwrap();
        assert!(open_trusted_path(&d.path().join("x.conf")).is_err());
        assert!(open_trusted_path(&d.path().join("via/victim.conf")).is_err());
        assert!(!shred_trusted(&d.path().join("x.conf")));
        assert!(!shred_trusted(&d.path().join("via/victim.conf")));
        assert_eq!(fs::read(real.join("victim.conf")).unwrap(), b"keep");
        // The real path is trusted, and is shredded.
        let (abs, _) = open_trusted_path(&real.join("victim.conf")).unwrap();
        assert_eq!(abs, real.join("victim.conf"));
        assert!(shred_trusted(&real.join("victim.conf")));
        assert!(!real.join("victim.conf").exists());
    }

    #[test]
    fn files_are_checked_on_the_descriptor() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p");
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        let dir = open_private_dir(&p).unwrap();
        assert!(open_file_in(&dir, "missing").unwrap().is_none());
        fs::write(p.join("ok"), b"x").unwrap();
        fs::set_permissions(p.join("ok"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_file_in(&dir, "ok", 10).unwrap().unwrap(), b"x");
        assert!(read_file_in(&dir, "ok", 0).is_err(), "size bound");
        fs::set_permissions(p.join("ok"), fs::Permissions::from_mode(0o666)).unwrap();
        assert!(open_file_in(&dir, "ok").unwrap_err().0.contains("writable"));
        fs::set_permissions(p.join("ok"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::hard_link(p.join("ok"), p.join("hard")).unwrap();
        assert!(open_file_in(&dir, "ok")
            .unwrap_err()
            .0
            .contains("hard links"));
        std::os::unix::fs::symlink("/etc/passwd", p.join("link")).unwrap();
        assert!(open_file_in(&dir, "link")
            .unwrap_err()
            .0
            .contains("symbolic link"));
        // A FIFO neither blocks nor passes.
        let fifo = CString::new(p.join("fifo").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(open_file_in(&dir, "fifo")
            .unwrap_err()
            .0
            .contains("not a regular file"));
    }
}
