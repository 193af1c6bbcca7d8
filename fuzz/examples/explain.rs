//! Prints what a `gate`/`filter_wasm` input decodes to and the native outcome
//! (`Gate::on_request`), for triage:
//! `cargo run --manifest-path fuzz/Cargo.toml --example explain -- FILE...`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn main() {
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path).unwrap();
        let case = podgate_fuzz::gate_case(&data);
        println!("== {path} (https: {})", case.https);
        for (name, value) in &case.headers {
            println!(
                "  {name}: {}",
                String::from_utf8_lossy(value).escape_debug()
            );
        }
        println!("  -> {:?}", podgate_fuzz::gate_outcome(&case));
    }
}
