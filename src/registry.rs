//! The process's live tunnels and the one cleanup routine that every exit path uses:
//! `disconnect`, `emergencyCleanupSync`, the exit hooks, the converge step of `connect`, the
//! rollback of a failed `connect`, the sweep of dead owners and the watchdog all end in
//! `cleanup_locked`.
//!
//! Locks, and why none of them can stall an exit:
//! - `OP`, this process's lifecycle mutex: lifecycle calls from JavaScript are also *ordered*
//!   (`Ticket`), so a `disconnect()` issued before an un-awaited `connect()` settles runs after
//!   it. Exit paths wait for `OP` at most `EXIT_BOUND`, and not at all when this process has
//!   no tunnel.
//! - one `NameLock` per tunnel name (see `state`), held by the owner for the tunnel's life and
//!   taken by whoever removes a dead owner's tunnel. Nothing ever waits on the lock of a name
//!   a live process owns: a sweep only *tries* locks, and skips names it cannot have.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::{self, Tunnel};
use crate::cmd;
use crate::confdir;
use crate::dns;
use crate::owner::{self, Owner, Record};
use crate::state::{NameLock, StateDir};
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
    /// Held for the tunnel's life: released (after the record is removed) when it goes.
    pub lock: Arc<NameLock>,
    /// The backend's handle, once `up` returned it (None while it runs).
    pub tunnel: Option<Arc<dyn Tunnel>>,
    /// The namespace-wide claim on the name (`state::NsClaim`), held likewise.
    pub ns_claim: Option<Arc<crate::state::NsClaim>>,
    /// The config the tunnel runs with now (set once it is up; replaced by `update`).
    pub live: Option<Arc<Live>>,
    /// Its kill switch (an nftables table owned by a socket of this process).
    pub kill_switch: Option<Arc<crate::nft::KillSwitch>>,
}

/// Take the kill switch of this process's tunnel `name` out of its entry (the cleanup
/// routine then leaves it; dropping it removes it).
pub fn take_kill_switch(name: &str) -> Option<Arc<crate::nft::KillSwitch>> {
    lock_mutex(&ACTIVE)
        .iter_mut()
        .find(|a| a.name == name)
        .and_then(|a| a.kill_switch.take())
}

/// Give the live tunnel `name` back the kill switch `take_kill_switch` took.
pub fn put_kill_switch(name: &str, ks: Arc<crate::nft::KillSwitch>) {
    if let Some(a) = lock_mutex(&ACTIVE).iter_mut().find(|a| a.name == name) {
        a.kill_switch = Some(ks);
    }
}

/// Record the kill switch of the live tunnel `name`.
pub fn set_kill_switch(name: &str, ks: crate::nft::KillSwitch) {
    if let Some(a) = lock_mutex(&ACTIVE).iter_mut().find(|a| a.name == name) {
        a.kill_switch = Some(Arc::new(ks));
    }
}

/// What a live tunnel runs with, for `update`: the caller's config as given (a patch applies
/// to it), as validated and resolved, and what bring-up decided.
pub struct Live {
    pub raw: crate::config::RawConfig,
    pub cfg: crate::config::TunnelConfig,
    /// The full tunnel's table, for a backend that routes it itself.
    pub table: Option<u32>,
    pub ipv6: bool,
    pub dns_method: Option<crate::dns::DnsMethod>,
}

/// Record what the live tunnel `name` runs with now.
pub fn set_live(name: &str, live: Live) {
    if let Some(a) = lock_mutex(&ACTIVE).iter_mut().find(|a| a.name == name) {
        a.full_tunnel = live.cfg.full_tunnel();
        a.live = Some(Arc::new(live));
    }
}

static ACTIVE: Mutex<Vec<Active>> = Mutex::new(Vec::new());
/// Serialises lifecycle operations in this process.
static OP: Mutex<()> = Mutex::new(());
/// A key file without a record is left alone this long: its writer may still be at work.
const ORPHAN_AGE: Duration = Duration::from_secs(10);
/// The longest an exit path waits for this process's own lifecycle mutex.
pub const EXIT_BOUND: Duration = Duration::from_secs(3);
/// The longest the watchdog waits for a dead owner's name lock (a sweeper may hold it).
const DEAD_OWNER_LOCK_BOUND: Duration = Duration::from_secs(3);

fn lock_mutex<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while changing tunnels: this process's lifecycle mutex (None when an exit path gave
/// up waiting for it).
pub struct Guard {
    _op: Option<MutexGuard<'static, ()>>,
}

/// The lifecycle mutex, waiting as long as it takes (the holder's steps are all bounded).
pub fn lock() -> Guard {
    Guard {
        _op: Some(lock_mutex(&OP)),
    }
}

/// The lifecycle mutex for an exit path: waits at most `EXIT_BOUND`, then goes on without it.
pub fn lock_for_exit() -> Guard {
    let got = cmd::wait_until(EXIT_BOUND, || match OP.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    });
    Guard { _op: got }
}

/// Call order of lifecycle operations from JavaScript: each async call takes a ticket on the
/// JS thread when it is made, and runs only after every earlier ticket has finished (or was
/// dropped unrun, e.g. when its environment was torn down first).
pub struct Ticket {
    n: u64,
    done: bool,
}

struct Tickets {
    next: u64,
    serving: u64,
    /// Tickets dropped before their turn: skipped when their turn comes.
    abandoned: Vec<u64>,
}

static TICKETS: Mutex<Tickets> = Mutex::new(Tickets {
    next: 0,
    serving: 0,
    abandoned: Vec::new(),
});
static TICKET_CV: Condvar = Condvar::new();

impl Tickets {
    fn advance(&mut self) {
        self.serving += 1;
        while let Some(i) = self.abandoned.iter().position(|n| *n == self.serving) {
            self.abandoned.swap_remove(i);
            self.serving += 1;
        }
        TICKET_CV.notify_all();
    }
}

impl Ticket {
    pub fn take() -> Ticket {
        let mut t = lock_mutex(&TICKETS);
        let n = t.next;
        t.next += 1;
        Ticket { n, done: false }
    }

    /// Wait for this ticket's turn, run `f`, then let the next one go.
    pub fn run<R>(mut self, f: impl FnOnce() -> R) -> R {
        let mut t = lock_mutex(&TICKETS);
        while t.serving != self.n {
            t = TICKET_CV.wait(t).unwrap_or_else(|p| p.into_inner());
        }
        drop(t);
        self.done = true;
        struct Next;
        impl Drop for Next {
            fn drop(&mut self) {
                lock_mutex(&TICKETS).advance();
            }
        }
        let _next = Next;
        f()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut t = lock_mutex(&TICKETS);
        if t.serving == self.n {
            t.advance();
        } else {
            t.abandoned.push(self.n);
        }
    }
}

pub fn insert(a: Active) {
    let mut v = lock_mutex(&ACTIVE);
    v.retain(|x| x.name != a.name);
    v.push(a);
}

/// Hand the backend's handle of `name` to the registry (it stops the tunnel from now on).
pub fn set_tunnel(name: &str, t: Arc<dyn Tunnel>) {
    if let Some(a) = lock_mutex(&ACTIVE).iter_mut().find(|a| a.name == name) {
        a.tunnel = Some(t);
    }
}

/// True when `name` is a tunnel of this process whose interface only this process can own
/// (a native backend's), so a check of the interface's kind does not apply to it.
pub fn is_own_native(name: &str) -> bool {
    get(name).is_some_and(|a| a.backend != backend::wg_quick::NAME)
}

/// True when the tun `name` is still the dying tunnel of a native backend's dead owner: the
/// trusted record names a native backend, and its owner is still exiting (a killed
/// multi-threaded process counts as dead once its main thread is a zombie, while its other
/// threads still hold the tun). `netdev::is_wireguard` cannot tell such a tun from a foreign
/// one; its backend's `reap` never deletes a link, it waits for the kernel to remove it with
/// its owner. Once the owner is gone, a tun of that name is someone else's.
pub fn is_dying_owners_tun(dir: &StateDir, name: &str) -> bool {
    let native = |r: &Record| r.backend != backend::wg_quick::NAME && !r.backend.is_empty();
    crate::netdev::driver(name).as_deref() == Some("tun")
        && matches!(owner::owner_of(dir, name),
            Owner::Dead(r) if native(&r) && owner::dying(r.pid, r.start_time))
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

/// Does tunnel `name` of this namespace still have a live owner (this process or another)?
pub fn is_live(dir: &StateDir, name: &str) -> bool {
    match owner::owner_of(dir, name) {
        Owner::Me(_) => get(name).is_some(),
        Owner::Alive(_) => true,
        _ => false,
    }
}

/// THE cleanup routine. The caller holds `lock()` (or gave up on it on an exit path) and the
/// name: either this process owns the tunnel (its lock is in `ACTIVE`) or the caller took
/// the name's lock. Undoes bring-up in reverse order: DNS, the tunnel (this process's: its
/// handle's `stop`; anyone else's, or one that never got a handle: `reap` of the backend its
/// record names, which for wg-quick is the three-step teardown that removes the key file once
/// the interface is gone), the ownership record, the watchdog, the name lock. While the
/// tunnel has a watchdog, its commands run through it, so a death mid-teardown is finished by
/// the watchdog. Never fails.
pub fn cleanup_locked(dir: &StateDir, name: &str, conf: Option<&Path>) -> TeardownReport {
    cleanup_locked_as(dir, name, conf, None)
}

/// `cleanup_locked`, with `fallback` standing in for the ownership record when there is none
/// (the watchdog's knowledge of its tunnel, after its state directory was removed).
fn cleanup_locked_as(
    dir: &StateDir,
    name: &str,
    conf: Option<&Path>,
    fallback: Option<Record>,
) -> TeardownReport {
    let active = get(name);
    let record = owner::read(dir, name).or(fallback);
    // The key file we wrote for this tunnel (in the state directory), whatever file the
    // caller names for step 1 of the teardown.
    let own_conf = active
        .as_ref()
        .map(|a| a.conf_path.clone())
        .or_else(|| record.as_ref().map(|r| r.conf_path.clone()))
        .unwrap_or_else(|| dir.file(&format!("{name}.conf")));
    let conf = conf
        .map(Path::to_path_buf)
        .unwrap_or_else(|| own_conf.clone());
    let full_tunnel = record.as_ref().is_some_and(|r| r.full_tunnel)
        || active.as_ref().is_some_and(|a| a.full_tunnel);
    let backend_name: String = active
        .as_ref()
        .map(|a| a.backend.to_string())
        .or_else(|| record.as_ref().map(|r| r.backend.clone()))
        .unwrap_or_default();
    let handle = active.as_ref().and_then(|a| a.tunnel.clone());
    let kill_switch = active.as_ref().and_then(|a| a.kill_switch.clone());
    let watchdog = active.and_then(|a| a.watchdog);
    let delegate = watchdog.clone().map(|w| w as Arc<dyn cmd::Delegate>);
    let others_live = |other: &str| other != name && is_live(dir, other);
    let mut report = cmd::with_delegate(delegate, || {
        dns::restore(&dir.path, dir.netns.inode, name, &others_live);
        let mut r = match &handle {
            Some(t) => t.stop(),
            None => {
                let mut rec = record
                    .clone()
                    .unwrap_or_else(|| Record::orphan(name, &conf));
                rec.conf_path = conf.clone();
                backend::by_name(&backend_name).reap(&rec)
            }
        };
        // The kill switch goes once the tunnel is gone (nothing leaks while it goes down): our
        // own table through its socket, a dead owner's by its name (its socket closed with
        // it, so the kernel has normally removed it already).
        if r.gone {
            let t = std::time::Instant::now();
            let done = match &kill_switch {
                Some(k) => k.remove().map(|()| true),
                // Best effort: most tunnels never had one (and a process without
                // CAP_NET_ADMIN cannot even look).
                None => Ok(crate::nft::remove_leftover(name).unwrap_or(false)),
            };
            match done {
                Ok(false) => {}
                Ok(true) => r.steps.push(crate::backend::embedded::step(
                    "kill switch",
                    true,
                    format!("removed table {}", crate::nft::table_name(name)),
                    t,
                )),
                Err(e) => r
                    .steps
                    .push(crate::backend::embedded::step("kill switch", false, e, t)),
            }
        }
        if r.gone && full_tunnel && backend::by_name(&backend_name).writes_config() {
            let own_live = |n: &str| get(n).is_some();
            if let Some(step) =
                backend::wg_quick::restore_rules_of_live_tunnels(dir, name, &own_live)
            {
                r.steps.push(step);
            }
        }
        r
    });
    if report.gone {
        if own_conf != conf && own_conf.starts_with(&dir.path) && confdir::shred(&own_conf) {
            report.steps.push(teardown::StepReport::note(
                "key-file",
                &format!("removed the tunnel's own key file {}", own_conf.display()),
            ));
        }
        if !matches!(owner::owner_of(dir, name), Owner::Alive(_)) {
            owner::remove(dir, name);
        }
        // Dropping the entry releases this process's name lock (after the record is gone).
        lock_mutex(&ACTIVE).retain(|a| a.name != name);
        if let Some(w) = watchdog {
            w.dismiss();
        }
    } else if report.existed {
        report.steps.push(teardown::StepReport::note(
            "keep",
            "the interface is still there: its record, key file and watchdog are kept",
        ));
    }
    report
}

/// `teardownLinuxInterface`: the explicit tool. A tunnel of this process or of a dead owner
/// gets the whole cleanup routine (DNS, record, watchdog too); a live owner's tunnel is
/// refused; any other interface gets the three teardown steps (which refuse anything that is
/// not WireGuard). Never fails.
pub fn teardown_named(name: &str, conf: Option<&Path>) -> TeardownReport {
    // Synchronous on the caller's event loop: a connect of this process in flight is waited
    // for only a bounded time.
    let _g = lock_for_exit();
    // This process's own tunnel goes through its handle even without a state directory.
    let own_stop = || get(name).and_then(|a| a.tunnel).map(|t| t.stop());
    let dir = match StateDir::existing() {
        Ok(d) => d,
        Err(e) => {
            // Nothing of that directory is read; the interface itself can still go.
            let mut r =
                own_stop().unwrap_or_else(|| teardown::teardown_linux_interface(name, conf));
            r.steps
                .push(teardown::StepReport::note("state", &e.to_string()));
            return r;
        }
    };
    let Some(dir) = dir else {
        return own_stop().unwrap_or_else(|| teardown::teardown_linux_interface(name, conf));
    };
    if get(name).is_some() {
        return cleanup_locked(&dir, name, conf);
    }
    if let Some(pid) = claimed_by_other(&dir, name) {
        return TeardownReport::refused(
            name,
            &format!("{name} belongs to live process {pid}; it was left alone"),
        );
    }
    match owner::owner_of(&dir, name) {
        Owner::Alive(r) => TeardownReport::refused(
            name,
            &format!(
                "{name} belongs to live process {}; it was left alone",
                r.pid
            ),
        ),
        Owner::Dead(_) | Owner::Me(_) => match NameLock::try_acquire(&dir, name) {
            Ok(Some(_held)) => cleanup_locked(&dir, name, conf),
            _ => TeardownReport::refused(name, "another process is removing it right now"),
        },
        Owner::Nobody | Owner::Stranger(_) => teardown::teardown_linux_interface(name, conf),
    }
}

/// Remove every tunnel of this process. What the exit hooks call: returns at once (no lock,
/// no file read) when this process has none. Never fails.
pub fn cleanup_owned() -> Vec<TeardownReport> {
    if names().is_empty() && !in_flight() {
        return Vec::new();
    }
    let _g = lock_for_exit();
    own_cleanup(|_| true)
}

fn own_cleanup(which: impl Fn(&Active) -> bool) -> Vec<TeardownReport> {
    let names: Vec<String> = lock_mutex(&ACTIVE)
        .iter()
        .filter(|a| which(a))
        .map(|a| a.name.clone())
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    // A state directory that vanished (someone removed it) is made anew: the cleanup routine
    // still restores DNS (from the copy inside the rewritten resolv.conf) and the interface.
    let dir = match StateDir::existing() {
        Ok(Some(d)) => Ok(d),
        Ok(None) => StateDir::create(),
        Err(e) => Err(e),
    };
    match dir {
        Ok(dir) => names
            .iter()
            .map(|n| cleanup_locked(&dir, n, None))
            .collect(),
        // The directory was replaced by something we cannot trust: our tunnels still go (we
        // know them from memory), without reading anything there.
        Err(e) => {
            let why = e.to_string();
            names
                .iter()
                .map(|n| {
                    let a = get(n);
                    let conf = a.as_ref().map(|a| a.conf_path.clone());
                    let mut r = match a.as_ref().and_then(|a| a.tunnel.clone()) {
                        Some(t) => t.stop(),
                        None => teardown::teardown_linux_interface(n, conf.as_deref()),
                    };
                    r.steps.push(teardown::StepReport::note("state", &why));
                    if r.gone {
                        lock_mutex(&ACTIVE).retain(|x| x.name != *n);
                        if let Some(w) = a.and_then(|a| a.watchdog) {
                            w.dismiss();
                        }
                    }
                    r
                })
                .collect()
        }
    }
}

/// Drop what this process's own failed connect of `name` wrote, when the interface there is
/// not one it made (a rollback that must not touch it): the key file, the record, the
/// watchdog and the entry (which releases the name lock). Caller holds `lock()`.
pub fn forget_own(dir: &StateDir, name: &str, conf: &Path) {
    confdir::shred(conf);
    if matches!(owner::owner_of(dir, name), Owner::Me(_)) {
        owner::remove(dir, name);
    }
    let gone = {
        let mut v = lock_mutex(&ACTIVE);
        let a = v.iter().position(|a| a.name == name).map(|i| v.remove(i));
        a
    };
    if let Some(w) = gone.and_then(|a| a.watchdog) {
        w.dismiss();
    }
}

/// `disconnect` of this process's own tunnel `name` (caller holds `lock()`).
pub fn cleanup_own(name: &str) -> Option<TeardownReport> {
    own_cleanup(|a| a.name == name).pop()
}

/// A connect of this process is running (the exit path then waits for it, bounded).
fn in_flight() -> bool {
    OP.try_lock().is_err()
}

/// Remove the tunnels connected from JavaScript environment `owner` (its napi env cleanup
/// hook: a worker that ends takes its tunnels with it). Never fails.
pub fn cleanup_env(owner: u64) -> Vec<TeardownReport> {
    if !lock_mutex(&ACTIVE).iter().any(|a| a.owner == owner) {
        return Vec::new();
    }
    let _g = lock_for_exit();
    own_cleanup(|a| a.owner == owner)
}

/// The watchdog's work once its owner `pid`/`start` is gone: with the name's lock (the dead
/// owner's is released by the kernel), and only if the record still names that dead owner
/// (a new owner may have taken the name).
pub fn cleanup_dead_owner(
    name: &str,
    pid: u32,
    start: u64,
    known: &crate::watchdog::Known,
) -> Option<TeardownReport> {
    let dir = match StateDir::existing() {
        Ok(Some(d)) => d,
        Ok(None) => StateDir::create().ok()?,
        Err(_) => return None,
    };
    let _held = NameLock::acquire(&dir, name, DEAD_OWNER_LOCK_BOUND)
        .ok()
        .flatten()?;
    match owner::owner_of(&dir, name) {
        Owner::Dead(r) if r.pid == pid && r.start_time == start => Some(reap_dead(&dir, &r)),
        // The owner died inside `claim`, after creating its record and before writing it:
        // nothing else exists yet (the record comes before the interface).
        Owner::Nobody if owner::unreadable(&dir, name) => {
            owner::remove(&dir, name);
            None
        }
        // The state directory was removed while the tunnel was up (its record with it), and
        // made anew by us or by another agent: the tunnel this watchdog was started for is
        // still its dead owner's (we hold the name's lock and no live agent claims the name),
        // so it goes. DNS comes back from the copy inside the rewritten resolv.conf. A
        // wg-quick interface is still there to show it. An embedded tun died with its owner:
        // its DNS and rules go by what the watchdog knows (its backend and table), only if
        // the directory it started with was really removed (else whoever removed the record
        // cleaned up already) and never for a table that a live record names.
        Owner::Nobody if claimed_by_other_than(name, pid, start).is_none() => {
            if known.backend == backend::embedded::NAME && known.state_dir_removed() {
                let live_tables = owner::live_tables(&dir);
                let mut rec = Record::orphan(name, Path::new(""));
                rec.backend = known.backend.clone();
                rec.table = known.table.filter(|t| !live_tables.contains(t));
                rec.full_tunnel = known.table.is_some();
                Some(cleanup_locked_as(&dir, name, None, Some(rec)))
            } else if crate::netdev::exists(name) {
                Some(cleanup_locked(&dir, name, None))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// What a sweep did, and what it would not read.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub reports: Vec<TeardownReport>,
    pub warnings: Vec<String>,
}

/// Sweep what dead processes left in this namespace (caller holds `lock()`): their tunnels,
/// DNS changes and records (also unreadable ones), and key files no live owner claims in the
/// private config dir. Never touches a tunnel whose owner is alive, a name another process is
/// working on, nor an interface without a record. Reads nothing from a directory it cannot
/// trust (the warning says why). Cheap (no subprocess) when there is nothing to remove.
pub fn sweep_dead_locked(dir: &StateDir) -> SweepReport {
    let mut out = SweepReport::default();
    let mut names = owner::names(dir);
    names.extend(dns::entries(&dir.path));
    names.sort();
    names.dedup();
    for name in names {
        if get(&name).is_some() {
            continue;
        }
        let o = owner::owner_of(dir, &name);
        let stale_dns =
            matches!(o, Owner::Nobody) && dns::pending(&dir.path, dir.netns.inode, &name);
        let act = matches!(o, Owner::Dead(_) | Owner::Stranger(_))
            || owner::unreadable(dir, &name)
            || stale_dns;
        if !act {
            continue;
        }
        // Only with the name's lock: another process may be at work on it.
        let Ok(Some(_held)) = NameLock::try_acquire(dir, &name) else {
            continue;
        };
        match owner::owner_of(dir, &name) {
            Owner::Dead(r) => out.reports.push(reap_dead(dir, &r)),
            Owner::Stranger(_) => owner::remove(dir, &name),
            Owner::Nobody => {
                if owner::unreadable(dir, &name) {
                    owner::remove(dir, &name);
                }
                dns::restore(&dir.path, dir.netns.inode, &name, &|o| is_live(dir, o));
            }
            _ => {}
        }
    }
    sweep_orphan_keys(dir);
    out
}

/// The pid of a live process (root or our uid, not this process) that claims `name` in this
/// network namespace, whatever its state directory (`state::NsClaim`).
pub fn claimed_elsewhere(name: &str) -> Option<u32> {
    crate::state::NsClaim::holder(name)
        .filter(|(pid, uid)| {
            *pid != std::process::id() && (*uid == 0 || *uid == crate::trust::euid())
        })
        .map(|(pid, _)| pid)
}

/// `claimed_elsewhere`, except for a claim still held by the dead owner that `name`'s record
/// in `dir` names, while it is exiting (see `claimed_by_other_than`).
pub fn claimed_by_other(dir: &StateDir, name: &str) -> Option<u32> {
    match owner::owner_of(dir, name) {
        Owner::Dead(r) => claimed_by_other_than(name, r.pid, r.start_time),
        _ => claimed_elsewhere(name),
    }
}

/// `claimed_elsewhere`, except for a claim still held by the dead owner (`pid`, `start`)
/// itself: a killed multi-threaded process shows as a zombie (so as dead) while its other
/// threads are still exiting and its descriptors, the claim's socket among them, are not
/// closed yet.
fn claimed_by_other_than(name: &str, pid: u32, start: u64) -> Option<u32> {
    claimed_elsewhere(name).filter(|p| *p != pid || !owner::dying(pid, start))
}

/// A dead owner's tunnel (caller holds its name lock): the cleanup routine, then the caller's
/// own config file the record names (`connectConfigFile`), which its owner can no longer
/// remove: only `<name>.conf`, and only if trusted.
fn reap_dead(dir: &StateDir, r: &owner::Record) -> TeardownReport {
    if let Some(pid) = claimed_by_other_than(&r.name, r.pid, r.start_time) {
        // A live agent whose state lives elsewhere has the name now: the dead owner's record
        // goes, its tunnel (now the other agent's) stays.
        owner::remove(dir, &r.name);
        return TeardownReport::refused(
            &r.name,
            &format!(
                "{} is claimed by live process {pid}; only the stale record was removed",
                r.name
            ),
        );
    }
    let report = cleanup_locked(dir, &r.name, Some(&r.conf_path));
    if report.gone {
        if let Some(src) = &r.source {
            let named = src
                .file_name()
                .is_some_and(|f| *f == *format!("{}.conf", r.name));
            if named {
                crate::trust::shred_trusted(src);
            }
        }
    }
    report
}

/// Key files in this namespace's state directory whose tunnel has no live owner, no lock
/// holder and no interface: a crashed run's (e.g. one killed inside `claim`).
fn sweep_orphan_keys(dir: &StateDir) {
    for file in dir.list() {
        let Some(name) = file.strip_suffix(".conf") else {
            continue;
        };
        if crate::config::validate_interface_name(name).is_err() || get(name).is_some() {
            continue;
        }
        if owner::read(dir, name).is_some() || crate::netdev::exists(name) {
            continue;
        }
        let path = dir.file(&file);
        let old = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_AGE);
        if !old {
            continue;
        }
        if let Ok(Some(_held)) = NameLock::try_acquire(dir, name) {
            confdir::shred(&path);
        }
    }
}

/// `emergencyCleanupSync`: this process's tunnels, then what dead owners left. A tunnel whose
/// owner is alive, or that has no record, is left alone. No subprocess when nothing exists.
pub fn emergency_cleanup() -> SweepReport {
    let _g = lock_for_exit();
    let mut out = SweepReport {
        reports: own_cleanup(|_| true),
        warnings: Vec::new(),
    };
    match StateDir::existing() {
        Ok(Some(dir)) => {
            let s = sweep_dead_locked(&dir);
            out.reports.extend(s.reports);
            out.warnings.extend(s.warnings);
        }
        Ok(None) => {}
        Err(e) => out
            .warnings
            .push(format!("{e} (nothing in it was read or removed)")),
    }
    // Nothing in `<tmp>/sentinel-wg` is read here; one that another user prepared is still
    // worth a warning (the SDK writes its keys there, and `connectConfigFile` will refuse it).
    let cdir = confdir::config_dir();
    if std::fs::symlink_metadata(&cdir).is_ok() {
        if let Err(e) = confdir::check_private_dir(&cdir) {
            out.warnings.push(e.to_string());
        }
    }
    out
}
