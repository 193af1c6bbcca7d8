//! Loopback ports for programs a test starts and must tell each other about before they run
//! (Envoy's listener, a control plane's xDS port, an OpenID provider).
//!
//! Such a port is found free, released, and bound again later by the program. Asking the kernel
//! for port 0 gives a port from its ephemeral range, which every outgoing connection of the test
//! process draws from too: a test's client connecting between the release and the program's
//! bind can take the port, and the program fails with "Address already in use". The ports here
//! come from below the ephemeral range, which the kernel never hands out on its own; within one
//! process a counter gives each port once, and the process id spreads test binaries apart.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: above the well-known and common service ports.
const LOW: u32 = 12_000;

/// Where the kernel's ephemeral range starts on Linux unless `ip_local_port_range` says
/// otherwise (read at the first call).
const DEFAULT_EPHEMERAL_START: u32 = 32_768;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback port nobody listens on right now, outside the kernel's ephemeral range, never
/// given twice in one process. Falls back to a kernel-chosen port when the range below the
/// ephemeral one is exhausted or unusable.
pub fn free_port() -> std::io::Result<u16> {
    let high = ephemeral_start().max(LOW + 1_000);
    let span = high - LOW;
    let seed = (std::process::id().wrapping_mul(7_919)) % span;
    // The first caller seeds the counter; `0` means "not seeded yet" (seeds are offsets + 1).
    let _ = NEXT.compare_exchange(0, seed + 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let offset = (NEXT.fetch_add(1, Ordering::Relaxed) - 1) % span;
        let Ok(port) = u16::try_from(LOW + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_never_given_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for port in &ports {
            assert!(u32::from(*port) >= LOW && u32::from(*port) < ephemeral_start());
            // Free: a program told this port can bind it.
            TcpListener::bind(("127.0.0.1", *port)).unwrap();
        }
    }

    #[test]
    fn a_port_someone_listens_on_is_skipped() {
        let first = free_port().unwrap();
        // Take the next few ports the counter would give, then ask again.
        let held: Vec<TcpListener> = (1..=3)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", first + i)).ok())
            .collect();
        let held_ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let next = free_port().unwrap();
        assert!(
            !held_ports.contains(&next),
            "{next} is held: {held_ports:?}"
        );
    }
}
