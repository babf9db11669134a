//! A candidate agent's evidence, as the audit record (`Record::candidate`) and the control API
//! (`GET /v1/discover`) carry it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a process outside every agent looks like one. Evidence, never enforcement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Evidence {
    /// `sni` (the server name of a TLS connection), `dns` (a DNS query), `framework` (an agent
    /// framework loaded or on the command line), `mcp` (an MCP server or SDK).
    pub what: String,
    /// The host, module or command-line word seen.
    pub value: String,
    /// The host-list pattern or the known name it matched.
    pub matched: String,
    /// The process (0 when only its cgroup is known: see `attributed`).
    pub pid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub exe: String,
    /// The command line, shortened.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    /// cgroup v2 id and path (relative to the cgroup2 mount; `/` for the root).
    pub cgroup_id: u64,
    pub cgroup: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// The pod's uid, for a cgroup inside a Kubernetes pod.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    /// `pid` (the sending task was checked to be in the socket's cgroup) or `cgroup` (the
    /// packet left from another context: only the cgroup is known).
    pub attributed: String,
    /// RFC 3339.
    pub first_seen: String,
    pub last_seen: String,
    /// Times seen (connections, queries, scans).
    pub count: u64,
}
