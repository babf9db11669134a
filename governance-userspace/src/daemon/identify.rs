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
        Some(proxy::Client {
            agent,
            info,
            cgroup_id: orig.cgroup_id,
            // Read while the client is connected, so it is alive (procfs read once per
            // connection, not per request).
            process: (orig.tgid != 0).then(|| ProcessInfo::from_procfs(orig.tgid)),
            original_dst,
        })
    }
}
