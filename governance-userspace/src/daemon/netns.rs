//! The proxy in agents' own network namespaces (pods, containers). The kernel sends an agent's
//! `via_proxy` connects to the proxy's loopback address *in the agent's namespace*; this opens
//! a listener there (a thread enters the namespace, binds, and leaves it: a socket stays in
//! the namespace it was made in) and the proxy serves it like its own. The kernel files each
//! connection under its namespace's cookie as well as its source port, so pods using the
//! same ports are told apart (see docs/kernel.md, the proxy redirect).
//!
//! The namespaces are found from the agents' processes (every cgroup.procs of each agent's
//! subtree), after each generation, whenever an agent's subtree becomes populated or empty
//! (its root's `cgroup.events`, watched), and every 10 seconds (a process joining an agent
//! that already had some). A namespace no agent process is in any
//! more loses its listener (a listening socket would keep the namespace alive). Until its
//! listener is open, an agent's redirected connect is refused (nothing listens there): closed,
//! never direct.
//!
//! The scan and the listening run on a thread of their own ([`NetnsSync`]), never on the
//! daemon's loop, which only hands it the agents: an agent decides how many cgroups and
//! namespaces there are to look at, and a loop that waited for them found no new agent
//! meanwhile (red team round 30: 30,000 cgroups in one agent held other tenants' new agents
//! ungoverned for seconds). Both are bounded per agent ([`MAX_CGROUPS_WALKED`],
//! [`MAX_NAMESPACES`]); past a bound, a namespace gets no listener and its `via_proxy`
//! connects are refused.
//!
//! The thread that opened a namespace's listeners stays there, holding no capability, and
//! makes the TCP sockets of the upstream connections the proxy makes for that namespace's
//! clients (`proxy/origin.rs`): an upstream is connected from the agent's namespace, with the
//! agent's reach (its loopback, routes and firewall), never from the node's. It ends with the
//! namespace's listeners and the last connection that uses it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::Arc,
};

use crate::{
    agents::AgentCgroup,
    proxy::{Proxy, SocketMaker},
};

/// A network namespace, by its nsfs identity (device, inode).
type NsId = (u64, u64);

/// The cgroups of one agent's subtree looked at per scan, emptied subtrees (`populated 0`)
/// not counted: a pod has a few, a CI agent's containers some dozens.
const MAX_CGROUPS_WALKED: usize = 4096;

/// The network namespaces of one agent served (each holds a thread of the daemon's while it
/// lives): a pod has one, an agent that runs containers one each.
const MAX_NAMESPACES: usize = 64;

/// [`NetnsListeners::sync`] on a thread of its own: the daemon's loop hands it the agents and
/// goes on; a scan asked for while one runs is made once it ends, with the agents of the last
/// request.
pub(super) struct NetnsSync {
    agents: tokio::sync::watch::Sender<Arc<Vec<AgentCgroup>>>,
}

impl NetnsSync {
    /// Start the thread (inside the tokio runtime: the listeners are served by its tasks).
    pub fn start(mut listeners: NetnsListeners) -> std::io::Result<Self> {
        let (agents, mut requests) = tokio::sync::watch::channel(Arc::new(Vec::new()));
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("gov-netns-sync".into())
            .spawn(move || {
                // Spawned before the start's capabilities are dropped: keep only what is kept.
                crate::privilege::thread_started();
                let _in_runtime = runtime.enter();
                // Ends when the daemon drops its end (it stops).
                while runtime.block_on(requests.changed()).is_ok() {
                    let now = requests.borrow_and_update().clone();
                    // A panic here would end the serving of new namespaces silently (their
                    // connects refused): said, and the next request scans again.
                    let scan = std::panic::AssertUnwindSafe(|| listeners.sync(&now));
                    if std::panic::catch_unwind(scan).is_err() {
                        tracing::error!("proxy: the scan for agents' network namespaces panicked; scanning again at the next change");
                    }
                }
            })?;
        Ok(Self { agents })
    }

    /// Serve the namespaces of `agents`' processes, and only those (soon: see [`NetnsSync`]).
    pub fn sync(&self, agents: &[AgentCgroup]) {
        self.agents.send_replace(Arc::new(agents.to_vec()));
    }
}

/// The proxy's listeners in agents' network namespaces.
pub(super) struct NetnsListeners {
    proxy: Arc<Proxy>,
    /// Where the kernel sends `via_proxy` connects (the proxy's address and port).
    addrs: Vec<SocketAddr>,
    /// The daemon's own namespace (served by the proxy's main listeners).
    host: Option<NsId>,
    /// Each agent namespace served, with its listeners' tasks (empty: opening failed, said
    /// once; tried again when the namespace comes back).
    open: BTreeMap<NsId, Vec<tokio::task::JoinHandle<std::io::Result<()>>>>,
    /// Agents past a bound, said once each.
    past_bounds: std::collections::BTreeSet<u64>,
}

impl NetnsListeners {
    pub fn new(proxy: Arc<Proxy>, v4: Ipv4Addr, port: u16) -> Self {
        Self {
            proxy,
            addrs: vec![
                SocketAddr::new(v4.into(), port),
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
            ],
            host: ns_id(Path::new("/proc/self/ns/net")),
            open: BTreeMap::new(),
            past_bounds: Default::default(),
        }
    }

    /// Serve every network namespace an agent process is in, and only those. (Must run inside
    /// the tokio runtime: the listeners are served by tasks.)
    fn sync(&mut self, agents: &[AgentCgroup]) {
        let mut found: BTreeMap<NsId, u32> = BTreeMap::new();
        for a in agents {
            let (pids, complete) = procs_below(&a.path, MAX_CGROUPS_WALKED);
            let mut own = std::collections::BTreeSet::new();
            let mut dropped = !complete;
            for pid in pids {
                let Some(id) = ns_id(&Path::new("/proc").join(pid.to_string()).join("ns/net"))
                else {
                    continue;
                };
                if Some(id) == self.host || own.contains(&id) {
                    continue;
                }
                if own.len() == MAX_NAMESPACES {
                    dropped = true;
                    continue;
                }
                own.insert(id);
                found.entry(id).or_insert(pid);
            }
            if dropped && self.past_bounds.insert(a.cgroup_id) {
                tracing::warn!(
                    agent = %a.name,
                    cgroups = MAX_CGROUPS_WALKED,
                    namespaces = MAX_NAMESPACES,
                    "proxy: an agent has more cgroups or network namespaces than are looked at; the via_proxy connects of those past the bound are refused"
                );
            }
        }
        let gone: Vec<NsId> = self
            .open
            .keys()
            .filter(|id| !found.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            for t in self.open.remove(&id).unwrap_or_default() {
                t.abort();
            }
            tracing::debug!(netns = ?id, "proxy: no agent in the network namespace any more; its listener closed");
        }
        for (id, pid) in found {
            if self.open.contains_key(&id) {
                continue;
            }
            let tasks = match listen_in(pid, id, &self.addrs) {
                Ok((listeners, maker)) => self.serve(pid, listeners, maker),
                Err(e) => {
                    eprintln!(
                        "governance: the proxy cannot listen in the network namespace of agent process {pid} ({e}); its via_proxy connects are refused"
                    );
                    Vec::new()
                }
            };
            if !tasks.is_empty() {
                tracing::info!(pid, netns = ?id, "proxy: listening in an agent's network namespace");
            }
            self.open.insert(id, tasks);
        }
    }
}

impl NetnsListeners {
    /// Serve the listeners opened in an agent's namespace; their clients' upstream connections
    /// are made there, with sockets from `maker`.
    fn serve(
        &self,
        pid: u32,
        listeners: Vec<std::net::TcpListener>,
        maker: SocketMaker,
    ) -> Vec<tokio::task::JoinHandle<std::io::Result<()>>> {
        let origin = self.proxy.origin(maker);
        let mut tasks = Vec::new();
        for l in listeners {
            let l = l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l));
            match l {
                Ok(l) => tasks.push(tokio::spawn(
                    self.proxy.clone().serve_from(l, Some(origin.clone())),
                )),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "proxy: a listener in an agent's network namespace cannot be served")
                }
            }
        }
        tasks
    }
}

/// The identity of a namespace file.
fn ns_id(path: &Path) -> Option<NsId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The processes of a cgroup and its descendants, looking at `max` cgroups at most (subtrees
/// with no process skipped whole); whether it looked at all that had processes.
fn procs_below(dir: &Path, max: usize) -> (Vec<u32>, bool) {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    let mut walked = 0;
    while let Some(d) = stack.pop() {
        let events = std::fs::read_to_string(d.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l == "populated 0") {
            continue;
        }
        if walked == max {
            return (out, false);
        }
        walked += 1;
        if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    (out, true)
}

/// Listen on `addrs` inside the network namespace of `pid` (expected to be `id`). A thread of
/// its own enters the namespace; the sockets it made stay in that namespace. The IPv6
/// listener is optional (a namespace without IPv6). The thread then drops every capability and
/// stays, making the sockets the returned [`SocketMaker`] asks for, until no maker is left.
fn listen_in(
    pid: u32,
    id: NsId,
    addrs: &[SocketAddr],
) -> std::io::Result<(Vec<std::net::TcpListener>, SocketMaker)> {
    let ns = crate::procfs::open(format!("/proc/{pid}/ns/net"))?;
    // The process may have moved on between the scan and the open: the namespace must be the
    // one found.
    let m = ns.metadata()?;
    if (m.dev(), m.ino()) != id {
        return Err(std::io::Error::other("the process left the namespace"));
    }
    let addrs = addrs.to_vec();
    let (maker, requests) = crate::proxy::socket_channel();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("gov-netns".into())
        .spawn(move || {
            let listened = (|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                drop(ns);
                let mut out = Vec::new();
                for (i, a) in addrs.iter().enumerate() {
                    // Marked as the daemon's (the kernel sends agents to no other).
                    let bound = std::net::TcpListener::bind(a).and_then(|l| {
                        crate::kernel::mark_proxy_listener(std::os::fd::AsFd::as_fd(&l))?;
                        Ok(l)
                    });
                    match bound {
                        Ok(l) => out.push(l),
                        Err(e) if i == 0 => return Err(e),
                        Err(e) => tracing::debug!(addr = %a, error = %e, "proxy: no IPv6 listener in an agent's network namespace"),
                    }
                }
                Ok(out)
            })();
            let ok = listened.is_ok();
            if tx.send(listened).is_err() || !ok {
                return;
            }
            // What is left to do (socket(2)) needs no capability; a thread that keeps none
            // cannot leave the namespace either.
            if let Err(e) = crate::privilege::limit_thread(&caps::CapsHashSet::new()) {
                tracing::warn!(error = %e, "proxy: the socket thread of an agent's network namespace could not drop its capabilities");
            }
            crate::proxy::serve_sockets(requests);
        })?;
    let listeners = rx
        .recv()
        .map_err(|_| std::io::Error::other("the listener thread panicked"))??;
    Ok((listeners, maker))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk for agents' processes skips subtrees with no process and stops at its bound
    /// (red team round 30: an agent's 30,000 empty cgroups were all read, on the daemon's
    /// loop). Plain directories with the cgroup files stand for the cgroup tree.
    #[test]
    fn the_walk_for_agents_processes_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = |rel: &str, populated: bool, procs: &str| {
            let d = tmp.path().join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("cgroup.events"),
                format!("populated {}\nfrozen 0\n", u8::from(populated)),
            )
            .unwrap();
            std::fs::write(d.join("cgroup.procs"), procs).unwrap();
        };
        cg("a", true, "10\n");
        cg("a/busy", true, "12\n13\n");
        cg("a/empty", false, "");
        for i in 0..50 {
            cg(&format!("a/empty/{i}"), false, "99\n");
        }
        let (mut pids, complete) = procs_below(&tmp.path().join("a"), 8);
        pids.sort_unstable();
        assert_eq!(pids, [10, 12, 13]);
        assert!(complete, "the empty subtree is skipped, not counted");
        let (_, complete) = procs_below(&tmp.path().join("a"), 1);
        assert!(!complete, "past the bound");
    }
}
