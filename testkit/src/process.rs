//! Child processes and work directories that never outlive the test process.
//!
//! Both rest on the same device: a small `sh` process holds the read end of a pipe whose write
//! end only the test process has. When the handle is dropped, or the test process dies in any
//! way, the pipe closes and the `sh` process cleans up: a [`Supervised`] program gets SIGTERM, a
//! [`WorkDir`] is removed (unless it holds a `keep` file). So a shared Envoy or control plane kept
//! in a `static` does not outlive the test binary either.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// Set (to anything) to keep every work directory, not only those of failed tests.
pub const KEEP_VAR: &str = "PODGATE_E2E_KEEP";

/// How long a stopped program may take to exit before its watchdog is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the watchdog may take to report the program's pid.
const PID_TIMEOUT: Duration = Duration::from_secs(5);

/// `$1` is the run directory, the rest the command. The command's pid goes to `$1/pid`, its exit
/// status to `$1/exit` (128 + the signal when a signal ended it); when our end of stdin closes,
/// the command gets SIGTERM. `PATH` gets a default (unexported) for the program started with a
/// cleared environment, so `mv` is still found.
const WATCHDOG: &str = r#"PATH=${PATH:-/usr/bin:/bin}
run=$1; shift
"$@" </dev/null &
child=$!
echo "$child" > "$run/pid.tmp"; mv "$run/pid.tmp" "$run/pid"
exec 3<&0
( read -r _ <&3; [ -e "$run/exit" ] || kill -TERM "$child" ) 2>/dev/null &
wait "$child"; echo "$?" > "$run/exit.tmp"; mv "$run/exit.tmp" "$run/exit"
wait
"#;

/// `$1` is the directory to remove once stdin closes (unless `$1/keep` exists); `$2`, when not
/// empty, a directory its `*.log` files are copied to first (as `<dir name>-<file>`).
const JANITOR: &str = r#"read -r _ || true
if [ -n "$2" ] && mkdir -p "$2"; then
    for f in "$1"/*.log; do [ -f "$f" ] && cp "$f" "$2/${1##*/}-${f##*/}"; done
fi
[ -e "$1/keep" ] || rm -rf "$1""#;

/// Where the logs of every work directory are copied when it is removed (`./just test` sets
/// it, and `log_scan` then reads them for credentials); unset: not copied.
pub const LOG_ARCHIVE_VAR: &str = "PODGATE_TEST_LOG_ARCHIVE";

/// A fresh directory under the system's temporary directory, removed when dropped or when the
/// test process dies, unless it holds a file named `keep` (made by [`WorkDir::keep`], by a
/// failing test's launcher, or for every directory when `PODGATE_E2E_KEEP` is set).
pub struct WorkDir {
    path: PathBuf,
    janitor: Option<Child>,
}

impl std::fmt::Debug for WorkDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("WorkDir").field(&self.path).finish()
    }
}

impl WorkDir {
    /// `<tmp>/<prefix>-<test pid>-<n>-<label>`, emptied if it exists.
    pub fn new(prefix: &str, label: &str) -> anyhow::Result<WorkDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("clearing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        if std::env::var_os(KEEP_VAR).is_some() {
            File::create(path.join("keep"))?;
        }
        let janitor = Command::new("/bin/sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("podgate-test-janitor")
            .arg(&path)
            .arg(std::env::var_os(LOG_ARCHIVE_VAR).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the work directory's janitor")?;
        Ok(WorkDir {
            path,
            janitor: Some(janitor),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after the test; says so on stderr under `what`.
    pub fn keep(&self, what: &str) {
        if File::create(self.path.join("keep")).is_ok() {
            eprintln!("podgate e2e: kept {what} files in {}", self.path.display());
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(mut janitor) = self.janitor.take() {
            drop(janitor.stdin.take());
            let _ = janitor.wait();
        }
    }
}

/// A program running under a watchdog (see the module docs): SIGTERM when dropped or when the
/// test process dies; its pid and exit status are read from its run directory.
pub struct Supervised {
    watchdog: Child,
    /// Our end of the watchdog's pipe: closing it stops the program.
    lifeline: Option<ChildStdin>,
    run_dir: PathBuf,
    pid: u32,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("pid", &self.pid)
            .field("run_dir", &self.run_dir)
            .finish()
    }
}

impl Supervised {
    /// Starts `program` with `args` under a watchdog that writes into `run_dir` (which must
    /// exist and be used by this program alone). `setup` gives the program its environment,
    /// stdout and stderr (stdin is always `/dev/null`). A `program` that is a wrapper (`taskset`,
    /// `env`) must `exec` the real one, so that [`Supervised::pid`] is the real program's.
    pub fn spawn(
        run_dir: &Path,
        program: &Path,
        args: &[OsString],
        setup: impl FnOnce(&mut Command),
    ) -> anyhow::Result<Supervised> {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg("podgate-test-watchdog")
            .arg(run_dir)
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        setup(&mut command);
        let mut watchdog = command
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let lifeline = watchdog.stdin.take();
        let deadline = Instant::now() + PID_TIMEOUT;
        let pid = loop {
            if let Some(pid) = read_number(&run_dir.join("pid")) {
                break pid;
            }
            if let Ok(Some(status)) = watchdog.try_wait() {
                bail!("the watchdog of {} exited with {status}", program.display());
            }
            if Instant::now() >= deadline {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
                bail!(
                    "the watchdog of {} reported no pid within {PID_TIMEOUT:?}",
                    program.display()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        Ok(Supervised {
            watchdog,
            lifeline,
            run_dir: run_dir.to_owned(),
            pid,
        })
    }

    /// The program's own pid (not the watchdog's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once the program has exited (128 + the signal when a signal ended it).
    pub fn exit_status(&self) -> Option<i32> {
        read_number(&self.run_dir.join("exit"))
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) unless the program has exited.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() && self.exit_status().is_none() {
            bail!("kill -{signal} {} failed: {status}", self.pid);
        }
        Ok(())
    }

    /// Waits (blocking, at most `timeout`) until the program has exited; its status.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_status() {
                return Some(code);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and the exit status with how long the program took to exit; SIGKILL and an error
    /// when it is still running after `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<(i32, Duration)> {
        let start = Instant::now();
        self.signal("TERM")?;
        match self.wait_exit(timeout) {
            Some(code) => {
                let took = start.elapsed();
                self.finish();
                Ok((code, took))
            }
            None => {
                self.kill()?;
                Err(anyhow!(
                    "pid {} did not exit within {timeout:?} of SIGTERM",
                    self.pid
                ))
            }
        }
    }

    /// SIGKILL (no graceful shutdown, like a crash); waits until the program is gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.signal("KILL")?;
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            bail!("pid {} did not die after SIGKILL", self.pid);
        }
        self.finish();
        Ok(())
    }

    /// Closes the lifeline (SIGTERM unless the program is gone) and waits, bounded, for the
    /// watchdog to finish.
    pub fn finish(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.watchdog.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.finish();
    }
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Option<T> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The last `max_bytes` of `text` (cut at a character boundary), for failure messages.
pub fn tail(text: &str, max_bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(max_bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
