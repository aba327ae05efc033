//! The watchdog: a small process (`blue-wg-watchdog`, ~1 MB) spawned at connect that removes
//! the tunnel when its owner dies without running its exit hooks (SIGKILL, OOM, a native
//! crash).
//!
//! How it learns of the death: its stdin is a pipe whose only writer is the owner (the write
//! end is close-on-exec, so no other program inherits it). When the owner dies, however it
//! dies, the kernel closes that end and the watchdog reads EOF at once; a normal disconnect
//! writes `D` first, and the watchdog just exits. Blocked in `read`, it costs no CPU and does
//! not touch the owner's event loop.
//!
//! Why the owner's subprocesses run *through* it: a `wg-quick up` that is still running when
//! the owner dies would finish after any cleanup and leave an interface behind. So while a
//! tunnel has a watchdog, the owner asks the watchdog to run each of the tunnel's commands
//! (`R` frames) and waits for the answer; the watchdog reads EOF only between commands, and
//! then runs the same cleanup routine as every other exit path, under the directory lock,
//! and only for a record that still names its dead owner.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::cmd::{self, Output};
use crate::error::{Result, WgError};
use crate::owner;

pub const BINARY: &str = "blue-wg-watchdog";
const READY_BOUND: Duration = Duration::from_secs(5);
/// Extra time the owner allows beyond a command's own timeout before giving up on an answer.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// Where the watchdog binary is: `BLUE_WG_WATCHDOG_PATH`, else beside the loaded addon.
pub fn binary_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BLUE_WG_WATCHDOG_PATH") {
        return Some(PathBuf::from(p));
    }
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address of a function in this library.
    let ok = unsafe { libc::dladdr(binary_path as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic loader.
    let lib = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let lib = Path::new(std::ffi::OsStr::from_bytes(lib.to_bytes()));
    Some(lib.parent()?.join(BINARY))
}

/// The owner's handle on one tunnel's watchdog.
pub struct Watchdog {
    pub pid: u32,
    child: Mutex<Child>,
    io: Mutex<Option<(ChildStdin, BufReader<ChildStdout>)>>,
    /// Its `READY` was read.
    confirmed: std::sync::atomic::AtomicBool,
}

/// Wait until `fd` is readable, at most `bound`.
fn readable(fd: i32, bound: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, bound.as_millis().min(i32::MAX as u128) as i32) };
    n > 0
}

fn read_line(r: &mut impl BufRead) -> Option<String> {
    let mut s = String::new();
    match r.read_line(&mut s) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(s.trim_end_matches('\n').to_string()),
    }
}

fn read_blob(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let len: usize = read_line(r)?.parse().ok()?;
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).ok()?;
    Some(buf)
}

impl Watchdog {
    /// Start the watchdog of tunnel `name` owned by this process. It is not waited for: it
    /// starts while the tunnel comes up, and `confirm` (or its first command) waits for its
    /// `READY`. Spawned without a `pre_exec` step, so the standard library can use
    /// `posix_spawn` (vfork speed); it gets its own process group (a terminal's Ctrl-C for the
    /// owner's group does not reach it) and ignores SIGINT and SIGHUP itself. `backend` and
    /// `table` (the full tunnel's routing table, for a backend that routes it itself) tell it
    /// what to remove should the ownership record be lost with a removed state directory.
    pub fn spawn(name: &str, backend: &str, table: Option<u32>) -> Result<Watchdog> {
        let bin = binary_path().filter(|p| p.is_file()).ok_or_else(|| {
            WgError::setup(
                "watchdog",
                format!("{BINARY} not found beside the addon (set BLUE_WG_WATCHDOG_PATH)"),
            )
        })?;
        let mut command = Command::new(&bin);
        command
            .arg(name)
            .arg(owner::my_pid().to_string())
            .arg(owner::my_start_time().to_string())
            .arg(backend)
            .arg(table.map(|t| t.to_string()).unwrap_or_else(|| "-".into()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            WgError::setup("watchdog", format!("cannot start {}: {e}", bin.display()))
        })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Watchdog {
            pid: child.id(),
            child: Mutex::new(child),
            io: Mutex::new(Some((stdin, stdout))),
            confirmed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Wait (bounded) for the watchdog's `READY`: it runs and watches its owner. Idempotent.
    pub fn confirm(&self) -> Result<()> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        match io.as_mut() {
            Some((_, stdout)) => self.read_ready(stdout),
            None => Err(WgError::setup("watchdog", "the watchdog is gone")),
        }
    }

    fn read_ready(&self, stdout: &mut BufReader<ChildStdout>) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.confirmed.load(Ordering::Acquire) {
            return Ok(());
        }
        let ready = (!stdout.buffer().is_empty()
            || readable(stdout.get_ref().as_raw_fd(), READY_BOUND))
            && read_line(stdout).as_deref() == Some("READY");
        if ready {
            self.confirmed.store(true, Ordering::Release);
            Ok(())
        } else {
            Err(WgError::setup("watchdog", "the watchdog did not start"))
        }
    }

    /// The tunnel is gone: tell the watchdog to exit without cleaning, and reap it.
    pub fn dismiss(&self) {
        if let Some((mut stdin, _out)) = self.io.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stdin.write_all(b"D\n");
        }
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if cmd::wait_until(Duration::from_millis(500), || {
            child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl cmd::Delegate for Watchdog {
    fn run(
        &self,
        program: &Path,
        args: &[OsString],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> std::result::Result<Output, String> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let Some((stdin, stdout)) = io.as_mut() else {
            return cmd::run_local(program, args, input, timeout);
        };
        let asked = match self.read_ready(stdout) {
            Ok(()) => Self::ask(stdin, stdout, program, args, input, timeout),
            Err(e) => Err(Lost(e.to_string())),
        };
        match asked {
            Ok(answer) => answer,
            Err(Lost(why)) => {
                // A killed (or wedged) watchdog must not strand the tunnel: forget it and do
                // the work here. Teardown steps are idempotent, so a command it may have
                // started is safe to run again.
                *io = None;
                drop(io);
                let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
                let _ = child.kill();
                let _ = child.wait();
                cmd::run_local(program, args, input, timeout)
                    .map_err(|e| format!("{e} (the watchdog was lost: {why})"))
            }
        }
    }
}

/// The watchdog stopped answering (killed, or wedged).
struct Lost(String);

impl Watchdog {
    fn ask(
        stdin: &mut ChildStdin,
        stdout: &mut BufReader<ChildStdout>,
        program: &Path,
        args: &[OsString],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> std::result::Result<std::result::Result<Output, String>, Lost> {
        let mut frame = Vec::new();
        frame.extend_from_slice(b"R\n");
        frame.extend_from_slice(program.as_os_str().as_encoded_bytes());
        frame.push(b'\n');
        frame.extend_from_slice(format!("{}\n", args.len()).as_bytes());
        for a in args {
            let a = a.as_encoded_bytes();
            frame.extend_from_slice(format!("{}\n", a.len()).as_bytes());
            frame.extend_from_slice(a);
        }
        frame.extend_from_slice(format!("{}\n", timeout.as_millis()).as_bytes());
        match input {
            None => frame.extend_from_slice(b"-\n"),
            Some(b) => {
                frame.extend_from_slice(format!("{}\n", b.len()).as_bytes());
                frame.extend_from_slice(b);
            }
        }
        stdin
            .write_all(&frame)
            .and_then(|_| stdin.flush())
            .map_err(|e| Lost(format!("watchdog unreachable: {e}")))?;
        if stdout.buffer().is_empty()
            && !readable(stdout.get_ref().as_raw_fd(), timeout + ANSWER_SLACK)
        {
            return Err(Lost("the watchdog did not answer".into()));
        }
        let bad = || Lost("the watchdog sent no or a malformed answer".to_string());
        let head = read_line(stdout).ok_or_else(bad)?;
        let (kind, rest) = head.split_once(' ').ok_or_else(bad)?;
        let stdout_b = read_blob(stdout).ok_or_else(bad)?;
        let stderr_b = read_blob(stdout).ok_or_else(bad)?;
        let elapsed_ms: u64 = read_line(stdout)
            .and_then(|l| l.parse().ok())
            .ok_or_else(bad)?;
        match kind {
            // The watchdog answered, but could not run the command: an error of the command,
            // not of the watchdog (no fallback).
            "E" => Ok(Err(String::from_utf8_lossy(&stderr_b).into_owned())),
            _ => {
                let code = rest.parse::<i32>().ok();
                Ok(Ok(Output {
                    success: code == Some(0),
                    code,
                    stdout: String::from_utf8_lossy(&stdout_b).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr_b).into_owned(),
                    elapsed: Duration::from_millis(elapsed_ms),
                }))
            }
        }
    }
}

/// One request from the owner.
enum Request {
    Run {
        program: PathBuf,
        args: Vec<OsString>,
        timeout: Duration,
        input: Option<Vec<u8>>,
    },
    Done,
}

fn read_request(r: &mut impl BufRead) -> Option<Request> {
    use std::os::unix::ffi::OsStringExt;
    match read_line(r)?.as_str() {
        "D" => Some(Request::Done),
        "R" => {
            let program = PathBuf::from(read_line(r)?);
            let n: usize = read_line(r)?.parse().ok()?;
            let mut args = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                args.push(OsString::from_vec(read_blob(r)?));
            }
            let timeout = Duration::from_millis(read_line(r)?.parse().ok()?);
            let input = match read_line(r)?.as_str() {
                "-" => None,
                len => {
                    let mut buf = vec![0; len.parse().ok()?];
                    r.read_exact(&mut buf).ok()?;
                    Some(buf)
                }
            };
            Some(Request::Run {
                program,
                args,
                timeout,
                input,
            })
        }
        _ => None,
    }
}

fn write_answer(w: &mut impl Write, result: std::result::Result<Output, String>) {
    let (head, out, err, ms) = match result {
        Ok(o) => (
            format!(
                "X {}",
                o.code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "signal".into())
            ),
            o.stdout.into_bytes(),
            o.stderr.into_bytes(),
            o.elapsed.as_millis(),
        ),
        Err(e) => ("E -".to_string(), Vec::new(), e.into_bytes(), 0),
    };
    let mut frame = format!("{head}\n{}\n", out.len()).into_bytes();
    frame.extend_from_slice(&out);
    frame.extend_from_slice(format!("{}\n", err.len()).as_bytes());
    frame.extend_from_slice(&err);
    frame.extend_from_slice(format!("{ms}\n").as_bytes());
    // The owner may be gone; then nobody reads this and the write fails harmlessly.
    let _ = w.write_all(&frame).and_then(|_| w.flush());
}

/// What the watchdog knows of its tunnel besides its name: used only when the ownership
/// record is gone because the state directory was removed under the tunnel.
#[derive(Default)]
pub struct Known {
    /// The backend that brings the tunnel up (empty: unknown, i.e. wg-quick).
    pub backend: String,
    /// The full tunnel's routing table, for a backend that routes it itself.
    pub table: Option<u32>,
    /// The state directory as it was when the watchdog started, held open: once removed, its
    /// link count is 0 (a record missing from a directory that is still there was removed by
    /// whoever cleaned up first, and then there is nothing left to do).
    pub state_dir: Option<crate::state::StateDir>,
}

impl Known {
    /// The state directory the watchdog started with was removed (or could not be opened).
    pub fn state_dir_removed(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(dir) = &self.state_dir else {
            return true;
        };
        let Ok(fd) = dir.fd.try_clone() else {
            return true;
        };
        std::fs::File::from(fd)
            .metadata()
            .map_or(true, |m| m.nlink() == 0)
    }
}

/// The watchdog process:
/// `blue-wg-watchdog <name> <owner pid> <owner start time> [<backend> [<table> | -]]`.
/// Returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let (Some(name), Some(pid), Some(start)) = (
        args.first(),
        args.get(1).and_then(|p| p.parse::<u32>().ok()),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!(
            "usage: {BINARY} <interface> <owner pid> <owner start time> [<backend> [<table>]]"
        );
        return 2;
    };
    if crate::config::validate_interface_name(name).is_err() {
        eprintln!("{BINARY}: invalid interface name");
        return 2;
    }
    // Taken while the owner is alive (and before READY): the state directory its tunnel's
    // record is in.
    let known = Known {
        backend: args.get(3).cloned().unwrap_or_default(),
        table: args.get(4).and_then(|t| t.parse::<u32>().ok()),
        state_dir: crate::state::StateDir::existing().ok().flatten(),
    };
    // A terminal's Ctrl-C or hang-up is meant for the owner (the owner spawned us in a
    // process group of our own; this covers signals sent to us by name as well).
    // SAFETY: setting signal dispositions at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::stdout().lock();
    let _ = output.write_all(b"READY\n").and_then(|_| output.flush());
    loop {
        match read_request(&mut input) {
            Some(Request::Done) => return 0,
            Some(Request::Run {
                program,
                args,
                timeout,
                input: stdin_bytes,
            }) => {
                let r = cmd::run_local(&program, &args, stdin_bytes.as_deref(), timeout);
                write_answer(&mut output, r);
            }
            None => break, // EOF: the owner is gone (or sent garbage, which only it can write)
        }
    }
    // The owner closed its end without `D`. Once it is really gone, remove its tunnel.
    if cmd::wait_until(Duration::from_secs(2), || {
        (!owner::alive(pid, start)).then_some(())
    })
    .is_none()
    {
        return 0; // still alive: not ours to clean
    }
    crate::registry::cleanup_dead_owner(name, pid, start, &known);
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Netns, StateDir};

    #[test]
    fn a_removed_state_dir_is_told_from_one_still_there() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("net-1");
        std::fs::create_dir(&path).unwrap();
        let fd = std::fs::File::open(&path).unwrap().into();
        let netns = Netns {
            inode: 1,
            cookie: 0,
        };
        let known = Known {
            backend: "embedded".into(),
            table: Some(51820),
            state_dir: Some(StateDir {
                path: path.clone(),
                fd,
                netns,
            }),
        };
        assert!(!known.state_dir_removed());
        std::fs::remove_dir(&path).unwrap();
        // Made anew under the same path: still the old one's removal that counts.
        std::fs::create_dir(&path).unwrap();
        assert!(known.state_dir_removed());
        assert!(Known::default().state_dir_removed());
    }
}
