//! The watchdog under every launcher: the pid it reports is the program's own (also through a
//! wrapper that execs it), SIGTERM and SIGKILL report their exit statuses, and dropping the
//! handle stops the program and removes the work directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use podgate_testkit::process::{Supervised, WorkDir};

fn sleep_under_env(dir: &Path, run: &str) -> Supervised {
    let run_dir = dir.join(run);
    std::fs::create_dir_all(&run_dir).unwrap();
    let args: Vec<OsString> = vec!["sleep".into(), "30".into()];
    Supervised::spawn(&run_dir, Path::new("/usr/bin/env"), &args, |_| {}).unwrap()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

#[test]
fn the_pid_is_the_programs_own_and_signals_report_their_status() {
    let dir = WorkDir::new("podgate-testkit", "signals").unwrap();
    let mut proc = sleep_under_env(dir.path(), "term");
    assert_eq!(comm(proc.pid()).as_deref(), Some("sleep"));
    assert!(proc.is_running());
    let (code, _) = proc.terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(code, 128 + 15);
    assert!(!proc.is_running());

    let mut proc = sleep_under_env(dir.path(), "kill");
    proc.kill().unwrap();
    assert_eq!(proc.exit_status(), Some(128 + 9));
}

#[test]
fn dropping_the_handles_stops_the_program_and_removes_the_directory() {
    let dir = WorkDir::new("podgate-testkit", "drop").unwrap();
    let path = dir.path().to_owned();
    let proc = sleep_under_env(&path, "run-1");
    let pid = proc.pid();
    drop(proc);
    assert_ne!(comm(pid).as_deref(), Some("sleep"), "still running");
    assert_eq!(
        std::fs::read_to_string(path.join("run-1/exit"))
            .unwrap()
            .trim(),
        "143"
    );
    drop(dir);
    assert!(!path.exists());
}
