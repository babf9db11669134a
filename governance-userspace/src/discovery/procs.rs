//! What procfs says about a candidate process: its cgroup (path and id), container, pod,
//! executable and command line; and the framework and MCP evidence of its command line and
//! mapped files.

use std::{os::unix::fs::MetadataExt as _, path::Path};

/// Agent frameworks and LLM SDKs, as Python modules or npm packages (in a mapped file's path
/// or a command-line word).
pub const FRAMEWORKS: &[&str] = &[
    "langchain",
    "langchain_core",
    "langchain_community",
    "langgraph",
    "crewai",
    "autogen",
    "autogen_agentchat",
    "pyautogen",
    "llama_index",
    "openai-agents",
    "agents", // openai-agents' module; only as a path component below site-packages
    "semantic_kernel",
    "smolagents",
    "pydantic_ai",
    "haystack",
    "dspy",
    "@langchain",
    "@openai/agents",
    "@mastra",
    "ai", // the Vercel AI SDK; only as a path component below node_modules
];

/// MCP servers and SDKs.
pub const MCP: &[&str] = &[
    "mcp",
    "fastmcp",
    "@modelcontextprotocol",
    "mcp-server",
    "mcp_server",
    "mcp-proxy",
];

/// A process's place and identity, from procfs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub cmdline: String,
    /// Relative to the cgroup2 mount, with a leading `/`.
    pub cgroup: String,
    pub cgroup_id: u64,
}

/// `pid`'s cgroup v2 path (`0::/path` of /proc/PID/cgroup).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = crate::procfs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned())
}

/// The id (inode number) of the cgroup at `path` below `root`.
pub fn cgroup_id(root: &Path, path: &str) -> Option<u64> {
    let rel = path.trim_start_matches('/');
    let dir = if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    };
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

pub fn proc_info(root: &Path, pid: u32) -> Option<ProcInfo> {
    let cgroup = cgroup_of(pid)?;
    let comm = crate::procfs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        comm: comm.trim_end().to_owned(),
        exe,
        cmdline: cmdline(pid).join(" ").chars().take(256).collect(),
        cgroup_id: cgroup_id(root, &cgroup).unwrap_or(0),
        cgroup,
    })
}

pub fn cmdline(pid: u32) -> Vec<String> {
    crate::procfs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The container a cgroup path is (or is in): a Kubernetes container, or a podman, docker or
/// containerd scope (`libpod-<id>.scope`, `docker-<id>.scope`, `cri-containerd-<id>.scope`).
/// Returns (container id, pod uid).
pub fn container_of(cgroup: &str) -> (String, String) {
    if let Some(pod) = crate::kubernetes::cgroup::parse(cgroup) {
        return (pod.container.map(|c| c.id).unwrap_or_default(), pod.uid);
    }
    for seg in cgroup.split('/').rev() {
        let stem = seg.strip_suffix(".scope").unwrap_or(seg);
        for prefix in ["libpod-", "docker-", "cri-containerd-", "crio-"] {
            if let Some(id) = stem.strip_prefix(prefix)
                && id.len() == 64
                && id.bytes().all(|c| c.is_ascii_hexdigit())
            {
                return (id.to_owned(), String::new());
            }
        }
    }
    (String::new(), String::new())
}

/// One piece of framework or MCP evidence: (what, value seen, known name).
pub type Hit = (&'static str, String, &'static str);

/// Framework and MCP evidence of a process: its command line's words, and the files it maps
/// (native modules and the interpreter's own libraries below `site-packages`, `dist-packages`
/// or `node_modules`). Pure-Python and JavaScript modules are read, not mapped: a framework
/// without a native part shows only on the command line (see docs/discovery.md).
pub fn scan(pid: u32) -> Vec<Hit> {
    let mut hits = scan_cmdline(pid);
    let mut add = |h: Hit| {
        if !hits.iter().any(|x| x.0 == h.0 && x.2 == h.2) {
            hits.push(h);
        }
    };
    let maps = crate::procfs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        for (what, list) in [("mcp", MCP), ("framework", FRAMEWORKS)] {
            if let Some(name) = package_of(path, list) {
                add((what, path.to_owned(), name));
            }
        }
    }
    hits
}

/// Framework and MCP evidence of a process's command line alone (its arguments: the executable
/// name itself counts for MCP servers such as `mcp-server-git`).
pub fn scan_cmdline(pid: u32) -> Vec<Hit> {
    let mut hits: Vec<Hit> = Vec::new();
    let argv = cmdline(pid);
    for (i, word) in argv.iter().enumerate().take(16) {
        for (what, list) in [("mcp", MCP), ("framework", FRAMEWORKS)] {
            // argv[0] is an interpreter or the program: only MCP server programs count.
            if i == 0 && what == "framework" {
                continue;
            }
            if let Some(name) = word_names(word, list)
                && !hits.iter().any(|x| x.0 == what && x.2 == name)
            {
                hits.push((what, word.chars().take(128).collect(), name));
            }
        }
    }
    hits
}

/// `pid`'s parent.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = crate::procfs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the `(comm)`, which may hold spaces and parentheses: state, then ppid.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A known name in a command-line word: a Python module (`-m langchain_core.x`, a script path
/// with a package directory), an npm package (`@modelcontextprotocol/server-filesystem`), an
/// executable (`mcp-server-git`, `fastmcp`). Short generic names (`agents`, `ai`, `mcp`) count
/// only as a whole word or a path component below a package directory.
fn word_names(word: &str, list: &[&'static str]) -> Option<&'static str> {
    if let Some(name) = package_of(word, list) {
        return Some(name);
    }
    let base = word.rsplit('/').next().unwrap_or(word);
    let module = word.split(['.', '/']).next().unwrap_or(word);
    list.iter().copied().find(|n| {
        if GENERIC.contains(n) {
            // Too common a word: only exactly itself (`python -m mcp`), and never `agents`
            // or `ai` (directory names everywhere).
            return *n == "mcp" && (word == *n || base == *n);
        }
        module == *n
            || base == *n
            || word.starts_with(&format!("{n}/"))
            || base.starts_with(&format!("{n}-"))
            || base.starts_with(&format!("{n}_"))
            || base.starts_with(&format!("{n}."))
    })
}

/// Names that count on a command line only as noted in [`word_names`].
const GENERIC: &[&str] = &["agents", "ai", "mcp"];

/// A known package a path lies in: the component right after `site-packages/`,
/// `dist-packages/` or `node_modules/` (scoped npm packages by their scope).
fn package_of(path: &str, list: &[&'static str]) -> Option<&'static str> {
    let parts: Vec<&str> = path.split('/').collect();
    parts.windows(2).find_map(|w| {
        if !matches!(w[0], "site-packages" | "dist-packages" | "node_modules") {
            return None;
        }
        let pkg = w[1].split(['-', '.']).next().unwrap_or(w[1]);
        list.iter().copied().find(|n| w[1] == *n || pkg == *n)
    })
}

/// The path (relative to the cgroup2 mount, leading `/`) of the cgroup with id `id`: a walk of
/// the tree, for the rare packet whose sender could not be checked.
pub fn cgroup_path_of_id(root: &Path, id: u64) -> Option<String> {
    let dirs = crate::agents::cgroup_paths(root);
    let rel = dirs.get(&id)?.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.display()))
}

#[cfg(test)]
pub(super) fn word_names_for_test(word: &str, list: &[&'static str]) -> Option<&'static str> {
    word_names(word, list)
}
