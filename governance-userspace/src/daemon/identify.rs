//! Who is on the other end of a proxied connection: the kernel's record of the connect, named
//! after the generation that decided it.

use std::{
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    sync::Mutex,
};

use super::generation::SharedNames;
use crate::{events::ProcessInfo, kernel::ProxyConns, proxy};

/// The proxy asks the kernel who is on the other end of a connection it accepted.
pub(super) struct KernelIdentify {
    pub conns: Mutex<ProxyConns>,
    pub names: SharedNames,
}

impl proxy::Identify for KernelIdentify {
    fn identify(&self, peer: SocketAddr, _local: SocketAddr, netns: u64) -> Option<proxy::Client> {
        let orig = self.conns.lock().ok()?.take(peer, netns)?;
        let names = self.names.read().ok()?;
        // The generation that decided the connect, else the newest (an agent that outlived a
        // reload is still the same cgroup).
        let n = names
            .get(&orig.generation)
            .filter(|n| n.agents.contains_key(&orig.agent_cgroup))
            .or_else(|| names.values().next_back())?;
        let info = n.agents.get(&orig.agent_cgroup)?.clone();
        let agent = n.refs.get(&orig.agent_cgroup)?.clone();
        let original_dst = (orig.redirected == 1).then(|| {
            let ip = Ipv6Addr::from(orig.addr);
            match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), orig.port),
                None => SocketAddr::V6(SocketAddrV6::new(ip, orig.port, 0, 0)),
            }
        });
        // Read while the client is connected, so it is alive (procfs read once per connection,
        // not per request), never waiting: a lease on the client's status file (which the
        // agent owns) would hold the read, and this task, for the lease break time. A client
        // whose file is leased is not identified: its connection is refused.
        let process = match orig.tgid {
            0 => None,
            tgid => match ProcessInfo::read_procfs(tgid) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(
                        pid = tgid,
                        agent = %info.name,
                        "proxy: refusing a connection whose process cannot be read ({e}: a lease on /proc/{tgid}/status)"
                    );
                    return None;
                }
            },
        };
        Some(proxy::Client {
            agent,
            info,
            cgroup_id: orig.cgroup_id,
            process,
            original_dst,
        })
    }

    fn current(&self, client: &proxy::Client) -> Option<crate::engine::AgentRef> {
        let names = self.names.read().ok()?;
        names
            .values()
            .next_back()?
            .refs
            .get(&client.info.cgroup_id)
            .cloned()
    }
}
