//! Where the addon keeps what it knows about its tunnels: ownership records, DNS state and
//! per-tunnel locks, one directory per network namespace:
//!
//! `<state root>/net-<netns inode>/` with `<name>.owner`, `<name>.lock`, `<name>.dns`,
//! `resolv.orig`.
//!
//! The state root does not depend on `TMPDIR`: agents with different temp dirs in one
//! namespace see each other's tunnels, and agents in two namespaces that share `/tmp` never
//! see (or overwrite) each other's. It is `BLUE_WG_STATE_DIR` when set, else
//! `/run/blue-wireguard` for root, else `$XDG_RUNTIME_DIR/blue-wireguard`, else
//! `<temp dir>/blue-wireguard-<uid>`. Every level is created 0700 and checked on its opened
//! descriptor (see `trust`) on every use: a directory another user prepared is never read.
//!
//! Records also carry the namespace's cookie (`SO_NETNS_COOKIE`, never reused while the host
//! runs), so a record left in the directory of a namespace whose inode number was reused is
//! recognised as a stranger's.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd;
use crate::error::{Result, WgError};
use crate::trust;

/// The file naming the namespace (its cookie) a state directory belongs to.
const COOKIE_FILE: &str = "netns.cookie";

/// This thread's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Netns {
    /// Inode of `/proc/thread-self/ns/net` (what `ip netns` shows under `/run/netns`).
    pub inode: u64,
    /// `SO_NETNS_COOKIE`: unique per namespace for the life of the host (0 if unsupported).
    pub cookie: u64,
}

pub fn netns() -> Netns {
    use std::os::unix::fs::MetadataExt;
    let inode = fs::metadata("/proc/thread-self/ns/net")
        .or_else(|_| fs::metadata("/proc/self/ns/net"))
        .map(|m| m.ino())
        .unwrap_or(0);
    Netns {
        inode,
        cookie: netns_cookie().unwrap_or(0),
    }
}

fn netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: i32 = 71;
    // SAFETY: a datagram socket used for one getsockopt, closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid out-pointers of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::close(fd) };
    (rc == 0).then_some(cookie)
}

/// The state root (not created).
pub fn root() -> PathBuf {
    if let Some(p) = std::env::var_os("BLUE_WG_STATE_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if trust::euid() == 0 {
        return PathBuf::from("/run/blue-wireguard");
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(x).join("blue-wireguard");
    }
    crate::confdir::temp_dir().join(format!("blue-wireguard-{}", trust::euid()))
}

/// The opened, checked state directory of this thread's network namespace.
pub struct StateDir {
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub netns: Netns,
}

fn unsafe_dir(path: &Path, why: trust::Untrusted) -> WgError {
    WgError::ConfigDirUnsafe {
        path: path.display().to_string(),
        reason: why.0,
    }
}

fn mkdir_private(p: &Path) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(p, fs::Permissions::from_mode(0o700))
                .map_err(|e| WgError::io(format!("cannot chmod {}", p.display()), &e))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(WgError::io(format!("cannot create {}", p.display()), &e)),
    }
}

impl StateDir {
    /// Create (0700) or open the state directory, checking it and every ancestor.
    pub fn create() -> Result<StateDir> {
        let root = root();
        mkdir_private(&root)?;
        trust::open_private_dir(&root).map_err(|e| unsafe_dir(&root, e))?;
        let netns = netns();
        let path = root.join(format!("net-{}", netns.inode));
        mkdir_private(&path)?;
        let fd = trust::open_private_dir(&path).map_err(|e| unsafe_dir(&path, e))?;
        let dir = StateDir { path, fd, netns };
        dir.claim_for_this_namespace();
        Ok(dir)
    }

    /// A namespace's inode number is reused once it is gone: a directory still holding the
    /// state of the namespace that had this number before (another cookie) is emptied, so none
    /// of its records, DNS state or key files is ever applied here.
    fn claim_for_this_namespace(&self) {
        if self.netns.cookie == 0 {
            return;
        }
        let want = self.netns.cookie.to_string();
        let have = self
            .read(COOKIE_FILE)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string());
        if have.as_deref() == Some(want.as_str()) {
            return;
        }
        if have.is_some() {
            for f in self.list() {
                let p = self.file(&f);
                if f.ends_with(".conf") {
                    crate::confdir::shred(&p);
                } else {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        let _ = crate::confdir::write_private_file(&self.file(COOKIE_FILE), want.as_bytes());
    }

    /// Open the existing state directory for a cleanup path. `Ok(None)` when it does not exist
    /// (nothing was ever recorded here); an error when it exists and cannot be trusted: then
    /// nothing in it is read.
    pub fn existing() -> Result<Option<StateDir>> {
        let netns = netns();
        let path = root().join(format!("net-{}", netns.inode));
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A missing root or namespace dir: nothing recorded. (A dangling link or
                // anything else that exists is checked below and refused.)
                return Ok(None);
            }
            _ => {}
        }
        let fd = trust::open_private_dir(&path).map_err(|e| unsafe_dir(&path, e))?;
        let dir = StateDir { path, fd, netns };
        dir.claim_for_this_namespace();
        Ok(Some(dir))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Read a small file of ours from the directory (checked on its descriptor).
    pub fn read(&self, file: &str) -> Option<Vec<u8>> {
        trust::read_file_in(&self.fd, file, 64 * 1024)
            .ok()
            .flatten()
    }

    /// Every file name in the directory.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

/// An exclusive `flock` on `<state>/<name>.lock`. The owner of a tunnel holds it for the
/// tunnel's whole life, so a lock that can be taken means nobody is at work on that name;
/// the kernel releases it when the holder dies, however it dies. Lock files are never
/// deleted (that would let two processes lock two different files of the same name).
pub struct NameLock {
    file: File,
    pub name: String,
}

impl std::fmt::Debug for NameLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NameLock({})", self.name)
    }
}

impl NameLock {
    fn open(dir: &StateDir, name: &str) -> Result<File> {
        let path = dir.file(&format!("{name}.lock"));
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| WgError::io(format!("cannot open {}", path.display()), &e))?;
        let meta = f
            .metadata()
            .map_err(|e| WgError::io("cannot stat a lock file", &e))?;
        trust::check_file(&meta, &path.display().to_string()).map_err(|e| unsafe_dir(&path, e))?;
        Ok(f)
    }

    /// Take the lock now, or `Ok(None)` when another holder has it.
    pub fn try_acquire(dir: &StateDir, name: &str) -> Result<Option<NameLock>> {
        let file = Self::open(dir, name)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            Ok(Some(NameLock {
                file,
                name: name.to_string(),
            }))
        } else {
            Ok(None)
        }
    }

    /// Take the lock, waiting at most `bound`.
    pub fn acquire(dir: &StateDir, name: &str, bound: Duration) -> Result<Option<NameLock>> {
        let file = Self::open(dir, name)?;
        let fd = file.as_raw_fd();
        // SAFETY: flock on a descriptor we own.
        let got = cmd::wait_until(bound, || {
            (unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(())
        });
        Ok(got.map(|()| NameLock {
            file,
            name: name.to_string(),
        }))
    }

    /// True when some process holds the lock of `name` (checked without keeping it).
    pub fn held(dir: &StateDir, name: &str) -> bool {
        matches!(Self::try_acquire(dir, name), Ok(None))
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor; closing it would release the lock anyway.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A claim on a tunnel name that holds across state directories: an abstract Unix socket
/// `@blue-wireguard/<name>`. Abstract sockets belong to the network namespace (not to a file
/// system), so two agents in one namespace whose state directories differ (containers on the
/// host's network, each with its own `/run`; another `BLUE_WG_STATE_DIR`) still see each
/// other's claims, and the kernel releases the claim when its holder dies.
pub struct NsClaim {
    _fd: OwnedFd,
}

/// What `NsClaim::take` found.
pub enum Claim {
    Held(NsClaim),
    /// A live process of root or our uid holds the name (its pid).
    TakenBy(u32),
    /// Another user's process squats on the socket: it proves nothing about the tunnel, and
    /// the name lock and records still protect it.
    Squatted,
}

fn abstract_addr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let id = format!("blue-wireguard/{name}");
    // sun_path[0] stays 0: the abstract namespace.
    for (d, s) in addr.sun_path[1..].iter_mut().zip(id.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + id.len();
    (addr, len as libc::socklen_t)
}

fn unix_socket() -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a new socket that nothing else owns.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    // SAFETY: fd was just returned by socket().
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

impl NsClaim {
    /// Claim `name` in this network namespace.
    pub fn take(name: &str) -> Claim {
        let Some(fd) = unix_socket() else {
            return Claim::Squatted;
        };
        let (addr, len) = abstract_addr(name);
        // SAFETY: addr is a valid sockaddr_un of length len; fd is ours.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            ) == 0
                && libc::listen(fd.as_raw_fd(), 1) == 0
        };
        if bound {
            return Claim::Held(NsClaim { _fd: fd });
        }
        match Self::holder(name) {
            Some((pid, uid)) if uid == 0 || uid == trust::euid() => Claim::TakenBy(pid),
            _ => Claim::Squatted,
        }
    }

    /// Pid and uid of the process holding `name`'s claim, if any.
    pub fn holder(name: &str) -> Option<(u32, u32)> {
        let fd = unix_socket()?;
        let (addr, len) = abstract_addr(name);
        // SAFETY: as in `take`; cred and clen are valid out-pointers.
        let connected = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            ) == 0
        };
        if !connected {
            return None;
        }
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut clen = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let ok = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut clen,
            ) == 0
        };
        (ok && cred.pid > 0).then_some((cred.pid as u32, cred.uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_lock_excludes_a_second_holder_and_is_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        std::env::set_var("BLUE_WG_STATE_DIR", d.path().join("state"));
        let dir = StateDir::create().unwrap();
        let a = NameLock::try_acquire(&dir, "wgsent9").unwrap().unwrap();
        assert!(NameLock::try_acquire(&dir, "wgsent9").unwrap().is_none());
        assert!(NameLock::held(&dir, "wgsent9"));
        let t = std::time::Instant::now();
        assert!(
            NameLock::acquire(&dir, "wgsent9", Duration::from_millis(50))
                .unwrap()
                .is_none()
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        drop(a);
        assert!(!NameLock::held(&dir, "wgsent9"));
        assert!(netns().inode > 0);
        // The namespace-wide claim: a second taker sees the holder (this process).
        let name = format!("bwt{}", std::process::id() % 100_000);
        let Claim::Held(held) = NsClaim::take(&name) else {
            panic!("could not claim {name}");
        };
        assert!(matches!(NsClaim::take(&name), Claim::TakenBy(p) if p == std::process::id()));
        drop(held);
        assert!(NsClaim::holder(&name).is_none());
        assert!(matches!(NsClaim::take(&name), Claim::Held(_)));
        assert!(dir.path.ends_with(format!("net-{}", netns().inode)));
    }
}
