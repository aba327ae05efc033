//! Ownership records: who owns which tunnel, so a new process can tell a live agent's tunnel
//! from a dead one's, and sweep only the latter.
//!
//! `<configDir>/<name>.owner` is written (exclusively) before the interface exists and removed
//! after it is gone. It names the owner by pid *and* process start time, so a reused pid is
//! not mistaken for the owner, and the network namespace, so a sweep in one namespace never
//! judges a tunnel in another. Records are changed only under `DirLock`, a `flock` on the
//! config directory shared by every process (and watchdog) using it.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cmd;
use crate::confdir;
use crate::error::{Result, WgError};

pub const SUFFIX: &str = ".owner";
/// How long to wait for another process's lifecycle step to release the directory.
const LOCK_BOUND: Duration = Duration::from_secs(30);

/// One tunnel's ownership record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub pid: u32,
    /// The owner's start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Inode of the owner's network namespace (`/proc/self/ns/net`).
    pub netns: u64,
    pub conf_path: PathBuf,
    pub backend: String,
    pub full_tunnel: bool,
    /// DNS servers applied (empty: DNS untouched).
    pub dns: Vec<String>,
    pub watchdog_pid: Option<u32>,
    pub created_unix_ms: u64,
}

/// Who owns a tunnel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No record (made by something else, or nothing there).
    Nobody,
    /// This process.
    Me(Record),
    /// Another live process.
    Alive(Record),
    /// A process that is gone (or a reused pid): its tunnel may be swept.
    Dead(Record),
    /// A record from another network namespace: not ours to judge.
    Elsewhere(Record),
}

pub fn record_path(name: &str) -> PathBuf {
    confdir::config_dir().join(format!("{name}{SUFFIX}"))
}

/// Start time of `pid` (clock ticks after boot), or None when it does not exist or is a
/// zombie (a dead owner not yet reaped is dead).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is starttime.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True when `pid` is the same live process that started at `start`.
pub fn alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

pub fn my_pid() -> u32 {
    std::process::id()
}

pub fn my_start_time() -> u64 {
    start_time(my_pid()).unwrap_or(0)
}

pub fn netns_id() -> u64 {
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Record {
    /// A record naming this process as the owner of `name`.
    pub fn mine(
        name: &str,
        conf_path: &Path,
        backend: &str,
        full_tunnel: bool,
        dns: Vec<String>,
    ) -> Self {
        Record {
            name: name.to_string(),
            pid: my_pid(),
            start_time: my_start_time(),
            netns: netns_id(),
            conf_path: conf_path.to_path_buf(),
            backend: backend.to_string(),
            full_tunnel,
            dns,
            watchdog_pid: None,
            created_unix_ms: now_ms(),
        }
    }

    fn render(&self) -> String {
        format!(
            "name={}\npid={}\nstart_time={}\nnetns={}\nconf_path={}\nbackend={}\nfull_tunnel={}\ndns={}\nwatchdog_pid={}\ncreated_unix_ms={}\n",
            self.name,
            self.pid,
            self.start_time,
            self.netns,
            self.conf_path.display(),
            self.backend,
            self.full_tunnel,
            self.dns.join(","),
            self.watchdog_pid.map(|p| p.to_string()).unwrap_or_default(),
            self.created_unix_ms
        )
    }

    fn parse(s: &str) -> Option<Self> {
        let get = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        let name = get("name")?.to_string();
        crate::config::validate_interface_name(&name).ok()?;
        Some(Record {
            name,
            pid: get("pid")?.parse().ok()?,
            start_time: get("start_time")?.parse().ok()?,
            netns: get("netns")?.parse().ok()?,
            conf_path: PathBuf::from(get("conf_path")?),
            backend: get("backend").unwrap_or("").to_string(),
            full_tunnel: get("full_tunnel") == Some("true"),
            dns: get("dns")
                .unwrap_or("")
                .split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect(),
            watchdog_pid: get("watchdog_pid").and_then(|p| p.parse().ok()),
            created_unix_ms: get("created_unix_ms")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
        })
    }

    pub fn is_mine(&self) -> bool {
        self.pid == my_pid() && self.start_time == my_start_time()
    }

    pub fn owner_alive(&self) -> bool {
        alive(self.pid, self.start_time)
    }

    fn classify(self) -> Owner {
        if self.netns != netns_id() {
            Owner::Elsewhere(self)
        } else if self.is_mine() {
            Owner::Me(self)
        } else if self.owner_alive() {
            Owner::Alive(self)
        } else {
            Owner::Dead(self)
        }
    }
}

pub fn read(name: &str) -> Option<Record> {
    Record::parse(&fs::read_to_string(record_path(name)).ok()?)
}

pub fn owner_of(name: &str) -> Owner {
    match read(name) {
        None => Owner::Nobody,
        Some(r) => r.classify(),
    }
}

/// Write the record exclusively. Fails with `WG_NAME_IN_USE` when a live process owns the
/// name; a dead owner's record must have been swept first (caller holds `DirLock`).
pub fn claim(rec: &Record) -> Result<()> {
    if let Owner::Alive(other) = owner_of(&rec.name) {
        return Err(WgError::NameInUse {
            name: rec.name.clone(),
            pid: other.pid,
        });
    }
    confdir::write_private_file(&record_path(&rec.name), rec.render().as_bytes())
}

/// Remove the record of `name` with a single `unlink`, so it is either whole or gone. A record
/// holds no secret; zero-filling it first (like a key file) left a window, between the
/// zero-fill and the unlink, in which a SIGKILLed owner left an unreadable record that neither
/// its watchdog nor any sweep would ever remove.
pub fn remove(name: &str) {
    let _ = fs::remove_file(record_path(name));
}

/// True when `name` has a record file that does not parse: one cut short by a SIGKILL between
/// its creation and its write in `claim`. Records are only written under `DirLock`, so under
/// the lock an unreadable record is never a live writer's.
pub fn unreadable(name: &str) -> bool {
    fs::symlink_metadata(record_path(name)).is_ok() && read(name).is_none()
}

/// Every readable record in the config directory.
pub fn list() -> Vec<Record> {
    let Ok(rd) = fs::read_dir(confdir::config_dir()) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
        .filter_map(|e| Record::parse(&fs::read_to_string(e.path()).ok()?))
        .collect()
}

/// Records of this namespace with their owner's state.
pub fn list_classified() -> Vec<Owner> {
    list().into_iter().map(Record::classify).collect()
}

/// An exclusive `flock` on the config directory, released on drop (or when the holder dies).
pub struct DirLock {
    _dir: fs::File,
}

impl DirLock {
    /// Take the lock, waiting (bounded) for another process to finish its step. None when the
    /// directory does not exist (then there is nothing to protect).
    pub fn acquire() -> Result<Option<DirLock>> {
        let dir = match fs::File::open(confdir::config_dir()) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WgError::io("cannot open the config directory", &e)),
        };
        let fd = dir.as_raw_fd();
        // SAFETY: flock on a descriptor we own.
        let got = cmd::wait_until(LOCK_BOUND, || {
            (unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(())
        });
        match got {
            Some(()) => Ok(Some(DirLock { _dir: dir })),
            None => Err(WgError::setup(
                "lock",
                format!(
                    "another process held {} for more than {:?}",
                    confdir::config_dir().display(),
                    LOCK_BOUND
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_identifies_this_process() {
        let r = Record::mine(
            "wgsent3",
            Path::new("/tmp/x/wgsent3.conf"),
            "wg-quick",
            true,
            vec!["10.8.0.1".into()],
        );
        assert!(r.is_mine() && r.owner_alive());
        let back = Record::parse(&r.render()).unwrap();
        assert_eq!(back, r);
        assert!(matches!(back.classify(), Owner::Me(_)));
    }

    #[test]
    fn a_reused_pid_with_another_start_time_is_dead() {
        let mut r = Record::mine("wgsent3", Path::new("/x"), "wg-quick", false, vec![]);
        r.start_time += 1; // same pid, different process
        assert!(!r.owner_alive());
        assert!(matches!(r.clone().classify(), Owner::Dead(_)));
        r.pid = 0x7fff_fff0; // no such pid
        assert!(!r.owner_alive());
        r.netns += 1;
        assert!(matches!(r.classify(), Owner::Elsewhere(_)));
    }

    #[test]
    fn start_time_reads_past_a_name_with_parentheses() {
        assert!(start_time(my_pid()).unwrap() > 0);
        assert_eq!(start_time(0x7fff_fff0), None);
    }
}
