//! Pods and containers from cgroup paths, as the kubelet lays them out.
//!
//! systemd cgroup driver (the default of kubeadm, containerd and CRI-O):
//!
//! ```text
//! kubepods.slice/kubepods-pod<uid>.slice/cri-containerd-<id>.scope            (Guaranteed)
//! kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/crio-<id>.scope
//! kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/...
//! ```
//!
//! with the pod uid's `-` written `_` (systemd reserves `-` for the slice hierarchy); cgroupfs
//! driver: `kubepods/pod<uid>/<id>`, `kubepods/burstable/pod<uid>/<id>`,
//! `kubepods/besteffort/pod<uid>/crio-<id>`. The kubepods tree may sit below other cgroups (a
//! kind node's `kubelet.slice/kubelet-kubepods.slice/...`, a nested runtime's cgroup), so only
//! the segments from the kubepods one on are read.

/// The pod's QoS class, from where the kubelet put its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// A cgroup path that is a pod's cgroup (the agent root) or inside one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's uid, with dashes (as the API has it).
    pub uid: String,
    pub qos: Qos,
    /// The pod's cgroup, relative to the cgroup2 mount.
    pub pod_path: String,
    /// The container, when the path is a container's cgroup (or inside one).
    pub container: Option<Container>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime's container id.
    pub id: String,
    /// `containerd`, `cri-o`, `docker`, or empty (cgroupfs driver with containerd: the
    /// directory is the bare id).
    pub runtime: &'static str,
}

/// The pod (and container) a cgroup path belongs to, or None outside every pod.
pub fn parse(rel: &str) -> Option<PodCgroup> {
    let segs: Vec<&str> = rel.trim_matches('/').split('/').collect();
    // The pod segment, and the QoS class its place says.
    let (i, uid, qos) = segs.iter().enumerate().find_map(|(i, s)| {
        let parent = i.checked_sub(1).map(|p| segs[p]);
        let grandparent = i.checked_sub(2).map(|p| segs[p]);
        pod_segment(s, parent, grandparent).map(|(uid, qos)| (i, uid, qos))
    })?;
    let container = segs.get(i + 1).and_then(|s| container_segment(s));
    Some(PodCgroup {
        uid,
        qos,
        pod_path: segs[..=i].join("/"),
        container,
    })
}

/// Is `seg` a pod's cgroup? systemd: `<prefix>kubepods[-qos]-pod<uid>.slice` below
/// `<prefix>kubepods[-qos].slice`; cgroupfs: `pod<uid>` below `kubepods` or below
/// `burstable`/`besteffort` below `kubepods`.
fn pod_segment(
    seg: &str,
    parent: Option<&str>,
    grandparent: Option<&str>,
) -> Option<(String, Qos)> {
    if let Some(stem) = seg.strip_suffix(".slice") {
        let (prefix, uid) = stem.rsplit_once("-pod")?;
        // The parent slice is the prefix's slice: `kubepods-burstable.slice` holds
        // `kubepods-burstable-pod….slice`.
        if parent != Some(&format!("{prefix}.slice")) {
            return None;
        }
        let qos = if prefix.ends_with("kubepods") {
            Qos::Guaranteed
        } else if prefix.ends_with("kubepods-burstable") {
            Qos::Burstable
        } else if prefix.ends_with("kubepods-besteffort") {
            Qos::BestEffort
        } else {
            return None;
        };
        return uid_of(&uid.replace('_', "-")).map(|u| (u, qos));
    }
    let uid = seg.strip_prefix("pod")?;
    let qos = match (parent?, grandparent) {
        ("kubepods", _) => Qos::Guaranteed,
        ("burstable", Some("kubepods")) => Qos::Burstable,
        ("besteffort", Some("kubepods")) => Qos::BestEffort,
        _ => return None,
    };
    uid_of(uid).map(|u| (u, qos))
}

/// A pod uid: a UUID (`8-4-4-4-12` hex), or the 32 hex digits of a static pod's hash.
fn uid_of(s: &str) -> Option<String> {
    let hex = s.bytes().filter(|c| *c != b'-').count();
    let ok = s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
        && hex == 32
        && (s.len() == 32 || s.split('-').map(str::len).eq([8, 4, 4, 4, 12]));
    ok.then(|| s.to_ascii_lowercase())
}

/// A container's cgroup below the pod's: `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope` (systemd), `crio-<id>` or a bare `<id>` (cgroupfs). CRI-O's
/// `crio-conmon-<id>.scope` is its monitor, not the container.
fn container_segment(seg: &str) -> Option<Container> {
    let stem = seg.strip_suffix(".scope").unwrap_or(seg);
    let (runtime, id) = if let Some(id) = stem.strip_prefix("cri-containerd-") {
        ("containerd", id)
    } else if let Some(id) = stem.strip_prefix("crio-") {
        ("cri-o", id)
    } else if let Some(id) = stem.strip_prefix("docker-") {
        ("docker", id)
    } else if stem.len() == seg.len() {
        ("", stem)
    } else {
        return None;
    };
    (id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit())).then(|| Container {
        id: id.to_owned(),
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2b9e3c4a-8f1d-4c7e-9a65-0d3f1e2b7c41";
    const ID: &str = "8e1f2c3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    #[test]
    fn systemd_driver_paths() {
        let u = UID.replace('-', "_");
        for (path, qos, runtime) in [
            (
                format!("kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
                Qos::Guaranteed,
                "containerd",
            ),
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope"
                ),
                Qos::Burstable,
                "cri-o",
            ),
            (
                format!(
                    "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                Qos::BestEffort,
                "containerd",
            ),
        ] {
            let p = parse(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((p.uid.as_str(), p.qos), (UID, qos), "{path}");
            let c = p.container.unwrap();
            assert_eq!((c.id.as_str(), c.runtime), (ID, runtime), "{path}");
            assert!(path.starts_with(&p.pod_path) && p.pod_path.ends_with(".slice"));
            // The pod's cgroup itself: no container.
            let pod = parse(&p.pod_path).unwrap();
            assert_eq!((pod.uid.as_str(), pod.container), (UID, None));
        }
    }

    #[test]
    fn cgroupfs_driver_paths() {
        for (path, qos, runtime) in [
            (format!("kubepods/pod{UID}/{ID}"), Qos::Guaranteed, ""),
            (
                format!("kubepods/burstable/pod{UID}/{ID}"),
                Qos::Burstable,
                "",
            ),
            (
                format!("kubepods/besteffort/pod{UID}/crio-{ID}"),
                Qos::BestEffort,
                "cri-o",
            ),
        ] {
            let p = parse(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((p.uid.as_str(), p.qos), (UID, qos), "{path}");
            assert_eq!(p.container.unwrap().runtime, runtime);
        }
        // A static pod's uid is a hash.
        let p = parse("kubepods/burstable/pod0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(p.uid, "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn other_paths_are_no_pods() {
        let u = UID.replace('-', "_");
        for path in [
            "user.slice/user-0.slice".to_owned(),
            "kubepods.slice".to_owned(),
            "kubepods.slice/kubepods-burstable.slice".to_owned(),
            format!("system.slice/kubepods-pod{u}.slice"),
            format!("kubepods.slice/kubepods-burstable-pod{u}.slice"),
            format!("agents/pod{UID}"),
            format!("kubepods/burstable/pod{}", &UID[1..]),
            "kubepods/burstable/podnot-a-uid".to_owned(),
        ] {
            assert_eq!(parse(&path), None, "{path}");
        }
        // conmon is CRI-O's monitor, not the container.
        let p = parse(&format!(
            "kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope"
        ))
        .unwrap();
        assert_eq!(p.container, None);
    }
}
