//! Kubernetes identity: which pod (and container) a cgroup is ([`cgroup`]), and what that pod is
//! (name, namespace, labels, namespace labels, service account) from the API server.
//!
//! `governance run --kubernetes` watches the pods of its node (field selector
//! `spec.nodeName=$NODE_NAME`) and all namespaces with kube-rs watchers (list, then watch from
//! the list's resourceVersion; a watch that ends is resumed, a `410 Gone` relists). What the
//! API said last is kept: while the API server cannot be reached, and for a pod the API has
//! deleted whose cgroup is still there, the last known identity stands, so an agent stays
//! governed by what matched before. A pod never seen matches no Kubernetes selector. The
//! state of the API connection is told as `kubernetes.synced` / `kubernetes.unreachable`
//! lifecycle records and the `governance_kubernetes_api_reachable` gauge.

pub mod cgroup;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use futures_util::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    runtime::watcher::{self, Event},
};

use crate::policy::PodIdentity;

/// What the API said about one pod. (Kept in [`SAVED`]: a field added later must have a
/// default, so that a newer build reads an older one's file.)
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct PodMeta {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    service_account: String,
    /// Deleted in the API (kept while its cgroup is there).
    deleted: bool,
}

/// The connection to the API server, as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ApiState {
    /// Not listed yet.
    #[default]
    Starting,
    /// Listed, and watching.
    Synced,
    /// The last request failed (the last known identities stand).
    Unreachable(String),
}

/// The file, in the directory of the copy of the policy in force, where the identities the API
/// server told last are kept for the next start: a daemon restarted while the API server
/// cannot be reached (a rolling upgrade during a control-plane outage) governs the pods the
/// last one did, instead of none (red team round 30: every pod was released until the API
/// answered).
pub const SAVED: &str = "kubernetes-identities.json";

/// What [`SAVED`] holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// [`SAVED_VERSION`]: a file of another version is not read.
    version: u32,
    pods: HashMap<String, PodMeta>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
}

const SAVED_VERSION: u32 = 1;

#[derive(Default)]
struct State {
    pods: HashMap<String, PodMeta>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// The uids listed since the last `Init` of the pod watcher (a relist).
    relisting: Option<HashSet<String>>,
    api: ApiState,
}

/// The pods of this node and the namespaces, as the API server told them; shared by the
/// watch task and the daemon's agent discovery.
pub struct Identities {
    state: Mutex<State>,
    /// Bumped when an identity or the API state changes (the daemon rediscovers its agents).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Identities {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Identities {
    /// The identity of the pod with this uid, if the API ever told it.
    pub fn pod(&self, uid: &str) -> Option<PodIdentity> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let p = s.pods.get(uid)?;
        Some(PodIdentity {
            uid: uid.to_owned(),
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            namespace_labels: s.namespaces.get(&p.namespace).cloned(),
            service_account: p.service_account.clone(),
        })
    }

    /// Forget the pods the API deleted whose cgroups are gone (`live`: the pod uids that
    /// have cgroups).
    pub fn forget_deleted(&self, live: &HashSet<String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.pods.retain(|uid, p| !p.deleted || live.contains(uid));
    }

    /// Write the identities to `path` (a new file renamed over it: a reader never sees half).
    /// Synced to disk (file and directory) before it returns: a power loss leaves the old
    /// file or the new one.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec(&Saved {
                version: SAVED_VERSION,
                pods: s.pods.clone(),
                namespaces: s.namespaces.clone(),
            })?
        };
        crate::durable::replace(path, 0o600, |w| w.write_all(&json))
    }

    /// Take the identities a previous daemon saved at `path` ([`Identities::save`]) as the last
    /// known ones, until the API server tells otherwise; how many pods.
    pub fn restore(&self, path: &std::path::Path) -> std::io::Result<usize> {
        let saved: Saved = serde_json::from_slice(&std::fs::read(path)?)?;
        if saved.version != SAVED_VERSION {
            return Err(std::io::Error::other(format!(
                "version {} (this build reads {SAVED_VERSION})",
                saved.version
            )));
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = saved.pods.len();
        s.pods = saved.pods;
        s.namespaces = saved.namespaces;
        Ok(n)
    }

    pub fn api_state(&self) -> ApiState {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .api
            .clone()
    }

    /// Told when an identity or the API state changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Apply one event of the pod watcher; true when an identity changed.
    fn pod_event(&self, e: Event<Pod>) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            Event::Init => {
                s.relisting = Some(HashSet::new());
                false
            }
            Event::InitApply(p) => {
                let Some((uid, meta)) = pod_meta(&p) else {
                    return false;
                };
                if let Some(seen) = s.relisting.as_mut() {
                    seen.insert(uid.clone());
                }
                s.pods.insert(uid, meta.clone()) != Some(meta)
            }
            Event::InitDone => {
                // Pods the relist did not return were deleted while the watch was down.
                let seen = s.relisting.take().unwrap_or_default();
                let mut changed = false;
                for (uid, p) in s.pods.iter_mut() {
                    if !seen.contains(uid) && !p.deleted {
                        p.deleted = true;
                        changed = true;
                    }
                }
                changed
            }
            Event::Apply(p) => match pod_meta(&p) {
                Some((uid, meta)) => s.pods.insert(uid, meta.clone()) != Some(meta),
                None => false,
            },
            Event::Delete(p) => {
                let uid = p.metadata.uid.unwrap_or_default();
                s.pods.get_mut(&uid).is_some_and(|p| {
                    let was = p.deleted;
                    p.deleted = true;
                    !was
                })
            }
        }
    }

    /// Apply one event of the namespace watcher; true when labels changed.
    fn namespace_event(&self, e: Event<Namespace>) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            Event::Init | Event::InitDone => false,
            // A namespace deleted keeps its labels while its pods' cgroups remain.
            Event::Delete(_) => false,
            Event::InitApply(ns) | Event::Apply(ns) => {
                let Some(name) = ns.metadata.name else {
                    return false;
                };
                let labels = ns.metadata.labels.unwrap_or_default();
                s.namespaces.insert(name, labels.clone()) != Some(labels)
            }
        }
    }

    /// Set the API state; the new state when it changed.
    fn set_api(&self, api: ApiState) -> Option<ApiState> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match (&s.api, &api) {
            // One report per outage, not one per retry.
            (ApiState::Unreachable(_), ApiState::Unreachable(_)) => false,
            (a, b) => a != b,
        };
        s.api = api.clone();
        changed.then_some(api)
    }
}

fn pod_meta(p: &Pod) -> Option<(String, PodMeta)> {
    let m = &p.metadata;
    // (A static pod's cgroup carries the kubelet's hash of its manifest, which its mirror pod
    // keeps in the `kubernetes.io/config.mirror` annotation; anyone who may create pods may
    // set that annotation, so it is not trusted as a key: static pods are selected by their
    // cgroup instead. Red team rounds 12 and 14.)
    let uid = m.uid.clone().filter(|u| !u.is_empty())?;
    Some((
        uid,
        PodMeta {
            name: m.name.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            // The API sets it on admission; `default` is what an unset one means.
            service_account: p
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
            deleted: false,
        },
    ))
}

/// Which watcher an event came from.
enum Watched {
    Pod(Box<Result<Event<Pod>, watcher::Error>>),
    Namespace(Box<Result<Event<Namespace>, watcher::Error>>),
}

/// Watch the pods of `node` and all namespaces into `ids` until the task is dropped; `report`
/// is told each change of the API state (a relist after `410 Gone` is no outage).
pub async fn watch(
    client: Client,
    node: String,
    ids: Arc<Identities>,
    report: impl Fn(&ApiState) + Send,
) {
    use kube::runtime::WatchStreamExt as _;
    let pods = watcher::watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    )
    .default_backoff()
    .map(|e| Watched::Pod(Box::new(e)));
    let namespaces = watcher::watcher(Api::<Namespace>::all(client), watcher::Config::default())
        .default_backoff()
        .map(|e| Watched::Namespace(Box::new(e)));
    let mut events = std::pin::pin!(stream::select(pods, namespaces));
    let mut listed = (false, false);
    while let Some(e) = events.next().await {
        // Ok(Ok(a pod event)), Ok(Err(a namespace event)), or Err(either watcher's error).
        let e = match e {
            Watched::Pod(e) => (*e).map(Ok),
            Watched::Namespace(e) => (*e).map(Err),
        };
        let (changed, api) = match e {
            Ok(Ok(e)) => {
                listed.0 |= matches!(e, Event::InitDone);
                (ids.pod_event(e), None)
            }
            Ok(Err(e)) => {
                listed.1 |= matches!(e, Event::InitDone);
                (ids.namespace_event(e), None)
            }
            Err(e) => {
                let gone = matches!(&e, watcher::Error::WatchError(s) if s.code == 410);
                if gone {
                    tracing::info!("kubernetes: {e}; relisting");
                    (false, None)
                } else {
                    tracing::warn!("kubernetes: {e}");
                    (false, Some(ApiState::Unreachable(e.to_string())))
                }
            }
        };
        let api = api.or_else(|| (listed == (true, true)).then_some(ApiState::Synced));
        let api_changed = api.and_then(|a| ids.set_api(a));
        if let Some(a) = &api_changed {
            report(a);
        }
        if changed || api_changed.is_some() {
            ids.bump();
        }
    }
}

#[cfg(test)]
mod tests;
