//! `GET /v1/discover`: the candidates, grouped, with a suggested selector per group.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use super::{Discovery, Evidence, group_key, suggest};
use crate::api::wire;

/// The answer, from the candidates and the program's statistics.
pub fn answer(d: Option<&Discovery>, kernel: Option<wire::DiscoverKernel>) -> wire::Discover {
    let Some(d) = d else {
        return wire::Discover::default();
    };
    wire::Discover {
        enabled: true,
        groups: groups(d.candidates()),
        kernel,
        errors: d.errors.load(Ordering::Relaxed),
    }
}

/// Candidates by container, pod or cgroup, in that order of key.
pub fn groups(candidates: Vec<Evidence>) -> Vec<wire::CandidateGroup> {
    let mut by: BTreeMap<(&'static str, String), Vec<Evidence>> = BTreeMap::new();
    for e in candidates {
        by.entry(group_key(&e)).or_default().push(e);
    }
    by.into_iter()
        .map(|((kind, key), evidence)| {
            let mut cgroups: Vec<String> = evidence.iter().map(|e| e.cgroup.clone()).collect();
            cgroups.sort();
            cgroups.dedup();
            wire::CandidateGroup {
                by: kind.into(),
                key,
                cgroups,
                suggested_selector: suggest(&evidence[0]),
                evidence,
            }
        })
        .collect()
}
