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
