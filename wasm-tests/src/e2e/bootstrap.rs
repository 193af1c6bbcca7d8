//! Renders `envoy/podgate-static.yaml` for a test: the very file users read, with only ports,
//! the `.wasm` path, the filter's configuration and the clusters changed. Every hardening
//! setting in the file is therefore started by the suite (Envoy refuses unknown fields).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_yaml::{Mapping, Value};

use crate::host::workspace_root;

/// The documented static bootstrap, relative to the workspace root.
pub const STATIC_BOOTSTRAP: &str = "envoy/podgate-static.yaml";
/// The listener the suite talks to.
pub const LISTENER: &str = "podgate_http";
/// The cluster in the file that every test pod cluster is copied from.
pub const TEMPLATE_CLUSTER: &str = "pod_demo";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const WASM_FILTER: &str = "envoy.filters.http.wasm";

/// A bootstrap document being edited.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    doc: Value,
}

fn key(k: &str) -> Value {
    Value::String(k.to_owned())
}

/// `doc[path[0]][path[1]]...` for mapping keys.
fn at<'a>(mut v: &'a mut Value, path: &[&str]) -> anyhow::Result<&'a mut Value> {
    for part in path {
        v = v
            .get_mut(*part)
            .ok_or_else(|| anyhow!("{STATIC_BOOTSTRAP}: no `{part}` in {}", path.join(".")))?;
    }
    Ok(v)
}

/// The element of a sequence whose `name` is `name`.
fn named<'a>(seq: &'a mut Value, name: &str) -> anyhow::Result<&'a mut Value> {
    seq.as_sequence_mut()
        .ok_or_else(|| anyhow!("{STATIC_BOOTSTRAP}: expected a list holding `{name}`"))?
        .iter_mut()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| anyhow!("{STATIC_BOOTSTRAP}: nothing named `{name}`"))
}

fn set_port(socket_holder: &mut Value, ip: &str, port: u16) -> anyhow::Result<()> {
    let socket = at(socket_holder, &["address", "socket_address"])?;
    socket["address"] = key(ip);
    socket["port_value"] = Value::from(port);
    Ok(())
}

impl Bootstrap {
    /// Reads `envoy/podgate-static.yaml`.
    pub fn load_static() -> anyhow::Result<Bootstrap> {
        let path = workspace_root().join(STATIC_BOOTSTRAP);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Bootstrap::parse(&text)
    }

    pub fn parse(yaml: &str) -> anyhow::Result<Bootstrap> {
        let doc: Value = serde_yaml::from_str(yaml).context("parsing the bootstrap YAML")?;
        Ok(Bootstrap { doc })
    }

    fn hcm(&mut self) -> anyhow::Result<&mut Value> {
        let listeners = at(&mut self.doc, &["static_resources", "listeners"])?;
        let listener = named(listeners, LISTENER)?;
        let chain = at(listener, &["filter_chains"])?
            .get_mut(0)
            .ok_or_else(|| anyhow!("{LISTENER} has no filter chain"))?;
        let filters = at(chain, &["filters"])?;
        at(named(filters, HCM)?, &["typed_config"])
    }

    fn wasm_plugin(&mut self) -> anyhow::Result<&mut Value> {
        let filters = at(self.hcm()?, &["http_filters"])?;
        at(named(filters, WASM_FILTER)?, &["typed_config", "config"])
    }

    /// Admin and listener on 127.0.0.1:0; the launcher reads the real ports back.
    pub fn ephemeral_ports(&mut self) -> anyhow::Result<&mut Self> {
        set_port(at(&mut self.doc, &["admin"])?, "127.0.0.1", 0)?;
        let listeners = at(&mut self.doc, &["static_resources", "listeners"])?;
        set_port(named(listeners, LISTENER)?, "127.0.0.1", 0)?;
        Ok(self)
    }

    /// The filter's configuration JSON as written in the file.
    pub fn filter_config(&mut self) -> anyhow::Result<serde_json::Value> {
        let value = at(self.wasm_plugin()?, &["configuration", "value"])?
            .as_str()
            .ok_or_else(|| anyhow!("the filter configuration is not a string"))?;
        serde_json::from_str(value).context("the filter configuration in the file is not JSON")
    }

    /// Replaces the filter's configuration string (any string: tests also feed broken ones).
    pub fn set_filter_config(&mut self, json: &str) -> anyhow::Result<&mut Self> {
        *at(self.wasm_plugin()?, &["configuration", "value"])? = key(json);
        Ok(self)
    }

    /// Points the Wasm VM at this `.wasm`.
    pub fn set_wasm_path(&mut self, wasm: &Path) -> anyhow::Result<&mut Self> {
        let path = wasm
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", wasm.display()))?;
        *at(
            self.wasm_plugin()?,
            &["vm_config", "code", "local", "filename"],
        )? = key(path);
        Ok(self)
    }

    /// Sets the clusters to exactly these `(name, address)`: a cluster the file has keeps its
    /// settings and gets the address; any other is a copy of `pod_demo`. The file's
    /// original-destination cluster (`podgate_pods`, which has no address of its own) stays.
    pub fn set_clusters(&mut self, clusters: &[(&str, SocketAddr)]) -> anyhow::Result<&mut Self> {
        let existing = at(&mut self.doc, &["static_resources", "clusters"])?
            .as_sequence()
            .ok_or_else(|| anyhow!("clusters is not a list"))?
            .clone();
        let template = existing
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(TEMPLATE_CLUSTER))
            .cloned()
            .ok_or_else(|| anyhow!("{STATIC_BOOTSTRAP} has no `{TEMPLATE_CLUSTER}` cluster"))?;
        let mut out = Vec::new();
        for (name, addr) in clusters {
            let mut cluster = existing
                .iter()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(*name))
                .cloned()
                .unwrap_or_else(|| template.clone());
            cluster["name"] = key(name);
            let assignment = at(&mut cluster, &["load_assignment"])?;
            assignment["cluster_name"] = key(name);
            let endpoints = at(assignment, &["endpoints"])?;
            let endpoint = endpoints
                .get_mut(0)
                .and_then(|e| e.get_mut("lb_endpoints"))
                .and_then(|e| e.get_mut(0))
                .and_then(|e| e.get_mut("endpoint"))
                .ok_or_else(|| anyhow!("cluster {name} has no endpoint to set"))?;
            set_port(endpoint, &addr.ip().to_string(), addr.port())?;
            out.push(cluster);
        }
        out.extend(
            existing
                .iter()
                .filter(|c| c.get("type").and_then(Value::as_str) == Some("ORIGINAL_DST"))
                .cloned(),
        );
        *at(&mut self.doc, &["static_resources", "clusters"])? = Value::Sequence(out);
        Ok(self)
    }

    /// The same Envoy without the podgate filter, routing everything to `cluster`: the
    /// baseline for throughput figures. Never use this for a security test.
    pub fn without_filter(&mut self, cluster: &str) -> anyhow::Result<&mut Self> {
        let hcm = self.hcm()?;
        let filters = at(hcm, &["http_filters"])?
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("http_filters is not a list"))?;
        filters.retain(|f| f.get("name").and_then(Value::as_str) != Some(WASM_FILTER));
        let hosts = at(hcm, &["route_config", "virtual_hosts"])?;
        let routes = hosts
            .get_mut(0)
            .and_then(|h| h.get_mut("routes"))
            .and_then(Value::as_sequence_mut)
            .ok_or_else(|| anyhow!("no route to point at {cluster}"))?;
        // The last route (no header to match), alone, to `cluster`.
        let mut last = routes
            .pop()
            .ok_or_else(|| anyhow!("no route to point at {cluster}"))?;
        let route = last
            .get_mut("route")
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| anyhow!("no route to point at {cluster}"))?;
        route.remove("cluster_header");
        route.insert(key("cluster"), key(cluster));
        *routes = vec![last];
        Ok(self)
    }

    /// The pod routes' `route` settings (every route of the first virtual host: by cluster
    /// header and by address).
    fn pod_routes(&mut self) -> anyhow::Result<Vec<&mut Mapping>> {
        let hosts = at(self.hcm()?, &["route_config", "virtual_hosts"])?;
        let routes: Vec<&mut Mapping> = hosts
            .get_mut(0)
            .and_then(|h| h.get_mut("routes"))
            .and_then(Value::as_sequence_mut)
            .ok_or_else(|| anyhow!("{STATIC_BOOTSTRAP}: no pod route"))?
            .iter_mut()
            .filter_map(|r| r.get_mut("route").and_then(Value::as_mapping_mut))
            .collect();
        if routes.is_empty() {
            return Err(anyhow!("{STATIC_BOOTSTRAP}: no pod route"));
        }
        Ok(routes)
    }

    /// The pod route's `idle_timeout` as written in the file (`"3600s"`): how long a stream
    /// to a pod may pass no bytes either way (a long poll, an idle WebSocket, a pod that does
    /// not answer) before Envoy ends it.
    pub fn route_idle_timeout(&mut self) -> anyhow::Result<String> {
        self.pod_routes()?
            .first()
            .and_then(|r| r.get("idle_timeout"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{STATIC_BOOTSTRAP}: the pod route has no idle_timeout"))
    }

    /// Sets the pod route's `idle_timeout` (whole milliseconds), so tests can meet it in
    /// seconds rather than the file's hour.
    pub fn set_route_idle_timeout(&mut self, timeout: Duration) -> anyhow::Result<&mut Self> {
        let millis = timeout.as_millis();
        for route in self.pod_routes()? {
            route.insert(
                key("idle_timeout"),
                key(&format!("{}.{:03}s", millis / 1000, millis % 1000)),
            );
        }
        Ok(self)
    }

    /// Sets `access_log` off (throughput runs should not measure log writes).
    pub fn without_access_log(&mut self) -> anyhow::Result<&mut Self> {
        if let Some(map) = self.hcm()?.as_mapping_mut() {
            map.remove("access_log");
        }
        Ok(self)
    }

    /// The document as YAML.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        serde_yaml::to_string(&self.doc).context("writing the bootstrap YAML")
    }

    /// The document, for assertions on the file itself.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// A mapping lookup by dotted path, for assertions on the file itself.
    pub fn get(&self, dotted: &str) -> Option<&Value> {
        let mut v = &self.doc;
        for part in dotted.split('.') {
            v = v.get(part)?;
        }
        Some(v)
    }

    /// The HCM's settings, for assertions on the file itself.
    pub fn http_connection_manager(&self) -> anyhow::Result<Mapping> {
        let mut copy = self.clone();
        copy.hcm()?
            .as_mapping()
            .cloned()
            .ok_or_else(|| anyhow!("the HCM config is not a mapping"))
    }
}

/// The compiled filter: the wasmtime host's locator (`PODGATE_FILTER_WASM`, else the target
/// directory, built once if missing or stale).
pub fn filter_wasm() -> anyhow::Result<PathBuf> {
    let path = crate::host::filter_wasm_path()?;
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir()?;
    Ok(cwd.join(path))
}

/// Fails unless the file's filter configuration parses as JSON with the fields we replace.
pub fn check_static_file() -> anyhow::Result<()> {
    let mut b = Bootstrap::load_static()?;
    let config = b.filter_config()?;
    for field in ["issuer", "domain", "auth_url", "keys", "pods"] {
        if config.get(field).is_none() {
            bail!("{STATIC_BOOTSTRAP}: the filter configuration has no `{field}`");
        }
    }
    Ok(())
}
