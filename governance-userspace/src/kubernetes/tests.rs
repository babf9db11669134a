//! kube-rs against a stand-in for the API server.
//!
//! No Kubernetes API server can be installed or reached where these tests run, so an axum
//! server on loopback plays one: it answers the requests kube-rs's watchers make with recorded
//! API responses in the exact shape the API server sends (tests/fixtures/kubernetes/: a pod
//! list, a namespace list, watch streams with ADDED, MODIFIED and DELETED events and a
//! BOOKMARK, a watch that ends and is resumed from the bookmark, a `410 Gone` ERROR event for
//! a resourceVersion too old, and the relist that follows), then stops answering at all.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    response::Response,
    routing::get,
};
use futures_util::stream;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kubernetes");
const AGENT: &str = "2b9e3c4a-8f1d-4c7e-9a65-0d3f1e2b7c41";
const WEB: &str = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
const BATCH: &str = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}"))
        .unwrap_or_else(|e| panic!("{FIXTURES}/{name}: {e}"))
}

/// What the stand-in was asked, and how far along its script it is.
struct Script {
    requests: Vec<String>,
    pod_lists: usize,
    pod_watches: usize,
    /// Ends the watches held open (the API server going away).
    stop: tokio::sync::watch::Receiver<bool>,
}

/// A JSON response; a watch body streams its lines, then ends or (`hold`) stays open as a
/// watch with nothing to say does, until the server stops.
fn answer(body: String, watch: bool, hold: Option<tokio::sync::watch::Receiver<bool>>) -> Response {
    let body = if watch {
        let lines: Vec<Result<String, std::io::Error>> =
            body.lines().map(|l| Ok(format!("{l}\n"))).collect();
        let head = stream::iter(lines);
        match hold {
            Some(mut stop) => {
                use futures_util::StreamExt as _;
                let until_stop = stream::once(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .filter_map(|()| async { None });
                Body::from_stream(head.chain(until_stop))
            }
            None => Body::from_stream(head),
        }
    } else {
        Body::from(body)
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .expect("a response")
}

async fn pods(
    State(s): State<Arc<Mutex<Script>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = s.lock().unwrap();
    s.requests.push(format!("pods {}", describe(&q)));
    if q.get("watch").is_some_and(|w| w == "true") {
        s.pod_watches += 1;
        match s.pod_watches {
            // Events, a bookmark at 1010, then the server ends the watch (as at timeoutSeconds).
            1 => answer(fixture("pods-watch-1.jsonl"), true, None),
            // Resumed at 1010, which is too old by now: 410 Gone as an ERROR event.
            2 => answer(fixture("pods-watch-2-gone.jsonl"), true, None),
            // After the relist: a pod deleted, then quiet.
            _ => answer(fixture("pods-watch-3.jsonl"), true, Some(s.stop.clone())),
        }
    } else {
        s.pod_lists += 1;
        let list = if s.pod_lists == 1 {
            "pods-list.json"
        } else {
            "pods-relist.json"
        };
        answer(fixture(list), false, None)
    }
}

async fn namespaces(
    State(s): State<Arc<Mutex<Script>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = s.lock().unwrap();
    s.requests.push(format!("namespaces {}", describe(&q)));
    if q.get("watch").is_some_and(|w| w == "true") {
        answer(
            fixture("namespaces-watch.jsonl"),
            true,
            Some(s.stop.clone()),
        )
    } else {
        answer(fixture("namespaces-list.json"), false, None)
    }
}

/// The query parameters that matter here, in a fixed order.
fn describe(q: &HashMap<String, String>) -> String {
    ["watch", "fieldSelector", "resourceVersion"]
        .iter()
        .filter_map(|k| q.get(*k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Wait (at most 30 s) until `cond` holds of the identities, re-checking at each change.
async fn until(ids: &Identities, what: &str, cond: impl Fn(&Identities) -> bool) {
    let mut rx = ids.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !cond(ids) {
            rx.changed().await.expect("the identities are alive");
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

#[tokio::test]
async fn watches_pods_and_namespaces_through_relists_and_outages() {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let script = Arc::new(Mutex::new(Script {
        requests: Vec::new(),
        pod_lists: 0,
        pod_watches: 0,
        stop: stopped,
    }));
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .route("/api/v1/namespaces", get(namespaces))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let ids = Arc::new(Identities::default());
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    let task = tokio::spawn(watch(client, "node-1".into(), ids.clone(), move |s| {
        r.lock().unwrap().push(s.clone())
    }));

    // The first list, the watch's events, the resumed watch's 410, the relist, the deletion.
    until(&ids, "the relist and the deletion after it", |ids| {
        let s = ids.state.lock().unwrap();
        s.pods.get(BATCH).is_some_and(|p| p.deleted)
            && s.pods.get(WEB).is_some_and(|p| p.deleted)
            && s.namespaces
                .get("agents")
                .is_some_and(|l| l.contains_key("governance"))
    })
    .await;
    let agent = ids.pod(AGENT).expect("the agent's pod");
    assert_eq!(
        (
            agent.name.as_str(),
            agent.namespace.as_str(),
            agent.service_account.as_str()
        ),
        ("coding-agent-7d9f8b6c5-x2x4k", "agents", "coding-agent")
    );
    assert_eq!(
        agent.labels.get("tier").map(String::as_str),
        Some("sandbox")
    );
    let ns = agent.namespace_labels.expect("the namespace's labels");
    assert_eq!(ns.get("governance").map(String::as_str), Some("strict"));
    assert_eq!(ids.api_state(), ApiState::Synced);
    // Deleted pods keep their identity while their cgroups are there, then are forgotten.
    assert!(ids.pod(WEB).is_some() && ids.pod(BATCH).is_some());
    ids.forget_deleted(&HashSet::from([AGENT.to_owned(), BATCH.to_owned()]));
    assert!(ids.pod(WEB).is_none() && ids.pod(BATCH).is_some());

    let requests = script.lock().unwrap().requests.clone();
    let pods: Vec<&String> = requests.iter().filter(|r| r.starts_with("pods")).collect();
    assert!(
        pods.iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName=node-1")),
        "only this node's pods: {requests:#?}"
    );
    let watches: Vec<&&String> = pods.iter().filter(|r| r.contains("watch=true")).collect();
    assert!(
        watches.len() >= 3
            && watches[0].contains("resourceVersion=1000")
            && watches[1].contains("resourceVersion=1010")
            && watches[2].contains("resourceVersion=2001"),
        "resumed from the bookmark, then from the relist: {requests:#?}"
    );
    assert_eq!(script.lock().unwrap().pod_lists, 2, "{requests:#?}");

    // The API server goes away (no listener, its watches end): reported once, and the
    // identities stand.
    server.abort();
    let _ = server.await;
    stop.send_replace(true);
    until(&ids, "the outage to be seen", |ids| {
        matches!(ids.api_state(), ApiState::Unreachable(_))
    })
    .await;
    assert_eq!(ids.pod(AGENT).map(|p| p.labels), Some(agent.labels));
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.first(), Some(&ApiState::Synced), "{reports:?}");
    assert!(
        matches!(reports.last(), Some(ApiState::Unreachable(_))),
        "{reports:?}"
    );
    // A 410 is a relist, not an outage.
    assert_eq!(reports.len(), 2, "{reports:?}");
    task.abort();
}

/// Real cgroup directories, removed deepest first when dropped.
struct Tree(std::path::PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let mut dirs = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn pods_of(list: &str) -> Vec<Pod> {
    let v: serde_json::Value = serde_json::from_str(&fixture(list)).unwrap();
    serde_json::from_value(v["items"].clone()).unwrap()
}

/// The kubelet's layouts made for real in the cgroup2 hierarchy (both drivers, the three QoS
/// classes, containerd and CRI-O containers): a pod's cgroup is the agent root, matched by
/// the selectors on what the API said; a pod the API never told matches nothing; a pod the API
/// deleted keeps its identity while its cgroup is there.
#[test]
fn pod_cgroups_in_both_layouts_are_agent_roots() {
    let root = crate::agents::cgroup2_mount().unwrap();
    let base = format!("governance-test-kube-{}", std::process::id());
    let tree = Tree(root.join(&base));
    const UNKNOWN: &str = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    let id = "8e1f2c3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let u = |uid: &str| uid.replace('-', "_");
    let agent_pod = format!(
        "{base}/systemd/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        u(AGENT)
    );
    let batch_pod = format!(
        "{base}/systemd/kubepods.slice/kubepods-pod{}.slice",
        u(BATCH)
    );
    let web_pod = format!("{base}/cgroupfs/kubepods/besteffort/pod{WEB}");
    let unknown_pod = format!("{base}/cgroupfs/kubepods/burstable/pod{UNKNOWN}");
    for dir in [
        format!("{agent_pod}/cri-containerd-{id}.scope"),
        format!("{batch_pod}/crio-{id}.scope"),
        format!("{batch_pod}/crio-conmon-{id}.scope"),
        format!("{web_pod}/{id}"),
        format!("{unknown_pod}/{id}"),
    ] {
        std::fs::create_dir_all(root.join(&dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
    }

    let ids = Identities::default();
    ids.pod_event(Event::Init);
    for p in pods_of("pods-list.json")
        .into_iter()
        .chain(pods_of("pods-relist.json"))
    {
        ids.pod_event(Event::InitApply(p));
    }
    ids.pod_event(Event::InitDone);
    let namespaces: serde_json::Value =
        serde_json::from_str(&fixture("namespaces-list.json")).unwrap();
    for ns in serde_json::from_value::<Vec<Namespace>>(namespaces["items"].clone()).unwrap() {
        ids.namespace_event(Event::Apply(ns));
    }

    let set = crate::policy::parse(&[(
        "k8s.yaml".into(),
        "name: coding\nagents: { pod_labels: { matchLabels: { app: coding-agent }, matchExpressions: [ { key: tier, operator: In, values: [sandbox] } ] } }\n\
         ---\nname: batch\nagents: { namespace: agents, service_account: batch }\n\
         ---\nname: default-ns\nagents: { namespace_labels: { matchLabels: { kubernetes.io/metadata.name: default } } }\n\
         ---\nname: everything\nagents: { pod_labels: {} }\n"
            .into(),
    )])
    .unwrap();
    let found = crate::agents::discover(&root, &set, false, Some(&ids)).unwrap();
    let ours: Vec<_> = found.iter().filter(|a| a.rel.starts_with(&base)).collect();
    let rels: Vec<&str> = ours.iter().map(|a| a.rel.as_str()).collect();
    let mut want = vec![agent_pod.as_str(), batch_pod.as_str(), web_pod.as_str()];
    want.sort();
    assert_eq!(rels, want, "the pods' cgroups, never their containers'");
    let agent = ours.iter().find(|a| a.rel == agent_pod).unwrap();
    assert_eq!(agent.name, "agents/coding-agent-7d9f8b6c5-x2x4k");
    assert_eq!(agent.pod.as_ref().unwrap().service_account, "coding-agent");
    let policies = |rel: &str| -> Vec<String> {
        let a = ours.iter().find(|a| a.rel == rel).unwrap();
        set.policies
            .iter()
            .filter(|p| {
                p.selector
                    .matches(&a.rel, a.label.as_deref(), a.pod.as_ref())
            })
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(policies(&agent_pod), ["coding", "everything"]);
    assert_eq!(policies(&batch_pod), ["batch", "everything"]);
    assert_eq!(policies(&web_pod), ["default-ns", "everything"]);

    // The web pod deleted in the API: its cgroup is still there, so it stays governed as it was.
    ids.pod_event(Event::Delete(pods_of("pods-list.json").remove(1)));
    let again = crate::agents::discover(&root, &set, false, Some(&ids)).unwrap();
    assert!(again.iter().any(|a| a.rel == web_pod), "still governed");
    // Its cgroup gone: forgotten.
    drop(Tree(root.join(&web_pod)));
    crate::agents::discover(&root, &set, false, Some(&ids)).unwrap();
    assert!(ids.pod(WEB).is_none() && ids.pod(AGENT).is_some());
    drop(tree);
    assert!(!root.join(&base).exists(), "the test's cgroups are removed");
}

/// A pod is known by its own uid only: a `kubernetes.io/config.mirror` annotation, which
/// anyone who may create pods may set, does not make a pod another pod's cgroup (red team
/// round 14: a decoy pod naming the agent pod's uid took its identity). Control: the agent pod
/// is known by its uid.
#[test]
fn a_mirror_annotation_takes_no_other_pod_s_identity() {
    let pod = |uid: &str, labels: serde_json::Value, mirror: Option<&str>| -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": format!("pod-{uid}"), "namespace": "agents", "uid": uid,
                          "labels": labels},
            "spec": {"containers": []}
        });
        if let Some(key) = mirror {
            v["metadata"]["annotations"] = serde_json::json!({"kubernetes.io/config.mirror": key});
        }
        serde_json::from_value(v).unwrap()
    };
    let ids = Identities::default();
    let agent = "0a1b2c3d-0000-4000-8000-00000000abcd";
    ids.pod_event(Event::Apply(pod(
        agent,
        serde_json::json!({"governance.example.com/agent": "true"}),
        None,
    )));
    ids.pod_event(Event::Apply(pod(
        "5e6f7a8b-0000-4000-8000-00000000beef",
        serde_json::json!({"app": "decoy"}),
        Some(agent),
    )));
    let known = ids.pod(agent).expect("the agent pod");
    assert_eq!(known.name, format!("pod-{agent}"));
    assert_eq!(
        known
            .labels
            .get("governance.example.com/agent")
            .map(String::as_str),
        Some("true")
    );
}

/// What the API told is kept for the next start (red team round 30: a restart while the API
/// server could not be reached released every pod): saved, it is the next daemon's last known
/// identities, namespace labels included; a file that does not read is an error, and nothing
/// is taken from it.
#[test]
fn identities_are_kept_for_the_next_start() {
    let ids = Identities::default();
    for p in pods_of("pods-list.json") {
        ids.pod_event(Event::Apply(p));
    }
    let namespaces: serde_json::Value =
        serde_json::from_str(&fixture("namespaces-list.json")).unwrap();
    for ns in serde_json::from_value::<Vec<Namespace>>(namespaces["items"].clone()).unwrap() {
        ids.namespace_event(Event::Apply(ns));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SAVED);
    ids.save(&path).unwrap();
    let next = Identities::default();
    assert_eq!(next.restore(&path).unwrap(), 2);
    assert_eq!(next.pod(AGENT), ids.pod(AGENT));
    assert!(next.pod(AGENT).unwrap().namespace_labels.is_some());
    assert_eq!(next.pod(WEB), ids.pod(WEB));
    assert_eq!(
        next.api_state(),
        ApiState::Starting,
        "not synced until the API answers"
    );
    std::fs::write(&path, "{\"pods\": {").unwrap();
    let broken = Identities::default();
    assert!(broken.restore(&path).is_err());
    assert!(broken.pod(AGENT).is_none());
}
