//! The Kubernetes deployment (deploy/kubernetes) as `kubectl kustomize` renders it.
//!
//! Every rendered object is read into its k8s-openapi type and written back: the API's types
//! ignore fields they do not know, so an object that does not come back as it was has an
//! unknown or misspelled field (which the API server would drop or refuse). Then what the
//! daemon needs is checked: least-privilege RBAC, the host mounts, NODE_NAME from the
//! downward API, probes on the health listener, arguments the daemon accepts, and policies
//! that validate. No API server is needed (none can run here).

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// `kubectl kustomize deploy/kubernetes`, one JSON value per object.
fn rendered() -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .expect("running kubectl (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_norway::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

/// The object as its API type; it must come back unchanged (no unknown fields).
fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let name = format!("{} {}", v["kind"], v["metadata"]["name"]);
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    if let Some(at) = difference(v, &back, String::new()) {
        panic!("{name}: `{at}` is not a field of the API's type (misspelled or misplaced?)");
    }
    t
}

/// The first place where `written` has what `kept` has not (or differs), as a JSON path.
fn difference(written: &Value, kept: &Value, at: String) -> Option<String> {
    match (written, kept) {
        (Value::Object(w), Value::Object(k)) => w.iter().find_map(|(key, wv)| match k.get(key) {
            Some(kv) => difference(wv, kv, format!("{at}.{key}")),
            None => Some(format!("{at}.{key}")),
        }),
        (Value::Array(w), Value::Array(k)) if w.len() == k.len() => w
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(i, (wv, kv))| difference(wv, kv, format!("{at}[{i}]"))),
        (w, k) => (w != k).then_some(at),
    }
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let mut found = objects.iter().filter(|o| o["kind"] == kind);
    let o = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "more than one {kind}");
    o
}

#[test]
fn every_object_is_a_known_api_type_with_known_fields() {
    let objects = rendered();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "Service",
            "ServiceAccount"
        ])
    );
    for o in &objects {
        match o["kind"].as_str().unwrap() {
            "ClusterRole" => drop(typed::<ClusterRole>(o)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(o)),
            "ConfigMap" => drop(typed::<ConfigMap>(o)),
            "DaemonSet" => drop(typed::<DaemonSet>(o)),
            "Namespace" => drop(typed::<Namespace>(o)),
            "Service" => drop(typed::<Service>(o)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(o)),
            k => panic!("unexpected kind {k}"),
        }
        if o["kind"] != "Namespace"
            && o["kind"] != "ClusterRole"
            && o["kind"] != "ClusterRoleBinding"
        {
            assert_eq!(o["metadata"]["namespace"], "governance-system", "{o}");
        }
    }
}

#[test]
fn rbac_reads_pods_and_namespaces_and_nothing_else() {
    let objects = rendered();
    let role: ClusterRole = typed(one(&objects, "ClusterRole"));
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let r = &rules[0];
    assert_eq!(r.api_groups.as_deref(), Some(&[String::new()][..]));
    let set =
        |v: &Option<Vec<String>>| -> BTreeSet<String> { v.iter().flatten().cloned().collect() };
    assert_eq!(
        set(&r.resources),
        BTreeSet::from(["namespaces".into(), "pods".into()])
    );
    assert_eq!(
        r.verbs.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["get".into(), "list".into(), "watch".into()])
    );
    assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());

    let binding: ClusterRoleBinding = typed(one(&objects, "ClusterRoleBinding"));
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", "governance")
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        ("ServiceAccount", "governance", Some("governance-system"))
    );
    let sa: ServiceAccount = typed(one(&objects, "ServiceAccount"));
    assert_eq!(sa.metadata.name.as_deref(), Some("governance"));
}

#[test]
fn the_daemonset_has_what_the_daemon_needs() {
    let objects = rendered();
    let ds: DaemonSet = typed(one(&objects, "DaemonSet"));
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("governance"));
    assert_eq!(
        pod.host_pid,
        Some(true),
        "the daemon reads every process's /proc"
    );
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("localhost/governance:latest"));
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );

    // The arguments are ones the daemon takes.
    let args = c.args.clone().unwrap_or_default();
    let cli = governance::cli::Cli::try_parse_from(
        std::iter::once("governance".to_owned()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("the daemon refuses {args:?}: {e}"));
    let governance::cli::Command::Run(run) = cli.command else {
        panic!("not `governance run`: {args:?}")
    };
    assert!(run.kubernetes, "{args:?}");

    // NODE_NAME from the downward API.
    let env = c.env.clone().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    // The host mounts, each where the daemon looks.
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let mount_of = |host: &str| -> String {
        let v = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host))
            .unwrap_or_else(|| panic!("no hostPath {host}"));
        mounts
            .iter()
            .find(|m| m.name == v.name)
            .unwrap_or_else(|| panic!("{host} is not mounted"))
            .mount_path
            .clone()
    };
    for path in ["/sys/fs/bpf", "/sys/kernel/security", "/sys/fs/cgroup"] {
        assert_eq!(mount_of(path), path);
    }
    assert_eq!(mount_of("/var/lib/governance"), "/var/lib/governance");
    assert!(
        run.audit_dir.starts_with("/var/lib/governance")
            && run.ca_dir.starts_with("/var/lib/governance")
    );
    assert_eq!(
        PathBuf::from(mount_of("/run/governance")),
        run.socket.parent().unwrap()
    );
    assert_eq!(
        run.pins.parent().unwrap(),
        std::path::Path::new("/sys/fs/bpf"),
        "the pins outlive the pod"
    );
    // The policies: the ConfigMap, where --policy reads.
    let policies = volumes
        .iter()
        .find(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|c| c.name == "governance-policies")
        })
        .expect("the policy ConfigMap volume");
    let m = mounts.iter().find(|m| m.name == policies.name).unwrap();
    assert_eq!(PathBuf::from(&m.mount_path), run.policy);

    // Probes on the health listener, served without a token.
    let health = run.health_listen.expect("--health-listen");
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("the metrics port");
    assert_eq!(port.container_port, i32::from(health.port()));
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
        (&c.startup_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect(path);
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("metrics".into()));
    }

    // The Service selects the DaemonSet's pods, on the metrics port.
    let svc: Service = typed(one(&objects, "Service"));
    let spec = svc.spec.unwrap();
    let labels = ds_labels(one(&objects, "DaemonSet"));
    for (k, v) in spec.selector.unwrap() {
        assert_eq!(labels.get(&k), Some(&v), "the Service selects {k}={v}");
    }
    assert_eq!(
        spec.ports.unwrap()[0].target_port,
        Some(IntOrString::String("metrics".into()))
    );
}

fn ds_labels(v: &Value) -> std::collections::BTreeMap<String, String> {
    serde_json::from_value(v["spec"]["template"]["metadata"]["labels"].clone()).unwrap()
}

#[test]
fn the_policy_configmap_validates() {
    let objects = rendered();
    let cm: ConfigMap = typed(one(&objects, "ConfigMap"));
    assert_eq!(
        cm.metadata.name.as_deref(),
        Some("governance-policies"),
        "no hash suffix: updated in place"
    );
    let files: Vec<(PathBuf, String)> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (PathBuf::from(k), v))
        .collect();
    assert!(!files.is_empty());
    let set = governance::policy::parse(&files).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        set.kubernetes_policies().next().is_some(),
        "the shipped policy selects pods"
    );
}
