//! teardownLinuxInterface: remove a tunnel interface in three escalating, best-effort steps,
//! then its leftovers, then its config file. Never fails; the report says what ran.
//!
//! 1. `wg-quick down <confPath>`: the temp-dir config case (the seed's bug);
//! 2. `wg-quick down <name>`: an `/etc/wireguard/<name>.conf` install;
//! 3. `ip link delete dev <name>`: a wedged interface no config maps back to, followed by a
//!    sweep of what wg-quick would have removed with it (its policy rules and nft table).
//!
//! It stops at the first step after which the interface is gone. The config file is
//! zero-filled and deleted only then: a config deleted before a failed down could never be
//! used to take the interface down again.
//!
//! It never deletes what is not WireGuard: an interface whose kernel driver is not
//! `wireguard`, nor a TUN served by a userspace WireGuard, is refused by name, whatever the
//! caller asked. And it never hands wg-quick a file another user could have prepared (wg-quick
//! runs a file's `PostDown` as root): steps 1 and 2 run only for a file that passes the trust
//! checks (`trust::open_trusted_path`: ours, in directories only root and we can change) and
//! the same strict parser as the compat path (no hook keys, no `SaveConfig`). Otherwise step
//! 3 does what wg-quick would have done, without running the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd;
use crate::netdev;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the kernel to drop the interface after a step reported success.
const GONE_BOUND: Duration = Duration::from_secs(2);

/// One step of a teardown.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// `wg-quick down <conf>`, `wg-quick down <name>`, `ip link delete`, `sweep`.
    pub step: String,
    /// Whether the step was run (false: skipped, `detail` says why).
    pub ran: bool,
    /// Whether the step's command succeeded.
    pub ok: bool,
    pub detail: String,
    pub elapsed_ms: f64,
}

/// What a teardown did.
#[derive(Debug, Clone, PartialEq)]
pub struct TeardownReport {
    pub name: String,
    /// The interface existed when the teardown started.
    pub existed: bool,
    /// The interface does not exist now.
    pub gone: bool,
    pub steps: Vec<StepReport>,
    /// The config file was zero-filled and deleted.
    pub config_removed: bool,
    pub config_path: Option<String>,
}

impl StepReport {
    /// A line of information in a report (nothing was run).
    pub fn note(step: &str, detail: &str) -> Self {
        skipped(step, detail)
    }
}

impl TeardownReport {
    /// A report for a call that could not even start (bad arguments): nothing was touched.
    pub fn refused(name: &str, why: &str) -> Self {
        TeardownReport {
            name: name.to_string(),
            existed: crate::config::validate_interface_name(name).is_ok() && netdev::exists(name),
            gone: false,
            steps: vec![skipped("all", why)],
            config_removed: false,
            config_path: None,
        }
    }
}

fn skipped(step: &str, why: &str) -> StepReport {
    StepReport {
        step: step.into(),
        ran: false,
        ok: false,
        detail: why.into(),
        elapsed_ms: 0.0,
    }
}

fn run_step(step: &str, program: &Path, args: &[&str]) -> StepReport {
    let t = std::time::Instant::now();
    let (ok, detail) = match cmd::run(program, args, None, STEP_TIMEOUT) {
        Ok(o) if o.success => (true, "ok".to_string()),
        Ok(o) => (false, o.describe()),
        Err(e) => (false, e),
    };
    StepReport {
        step: step.into(),
        ran: true,
        ok,
        detail,
        elapsed_ms: t.elapsed().as_secs_f64() * 1000.0,
    }
}

/// After a step: is the interface gone? A step that succeeded gets a bounded wait for the
/// kernel; after a failed one a single look is enough.
fn gone_after(name: &str, step: &StepReport) -> bool {
    if !step.ok {
        return !netdev::exists(name);
    }
    cmd::wait_until(GONE_BOUND, || (!netdev::exists(name)).then_some(())).is_some()
}

/// wg-quick takes the interface name from the file name: `<conf>` must be `<name>.conf`, or
/// step 1 would take down another tunnel.
fn conf_names(conf: &Path, name: &str) -> bool {
    conf.extension().is_some_and(|e| e == "conf")
        && conf
            .file_stem()
            .is_some_and(|s| s == std::ffi::OsStr::new(name))
}

/// A config file wg-quick may be given: trusted (see the module doc), named `<name>.conf`,
/// and free of anything the strict parser refuses. Returns the checked (canonical) path.
fn trusted_conf(conf: &Path, name: &str) -> Result<PathBuf, String> {
    use std::io::Read;
    if !conf_names(conf, name) {
        return Err(format!("{} is not {name}.conf", conf.display()));
    }
    let (canon, f) =
        crate::trust::open_trusted_path(conf).map_err(|e| format!("not trusted: {e}"))?;
    if !conf_names(&canon, name) {
        return Err(format!(
            "{} resolves to {}",
            conf.display(),
            canon.display()
        ));
    }
    let mut text = String::new();
    f.take(crate::config::MAX_CONF_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    crate::config::parse_wg_quick(&text).map_err(|e| format!("refused: {e}"))?;
    Ok(canon)
}

/// Remove interface `name` (see the module doc). `conf_path` is the config the tunnel was
/// brought up from, if known. Never panics, never fails.
pub fn teardown_linux_interface(name: &str, conf_path: Option<&Path>) -> TeardownReport {
    let mut report = TeardownReport {
        name: name.to_string(),
        existed: netdev::exists(name),
        gone: false,
        steps: Vec::new(),
        config_removed: false,
        config_path: conf_path.map(|p| p.display().to_string()),
    };
    if crate::config::validate_interface_name(name).is_err() {
        report
            .steps
            .push(skipped("all", "not a valid interface name"));
        report.gone = !report.existed;
        return report;
    }
    if report.existed && !netdev::is_wireguard(name) {
        let driver = netdev::driver(name).unwrap_or_else(|| "unknown".into());
        report.steps.push(skipped(
            "all",
            &format!(
                "{name} is not a WireGuard interface (driver {driver}): refusing to delete it"
            ),
        ));
        return report;
    }
    if report.existed {
        let wg_quick = cmd::find_program("wg-quick");
        let conf = conf_path.filter(|p| p.exists());
        // Step 1: the config we brought it up from.
        match (&wg_quick, conf.map(|c| trusted_conf(c, name))) {
            (None, _) => report
                .steps
                .push(skipped("wg-quick down <conf>", "wg-quick not installed")),
            (_, None) => report
                .steps
                .push(skipped("wg-quick down <conf>", "no config file")),
            (_, Some(Err(why))) => report.steps.push(skipped("wg-quick down <conf>", &why)),
            (Some(wq), Some(Ok(c))) => {
                let c = c.to_string_lossy();
                let step = run_step("wg-quick down <conf>", wq, &["down", &c]);
                report.gone = gone_after(name, &step);
                report.steps.push(step);
            }
        }
        // Step 2: an /etc/wireguard install of the same name.
        if !report.gone {
            let etc: PathBuf = format!("/etc/wireguard/{name}.conf").into();
            match (&wg_quick, etc.exists()) {
                (None, _) => report
                    .steps
                    .push(skipped("wg-quick down <name>", "wg-quick not installed")),
                (_, false) => report
                    .steps
                    .push(skipped("wg-quick down <name>", "no /etc/wireguard config")),
                (Some(wq), true) => match trusted_conf(&etc, name) {
                    Err(why) => report.steps.push(skipped("wg-quick down <name>", &why)),
                    Ok(_) => {
                        let step = run_step("wg-quick down <name>", wq, &["down", name]);
                        report.gone = gone_after(name, &step);
                        report.steps.push(step);
                    }
                },
            }
        }
        // Step 3: delete the link itself, then what wg-quick would have removed with it.
        if !report.gone {
            match cmd::find_program("ip") {
                Some(ip) => {
                    // Which policy rules are this interface's: its fwmark (= wg-quick's table),
                    // read before the interface goes.
                    let mark = fwmark_of(name);
                    let step = run_step("ip link delete", &ip, &["link", "delete", "dev", name]);
                    report.gone = gone_after(name, &step);
                    report.steps.push(step);
                    if report.gone {
                        report.steps.push(sweep(&ip, name, mark));
                    }
                }
                None => report
                    .steps
                    .push(skipped("ip link delete", "ip (iproute2) not installed")),
            }
        }
    } else {
        report.gone = true;
        report
            .steps
            .push(skipped("all", "interface does not exist"));
    }
    if report.gone {
        // Only a file of that tunnel's name that passes the trust checks: never a file in a
        // directory another user can change (they could swap in a link or a hard link).
        if let Some(c) = conf_path.filter(|c| conf_names(c, name)) {
            report.config_removed = crate::trust::shred_trusted(c);
        }
    }
    report
}

/// The fwmark of WireGuard interface `name` (`wg show <name> fwmark`): None when it has none
/// (a split tunnel) or it cannot be read.
fn fwmark_of(name: &str) -> Option<u32> {
    let wg = cmd::find_program("wg")?;
    let out = cmd::run(&wg, &["show", name, "fwmark"], None, STEP_TIMEOUT).ok()?;
    let text = out.stdout.trim();
    if !out.success || text == "off" {
        return None;
    }
    let mark = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => text.parse().ok()?,
    };
    (mark != 0).then_some(mark)
}

/// After a bare `ip link delete`: remove wg-quick's nft table for this interface and, for a
/// full tunnel (an interface with fwmark `mark`), the policy rules that send traffic to its
/// table (`not fwmark T lookup T`, with T = mark) and, only when no such rule of any other
/// tunnel is left, the shared `suppress_prefixlength 0` rule. Nothing else: another agent's
/// rules (even ones whose table is momentarily empty) are never touched.
fn sweep(ip: &Path, name: &str, mark: Option<u32>) -> StepReport {
    let t = std::time::Instant::now();
    let mut done = Vec::new();
    if let Some(nft) = cmd::find_program("nft") {
        for family in ["ip", "ip6"] {
            let table = format!("wg-quick-{name}");
            if let Ok(o) = cmd::run(
                &nft,
                &["delete", "table", family, &table],
                None,
                STEP_TIMEOUT,
            ) {
                if o.success {
                    done.push(format!("nft table {family} {table}"));
                }
            }
        }
    }
    let show = |fam: &str| {
        cmd::run(ip, &[fam, "rule", "show"], None, STEP_TIMEOUT)
            .ok()
            .filter(|o| o.success)
            .map(|o| o.stdout)
    };
    let run_ok = |args: &[&str]| {
        cmd::run(ip, args, None, STEP_TIMEOUT)
            .map(|o| o.success)
            .unwrap_or(false)
    };
    if let Some(mark) = mark {
        let table = mark.to_string();
        for fam in ["-4", "-6"] {
            let Some(rules) = show(fam) else { continue };
            if orphan_fwmark_tables(&rules).contains(&table) {
                // Bounded: one delete per rule that names the table.
                for _ in 0..rules.lines().count() {
                    if !run_ok(&[fam, "rule", "delete", "table", &table]) {
                        break;
                    }
                    done.push(format!("{fam} rule lookup {table}"));
                }
            }
            let Some(rules) = show(fam) else { continue };
            if orphan_fwmark_tables(&rules).is_empty() && rules.contains("suppress_prefixlength 0")
            {
                let args = [
                    fam,
                    "rule",
                    "delete",
                    "table",
                    "main",
                    "suppress_prefixlength",
                    "0",
                ];
                if run_ok(&args) {
                    done.push(format!("{fam} rule suppress_prefixlength 0"));
                }
            }
        }
    }
    StepReport {
        step: "sweep".into(),
        ran: true,
        ok: true,
        detail: match (done.is_empty(), mark) {
            (false, _) => format!("removed {}", done.join(", ")),
            (true, None) => {
                "no fwmark (a split tunnel, or unreadable): no policy rules touched".into()
            }
            (true, Some(_)) => "nothing left over".into(),
        },
        elapsed_ms: t.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Tables of wg-quick-style rules `not from all fwmark 0xT lookup T` (fwmark == table).
fn orphan_fwmark_tables(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in rules.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (Some(m), Some(t)) = (
            w.iter().position(|x| *x == "fwmark"),
            w.iter().position(|x| *x == "lookup"),
        ) else {
            continue;
        };
        let (Some(mark), Some(table)) = (w.get(m + 1), w.get(t + 1)) else {
            continue;
        };
        let mark = mark.split('/').next().unwrap_or("");
        let mark = u32::from_str_radix(mark.trim_start_matches("0x"), 16).ok();
        if line.contains("not ") && mark.map(|m| m.to_string()).as_deref() == Some(table) {
            out.push(table.to_string());
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_wg_quick_rules_only() {
        let rules = "0:\tfrom all lookup local\n\
                     32764:\tfrom all lookup main suppress_prefixlength 0\n\
                     32765:\tnot from all fwmark 0xca6c lookup 51820\n\
                     32766:\tfrom all lookup main\n\
                     32767:\tnot from all fwmark 0x10 lookup 99\n";
        assert_eq!(orphan_fwmark_tables(rules), vec!["51820".to_string()]);
    }

    #[test]
    fn a_missing_interface_is_reported_not_thrown() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("bwnosuch0.conf");
        std::fs::write(&conf, "x").unwrap();
        let r = teardown_linux_interface("bwnosuch0", Some(&conf));
        assert!(!r.existed && r.gone);
        assert!(r.config_removed && !conf.exists());
        assert_eq!(r.steps[0].detail, "interface does not exist");
        let r = teardown_linux_interface("bad\nname", None);
        assert!(!r.existed);
    }

    #[test]
    fn step_one_only_uses_the_config_of_that_interface() {
        assert!(conf_names(
            Path::new("/t/sentinel-wg/wgsent0.conf"),
            "wgsent0"
        ));
        assert!(!conf_names(
            Path::new("/t/sentinel-wg/wgsent1.conf"),
            "wgsent0"
        ));
        assert!(!conf_names(Path::new("/t/wgsent0.conf.bak"), "wgsent0"));
    }
}
