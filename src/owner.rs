//! Ownership records: who owns which tunnel, so a new process can tell a live agent's tunnel
//! from a dead one's, and sweep only the latter.
//!
//! `<state dir>/<name>.owner` (see `state`: one directory per network namespace, independent
//! of `TMPDIR`) is written (exclusively) before the interface exists and removed after it is
//! gone. It names the owner by pid *and* process start time, so a reused pid is not mistaken
//! for the owner, and the network namespace by inode and cookie. The owner holds the name's
//! `NameLock` for the tunnel's whole life; whoever removes a dead owner's tunnel takes that
//! lock first, so two cleaners never race and a live owner's tunnel is never touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::confdir;
use crate::error::{Result, WgError};
use crate::state::{Netns, StateDir};

pub const SUFFIX: &str = ".owner";

/// One tunnel's ownership record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub pid: u32,
    /// The owner's start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Inode of the owner's network namespace.
    pub netns: u64,
    /// `SO_NETNS_COOKIE` of the owner's network namespace (0: unknown).
    pub netns_cookie: u64,
    pub conf_path: PathBuf,
    pub backend: String,
    pub full_tunnel: bool,
    /// DNS servers applied (empty: DNS untouched).
    pub dns: Vec<String>,
    pub watchdog_pid: Option<u32>,
    pub created_unix_ms: u64,
    /// The full tunnel's routing table and fwmark, for backends that route it themselves
    /// (their rules are removed by exact match from it). None: none of ours.
    pub table: Option<u32>,
    /// The caller's own config file (`connectConfigFile`), removed with a dead owner's tunnel.
    pub source: Option<PathBuf>,
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
    /// A process that is gone (or a reused pid): its tunnel may be swept, by whoever takes
    /// the name's lock.
    Dead(Record),
    /// A record of another namespace that had this inode number before (its cookie differs):
    /// its owner's interfaces were never here. The record is garbage; nothing else is touched.
    Stranger(Record),
}

pub fn record_file(name: &str) -> String {
    format!("{name}{SUFFIX}")
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

/// True while the process `pid` that started at `start` is exiting: its thread-group leader
/// is already a zombie (so it counts as dead), and its other threads may still hold its
/// descriptors (a tun, a claim's socket) for a moment.
pub fn dying(pid: u32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(end) = stat.rfind(')') else {
        return false;
    };
    let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
    matches!(fields.first(), Some(&"Z") | Some(&"X"))
        && fields.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(start)
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Record {
    /// A record naming this process as the owner of `name` in namespace `ns`.
    pub fn mine(
        name: &str,
        ns: Netns,
        conf_path: &Path,
        backend: &str,
        full_tunnel: bool,
        dns: Vec<String>,
    ) -> Self {
        Record {
            name: name.to_string(),
            pid: my_pid(),
            start_time: my_start_time(),
            netns: ns.inode,
            netns_cookie: ns.cookie,
            conf_path: conf_path.to_path_buf(),
            backend: backend.to_string(),
            full_tunnel,
            dns,
            watchdog_pid: None,
            created_unix_ms: now_ms(),
            table: None,
            source: None,
        }
    }

    /// What is known of a tunnel that has no (readable) record: its name and where its key
    /// file would be; its backend is taken to be wg-quick (the only one that leaves an
    /// interface behind without a record).
    pub fn orphan(name: &str, conf_path: &Path) -> Self {
        Record {
            name: name.to_string(),
            pid: 0,
            start_time: 0,
            netns: 0,
            netns_cookie: 0,
            conf_path: conf_path.to_path_buf(),
            backend: String::new(),
            full_tunnel: false,
            dns: Vec::new(),
            watchdog_pid: None,
            created_unix_ms: 0,
            table: None,
            source: None,
        }
    }

    fn render(&self) -> String {
        format!(
            "name={}\npid={}\nstart_time={}\nnetns={}\nnetns_cookie={}\nconf_path={}\nbackend={}\nfull_tunnel={}\ndns={}\nwatchdog_pid={}\ncreated_unix_ms={}\ntable={}\nsource={}\n",
            self.name,
            self.pid,
            self.start_time,
            self.netns,
            self.netns_cookie,
            self.conf_path.display(),
            self.backend,
            self.full_tunnel,
            self.dns.join(","),
            self.watchdog_pid.map(|p| p.to_string()).unwrap_or_default(),
            self.created_unix_ms,
            self.table.map(|t| t.to_string()).unwrap_or_default(),
            // A path with a line break could forge lines: such a source is not recorded.
            self.source
                .as_ref()
                .map(|p| p.display().to_string())
                .filter(|p| !p.contains(['\n', '\r']))
                .unwrap_or_default()
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
            netns_cookie: get("netns_cookie")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
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
            table: get("table").and_then(|t| t.parse().ok()),
            source: get("source").filter(|p| !p.is_empty()).map(PathBuf::from),
        })
    }

    pub fn is_mine(&self) -> bool {
        self.pid == my_pid() && self.start_time == my_start_time()
    }

    pub fn owner_alive(&self) -> bool {
        alive(self.pid, self.start_time)
    }

    fn classify(self, ns: Netns) -> Owner {
        let cookie_differs =
            self.netns_cookie != 0 && ns.cookie != 0 && self.netns_cookie != ns.cookie;
        if self.netns != ns.inode || cookie_differs {
            Owner::Stranger(self)
        } else if self.is_mine() {
            Owner::Me(self)
        } else if self.owner_alive() {
            Owner::Alive(self)
        } else {
            Owner::Dead(self)
        }
    }
}

pub fn read(dir: &StateDir, name: &str) -> Option<Record> {
    let bytes = dir.read(&record_file(name))?;
    Record::parse(std::str::from_utf8(&bytes).ok()?)
}

pub fn owner_of(dir: &StateDir, name: &str) -> Owner {
    match read(dir, name) {
        None => Owner::Nobody,
        Some(r) => r.classify(dir.netns),
    }
}

/// Write the record exclusively. Fails with `WG_NAME_IN_USE` when a live process owns the
/// name. The caller holds the name's lock.
pub fn claim(dir: &StateDir, rec: &Record) -> Result<()> {
    if let Owner::Alive(other) = owner_of(dir, &rec.name) {
        return Err(WgError::NameInUse {
            name: rec.name.clone(),
            pid: other.pid,
        });
    }
    confdir::write_private_file(&dir.file(&record_file(&rec.name)), rec.render().as_bytes())
}

/// Replace this process's record of a live tunnel (after `update`) in one `rename`, so it
/// is whole, old or new, whenever an owner dies. The caller holds the name's lock.
pub fn rewrite(dir: &StateDir, rec: &Record) -> Result<()> {
    let tmp = dir.file(&format!(".{}.tmp", record_file(&rec.name)));
    confdir::write_private_file(&tmp, rec.render().as_bytes())?;
    std::fs::rename(&tmp, dir.file(&record_file(&rec.name))).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        WgError::io(format!("cannot replace the record of {}", rec.name), &e)
    })
}

/// Remove the record of `name` with a single `unlink`, so it is either whole or gone. A record
/// holds no secret; zero-filling it first (like a key file) left a window, between the
/// zero-fill and the unlink, in which a SIGKILLed owner left an unreadable record that neither
/// its watchdog nor any sweep would ever remove.
pub fn remove(dir: &StateDir, name: &str) {
    let _ = fs::remove_file(dir.file(&record_file(name)));
    // A `rewrite` cut short before its rename.
    let _ = fs::remove_file(dir.file(&format!(".{}.tmp", record_file(name))));
}

/// True when `name` has a record file that does not parse: one cut short by a SIGKILL between
/// its creation and its write in `claim`. Records are only written under the name's lock, so
/// with the lock held an unreadable record is never a live writer's.
pub fn unreadable(dir: &StateDir, name: &str) -> bool {
    fs::symlink_metadata(dir.file(&record_file(name))).is_ok() && read(dir, name).is_none()
}

/// Names with a record file (readable or not) in the state directory.
pub fn names(dir: &StateDir) -> Vec<String> {
    dir.list()
        .into_iter()
        .filter_map(|f| f.strip_suffix(SUFFIX).map(String::from))
        .filter(|n| crate::config::validate_interface_name(n).is_ok())
        .collect()
}

/// The full-tunnel tables that records of live owners (this process included) name.
pub fn live_tables(dir: &StateDir) -> Vec<u32> {
    list_classified(dir)
        .into_iter()
        .filter_map(|o| match o {
            Owner::Me(r) | Owner::Alive(r) => r.table,
            _ => None,
        })
        .collect()
}

/// Records of this namespace's directory with their owner's state.
pub fn list_classified(dir: &StateDir) -> Vec<Owner> {
    names(dir)
        .iter()
        .filter_map(|n| read(dir, n))
        .map(|r| r.classify(dir.netns))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_process_is_dying_until_reaped_and_never_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_time(pid).expect("the child runs");
        assert!(alive(pid, start));
        assert!(!dying(pid, start));
        child.kill().unwrap();
        // Not reaped yet: a zombie, dead but still exiting as far as its pid goes.
        let zombie = crate::cmd::wait_until(std::time::Duration::from_secs(5), || {
            start_time(pid).is_none().then_some(())
        });
        assert!(zombie.is_some());
        assert!(!alive(pid, start));
        assert!(dying(pid, start));
        assert!(
            !dying(pid, start + 1),
            "another start time is another process"
        );
        child.wait().unwrap();
        assert!(!dying(pid, start));
    }

    #[test]
    fn a_record_round_trips_and_identifies_this_process() {
        let ns = crate::state::netns();
        let r = Record::mine(
            "wgsent3",
            ns,
            Path::new("/tmp/x/wgsent3.conf"),
            "wg-quick",
            true,
            vec!["10.8.0.1".into()],
        );
        let mut r = r;
        r.table = Some(51821);
        assert!(r.is_mine() && r.owner_alive());
        let back = Record::parse(&r.render()).unwrap();
        assert_eq!(back, r);
        assert!(matches!(back.classify(ns), Owner::Me(_)));
    }

    #[test]
    fn a_reused_pid_with_another_start_time_is_dead() {
        let ns = crate::state::netns();
        let mut r = Record::mine("wgsent3", ns, Path::new("/x"), "wg-quick", false, vec![]);
        r.start_time += 1; // same pid, different process
        assert!(!r.owner_alive());
        assert!(matches!(r.clone().classify(ns), Owner::Dead(_)));
        r.pid = 0x7fff_fff0; // no such pid
        assert!(!r.owner_alive());
        r.netns_cookie = ns.cookie.wrapping_add(1);
        assert!(matches!(r.clone().classify(ns), Owner::Stranger(_)));
        r.netns += 1;
        assert!(matches!(r.classify(ns), Owner::Stranger(_)));
    }

    #[test]
    fn start_time_reads_past_a_name_with_parentheses() {
        assert!(start_time(my_pid()).unwrap() > 0);
        assert_eq!(start_time(0x7fff_fff0), None);
    }
}
