//! `envoy/podgate.yaml` (the bootstrap that takes everything from the control plane's ADS)
//! rendered for a test: the admin and the `podgate_http` listener on given loopback addresses,
//! the node id, and the control planes Envoy knows, every one of them an endpoint of both
//! `podgate_xds` (ADS) and `podgate_control_plane` (HTTP), as an operator lists their replicas.
//! Both clusters talk to the control planes over plaintext unless [`AdsBootstrap::mtls`] is
//! called: the file's mutual TLS (`transport_socket` of both clusters) is set aside when it is
//! read and put back, with the given certificate files, by that call.
//! Everything else stays as the file has it.
//!
//! ```no_run
//! # fn f() -> anyhow::Result<()> {
//! let yaml = podgate_testkit::AdsBootstrap::load()?
//!     .listener("127.0.0.1:10000".parse()?)?
//!     .control_planes(
//!         &["127.0.0.1:18000".parse()?, "127.0.0.1:18001".parse()?],
//!         &["127.0.0.1:8080".parse()?, "127.0.0.1:8081".parse()?],
//!     )?
//!     .to_yaml()?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde_yaml::Value;

use crate::workspace_root;

/// The bootstrap file, relative to the workspace root.
pub const ADS_BOOTSTRAP: &str = "envoy/podgate.yaml";

/// The clusters of `envoy/podgate.yaml` that reach the control planes (both mutual TLS in the
/// file).
pub const CONTROL_PLANE_CLUSTERS: [&str; 2] = ["podgate_xds", "podgate_control_plane"];

/// What Envoy's two control-plane clusters use for mutual TLS in a rendered bootstrap.
#[derive(Debug, Clone)]
pub struct EnvoyMtls {
    /// Envoy's client certificate and key; `None`: Envoy presents none.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The CA Envoy validates the control plane's certificate with.
    pub ca: PathBuf,
}

/// `envoy/podgate.yaml` being rendered; see the module docs.
#[derive(Debug, Clone)]
pub struct AdsBootstrap {
    doc: Value,
    /// The file's `transport_socket` of each of [`CONTROL_PLANE_CLUSTERS`], in that order, taken
    /// out of `doc` (`None`: the file has none for that cluster).
    tls: Vec<Option<Value>>,
}

impl AdsBootstrap {
    /// Reads `envoy/podgate.yaml`, with the admin moved to an ephemeral port on loopback.
    pub fn load() -> anyhow::Result<AdsBootstrap> {
        let path = workspace_root().join(ADS_BOOTSTRAP);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        AdsBootstrap::parse(&text)
    }

    /// A bootstrap given as text, with the admin moved to an ephemeral port on loopback.
    pub fn parse(text: &str) -> anyhow::Result<AdsBootstrap> {
        let mut doc: Value = serde_yaml::from_str(text).context("parsing the bootstrap YAML")?;
        let clusters = at(&mut doc, &["static_resources", "clusters"])?;
        let mut tls = Vec::with_capacity(CONTROL_PLANE_CLUSTERS.len());
        for name in CONTROL_PLANE_CLUSTERS {
            tls.push(
                named(clusters, name)?
                    .as_mapping_mut()
                    .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: cluster {name} is not a mapping"))?
                    .remove("transport_socket"),
            );
        }
        let mut bootstrap = AdsBootstrap { doc, tls };
        bootstrap.admin(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Ok(bootstrap)
    }

    /// The admin API's address.
    pub fn admin(&mut self, addr: SocketAddr) -> anyhow::Result<&mut Self> {
        set_socket(at(&mut self.doc, &["admin", "address"])?, addr)?;
        Ok(self)
    }

    /// The `podgate_http` listener's address.
    pub fn listener(&mut self, addr: SocketAddr) -> anyhow::Result<&mut Self> {
        let listeners = at(&mut self.doc, &["static_resources", "listeners"])?;
        let listener = named(listeners, "podgate_http")?;
        set_socket(at(listener, &["address"])?, addr)?;
        Ok(self)
    }

    /// The node id this Envoy gives the control plane.
    pub fn node_id(&mut self, id: &str) -> anyhow::Result<&mut Self> {
        at(&mut self.doc, &["node"])?["id"] = Value::from(id);
        Ok(self)
    }

    /// The control planes: `xds` their ADS addresses, `http` their HTTP addresses, each list
    /// made the endpoints of its cluster (the file's first endpoint is the model of each).
    pub fn control_planes(
        &mut self,
        xds: &[SocketAddr],
        http: &[SocketAddr],
    ) -> anyhow::Result<&mut Self> {
        let clusters = at(&mut self.doc, &["static_resources", "clusters"])?;
        set_endpoints(named(clusters, "podgate_xds")?, xds)?;
        set_endpoints(named(clusters, "podgate_control_plane")?, http)?;
        Ok(self)
    }

    /// Mutual TLS to the control planes: both clusters get the file's `transport_socket` back,
    /// with `tls`'s CA and client certificate (without a client certificate, the file's
    /// `tls_certificates` removed: Envoy presents none).
    pub fn mtls(&mut self, tls: &EnvoyMtls) -> anyhow::Result<&mut Self> {
        let clusters = at(&mut self.doc, &["static_resources", "clusters"])?;
        for (name, socket) in CONTROL_PLANE_CLUSTERS.iter().zip(&self.tls) {
            let mut socket = socket.clone().ok_or_else(|| {
                anyhow!("{ADS_BOOTSTRAP}: cluster {name} has no transport_socket")
            })?;
            let common = at(&mut socket, &["typed_config", "common_tls_context"])?;
            at(common, &["validation_context", "trusted_ca"])?["filename"] = path_value(&tls.ca)?;
            match &tls.client {
                Some((cert, key)) => {
                    let identity =
                        at(common, &["tls_certificates"])?
                            .get_mut(0)
                            .ok_or_else(|| {
                                anyhow!("{ADS_BOOTSTRAP}: {name} has no client certificate")
                            })?;
                    at(identity, &["certificate_chain"])?["filename"] = path_value(cert)?;
                    at(identity, &["private_key"])?["filename"] = path_value(key)?;
                }
                None => {
                    common
                        .as_mapping_mut()
                        .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: {name}'s TLS is not a mapping"))?
                        .remove("tls_certificates");
                }
            }
            named(clusters, name)?["transport_socket"] = socket;
        }
        Ok(self)
    }

    /// Without the `podgate_http` listener's access log (a line a request: long runs at high
    /// rates would fill the disk).
    pub fn without_access_log(&mut self) -> anyhow::Result<&mut Self> {
        let listeners = at(&mut self.doc, &["static_resources", "listeners"])?;
        let listener = named(listeners, "podgate_http")?;
        let chains = at(listener, &["filter_chains"])?
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: filter_chains is not a list"))?;
        for chain in chains {
            let filters = at(chain, &["filters"])?
                .as_sequence_mut()
                .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: filters is not a list"))?;
            for filter in filters {
                if let Some(config) = filter
                    .get_mut("typed_config")
                    .and_then(Value::as_mapping_mut)
                {
                    config.remove("access_log");
                }
            }
        }
        Ok(self)
    }

    /// The rendered bootstrap.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        serde_yaml::to_string(&self.doc).context("writing the bootstrap YAML")
    }

    /// The document, for checks.
    pub fn doc(&self) -> &Value {
        &self.doc
    }
}

fn at<'a>(mut v: &'a mut Value, path: &[&str]) -> anyhow::Result<&'a mut Value> {
    for part in path {
        v = v
            .get_mut(*part)
            .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: no `{part}` in {}", path.join(".")))?;
    }
    Ok(v)
}

fn named<'a>(seq: &'a mut Value, name: &str) -> anyhow::Result<&'a mut Value> {
    seq.as_sequence_mut()
        .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: expected a list holding `{name}`"))?
        .iter_mut()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: nothing named `{name}`"))
}

fn path_value(p: &Path) -> anyhow::Result<Value> {
    p.to_str()
        .map(Value::from)
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

fn set_socket(address: &mut Value, addr: SocketAddr) -> anyhow::Result<()> {
    let socket = at(address, &["socket_address"])?;
    socket["address"] = Value::from(addr.ip().to_string());
    socket["port_value"] = Value::from(addr.port());
    Ok(())
}

/// Replaces the endpoints of `cluster` by one per address, each a copy of the first one.
fn set_endpoints(cluster: &mut Value, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    if addrs.is_empty() {
        bail!("a cluster needs at least one endpoint");
    }
    let lb_endpoints = at(cluster, &["load_assignment", "endpoints"])?
        .get_mut(0)
        .and_then(|locality| locality.get_mut("lb_endpoints"))
        .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: a cluster has no lb_endpoints"))?;
    let model = lb_endpoints
        .get(0)
        .cloned()
        .ok_or_else(|| anyhow!("{ADS_BOOTSTRAP}: a cluster has no endpoint"))?;
    let mut out = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let mut endpoint = model.clone();
        set_socket(at(&mut endpoint, &["endpoint", "address"])?, *addr)?;
        out.push(endpoint);
    }
    *lb_endpoints = Value::Sequence(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn endpoints(doc: &Value, cluster: &str) -> Vec<(String, u64)> {
        let clusters = doc["static_resources"]["clusters"].as_sequence().unwrap();
        let c = clusters.iter().find(|c| c["name"] == cluster).unwrap();
        c["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| {
                let s = &e["endpoint"]["address"]["socket_address"];
                (
                    s["address"].as_str().unwrap().to_owned(),
                    s["port_value"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn every_control_plane_becomes_an_endpoint_of_both_clusters() {
        let mut b = AdsBootstrap::load().unwrap();
        b.listener("127.0.0.2:10001".parse().unwrap())
            .unwrap()
            .node_id("edge-2")
            .unwrap()
            .control_planes(
                &[
                    "127.0.0.1:18000".parse().unwrap(),
                    "127.0.0.3:18001".parse().unwrap(),
                ],
                &[
                    "127.0.0.1:8080".parse().unwrap(),
                    "127.0.0.3:8081".parse().unwrap(),
                ],
            )
            .unwrap();
        let doc: Value = serde_yaml::from_str(&b.to_yaml().unwrap()).unwrap();
        assert_eq!(
            endpoints(&doc, "podgate_xds"),
            [("127.0.0.1".into(), 18000), ("127.0.0.3".into(), 18001)]
        );
        assert_eq!(
            endpoints(&doc, "podgate_control_plane"),
            [("127.0.0.1".into(), 8080), ("127.0.0.3".into(), 8081)]
        );
        assert_eq!(doc["node"]["id"], "edge-2");
        assert_eq!(doc["admin"]["address"]["socket_address"]["port_value"], 0);
        let listener = &doc["static_resources"]["listeners"][0];
        assert_eq!(listener["name"], "podgate_http");
        assert_eq!(
            listener["address"]["socket_address"]["address"],
            "127.0.0.2"
        );
        assert!(b.control_planes(&[], &[]).is_err());
        for name in CONTROL_PLANE_CLUSTERS {
            assert!(
                cluster(&doc, name).get("transport_socket").is_none(),
                "{name}"
            );
        }
    }

    fn cluster<'a>(doc: &'a Value, name: &str) -> &'a Value {
        let clusters = doc["static_resources"]["clusters"].as_sequence().unwrap();
        clusters.iter().find(|c| c["name"] == name).unwrap()
    }

    #[test]
    fn without_access_log_drops_only_the_access_log() {
        // The key, not the name: the local reply mappers' CEL filter is an
        // `envoy.access_loggers.…` extension, which stays.
        let mut b = AdsBootstrap::load().unwrap();
        assert!(b.to_yaml().unwrap().contains("access_log:"));
        b.without_access_log().unwrap();
        let yaml = b.to_yaml().unwrap();
        assert!(!yaml.contains("access_log:"), "{yaml}");
        assert!(yaml.contains("route_config"), "{yaml}");
        assert!(yaml.contains("extension_filters.cel"), "{yaml}");
    }

    #[test]
    fn mtls_puts_the_files_tls_back_with_the_given_certificates() {
        let mut b = AdsBootstrap::load().unwrap();
        b.control_planes(
            &["127.0.0.1:18000".parse().unwrap()],
            &["127.0.0.1:8443".parse().unwrap()],
        )
        .unwrap()
        .mtls(&EnvoyMtls {
            client: Some(("/t/envoy.pem".into(), "/t/envoy-key.pem".into())),
            ca: "/t/ca.pem".into(),
        })
        .unwrap();
        let doc: Value = serde_yaml::from_str(&b.to_yaml().unwrap()).unwrap();
        for name in CONTROL_PLANE_CLUSTERS {
            let common =
                &cluster(&doc, name)["transport_socket"]["typed_config"]["common_tls_context"];
            assert_eq!(
                common["validation_context"]["trusted_ca"]["filename"],
                "/t/ca.pem"
            );
            let identity = &common["tls_certificates"][0];
            assert_eq!(identity["certificate_chain"]["filename"], "/t/envoy.pem");
            assert_eq!(identity["private_key"]["filename"], "/t/envoy-key.pem");
        }
        b.mtls(&EnvoyMtls {
            client: None,
            ca: "/t/ca.pem".into(),
        })
        .unwrap();
        for name in CONTROL_PLANE_CLUSTERS {
            let common =
                &cluster(b.doc(), name)["transport_socket"]["typed_config"]["common_tls_context"];
            assert!(common.get("tls_certificates").is_none(), "{name}");
        }
    }
}
