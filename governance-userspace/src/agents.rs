//! Agent discovery: where cgroup v2 is mounted, and which cgroup (by id) each agent is.
//!
//! An agent is a cgroup and all of its descendants. The kernel side identifies a task's agent by
//! walking the task's cgroup ancestry, so only the agent's root cgroup needs an entry.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),
    #[error(
        "no cgroup2 filesystem is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) or boot with cgroup v2"
    )]
    NoCgroup2,
    #[error("agent `{agent}`: cgroup {path}: {source}")]
    Cgroup {
        agent: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// The mount point of the cgroup2 filesystem, from `/proc/self/mountinfo` (hybrid layouts
/// mount it somewhere below /sys/fs/cgroup, so never assume).
pub fn cgroup2_mount() -> Result<PathBuf, AgentsError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(AgentsError::Mountinfo)?;
    find_cgroup2(&text).ok_or(AgentsError::NoCgroup2)
}

fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 id of a cgroup directory: its inode number (what
/// `bpf_get_current_cgroup_id()` returns for tasks in it).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// A live agent: its policy entry and its cgroup on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCgroup {
    /// Index into the policy's agents, which is also the agent id minus one.
    pub index: usize,
    pub name: String,
    pub path: PathBuf,
    pub cgroup_id: u64,
}

impl AgentCgroup {
    /// The id the kernel maps use (1-based; 0 is never an agent).
    pub fn agent_id(&self) -> u32 {
        self.index as u32 + 1
    }
}

/// Find (and, with `create`, make) the cgroup of every agent in the policy.
///
/// Creating missing agent cgroups before enforcement starts means an agent placed there later is
/// governed from its first instruction; the daemon never removes them (they may hold processes).
pub fn resolve(
    root: &Path,
    policy: &Policy,
    create: bool,
) -> Result<Vec<AgentCgroup>, AgentsError> {
    policy
        .agents
        .iter()
        .enumerate()
        .map(|(index, agent)| {
            let path = root.join(&agent.cgroup);
            let err = |source| AgentsError::Cgroup {
                agent: agent.name.clone(),
                path: path.clone(),
                source,
            };
            if create && !path.exists() {
                std::fs::create_dir_all(&path).map_err(err)?;
                tracing::info!(agent = %agent.name, path = %path.display(), "created agent cgroup");
            }
            if !path.join("cgroup.procs").exists() {
                return Err(err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "not a cgroup directory (no cgroup.procs); is it below the cgroup2 mount?",
                )));
            }
            Ok(AgentCgroup {
                index,
                name: agent.name.clone(),
                cgroup_id: cgroup_id(&path).map_err(err)?,
                path,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let info = "\
25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/cpu rw shared:10 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:11 - cgroup2 cgroup2 rw
";
        assert_eq!(find_cgroup2(info), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(find_cgroup2("32 31 0:27 / /x rw - cgroup cgroup rw"), None);
        assert_eq!(find_cgroup2("garbage\n\n - \n"), None);
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape_mountinfo(r"/mnt/my\040cg"), "/mnt/my cg");
        assert_eq!(unescape_mountinfo(r"/a\\b\0"), r"/a\\b\0");
    }

    #[test]
    fn this_machine_has_cgroup2_and_ids_are_inodes() {
        let root = cgroup2_mount().unwrap();
        let id = cgroup_id(&root).unwrap();
        assert_ne!(id, 0);
    }
}
