//! How `governance discover` groups candidates (by container, pod, or cgroup) and the policy
//! `agents:` selector it suggests for each group.

use super::Evidence;

/// The group a candidate is listed under: (`container`, id), (`pod`, uid) or (`cgroup`, path).
pub fn group_key(e: &Evidence) -> (&'static str, String) {
    let (container, pod) = if e.container.is_empty() && e.pod_uid.is_empty() {
        super::procs::container_of(&e.cgroup)
    } else {
        (e.container.clone(), e.pod_uid.clone())
    };
    if !pod.is_empty() {
        ("pod", pod)
    } else if !container.is_empty() {
        ("container", container)
    } else {
        ("cgroup", e.cgroup.clone())
    }
}

/// A policy `agents:` snippet that would govern the candidate's group, to paste into a policy
/// (see docs/policy.md): its cgroup, or for a pod its cgroup with a note to prefer its labels.
/// A process in the root cgroup, or in a login session, has no cgroup of its own to select.
pub fn suggest(e: &Evidence) -> String {
    if let Some(pod) = crate::kubernetes::cgroup::parse(&e.cgroup) {
        return format!(
            "# pod {}: with `run --kubernetes`, prefer its labels: agents: {{ pod_labels: {{ app: <its app label> }} }}\nagents:\n  cgroup: {}",
            pod.uid, pod.pod_path
        );
    }
    let path = e.cgroup.trim_matches('/');
    if path.is_empty() {
        return "# the process runs in the root cgroup: start it in a cgroup of its own (e.g. \
                `systemd-run --scope --unit=my-agent CMD`) and select that:\nagents:\n  cgroup: system.slice/my-agent.scope"
            .into();
    }
    let scope = path
        .rsplit('/')
        .next()
        .is_some_and(|last| last.starts_with("session-") || last.starts_with("user@"));
    if scope
        || path.starts_with("user.slice") && !path.contains(".service") && !path.contains(".scope")
    {
        return format!(
            "# {path} is a login session or user slice, shared with other processes: start the \
             process in a cgroup of its own (e.g. `systemd-run --scope --unit=my-agent CMD`) and select that\nagents:\n  cgroup: {path}"
        );
    }
    if let Some(unit) = path.rsplit('/').next().filter(|l| l.ends_with(".service")) {
        // systemd removes a service's cgroup when it stops and makes a new one when it starts
        // again; the new one is governed from the reload that finds it, and a service that
        // restarts itself (Restart=) runs its start ungoverned until then (red team round 11).
        let name = unit.trim_end_matches(".service");
        return format!(
            "# {unit}'s cgroup is made again each time it restarts, and governed only from the \
             reload that finds it: put the unit in a slice of its own (Slice={name}-agent.slice in \
             its [Service] section) and select the slice instead\nagents:\n  cgroup: {path}"
        );
    }
    format!("agents:\n  cgroup: {path}")
}
