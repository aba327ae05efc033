//! The process's live tunnels and the one cleanup routine that every exit path uses:
//! `disconnect`, `emergencyCleanupSync`, the exit hooks, the converge step of `connect` and
//! the rollback of a failed `connect` all end in `cleanup_locked`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::confdir;
use crate::dns;
use crate::teardown::{self, TeardownReport};

/// A tunnel this process brought up (or is bringing up).
#[derive(Debug, Clone)]
pub struct Active {
    pub name: String,
    pub conf_path: PathBuf,
    pub full_tunnel: bool,
    pub backend: &'static str,
    pub started: Instant,
    /// The JavaScript environment (main thread or worker) that connected it.
    pub owner: u64,
}

static ACTIVE: Mutex<Vec<Active>> = Mutex::new(Vec::new());
/// Serialises lifecycle operations: an exit hook that fires during a `connect` waits for its
/// bring-up to finish (bounded by the subprocess timeouts) and then removes it.
static OP: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hold this while changing tunnels.
pub fn op_lock() -> MutexGuard<'static, ()> {
    lock(&OP)
}

pub fn insert(a: Active) {
    let mut v = lock(&ACTIVE);
    v.retain(|x| x.name != a.name);
    v.push(a);
}

pub fn get(name: &str) -> Option<Active> {
    lock(&ACTIVE).iter().find(|a| a.name == name).cloned()
}

/// The most recently connected live tunnel.
pub fn latest() -> Option<Active> {
    lock(&ACTIVE).last().cloned()
}

pub fn names() -> Vec<String> {
    lock(&ACTIVE).iter().map(|a| a.name.clone()).collect()
}

/// THE cleanup routine (caller holds `op_lock`): undo DNS, take the interface down with
/// teardownLinuxInterface (which removes the key file once the interface is gone), and
/// forget the tunnel when it is gone. Undoes bring-up in reverse order. Never fails.
pub fn cleanup_locked(name: &str, conf: Option<&Path>) -> TeardownReport {
    let conf = conf
        .map(Path::to_path_buf)
        .or_else(|| get(name).map(|a| a.conf_path))
        .unwrap_or_else(|| confdir::conf_path(name));
    dns::restore(name);
    let report = teardown::teardown_linux_interface(name, Some(&conf));
    if report.gone {
        lock(&ACTIVE).retain(|a| a.name != name);
    }
    report
}

/// Remove every tunnel of this process. What the exit hooks call. Never fails.
pub fn cleanup_owned() -> Vec<TeardownReport> {
    let _op = op_lock();
    names().iter().map(|n| cleanup_locked(n, None)).collect()
}

/// Remove the tunnels connected from JavaScript environment `owner` (its napi env cleanup
/// hook: a worker that ends takes its tunnels with it). Never fails.
pub fn cleanup_env(owner: u64) -> Vec<TeardownReport> {
    let _op = op_lock();
    let names: Vec<String> = lock(&ACTIVE)
        .iter()
        .filter(|a| a.owner == owner)
        .map(|a| a.name.clone())
        .collect();
    names.iter().map(|n| cleanup_locked(n, None)).collect()
}

/// `emergencyCleanupSync`: this process's tunnels, then a leftover `wgsent0` (the SDK's
/// contract) with its DNS change and key file. With nothing to clean it runs no subprocess.
pub fn emergency_cleanup() -> Vec<TeardownReport> {
    let mut reports = cleanup_owned();
    let _op = op_lock();
    let name = crate::config::DEFAULT_NAME;
    let conf = confdir::conf_path(name);
    if crate::netdev::exists(name) || dns::pending(name) || conf.exists() {
        reports.push(cleanup_locked(name, Some(&conf)));
    }
    reports
}
