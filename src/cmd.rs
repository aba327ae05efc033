//! Running the few external programs of the wg-quick backend: by absolute path, with stdin
//! closed (or fed from a file), a timeout, its own process group, and stderr kept for errors.
//!
//! Output goes to anonymous temp files, not pipes: `wg-quick up` starts a `wireguard-go` daemon
//! that may inherit the child's stdout/stderr, and a pipe it held would never reach EOF.

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a finished command said.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// One line for an error message: the exit status and the last lines of stderr.
    pub fn describe(&self) -> String {
        let status = match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        let err = self.stderr.trim();
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        if tail.is_empty() {
            status
        } else {
            format!("{status}: {}", tail.join(" | "))
        }
    }
}

/// Standard directories searched after `PATH`, so a caller with a short PATH still finds
/// `/usr/sbin/ip` or `/usr/bin/wg-quick`.
const SYSTEM_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Find an executable in `PATH` and the system directories, in-process (no `which`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The PATH our children get: the caller's, then the system directories.
fn child_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(SYSTEM_DIRS.iter().map(PathBuf::from));
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Something that runs commands on our behalf (a tunnel's watchdog, see `watchdog.rs`).
pub trait Delegate: Send + Sync {
    fn run(
        &self,
        program: &Path,
        args: &[OsString],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, String>;
}

thread_local! {
    static DELEGATE: RefCell<Option<Arc<dyn Delegate>>> = const { RefCell::new(None) };
}

/// Run `f` with every `run` on this thread going through `delegate` (when given).
pub fn with_delegate<R>(delegate: Option<Arc<dyn Delegate>>, f: impl FnOnce() -> R) -> R {
    let previous = DELEGATE.with(|d| d.replace(delegate));
    let r = f();
    DELEGATE.with(|d| *d.borrow_mut() = previous);
    r
}

/// Run `program args` and wait at most `timeout`: through this thread's delegate if one is
/// set (`with_delegate`), else here (`run_local`).
pub fn run<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    if let Some(d) = DELEGATE.with(|d| d.borrow().clone()) {
        let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_os_string()).collect();
        return d.run(program, &args, input, timeout);
    }
    run_local(program, args, input, timeout)
}

/// An anonymous in-memory file (`memfd_create`): needs no directory, so commands still run
/// when `TMPDIR` was removed under a live tunnel.
fn anon_file() -> Result<std::fs::File, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name; the flags are valid for memfd_create.
    let fd = unsafe { libc::memfd_create(c"blue-wireguard-cmd".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "cannot create an in-memory file: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Run `program args` in this process and wait at most `timeout`. On timeout the whole
/// process group is killed and an error is returned. `input`, when given, is the child's
/// stdin.
pub fn run_local<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    let start = Instant::now();
    let out = anon_file()?;
    let err = anon_file()?;
    let stdin = match input {
        None => Stdio::null(),
        Some(bytes) => {
            let mut f = anon_file()?;
            f.write_all(bytes)
                .and_then(|_| f.seek(SeekFrom::Start(0)).map(|_| ()))
                .map_err(|e| format!("cannot write stdin file: {e}"))?;
            Stdio::from(f)
        }
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err.try_clone().map_err(|e| e.to_string())?)
        .env("PATH", child_path())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let status = match wait_child(&mut child, timeout) {
        Some(s) => s,
        None => {
            // SAFETY: kill(2) with the negative pid of the group we created for this child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Err(format!(
                "{} {} did not finish within {} ms and was killed; stderr: {}",
                program.display(),
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                timeout.as_millis(),
                read_all(err).trim()
            ));
        }
    };
    Ok(Output {
        success: status.success(),
        code: status.code(),
        stdout: read_all(out),
        stderr: read_all(err),
        elapsed: start.elapsed(),
    })
}

fn read_all(mut f: std::fs::File) -> String {
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s
}

/// Wait for `child` to exit, at most `bound`: on a pidfd (woken the moment it exits), else by
/// polling `try_wait`.
fn wait_child(
    child: &mut std::process::Child,
    bound: Duration,
) -> Option<std::process::ExitStatus> {
    // SAFETY: pidfd_open on our own child's pid; the fd is closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
    if pidfd < 0 {
        return wait_until(bound, || child.try_wait().ok().flatten());
    }
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        let mut p = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; EINTR just loops.
        unsafe {
            libc::poll(
                &mut p,
                1,
                left.as_millis().clamp(1, i32::MAX as u128) as i32,
            )
        };
    };
    // SAFETY: closing the pidfd opened above.
    unsafe { libc::close(pidfd) };
    status
}

/// Poll `probe` until it yields a value or `bound` passes. The pause between probes starts at
/// 0.2 ms and doubles up to 10 ms, so a fast condition is seen quickly and a slow one is cheap.
pub fn wait_until<T>(bound: Duration, probe: impl FnMut() -> Option<T>) -> Option<T> {
    wait_until_every(bound, Duration::from_millis(10), probe)
}

/// `wait_until` with the longest pause between two probes set by the caller (for a cheap
/// probe whose answer is awaited by a user, e.g. a handshake).
pub fn wait_until_every<T>(
    bound: Duration,
    max_pause: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + bound;
    let mut pause = Duration::from_micros(200).min(max_pause);
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(max_pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stderr_and_status() {
        let sh = find_program("sh").unwrap();
        let o = run(
            &sh,
            &["-c", "echo out; echo err >&2; exit 3"],
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!o.success);
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout.trim(), "out");
        assert!(o.describe().contains("exit status 3: err"));
    }

    #[test]
    fn stdin_is_closed_or_fed() {
        let cat = find_program("cat").unwrap();
        let o = run(&cat, &[] as &[&str], None, Duration::from_secs(5)).unwrap();
        assert!(o.success && o.stdout.is_empty());
        let o = run(&cat, &[] as &[&str], Some(b"hello"), Duration::from_secs(5)).unwrap();
        assert_eq!(o.stdout, "hello");
    }

    #[test]
    fn timeout_kills_the_group() {
        let sh = find_program("sh").unwrap();
        let t = Instant::now();
        let e = run(
            &sh,
            &["-c", "sleep 30 & sleep 30"],
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
