//! Least privilege after start: once the programs are loaded and attached, the daemon keeps
//! only the capabilities it still needs ([`KEPT`]), and the proxy's threads, which parse what
//! agents send (HTTP, TLS), keep none. docs/operations.md ("Capabilities after start") says
//! which and why, and what a per-thread drop does not protect against.
//!
//! Linux capabilities belong to threads, so each thread limits itself:
//!
//! - the main thread, which loads and attaches the programs, keeps everything it was started
//!   with until the first generation enforces, then limits itself to [`KEPT`] ([`limit_thread`]);
//! - every other daemon thread (the runtime's workers and blocking threads, the event and ring
//!   threads) limits itself to [`KEPT`] when it starts ([`thread_started`]): nothing but the main
//!   thread does the start's privileged work (loading, attaching, pinning, adopting);
//! - the proxy's threads ([`proxy_thread_started`]) drop everything: the daemon accepts and
//!   identifies a connection (a kernel map lookup, /proc of the agent's process) on its own
//!   threads, then hands the socket to them.
//!
//! Each also sets no_new_privs (the daemon executes nothing).

use std::sync::OnceLock;

use caps::{CapSet, Capability, CapsHashSet};

/// What the daemon keeps after start, and why (each measured: without it, the test named
/// in docs/operations.md fails).
pub const KEPT: [(Capability, &str); 3] = [
    (
        Capability::CAP_SYS_ADMIN,
        "enter agents' network namespaces (setns) to open the proxy's listeners there",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "open /proc/PID/ns/net and read /proc/PID/exe of agents' processes (netns listeners, events)",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "resolve policy paths in directories of other users (a 0700 home) at each reload",
    ),
];

/// Kept unless `--no-create-cgroups`: the agent cgroups a reload creates may be below a
/// cgroup delegated to another user.
pub const KEPT_TO_CREATE_CGROUPS: (Capability, &str) = (
    Capability::CAP_DAC_OVERRIDE,
    "create agent cgroups below a cgroup delegated to another user",
);

/// Kept while the proxy runs: its listeners in agents' network namespaces, opened after start,
/// are marked as the daemon's (`SO_PRIORITY` above 6, which takes CAP_NET_RAW or
/// CAP_NET_ADMIN in the namespace's owner): the kernel sends agents to no other listener on
/// the proxy's port (red team round 29).
pub const KEPT_FOR_THE_PROXY: (Capability, &str) = (
    Capability::CAP_NET_RAW,
    "mark the proxy's listeners in agents' network namespaces as the daemon's (SO_PRIORITY)",
);

/// What only the start needs (held by the main thread until the first generation enforces, the
/// proxy listens and the control API listens). The systemd unit's CapabilityBoundingSet is
/// these and the kept ones.
pub const START_ONLY: [(Capability, &str); 4] = [
    (
        Capability::CAP_BPF,
        "load the programs and create the maps (after start the daemon only reads and writes maps \
         through descriptors it holds, which needs no capability)",
    ),
    (
        Capability::CAP_PERFMON,
        "load the LSM, tracing and socket programs",
    ),
    (
        Capability::CAP_NET_ADMIN,
        "attach the cgroup socket programs (connect, sendmsg, sock_ops, skb)",
    ),
    (
        Capability::CAP_SETPCAP,
        "narrow the bounding set to the capabilities kept",
    ),
];

/// The set every daemon thread but the proxy's keeps, once [`keep`] has been called.
static KEEP: OnceLock<CapsHashSet> = OnceLock::new();

/// The daemon (`governance run`) keeps [`KEPT`], [`KEPT_TO_CREATE_CGROUPS`] when it creates
/// agent cgroups, [`KEPT_FOR_THE_PROXY`] when the proxy runs, and CAP_NET_BIND_SERVICE when the proxy's port is below 1024 (its listeners
/// in agents' network namespaces are opened after start). Call once, before any thread but
/// the main one is started.
pub fn keep(proxy_port: Option<u16>, create_cgroups: bool) {
    let mut set: CapsHashSet = KEPT.iter().map(|(c, _)| *c).collect();
    if create_cgroups {
        set.insert(KEPT_TO_CREATE_CGROUPS.0);
    }
    if proxy_port.is_some() {
        set.insert(KEPT_FOR_THE_PROXY.0);
    }
    if proxy_port.is_some_and(|p| (1..1024).contains(&p)) {
        set.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    let _ = KEEP.set(set);
}

/// A daemon thread (not the main one, not the proxy's) starts: limit it to what [`keep`] set.
/// Nothing happens in a process that did not call [`keep`] (the CLI, tests).
pub fn thread_started() {
    if let Some(keep) = KEEP.get()
        && let Err(e) = limit_thread(keep)
    {
        tracing::warn!(error = %e, "a thread could not drop its capabilities");
    }
}

/// A proxy thread starts: it keeps no capability.
pub fn proxy_thread_started() {
    if let Err(e) = limit_thread(&CapsHashSet::new()) {
        tracing::warn!(error = %e, "a proxy thread could not drop its capabilities");
    }
}

/// The main thread, after start: limit it to what [`keep`] set.
pub fn started() -> Result<(), caps::errors::CapsError> {
    match KEEP.get() {
        Some(keep) => limit_thread(keep),
        None => Ok(()),
    }
}

/// Limit the calling thread to `keep`: its bounding set (when it may change it, holding
/// CAP_SETPCAP), then its ambient and inheritable sets (emptied), effective and permitted
/// (what they hold of `keep`); and set no_new_privs.
pub fn limit_thread(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for c in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let held = |set| -> Result<CapsHashSet, caps::errors::CapsError> {
        Ok(caps::read(None, set)?.intersection(keep).copied().collect())
    };
    // Effective first: it may never hold more than permitted.
    caps::set(None, CapSet::Effective, &held(CapSet::Effective)?)?;
    caps::set(None, CapSet::Permitted, &held(CapSet::Permitted)?)?;
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| caps::errors::CapsError::from(format!("PR_SET_NO_NEW_PRIVS: {e}")))?;
    Ok(())
}

/// The names of the capabilities the calling thread may use (its permitted set), sorted.
pub fn held() -> Vec<String> {
    let mut names: Vec<String> = caps::read(None, CapSet::Permitted)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    names.sort();
    names
}
