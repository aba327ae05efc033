//! The process's live tunnels and the one cleanup routine that every exit path uses:
//! `disconnect`, `emergencyCleanupSync`, the exit hooks, the converge step of `connect`, the
//! rollback of a failed `connect`, the sweep of dead owners and the watchdog all end in
//! `cleanup_locked`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::confdir;
use crate::dns;
use crate::netdev;
use crate::owner::{self, DirLock, Owner};
use crate::teardown::{self, TeardownReport};
use crate::watchdog::Watchdog;

/// A tunnel this process brought up (or is bringing up).
#[derive(Clone)]
pub struct Active {
    pub name: String,
    pub conf_path: PathBuf,
    pub full_tunnel: bool,
    pub backend: &'static str,
    pub started: Instant,
    /// The JavaScript environment (main thread or worker) that connected it.
    pub owner: u64,
    pub watchdog: Option<Arc<Watchdog>>,
}

static ACTIVE: Mutex<Vec<Active>> = Mutex::new(Vec::new());
/// Serialises lifecycle operations in this process: an exit hook that fires during a
/// `connect` waits for its bring-up to finish (bounded by the subprocess timeouts) and then
/// removes it.
static OP: Mutex<()> = Mutex::new(());
/// A key file without a record is left alone this long: its writer may still be at work.
const ORPHAN_AGE: Duration = Duration::from_secs(10);

fn lock_mutex<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while changing tunnels: this process's lifecycle mutex, then the config directory's
/// cross-process lock (when the directory exists).
pub struct Guard {
    _dir: Option<DirLock>,
    _op: MutexGuard<'static, ()>,
}

pub fn lock() -> Guard {
    let op = lock_mutex(&OP);
    // A lock that cannot be had within its bound is not worth hanging an exit path over.
    let dir = DirLock::acquire().ok().flatten();
    Guard { _dir: dir, _op: op }
}

pub fn insert(a: Active) {
    let mut v = lock_mutex(&ACTIVE);
    v.retain(|x| x.name != a.name);
    v.push(a);
}

pub fn get(name: &str) -> Option<Active> {
    lock_mutex(&ACTIVE).iter().find(|a| a.name == name).cloned()
}

/// The most recently connected live tunnel.
pub fn latest() -> Option<Active> {
    lock_mutex(&ACTIVE).last().cloned()
}

pub fn names() -> Vec<String> {
    lock_mutex(&ACTIVE).iter().map(|a| a.name.clone()).collect()
}

/// THE cleanup routine (caller holds `lock()`): undo DNS, take the interface down with
/// teardownLinuxInterface (which removes the key file once the interface is gone), then drop
/// the ownership record, dismiss the watchdog and forget the tunnel. Undoes bring-up in
/// reverse order. While the tunnel has a watchdog, its commands run through it, so a death
/// mid-teardown is finished by the watchdog. Never fails.
pub fn cleanup_locked(name: &str, conf: Option<&Path>) -> TeardownReport {
    let active = get(name);
    let conf = conf
        .map(Path::to_path_buf)
        .or_else(|| active.as_ref().map(|a| a.conf_path.clone()))
        .unwrap_or_else(|| confdir::conf_path(name));
    let watchdog = active.and_then(|a| a.watchdog);
    let delegate = watchdog.clone().map(|w| w as Arc<dyn cmd::Delegate>);
    let report = cmd::with_delegate(delegate, || {
        dns::restore(name);
        teardown::teardown_linux_interface(name, Some(&conf))
    });
    if report.gone {
        if !matches!(owner::owner_of(name), Owner::Alive(_) | Owner::Elsewhere(_)) {
            owner::remove(name);
        }
        lock_mutex(&ACTIVE).retain(|a| a.name != name);
        if let Some(w) = watchdog {
            w.dismiss();
        }
    }
    report
}

/// `teardownLinuxInterface`: the explicit tool. A tunnel of this process or of a dead owner
/// gets the whole cleanup routine (DNS, record, watchdog too); any other interface just the
/// three teardown steps. Never fails.
pub fn teardown_named(name: &str, conf: Option<&Path>) -> TeardownReport {
    let _g = lock();
    if get(name).is_some() || matches!(owner::owner_of(name), Owner::Dead(_)) {
        return cleanup_locked(name, conf);
    }
    teardown::teardown_linux_interface(name, conf)
}

/// Remove every tunnel of this process. What the exit hooks call. Never fails.
pub fn cleanup_owned() -> Vec<TeardownReport> {
    let _g = lock();
    names().iter().map(|n| cleanup_locked(n, None)).collect()
}

/// Remove the tunnels connected from JavaScript environment `owner` (its napi env cleanup
/// hook: a worker that ends takes its tunnels with it). Never fails.
pub fn cleanup_env(owner: u64) -> Vec<TeardownReport> {
    let _g = lock();
    let names: Vec<String> = lock_mutex(&ACTIVE)
        .iter()
        .filter(|a| a.owner == owner)
        .map(|a| a.name.clone())
        .collect();
    names.iter().map(|n| cleanup_locked(n, None)).collect()
}

/// The watchdog's work once its owner `pid`/`start` is gone: under the directory lock, and
/// only if the record still names that dead owner (a new owner may have taken the name).
pub fn cleanup_dead_owner(name: &str, pid: u32, start: u64) -> Option<TeardownReport> {
    let _g = lock();
    match owner::owner_of(name) {
        Owner::Dead(r) if r.pid == pid && r.start_time == start => {
            Some(cleanup_locked(name, Some(&r.conf_path)))
        }
        // The owner died inside `claim`, after creating its record and before writing it:
        // nothing else exists yet (the record comes before the interface).
        Owner::Nobody if owner::unreadable(name) => {
            owner::remove(name);
            None
        }
        _ => None,
    }
}

/// Sweep what dead processes left in this namespace (caller holds `lock()`): their tunnels,
/// DNS changes, records (also unreadable ones), and key files no live owner claims. Never
/// touches a tunnel whose owner is alive, nor an interface without a record. Cheap (no
/// subprocess) when there is nothing to remove.
pub fn sweep_dead_locked() -> Vec<TeardownReport> {
    let mut reports = Vec::new();
    for o in owner::list_classified() {
        if let Owner::Dead(r) = o {
            reports.push(cleanup_locked(&r.name, Some(&r.conf_path)));
        }
    }
    let Ok(rd) = std::fs::read_dir(confdir::config_dir()) else {
        return reports;
    };
    for entry in rd.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some((name, ext)) = file.rsplit_once('.') else {
            continue;
        };
        if !matches!(ext, "conf" | "dns" | "resolv" | "owner") || get(name).is_some() {
            continue;
        }
        if !matches!(owner::owner_of(name), Owner::Nobody | Owner::Dead(_)) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_AGE);
        if !old {
            continue;
        }
        match ext {
            "conf" if !netdev::exists(name) => {
                confdir::shred(&entry.path());
            }
            "dns" | "resolv" => {
                dns::restore(name);
            }
            "owner" if owner::unreadable(name) => {
                owner::remove(name);
            }
            _ => {}
        }
    }
    reports
}

/// `emergencyCleanupSync`: this process's tunnels, then what dead owners left. A tunnel whose
/// owner is alive, or that has no record, is left alone. No subprocess when nothing exists.
pub fn emergency_cleanup() -> Vec<TeardownReport> {
    let _g = lock();
    let mut reports: Vec<TeardownReport> =
        names().iter().map(|n| cleanup_locked(n, None)).collect();
    reports.extend(sweep_dead_locked());
    reports
}
