//! Immutable, versioned snapshots of what every Envoy should have, and the cache that publishes them.
//!
//! A [`Snapshot`] holds one [`ResourceSet`] per type URL we serve (CDS clusters, ECDS extension
//! configs). Each set's version is a hash of its content, so publishing identical content twice
//! yields the same version and no Envoy gets a push. [`SnapshotCache`] has one writer
//! ([`SnapshotCache::set`]) and many cheap readers (an `Arc` behind a `tokio::sync::watch`).

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// Type URL of CDS resources.
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of ECDS resources.
pub const EXTENSION_CONFIG_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// The kinds of resources this server serves over ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster`, a wildcard type: an empty subscription means "all".
    Cluster,
    /// `envoy.config.core.v3.TypedExtensionConfig`, subscribed to by name.
    ExtensionConfig,
}

impl ResourceType {
    /// Every type we serve, in the order responses are produced.
    pub const ALL: [ResourceType; 2] = [ResourceType::Cluster, ResourceType::ExtensionConfig];

    /// The type URL Envoy uses for this kind.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => CLUSTER_TYPE_URL,
            ResourceType::ExtensionConfig => EXTENSION_CONFIG_TYPE_URL,
        }
    }

    /// The kind for a type URL, or `None` for a type we do not serve.
    pub fn from_type_url(type_url: &str) -> Option<ResourceType> {
        ResourceType::ALL
            .into_iter()
            .find(|kind| kind.type_url() == type_url)
    }

    /// Whether an empty subscription means "everything" (legacy wildcard for CDS and LDS).
    pub fn empty_means_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster)
    }
}

/// The resources of one type, encoded once and shared by every stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSet {
    version: String,
    /// By name; a `BTreeMap` so iteration order (and so the version hash) is stable.
    resources: BTreeMap<String, Any>,
}

impl ResourceSet {
    fn new(kind: ResourceType, resources: BTreeMap<String, Any>) -> ResourceSet {
        let version = content_version(kind, &resources);
        ResourceSet { version, resources }
    }

    /// The content-derived version string.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Resource names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// One resource by name.
    pub fn get(&self, name: &str) -> Option<&Any> {
        self.resources.get(name)
    }

    /// Every resource, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Any)> {
        self.resources
            .iter()
            .map(|(name, any)| (name.as_str(), any))
    }
}

/// Hex of the first 8 bytes of SHA-256 over (type, then each name and encoded resource).
fn content_version(kind: ResourceType, resources: &BTreeMap<String, Any>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.type_url().as_bytes());
    for (name, any) in resources {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        for part in [
            name.as_bytes(),
            any.type_url.as_bytes(),
            any.value.as_slice(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    let digest = hasher.finalize();
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Why a snapshot was refused before publishing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A resource has an empty name; Envoy would reject it.
    #[error("a {type_url} resource has an empty name")]
    EmptyName {
        /// Type of the offending resource.
        type_url: &'static str,
    },
    /// Two resources of the same type share a name; which one Envoy keeps would be arbitrary.
    #[error("duplicate {type_url} resource name {name:?}")]
    DuplicateName {
        /// Type of the offending resources.
        type_url: &'static str,
        /// The repeated name.
        name: String,
    },
    /// An extension config without `typed_config` cannot be applied by Envoy.
    #[error("extension config {name:?} has no typed_config")]
    MissingTypedConfig {
        /// Name of the extension config.
        name: String,
    },
}

/// Everything one Envoy fleet should have: clusters (CDS) and extension configs (ECDS).
///
/// Built only through [`Snapshot::new`], which checks consistency, so a published snapshot is
/// always internally consistent.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    clusters: ResourceSet,
    extension_configs: ResourceSet,
}

impl Snapshot {
    /// Checks and encodes the resources. Names must be non-empty and unique per type; extension
    /// configs must carry a `typed_config`.
    pub fn new(
        clusters: Vec<Cluster>,
        extension_configs: Vec<TypedExtensionConfig>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut cluster_map = BTreeMap::new();
        for cluster in clusters {
            let name = cluster.name.clone();
            insert_unique(
                &mut cluster_map,
                ResourceType::Cluster,
                name,
                pack_any(cluster),
            )?;
        }
        let mut extension_map = BTreeMap::new();
        for config in extension_configs {
            if config.typed_config.is_none() {
                return Err(SnapshotError::MissingTypedConfig { name: config.name });
            }
            let name = config.name.clone();
            insert_unique(
                &mut extension_map,
                ResourceType::ExtensionConfig,
                name,
                pack_any(config),
            )?;
        }
        Ok(Snapshot {
            clusters: ResourceSet::new(ResourceType::Cluster, cluster_map),
            extension_configs: ResourceSet::new(ResourceType::ExtensionConfig, extension_map),
        })
    }

    /// A snapshot with no resources at all.
    pub fn empty() -> Snapshot {
        Snapshot {
            clusters: ResourceSet::new(ResourceType::Cluster, BTreeMap::new()),
            extension_configs: ResourceSet::new(ResourceType::ExtensionConfig, BTreeMap::new()),
        }
    }

    /// The resources of one type.
    pub fn resources(&self, kind: ResourceType) -> &ResourceSet {
        match kind {
            ResourceType::Cluster => &self.clusters,
            ResourceType::ExtensionConfig => &self.extension_configs,
        }
    }

    /// The clusters (CDS).
    pub fn clusters(&self) -> &ResourceSet {
        &self.clusters
    }

    /// The extension configs (ECDS).
    pub fn extension_configs(&self) -> &ResourceSet {
        &self.extension_configs
    }

    /// The content version of one type.
    pub fn version(&self, kind: ResourceType) -> &str {
        self.resources(kind).version()
    }

    fn same_versions(&self, other: &Snapshot) -> bool {
        ResourceType::ALL
            .into_iter()
            .all(|kind| self.version(kind) == other.version(kind))
    }
}

fn insert_unique(
    map: &mut BTreeMap<String, Any>,
    kind: ResourceType,
    name: String,
    any: Any,
) -> Result<(), SnapshotError> {
    let type_url = kind.type_url();
    if name.is_empty() {
        return Err(SnapshotError::EmptyName { type_url });
    }
    if map.contains_key(&name) {
        return Err(SnapshotError::DuplicateName { type_url, name });
    }
    map.insert(name, any);
    Ok(())
}

/// The published snapshot: one writer, many readers.
///
/// Starts with no snapshot; streams answer nothing until the first [`SnapshotCache::set`], so an
/// Envoy reconnecting to a control plane that has not loaded its database yet keeps its last
/// good config instead of receiving an empty one. Clones share the same channel.
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    sender: Arc<watch::Sender<Option<Arc<Snapshot>>>>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache::new()
    }
}

impl SnapshotCache {
    /// An empty cache (nothing published yet).
    pub fn new() -> SnapshotCache {
        let (sender, _) = watch::channel(None);
        SnapshotCache {
            sender: Arc::new(sender),
        }
    }

    /// Publishes a snapshot. Returns `true` if any type's version changed (streams are then
    /// notified), `false` if the content is identical to what is published (nothing happens).
    pub fn set(&self, snapshot: Snapshot) -> bool {
        let snapshot = Arc::new(snapshot);
        self.sender.send_if_modified(|current| {
            let unchanged = current
                .as_ref()
                .is_some_and(|published| published.same_versions(&snapshot));
            if unchanged {
                return false;
            }
            *current = Some(snapshot);
            true
        })
    }

    /// The published snapshot, if any. Cheap (an `Arc` clone); holds no lock afterwards.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.sender.borrow().clone()
    }

    /// A receiver notified on every published change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn cluster(name: &str, timeout_secs: i64) -> Cluster {
        Cluster {
            name: name.to_string(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout_secs,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn identical_content_has_identical_version() {
        let a = Snapshot::new(vec![cluster("a", 1), cluster("b", 1)], vec![]).unwrap();
        let b = Snapshot::new(vec![cluster("b", 1), cluster("a", 1)], vec![]).unwrap();
        assert_eq!(a.clusters().version(), b.clusters().version());
        let c = Snapshot::new(vec![cluster("a", 2), cluster("b", 1)], vec![]).unwrap();
        assert_ne!(a.clusters().version(), c.clusters().version());
        // The ECDS version is independent of the clusters.
        assert_eq!(
            a.extension_configs().version(),
            c.extension_configs().version()
        );
    }

    #[test]
    fn duplicate_and_empty_names_are_refused() {
        let err = Snapshot::new(vec![cluster("a", 1), cluster("a", 2)], vec![]).unwrap_err();
        assert!(matches!(err, SnapshotError::DuplicateName { ref name, .. } if name == "a"));
        let err = Snapshot::new(vec![cluster("", 1)], vec![]).unwrap_err();
        assert!(matches!(err, SnapshotError::EmptyName { .. }));
        let config = TypedExtensionConfig {
            name: "podgate".into(),
            typed_config: None,
        };
        let err = Snapshot::new(vec![], vec![config]).unwrap_err();
        assert!(matches!(err, SnapshotError::MissingTypedConfig { .. }));
    }

    #[test]
    fn cache_notifies_only_on_change() {
        let cache = SnapshotCache::new();
        assert!(cache.current().is_none());
        let mut rx = cache.subscribe();
        assert!(cache.set(Snapshot::new(vec![cluster("a", 1)], vec![]).unwrap()));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!cache.set(Snapshot::new(vec![cluster("a", 1)], vec![]).unwrap()));
        assert!(!rx.has_changed().unwrap());
        assert!(cache.set(Snapshot::new(vec![cluster("b", 1)], vec![]).unwrap()));
        assert!(rx.has_changed().unwrap());
        let names: Vec<_> = cache
            .current()
            .unwrap()
            .clusters()
            .names()
            .map(str::to_owned)
            .collect();
        assert_eq!(names, ["b"]);
    }
}
