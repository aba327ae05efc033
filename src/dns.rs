//! Applying a tunnel's DNS servers without wg-quick's `DNS =` (which needs `resolvconf`):
//! per link through systemd-resolved where it manages DNS, else `resolvconf` when installed,
//! else rewriting `resolv.conf`. The first two are per interface in the tools themselves; the
//! third is one file shared by every tunnel of the network namespace, so it keeps a stack.
//!
//! # State
//!
//! All state lives in `dir`, the namespace's private state directory, which the caller has
//! verified (ours, 0700, no link, safe ancestors). Every file read from it is still opened
//! `O_NOFOLLOW | O_NONBLOCK` and checked on the descriptor (a regular file, owned by our euid,
//! not writable by group or others, one link); anything else is treated as absent, never
//! followed or trusted. Files are written 0600 to an exclusive temp name and renamed into place.
//!
//! - `<name>.dns`, one per tunnel with DNS, text:
//!   `method <systemd-resolved|resolvconf|resolv.conf>\nseq <n>\nserver <ip>\n...`.
//!   `seq` is one more than the highest `seq` in `dir` when the tunnel applied its DNS: it
//!   orders the tunnels of the namespace.
//! - `resolv.orig`, one per namespace, only for the `resolv.conf` method: the pre-tunnel state
//!   of resolv.conf, exactly, in the serialized form below. Written when a tunnel applies DNS
//!   and no (matching) original is saved; removed when the last tunnel's DNS is undone.
//!
//! Serialized original (binary safe): one ASCII line, then the raw body:
//! `blue-wireguard original v1 absent\n`, `blue-wireguard original v1 symlink\n<target bytes>`,
//! or `blue-wireguard original v1 file <mode, 4 octal digits>\n<file bytes>`.
//!
//! # The rewrite
//!
//! resolv.conf shows the servers of the newest live tunnel of the namespace:
//!
//! ```text
//! # blue-wireguard tunnel DNS (net <netns>, tunnel <name>); do not edit
//! nameserver <ip>
//! #~b64 <base64 of the serialized original, 64 characters a line>
//! #~end net <netns> <FNV-1a 64 of every byte before this line, 16 hex digits>
//! ```
//!
//! So the original comes back even when `dir` was lost (tmpfs wiped, crash). A file is *our
//! rewrite* for namespace N only when the header names N, every line has the shape above, the
//! trailer names N, the checksum matches and the payload decodes; anything after the trailer is
//! ignored (a write cut short before its truncate). Its embedded original is trusted only when
//! the file is owned by our euid and not writable by group or others, or when it equals the
//! saved `resolv.orig`: a world-writable resolv.conf cannot smuggle in an "original". A user
//! file that merely looks similar is not ours, and is saved and restored byte for byte. A
//! rewrite naming another namespace is never modified by `restore` (on `apply` it is treated as
//! that namespace's content and saved as our original).
//!
//! # apply (resolv.conf)
//!
//! The original is: the embedded original when resolv.conf is our rewrite for this namespace
//! (a crashed run's tunnel DNS is never saved as the original); else `resolv.orig` when
//! resolv.conf looks like our own cut-short write (below) and tunnels of the namespace still
//! have entries; else the current state itself (Absent, Symlink(target) or File(bytes, mode)).
//! Then `resolv.orig`, the tunnel's entry, and last resolv.conf are written.
//!
//! Writing resolv.conf: a regular file (it may be a bind mount from `ip netns exec`, which a
//! rename cannot replace) is written in place: opened without `O_TRUNC`, one `pwrite` of the
//! whole body at offset 0, `ftruncate` to its length, `fsync`; the mode is kept. It is never
//! empty in between. A symlink to an existing regular file is followed (`effective`: that file
//! is what resolvers read, and where `ip netns exec` bind-mounts the namespace's own file, so
//! replacing the link would change the host's shared `/etc`). A dangling symlink is never
//! written through: a temp file in the same directory is renamed over the link, and the link
//! is put back exactly on restore. An absent file is created the same way (0644).
//!
//! # restore (resolv.conf)
//!
//! Drop `name`'s entry and the entries of dead tunnels (`is_live` false). If resolv.conf is our
//! rewrite for this namespace, or our cut-short write, then: with live entries left, rewrite it
//! for the newest of them (no write when it already shows that); with none left, put the
//! original back exactly (the file's bytes and mode written in place; a symlink re-created as a
//! link to a temp name renamed over the path; Absent unlinked) and remove `resolv.orig`. If
//! resolv.conf is anything else, someone else wrote it after us: it is never clobbered, only our
//! state is dropped, and `restore` returns false (true only if the file already equals the
//! original). If a write fails, the state is kept so that a later `restore` retries.
//!
//! *Our cut-short write* (only considered while `name` has an entry and `resolv.orig` is
//! saved): an empty file; a file whose first line is our header for this namespace but which
//! does not parse; or a file whose last line is our trailer for this namespace. A `write` of a
//! regular file is cut at a page boundary at most and our header is in the first page, so these
//! are what a kill between our `pwrite` and `ftruncate` can leave (the original followed by the
//! tail of our longer rewrite, or the start of a rewrite followed by older bytes), plus the
//! empty file the previous, truncating writer could leave. (A kill can cut a `write` to a
//! regular file only between pages, in practice.)
//!
//! Modes: only the permission bits (0777) are saved and restored; set-id and sticky bits are
//! never set by a restore (an embedded original must not be able to make a setuid file).
//! A resolv.conf larger than 256 KiB, a directory, FIFO or device is never rewritten (`apply`
//! fails), so our rewrite always stays under the 1 MiB we ever read.
//!
//! # systemd-resolved and resolvconf
//!
//! Their entry is written before the tool runs (so a crash half-way is still undone);
//! `restore` runs `resolvconf -d <name> -f`, or nothing for systemd-resolved (it forgets a
//! link's DNS with the link), and drops the entry. They take no part in the stack above.
//!
//! # Locking
//!
//! Tunnels of one namespace may belong to different processes, each holding only its own
//! name's lock, so the resolv.conf work of `apply` and `restore` (read the stack, write the
//! files) runs under an exclusive `flock` on `dir` itself, waited for at most 3 s (its holders
//! only do file I/O). `apply` fails when it cannot have it; `restore` then keeps the state for
//! a later try. `restore` takes it only when `name` has something to undo, so the cheap case
//! stays write- and lock-free; the per-interface tools run without it. Callers must not
//! `flock` `dir` themselves around these calls (a second descriptor would wait on the first).

use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::cmd;
use crate::error::{Result, WgError};

const TIMEOUT: Duration = Duration::from_secs(5);
/// How long `apply`/`restore` wait for the namespace lock (its holders only do file I/O).
const LOCK_BOUND: Duration = Duration::from_secs(3);

const HEADER_START: &str = "# blue-wireguard tunnel DNS (net ";
const HEADER_MID: &str = ", tunnel ";
const HEADER_END: &str = "); do not edit";
const B64_LINE: &str = "#~b64 ";
const END_LINE: &str = "#~end net ";
const B64_WIDTH: usize = 64;
const ORIG_MAGIC: &str = "blue-wireguard original v1 ";

const ORIG_FILE: &str = "resolv.orig";
const ENTRY_EXT: &str = ".dns";

/// resolv.conf larger than this is not read (nor rewritten).
const MAX_RESOLV: u64 = 1 << 20;
/// An original larger than this is refused, so that our rewrite (base64, 4/3 of it, plus a
/// few lines) always stays readable under `MAX_RESOLV`.
const MAX_ORIGINAL: usize = 256 << 10;
const MAX_ORIG: u64 = MAX_ORIGINAL as u64 + 4096;
const MAX_ENTRY: u64 = 64 << 10;

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

/// The resolv.conf this process sees (`BLUE_WG_RESOLV_CONF` overrides it for tests).
pub fn resolv_conf_path() -> PathBuf {
    std::env::var_os("BLUE_WG_RESOLV_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"))
}

/// The file to read and write for `path`: a symbolic link to an existing regular file is
/// followed, because the file it names is what resolvers read, and under `ip netns exec` it is
/// where the namespace's own resolv.conf is bind-mounted (replacing the link would change the
/// host's `/etc`, shared by every namespace). A dangling link, or no file, is handled at
/// `path` itself (replaced, and put back exactly).
fn effective(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(path) {
            Ok(t) if fs::metadata(&t).is_ok_and(|m| m.is_file()) => t,
            _ => path.to_path_buf(),
        },
        _ => path.to_path_buf(),
    }
}

/// Which method this host uses. `BLUE_WG_DNS_METHOD` (`systemd-resolved`, `resolvconf` or
/// `resolv.conf`) forces one. The per-interface tools act on the *host's* resolver state
/// (resolved's links by index, `/run/resolvconf` by name), so outside the network namespace of
/// PID 1 only the `resolv.conf` this process sees is changed.
pub fn detect() -> DnsMethod {
    if let Some(m) = std::env::var("BLUE_WG_DNS_METHOD")
        .ok()
        .and_then(|v| DnsMethod::parse(v.trim()))
    {
        return m;
    }
    let host_ns = fs::metadata("/proc/1/ns/net")
        .map(|m| m.ino() == crate::state::netns().inode)
        .unwrap_or(true);
    if !host_ns {
        return DnsMethod::File;
    }
    let current = read_following(&resolv_conf_path()).unwrap_or_default();
    let stub = current.split(|&b| b == b'\n').any(|l| {
        String::from_utf8_lossy(l)
            .split_whitespace()
            .eq(["nameserver", "127.0.0.53"])
    });
    if stub && cmd::find_program("resolvectl").is_some() {
        DnsMethod::Resolved
    } else if cmd::find_program("resolvconf").is_some() {
        DnsMethod::Resolvconf
    } else {
        DnsMethod::File
    }
}

/// Apply `servers` for tunnel `name` of network namespace `netns` (an opaque u64 id); state in
/// `dir`. On failure everything done so far is undone.
pub fn apply(dir: &Path, netns: u64, name: &str, servers: &[IpAddr]) -> Result<DnsMethod> {
    let resolv = effective(&resolv_conf_path());
    apply_with(&At::new(dir, &resolv, netns), detect(), name, servers)
}

/// Refuse, before anything is changed, DNS this process could not apply: with the
/// `resolv.conf` method (every network namespace but PID 1's, or a host with neither
/// systemd-resolved nor resolvconf in use) the file must be writable by this process, which
/// without root it usually is not (CAP_NET_ADMIN alone does not grant it). Without this check
/// such a connect would bring the tunnel up and fail at its last step. Cheap: no subprocess,
/// no write (`faccessat` with the effective ids and capabilities).
pub fn preflight(servers: &[IpAddr]) -> Result<()> {
    if servers.is_empty() || detect() != DnsMethod::File {
        return Ok(());
    }
    let path = resolv_conf_path();
    let Some((target, e)) = write_denied(&effective(&path)) else {
        return Ok(());
    };
    let list: Vec<String> = servers.iter().map(IpAddr::to_string).collect();
    Err(WgError::PermissionDenied(format!(
        "DNS servers were requested ({}) but this process (euid {}) cannot write {} ({e}), and \
         no per-link DNS method (systemd-resolved, resolvconf) is in use here; nothing was \
         changed. Pass dns: [] to connect without changing DNS (a full tunnel sets DNS servers \
         by default), run as root, or give this user write access to {}",
        list.join(", "),
        euid(),
        target.display(),
        path.display(),
    )))
}

/// What a rewrite of resolv.conf at `path` (as `effective` gives it) would need to write and
/// cannot, with the error: the file itself when it is a regular file (written in place), its
/// directory when it is absent or a dangling link (a file is made beside it and renamed).
/// None when the write is allowed, or fails for another reason than permissions (`apply`
/// reports those).
fn write_denied(path: &Path) -> Option<(PathBuf, io::Error)> {
    let (target, mode) = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => (path.to_path_buf(), libc::W_OK),
        Ok(m) if !m.file_type().is_symlink() => return None,
        _ => (
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            libc::W_OK | libc::X_OK,
        ),
    };
    let c = std::ffi::CString::new(target.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated path; faccessat only reads it.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) };
    if rc == 0 {
        return None;
    }
    let e = io::Error::last_os_error();
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)).then_some((target, e))
}

/// Undo `name`'s DNS (also after a crash of its owner). `is_live(other)` tells whether another
/// tunnel `other` of this namespace still has a live owner (its DNS entry must be kept).
/// Never fails; cheap (no subprocess, no write) when `name` has nothing to restore. Returns
/// true when something was undone; false when there was nothing, or when resolv.conf had been
/// rewritten by someone else since (then it is left alone and only our state is dropped).
pub fn restore(dir: &Path, netns: u64, name: &str, is_live: &dyn Fn(&str) -> bool) -> bool {
    let resolv = effective(&resolv_conf_path());
    restore_at(&At::new(dir, &resolv, netns), name, is_live)
}

/// `restore` for a tunnel whose interface stays (a live `update` to no DNS): a per-link
/// method's settings are dropped from the link as well (`resolvectl revert`), since no link
/// deletion will drop them.
pub fn restore_live(dir: &Path, netns: u64, name: &str, is_live: &dyn Fn(&str) -> bool) -> bool {
    let resolv = effective(&resolv_conf_path());
    let at = At::new(dir, &resolv, netns);
    if valid_name(name) && read_entry(at.dir, name).is_some_and(|e| e.method == DnsMethod::Resolved)
    {
        let _ = run_ok("resolvectl", &["revert".into(), name.into()], None);
    }
    restore_at(&at, name, is_live)
}

/// True when `name` has DNS state to undo (an entry in `dir`, or resolv.conf is our rewrite
/// naming (netns, name)).
pub fn pending(dir: &Path, netns: u64, name: &str) -> bool {
    let resolv = effective(&resolv_conf_path());
    pending_at(&At::new(dir, &resolv, netns), name)
}

/// Names that have a DNS entry in `dir` (for the sweep of dead owners), sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    load_entries(dir).into_iter().map(|(n, _)| n).collect()
}

// ------------------------------------------------------------------------------ the core

/// Where one namespace's DNS lives: its state directory and the resolv.conf it sees.
struct At<'a> {
    dir: &'a Path,
    resolv: &'a Path,
    netns: u64,
}

impl<'a> At<'a> {
    fn new(dir: &'a Path, resolv: &'a Path, netns: u64) -> Self {
        At { dir, resolv, netns }
    }
}

fn apply_with(at: &At, method: DnsMethod, name: &str, servers: &[IpAddr]) -> Result<DnsMethod> {
    if !valid_name(name) {
        return Err(WgError::setup(
            "dns",
            format!("invalid tunnel name {name:?}"),
        ));
    }
    let result = (|| {
        let lock = NsLock::acquire(at.dir).ok_or_else(|| {
            WgError::setup(
                "dns",
                format!(
                    "another process kept {} locked for {LOCK_BOUND:?}",
                    at.dir.display()
                ),
            )
        })?;
        let entries = load_entries(at.dir);
        let seq = entries.iter().map(|(_, e)| e.seq).max().unwrap_or(0) + 1;
        let entry = Entry {
            method,
            seq,
            servers: servers.to_vec(),
        };
        if method == DnsMethod::File {
            return apply_file(at, name, &entry, &entries);
        }
        // The tools are per interface: no need to hold up the namespace while they run.
        write_entry(at.dir, name, &entry)?;
        drop(lock);
        match method {
            DnsMethod::Resolved => apply_resolved(name, servers),
            _ => apply_resolvconf(name, servers),
        }
    })();
    if let Err(e) = result {
        restore_at(at, name, &|_| true);
        return Err(e);
    }
    Ok(method)
}

fn apply_file(at: &At, name: &str, entry: &Entry, entries: &[(String, Entry)]) -> Result<()> {
    let cur = read_current(at.resolv)
        .map_err(|e| WgError::io(format!("cannot read {}", at.resolv.display()), &e))?;
    let Some(as_found) = cur.as_original() else {
        return Err(WgError::setup(
            "dns",
            format!(
                "{} is {}; refusing to replace it",
                at.resolv.display(),
                cur.describe()
            ),
        ));
    };
    let saved = read_saved(at.dir);
    let ours = recognise(&cur, at.netns, saved.as_ref());
    let stacked = entries.iter().any(|(_, e)| e.method == DnsMethod::File);
    // A trusted rewrite by another namespace that shares this resolv.conf: its own original
    // is the real one (saving its tunnel DNS as ours would leave that DNS behind for good once
    // both are gone).
    let foreign = match &cur {
        Current::File {
            bytes,
            trusted: true,
            ..
        } => parse_rewrite(bytes).filter(|r| r.netns != at.netns),
        _ => None,
    };
    let original = match (ours, &saved) {
        // A crashed run's (or a live tunnel's) rewrite: never save tunnel DNS as the original.
        (Some(r), _) => r.original,
        (None, Some(s)) if stacked && cur.looks_cut(at.netns) => s.clone(),
        _ => foreign.map(|r| r.original).unwrap_or(as_found),
    };
    if matches!(&original, Original::File { bytes, .. } if bytes.len() > MAX_ORIGINAL) {
        return Err(WgError::setup(
            "dns",
            format!(
                "{} is larger than {MAX_ORIGINAL} bytes; refusing to rewrite it",
                at.resolv.display()
            ),
        ));
    }
    if saved.as_ref() != Some(&original) {
        write_state(at.dir, ORIG_FILE, &original.encode())?;
    }
    if let Err(e) = write_entry(at.dir, name, entry) {
        if !stacked {
            remove_state(at.dir, ORIG_FILE);
        }
        return Err(e);
    }
    let body = render(at.netns, name, &entry.servers, &original);
    write_rewrite(at.resolv, &cur, &body)
        .map_err(|e| WgError::setup("dns", format!("cannot write {}: {e}", at.resolv.display())))
}

fn restore_at(at: &At, name: &str, is_live: &dyn Fn(&str) -> bool) -> bool {
    if !valid_name(name) {
        return false;
    }
    let entry = read_entry(at.dir, name);
    let mut undone = false;
    // These two are per interface (and `name` is the caller's): no namespace lock needed.
    match entry.as_ref().map(|e| e.method) {
        Some(DnsMethod::Resolvconf) => {
            undone = run_ok("resolvconf", &["-d".into(), name.into(), "-f".into()], None).is_ok();
            remove_entry(at.dir, name);
        }
        // systemd-resolved forgets a link's DNS when the link is deleted: nothing to run.
        Some(DnsMethod::Resolved) => {
            undone = true;
            remove_entry(at.dir, name);
        }
        Some(DnsMethod::File) | None => {}
    }
    // The cheap way out (no lock, no write): no entry, and resolv.conf does not even claim to
    // be ours for `name`.
    if !entry.is_some_and(|e| e.method == DnsMethod::File) {
        // ...unless a kill inside `apply` may have left a saved original (whole, or as its
        // temp file) or its temp entry: those are dropped under the lock if no tunnel uses
        // them. A saved original beside another tunnel's resolv.conf entry is that tunnel's,
        // in use: then the cheap way stays lock-free (a tunnel without DNS must not wait on
        // the namespace lock because another one has DNS).
        let exists = |f: &str| fs::symlink_metadata(at.dir.join(f)).is_ok();
        let orphan_original = exists(ORIG_FILE)
            && !load_entries(at.dir)
                .iter()
                .any(|(_, e)| e.method == DnsMethod::File);
        let cut_apply = exists(&format!(".{}.tmp", entry_file(name)))
            || exists(&format!(".{ORIG_FILE}.tmp"))
            || orphan_original;
        match read_current(at.resolv) {
            Ok(cur) if cur.header() == Some((at.netns, name)) => {}
            _ if cut_apply => {}
            _ => return undone,
        }
    }
    // Could not have the lock: keep the state, a later restore (or the sweep) tries again.
    let Some(_lock) = NsLock::acquire(at.dir) else {
        return undone;
    };
    restore_file(at, name, is_live) || undone
}

/// The resolv.conf part of `restore_at`, under the namespace lock.
fn restore_file(at: &At, name: &str, is_live: &dyn Fn(&str) -> bool) -> bool {
    // Every writer of the original holds this lock: a temp original seen under it is the
    // remains of an owner killed while saving it, never a write in progress.
    remove_state(at.dir, &format!(".{ORIG_FILE}.tmp"));
    let had_entry = read_entry(at.dir, name).is_some_and(|e| e.method == DnsMethod::File);
    // Unreadable (an I/O error): keep the state, a later restore tries again.
    let Ok(cur) = read_current(at.resolv) else {
        return false;
    };
    let saved = read_saved(at.dir);
    let ours = recognise(&cur, at.netns, saved.as_ref());
    if !had_entry && ours.as_ref().is_none_or(|r| r.tunnel != name) {
        // Nothing of ours in resolv.conf for `name`. An owner killed inside `apply` (after
        // saving the original, before its entry was renamed into place) can still have left
        // a temp entry, and an original no tunnel uses any more: drop both.
        remove_entry(at.dir, name);
        let any_file_entry = load_entries(at.dir)
            .iter()
            .any(|(_, e)| e.method == DnsMethod::File);
        if ours.is_none() && !any_file_entry {
            remove_state(at.dir, ORIG_FILE);
        }
        return false;
    }
    let mut dropped = vec![name.to_string()];
    let mut remaining = Vec::new();
    for (n, e) in load_entries(at.dir) {
        if e.method != DnsMethod::File || n == name {
            continue;
        }
        if is_live(&n) {
            remaining.push((n, e));
        } else {
            dropped.push(n);
        }
    }
    let newest = remaining.iter().max_by_key(|(_, e)| e.seq);
    let cut_short = ours.is_none() && had_entry && saved.is_some() && cur.looks_cut(at.netns);
    let original = match ours {
        Some(r) => Some(r.original),
        None if cut_short => saved.clone(),
        None => None,
    };
    let done = match &original {
        Some(orig) => {
            let written = match newest {
                Some((n, e)) => {
                    write_rewrite(at.resolv, &cur, &render(at.netns, n, &e.servers, orig))
                }
                None => put_back(at.resolv, &cur, orig),
            };
            if written.is_err() {
                // Keep the state: the next restore (or the sweep) tries again.
                return false;
            }
            true
        }
        // Someone else wrote resolv.conf after us (or the original is already back): never
        // clobber it, only drop our state.
        None => saved.as_ref().is_some_and(|s| cur.is(s)),
    };
    if remaining.is_empty() {
        remove_state(at.dir, ORIG_FILE);
    }
    for n in &dropped {
        remove_entry(at.dir, n);
    }
    done
}

fn pending_at(at: &At, name: &str) -> bool {
    if !valid_name(name) {
        return false;
    }
    if read_entry(at.dir, name).is_some() {
        return true;
    }
    let Ok(cur) = read_current(at.resolv) else {
        return false;
    };
    if cur.header() != Some((at.netns, name)) {
        return false;
    }
    recognise(&cur, at.netns, read_saved(at.dir).as_ref()).is_some_and(|r| r.tunnel == name)
}

// ------------------------------------------------------------- resolvectl and resolvconf

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

// ------------------------------------------------------------------------ on-disk forms

/// Tunnel names as `config::validate_interface_name` admits them: also safe as file names.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_=+.-".contains(c))
}

/// What resolv.conf was before the first tunnel of the namespace rewrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Original {
    Absent,
    Symlink(Vec<u8>),
    File { bytes: Vec<u8>, mode: u32 },
}

impl Original {
    fn encode(&self) -> Vec<u8> {
        let (head, body): (String, &[u8]) = match self {
            Original::Absent => ("absent".into(), &[]),
            Original::Symlink(t) => ("symlink".into(), t),
            Original::File { bytes, mode } => (format!("file {mode:04o}"), bytes),
        };
        let mut v = format!("{ORIG_MAGIC}{head}\n").into_bytes();
        v.extend_from_slice(body);
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let nl = b.iter().position(|&c| c == b'\n')?;
        let head = std::str::from_utf8(&b[..nl])
            .ok()?
            .strip_prefix(ORIG_MAGIC)?;
        let body = &b[nl + 1..];
        let words: Vec<&str> = head.split(' ').collect();
        match words[..] {
            ["absent"] if body.is_empty() => Some(Original::Absent),
            ["symlink"] if !body.is_empty() && !body.contains(&0) => {
                Some(Original::Symlink(body.to_vec()))
            }
            ["file", m] if m.len() == 4 && m.bytes().all(|c| (b'0'..=b'7').contains(&c)) => {
                let mode = u32::from_str_radix(m, 8).ok()?;
                (mode <= 0o777).then(|| Original::File {
                    bytes: body.to_vec(),
                    mode,
                })
            }
            _ => None,
        }
    }
}

/// One tunnel's record of its DNS, `dir/<name>.dns`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    method: DnsMethod,
    seq: u64,
    servers: Vec<IpAddr>,
}

impl Entry {
    fn encode(&self) -> String {
        let mut s = format!("method {}\nseq {}\n", self.method.as_str(), self.seq);
        for ip in &self.servers {
            s.push_str(&format!("server {ip}\n"));
        }
        s
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(b).ok()?;
        let mut lines = text.lines();
        let method = DnsMethod::parse(lines.next()?.strip_prefix("method ")?)?;
        let seq = lines.next()?.strip_prefix("seq ")?.parse().ok()?;
        let servers = lines
            .map(|l| l.strip_prefix("server ")?.parse().ok())
            .collect::<Option<Vec<IpAddr>>>()?;
        Some(Entry {
            method,
            seq,
            servers,
        })
    }
}

/// One of our rewrites, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rewrite {
    netns: u64,
    tunnel: String,
    servers: Vec<IpAddr>,
    original: Original,
}

fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn header_line(netns: u64, tunnel: &str) -> String {
    format!("{HEADER_START}{netns}{HEADER_MID}{tunnel}{HEADER_END}")
}

/// The (netns, tunnel) of a header line.
fn parse_header(line: &str) -> Option<(u64, &str)> {
    let rest = line.strip_prefix(HEADER_START)?.strip_suffix(HEADER_END)?;
    let (n, tunnel) = rest.split_once(HEADER_MID)?;
    if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) || !valid_name(tunnel) {
        return None;
    }
    Some((n.parse().ok()?, tunnel))
}

/// The resolv.conf that shows `servers` for `tunnel` and carries `original`.
fn render(netns: u64, tunnel: &str, servers: &[IpAddr], original: &Original) -> Vec<u8> {
    let mut s = header_line(netns, tunnel);
    s.push('\n');
    for ip in servers {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    let payload = B64.encode(original.encode());
    for chunk in payload.as_bytes().chunks(B64_WIDTH) {
        s.push_str(B64_LINE);
        // Base64 is ASCII: every chunk is valid UTF-8.
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    let sum = fnv64(s.as_bytes());
    s.push_str(&format!("{END_LINE}{netns} {sum:016x}\n"));
    s.into_bytes()
}

/// Our rewrite, or None. Bytes after the trailer are ignored (a write cut before its truncate).
fn parse_rewrite(bytes: &[u8]) -> Option<Rewrite> {
    let mut offset = 0;
    let mut lines = bytes.split_inclusive(|&c| c == b'\n').map(|l| {
        let start = offset;
        offset += l.len();
        let text = l
            .strip_suffix(b"\n")
            .and_then(|l| std::str::from_utf8(l).ok());
        (start, text)
    });
    let (netns, tunnel) = parse_header(lines.next()?.1?)?;
    let mut servers = Vec::new();
    let mut payload = String::new();
    loop {
        let (start, line) = lines.next()?;
        let line = line?;
        if let Some(ip) = line.strip_prefix("nameserver ") {
            if !payload.is_empty() {
                return None;
            }
            servers.push(ip.parse().ok()?);
        } else if let Some(chunk) = line.strip_prefix(B64_LINE) {
            payload.push_str(chunk);
        } else if let Some(tail) = line.strip_prefix(END_LINE) {
            let (n, sum) = tail.split_once(' ')?;
            if n != netns.to_string() || sum != format!("{:016x}", fnv64(&bytes[..start])) {
                return None;
            }
            let original = Original::decode(&B64.decode(payload).ok()?)?;
            return Some(Rewrite {
                netns,
                tunnel: tunnel.to_string(),
                servers,
                original,
            });
        } else {
            return None;
        }
    }
}

// ------------------------------------------------------------------- resolv.conf on disk

/// resolv.conf as found (`lstat`-like: a link is not followed).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Current {
    Absent,
    Symlink(Vec<u8>),
    /// `trusted`: owned by our euid and not writable by group or others.
    File {
        bytes: Vec<u8>,
        mode: u32,
        trusted: bool,
    },
    /// A directory, FIFO, device, ... (or unreadable): never written.
    Other(&'static str),
}

impl Current {
    fn as_original(&self) -> Option<Original> {
        match self {
            Current::Absent => Some(Original::Absent),
            Current::Symlink(t) => Some(Original::Symlink(t.clone())),
            Current::File { bytes, mode, .. } => Some(Original::File {
                bytes: bytes.clone(),
                mode: *mode,
            }),
            Current::Other(_) => None,
        }
    }

    /// Exactly `o` (contents and mode)?
    fn is(&self, o: &Original) -> bool {
        self.as_original().as_ref() == Some(o)
    }

    fn describe(&self) -> &'static str {
        match self {
            Current::Absent => "absent",
            Current::Symlink(_) => "a symbolic link",
            Current::File { .. } => "a regular file",
            Current::Other(what) => what,
        }
    }

    /// The (netns, tunnel) its first line names, if it is one of our headers.
    fn header(&self) -> Option<(u64, &str)> {
        let Current::File { bytes, .. } = self else {
            return None;
        };
        let first = bytes.split(|&c| c == b'\n').next()?;
        parse_header(std::str::from_utf8(first).ok()?)
    }

    /// What a write of ours cut short can leave (see the module doc). Not a rewrite by itself.
    fn looks_cut(&self, netns: u64) -> bool {
        let Current::File { bytes, .. } = self else {
            return false;
        };
        if bytes.is_empty() || self.header().is_some_and(|(n, _)| n == netns) {
            return true;
        }
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let last = body.rsplit(|&c| c == b'\n').next().unwrap_or(body);
        last.starts_with(format!("{END_LINE}{netns} ").as_bytes())
    }
}

/// Our rewrite for `netns`, with an embedded original we may use: the file is trusted, or its
/// original is the one saved in our directory.
fn recognise(cur: &Current, netns: u64, saved: Option<&Original>) -> Option<Rewrite> {
    let Current::File { bytes, trusted, .. } = cur else {
        return None;
    };
    let r = parse_rewrite(bytes)?;
    (r.netns == netns && (*trusted || saved == Some(&r.original))).then_some(r)
}

fn nofollow_flags() -> i32 {
    libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC
}

fn read_bounded(mut f: fs::File, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    (&mut f).take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(buf)
}

fn read_current(path: &Path) -> io::Result<Current> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(nofollow_flags())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Current::Absent),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Current::Symlink(
                fs::read_link(path)?.into_os_string().into_vec(),
            ));
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Ok(Current::Other("a directory"));
    }
    if !meta.is_file() {
        return Ok(Current::Other("not a regular file"));
    }
    if meta.len() > MAX_RESOLV {
        return Ok(Current::Other("larger than 1 MiB"));
    }
    let trusted = meta.uid() == euid() && meta.mode() & 0o022 == 0;
    Ok(Current::File {
        bytes: read_bounded(f, MAX_RESOLV)?,
        mode: meta.mode() & 0o777,
        trusted,
    })
}

/// resolv.conf through links (for `detect`), never blocking on a FIFO.
fn read_following(path: &Path) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    read_bounded(f, MAX_RESOLV)
}

/// Rewrite resolv.conf with `body` (no write when it already holds exactly that).
fn write_rewrite(path: &Path, cur: &Current, body: &[u8]) -> io::Result<()> {
    if matches!(cur, Current::File { bytes, .. } if bytes == body) {
        return Ok(());
    }
    write_file(path, cur, body, None)
}

/// Put `original` back exactly.
fn put_back(path: &Path, cur: &Current, original: &Original) -> io::Result<()> {
    if cur.is(original) {
        return Ok(());
    }
    match original {
        Original::File { bytes, mode } => write_file(path, cur, bytes, Some(*mode)),
        Original::Symlink(target) => replace(path, Replacement::Symlink(target)),
        Original::Absent => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// A regular file is written in place (it may be a bind mount); a link or nothing is replaced
/// by a new file, renamed into place.
fn write_file(path: &Path, cur: &Current, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    match cur {
        Current::File { .. } => write_in_place(path, bytes, mode),
        Current::Absent | Current::Symlink(_) => {
            replace(path, Replacement::File(bytes, mode.unwrap_or(0o644)))
        }
        Current::Other(what) => Err(io::Error::other(format!("it is {what}"))),
    }
}

/// No `O_TRUNC`: one `pwrite` of the whole body, then `ftruncate`, then `fsync`, so the file is
/// never empty on the way and a cut-short write is recognisable (see the module doc).
fn write_in_place(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(nofollow_flags())
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)?;
    if let Some(mode) = mode {
        if meta.mode() & 0o777 != mode {
            f.set_permissions(Permissions::from_mode(mode))?;
        }
    }
    f.sync_all()
}

enum Replacement<'a> {
    File(&'a [u8], u32),
    Symlink(&'a [u8]),
}

/// Create the replacement under a fresh temp name in the same directory, then rename it over
/// `path` (a link there is replaced, never followed).
fn replace(path: &Path, what: Replacement) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let base = path
        .file_name()
        .ok_or_else(|| io::Error::other("not a file path"))?
        .to_string_lossy()
        .into_owned();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut attempt = 0u32;
    let tmp = loop {
        let tmp = parent.join(format!(
            ".{base}.bw-{}-{}",
            std::process::id(),
            stamp.wrapping_add(attempt)
        ));
        let made = match what {
            Replacement::File(bytes, mode) => make_file(&tmp, bytes, mode),
            Replacement::Symlink(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)
            }
        };
        match made {
            Ok(()) => break tmp,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn make_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let written = f
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|_| f.write_all(bytes))
        .and_then(|_| f.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

// ------------------------------------------------------------------ the state directory

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A file of `dir`, read through its descriptor; None unless a regular file owned by our
/// euid, not writable by group or others, with one link (never followed, never trusted else).
fn read_trusted(dir: &Path, file: &str, max: u64) -> Option<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nofollow_flags())
        .open(dir.join(file))
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.uid() != euid() || meta.mode() & 0o022 != 0 || meta.nlink() != 1 {
        return None;
    }
    read_bounded(f, max).ok()
}

/// An exclusive `flock` on the state directory itself (no file is created, so no name can
/// collide with a tunnel's files): serialises the resolv.conf stack of one namespace across
/// threads and processes. Released when dropped, or when its holder dies.
struct NsLock {
    _dir: fs::File,
}

impl NsLock {
    fn acquire(dir: &Path) -> Option<NsLock> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
            .ok()?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        // SAFETY: flock on a descriptor we own.
        cmd::wait_until(LOCK_BOUND, || {
            (unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(())
        })?;
        Some(NsLock { _dir: f })
    }
}

fn read_saved(dir: &Path) -> Option<Original> {
    Original::decode(&read_trusted(dir, ORIG_FILE, MAX_ORIG)?)
}

fn entry_file(name: &str) -> String {
    format!("{name}{ENTRY_EXT}")
}

fn read_entry(dir: &Path, name: &str) -> Option<Entry> {
    Entry::decode(&read_trusted(dir, &entry_file(name), MAX_ENTRY)?)
}

/// The valid entries of `dir`, sorted by name.
fn load_entries(dir: &Path) -> Vec<(String, Entry)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Entry)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let name = file.strip_suffix(ENTRY_EXT).filter(|n| valid_name(n))?;
            Some((name.to_string(), read_entry(dir, name)?))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Write `dir/file`: 0600, to an exclusive temp name (no link followed), synced, renamed.
fn write_state(dir: &Path, file: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(file);
    let tmp = dir.join(format!(".{file}.tmp"));
    let _ = fs::remove_file(&tmp);
    make_file(&tmp, bytes, 0o600)
        .and_then(|_| {
            fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        })
        .map_err(|e| WgError::io(format!("cannot write {}", path.display()), &e))
}

fn write_entry(dir: &Path, name: &str, entry: &Entry) -> Result<()> {
    write_state(dir, &entry_file(name), entry.encode().as_bytes())
}

fn remove_state(dir: &Path, file: &str) {
    let _ = fs::remove_file(dir.join(file));
}

fn remove_entry(dir: &Path, name: &str) {
    remove_state(dir, &entry_file(name));
    // A write of the entry cut short before its rename.
    remove_state(dir, &format!(".{}.tmp", entry_file(name)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const NS: u64 = 4026531840;

    struct Env {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        resolv: PathBuf,
    }

    fn env() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net-1");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        let etc = tmp.path().join("etc");
        fs::create_dir(&etc).unwrap();
        let resolv = etc.join("resolv.conf");
        Env {
            _tmp: tmp,
            dir,
            resolv,
        }
    }

    #[test]
    fn preflight_checks_what_a_rewrite_would_write() {
        let e = env();
        // Absent: its directory is what a rewrite writes (a file renamed into place).
        assert!(write_denied(&e.resolv).is_none());
        fs::write(&e.resolv, "nameserver 192.0.2.53\n").unwrap();
        assert!(write_denied(&e.resolv).is_none());
        // A directory is for `apply` to refuse (not a permission matter).
        assert!(write_denied(e.resolv.parent().unwrap()).is_none());
        // No servers: nothing to check.
        assert!(preflight(&[]).is_ok());
        // Without root (or CAP_DAC_OVERRIDE), a read-only file is refused with the error.
        fs::set_permissions(&e.resolv, Permissions::from_mode(0o444)).unwrap();
        if !crate::backend::has_capability(1) {
            let (target, err) = write_denied(&e.resolv).expect("a 0444 file is not writable");
            assert_eq!(target, e.resolv);
            assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        }
    }

    fn ips(servers: &[&str]) -> Vec<IpAddr> {
        servers.iter().map(|s| s.parse().unwrap()).collect()
    }

    impl Env {
        fn at(&self) -> At<'_> {
            At::new(&self.dir, &self.resolv, NS)
        }
        fn apply(&self, name: &str, servers: &[&str]) {
            let m = apply_with(&self.at(), DnsMethod::File, name, &ips(servers)).unwrap();
            assert_eq!(m, DnsMethod::File);
        }
        fn restore(&self, name: &str, live: &[&str]) -> bool {
            restore_at(&self.at(), name, &|n| live.contains(&n))
        }
        fn write(&self, bytes: &[u8], mode: u32) {
            fs::write(&self.resolv, bytes).unwrap();
            fs::set_permissions(&self.resolv, Permissions::from_mode(mode)).unwrap();
        }
        fn current(&self) -> Current {
            read_current(&self.resolv).unwrap()
        }
        fn state(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        }
        /// resolv.conf is our rewrite showing `tunnel` with `servers`.
        fn assert_shows(&self, tunnel: &str, servers: &[&str]) {
            let Current::File { bytes, .. } = self.current() else {
                panic!("resolv.conf is not a file: {:?}", self.current());
            };
            let r = parse_rewrite(&bytes).expect("our rewrite");
            assert_eq!((r.netns, r.tunnel.as_str()), (NS, tunnel));
            assert_eq!(r.servers, ips(servers));
            let text = String::from_utf8(bytes).unwrap();
            for s in servers {
                assert!(text.contains(&format!("\nnameserver {s}\n")), "{text}");
            }
        }
        /// Everything undone: resolv.conf is `original` and the state directory is empty.
        fn assert_back(&self, original: &Current) {
            assert_eq!(&self.current(), original);
            assert_eq!(self.state(), Vec::<String>::new());
        }
    }

    fn ino(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn non_utf8_bytes_and_the_mode_come_back_exactly_in_place() {
        let e = env();
        let orig = b"# r\xe9solveur (Latin-1)\nnameserver 192.0.2.53\nsearch example\n";
        e.write(orig, 0o640);
        let inode = ino(&e.resolv);
        let before = e.current();
        e.apply("wgsent0", &["10.8.0.1", "fd00::1"]);
        e.assert_shows("wgsent0", &["10.8.0.1", "fd00::1"]);
        assert_eq!(
            ino(&e.resolv),
            inode,
            "written in place (a bind mount stays)"
        );
        assert_eq!(e.state(), ["resolv.orig", "wgsent0.dns"]);
        assert!(pending_at(&e.at(), "wgsent0"));
        assert!(e.restore("wgsent0", &[]));
        e.assert_back(&before);
        assert_eq!(fs::read(&e.resolv).unwrap(), orig);
        assert_eq!(ino(&e.resolv), inode);
        assert!(!pending_at(&e.at(), "wgsent0"));
    }

    #[test]
    fn a_file_that_merely_starts_with_our_header_is_saved_as_is() {
        let e = env();
        let mut orig = header_line(NS, "wgsent0").into_bytes();
        orig.extend_from_slice(b"\nnameserver 192.0.2.53\n#~b64 bm90IG91cnM=\n#~end net ");
        orig.extend_from_slice(format!("{NS} 0123456789abcdef\n").as_bytes());
        e.write(&orig, 0o644);
        let before = e.current();
        assert!(!pending_at(&e.at(), "wgsent0"), "not ours: no payload");
        assert!(!e.restore("wgsent0", &[]), "nothing to restore");
        assert_eq!(e.current(), before);
        e.apply("wgsent0", &["10.8.0.1"]);
        e.assert_shows("wgsent0", &["10.8.0.1"]);
        assert!(e.restore("wgsent0", &[]));
        e.assert_back(&before);
        // And an empty file is a file, not "absent".
        e.write(b"", 0o644);
        e.apply("wgsent0", &["10.8.0.1"]);
        assert!(e.restore("wgsent0", &[]));
        e.assert_back(&Current::File {
            bytes: vec![],
            mode: 0o644,
            trusted: true,
        });
    }

    #[test]
    fn absent_stays_absent() {
        let e = env();
        e.apply("wgsent0", &["10.8.0.1"]);
        e.assert_shows("wgsent0", &["10.8.0.1"]);
        assert_eq!(fs::metadata(&e.resolv).unwrap().mode() & 0o777, 0o644);
        assert!(e.restore("wgsent0", &[]));
        e.assert_back(&Current::Absent);
    }

    #[test]
    fn a_dangling_symlink_comes_back_as_the_same_link() {
        let e = env();
        let target = b"../run/systemd/resolve/\xffstub-resolv.conf";
        symlink(OsStr::from_bytes(target), &e.resolv).unwrap();
        e.apply("wgsent0", &["10.8.0.1"]);
        e.assert_shows("wgsent0", &["10.8.0.1"]);
        assert!(!fs::symlink_metadata(&e.resolv)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(e.restore("wgsent0", &[]));
        e.assert_back(&Current::Symlink(target.to_vec()));
    }

    #[test]
    fn a_symlink_to_a_file_comes_back_and_its_target_is_never_written() {
        let e = env();
        let target = e.resolv.with_file_name("stub-resolv.conf");
        fs::write(&target, b"nameserver 127.0.0.53\n").unwrap();
        let mtime = fs::metadata(&target).unwrap().mtime_nsec();
        symlink(&target, &e.resolv).unwrap();
        e.apply("wgsent0", &["10.8.0.1"]);
        e.apply("wgsent1", &["10.9.0.1"]);
        assert_eq!(fs::read(&target).unwrap(), b"nameserver 127.0.0.53\n");
        assert!(e.restore("wgsent1", &["wgsent0"]));
        e.assert_shows("wgsent0", &["10.8.0.1"]);
        assert!(e.restore("wgsent0", &[]));
        e.assert_back(&Current::Symlink(target.into_os_string().into_vec()));
        let target = e.resolv.with_file_name("stub-resolv.conf");
        assert_eq!(fs::read(&target).unwrap(), b"nameserver 127.0.0.53\n");
        assert_eq!(fs::metadata(&target).unwrap().mtime_nsec(), mtime);
        // No temp file left beside it.
        assert_eq!(fs::read_dir(e.resolv.parent().unwrap()).unwrap().count(), 2);
    }

    #[test]
    fn two_tunnels_the_older_first_down() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        let before = e.current();
        e.apply("a", &["10.8.0.1"]);
        e.apply("b", &["10.9.0.1"]);
        e.assert_shows("b", &["10.9.0.1"]);
        assert!(e.restore("a", &["b"]));
        e.assert_shows("b", &["10.9.0.1"]);
        assert_eq!(e.state(), ["b.dns", "resolv.orig"]);
        assert!(e.restore("b", &[]));
        e.assert_back(&before);
    }

    #[test]
    fn two_tunnels_the_newer_first_down() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        let before = e.current();
        e.apply("a", &["10.8.0.1"]);
        e.apply("b", &["10.9.0.1"]);
        // a is still up: its DNS comes back, not the original.
        assert!(e.restore("b", &["a"]));
        e.assert_shows("a", &["10.8.0.1"]);
        assert_eq!(e.state(), ["a.dns", "resolv.orig"]);
        assert!(e.restore("a", &[]));
        e.assert_back(&before);
    }

    #[test]
    fn entries_of_dead_tunnels_are_dropped_with_the_restore() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        let before = e.current();
        e.apply("a", &["10.8.0.1"]);
        e.apply("b", &["10.9.0.1"]);
        e.apply("c", &["10.10.0.1"]);
        assert_eq!(entries(&e.dir), ["a", "b", "c"]);
        // c goes; b's owner died; a is up.
        assert!(e.restore("c", &["a"]));
        e.assert_shows("a", &["10.8.0.1"]);
        assert_eq!(entries(&e.dir), ["a"]);
        assert!(!e.restore("b", &["a"]), "b's state went with c's restore");
        assert!(e.restore("a", &[]));
        e.assert_back(&before);
    }

    #[test]
    fn the_embedded_original_restores_when_the_state_dir_is_lost() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o600);
        let before = e.current();
        e.apply("a", &["10.8.0.1"]);
        for f in e.state() {
            fs::remove_file(e.dir.join(f)).unwrap();
        }
        assert!(pending_at(&e.at(), "a"));
        assert!(!pending_at(&e.at(), "b"));
        assert!(!e.restore("b", &[]));
        assert!(e.restore("a", &[]));
        e.assert_back(&before);
    }

    #[test]
    fn a_crashed_rewrite_is_never_saved_as_the_original() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        let before = e.current();
        e.apply("a", &["10.8.0.1"]);
        for f in e.state() {
            fs::remove_file(e.dir.join(f)).unwrap();
        }
        // A new tunnel (another name) over the crashed run's rewrite.
        e.apply("b", &["10.9.0.1"]);
        assert_eq!(read_saved(&e.dir).as_ref(), before.as_original().as_ref());
        assert!(e.restore("b", &[]));
        e.assert_back(&before);
    }

    #[test]
    fn cut_short_writes_are_ours_and_restored() {
        let e = env();
        let orig = b"nameserver 192.0.2.53\noptions edns0\n";
        e.write(orig, 0o644);
        let before = e.current();
        let rewritten = || {
            e.apply("a", &["10.8.0.1"]);
            fs::read(&e.resolv).unwrap()
        };
        // Empty (the old, truncating writer killed between truncate and write).
        rewritten();
        fs::write(&e.resolv, b"").unwrap();
        assert!(pending_at(&e.at(), "a"));
        assert!(e.restore("a", &[]));
        e.assert_back(&before);
        // The restore killed between pwrite and ftruncate: the original, then our tail.
        let ours = rewritten();
        let mut mix = orig.to_vec();
        mix.extend_from_slice(&ours[orig.len()..]);
        fs::write(&e.resolv, &mix).unwrap();
        assert!(e.restore("a", &[]));
        e.assert_back(&before);
        // The apply cut after its first bytes: our header, no valid payload.
        let ours = rewritten();
        fs::write(&e.resolv, &ours[..ours.len() / 2]).unwrap();
        assert!(e.restore("a", &[]));
        e.assert_back(&before);
        // A complete rewrite not yet truncated: still ours, the tail is ignored.
        let mut ours = rewritten();
        ours.extend_from_slice(b"nameserver 203.0.113.1\n");
        fs::write(&e.resolv, &ours).unwrap();
        assert!(pending_at(&e.at(), "a"));
        assert!(e.restore("a", &[]));
        e.assert_back(&before);
    }

    #[test]
    fn a_file_someone_else_wrote_after_us_is_never_clobbered() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        e.apply("a", &["10.8.0.1"]);
        e.apply("b", &["10.9.0.1"]);
        e.write(b"nameserver 198.51.100.1\n", 0o644);
        let theirs = e.current();
        assert!(!e.restore("b", &["a"]));
        assert_eq!(e.current(), theirs);
        assert!(!e.restore("a", &[]));
        e.assert_back(&theirs);
        // A tunnel applied over it later saves it as the original.
        e.apply("c", &["10.10.0.1"]);
        assert!(e.restore("c", &[]));
        e.assert_back(&theirs);
    }

    #[test]
    fn forged_saved_originals_are_ignored() {
        let e = env();
        let orig = b"nameserver 192.0.2.53\n";
        e.write(orig, 0o644);
        let before = e.current();
        let forged = Original::File {
            bytes: b"nameserver 6.6.6.6\n".to_vec(),
            mode: 0o644,
        }
        .encode();
        let elsewhere = e.resolv.with_file_name("forged");
        fs::write(&elsewhere, &forged).unwrap();
        fs::set_permissions(&elsewhere, Permissions::from_mode(0o600)).unwrap();
        let orig_path = e.dir.join(ORIG_FILE);
        let plant: Vec<Box<dyn Fn()>> = vec![
            // Group/other writable.
            Box::new(|| {
                fs::write(&orig_path, &forged).unwrap();
                fs::set_permissions(&orig_path, Permissions::from_mode(0o666)).unwrap();
            }),
            // A symbolic link to a file that would pass every check.
            Box::new(|| symlink(&elsewhere, &orig_path).unwrap()),
            // A hard link.
            Box::new(|| fs::hard_link(&elsewhere, &orig_path).unwrap()),
            // Owned by another uid (only root can plant that).
            Box::new(|| {
                fs::write(&orig_path, &forged).unwrap();
                fs::set_permissions(&orig_path, Permissions::from_mode(0o600)).unwrap();
                let c = std::ffi::CString::new(orig_path.as_os_str().as_bytes()).unwrap();
                // SAFETY: c is NUL-terminated.
                unsafe { libc::chown(c.as_ptr(), 65534, 65534) };
            }),
        ];
        for (i, plant) in plant.iter().enumerate() {
            // Planted before the apply: ignored, replaced by the real original.
            plant();
            assert_eq!(read_saved(&e.dir), None, "case {i}");
            e.apply("a", &["10.8.0.1"]);
            assert!(e.restore("a", &[]), "case {i}");
            e.assert_back(&before);
            // Planted under a live tunnel: the embedded original wins.
            e.apply("a", &["10.8.0.1"]);
            fs::remove_file(&orig_path).unwrap();
            plant();
            assert!(e.restore("a", &[]), "case {i}");
            assert_eq!(e.current(), before, "case {i}");
            let _ = fs::remove_file(&orig_path);
            // Planted under a cut-short write, where only the saved copy could help: still
            // never used (the empty file stays, the forged servers never appear).
            e.apply("a", &["10.8.0.1"]);
            fs::remove_file(&orig_path).unwrap();
            plant();
            fs::write(&e.resolv, b"").unwrap();
            assert!(!e.restore("a", &[]), "case {i}");
            assert_eq!(fs::read(&e.resolv).unwrap(), b"", "case {i}");
            assert!(!pending_at(&e.at(), "a"));
            let _ = fs::remove_file(&orig_path);
            e.write(orig, 0o644);
        }
    }

    #[test]
    fn a_world_writable_resolv_conf_cannot_smuggle_an_original() {
        let e = env();
        let forged = render(
            NS,
            "a",
            &ips(&["10.8.0.1"]),
            &Original::File {
                bytes: b"nameserver 6.6.6.6\n".to_vec(),
                mode: 0o644,
            },
        );
        e.write(&forged, 0o666);
        let before = e.current();
        assert!(!pending_at(&e.at(), "a"));
        assert!(!e.restore("a", &[]));
        assert_eq!(e.current(), before);
        e.apply("b", &["10.9.0.1"]);
        // Our own rewrite of it is recognised through the saved original.
        assert!(pending_at(&e.at(), "b"));
        assert!(e.restore("b", &[]));
        e.assert_back(&before);
    }

    #[test]
    fn restore_without_state_does_nothing_and_writes_nothing() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        let meta = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            (m.ino(), m.mtime(), m.mtime_nsec(), m.ctime_nsec())
        };
        let (m0, d0) = (meta(&e.resolv), meta(&e.dir));
        assert!(!e.restore("a", &[]));
        assert!(!pending_at(&e.at(), "a"));
        assert_eq!((meta(&e.resolv), meta(&e.dir)), (m0, d0));
        // Also while another tunnel's rewrite is in place.
        e.apply("b", &["10.9.0.1"]);
        let (m0, d0, shown) = (meta(&e.resolv), meta(&e.dir), e.current());
        assert!(!e.restore("a", &["b"]));
        assert!(!e.restore("a", &[]), "not even b's entry is touched");
        assert_eq!((meta(&e.resolv), meta(&e.dir)), (m0, d0));
        assert_eq!(e.current(), shown);
        assert!(!e.restore("../b", &[]));
        assert_eq!(entries(&e.dir), ["b"]);
    }

    #[test]
    fn another_namespace_s_rewrite_is_never_touched() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        let before = e.current();
        let other_dir = e.dir.with_file_name("net-2");
        fs::create_dir(&other_dir).unwrap();
        let other = At::new(&other_dir, &e.resolv, 2);
        apply_with(&other, DnsMethod::File, "a", &ips(&["10.7.0.1"])).unwrap();
        let theirs = e.current();
        // Same tunnel name, our namespace: not ours.
        assert!(!pending_at(&e.at(), "a"));
        assert!(!e.restore("a", &[]));
        assert_eq!(e.current(), theirs);
        // Ours on top of theirs (a resolv.conf both namespaces share): their original is
        // ours too, so their tunnel DNS is never saved as an original.
        e.apply("a", &["10.8.0.1"]);
        e.assert_shows("a", &["10.8.0.1"]);
        // Their restore finds our rewrite: left alone, their state dropped.
        assert!(!restore_at(&other, "a", &|_| false));
        e.assert_shows("a", &["10.8.0.1"]);
        // Ours, last down, brings back the file as it was before either tunnel.
        assert!(e.restore("a", &[]));
        assert_eq!(e.current(), before);
        assert!(!pending_at(&other, "a"));
    }

    #[test]
    fn entries_and_pending_read_only_trusted_entries() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        e.apply("a", &["10.8.0.1"]);
        let entry = read_entry(&e.dir, "a").unwrap();
        assert_eq!((entry.method, entry.seq), (DnsMethod::File, 1));
        e.apply("b", &["10.9.0.1"]);
        assert_eq!(read_entry(&e.dir, "b").unwrap().seq, 2);
        fs::set_permissions(e.dir.join("b.dns"), Permissions::from_mode(0o620)).unwrap();
        assert_eq!(entries(&e.dir), ["a"]);
        fs::write(e.dir.join("x.dns"), b"method resolv.conf\nseq 9\n").unwrap();
        assert_eq!(entries(&e.dir), ["a", "x"]);
        fs::write(
            e.dir.join("y.dns"),
            b"method resolv.conf\nseq 9\nserver nope\n",
        )
        .unwrap();
        fs::write(e.dir.join("x.dns.tmp"), b"method resolv.conf\nseq 9\n").unwrap();
        assert_eq!(entries(&e.dir), ["a", "x"]);
        assert!(pending_at(&e.at(), "a"));
        // b's entry is not trusted, but resolv.conf names b.
        assert!(pending_at(&e.at(), "b"));
    }

    #[test]
    fn a_resolved_entry_is_dropped_without_a_subprocess() {
        let e = env();
        let entry = Entry {
            method: DnsMethod::Resolved,
            seq: 1,
            servers: ips(&["10.8.0.1"]),
        };
        write_entry(&e.dir, "a", &entry).unwrap();
        assert_eq!(
            fs::metadata(e.dir.join("a.dns")).unwrap().mode() & 0o777,
            0o600
        );
        assert!(pending_at(&e.at(), "a"));
        assert!(e.restore("a", &[]));
        assert_eq!(e.state(), Vec::<String>::new());
        assert!(!e.resolv.exists());
    }

    #[test]
    fn formats_round_trip() {
        for o in [
            Original::Absent,
            Original::Symlink(b"/run/x\n\xff".to_vec()),
            Original::File {
                bytes: b"a\0b\n\xfe".to_vec(),
                mode: 0o600,
            },
        ] {
            assert_eq!(Original::decode(&o.encode()).as_ref(), Some(&o));
            let r = render(7, "wg0", &ips(&["10.8.0.1", "fd00::1"]), &o);
            let p = parse_rewrite(&r).unwrap();
            assert_eq!((p.netns, p.tunnel.as_str(), &p.original), (7, "wg0", &o));
            // Any changed byte makes it not ours.
            for i in [0, r.len() / 3, r.len() / 2, r.len() - 3] {
                let mut bad = r.clone();
                bad[i] ^= 0x01;
                assert_eq!(parse_rewrite(&bad), None, "byte {i}");
            }
        }
        assert_eq!(
            Original::decode(b"blue-wireguard original v1 file 4755\nx"),
            None
        );
        assert_eq!(
            Original::decode(b"blue-wireguard original v1 symlink\n"),
            None
        );
        assert_eq!(parse_header(&header_line(0, "..")), None);
        assert_eq!(parse_header(&header_line(3, "wg0")), Some((3, "wg0")));
        let e = Entry {
            method: DnsMethod::Resolvconf,
            seq: 42,
            servers: ips(&["10.8.0.1", "fd00::1"]),
        };
        assert_eq!(Entry::decode(e.encode().as_bytes()), Some(e));
    }

    #[test]
    fn the_namespace_lock_serialises_apply_and_restore() {
        let e = env();
        e.write(b"nameserver 192.0.2.53\n", 0o644);
        let before = e.current();
        e.apply("a", &["10.8.0.1"]);
        let held = NsLock::acquire(&e.dir).unwrap();
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                e.apply("b", &["10.9.0.1"]);
                assert!(e.restore("a", &["b"]));
            });
            std::thread::sleep(Duration::from_millis(150));
            e.assert_shows("a", &["10.8.0.1"]);
            assert_eq!(entries(&e.dir), ["a"], "b waits for the lock");
            // The cheap path needs no lock.
            assert!(!e.restore("c", &[]));
            drop(held);
            t.join().unwrap();
        });
        e.assert_shows("b", &["10.9.0.1"]);
        assert!(e.restore("b", &[]));
        e.assert_back(&before);
    }

    #[test]
    fn a_directory_or_fifo_is_refused() {
        let e = env();
        fs::create_dir(&e.resolv).unwrap();
        let err = apply_with(&e.at(), DnsMethod::File, "a", &ips(&["10.8.0.1"])).unwrap_err();
        assert_eq!(err.code(), "TUNNEL_SETUP_FAILED");
        assert_eq!(e.state(), Vec::<String>::new());
        fs::remove_dir(&e.resolv).unwrap();
        let c = std::ffi::CString::new(e.resolv.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(apply_with(&e.at(), DnsMethod::File, "a", &ips(&["10.8.0.1"])).is_err());
        assert_eq!(e.state(), Vec::<String>::new());
        assert!(!e.restore("a", &[]));
        fs::remove_file(&e.resolv).unwrap();
        // Too large to embed (and still read back): refused, untouched, nothing left.
        let big = vec![b'#'; MAX_ORIGINAL + 1];
        e.write(&big, 0o644);
        assert!(apply_with(&e.at(), DnsMethod::File, "a", &ips(&["10.8.0.1"])).is_err());
        assert_eq!(fs::read(&e.resolv).unwrap(), big);
        assert_eq!(e.state(), Vec::<String>::new());
    }

    #[test]
    fn a_link_to_an_existing_file_is_followed_a_dangling_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("real");
        fs::write(&target, b"nameserver 192.0.2.1\n").unwrap();
        let link = d.path().join("resolv.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(effective(&link), fs::canonicalize(&target).unwrap());
        fs::remove_file(&target).unwrap();
        assert_eq!(effective(&link), link);
        let plain = d.path().join("plain");
        assert_eq!(effective(&plain), plain);
    }

    fn files_but_lock(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .filter_map(|d| d.ok())
            .map(|d| d.file_name().into_string().unwrap())
            .filter(|f| f != "lock")
            .collect()
    }

    /// Where an owner killed inside `apply` can stop: what it leaves in the state dir.
    #[test]
    fn a_kill_inside_apply_leaves_nothing_after_restore() {
        const RESOLV: &[u8] = b"nameserver 192.0.2.53\n";
        let orig = Original::File {
            bytes: RESOLV.to_vec(),
            mode: 0o644,
        }
        .encode();
        type Files<'a> = &'a [(String, &'a [u8])];
        let cases: [(&str, Files); 3] = [
            (
                "inside the original's write",
                &[(format!(".{ORIG_FILE}.tmp"), b"trunc")],
            ),
            (
                "after saving the original",
                &[(ORIG_FILE.to_string(), &orig)],
            ),
            (
                "inside the entry's write",
                &[
                    (ORIG_FILE.to_string(), &orig),
                    (".a.dns.tmp".to_string(), b"method resolv.conf\n"),
                ],
            ),
        ];
        for (when, files) in cases {
            let e = env();
            e.write(RESOLV, 0o644);
            for (f, bytes) in files {
                write_state(&e.dir, f, bytes).unwrap();
            }
            assert!(!e.restore("a", &[]), "{when}");
            let left = files_but_lock(&e.dir);
            assert!(left.is_empty(), "{when}: left {left:?}");
            assert_eq!(fs::read(&e.resolv).unwrap(), RESOLV, "{when}");
        }
    }
}
