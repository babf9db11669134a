//! Kubernetes selectors: pod labels, namespace, namespace labels, service account, with the
//! semantics of Kubernetes label selectors (`matchLabels`, `matchExpressions` with `In`,
//! `NotIn`, `Exists`, `DoesNotExist`), and the identity of a pod they are matched against.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::model::{self, LabelOperator};

/// What a pod is, as the Kubernetes API told it (the agent is the pod's cgroup).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodIdentity {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The labels of the pod's namespace; None while the namespace is not known (then a
    /// `namespace_labels` selector does not match).
    #[serde(default)]
    pub namespace_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub service_account: String,
}

/// A validated label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<(String, LabelOperator, BTreeSet<String>)>,
}

impl LabelSelector {
    /// Kubernetes semantics: every pair and every requirement holds (an empty selector
    /// matches every set of labels).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(k, op, values)| {
                let v = labels.get(k);
                match op {
                    LabelOperator::In => v.is_some_and(|v| values.contains(v)),
                    LabelOperator::NotIn => v.is_none_or(|v| !values.contains(v)),
                    LabelOperator::Exists => v.is_some(),
                    LabelOperator::DoesNotExist => v.is_none(),
                }
            })
    }

    /// Validate a selector as written; Err says what is wrong.
    pub fn from_doc(doc: &model::LabelSelector) -> Result<Self, String> {
        for (k, v) in &doc.match_labels {
            label_key(k)?;
            label_value(v).map_err(|e| format!("label `{k}`: {e}"))?;
        }
        let mut expressions = Vec::new();
        for r in &doc.match_expressions {
            label_key(&r.key)?;
            let needs_values = matches!(r.operator, LabelOperator::In | LabelOperator::NotIn);
            if needs_values && r.values.is_empty() {
                return Err(format!(
                    "`{}` {:?}: `In` and `NotIn` need at least one value",
                    r.key, r.operator
                ));
            }
            if !needs_values && !r.values.is_empty() {
                return Err(format!(
                    "`{}` {:?}: `Exists` and `DoesNotExist` take no values",
                    r.key, r.operator
                ));
            }
            for v in &r.values {
                label_value(v).map_err(|e| format!("label `{}`: {e}", r.key))?;
            }
            expressions.push((
                r.key.clone(),
                r.operator,
                r.values.iter().cloned().collect(),
            ));
        }
        Ok(Self {
            match_labels: doc.match_labels.clone(),
            expressions,
        })
    }
}

impl std::fmt::Display for LabelSelector {
    /// The string form of `kubectl get -l`: `app=x,tier in (a,b),!legacy`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for (k, op, values) in &self.expressions {
            let list = values.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match op {
                LabelOperator::In => format!("{k} in ({list})"),
                LabelOperator::NotIn => format!("{k} notin ({list})"),
                LabelOperator::Exists => k.clone(),
                LabelOperator::DoesNotExist => format!("!{k}"),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// The Kubernetes selectors of a policy; every one given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSelector {
    pub pod_labels: Option<LabelSelector>,
    pub namespace: Option<String>,
    pub namespace_labels: Option<LabelSelector>,
    pub service_account: Option<String>,
}

impl PodSelector {
    /// Does this pod match? A pod whose identity is unknown matches nothing (never by
    /// accident); namespace labels not known yet match no `namespace_labels`.
    pub fn matches(&self, pod: Option<&PodIdentity>) -> bool {
        let Some(pod) = pod else { return false };
        self.pod_labels
            .as_ref()
            .is_none_or(|s| s.matches(&pod.labels))
            && self.namespace.as_ref().is_none_or(|n| *n == pod.namespace)
            && self
                .namespace_labels
                .as_ref()
                .is_none_or(|s| pod.namespace_labels.as_ref().is_some_and(|l| s.matches(l)))
            && self
                .service_account
                .as_ref()
                .is_none_or(|a| *a == pod.service_account)
    }

    /// `pod_labels=<sel> namespace=<ns> namespace_labels=<sel> service_account=<sa>`.
    pub fn words(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(s) = &self.pod_labels {
            w.push(format!("pod_labels={s}"));
        }
        if let Some(n) = &self.namespace {
            w.push(format!("namespace={n}"));
        }
        if let Some(s) = &self.namespace_labels {
            w.push(format!("namespace_labels={s}"));
        }
        if let Some(a) = &self.service_account {
            w.push(format!("service_account={a}"));
        }
        w
    }
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of 1 to 63 characters
/// (alphanumerics, `-`, `_`, `.`, beginning and ending alphanumeric).
fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && !dns_subdomain(p)
    {
        return Err(format!(
            "label key `{k}`: the prefix must be a DNS subdomain"
        ));
    }
    if name.is_empty() || name.len() > 63 || !name_chars(name) {
        return Err(format!(
            "label key `{k}`: a name is 1 to 63 of a-z, A-Z, 0-9, `-`, `_`, `.`, beginning and ending alphanumeric"
        ));
    }
    Ok(())
}

/// A label value: empty, or up to 63 characters like a key's name.
fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || (v.len() <= 63 && name_chars(v)) {
        Ok(())
    } else {
        Err(format!(
            "value `{v}`: at most 63 of a-z, A-Z, 0-9, `-`, `_`, `.`, beginning and ending alphanumeric"
        ))
    }
}

fn name_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS label (RFC 1123): what namespace names are.
pub fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS subdomain (RFC 1123): what service account names and label prefixes are.
pub fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(yaml: &str) -> Result<LabelSelector, String> {
        let doc: model::LabelSelector = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        LabelSelector::from_doc(&doc)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_have_kubernetes_semantics() {
        let s = sel("matchLabels: { app: agent }\nmatchExpressions:\n  \
             - { key: tier, operator: In, values: [a, b] }\n  \
             - { key: legacy, operator: DoesNotExist }\n  \
             - { key: team, operator: NotIn, values: [red] }\n  \
             - { key: example.com/owner, operator: Exists }\n")
        .unwrap();
        let ok = labels(&[("app", "agent"), ("tier", "a"), ("example.com/owner", "x")]);
        assert!(s.matches(&ok));
        for (k, v) in [("app", "other"), ("tier", "c")] {
            let mut l = ok.clone();
            l.insert(k.into(), v.into());
            assert!(!s.matches(&l), "{k}={v}");
        }
        for (k, v) in [("legacy", ""), ("team", "red")] {
            let mut l = ok.clone();
            l.insert(k.into(), v.into());
            assert!(!s.matches(&l), "{k}={v}");
        }
        let mut l = ok.clone();
        l.remove("example.com/owner");
        assert!(!s.matches(&l), "Exists");
        l = ok.clone();
        l.remove("tier");
        assert!(!s.matches(&l), "In needs the label");
        l = ok.clone();
        l.insert("team".into(), "blue".into());
        assert!(s.matches(&l), "NotIn of another value");
        assert_eq!(
            s.to_string(),
            "app=agent,tier in (a,b),!legacy,team notin (red),example.com/owner"
        );
        // The empty selector matches everything, as in Kubernetes.
        assert!(sel("{}").unwrap().matches(&BTreeMap::new()));
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for (yaml, why) in [
            ("matchLabels: { '-a': x }", "label key `-a`"),
            ("matchLabels: { 'Bad_Prefix/a': x }", "DNS subdomain"),
            ("matchLabels: { a: 'x y' }", "value `x y`"),
            (
                "matchExpressions: [ { key: a, operator: In } ]",
                "need at least one value",
            ),
            (
                "matchExpressions: [ { key: a, operator: Exists, values: [x] } ]",
                "take no values",
            ),
            (
                "matchExpressions: [ { key: a, operator: Has } ]",
                "unknown variant",
            ),
            ("app: x", "unknown field"),
        ] {
            let e = sel(yaml).unwrap_err();
            assert!(e.contains(why), "{yaml}: {e}");
        }
    }

    #[test]
    fn unknown_pods_never_match() {
        let s = PodSelector {
            pod_labels: Some(LabelSelector::default()),
            ..Default::default()
        };
        assert!(!s.matches(None));
        let pod = PodIdentity {
            namespace: "agents".into(),
            service_account: "bot".into(),
            ..Default::default()
        };
        assert!(s.matches(Some(&pod)));
        let ns = PodSelector {
            namespace_labels: Some(LabelSelector::default()),
            ..Default::default()
        };
        assert!(!ns.matches(Some(&pod)), "namespace labels unknown");
        let sa = PodSelector {
            namespace: Some("agents".into()),
            service_account: Some("bot".into()),
            ..Default::default()
        };
        assert!(sa.matches(Some(&pod)));
        let other = PodSelector {
            service_account: Some("default".into()),
            ..Default::default()
        };
        assert!(!other.matches(Some(&pod)));
    }
}
