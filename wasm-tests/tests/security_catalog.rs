//! Keeps `docs/security.md` true: every test it names for a threat class exists, every class
//! names tests at its layers (through a real Envoy, unless the class never reaches Envoy), and the count per class is printed
//! (`cargo test -p podgate-wasm-tests --test security_catalog -- --nocapture`).
//!
//! A reference is written `` `path/to/file.rs::test_name` `` under a `### ` class heading.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Class heading → the `(file, fn)` references under it, in document order.
fn catalog() -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(root().join("docs/security.md")).unwrap();
    let mut classes: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            classes.push((title.trim().to_string(), Vec::new()));
            continue;
        }
        let Some((_, refs)) = classes.last_mut() else {
            continue;
        };
        for (i, chunk) in line.split('`').enumerate() {
            // Odd chunks are inside backticks.
            if i % 2 == 0 {
                continue;
            }
            if let Some((file, name)) = chunk.split_once(".rs::") {
                refs.push((format!("{file}.rs"), name.to_string()));
            }
        }
    }
    classes
}

fn defines_fn(source: &str, name: &str) -> bool {
    source.lines().any(|l| {
        let l = l.trim_start();
        let l = l.strip_prefix("pub ").unwrap_or(l);
        let l = l.strip_prefix("async ").unwrap_or(l);
        l.strip_prefix("fn ").is_some_and(|rest| {
            rest.strip_prefix(name)
                .is_some_and(|after| after.starts_with('(') || after.starts_with('<'))
        })
    })
}

#[test]
fn every_test_the_security_doc_names_exists() {
    let classes = catalog();
    assert!(
        classes.len() >= 6,
        "docs/security.md has {} classes; the threat catalog has six",
        classes.len()
    );
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut missing = Vec::new();
    for (class, refs) in &classes {
        for (file, name) in refs {
            let source = sources.entry(file.clone()).or_insert_with(|| {
                std::fs::read_to_string(root().join(file))
                    .unwrap_or_else(|e| panic!("docs/security.md ({class}) names {file}: {e}"))
            });
            if !defines_fn(source, name) {
                missing.push(format!("{class}: {file}::{name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/security.md names tests that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_class_is_tested_at_its_layers() {
    let mut report = String::new();
    for (class, refs) in catalog() {
        let mut unique: Vec<&(String, String)> = refs.iter().collect();
        unique.sort();
        unique.dedup();
        let envoy = unique
            .iter()
            .filter(|(f, _)| f.contains("e2e_") || f.contains("edge_") || f.contains("xds_live"))
            .count();
        assert!(!unique.is_empty(), "{class}: no tests named");
        report.push_str(&format!(
            "{:>4} tests ({:>3} through a real Envoy)  {class}\n",
            unique.len(),
            envoy
        ));
        // Identity providers are checked in the control plane before anything is minted: Envoy
        // never sees an ID token.
        let through_envoy =
            !class.starts_with("Robustness") && !class.starts_with("Identity providers");
        if through_envoy {
            assert!(envoy > 0, "{class}: no end-to-end test through Envoy");
        }
    }
    println!("{report}");
}
