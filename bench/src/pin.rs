//! CPU placement: Envoy on CPU 0 (through `taskset`), the load generator and the upstream on the
//! other CPUs, so the proxy never competes with the load it is measured under.

use std::path::PathBuf;

/// Where each party runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placement {
    /// CPUs the machine lets this process use.
    pub online_cpus: usize,
    /// `taskset` binary, when the machine has one and there are at least two CPUs.
    #[serde(skip)]
    pub taskset: Option<PathBuf>,
    pub envoy_cpu: Option<usize>,
    pub loadgen_cpu: Option<usize>,
    pub upstream_cpu: Option<usize>,
    /// What could not be done, in words, for the report.
    pub notes: Vec<String>,
}

impl Placement {
    pub fn detect(enabled: bool) -> Placement {
        let online_cpus = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        let mut notes = Vec::new();
        if !enabled {
            notes.push("pinning disabled by --no-pin".to_owned());
            return Placement::unpinned(online_cpus, notes);
        }
        if online_cpus < 2 {
            notes.push(format!(
                "only {online_cpus} CPU: Envoy and the load generator share it (no pinning)"
            ));
            return Placement::unpinned(online_cpus, notes);
        }
        let taskset = find_on_path("taskset");
        if taskset.is_none() {
            notes.push("taskset not found: Envoy is not pinned".to_owned());
        }
        let upstream_cpu = if online_cpus >= 3 { 2 } else { 1 };
        if online_cpus < 3 {
            notes.push(
                "2 CPUs: the upstream shares CPU 1 with the load generator; other processes are not kept off CPU 0"
                    .to_owned(),
            );
        }
        Placement {
            online_cpus,
            envoy_cpu: taskset.as_ref().map(|_| 0),
            taskset,
            loadgen_cpu: Some(1),
            upstream_cpu: Some(upstream_cpu),
            notes,
        }
    }

    fn unpinned(online_cpus: usize, notes: Vec<String>) -> Placement {
        Placement {
            online_cpus,
            taskset: None,
            envoy_cpu: None,
            loadgen_cpu: None,
            upstream_cpu: None,
            notes,
        }
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Pins the calling thread to `cpu`; returns false (and changes nothing) when it cannot.
pub fn pin_current_thread(cpu: Option<usize>) -> bool {
    let Some(cpu) = cpu else { return false };
    // SAFETY: `cpu_set_t` is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity(0, ...) affects only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Asks the kernel to wake this thread within 1 µs of the requested time (the default slack is
/// 50 µs), so the open-loop pacer releases requests on schedule.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_u64, 0_u64, 0_u64, 0_u64);
    }
}
