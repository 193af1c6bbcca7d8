//! `GET /openapi.json`: the document lists exactly the routes the server answers, both ways, and
//! is a valid OpenAPI 3.1 document by `openapi-spec-validator` (installed into `.venv` from
//! `requirements-dev.txt` by `./just`; without it the validation skips loudly, under `CI=true`
//! it fails).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Harness, Which};
use serde_json::Value;

/// The methods a route can be declared with in the document.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(h: &Harness) -> Value {
    let r = h.get("/openapi.json", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// Every (path, method) the document declares.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                out.insert((path.clone(), method.to_owned()));
            }
        }
    }
    out
}

/// A concrete path for a template: `{port}` → 8726, any other parameter → `x`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{port}" => "8726",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the answer is the router's own "no such endpoint" or "not that method" (the
/// fallbacks in `lib.rs`), rather than a handler's.
fn from_the_router(status: StatusCode, body: &str) -> bool {
    (status == StatusCode::NOT_FOUND && body.contains("no such endpoint"))
        || status == StatusCode::METHOD_NOT_ALLOWED
}

/// Every operation in the document is answered by a handler, and every other method on its
/// paths by the router's 405: the router serves no method the document leaves out.
async fn the_document_and_the_router_agree(which: Which) {
    let Some(h) = Harness::new(which).await else {
        return;
    };
    let doc = document(&h).await;
    let ops = operations(&doc);
    assert!(ops.len() >= 50, "{ops:?}");
    for path in ops.iter().map(|(p, _)| p).collect::<BTreeSet<_>>() {
        for method in METHODS {
            let req = Request::builder()
                .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
                .uri(concrete(path))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let r = h.send(req).await;
            let documented = ops.contains(&(path.clone(), method.to_owned()));
            if documented {
                assert!(
                    !from_the_router(r.status, &r.body),
                    "{method} {path} is in the document but the router does not serve it: {} {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is answered but not in the document: {}",
                    r.body
                );
            }
        }
    }
    h.finish().await;
}
on_both!(the_document_and_the_router_agree);

/// Every route is registered through `utoipa_axum::routes!`, which takes its path and methods
/// from the handler's `#[utoipa::path]`: a plain axum `.route(` would serve a path the document
/// does not have.
#[test]
fn no_route_bypasses_the_document() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("lib.rs")];
    let mut dirs = vec![src.join("http")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in [".route(", ".route_service(", ".nest(", ".nest_service("] {
            assert!(
                !text.contains(needle),
                "{} registers a route with `{needle}`: use `.routes(routes!(handler))` so the OpenAPI document has it",
                file.display()
            );
        }
    }
}

/// The document follows the configuration: the dev login only in dev mode, `/metrics` only on
/// the API's listener.
#[tokio::test]
async fn the_document_lists_what_this_configuration_serves() {
    let h = Harness::new(Which::Sqlite).await.unwrap();
    let doc = document(&h).await;
    // The admin API says which credential it takes.
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );
    for (path, method) in operations(&doc) {
        let admin = path.starts_with("/v1/") && path != "/v1/capabilities";
        let security = &doc["paths"][&path][&method]["security"];
        assert_eq!(
            security[0].get("admin_token").is_some(),
            admin,
            "{method} {path}: {security}"
        );
    }
    let paths = operations(&doc);
    assert!(paths.contains(&("/dev/login".to_owned(), "get".to_owned())));
    assert!(paths.contains(&("/metrics".to_owned(), "get".to_owned())));
    assert!(paths.contains(&("/openapi.json".to_owned(), "get".to_owned())));
    assert!(paths.contains(&("/auth/logout".to_owned(), "post".to_owned())));
    h.finish().await;
    let h = Harness::with(Which::Sqlite, |mut s| {
        s.metrics_listen = Some("127.0.0.1:0".to_owned());
        s
    })
    .await
    .unwrap();
    let paths = operations(&document(&h).await);
    assert!(!paths.iter().any(|(p, _)| p == "/metrics"));
    h.finish().await;
}

/// The Python that has `openapi-spec-validator`: `$PODGATE_OPENAPI_PYTHON`, else `.venv`'s.
fn validator_python() -> Option<PathBuf> {
    let python = std::env::var_os("PODGATE_OPENAPI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let has = std::process::Command::new(&python)
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has {
        return Some(python);
    }
    let why = format!(
        "no openapi-spec-validator in {} (`./just setup` installs requirements-dev.txt into .venv)",
        python.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: {why}");
    }
    eprintln!("SKIPPING the OpenAPI validation: {why}");
    None
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let h = Harness::new(Which::Sqlite).await.unwrap();
    let doc = document(&h).await;
    h.finish().await;
    assert_eq!(doc["openapi"], "3.1.0");
    let Some(python) = validator_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openapi-spec-validator: {said}");
    assert!(said.contains("OK"), "{said}");
}
