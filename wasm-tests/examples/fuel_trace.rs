#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Where one request's wasm instructions go, between host calls: re-runs itself with
//! `PODGATE_FUEL_TRACE=1`, which makes the test host print the fuel left at every host call,
//! and prints the differences for a cached EdDSA cookie request (a decision-memo hit), a
//! token-cache hit that misses the memo, and the pod's response.
//!
//! ```text
//! cargo run --release -p podgate-wasm-tests --example fuel_trace
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;

use support::*;

fn main() {
    if std::env::var_os("PODGATE_FUEL_TRACE").is_none() {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("PODGATE_FUEL_TRACE", "1")
            .output()
            .unwrap();
        print_segments(&String::from_utf8_lossy(&out.stderr));
        return;
    }
    let key = ed_key(1);
    let mut vm = vm_with(&config(&[&key]));
    let token = cap(&key, "alpha", PORT);
    let req = Req::alpha()
        .cookie(&token)
        .set("user-agent", "bench/1")
        .set("accept", "*/*");
    eprintln!("== warm-up: first request (signature check)");
    req.clone().send(&mut vm).forwarded();
    eprintln!("== cached request (decision memo hit)");
    let hit = req.clone().send(&mut vm);
    hit.forwarded();
    eprintln!("== total {}", hit.fuel);
    eprintln!("== token-cache hit, memo miss (a different app cookie each time)");
    let other = req.clone().add("cookie", "theme=dark").send(&mut vm);
    other.forwarded();
    eprintln!("== total {}", other.fuel);
    eprintln!("== request and response (memo hit), then a Set-Cookie from the pod");
    let id = vm.open_stream().unwrap();
    vm.request_headers(id, &req.headers, true).unwrap();
    vm.response_headers(
        id,
        &[
            (":status", "200"),
            ("content-type", "text/plain"),
            ("set-cookie", "sid=1; Path=/"),
        ],
        true,
    )
    .unwrap();
    vm.close_stream(id).unwrap();
}

/// Each `fuel-trace NAME LEFT` line becomes `NAME: instructions since the previous host call
/// of the same callback` (fuel is refilled at every callback, so a rise starts a new one).
fn print_segments(trace: &str) {
    let mut previous: Option<u64> = None;
    for line in trace.lines() {
        if let Some(rest) = line.strip_prefix("fuel-trace ") {
            let (name, left) = rest.split_once(' ').unwrap();
            let left: u64 = left.parse().unwrap();
            match previous {
                Some(p) if p >= left => println!("  {:>7}  then {name}", p - left),
                _ => println!("  (new callback)  then {name}"),
            }
            previous = Some(left);
        } else if line.starts_with("==") {
            println!("{line}");
            previous = None;
        }
    }
}
