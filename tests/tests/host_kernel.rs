//! Kernel tests that run on the host kernel: cgroup socket programs and raw tracepoints load and
//! enforce here even where LSM programs cannot. Real programs, real cgroups, real sockets on
//! loopback. Each denial is paired with a control outside the agent.

use std::{
    io::BufRead as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use governance::{agents, kernel};
use governance_common::{Cause, Counter, Kind, Verdict, flags};
use governance_tests::{
    Attempt, AttemptLoop, Outcome, TestCgroup, governance_bin, load, pin_dir, poll_until,
    require_root, run_in, signal, start_daemon, start_daemon_of_build, stop_daemon, text,
    wait_for_value, wait_until,
};
use governance_tests::{
    Daemon, Established, PinDir, Reaped, audit_records, listens_in, metric_value, proxy_port,
    scrape_metrics, tcp_table_listens,
};

/// A loopback listener on an address of the 127/8 range.
/// `n` denied TCP connects to `addr` as fast as they go, from a process that joins `cgroup`
/// (`redteam-helper connect-flood`).
fn flood_connects(cgroup: &Path, addr: SocketAddr, n: u64) {
    let helper = env!("CARGO_BIN_EXE_redteam-helper");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {helper} connect-flood {addr} {n}",
            cgroup.join("cgroup.procs").display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `attempt` refused (EPERM) in `agent` with a denial event, which is returned, and tried in
/// `outsider` with no event, whose outcome is returned (each case says what it expects there).
fn refused_in_agent_only(
    k: &mut governance_tests::Loaded,
    agent: &Path,
    outsider: &Path,
    case: &str,
    attempt: &Attempt,
) -> (governance_common::Event, Outcome) {
    redteam(case, "tried");
    let (pid, outcome) = run_in(Some(agent), "net-agent", attempt);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let ev = k.event_for(pid);
    assert_ne!(ev.flags & flags::DENIED, 0, "{case}");
    redteam(case, "denied");
    let (pid, control) = run_in(Some(outsider), "net-outsider", attempt);
    assert!(
        k.try_event_for(pid, Duration::from_millis(100)).is_none(),
        "{case}: no event outside"
    );
    (ev, control)
}

fn listener(ip: [u8; 4]) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::from(ip), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn redteam(case: &str, step: &str) {
    println!("redteam: {step} {case}");
}

/// The peer of a connection that `l` (non-blocking) accepts within `within`, waiting on the
/// socket itself (poll(2)); None if none came.
fn accept_within(l: &TcpListener, within: Duration) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd as _;
    let deadline = Instant::now() + within;
    loop {
        match l.accept() {
            Ok((_, peer)) => return Some(peer),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. Readable, interrupted or timed out: accept again.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 60_000) as i32) };
    }
}

#[test]
fn network_hooks_deny_agents_and_their_descendants_but_not_others() {
    require_root();
    let agent = TestCgroup::new("agent");
    let child = agent.child("worker");
    let outsider = TestCgroup::new("outsider");
    let (_blocked, blocked_addr) = listener([127, 0, 0, 1]);
    let (_open, open_addr) = listener([127, 0, 0, 2]);
    let mut k = load(&format!(
        "name: netbot\nagents: {{ cgroup: {} }}\nrules:\n\
         \x20 - {{ id: no-loopback-1, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n\
         \x20 - {{ id: dns, network: {{ ports: 53, protocol: udp }}, verdict: block, reason: no resolvers }}\n",
        agent.rel.display()
    ));
    for hook in ["connect4", "connect6", "sendmsg4", "sendmsg6"] {
        k.require(hook);
    }
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", blocked_addr.port())
        .parse()
        .unwrap();
    let dns: SocketAddr = "127.0.0.53:53".parse().unwrap();
    let cases = [
        (
            "16 connect to a local service (host)",
            Attempt::connect(blocked_addr),
            Kind::Connect,
        ),
        (
            "12 IPv4-mapped IPv6 connect (host)",
            Attempt::connect(mapped),
            Kind::Connect,
        ),
        (
            "13 unconnected UDP to :53 (host)",
            Attempt::SendTo { addr: dns },
            Kind::Send,
        ),
        (
            "14 connected UDP to :53 (host)",
            Attempt::Connect {
                addr: dns,
                udp: true,
            },
            Kind::Connect,
        ),
    ];
    for (case, attempt, kind) in &cases {
        redteam(case, "tried");
        for cgroup in [&agent.path, &child] {
            let (pid, outcome) = run_in(Some(cgroup), "net-agent", attempt);
            assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
            let ev = k.event_for(pid);
            assert_eq!(Kind::from_u8(ev.kind), Some(*kind), "{case}");
            assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Block));
            assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule));
            assert_ne!(ev.flags & flags::DENIED, 0);
            assert_eq!(ev.agent_cgroup, agent.id());
            assert_eq!(ev.cgroup_id, agents::cgroup_id(cgroup).unwrap());
            assert_eq!(text(&ev.comm), "net-agent");
        }
        redteam(case, "denied");
        let (pid, outcome) = run_in(Some(&outsider.path), "net-outsider", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        assert!(k.try_event_for(pid, Duration::from_millis(100)).is_none());
        let (_, outcome) = run_in(None, "net-root", attempt);
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "{case}: control in the root cgroup"
        );
        redteam(case, "control");
    }
    // The event names the destination (IPv4 as IPv4-mapped) and port.
    let (pid, _) = run_in(Some(&agent.path), "net-agent", &cases[0].1);
    let ev = k.event_for(pid);
    assert_eq!(
        ev.addr,
        Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets()
    );
    assert_eq!(ev.port, blocked_addr.port());
    assert_eq!(ev.rule_id, k.rule(1));
    // An unlisted destination is allowed for the agent, and reported as allowed by default.
    let (pid, outcome) = run_in(Some(&agent.path), "net-agent", &Attempt::connect(open_addr));
    assert_eq!(outcome, Outcome::Exited(0));
    let ev = k.event_for(pid);
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Allow));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
    // A source route sends the packet on past the destination the sendmsg program decided on.
    // A datagram's control message may carry one (root's `IP_RETOPTS`), and without BPF LSM no
    // hook reads those: the packet is the agent's to refuse (sequence_egress; red team round
    // 24). Its event has no process (a packet program runs in no task of its own). (Set as a
    // socket option, a source route or an IPv6 routing header, which an unprivileged socket may
    // set, is refused at the option, below: this kernel takes no routing header in a control
    // message.)
    k.require("sequence_egress");
    // An IPv6 segment routing header: type 4, one segment left (the next hop, segments[1]), two
    // segments (::1, ::1).
    let srh = [
        &[0u8, 4, 4, 1, 1, 0, 0, 0][..],
        &[0; 15],
        &[1],
        &[0; 15],
        &[1],
    ]
    .concat();
    // And an IPv4 loose source route (root's `IP_RETOPTS`, `IP_OPTIONS`; its first hop
    // 127.0.0.1, which the policy blocks, behind 127.0.0.2, which it allows).
    let lsrr = vec![131, 7, 4, 127, 0, 0, 1, 0];
    {
        let case = "40 sendmsg with an IPv4 loose source route (host, degraded)";
        let attempt = Attempt::SendMsgCmsg {
            addr: "127.0.0.2:9".parse().unwrap(),
            level: libc::IPPROTO_IP,
            ty: libc::IP_RETOPTS,
            data: lsrr.clone(),
            after_plain: false,
        };
        redteam(case, "tried");
        let (_, outcome) = run_in(Some(&agent.path), "net-agent", &attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        let ev = k.event_where(|e| {
            e.agent_cgroup == agent.id()
                && e.tgid == 0
                && Kind::from_u8(e.kind) == Some(Kind::Guard)
                && e.detail == governance_common::guard::SOURCE_ROUTE
                && e.object >> 32 == 0
        });
        assert_ne!(ev.flags & flags::DENIED, 0, "{case}");
        redteam(case, "denied");
        let (_, outcome) = run_in(Some(&outsider.path), "net-outsider", &attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        redteam(case, "control");
    }
    // Socket options refused to agents in the network stack, without BPF LSM too (sockopt_set;
    // red team round 26: an unprivileged agent's multicast membership put what it chose into
    // the kernel's IGMP and MLD reports, past `network: block`): a membership, a source route
    // or a routing header, an upper-layer protocol. Each reported by the task that set it.
    k.require("sockopt_set");
    use governance_common::guard;
    for (case, family, ty, level, name, value, what) in [
        (
            "R26 a multicast membership (host, degraded)",
            libc::AF_INET,
            libc::SOCK_DGRAM,
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            vec![239, 83, 69, 67, 0, 0, 0, 0],
            guard::MULTICAST,
        ),
        (
            "R26 an IPv6 multicast membership (host, degraded)",
            libc::AF_INET6,
            libc::SOCK_DGRAM,
            libc::IPPROTO_IPV6,
            libc::IPV6_ADD_MEMBERSHIP,
            [&[0xff, 0x0e][..], &[0; 13], &[1], &[0; 4]].concat(),
            guard::MULTICAST,
        ),
        (
            "R26 an IPv6 routing header set on the socket (host, degraded)",
            libc::AF_INET6,
            libc::SOCK_DGRAM,
            libc::IPPROTO_IPV6,
            libc::IPV6_RTHDR,
            srh,
            guard::SOURCE_ROUTE,
        ),
        (
            "R26 an IPv4 source route set on the socket (host, degraded)",
            libc::AF_INET,
            libc::SOCK_DGRAM,
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            lsrr,
            guard::SOURCE_ROUTE,
        ),
        (
            "R27 IPV6_FREEBIND: IPv6 sent from an address the node need not own (host, degraded)",
            libc::AF_INET6,
            libc::SOCK_DGRAM,
            libc::IPPROTO_IPV6,
            78, // IPV6_FREEBIND
            1i32.to_ne_bytes().to_vec(),
            guard::FOREIGN_SOURCE,
        ),
        (
            "R27 IP_FREEBIND on an IPv6 socket (host, degraded)",
            libc::AF_INET6,
            libc::SOCK_DGRAM,
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            1i32.to_ne_bytes().to_vec(),
            guard::FOREIGN_SOURCE,
        ),
        (
            "R32 a reuseport group's classic steering program (host, degraded)",
            libc::AF_INET,
            libc::SOCK_DGRAM,
            libc::SOL_SOCKET,
            51, // SO_ATTACH_REUSEPORT_CBPF (a `struct sock_fprog` with no instructions)
            vec![0; std::mem::size_of::<libc::sock_fprog>()],
            guard::REUSEPORT_STEER,
        ),
        (
            "R32 a reuseport group's steering program removed (host, degraded)",
            libc::AF_INET,
            libc::SOCK_STREAM,
            libc::SOL_SOCKET,
            68, // SO_DETACH_REUSEPORT_BPF
            0i32.to_ne_bytes().to_vec(),
            guard::REUSEPORT_STEER,
        ),
        (
            "R26 an upper-layer protocol on a TCP socket (host, degraded)",
            libc::AF_INET,
            libc::SOCK_STREAM,
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            b"tls".to_vec(),
            guard::SOCKET_ULP,
        ),
    ] {
        let attempt = Attempt::SetSockOpt {
            family,
            ty,
            level,
            name,
            value,
        };
        let (ev, control) =
            refused_in_agent_only(&mut k, &agent.path, &outsider.path, case, &attempt);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Guard), "{case}");
        assert_eq!(ev.detail, what, "{case}");
        assert_eq!(ev.object, (level as u64) << 32 | name as u64, "{case}");
        // Outside: whatever the kernel says of it (a membership on a node without a multicast
        // route, kTLS on an unconnected socket), never the program's refusal.
        assert_ne!(control, Outcome::Errno(libc::EPERM), "{case}: control");
        redteam(case, "control");
    }
    // IP sockets the connect and sendmsg programs never see (ICMP, raw, SCTP, MPTCP, UDP-Lite)
    // are refused in the network stack, without BPF LSM too (sock_create; red team round 24:
    // an agent's ping socket sent data past every network rule).
    k.require("sock_create");
    for (case, family, protocol) in [
        (
            "37 raw ICMP socket (host, degraded)",
            libc::AF_INET,
            libc::IPPROTO_ICMP,
        ),
        (
            "37 raw ICMPv6 socket (host, degraded)",
            libc::AF_INET6,
            libc::IPPROTO_ICMPV6,
        ),
    ] {
        let attempt = Attempt::Socket {
            family,
            ty: libc::SOCK_RAW,
            protocol,
        };
        let (ev, control) =
            refused_in_agent_only(&mut k, &agent.path, &outsider.path, case, &attempt);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Socket), "{case}");
        assert_eq!(ev.object, protocol as u64, "{case}");
        assert_eq!(control, Outcome::Exited(0), "{case}: control");
        redteam(case, "control");
    }
    // TCP and UDP sockets are the connect and sendmsg programs' to decide: made.
    for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
        let attempt = Attempt::Socket {
            family: libc::AF_INET6,
            ty,
            protocol: 0,
        };
        let (_, outcome) = run_in(Some(&agent.path), "net-agent", &attempt);
        assert_eq!(outcome, Outcome::Exited(0), "socket type {ty}");
    }
}

/// Red-team case 11 and the "via proxy" route: an agent's TCP connect to a destination under a
/// `via_proxy` rule lands on the policy proxy instead, and the proxy learns from the kernel
/// where it was going and which agent made it. What cannot go through the proxy (UDP, no proxy
/// listening) is refused, never sent direct. Outside the agent nothing is redirected.
#[test]
fn via_proxy_redirects_agents_to_the_proxy_which_learns_the_original_destination() {
    require_root();
    let agent = TestCgroup::new("proxied");
    let outsider = TestCgroup::new("unproxied");
    let (proxy, proxy_addr) = listener([127, 0, 0, 3]);
    // The kernel sends agents only to a listener marked as the proxy's.
    kernel::mark_proxy_listener(std::os::fd::AsFd::as_fd(&proxy)).unwrap();
    let (direct, direct_addr) = listener([127, 0, 0, 4]);
    for l in [&proxy, &direct] {
        l.set_nonblocking(true).unwrap();
    }
    let mut k = load(&format!(
        "name: proxied\nagents: {{ cgroup: {} }}\ndefaults: {{ network: block }}\nrules:\n\
         \x20 - {{ id: web, network: {{ cidr: 127.0.0.4/32, via_proxy: true }}, verdict: allow, reason: through the HTTP engine }}\n",
        agent.rel.display()
    ));
    k.require("sock_ops");
    let SocketAddr::V4(p4) = proxy_addr else {
        unreachable!()
    };
    k.enforcer
        .set_proxy(Some((*p4.ip(), std::net::Ipv6Addr::LOCALHOST, p4.port())))
        .unwrap();
    let mut conns = kernel::ProxyConns::open(&k.pins).unwrap();
    // The host's network namespace, where the proxy listens here.
    let netns = kernel::netns_cookie(std::os::fd::AsFd::as_fd(&proxy)).unwrap();
    // A connection `l` accepts (the attempt's connect has returned: it waits at most 5 s).
    let accepted = |l: &TcpListener| accept_within(l, Duration::from_secs(5));
    // Whether `l` has a connection queued now. For absence: the attempt's connect has
    // returned, and the one connection it made was accepted elsewhere (or refused), so there is
    // nothing still on its way here.
    let queued = |l: &TcpListener| accept_within(l, Duration::ZERO);
    let mapped: SocketAddr = format!("[::ffff:127.0.0.4]:{}", direct_addr.port())
        .parse()
        .unwrap();
    for (case, target) in [
        (
            "11 direct TCP to a via_proxy destination (host)",
            direct_addr,
        ),
        ("11 the same from a dual-stack IPv6 socket (host)", mapped),
    ] {
        redteam(case, "tried");
        let (pid, outcome) = run_in(
            Some(&agent.path),
            "proxied-agent",
            &Attempt::connect(target),
        );
        assert_eq!(outcome, Outcome::Exited(0), "{case}: the proxy accepts");
        let peer = accepted(&proxy).unwrap_or_else(|| {
            panic!(
                "{case}: the connection did not reach the proxy (direct: {:?}, event: {:?})",
                queued(&direct),
                k.try_event_for(pid, Duration::from_secs(1))
                    .map(|e| (e.flags, e.cause, e.verdict))
            )
        });
        assert!(queued(&direct).is_none(), "{case}: nothing went direct");
        let orig = conns
            .take(peer, netns)
            .expect("the kernel recorded the connection");
        assert_eq!(orig.redirected, 1);
        assert_eq!(
            orig.addr,
            Ipv4Addr::new(127, 0, 0, 4).to_ipv6_mapped().octets()
        );
        assert_eq!(orig.port, direct_addr.port());
        assert_eq!((orig.tgid, orig.agent_cgroup), (pid, agent.id()));
        assert!(conns.take(peer, netns).is_none(), "taken once");
        let ev = k.event_for(pid);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Connect));
        assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Allow));
        assert_ne!(ev.flags & flags::PROXIED, 0);
        assert_eq!(ev.port, direct_addr.port(), "the event names the original");
        redteam(case, "denied");
        let (pid, outcome) = run_in(Some(&outsider.path), "direct", &Attempt::connect(target));
        assert_eq!(outcome, Outcome::Exited(0));
        assert!(accepted(&direct).is_some(), "{case}: control goes direct");
        assert!(queued(&proxy).is_none());
        assert!(k.try_event_for(pid, Duration::from_millis(100)).is_none());
        redteam(case, "control");
    }
    // Explicit proxy use is let through and recorded (no original destination).
    let (pid, outcome) = run_in(Some(&agent.path), "explicit", &Attempt::connect(proxy_addr));
    assert_eq!(outcome, Outcome::Exited(0));
    let orig = conns
        .take(accepted(&proxy).unwrap(), netns)
        .expect("recorded");
    assert_eq!((orig.redirected, orig.port, orig.tgid), (0, 0, pid));
    assert_eq!(Cause::from_u8(k.event_for(pid).cause), Some(Cause::Builtin));
    // UDP cannot go through an HTTP proxy, and with no proxy nothing can: refused.
    let cases = [
        (
            "11 UDP to a via_proxy destination (host)",
            Attempt::SendTo { addr: direct_addr },
        ),
        (
            "11 via_proxy while no proxy listens (host)",
            Attempt::connect(direct_addr),
        ),
    ];
    for (i, (case, attempt)) in cases.iter().enumerate() {
        if i == 1 {
            k.enforcer.set_proxy(None).unwrap();
        }
        redteam(case, "tried");
        let (pid, outcome) = run_in(Some(&agent.path), "proxied-agent", attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        let ev = k.event_for(pid);
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::NoProxy), "{case}");
        // Refused before anything was sent: nothing can be on its way.
        assert!(queued(&direct).is_none() && queued(&proxy).is_none());
        redteam(case, "denied");
        let (_, outcome) = run_in(Some(&outsider.path), "direct", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        if matches!(attempt, Attempt::Connect { .. }) {
            assert!(accepted(&direct).is_some(), "{case}: control goes direct");
        }
        redteam(case, "control");
    }
}

/// Degraded exec enforcement (no BPF LSM here): the process that executed a blocked binary is
/// killed right after the exec, and the event says so.
#[test]
fn degraded_exec_kills_after_a_blocked_exec() {
    require_root();
    let agent = TestCgroup::new("degraded");
    let outsider = TestCgroup::new("outsider");
    let dir = PathBuf::from(format!("/tmp/governance-degraded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let blocked = dir.join("true");
    std::fs::copy("/bin/busybox", &blocked).unwrap();
    let mut k = load(&format!(
        "name: degraded\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: tool, exec: {{ path: {} }}, verdict: block, reason: test }}\n",
        agent.rel.display(),
        blocked.display()
    ));
    k.require("sched_process_exec");
    let attempt = Attempt::exec(&blocked, "true");
    redteam("degraded exec kill (host)", "tried");
    let (pid, outcome) = run_in(Some(&agent.path), "degraded", &attempt);
    assert_eq!(outcome, Outcome::Signaled(libc::SIGKILL));
    let ev = k.event_for(pid);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Exec));
    assert_ne!(ev.flags & flags::KILLED, 0);
    assert_eq!(ev.rule_id, k.rule(1));
    redteam("degraded exec kill (host)", "denied");
    let (_, outcome) = run_in(Some(&outsider.path), "outsider", &attempt);
    assert_eq!(outcome, Outcome::Exited(0));
    redteam("degraded exec kill (host)", "control");
    // Red team round 29: the loader run as a program (`ld.so /usr/bin/true`: the program no
    // rule was asked about) is killed too, as the LSM refuses it.
    let loader = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("the node's loader");
    let attempt = Attempt::exec_args(loader, &["ld.so", "/usr/bin/true"]);
    let case = "degraded: the loader run as a program (host)";
    redteam(case, "tried");
    let (pid, outcome) = run_in(Some(&agent.path), "degraded-ld", &attempt);
    assert_eq!(outcome, Outcome::Signaled(libc::SIGKILL), "{case}");
    let ev = k.event_for(pid);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Exec));
    assert_ne!(ev.flags & flags::KILLED, 0);
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
    assert_eq!(ev.detail, governance_common::EXEC_DETAIL_LOADER, "{case}");
    redteam(case, "denied");
    let (_, outcome) = run_in(Some(&outsider.path), "outsider-ld", &attempt);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    redteam(case, "control");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Red team rounds 31 and 33: on btrfs `stat` reports each subvolume's device (the top-level
/// one has its own too) and the superblock's device is another, which every subvolume shares;
/// each subvolume numbers its files on its own (its root is inode 256, its first file 257). In
/// round 31 identities computed from `stat` never matched the kernel's (keyed on the
/// superblock's device); then, keyed on the superblock's device on both sides, a file of one
/// subvolume was every other subvolume's file with its number: under an exec allowlist another
/// subvolume's file ran as the allowed program. Both sides now key a btrfs file on its
/// subvolume's device (the programs read it from the btrfs inode, at offsets from btrfs's
/// BTF). Here, with the degraded exec hook, which decides by identity alone: two subvolumes'
/// files with one inode number; the allowed one runs in the agent (the identities agree), the
/// other is killed by the allowlist's default (on the build before it ran), and runs outside.
#[test]
fn identities_on_btrfs_are_each_subvolume_s() {
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let agent = TestCgroup::new("btrfs");
    let outsider = TestCgroup::new("btrfs-outsider");
    let fs = governance_tests::Btrfs::mount("host");
    let (a, b) = (fs.subvolume("a"), fs.subvolume("b"));
    let (tool, other) = (a.join("tool"), b.join("other"));
    std::fs::copy("/bin/busybox", &tool).unwrap();
    std::fs::copy("/bin/busybox", &other).unwrap();
    let (tool_meta, other_meta) = (
        std::fs::metadata(&tool).unwrap(),
        std::fs::metadata(&other).unwrap(),
    );
    assert_eq!(
        tool_meta.ino(),
        other_meta.ino(),
        "two subvolumes' first files share an inode number: the test shows nothing otherwise"
    );
    assert_ne!(tool_meta.dev(), other_meta.dev());
    let case = "files of two btrfs subvolumes with one inode number (host)";
    redteam(case, "tried");
    let mut k = load(&format!(
        "name: btrfs\nagents: {{ cgroup: {} }}\ndefaults: {{ exec: block }}\nrules:\n  - {{ id: tool, exec: {{ path: {} }}, verdict: allow, reason: test }}\n",
        agent.rel.display(),
        tool.display()
    ));
    k.require("sched_process_exec");
    assert_eq!(
        kernel::exec_identity(&tool).unwrap(),
        (kernel::kernel_dev(tool_meta.dev()), tool_meta.ino()),
        "{case}: the exec identity is the subvolume's"
    );
    let socket = a.join("s.sock");
    let _listening = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    assert_eq!(
        kernel::unix::socket_identity(&socket).unwrap().0,
        kernel::kernel_dev(tool_meta.dev()),
        "{case}: the socket identity"
    );
    let (_, outcome) = run_in(
        Some(&agent.path),
        "btrfs-tool",
        &Attempt::exec(&tool, "true"),
    );
    assert_eq!(outcome, Outcome::Exited(0), "{case}: the allowed program");
    let (pid, outcome) = run_in(
        Some(&agent.path),
        "btrfs-other",
        &Attempt::exec(&other, "true"),
    );
    assert_eq!(outcome, Outcome::Signaled(libc::SIGKILL), "{case}");
    let ev = k.event_for(pid);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Exec));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default), "{case}");
    redteam(case, "denied");
    let (_, outcome) = run_in(
        Some(&outsider.path),
        "btrfs-out",
        &Attempt::exec(&other, "true"),
    );
    assert_eq!(outcome, Outcome::Exited(0), "{case}: outside the agent");
    redteam(case, "control");
    drop(k);
    drop(_listening);
}

/// A policy directory holding `p.yaml`, removed when dropped (a failing test's too).
struct PolicyDir(PathBuf);

impl std::ops::Deref for PolicyDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for PolicyDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for PolicyDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn policy_dir(name: &str, yaml: &str) -> PolicyDir {
    let dir = PathBuf::from(format!(
        "/tmp/governance-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), yaml).unwrap();
    PolicyDir(dir)
}

fn unload(pins: &Path) {
    let out = Command::new(governance_bin())
        .args(["unload", "--pins"])
        .arg(pins)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `governance run` must never pretend to enforce: where LSM hooks cannot attach it explains
/// why and exits 3, leaving nothing attached; `--allow-degraded` runs with what is available.
#[test]
fn run_refuses_without_lsm_unless_degraded_is_accepted() {
    require_root();
    let agent = TestCgroup::new("cli");
    let dir = policy_dir(
        "cli",
        &format!("name: cli\nagents: {{ cgroup: {} }}\n", agent.rel.display()),
    );
    let pins = pin_dir("cli");
    let out = Command::new(governance_bin())
        .args(["run", "--no-create-cgroups", "--pins"])
        .arg(&pins)
        .arg("--policy")
        .arg(&dir)
        .env("GOVERNANCE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("lsm/bprm_check_security      NOT AVAILABLE"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cgroup/connect4              attached"),
        "{stderr}"
    );
    assert!(stderr.contains("refusing to run"), "{stderr}");
    assert!(stderr.contains("--allow-degraded"), "{stderr}");
    assert!(!pins.exists(), "nothing stays attached after a refusal");

    // With --allow-degraded it starts, with the kill-after-exec fallback, says DEGRADED, and
    // stops cleanly on SIGTERM; `status` shows it; `unload` removes it.
    let pins_arg = pins.to_str().unwrap();
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--pins",
            pins_arg,
        ],
        &dir,
    );
    assert!(
        seen.contains("raw_tp/sched_process_exec    attached"),
        "{seen}"
    );
    assert!(seen.contains("DEGRADED"), "{seen}");
    stop_daemon(daemon);
    let out = Command::new(governance_bin())
        .args(["status", "--pinned", "--pins", pins_arg])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("generation  1"), "{status}");
    assert!(status.contains(&format!("{}", agent.id())), "{status}");
    unload(&pins);
    assert!(!pins.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The next decision line the daemon prints (policy, lifecycle, approval and discovery lines are
/// skipped).
fn next_line(stdout: &mut std::io::BufReader<std::process::ChildStdout>) -> String {
    loop {
        let mut line = String::new();
        assert_ne!(
            stdout.read_line(&mut line).unwrap(),
            0,
            "the daemon's stdout ended"
        );
        let head = line.split_whitespace().nth(1).unwrap_or("");
        // Discovery reports whatever else runs on the machine (an MCP server outside every
        // agent): not this test's.
        if !["LIFECYCLE", "POLICY", "APPROVAL", "DISCOVERY"].contains(&head) {
            return line;
        }
    }
}

/// A daemon reloading the policy `p.yaml` of a directory of its own, which blocks loopback
/// connects for the agents a cgroup selector names (`--detach-on-exit`; pins and a state
/// directory of its own); its decision lines on `stdout`.
struct LoopbackReloads {
    /// None only while [`restart`](Self::restart) replaces it.
    daemon: Option<Daemon>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// The policy that blocks.
    blocking: String,
    dir: PolicyDir,
    policy: PathBuf,
    /// Its audit log, socket, CA and copy of the policy in force.
    state: PathBuf,
    /// After the daemon: fields drop in order, so the daemon is gone before its pins.
    pins: PinDir,
    attempt: Attempt,
    comm: &'static str,
    _listener: TcpListener,
}

impl LoopbackReloads {
    fn start(comm: &'static str, cgroup: &str) -> Self {
        let (listener, addr) = listener([127, 0, 0, 1]);
        let blocking = format!(
            "name: {comm}\nagents: {{ cgroup: \"{cgroup}\" }}\nrules:\n  - {{ id: no-loopback, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n"
        );
        let dir = policy_dir(comm, &blocking);
        let pins = pin_dir(comm);
        let state = dir.with_extension("state");
        std::fs::create_dir_all(&state).unwrap();
        let (daemon, stdout, seen) = Self::launch(&dir, &pins, &state);
        assert!(seen.contains("as generation 1"), "{seen}");
        Self {
            daemon: Some(daemon),
            stdout,
            blocking,
            policy: dir.join("p.yaml"),
            dir,
            state,
            pins,
            attempt: Attempt::connect(addr),
            comm,
            _listener: listener,
        }
    }

    fn launch(
        dir: &Path,
        pins: &Path,
        state: &Path,
    ) -> (
        Daemon,
        std::io::BufReader<std::process::ChildStdout>,
        String,
    ) {
        let (mut daemon, seen) = governance_tests::start_daemon_in(
            &[
                "--allow-degraded",
                "--no-create-cgroups",
                "--detach-on-exit",
                "--pins",
                pins.to_str().unwrap(),
            ],
            dir,
            state.to_owned(),
        );
        let stdout = std::io::BufReader::new(daemon.child.stdout.take().unwrap());
        (daemon, stdout, seen)
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("a daemon")
    }

    /// `governance status -o json`.
    fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.daemon().cli(&["status", "-o", "json"]).stdout).unwrap()
    }

    /// Stop the daemon (its programs detach) and start another on the same policy directory,
    /// pins and state; what it said up to its control API.
    fn restart(&mut self) -> String {
        stop_daemon(self.daemon.take().expect("a daemon"));
        assert!(!self.pins.exists(), "--detach-on-exit removes the pins");
        let (daemon, stdout, seen) = Self::launch(&self.dir, &self.pins, &self.state);
        self.daemon = Some(daemon);
        self.stdout = stdout;
        seen
    }

    /// [`start`](Self::start) for the agents `agent-*` of a parent cgroup, with `agent-1` there
    /// and blocked by generation 1: the parent, `agent-1`, the daemon.
    fn start_for_agents(comm: &'static str) -> (TestCgroup, PathBuf, Self) {
        let parent = TestCgroup::new(comm);
        let first = parent.child("agent-1");
        let mut r = Self::start(comm, &format!("{}/agent-*", parent.rel.display()));
        r.decided(&first, "BLOCK", 1);
        (parent, first, r)
    }

    /// An agent `name` appears below `parent` while the policy directory does not read: it
    /// is blocked by `generation`, made with the policy of the generation before.
    fn appears_while_broken(
        &mut self,
        parent: &TestCgroup,
        name: &str,
        generation: u32,
    ) -> PathBuf {
        let agent = parent.child(name);
        let seen = self
            .daemon()
            .wait_for(&format!("generation {generation} is enforcing"));
        let kept = format!(
            "the policy generation {} enforced: the policy directory does not read",
            generation - 1
        );
        assert!(seen.contains(&kept), "{seen}");
        self.decided(&agent, "BLOCK", generation);
        agent
    }

    /// Whether `status` shows the broken file's error ([`break_policy`](Self::break_policy)).
    fn says_the_directory_does_not_read(&self, status: &serde_json::Value) -> bool {
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("p.yaml:4:"))
    }

    /// The policy with its rule's verdict `allow`.
    fn allowing(&self) -> String {
        self.blocking.replace("verdict: block", "verdict: allow")
    }

    /// A policy file that does not read (line 4: no such verdict).
    fn break_policy(&self) {
        std::fs::write(
            &self.policy,
            format!(
                "name: {}\nagents: {{ cgroup: x }}\nrules:\n  - {{ id: a, verdict: deny }}\n",
                self.comm
            ),
        )
        .unwrap();
    }

    fn connect(&self, cgroup: &Path) -> Outcome {
        run_in(Some(cgroup), self.comm, &self.attempt).1
    }

    /// A connect from `cgroup` is refused, and its event names `verdict` and `generation`.
    fn decided(&mut self, cgroup: &Path, verdict: &str, generation: u32) {
        let expected = if verdict == "BLOCK" {
            Outcome::Errno(libc::EPERM)
        } else {
            Outcome::Exited(0)
        };
        assert_eq!(self.connect(cgroup), expected, "{}", cgroup.display());
        let line = next_line(&mut self.stdout);
        assert!(
            line.contains(&format!(" {verdict:<8} connect "))
                && line.contains(&format!(" gen={generation} ")),
            "{line}"
        );
    }

    fn stop(mut self) {
        stop_daemon(self.daemon.take().expect("a daemon"));
        assert!(!self.pins.exists(), "--detach-on-exit removes the pins");
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A running daemon reloads: a broken policy keeps generation N enforcing, a good one becomes
/// N+1, and events say which generation decided.
#[test]
fn reload_keeps_the_generation_on_a_broken_policy_and_moves_on_with_a_good_one() {
    require_root();
    let agent = TestCgroup::new("reload");
    let mut r = LoopbackReloads::start("reload", &agent.rel.display().to_string());
    r.decided(&agent.path, "BLOCK", 1);

    // A broken file: the reload fails, names the place, and generation 1 keeps enforcing.
    r.break_policy();
    let seen = r.daemon().wait_for("p.yaml:4:");
    assert!(seen.contains("generation 1 keeps enforcing"), "{seen}");
    r.decided(&agent.path, "BLOCK", 1);

    // A good file: generation 2 allows, and says so.
    std::fs::write(&r.policy, r.allowing()).unwrap();
    r.daemon().wait_for("generation 2 is enforcing");
    r.decided(&agent.path, "ALLOW", 2);

    // SIGHUP reloads too.
    signal(r.daemon(), nix::sys::signal::SIGHUP);
    r.daemon().wait_for("generation 3 is enforcing");
    r.stop();
}

/// A reload for the agents' sake (a cgroup appeared) reads no policy file half-written and
/// leaves no new agent unenforced because the directory does not read: an agent that appears
/// beside a broken file, or while a file is open for writing (a file cut mid-write can parse as
/// a weaker policy), gets the policy the current generation enforces. Controls: a cgroup the
/// selector does not match stays ungoverned, and once the writer closes the file the directory
/// is read and its policy (which allows) enforces.
#[test]
fn an_agent_that_appears_beside_a_broken_or_half_written_policy_gets_the_policy_in_force() {
    require_root();
    let (parent, first, mut r) = LoopbackReloads::start_for_agents("appear");

    // A broken file: its reload fails and generation 1 keeps enforcing.
    r.break_policy();
    let seen = r.daemon().wait_for("p.yaml:4:");
    assert!(seen.contains("generation 1 keeps enforcing"), "{seen}");
    // An agent appears: the directory still does not read, and the agent gets generation 1's
    // policy in generation 2.
    r.appears_while_broken(&parent, "agent-2", 2);
    r.decided(&first, "BLOCK", 2);
    // The status still says the directory does not read.
    let status = r.status();
    assert_eq!(status["generation"], 2, "{status}");
    assert!(r.says_the_directory_does_not_read(&status), "{status}");
    // Control: a cgroup the selector does not match is no agent.
    let other = parent.child("other");
    r.daemon()
        .wait_for("the cgroup tree changed, the agents did not; generation 2 stays");
    assert_eq!(r.connect(&other), Outcome::Exited(0));

    // A writer has the file open: a policy that allows, written but not closed.
    let mut writer = std::fs::File::create(&r.policy).unwrap();
    std::io::Write::write_all(&mut writer, r.allowing().as_bytes()).unwrap();
    let third = parent.child("agent-3");
    let seen = r.daemon().wait_for("generation 3 is enforcing");
    assert!(
        seen.contains("the policy generation 2 enforced: a policy file is being written"),
        "{seen}"
    );
    r.decided(&third, "BLOCK", 3);
    // Closed: the directory is read, and its policy allows.
    drop(writer);
    r.daemon()
        .wait_for("generation 4 is enforcing (the policy directory changed)");
    r.decided(&third, "ALLOW", 4);
    r.stop();
}

/// When no generation can be built (red team round 24: an agent could make the identity tables
/// overflow with hard links, and the policy in force then no longer fits either), an agent
/// cgroup that appeared since the generation in force was built is in none of its tables: the
/// daemon puts it under the quarantine class (`Enforcer::quarantine`, after a failed reload),
/// which refuses everything. Controls: an agent the generation holds keeps its own class (not
/// quarantined again), a cgroup that is no agent is untouched.
#[test]
fn an_agent_that_appears_while_no_generation_can_be_built_is_refused_everything() {
    require_root();
    let parent = TestCgroup::new("quarantine");
    let known = parent.child("agent-1");
    let (_open, open_addr) = listener([127, 0, 0, 2]);
    let open = Attempt::connect(open_addr);
    let mut k = load(&format!(
        "name: quarantine\nagents: {{ cgroup: '{}/agent-*' }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n",
        parent.rel.display()
    ));
    let case = "quarantine: an agent that appears while no generation can be built";
    redteam(case, "tried");
    let new = parent.child("agent-2");
    assert_eq!(
        run_in(Some(&new), "quarantine", &open).1,
        Outcome::Exited(0),
        "not yet an agent"
    );
    assert!(
        k.enforcer
            .quarantine(agents::cgroup_id(&new).unwrap())
            .unwrap()
    );
    let (pid, outcome) = run_in(Some(&new), "quarantine", &open);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let ev = k.event_for(pid);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Connect), "{case}");
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default), "{case}");
    assert_eq!(
        ev.class,
        governance_common::class_id(k.generation, governance_common::QUARANTINE_CLASS),
        "{case}"
    );
    redteam(case, "denied");
    // Controls.
    assert!(
        !k.enforcer
            .quarantine(agents::cgroup_id(&known).unwrap())
            .unwrap()
    );
    assert_eq!(
        run_in(Some(&known), "quarantine", &open).1,
        Outcome::Exited(0)
    );
    let other = parent.child("other");
    assert_eq!(
        run_in(Some(&other), "quarantine", &open).1,
        Outcome::Exited(0)
    );
    redteam(case, "control");
}

/// A restart that finds the policy directory broken (a typo pushed before a restart or an
/// upgrade) enforces the copy of the policy in force the last daemon kept, instead of exiting
/// and leaving every agent that appears meanwhile ungoverned; it says so (the log, the status)
/// and reads the directory again once it is fixed. Control: a start with no copy exits 1 and
/// names the place, as before.
#[test]
fn a_restart_on_a_broken_policy_enforces_the_copy_of_the_policy_in_force() {
    require_root();
    let (parent, first, mut r) = LoopbackReloads::start_for_agents("restart");
    r.break_policy();
    r.daemon().wait_for("p.yaml:4:");

    // Control: with no copy of the policy in force, `run` refuses to start, naming the place.
    let out = Command::new(governance_bin())
        .args(["run", "--allow-degraded", "--no-create-cgroups", "--pins"])
        .arg(r.state.join("no-pins"))
        .arg("--policy-in-force")
        .arg(r.state.join("no-copy"))
        .arg("--policy")
        .arg(&r.dir)
        .env("GOVERNANCE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("p.yaml:4:"), "{stderr}");

    // The restart finds the directory broken and enforces the copy the first daemon kept.
    let seen = r.restart();
    assert!(seen.contains("p.yaml:4:"), "{seen}");
    assert!(
        seen.contains("does not read: enforcing the copy of the policy in force saved at"),
        "{seen}"
    );
    r.decided(&first, "BLOCK", 1);
    let status = r.status();
    assert!(r.says_the_directory_does_not_read(&status), "{status}");
    // An agent that appears meanwhile is governed by it.
    let second = r.appears_while_broken(&parent, "agent-2", 2);

    // Fixed: the directory is read again, its policy (which allows) enforces, the error is gone.
    std::fs::write(&r.policy, r.allowing()).unwrap();
    r.daemon()
        .wait_for("generation 3 is enforcing (the policy directory changed)");
    r.decided(&second, "ALLOW", 3);
    let status = r.status();
    assert!(status["last_error"].is_null(), "{status}");
    r.stop();
}

/// Reliability fault 3: 1,000 generation flips while connects run. Odd generations block,
/// even ones allow; every decision matches the generation its event names, so no decision saw
/// half of one generation and half of another.
#[test]
fn a_thousand_reloads_under_traffic_never_mix_generations() {
    require_root();
    let agent = TestCgroup::new("flips");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let yaml = |verdict: &str| {
        format!(
            "name: flips\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.1/32 }}, verdict: {verdict}, reason: test }}\n",
            agent.rel.display()
        )
    };
    let mut k = load(&yaml("block"));
    let root = agents::cgroup2_mount().unwrap();
    let sets = [yaml("allow"), yaml("block")]
        .map(|y| governance::policy::parse(&[("p.yaml".into(), y)]).unwrap());
    let found = agents::discover(&root, &sets[0], false, None).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, path, attempt) = (stop.clone(), agent.path.clone(), Attempt::connect(addr));
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = run_in(Some(&path), "flips", &attempt);
                n += 1;
            }
            n
        })
    };
    for generation in 2..=1001u32 {
        let compiled = kernel::compile(
            &sets[(generation % 2) as usize],
            &found,
            generation,
            &kernel::Protect::default(),
        );
        k.enforcer.install(compiled).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let attempts = traffic.join().unwrap();
    let mut checked = 0;
    // Every attempt has returned, so its event is in the ring already: the drain ends at the
    // first 200 ms without one (nothing is waited for).
    while let Some(ev) = k.try_event_where(Duration::from_millis(200), |_| true) {
        let blocked = ev.flags & flags::DENIED != 0;
        assert_eq!(
            blocked,
            ev.generation % 2 == 1,
            "generation {} decided {blocked}",
            ev.generation
        );
        assert_eq!(ev.rule_id, governance_common::class_id(ev.generation, 1));
        checked += 1;
    }
    assert!(
        checked > 0 && checked <= attempts,
        "{checked} events for {attempts} attempts"
    );
    assert_eq!(k.enforcer.generation().unwrap(), 1001);
}

/// A flip enforces the new generation at once; the cleanup after the generation it retired
/// (here: deleting the throttle bucket of a rule the new generation does not have) waits for
/// [`kernel::Enforcer::settle`], which waits for an RCU grace period first. A settle for a flip
/// that is no longer the last one does nothing, and a flip made before the previous one was
/// settled settles it first. Controls: the bucket exists while unsettled, and the throttled
/// generation allows the agent's connects.
#[test]
fn a_flip_enforces_at_once_and_its_cleanup_waits_to_be_settled() {
    require_root();
    let agent = TestCgroup::new("settle");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let yaml = |rule: &str| {
        format!(
            "name: settle\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.1/32 }}, {rule}, reason: test }}\n",
            agent.rel.display()
        )
    };
    let metered = yaml("verdict: throttle, throttle: { rate: 100, per: 1h }");
    let mut k = load(&metered);
    let root = agents::cgroup2_mount().unwrap();
    let sets = [metered, yaml("verdict: block")]
        .map(|y| governance::policy::parse(&[("p.yaml".into(), y)]).unwrap());
    let found = agents::discover(&root, &sets[0], false, None).unwrap();
    let compiled = |set: usize, generation: u32| {
        kernel::compile(&sets[set], &found, generation, &kernel::Protect::default())
    };
    let connect = || run_in(Some(&agent.path), "settle", &Attempt::connect(addr)).1;
    let key = governance_common::BucketKey {
        owner: agents::cgroup_id(&agent.path).unwrap(),
        rule: kernel::bucket_id("settle/lo"),
    };
    let bucket =
        |k: &governance_tests::Loaded| k.enforcer.buckets().unwrap().iter().any(|(b, _)| *b == key);
    // Control: metered, the connect is allowed and takes from the bucket.
    assert_eq!(connect(), Outcome::Exited(0));
    assert!(bucket(&k), "the metered connect made the bucket");

    let g = k.enforcer.generation().unwrap();
    k.enforcer.flip(compiled(1, g + 1)).unwrap();
    assert_eq!(k.enforcer.generation().unwrap(), g + 1);
    assert_eq!(connect(), Outcome::Errno(libc::EPERM), "the flip enforces");
    assert_eq!(k.enforcer.unsettled(), Some(g + 1));
    assert!(bucket(&k), "nothing is deleted before the flip has settled");
    // A settle for another flip than the last one does nothing.
    k.enforcer.settle_waited(g).unwrap();
    assert_eq!(k.enforcer.unsettled(), Some(g + 1));
    assert!(bucket(&k));
    k.enforcer.settle().unwrap();
    assert_eq!(k.enforcer.unsettled(), None);
    assert!(!bucket(&k), "settled: the bucket no rule leads to is gone");

    // Metered again (a new bucket), then two flips without a settle between them: the second
    // settles the first before it writes anything.
    k.enforcer.install(compiled(0, g + 2)).unwrap();
    assert_eq!(connect(), Outcome::Exited(0));
    assert!(bucket(&k));
    k.enforcer.flip(compiled(1, g + 3)).unwrap();
    assert!(bucket(&k));
    k.enforcer.flip(compiled(1, g + 4)).unwrap();
    assert!(
        !bucket(&k),
        "the flip to {} settled the one before it",
        g + 4
    );
    assert_eq!(k.enforcer.unsettled(), Some(g + 4));
    assert_eq!(connect(), Outcome::Errno(libc::EPERM));
    k.enforcer.settle().unwrap();
}

/// Reliability fault 5: tables that do not fit. The install fails before the flip, names the
/// map, and the previous generation keeps enforcing.
#[test]
fn a_full_map_fails_the_install_and_the_previous_generation_keeps_enforcing() {
    require_root();
    let agent = TestCgroup::new("full");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let mut k = load(&format!(
        "name: full\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n",
        agent.rel.display()
    ));
    let root = agents::cgroup2_mount().unwrap();
    let yaml = beyond_net_rules(format!(
        "name: full\nagents: {{ cgroup: {} }}\nrules:\n",
        agent.rel.display()
    ));
    let set =
        governance::policy::parse(&[("p.yaml".into(), yaml)]).unwrap_or_else(|e| panic!("{e}"));
    let found = agents::discover(&root, &set, false, None).unwrap();
    let compiled = kernel::compile(&set, &found, 2, &kernel::Protect::default());
    let err = k.enforcer.install(compiled).unwrap_err();
    assert!(err.to_string().contains("NET_RULES"), "{err}");
    assert_eq!(k.enforcer.generation().unwrap(), 1);
    assert_eq!(
        run_in(Some(&agent.path), "full", &Attempt::connect(addr)).1,
        Outcome::Errno(libc::EPERM)
    );
}

/// `policy` (ending in its rules) with more destination prefixes than NET_RULES holds, in few
/// rules: a policy that reads and does not fit the kernel's tables.
fn beyond_net_rules(mut policy: String) -> String {
    let n = governance_common::MAX_NET_RULES as usize + 10;
    for chunk in 0..n.div_ceil(1000) {
        let cidrs: Vec<String> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        policy.push_str(&format!(
            "  - {{ id: r{chunk}, network: {{ cidr: [{}] }}, verdict: block, reason: test }}\n",
            cidrs.join(", ")
        ));
    }
    policy
}

/// Red-team 22 and agent discovery: 1,000 agent cgroups created and removed while the daemon
/// runs. New cgroups are governed after the daemon sees them, removed ones leave no entry
/// behind, and the stable agent stays governed throughout.
#[test]
fn agent_cgroup_churn_leaves_no_stale_entries() {
    require_root();
    let root = agents::cgroup2_mount().unwrap();
    let parent = TestCgroup::new("churn");
    let stable = parent.child("stable");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let dir = policy_dir(
        "churn",
        &format!(
            "name: churn\nagents: {{ cgroup: '{}/*' }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n",
            parent.rel.display()
        ),
    );
    let pins = pin_dir("churn");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    assert!(seen.contains("1 agents"), "{seen}");
    let status = || {
        let out = Command::new(governance_bin())
            .args(["status", "--pinned", "--pins", &pins_arg])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let agents_line = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("agents"))
            .unwrap_or("")
            .to_owned()
    };
    redteam("22 1000 cgroups churn", "tried");
    let made: Vec<PathBuf> = (0..1000).map(|i| parent.child(&format!("c{i}"))).collect();
    wait_until(
        "the daemon to govern the 1,000 new cgroups (agents 1001)",
        Duration::from_secs(60),
        || agents_line(&status()) == "agents      1001",
    );
    // A new cgroup is governed.
    let (_, outcome) = run_in(Some(&made[999]), "churn", &Attempt::connect(addr));
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    for d in &made {
        std::fs::remove_dir(d).unwrap();
    }
    wait_until(
        "the daemon to drop the removed cgroups (agents 1)",
        Duration::from_secs(60),
        || agents_line(&status()) == "agents      1",
    );
    let s = status();
    assert!(
        !s.contains("(cgroup gone)"),
        "no entry outlives its cgroup:\n{s}"
    );
    assert_eq!(
        run_in(Some(&stable), "churn", &Attempt::connect(addr)).1,
        Outcome::Errno(libc::EPERM)
    );
    redteam("22 1000 cgroups churn", "denied");
    // Control: a cgroup outside the selector is not governed.
    assert_eq!(
        run_in(Some(&root), "churn", &Attempt::connect(addr)).1,
        Outcome::Exited(0)
    );
    redteam("22 1000 cgroups churn", "control");
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12 item 7, throttles survive reloads. An agent that spent its connect budget (3 an
/// hour: nothing refills during the test, so every refusal is the spent level) gets no fresh one
/// by making a child cgroup (which now rebuilds nothing), nor through `governance policy reload`,
/// SIGHUP, or a new agent appearing (new generations, whose rules lead to the same buckets).
/// Controls: an outsider is never throttled, a new agent and the policy's second agent have
/// budgets of their own, and the bucket of an agent that goes is deleted.
#[test]
fn throttles_survive_child_cgroups_and_reloads() {
    require_root();
    let parent = TestCgroup::new("throttles");
    let a = parent.child("a");
    let b = parent.child("b");
    let outsider = TestCgroup::new("unthrottled");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let dir = policy_dir(
        "throttles",
        &format!(
            "name: meter\nagents: {{ cgroup: '{}/*' }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.1/32 }}, verdict: throttle, throttle: {{ rate: 3, per: 1h }}, reason: metered }}\n",
            parent.rel.display()
        ),
    );
    let pins = pin_dir("throttles");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (mut daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    assert!(
        seen.contains("as generation 1") && seen.contains("2 agents"),
        "{seen}"
    );
    let mut stdout = std::io::BufReader::new(daemon.child.stdout.take().unwrap());
    let attempt = Attempt::connect(addr);
    // A connect from `cgroup`, and the daemon's line for it (which names the generation).
    let mut connect = |cgroup: &Path, generation: u32| {
        let (_, outcome) = run_in(Some(cgroup), "metered", &attempt);
        let line = next_line(&mut stdout);
        assert!(
            line.contains(&format!(" gen={generation} verdict=throttle rule=meter/lo")),
            "{line}"
        );
        (outcome, line)
    };
    let spent = |(outcome, line): (Outcome, String)| {
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{line}");
        assert!(line.contains(" THROTTLE connect "), "{line}");
    };
    let allowed = |(outcome, line): (Outcome, String)| {
        assert_eq!(outcome, Outcome::Exited(0), "{line}");
        assert!(line.contains(" ALLOW    connect "), "{line}");
    };
    let outside = |case: &str| {
        for cgroup in [Some(outsider.path.as_path()), None] {
            assert_eq!(
                run_in(cgroup, "unmetered", &attempt).1,
                Outcome::Exited(0),
                "{case}: control outside the agents"
            );
        }
        redteam(case, "control");
    };
    let bucket_key = |cgroup: &Path| governance_common::BucketKey {
        owner: agents::cgroup_id(cgroup).unwrap(),
        rule: kernel::bucket_id("meter/lo"),
    };
    // The kernel's buckets, read through the pins.
    let buckets = || {
        kernel::Enforcer::adopt(&pins)
            .unwrap()
            .buckets()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.tokens))
            .collect::<std::collections::HashMap<_, _>>()
    };

    for _ in 0..3 {
        allowed(connect(&a, 1));
    }
    spent(connect(&a, 1));
    assert_eq!(buckets().get(&bucket_key(&a)), Some(&0));

    let case = "item7 throttle refill by a child cgroup (host)";
    redteam(case, "tried");
    let worker = a.join("worker");
    std::fs::create_dir(&worker).unwrap();
    spent(connect(&worker, 1));
    spent(connect(&a, 1));
    // No generation was built for it: the cgroup watch stops at agent roots (red team round
    // 29), so a cgroup made inside an agent is not even looked at.
    let status: serde_json::Value =
        serde_json::from_slice(&daemon.cli(&["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(status["generation"], 1, "{status}");
    redteam(case, "denied");
    outside(case);

    let case = "item7 throttle refill by policy reload (host)";
    redteam(case, "tried");
    let out = daemon.cli(&["policy", "reload"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("generation 2 is enforcing"),
        "{out:?}"
    );
    spent(connect(&a, 2));
    spent(connect(&worker, 2));
    redteam(case, "denied");
    outside(case);

    let case = "item7 throttle refill by SIGHUP (host)";
    redteam(case, "tried");
    signal(&daemon, nix::sys::signal::SIGHUP);
    daemon.wait_for("generation 3 is enforcing");
    spent(connect(&worker, 3));
    redteam(case, "denied");
    outside(case);

    let case = "item7 throttle refill by a new agent (host)";
    redteam(case, "tried");
    let c = parent.child("c");
    let seen = daemon.wait_for("generation 4 is enforcing");
    assert!(seen.contains("the agent cgroups changed"), "{seen}");
    assert!(seen.contains("3 agents"), "{seen}");
    spent(connect(&a, 4));
    redteam(case, "denied");
    // Control: the new agent has a budget of its own.
    allowed(connect(&c, 4));
    assert_eq!(buckets().get(&bucket_key(&c)), Some(&2));
    outside(case);

    // The agent goes (its last process has exited; the cgroup may stay busy a moment): its
    // bucket goes with the next generation; the others stay as they were.
    let gone = bucket_key(&c);
    governance_tests::wait_until(
        "the gone agent's cgroup to be removable (EBUSY until its last task is reaped)",
        Duration::from_secs(10),
        || match std::fs::remove_dir(&c) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => false,
            Err(e) => panic!("rmdir {}: {e}", c.display()),
        },
    );
    daemon.wait_for("generation 5 is enforcing");
    // The daemon deletes it once the flip has settled (an RCU grace period after it, off the
    // daemon's loop): wait for that, not for a time.
    governance_tests::wait_until(
        "the gone agent's bucket to be deleted after generation 5 settled",
        Duration::from_secs(10),
        || !buckets().contains_key(&gone),
    );
    let left = buckets();
    assert_eq!(left.get(&bucket_key(&a)), Some(&0), "{left:?}");
    assert_eq!(left.len(), 1, "only agent a's bucket: {left:?}");
    spent(connect(&a, 5));
    // Control: the policy's other agent still has its whole budget, and the throttle still
    // applies to it.
    for _ in 0..3 {
        allowed(connect(&b, 5));
    }
    spent(connect(&b, 5));
    stop_daemon(daemon);
    assert!(!pins.exists(), "--detach-on-exit removes the pins");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn drops_and_decisions_are_counted() {
    require_root();
    let agent = TestCgroup::new("count");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let k = load(&format!(
        "name: count\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n",
        agent.rel.display()
    ));
    for _ in 0..3 {
        run_in(Some(&agent.path), "count", &Attempt::connect(addr));
    }
    assert!(k.enforcer.counter(Counter::Decisions).unwrap() >= 3);
    assert!(k.enforcer.counter(Counter::Denials).unwrap() >= 3);
    assert_eq!(k.enforcer.counter(Counter::EventsDropped).unwrap(), 0);
}

/// The control API's doors and its live stream. The socket is root's alone and TCP needs the
/// token. Three subscribers follow a flood of denials: one is killed mid-stream, one is stopped
/// (SIGSTOP: it reads nothing), one keeps up. The one that keeps up gets every event the kernel
/// reported (what the kernel's ring could not hold is counted there); the stopped one loses
/// records, which are counted and, once it reads again, reported to it.
/// `--health-listen`: liveness, readiness and the metrics without a token; nothing else.
#[test]
fn health_endpoints_need_no_token_and_serve_nothing_else() {
    use std::io::{Read as _, Write as _};
    require_root();
    let agent = TestCgroup::new("health");
    let dir = policy_dir(
        "health",
        &format!(
            "name: health\nagents: {{ cgroup: {} }}\n",
            agent.rel.display()
        ),
    );
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let pins = pin_dir("health");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--no-proxy",
            "--pins",
            pins.to_str().unwrap(),
            "--health-listen",
            &addr.to_string(),
        ],
        &dir,
    );
    let get = |method: &str, path: &str| {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    let healthz = get("GET", "/healthz");
    assert!(
        healthz.starts_with("HTTP/1.1 200") && healthz.ends_with("ok\n"),
        "{healthz}"
    );
    let readyz = get("GET", "/readyz");
    assert!(
        readyz.starts_with("HTTP/1.1 200") && readyz.contains("ready: generation 1 enforcing"),
        "{readyz}"
    );
    let metrics = get("GET", "/metrics");
    assert!(
        metrics.starts_with("HTTP/1.1 200") && metrics.contains("governance_policy_generation 1"),
        "{metrics}"
    );
    // The control API is not there: no status, no reload, no events.
    for (method, path) in [
        ("GET", "/v1/status"),
        ("POST", "/v1/policy/reload"),
        ("GET", "/v1/events"),
    ] {
        let r = get(method, path);
        assert!(r.starts_with("HTTP/1.1 404"), "{method} {path}: {r}");
    }
    // A test's daemon is not stopped when dropped: stop it, or it outlives the test.
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_api_authorization_and_slow_subscribers() {
    use std::os::unix::fs::PermissionsExt as _;
    require_root();
    let agent = TestCgroup::new("api");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let dir = policy_dir(
        "api",
        &format!(
            "name: api\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n",
            agent.rel.display()
        ),
    );
    let token_file =
        std::env::temp_dir().join(format!("governance-test-token-{}", std::process::id()));
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let api_addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let pins = pin_dir("api");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--pins",
            &pins_arg,
            "--api-listen",
            &api_addr,
            "--api-token-file",
            token_file.to_str().unwrap(),
        ],
        &dir,
    );
    // The socket: 0600 in a 0700 directory, root's; another user cannot even connect.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&daemon.socket()), 0o600);
    assert_eq!(mode(daemon.socket().parent().unwrap()), 0o700);
    let socket = daemon.socket();
    let as_nobody = std::thread::spawn(move || {
        // Only this thread becomes nobody: the raw system calls change the calling thread's
        // credentials (libc's setuid would change the whole test process's). Not reverted:
        // the thread ends here.
        // SAFETY: plain system calls with constant arguments.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
        }
        std::os::unix::net::UnixStream::connect(&socket)
            .map(drop)
            .map_err(|e| e.kind())
    });
    assert_eq!(
        as_nobody.join().unwrap(),
        Err(std::io::ErrorKind::PermissionDenied)
    );
    assert!(daemon.cli(&["agents"]).status.success());
    // TCP: no token, a wrong token → 401; the right one works.
    for token in [None, Some("wrong")] {
        let mut cmd = Command::new(governance_bin());
        cmd.args(["agents", "--api", &api_addr])
            .env_remove("GOVERNANCE_TOKEN");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("401"), "{err}");
    }
    let out = Command::new(governance_bin())
        .args(["agents", "--api", &api_addr, "--token", "s3cret-token"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&agent.rel.display().to_string()), "{text}");

    // Three subscribers: one with a queue that holds the whole flood, two with small ones.
    let follow = |queue: &str| {
        Command::new(governance_bin())
            .args(["events", "--follow", "-o", "json", "--kind", "connect"])
            .args(["--queue", queue, "--socket"])
            .arg(daemon.socket())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut steady = governance_tests::Reaped(follow("100000"));
    let mut killed = governance_tests::Reaped(follow("1000"));
    let mut stalled = governance_tests::Reaped(follow("1000"));
    // Markers: single denials to another port than the flood's, to know what has reached a
    // subscriber (its stream is in order).
    let (_m, marker_addr) = listener([127, 0, 0, 1]);
    let marker_dest = marker_addr.to_string();
    let marker = || {
        let (_, outcome) = run_in(Some(&agent.path), "marker", &Attempt::connect(marker_addr));
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "the marker is denied");
    };
    let is_marker =
        |v: &serde_json::Value, dest: &str| v["outcome"] == "block" && v["object"]["dest"] == dest;
    // A subscriber is subscribed once a marker reaches it (or the stream's own first record,
    // `stream.subscribed`, says so): read each stream up to there, sending markers until all
    // three are. The readers are kept, with whatever they buffered beyond it.
    let first_marker = |c: &mut std::process::Child, name: &'static str| {
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let dest = marker_dest.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    panic!("the {name} subscriber's stream ended before any marker");
                }
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                if is_marker(&v, &dest) || v["kind"] == "stream.subscribed" {
                    return out;
                }
            }
        })
    };
    let readers = [
        first_marker(&mut steady, "steady"),
        first_marker(&mut killed, "killed"),
        first_marker(&mut stalled, "stalled"),
    ];
    wait_until(
        "all three subscribers to be subscribed (a marker denial reaching each)",
        Duration::from_secs(30),
        || {
            marker();
            readers.iter().all(|r| r.is_finished())
        },
    );
    let [steady_out, killed_out, stalled_out] = readers.map(|r| r.join().unwrap());
    let pid = |c: &std::process::Child| nix::unistd::Pid::from_raw(c.id() as i32);
    nix::sys::signal::kill(pid(&stalled), nix::sys::signal::SIGSTOP).unwrap();
    // The steady one is read as it goes.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let markers_seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = {
        let (seen, markers_seen, dest) = (seen.clone(), markers_seen.clone(), marker_dest.clone());
        std::thread::spawn(move || {
            let mut lost_notices = 0u64;
            for line in steady_out.lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                if is_marker(&v, &dest) {
                    markers_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else if v["outcome"] == "block" {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if v["kind"] == "subscriber.lost" {
                    lost_notices += 1;
                }
            }
            lost_notices
        })
    };
    const N: u64 = 30_000;
    let flood = |n: u64| flood_connects(&agent.path, addr, n);
    flood(N / 2);
    let _ = killed.kill(); // mid-stream, by pid
    let _ = killed.wait();
    drop(killed_out);
    flood(N / 2);
    // Let the pipeline catch up, then stop the steady subscriber and count.
    let status = || -> serde_json::Value {
        let out = daemon.cli(&["status", "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    wait_until(
        "the daemon's pipeline to drain (pipeline_backlog 0)",
        Duration::from_secs(60),
        || status()["pipeline_backlog"] == 0,
    );
    let dropped = status()["kernel"]["events_dropped"].as_u64().unwrap();
    // It reads (and parses) as fast as it can: wait until it has everything it was sent (the
    // count is asserted below, with what it did get).
    let blocks = || seen.load(std::sync::atomic::Ordering::Relaxed);
    poll_until(Duration::from_secs(60), || blocks() + dropped >= N);
    // Nothing more arrives (no record twice): a marker sent now follows every flood record
    // on the stream, so once the steady subscriber has it, no flood record is on its way.
    let markers_before = markers_seen.load(std::sync::atomic::Ordering::Relaxed);
    marker();
    wait_until(
        "the steady subscriber to receive the marker sent after the flood",
        Duration::from_secs(30),
        || markers_seen.load(std::sync::atomic::Ordering::Relaxed) > markers_before,
    );
    let _ = steady.kill();
    let _ = steady.wait();
    let lost_notices = counter.join().unwrap();
    let blocks = blocks();
    assert_eq!(lost_notices, 0, "the steady subscriber lost nothing");
    assert_eq!(
        blocks + dropped,
        N,
        "every denial is on the stream or counted as dropped by the kernel ({blocks} + {dropped})"
    );
    // The stalled one: resumed, it reads what its queue held, then hears what it lost.
    nix::sys::signal::kill(pid(&stalled), nix::sys::signal::SIGCONT).unwrap();
    let reader = std::thread::spawn(move || {
        let mut notice = None;
        let mut blocks = 0u64;
        for line in stalled_out.lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["kind"] == "subscriber.lost" {
                notice = Some(v["counts"]["lost_total"].as_u64().unwrap());
                break;
            }
            if v["outcome"] == "block" {
                blocks += 1;
            }
        }
        (notice, blocks)
    });
    // A record after the loss carries the notice: one more each round until it has come
    // (the subscriber first reads what its queue held).
    wait_until(
        "the stalled subscriber, resumed, to be told what it lost",
        Duration::from_secs(30),
        || {
            flood(1);
            reader.is_finished()
        },
    );
    let _ = stalled.kill();
    let _ = stalled.wait();
    let (notice, got) = reader.join().unwrap();
    let lost = notice.expect("the stalled subscriber was told what it lost");
    assert!(lost > 0 && got < N, "lost {lost}, got {got}");
    stop_daemon(daemon);
    let _ = std::fs::remove_file(&token_file);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Red team round 33: a connection to the proxy kept the agent it was made by. After a reload
/// that changed which agent its cgroup is (a new label, a pod's labels, an enclosing cgroup
/// made the agent), its later requests were still decided by the old agent's rules (200 for a
/// path the new agent may not reach), for as long as the client kept it busy. Now a
/// connection's agent is asked again when the generation changes: changed, its request is
/// refused (`builtin:identity`, `Connection: close`); a new connection is decided as the new
/// agent. Here a keep-alive client in `a` is allowed `/a/1`, then a policy on the enclosing
/// cgroup makes that the agent (which allows no HTTP).
#[test]
fn a_proxy_connection_whose_agent_changed_is_refused() {
    use std::io::{BufRead as _, Write as _};
    require_root();
    let parent = TestCgroup::new("idchange");
    parent.child("a");
    let inner = parent.rel.join("a");
    let helper = env!("CARGO_BIN_EXE_redteam-helper");
    let port = listener([127, 0, 0, 7]).1.port();
    let addr = format!("127.0.0.7:{port}");
    let _upstream = governance_tests::Reaped(
        Command::new(helper)
            .args(["http-upstream", &addr, "idchange"])
            .spawn()
            .unwrap(),
    );
    wait_until("the upstream to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let via = "{ id: via, network: { cidr: 127.0.0.7/32, via_proxy: true }, verdict: allow, reason: through the engine }";
    let dir = policy_dir(
        "idchange",
        &format!(
            "name: inner\nagents: {{ cgroup: {cg} }}\ndefaults: {{ http: block }}\nrules:\n\
             \x20 - {via}\n\
             \x20 - {{ id: a, http: {{ host: api.id.example, path: '/a/**' }}, verdict: allow, reason: its own }}\n",
            cg = inner.display()
        ),
    );
    let pins = pin_dir("idchange");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--pins",
            pins.to_str().unwrap(),
            "--proxy-host",
            "api.id.example=127.0.0.7",
        ],
        &dir,
    );
    let script = format!(
        "import http.client, sys\n\
         def get(c, p):\n\
         \x20   c.request('GET', p, headers={{'Host': 'api.id.example:{port}'}})\n\
         \x20   r = c.getresponse(); r.read(); return r.status\n\
         kept = http.client.HTTPConnection('127.0.0.7', {port}, timeout=30)\n\
         print(get(kept, '/a/1'), flush=True)\n\
         sys.stdin.readline()\n\
         try:\n\
         \x20   print(get(kept, '/a/2'), flush=True)\n\
         except Exception as e:\n\
         \x20   print('closed', e, flush=True)\n\
         print(get(http.client.HTTPConnection('127.0.0.7', {port}, timeout=30), '/a/3'), flush=True)\n"
    );
    let agent_path = parent.path.join("a");
    let mut client = governance_tests::Reaped(
        governance_tests::command_in(Some(&agent_path), "python3", &["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next(), "200", "the agent's own path, before the change");
    // The enclosing cgroup becomes the agent: `a` is no agent root any more.
    std::fs::write(
        dir.join("outer.yaml"),
        format!(
            "name: outer\nagents: {{ cgroup: {cg} }}\ndefaults: {{ http: block }}\nrules:\n\
             \x20 - {via}\n",
            cg = parent.rel.display()
        ),
    )
    .unwrap();
    daemon.wait_for("generation 2 is enforcing");
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(
        next(),
        "403",
        "the kept connection's next request, after its agent changed"
    );
    assert_eq!(next(), "403", "a new connection, decided as the new agent");
    let _ = client.wait();
    let refused = wait_for_value(
        "the refusal's record in the audit log",
        Duration::from_secs(30),
        || {
            audit_records(&daemon.audit())
                .into_iter()
                .find(|r| r["rule"] == "builtin:identity")
        },
    );
    assert_eq!(refused["outcome"], "block", "{refused}");
    assert!(
        audit_records(&daemon.audit())
            .iter()
            .all(|r| r["rule"] != "inner/a" || r["generation"] == 1),
        "no request decided by the old agent's rule after the change"
    );
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The HTTP policy engine through the real redirect: agent processes in a cgroup run curl
/// against a local upstream; the kernel sends their connects to the daemon's proxy, which
/// decides each verdict as HTTP. The same request outside the agent goes direct, undecided.
/// Hostile requests from the agent get clean 4xx answers while a well-behaved one is served.
#[test]
fn http_verdicts_through_the_kernel_redirect() {
    use std::io::Write as _;
    require_root();
    let agent = TestCgroup::new("http");
    let outsider = TestCgroup::new("http-outsider");
    let helper = env!("CARGO_BIN_EXE_redteam-helper");
    // The payments API, and the sandbox it may be routed to (ports picked free).
    let free = |ip: [u8; 4]| listener(ip).1.port();
    let (api_port, sandbox_port) = (free([127, 0, 0, 5]), free([127, 0, 0, 6]));
    let mut upstreams = Vec::new();
    for (addr, name) in [
        (format!("127.0.0.5:{api_port}"), "payments"),
        (format!("127.0.0.6:{sandbox_port}"), "sandbox"),
    ] {
        let mut upstream = governance_tests::Reaped(
            Command::new(helper)
                .args(["http-upstream", &addr, name])
                .spawn()
                .unwrap(),
        );
        // Up once it accepts a connection (from here, outside the agent: not redirected).
        wait_until(
            &format!("the {name} upstream to listen on {addr}"),
            Duration::from_secs(10),
            || {
                let up = std::net::TcpStream::connect(&addr).is_ok();
                assert!(
                    matches!(upstream.try_wait(), Ok(None)),
                    "the {name} upstream exited"
                );
                up
            },
        );
        upstreams.push(upstream);
    }
    let dir = policy_dir(
        "http",
        &format!(
            "name: http\nagents: {{ cgroup: {cg} }}\ndefaults: {{ http: block }}\nrules:\n\
             \x20 - {{ id: api, network: {{ cidr: 127.0.0.5/32, via_proxy: true }}, verdict: allow, reason: through the engine }}\n\
             \x20 - {{ id: small, http: {{ host: api.payments.example, method: POST, path: /v1/refunds, body: ['$.amount <= 100'] }}, verdict: allow, reason: routine }}\n\
             \x20 - {{ id: medium, http: {{ host: api.payments.example, method: POST, path: /v1/refunds, body: ['$.amount > 100', '$.amount <= 1000'] }}, verdict: escalate, escalate: {{ timeout: 4s, on_timeout: block }}, reason: a human decides }}\n\
             \x20 - {{ id: large, http: {{ host: api.payments.example, method: POST, path: /v1/refunds, body: ['$.amount > 1000'] }}, verdict: block, reason: never }}\n\
             \x20 - {{ id: search, http: {{ host: api.payments.example, method: POST, path: /search }}, verdict: throttle, throttle: {{ rate: 2, per: 1h }}, reason: metered }}\n\
             \x20 - {{ id: fetch, http: {{ host: api.payments.example, path: '/fetch/**' }}, verdict: sandbox, sandbox: {{ upstream: 'http://127.0.0.6:{sandbox_port}' }}, reason: untrusted fetches }}\n\
             \x20 - {{ id: shell, http: {{ host: api.payments.example, path: /mcp, mcp: {{ tool: run_shell }} }}, verdict: block, reason: no shell tool }}\n\
             \x20 - {{ id: tools, http: {{ host: api.payments.example, path: /mcp, mcp: {{ tool: '*' }} }}, verdict: allow, reason: other tools }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("http");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--pins",
            &pins_arg,
            "--proxy-host",
            "api.payments.example=127.0.0.5",
        ],
        &dir,
    );
    let url = |path: &str| format!("http://api.payments.example:{api_port}{path}");
    let resolve = format!("api.payments.example:{api_port}:127.0.0.5");
    // curl in the agent (or outside): (status, headers and body).
    let curl = |cgroup: Option<&Path>, args: &[&str]| -> (u16, String) {
        let mut all = vec!["-sS", "-i", "--max-time", "30", "--resolve", &resolve];
        all.extend_from_slice(args);
        let out = governance_tests::command_in(cgroup, "curl", &all)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    };
    let post = |amount: u32| {
        vec![
            "-H".to_owned(),
            "content-type: application/json".to_owned(),
            "-d".to_owned(),
            format!("{{\"amount\": {amount}}}"),
            url("/v1/refunds"),
        ]
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let ag = Some(agent.path.as_path());

    // allow: forwarded; the upstream answers.
    let (status, body) = curl(ag, &strs(&post(50)));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"upstream\":\"payments\""), "{body}");
    // block: 403 with the rule and a decision id.
    let (status, body) = curl(ag, &strs(&post(5000)));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("x-governance-rule: http/large"), "{body}");
    assert!(body.contains("\"decision_id\""), "{body}");
    // escalate: held, approved from the CLI, then forwarded.
    let held = {
        let args = post(500);
        let mut all = vec!["-sS", "-i", "--max-time", "30", "--resolve", &resolve];
        all.extend(args.iter().map(String::as_str));
        governance_tests::command_in(ag, "curl", &all)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let id = wait_for_value(
        "the held $500 refund to be pending approval",
        Duration::from_secs(10),
        || {
            let out = daemon.cli(&["approvals", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let id = v["pending"][0]["id"].as_str()?.to_owned();
            assert_eq!(v["pending"][0]["object"]["detail"]["body $.amount"], "500");
            Some(id)
        },
    );
    assert!(
        daemon
            .cli(&["approve", &id, "--as", "tester"])
            .status
            .success()
    );
    let out = held.wait_with_output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "approved and forwarded: {body}"
    );
    // escalate, nobody answers: the timeout denies.
    let (status, body) = curl(ag, &strs(&post(600)));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("approval timed out"), "{body}");
    // throttle: 2 per hour, the third gets 429 with Retry-After.
    let search = ["-X", "POST", "-d", "q=x"];
    for _ in 0..2 {
        let mut a = search.to_vec();
        let u = url("/search");
        a.push(&u);
        assert_eq!(curl(ag, &a).0, 200);
    }
    let u = url("/search");
    let mut a = search.to_vec();
    a.push(&u);
    let (status, body) = curl(ag, &a);
    assert_eq!(status, 429, "{body}");
    assert!(body.to_ascii_lowercase().contains("retry-after:"), "{body}");
    // sandbox: routed to the sandbox upstream.
    let (status, body) = curl(ag, &[&url("/fetch/page")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"upstream\":\"sandbox\""), "{body}");
    assert!(
        body.contains("x-governance-sandboxed: http/fetch"),
        "{body}"
    );
    // MCP: a blocked tool gets a JSON-RPC error with the call's id; another tool goes through.
    let call = |tool: &str| {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{{\"name\":\"{tool}\",\"arguments\":{{}}}}}}"
        )
    };
    let mcp = url("/mcp");
    let (status, body) = curl(
        ag,
        &[
            "-H",
            "content-type: application/json",
            "-d",
            &call("run_shell"),
            &mcp,
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("-32001") && body.contains("\"id\":7"),
        "{body}"
    );
    let (_, body) = curl(
        ag,
        &[
            "-H",
            "content-type: application/json",
            "-d",
            &call("web_search"),
            &mcp,
        ],
    );
    assert!(body.contains("\"upstream\":\"payments\""), "{body}");

    // Hostile: a 64 KiB header, and JSON nested 100,000 deep to the MCP endpoint.
    let big = format!("x-big: {}", "a".repeat(64 << 10));
    let (status, _) = curl(ag, &["-H", &big, &url("/v1/refunds")]);
    assert_eq!(status, 431);
    let deep = std::env::temp_dir().join(format!("governance-deep-{}", std::process::id()));
    std::fs::File::create(&deep)
        .unwrap()
        .write_all(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).as_bytes())
        .unwrap();
    let deep_arg = format!("@{}", deep.display());
    let (status, _) = curl(
        ag,
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &deep_arg,
            &mcp,
        ],
    );
    assert_eq!(status, 400);
    let _ = std::fs::remove_file(&deep);
    // ... and the agent is still served.
    assert_eq!(curl(ag, &strs(&post(20))).0, 200);

    // Outside the agent: the same $5,000 request goes direct and is not decided.
    let decisions = || {
        let out = daemon.cli(&["events", "--since", "1h", "--kind", "http", "-o", "json"]);
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let before = decisions();
    assert!(
        before >= 10,
        "the agent's HTTP decisions are in the log: {before}"
    );
    let (status, body) = curl(Some(outsider.path.as_path()), &strs(&post(5000)));
    assert_eq!(status, 200, "control: direct to the upstream: {body}");
    // No decision for it. Absence, made sure: a request from the agent after it is decided and
    // logged after anything the outsider's could have caused, so once its record is in the log
    // there is nothing still on its way.
    assert_eq!(curl(ag, &strs(&post(30))).0, 200);
    wait_until(
        "the agent's request after the control to be in the audit log",
        Duration::from_secs(10),
        || decisions() > before,
    );
    assert_eq!(
        decisions(),
        before + 1,
        "no decision for a process outside the agent"
    );
    // The HTTP records name the process (pid from the kernel, the rest from procfs while it
    // was connected) and its cgroup.
    let out = daemon.cli(&["events", "--since", "1h", "--kind", "http", "-o", "json"]);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no http records: {}", String::from_utf8_lossy(&out.stderr))),
    )
    .unwrap();
    assert_eq!(first["process"]["comm"], "curl", "{first}");
    assert_eq!(first["process"]["uid"], 0, "{first}");
    assert_eq!(first["process"]["enrichment"], "procfs", "{first}");
    assert!(first["process"]["ppid"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(
        first["cgroup"]["path"],
        agent.rel.to_str().unwrap(),
        "{first}"
    );

    stop_daemon(daemon);
    drop(upstreams); // ours: killed by pid and reaped
    let _ = std::fs::remove_dir_all(&dir);
}

/// Agents never bind the daemon's ports (the policy proxy's, the TCP control API's), on any
/// address: while the daemon is down (a restart, an upgrade), a socket of the agent's on
/// 127.0.0.1 at the proxy's port would take every connection the kernel sends to the proxy,
/// other agents' requests and their credentials among them, and keep the daemon from
/// listening again. Controls: another port in the agent, the same ports outside it.
#[test]
fn agents_cannot_bind_the_daemon_s_ports() {
    use std::net::{Ipv6Addr, SocketAddrV6};
    require_root();
    let agent = TestCgroup::new("bind");
    let dir = policy_dir(
        "bind",
        &format!(
            "name: bind\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: lo, network: {{ cidr: 127.0.0.0/8 }}, verdict: allow, reason: loopback }}\n",
            cg = agent.rel.display()
        ),
    );
    let api_port = listener([127, 0, 0, 1]).1.port();
    let api_arg = format!("127.0.0.1:{api_port}");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let pins = pin_dir("bind");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--pins",
            &pins_arg,
            "--api-listen",
            &api_arg,
            "--api-token-file",
            token_file.to_str().unwrap(),
        ],
        &dir,
    );
    let proxy = proxy_port(&seen);
    let ag = Some(agent.path.as_path());
    let bind = |cg: Option<&Path>, addr: SocketAddr| run_in(cg, "binder", &Attempt::Bind { addr });
    let v4 = |ip: [u8; 4], port: u16| SocketAddr::from((Ipv4Addr::from(ip), port));
    let v6 = |ip: Ipv6Addr, port: u16| SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0));
    for port in [proxy, api_port] {
        for addr in [
            v4([127, 0, 0, 2], port),
            v4([0, 0, 0, 0], port),
            v6(Ipv6Addr::UNSPECIFIED, port),
            v6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped(), port),
        ] {
            let case = format!("bind {addr} (a daemon port) in an agent");
            redteam(&case, "tried");
            let (pid, outcome) = bind(ag, addr);
            assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
            let v = wait_for_value(
                &format!("the refusal of {case} in the audit log"),
                Duration::from_secs(10),
                || {
                    audit_records(&daemon.audit())
                        .into_iter()
                        .find(|r| r["process"]["pid"] == pid && r["kind"] == "guard")
                },
            );
            assert_eq!(v["denied"], true, "{case}: {v}");
            assert_eq!(v["rule"], "builtin:guard", "{case}: {v}");
            assert_eq!(
                v["object"]["detail"]["arg"],
                port.to_string(),
                "{case}: {v}"
            );
            assert!(
                v["object"]["detail"]["guard"]
                    .as_str()
                    .is_some_and(|g| g.contains("port")),
                "{case}: {v}"
            );
            redteam(&case, "denied");
        }
        // Controls: the same bind outside every agent (another address than the daemon's).
        assert_eq!(bind(None, v4([127, 0, 0, 2], port)).1, Outcome::Exited(0));
    }
    // Controls: other ports in the agent, an explicit one and one the kernel picks.
    let free = listener([127, 0, 0, 2]).1.port();
    assert_eq!(bind(ag, v4([127, 0, 0, 2], free)).1, Outcome::Exited(0));
    assert_eq!(bind(ag, v4([127, 0, 0, 2], 0)).1, Outcome::Exited(0));
    // The daemon stops (its programs stay pinned and enforcing, as when it is restarted or
    // crashes; the pins go when `pins` is dropped): the proxy's own address and port are
    // free, and still refused to agents; outside agents the bind works.
    stop_daemon(daemon);
    let case = "bind the proxy's address and port while the daemon is down";
    redteam(case, "tried");
    assert_eq!(
        bind(ag, v4([127, 0, 0, 1], proxy)).1,
        Outcome::Errno(libc::EPERM),
        "{case}"
    );
    redteam(case, "denied");
    assert_eq!(bind(None, v4([127, 0, 0, 1], proxy)).1, Outcome::Exited(0));
    redteam(case, "control");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The kernel files an agent's connection to the proxy under its source address *and* port:
/// two agents' connections from the same port on different loopback addresses, both
/// established before the proxy accepts either (the daemon stopped), are each judged by their
/// own agent's rules. Keyed by the port alone, the second record was filed over the first, and
/// the strict agent's request was judged by the loose agent's policy.
#[test]
fn proxy_connections_are_told_apart_by_source_address() {
    use std::io::{Read as _, Write as _};
    require_root();
    let strict = TestCgroup::new("conn-strict");
    let loose = TestCgroup::new("conn-loose");
    let helper = env!("CARGO_BIN_EXE_redteam-helper");
    let api_port = listener([127, 0, 0, 5]).1.port();
    let api = format!("127.0.0.5:{api_port}");
    let mut upstream = Reaped(
        Command::new(helper)
            .args(["http-upstream", &api, "payments"])
            .spawn()
            .unwrap(),
    );
    wait_until("the upstream to listen", Duration::from_secs(10), || {
        assert!(
            matches!(upstream.try_wait(), Ok(None)),
            "the upstream exited"
        );
        std::net::TcpStream::connect(&api).is_ok()
    });
    let policy = |name: &str, cg: &Path, paths: &str| {
        format!(
            "name: {name}\nagents: {{ cgroup: {cg} }}\ndefaults: {{ http: block }}\nrules:\n\
             \x20 - {{ id: api, network: {{ cidr: 127.0.0.5/32, via_proxy: true }}, verdict: allow, reason: through the engine }}\n\
             \x20 - {{ id: read, http: {{ host: api.payments.example, method: GET, path: '{paths}' }}, verdict: allow, reason: reads }}\n",
            cg = cg.display()
        )
    };
    let dir = policy_dir("conn-strict", &policy("strict", &strict.rel, "/public"));
    std::fs::write(dir.join("loose.yaml"), policy("loose", &loose.rel, "/**")).unwrap();
    let pins = pin_dir("conn");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--pins",
            &pins_arg,
            "--proxy-host",
            "api.payments.example=127.0.0.5",
        ],
        &dir,
    );
    // A source port free on both addresses.
    let port = loop {
        let p = listener([127, 0, 0, 1]).1.port();
        if TcpListener::bind(("127.0.0.2", p)).is_ok() {
            break p;
        }
    };
    // A client that binds SRC:PORT, connects (redirected to the proxy), says `ready`, and on a
    // line from us sends `GET /secret` and prints the answer.
    let client = |cg: &Path, src: &str| {
        let script = format!(
            "import socket,sys\n\
             s=socket.socket()\n\
             s.bind(('{src}',{port}))\n\
             s.settimeout(30)\n\
             s.connect(('127.0.0.5',{api_port}))\n\
             print('ready',flush=True)\n\
             sys.stdin.readline()\n\
             s.sendall(b'GET /secret HTTP/1.1\\r\\nHost: api.payments.example:{api_port}\\r\\nConnection: close\\r\\n\\r\\n')\n\
             d=b''\n\
             while True:\n\
             \x20   try: c=s.recv(4096)\n\
             \x20   except OSError: break\n\
             \x20   if not c: break\n\
             \x20   d+=c\n\
             print(d.decode(errors='replace') or 'closed',flush=True)\n"
        );
        governance_tests::spawn_ready(
            &mut governance_tests::command_in(Some(cg), "python3", &["-c", &script]),
            &format!("the client on {src}:{port}"),
        )
    };
    // Both handshakes complete (the kernel's, into the listener's backlog) while the proxy
    // cannot accept: the strict agent's first, then the loose agent's from the same port.
    signal(&daemon, nix::sys::signal::Signal::SIGSTOP);
    struct Resume<'a>(&'a Daemon);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            signal(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    let resume = Resume(&daemon);
    let mut a = client(&strict.path, "127.0.0.1");
    let mut b = client(&loose.path, "127.0.0.2");
    drop(resume);
    let answer = |c: &mut Reaped| {
        c.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let mut out = String::new();
        c.stdout.as_mut().unwrap().read_to_string(&mut out).unwrap();
        out.trim().to_owned()
    };
    let (got_a, got_b) = (answer(&mut a), answer(&mut b));
    assert!(
        got_a.starts_with("HTTP/1.1 403") && got_a.contains("x-governance-rule: default"),
        "the strict agent's request is judged by its own rules (not as the loose agent's, nor as no agent's): {got_a}"
    );
    // The control: the loose agent's, from the same port, by its own.
    assert!(
        got_b.starts_with("HTTP/1.1 200"),
        "the loose agent's request is judged by its own rules: {got_b}"
    );
    let record = |agent: &TestCgroup| {
        let cg = agent.rel.to_str().unwrap();
        wait_for_value(
            &format!("{cg}'s decision on /secret in the audit log"),
            Duration::from_secs(10),
            || {
                audit_records(&daemon.audit()).into_iter().find(|r| {
                    r["cgroup"]["path"] == cg
                        && r["object"]["url"]
                            .as_str()
                            .is_some_and(|u| u.ends_with("/secret"))
                })
            },
        )
    };
    let (ra, rb) = (record(&strict), record(&loose));
    assert_eq!(ra["outcome"], "block", "{ra:#}");
    assert_ne!(ra["rule"], "loose/read", "{ra:#}");
    assert_eq!(rb["outcome"], "allow", "{rb:#}");
    assert_eq!(rb["rule"], "loose/read", "{rb:#}");
    stop_daemon(daemon);
    drop(upstream); // ours: killed by pid and reaped
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reliability fault 7: the proxy is killed (with the daemon, by SIGKILL). The programs stay
/// attached and keep sending `via_proxy` connects to the proxy's address, where nothing
/// listens: the agent's connects fail. There is no fallback to direct egress.
#[test]
fn a_killed_proxy_means_refused_connects_not_direct_egress() {
    require_root();
    let agent = TestCgroup::new("proxy-killed");
    let (direct, direct_addr) = listener([127, 0, 0, 7]);
    direct.set_nonblocking(true).unwrap();
    let dir = policy_dir(
        "proxy-killed",
        &format!(
            "name: pk\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: web, network: {{ cidr: 127.0.0.7/32, via_proxy: true }}, verdict: allow, reason: through the engine }}\n",
            agent.rel.display()
        ),
    );
    let pins = pin_dir("proxy-killed");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (mut daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--quiet",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    daemon.child.kill().unwrap(); // SIGKILL, by pid
    let _ = daemon.child.wait();
    let case = "fault 7 proxy killed (host)";
    redteam(case, "tried");
    let (_, outcome) = run_in(
        Some(&agent.path),
        "pk-agent",
        &Attempt::connect(direct_addr),
    );
    assert_eq!(
        outcome,
        Outcome::Errno(libc::EPERM),
        "refused (no listener of the daemon's), not direct"
    );
    assert!(
        direct.accept().is_err(),
        "nothing reached the destination directly"
    );
    redteam(case, "denied");
    let (_, outcome) = run_in(None, "pk-outside", &Attempt::connect(direct_addr));
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "control: outside the agent, direct"
    );
    redteam(case, "control");
    unload(&pins);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Red team round 28: an agent that holds the daemon's descriptors with connections to the proxy
/// (a limit lowered with `prlimit` stands for the 524,288 a real daemon has) no longer keeps a
/// new agent's cgroup from being found: the proxy closes what it accepts on the daemon's last
/// quarter of descriptors, and the new agent is governed. (Before, at EMFILE the new cgroup
/// could not be listed and connected directly.) Control: a cgroup the policy does not select
/// connects directly.
#[test]
fn an_agent_holding_the_daemon_s_descriptors_leaves_new_agents_governed() {
    require_root();
    let parent = TestCgroup::new("fds");
    let holder = parent.child("agent-holder");
    let (_blocked, blocked_addr) = listener([127, 0, 0, 12]);
    let dir = policy_dir(
        "fds",
        &format!(
            "name: fds\nagents: {{ cgroup: '{}/agent-*' }}\nrules:\n  - {{ id: lo, network: {{ cidr: 127.0.0.12/32 }}, verdict: block, reason: test }}\n",
            parent.rel.display()
        ),
    );
    let pins = pin_dir("fds");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    let port = proxy_port(&seen);
    let pid = daemon.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 200;
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit");
    let case = "R28 an agent holds the daemon's descriptors, then a new agent appears";
    redteam(case, "tried");
    // HTTP/2 connections with no stream (the preface and empty settings): the proxy keeps them
    // for its idle timeout (90 s), longer than the wait below.
    let hold = r#"
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        held.append(s)
    except OSError:
        pass
print("held", len(held), flush=True)
sys.stdin.read()
"#;
    let mut holding = Reaped(
        governance_tests::command_in(
            Some(&holder),
            "python3",
            &["-c", hold, &port.to_string(), &(2 * limit).to_string()],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(holding.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("held"), "{line}");
    let in_use = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        in_use < limit,
        "the daemon keeps descriptors of its own: {in_use} of {limit} in use"
    );
    let new = parent.child("agent-new");
    let connect = Attempt::connect(blocked_addr);
    wait_until(
        "the new agent to be governed while the daemon's descriptors are held",
        Duration::from_secs(60),
        || run_in(Some(&new), "fds-new", &connect).1 == Outcome::Errno(libc::EPERM),
    );
    redteam(case, "denied");
    let other = parent.child("other");
    assert_eq!(
        run_in(Some(&other), "fds-other", &connect).1,
        Outcome::Exited(0),
        "{case}: control"
    );
    redteam(case, "control");
    drop(holding);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12, class 5, where BPF LSM is not there to refuse the connect (this host): a process
/// inside an agent reaches the control socket, and the API refuses every request it makes
/// (403, recorded as a decision naming the agent), whatever it asks, including through a child
/// cgroup of its own; the same commands outside the agent work. Its TCP connects to the API are
/// refused in the kernel (the cgroup connect programs work here).
#[test]
fn control_api_refuses_callers_inside_an_agent() {
    use std::io::BufRead as _;
    require_root();
    let agent = TestCgroup::new("ctl-agent");
    let child = agent.child("worker");
    let dir = policy_dir(
        "ctl-agent",
        &format!("name: ctl\nagents: {{ cgroup: {} }}\n", agent.rel.display()),
    );
    let token_file =
        std::env::temp_dir().join(format!("governance-test-ctl-token-{}", std::process::id()));
    std::fs::write(&token_file, "ctl-token\n").unwrap();
    let api_addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let api_arg = api_addr.to_string();
    let pins = pin_dir("ctl-agent");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--pins",
            &pins_arg,
            "--api-listen",
            &api_arg,
            "--api-token-file",
            token_file.to_str().unwrap(),
        ],
        &dir,
    );
    // The refusals are recorded: follow the agent's decisions from outside.
    let mut follower = governance_tests::Reaped(
        Command::new(governance_bin())
            .args([
                "events", "--follow", "-o", "json", "--type", "decision", "--socket",
            ])
            .arg(daemon.socket())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    let next = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} on the event stream within 30 s"));
            if pred(&v) {
                return v;
            }
        }
    };
    next("stream.subscribed", &|v| v["kind"] == "stream.subscribed");
    let bin = governance_bin();
    let cli_in = |cgroup: Option<&Path>, args: &[&str]| {
        let mut cmd = governance_tests::command_in(cgroup, bin.to_str().unwrap(), args);
        cmd.arg("--socket").arg(daemon.socket());
        cmd.output().unwrap()
    };
    let agent_name = agent.rel.display().to_string();
    for (case, args, cgroup) in [
        (
            "approvals from the agent (host)",
            vec!["approvals"],
            &agent.path,
        ),
        (
            "approve from the agent (host)",
            vec!["approve", "a-none"],
            &agent.path,
        ),
        (
            "deny from the agent (host)",
            vec!["deny", "a-none", "--reason", "x"],
            &agent.path,
        ),
        (
            "policy reload from the agent (host)",
            vec!["policy", "reload"],
            &agent.path,
        ),
        ("status from the agent (host)", vec!["status"], &agent.path),
        (
            "approvals from the agent's child cgroup (host)",
            vec!["approvals"],
            &child,
        ),
    ] {
        redteam(case, "tried");
        let out = cli_in(Some(cgroup), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: must fail");
        assert!(
            err.contains("403") && err.contains("refused to processes inside an agent"),
            "{case}: {err}"
        );
        let v = next(case, &|v| v["kind"] == "api");
        assert_eq!(v["denied"], true, "{v}");
        assert_eq!(v["source"], "api", "{v}");
        assert_eq!(v["rule"], "builtin:control-api", "{v}");
        assert_eq!(v["agent"]["name"], agent_name.as_str(), "{v}");
        assert_eq!(v["agent"]["cgroup_id"], agent.id(), "{v}");
        redteam(case, "denied");
        // The control: the same command outside every agent is not refused (an unknown
        // approval id is the daemon's 409, not a 403).
        let out = cli_in(None, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("403"), "{case}: control: {err}");
        match args[0] {
            "approve" | "deny" => {}
            // Exits 3 for a degraded daemon, with the status printed.
            "status" => assert!(
                String::from_utf8_lossy(&out.stdout).contains("generation"),
                "{case}: control: {err}"
            ),
            _ => assert!(out.status.success(), "{case}: control: {err}"),
        }
        redteam(case, "control");
    }
    // Red team round 31: a connection opened outside every agent by a process that then
    // joins one (`echo $$ > cgroup.procs; exec agent`) is asked about again at every request.
    let case = "a control connection carried into an agent (host)";
    redteam(case, "tried");
    let script = r#"
import http.client, os, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
c = Unix("localhost")
def status():
    c.request("GET", "/v1/approvals")
    r = c.getresponse()
    r.read()
    return r.status
before = status()
with open(sys.argv[2], "w") as f:
    f.write(str(os.getpid()))
print(before, status(), flush=True)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(daemon.socket())
        .arg(agent.path.join("cgroup.procs"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "200 403",
        "{case}: the first request outside (the control), the second inside: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = next(case, &|v| v["kind"] == "api");
    assert_eq!(v["denied"], true, "{v}");
    assert_eq!(v["agent"]["name"], agent_name.as_str(), "{v}");
    redteam(case, "denied");
    redteam(case, "control");
    // TCP: an agent's connect to the API is refused in the kernel, with the token or not.
    let case = "TCP control API from the agent (host)";
    redteam(case, "tried");
    let (pid, outcome) = run_in(Some(&agent.path), "ctl-agent", &Attempt::connect(api_addr));
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let v = next(case, &|v| {
        v["kind"] == "connect" && v["process"]["pid"] == pid
    });
    assert_eq!(v["rule"], "builtin:control-api", "{v}");
    assert_eq!(v["denied"], true, "{v}");
    let out = governance_tests::command_in(Some(&agent.path), bin.to_str().unwrap(), &["agents"])
        .args(["--api", &api_arg, "--token", "ctl-token"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{case}: the CLI over TCP");
    redteam(case, "denied");
    let (_, outcome) = run_in(None, "ctl-outside", &Attempt::connect(api_addr));
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    let out = Command::new(&bin)
        .args(["agents", "--api", &api_arg, "--token", "ctl-token"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{case}: control: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    redteam(case, "control");
    stop_daemon(daemon);
    let _ = std::fs::remove_file(&token_file);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 14 part 6, rolling upgrades with no gap: a daemon of another build starts over the
/// pins of a running build's programs, loads and attaches its own beside them, installs its
/// policy, and only then detaches the previous build's. Throughout (the old daemon enforcing,
/// stopped, the new one starting and handing over), an agent process connects in a loop to a
/// destination the policy blocks: no attempt is ever let through. Control: the same connect
/// from outside the agent goes through, before and after.
///
/// The two builds are one binary with `GOVERNANCE_TEST_BUILD_SALT` set differently: each
/// daemon then presents its own build id, so the second refuses to adopt the first's pins and
/// takes the handover path, with real programs and maps of its own (the handover reads nothing
/// of the previous build's maps but its build id, so what differs between real builds, their
/// map layouts, plays no part in it).
#[test]
fn a_new_build_takes_over_with_no_gap() {
    require_root();
    let agent = TestCgroup::new("upgrade");
    let outsider = TestCgroup::new("upgrade-outsider");
    let (l, addr) = listener([127, 0, 0, 7]);
    l.set_nonblocking(true).unwrap();
    let dir = policy_dir(
        "upgrade",
        &format!(
            "name: upgrade\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: no, network: {{ cidr: 127.0.0.7/32 }}, verdict: block, reason: test }}\n",
            agent.rel.display()
        ),
    );
    let pins = pin_dir("upgrade");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let args = [
        "--allow-degraded",
        "--no-create-cgroups",
        "--quiet",
        "--pins",
        &pins_arg,
    ];
    let start = |salt: &str| start_daemon_of_build(&args, &dir, salt);
    let (old, _) = start("old build");
    assert_eq!(
        run_in(Some(&outsider.path), "control", &Attempt::connect(addr)).1,
        Outcome::Exited(0),
        "control before"
    );
    while l.accept().is_ok() {}
    // The agent's loop: attempts so far, and how many got through.
    let looper = AttemptLoop::start(&agent.path, "upgrade", vec![Attempt::connect(addr)]);
    redteam("14.6 denied connects across a rolling upgrade", "tried");
    looper.wait_for(
        "attempts under the old build",
        0,
        10,
        Duration::from_secs(10),
    );
    // The old daemon stops (its programs stay pinned, enforcing), the new one hands over.
    stop_daemon(old);
    let (new, seen) = start("new build");
    assert!(
        seen.contains("another build's") && seen.contains("handed over"),
        "the new build handed over:\n{seen}"
    );
    assert!(
        !pins.join(kernel::HANDOVER_DIR).exists(),
        "nothing left staged"
    );
    let at_handover = looper.tried();
    looper.wait_for(
        "attempts under the new build alone",
        at_handover,
        10,
        Duration::from_secs(10),
    );
    let [(tried, allowed)] = looper.stop()[..] else {
        unreachable!("one attempt")
    };
    println!(
        "upgrade: {tried} connects attempted across the handover ({at_handover} before it completed), {allowed} allowed"
    );
    assert_eq!(allowed, 0, "no connect got through during the handover");
    assert!(
        l.accept().is_err(),
        "nothing reached the blocked destination"
    );
    redteam("14.6 denied connects across a rolling upgrade", "denied");
    assert_eq!(
        run_in(Some(&outsider.path), "control", &Attempt::connect(addr)).1,
        Outcome::Exited(0),
        "control after"
    );
    redteam("14.6 denied connects across a rolling upgrade", "control");
    // One build's programs attached: the new build's, adopted as its own by a restart.
    stop_daemon(new);
    let (again, seen) = start("new build");
    assert!(seen.contains("adopted the programs"), "{seen}");
    stop_daemon(again);
    unload(&pins);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Escalations reach humans (issue 15, part 3), from the kernel: a connect that a `network` rule
/// with `verdict: escalate` refuses in the cgroup connect hook is filed as an approval request
/// by the drainer, and `--notify-webhook` posts a Slack-compatible message for it (to a real
/// HTTP receiver here) within a second of the refusal, with the id and the commands that decide
/// it. Approving it with the command it names lets the agent's retry through; the control, a
/// connect the rule does not cover, is neither refused nor notified.
#[test]
fn a_kernel_escalation_is_notified_within_a_second() {
    use std::io::{Read as _, Write as _};
    require_root();
    let agent = TestCgroup::new("notify");
    let (_target_l, target) = listener([127, 0, 0, 8]);
    let (_other_l, other) = listener([127, 0, 0, 9]);
    let (_again_l, again) = listener([127, 0, 0, 10]);
    let (hook_l, hook) = listener([127, 0, 0, 1]);
    // The receiver: one HTTP request per connection, answered 200; (arrival, body) sent on.
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for mut s in hook_l.incoming().map_while(Result::ok) {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
                }
            };
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Some(b) = body
                && tx.send((Instant::now(), b)).is_err()
            {
                break;
            }
        }
    });
    let dir = policy_dir(
        "notify",
        &format!(
            "name: notify\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: ask, network: {{ cidr: 127.0.0.8/32 }}, verdict: escalate, escalate: {{ timeout: 5m }}, reason: a human decides }}\n\
             \x20 - {{ id: ask-again, network: {{ cidr: 127.0.0.10/32 }}, verdict: escalate, escalate: {{ timeout: 5m }}, reason: a human decides }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("notify");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let url = format!("http://{hook}/hook");
    // (Removed with --detach-on-exit when the daemon stops.)
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            &pins_arg,
            "--notify-webhook",
            &url,
        ],
        &dir,
    );
    let ag = Some(agent.path.as_path());
    // The control: not covered by the rule.
    let (_, outcome) = run_in(ag, "notify-ok", &Attempt::connect(other));
    assert_eq!(outcome, Outcome::Exited(0), "control");
    // Escalated: refused now, filed for a human, notified.
    let (_, outcome) = run_in(ag, "notify-ask", &Attempt::connect(target));
    let refused = Instant::now();
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "escalated connect");
    let (arrived, body) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a notification");
    let took = arrived.saturating_duration_since(refused);
    assert!(took < Duration::from_secs(1), "notified after {took:?}");
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = p["approval"]["id"].as_str().unwrap().to_owned();
    let msg = p["text"].as_str().unwrap();
    let agent_name = agent.rel.to_str().unwrap();
    for want in [
        id.as_str(),
        agent_name,
        "127.0.0.8",
        "a human decides",
        &format!("governance approve {id} --as NAME"),
        &format!("governance deny {id} --reason"),
    ] {
        assert!(msg.contains(want), "{want:?} in {msg}");
    }
    assert!(p["blocks"].as_array().is_some_and(|b| !b.is_empty()), "{p}");
    assert!(
        !p["approval"]["deadline"].as_str().unwrap().is_empty(),
        "{p}"
    );
    // Approved with the command it names: the retry passes.
    let out = daemon.cli(&["approve", &id, "--as", "alice"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, outcome) = run_in(ag, "notify-retry", &Attempt::connect(target));
    assert_eq!(outcome, Outcome::Exited(0), "approved");
    // The next notification is the next escalation: neither the control nor the approval was
    // notified.
    let (_, outcome) = run_in(ag, "notify-again", &Attempt::connect(again));
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "escalated connect");
    let (_, body) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a second notification");
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(p["approval"]["id"], id.as_str());
    assert!(p["text"].as_str().unwrap().contains("127.0.0.10"), "{p}");
    // `governance status` counts what the notifier sent.
    let out = daemon.cli(&["status"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains(&format!(
            "export       notify {url}: 2 sent, 0 lost, 0 failed sends"
        )),
        "{status}"
    );
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A kernel grant covers the destination a human approved and no other (red team round 11):
/// grants were keyed on a 64-bit fold of the address and port (`net_object`) that 2^16 IPv4
/// destinations share, so approving 127.0.0.8:P let 127.0.1.40:P through as granted, and its
/// escalation was folded into the approved request. Now the grant is keyed on the exact
/// address, port and protocol: the twin is refused and asks on its own. The control: the
/// approved destination passes.
#[test]
fn a_kernel_grant_covers_only_the_destination_approved() {
    require_root();
    let agent = TestCgroup::new("grant-dest");
    let (_approved_l, approved) = listener([127, 0, 0, 8]);
    let port = approved.port();
    let twin_ip = Ipv4Addr::new(127, 0, 1, 40);
    let twin_l = TcpListener::bind(SocketAddrV4::new(twin_ip, port)).unwrap();
    let twin = twin_l.local_addr().unwrap();
    let folded = |ip: Ipv4Addr| governance_common::net_object(&ip.to_ipv6_mapped().octets(), port);
    assert_eq!(
        folded(Ipv4Addr::new(127, 0, 0, 8)),
        folded(twin_ip),
        "the two destinations fold alike"
    );
    let dir = policy_dir(
        "grant-dest",
        &format!(
            "name: grant-dest\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: ask, network: {{ cidr: 127.0.0.0/16 }}, verdict: escalate, escalate: {{ timeout: 5m }}, reason: a human decides }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("grant-dest");
    // (Removed with --detach-on-exit when the daemon stops.)
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    let ag = Some(agent.path.as_path());
    let pending = |daemon: &Daemon| -> Vec<serde_json::Value> {
        let out = daemon.cli(&["approvals", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["pending"].as_array().cloned())
            .unwrap_or_default()
    };
    let (_, outcome) = run_in(ag, "grant-ask", &Attempt::connect(approved));
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "escalated connect");
    let id = wait_for_value(
        "the escalated connect to be pending approval",
        Duration::from_secs(10),
        || Some(pending(&daemon).first()?["id"].as_str()?.to_owned()),
    );
    let out = daemon.cli(&["approve", &id, "--as", "alice"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, outcome) = run_in(ag, "grant-retry", &Attempt::connect(approved));
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "control: the approved destination"
    );
    redteam("grant of a destination that folds alike", "tried");
    let (_, outcome) = run_in(ag, "grant-twin", &Attempt::connect(twin));
    assert_eq!(
        outcome,
        Outcome::Errno(libc::EPERM),
        "a destination the approval did not name"
    );
    redteam("grant of a destination that folds alike", "denied");
    // A request of its own, naming the twin.
    let twin_request = wait_for_value(
        "the twin's own approval request",
        Duration::from_secs(10),
        || {
            pending(&daemon)
                .into_iter()
                .find(|p| p["id"].as_str() != Some(id.as_str()))
        },
    );
    assert!(
        twin_request.to_string().contains("127.0.1.40"),
        "{twin_request}"
    );
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A filesystem mounted below a directory the identity resolution does not list (container
/// storage: a container's root filesystem, a pod's volume) gets identity entries from the next
/// generation, which the daemon builds within seconds of the mount, and again when it goes
/// (red team round 11: such mounts had none, so unlink, truncate and chmod there went by the
/// agent's default). The refusals those entries make are `vm_lsm::system_files_are_refused`'s;
/// here, that the mount alone makes a generation. Control: the daemon built none before it.
#[test]
fn a_mount_below_container_storage_makes_a_generation() {
    require_root();
    let agent = TestCgroup::new("mounts");
    let dir = policy_dir(
        "mounts",
        &format!(
            "name: mounts\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: meta, network: {{ cidr: 169.254.169.254/32 }}, verdict: block, reason: metadata }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("mounts");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    let made_storage = !Path::new("/var/lib/containers").exists();
    let volume = PathBuf::from(format!(
        "/var/lib/containers/gov-ht-volume-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&volume).unwrap();
    let because = "a filesystem was mounted or unmounted below a protected directory";
    assert!(
        daemon.tail(usize::MAX).iter().all(|l| !l.contains(because)),
        "control: no such generation before the mount"
    );
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "none"])
        .arg(&volume)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs at {}", volume.display());
    let from = daemon.line_count();
    let mounted = daemon.wait_line(from, because, Duration::from_secs(30));
    let status = Command::new("umount").arg(&volume).status().unwrap();
    assert!(status.success(), "umount {}", volume.display());
    let from = daemon.line_count();
    let unmounted = daemon.wait_line(from, because, Duration::from_secs(30));
    let _ = std::fs::remove_dir(&volume);
    if made_storage {
        let _ = std::fs::remove_dir_all("/var/lib/containers");
    }
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    mounted.expect("a generation for the mount");
    unmounted.expect("a generation for the unmount");
}

/// The TCP API (issue 15, part 3): per-user tokens (`--api-tokens`), TLS (`--api-tls-cert`,
/// `--api-tls-key`), and the token's user recorded as the approver, in the approval and in the
/// audit log; a name claimed with `--as` is recorded beside it, never instead. Controls: no
/// token, a wrong one and a prefix of a right one are refused (401); plain HTTP to the TLS
/// port and a client that does not trust the certificate get nowhere.
#[test]
fn tcp_api_per_user_tokens_and_tls() {
    require_root();
    let agent = TestCgroup::new("tokens");
    let (_a, first) = listener([127, 0, 0, 12]);
    let (_b, second) = listener([127, 0, 0, 13]);
    let dir = policy_dir(
        "tokens",
        &format!(
            "name: tokens\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: ask, network: {{ cidr: 127.0.0.12/31 }}, verdict: escalate, escalate: {{ timeout: 5m }}, reason: a human decides }}\n",
            cg = agent.rel.display()
        ),
    );
    let state =
        std::env::temp_dir().join(format!("governance-test-api-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let tokens = state.join("tokens.yaml");
    std::fs::write(
        &tokens,
        "alice: alice-token-0123456789\nbob: bob-token-0123456789\n",
    )
    .unwrap();
    // A certificate for 127.0.0.1, and its issuer as the client's root.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        state.join("ca.pem"),
        state.join("cert.pem"),
        state.join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let api_addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let pins = pin_dir("tokens");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let (daemon, said) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            &pins_arg,
            "--api-listen",
            &api_addr,
            "--api-tokens",
            &path(&tokens),
            "--api-tls-cert",
            &path(&cert_pem),
            "--api-tls-key",
            &path(&key_pem),
            // An exporter whose receiver is not there: its losses show in the status.
            "--export",
            "webhook+http://127.0.0.1:1/gone?kind=approval.approved&retries=0&name=gone",
        ],
        &dir,
    );
    assert!(said.contains("(bearer token, TLS)"), "{said}");
    let https = format!("https://{api_addr}");
    let ca_arg = path(&ca_pem);
    // `governance ARGS` against the TCP API over TLS with `token`.
    let tcp = |token: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(governance_bin());
        cmd.args(args)
            .args(["--api", &https, "--api-ca", &ca_arg])
            .env_remove("GOVERNANCE_TOKEN")
            .env_remove("GOVERNANCE_APPROVER");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        cmd.output().unwrap()
    };
    // Two kernel escalations to decide.
    for (comm, target) in [("tokens-1", first), ("tokens-2", second)] {
        let (_, outcome) = run_in(Some(&agent.path), comm, &Attempt::connect(target));
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{comm}");
    }
    let pending = wait_for_value("two pending approvals", Duration::from_secs(10), || {
        let out = tcp(Some("bob-token-0123456789"), &["approvals", "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let p = v["pending"].as_array().cloned().unwrap_or_default();
        (p.len() == 2).then_some(p)
    });
    let id_of = |dest: SocketAddr| {
        pending
            .iter()
            .find(|p| p["object"]["dest"] == dest.to_string())
            .and_then(|p| p["id"].as_str())
            .unwrap()
            .to_owned()
    };
    let (first_id, second_id) = (id_of(first), id_of(second));

    // Controls: no token, a wrong one, a prefix of a right one, and the right one without
    // TLS or without trusting the certificate.
    for token in [None, Some("wrong"), Some("alice-token-012345678")] {
        let out = tcp(token, &["approve", &first_id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("401"),
            "{token:?}: {err}"
        );
    }
    let out = Command::new(governance_bin())
        .args([
            "agents",
            "--api",
            &api_addr,
            "--token",
            "alice-token-0123456789",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "plain HTTP to the TLS listener");
    let out = Command::new(governance_bin())
        .args([
            "agents",
            "--api",
            &https,
            "--token",
            "alice-token-0123456789",
        ])
        .env_remove("GOVERNANCE_API_CA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS"),
        "untrusted: {err}"
    );

    // alice approves; bob denies, claiming to be carol.
    let out = tcp(Some("alice-token-0123456789"), &["approve", &first_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tcp(
        Some("bob-token-0123456789"),
        &["deny", &second_id, "--reason", "no", "--as", "carol"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, outcome) = run_in(Some(&agent.path), "tokens-3", &Attempt::connect(first));
    assert_eq!(outcome, Outcome::Exited(0), "approved by alice");

    // The approvers, as the audit log has them.
    let settled = |kind: &str| {
        wait_for_value(kind, Duration::from_secs(10), || {
            let out = daemon.cli(&["events", "--since", "1h", "--kind", kind, "-o", "json"]);
            let line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()?
                .to_owned();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            Some(v["approval"]["by"].as_str().unwrap().to_owned())
        })
    };
    let by = settled("approval.approved");
    assert!(
        by.starts_with("alice (api token of alice from 127.0.0.1:") && by.ends_with(" over TLS)"),
        "{by}"
    );
    let by = settled("approval.denied");
    assert!(
        by.starts_with("carol (api token of bob from 127.0.0.1:"),
        "{by}"
    );
    // The exporter had one record to send (the approval), could not, and says so.
    wait_for_value("the exporter's loss", Duration::from_secs(10), || {
        let out = tcp(Some("bob-token-0123456789"), &["status"]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.lines()
            .any(|l| {
                l.starts_with("export       gone: 0 sent, 1 lost, 1 failed sends; last error: ")
            })
            .then_some(())
    });
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);
}

/// A stand-in for the Kubernetes API server, on loopback: no API server can be installed or
/// reached where these tests run. It answers kube-rs's lists with the recorded responses in
/// tests/fixtures/kubernetes/ and holds the watches open, sending on the pod watch the events
/// the test gives it (in the API's watch-event shape).
struct ApiStandin {
    addr: SocketAddr,
    pod_events: tokio::sync::mpsc::UnboundedSender<String>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ApiStandin {
    fn start() -> Self {
        use axum::{
            Router,
            body::Body,
            extract::Query,
            http::header,
            response::{IntoResponse, Response},
            routing::get,
        };
        use futures_util::stream;
        use std::{
            collections::HashMap,
            convert::Infallible,
            sync::{Arc, Mutex},
        };
        type Events = Arc<Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>>;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let events: Events = Arc::new(Mutex::new(Some(rx)));
        let fixture = |name: &str| {
            std::fs::read_to_string(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("fixtures/kubernetes")
                    .join(name),
            )
            .unwrap()
        };
        let list =
            |body: String| ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        let held = |events: Option<tokio::sync::mpsc::UnboundedReceiver<String>>| -> Response {
            let body = match events {
                Some(rx) => Body::from_stream(stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|line| (Ok::<_, Infallible>(line + "\n"), rx))
                })),
                None => Body::from_stream(stream::pending::<Result<String, Infallible>>()),
            };
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        };
        let (pods, namespaces) = (fixture("pods-list.json"), fixture("namespaces-list.json"));
        let app = Router::new()
            .route(
                "/api/v1/pods",
                get(move |Query(q): Query<HashMap<String, String>>| async move {
                    assert_eq!(
                        q.get("fieldSelector").map(String::as_str),
                        Some("spec.nodeName=node-1"),
                        "only this node's pods"
                    );
                    if q.get("watch").is_some_and(|w| w == "true") {
                        held(events.lock().unwrap().take())
                    } else {
                        list(pods)
                    }
                }),
            )
            .route(
                "/api/v1/namespaces",
                get(move |Query(q): Query<HashMap<String, String>>| async move {
                    if q.get("watch").is_some_and(|w| w == "true") {
                        held(None)
                    } else {
                        list(namespaces)
                    }
                }),
            );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            pod_events: tx,
            runtime: Some(runtime),
        }
    }

    /// A kubeconfig for it.
    fn kubeconfig(&self, path: &Path) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: standin\n\
                 clusters: [{{ name: standin, cluster: {{ server: 'http://{}' }} }}]\n\
                 contexts: [{{ name: standin, context: {{ cluster: standin, user: standin }} }}]\n\
                 users: [{{ name: standin, user: {{}} }}]\n",
                self.addr
            ),
        )
        .unwrap();
    }
}

impl Drop for ApiStandin {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `run --kubernetes`: pods laid out as the kubelet lays them out (systemd and cgroupfs
/// drivers) are agents by their labels, as the API server (a stand-in) tells them; events name
/// the pod, its namespace and the container; a label change makes another pod an agent.
#[test]
fn kubernetes_pods_are_agents_by_their_labels() {
    require_root();
    const AGENT: &str = "2b9e3c4a-8f1d-4c7e-9a65-0d3f1e2b7c41";
    const WEB: &str = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    const ID: &str = "8e1f2c3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let base = TestCgroup::new("kubelet");
    let agent_pod = base.path.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        AGENT.replace('-', "_")
    ));
    let agent_container = agent_pod.join(format!("cri-containerd-{ID}.scope"));
    let web_pod = base.path.join(format!("kubepods/besteffort/pod{WEB}"));
    let web_container = web_pod.join(ID);
    for dir in [&agent_container, &web_container] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let (_l, addr) = listener([127, 0, 0, 1]);
    let dir = policy_dir(
        "kube",
        "name: coding-agents\nagents: { pod_labels: { matchLabels: { app: coding-agent } } }\nrules:\n\
         \x20 - { id: lo, network: { cidr: 127.0.0.1/32 }, verdict: block, reason: test }\n",
    );
    let api = ApiStandin::start();
    let kubeconfig = dir.with_extension("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let pins = pin_dir("kube");
    // The pod identities are kept beside the copy of the policy in force, for a restart.
    let in_force = dir.with_extension("in-force");
    let args = [
        "--allow-degraded",
        "--no-create-cgroups",
        "--detach-on-exit",
        "--no-proxy",
        "--pins",
        pins.to_str().unwrap(),
        "--kubernetes",
        "--node-name",
        "node-1",
        "--policy-in-force",
        in_force.to_str().unwrap(),
    ];
    let (daemon, _) =
        governance_tests::start_daemon_env(&args, &dir, &[("KUBECONFIG", &kubeconfig)]);
    let agents = || text(&daemon.cli(&["agents"]).stdout);
    let listed = agents();
    assert!(
        listed.contains("agents/coding-agent-7d9f8b6c5-x2x4k")
            && listed.contains(&format!("pod{}.slice ", AGENT.replace('-', "_")))
            && !listed.contains("web-0"),
        "the labelled pod's cgroup is the agent: {listed}"
    );

    // Its containers are governed; the other pod is not (the control).
    let (pid, outcome) = run_in(Some(&agent_container), "pod-agent", &Attempt::connect(addr));
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let (_, outcome) = run_in(Some(&web_container), "pod-web", &Attempt::connect(addr));
    assert_eq!(outcome, Outcome::Exited(0), "not an agent");
    let event = wait_for_value("the decision event", Duration::from_secs(10), || {
        let out = daemon.cli(&["events", "--since", "1h", "--kind", "connect", "-o", "json"]);
        text(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["process"]["pid"] == pid)
    });
    let a = &event["agent"];
    assert_eq!(
        (
            a["pod"].as_str(),
            a["namespace"].as_str(),
            a["container"].as_str()
        ),
        (
            Some("coding-agent-7d9f8b6c5-x2x4k"),
            Some("agents"),
            Some(ID)
        ),
        "{event}"
    );

    // web-0 relabelled: an agent within moments.
    let mut web: serde_json::Value = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/kubernetes/pods-list.json"),
        )
        .unwrap(),
    )
    .unwrap()["items"][1]
        .take();
    web["metadata"]["labels"]["app"] = "coding-agent".into();
    web["metadata"]["resourceVersion"] = "1100".into();
    web["kind"] = "Pod".into();
    web["apiVersion"] = "v1".into();
    api.pod_events
        .send(serde_json::json!({ "type": "MODIFIED", "object": web }).to_string())
        .unwrap();
    wait_until("web-0 to become an agent", Duration::from_secs(10), || {
        agents().contains("default/web-0")
    });
    let (_, outcome) = run_in(Some(&web_container), "pod-web", &Attempt::connect(addr));
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));

    // Red team round 30: a restart while the API server cannot be reached (it is gone: its
    // address refuses) governs the pods the last daemon did, from what that daemon kept,
    // instead of none until the API answers.
    let case = "R30 pods released by a daemon restart while the API server is unreachable";
    wait_until(
        "the identities kept for the next start",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(in_force.join("kubernetes-identities.json"))
                .is_ok_and(|j| j.contains("coding-agent") && j.contains("web-0"))
        },
    );
    stop_daemon(daemon);
    drop(api);
    redteam(case, "tried");
    let (daemon, seen) =
        governance_tests::start_daemon_env(&args, &dir, &[("KUBECONFIG", &kubeconfig)]);
    assert!(
        seen.contains("the identities of 2 pods the API server told the last daemon"),
        "{seen}"
    );
    for (container, comm) in [(&agent_container, "pod-agent"), (&web_container, "pod-web")] {
        let (_, outcome) = run_in(Some(container), comm, &Attempt::connect(addr));
        assert_eq!(
            outcome,
            Outcome::Errno(libc::EPERM),
            "{comm} after the restart"
        );
    }
    redteam(case, "denied");
    // Control: a cgroup no pod is stays no agent.
    let plain = base.child("not-a-pod");
    let (_, outcome) = run_in(Some(&plain), "plain", &Attempt::connect(addr));
    assert_eq!(outcome, Outcome::Exited(0), "not an agent");
    redteam(case, "control");

    stop_daemon(daemon);
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&in_force);
}

/// Least privilege after start (docs/operations.md, "Capabilities after start"): once the
/// first generation enforces, every thread of the daemon holds exactly the capabilities kept
/// (CAP_DAC_OVERRIDE only while it creates agent cgroups), in its permitted, effective and
/// bounding sets, none inheritable or ambient; the proxy's threads, which parse what agents
/// send, hold none; all have no_new_privs. `governance status` says the same, and a reload
/// still works with what was kept.
#[test]
fn after_start_the_daemon_keeps_only_the_documented_capabilities() {
    require_root();
    let agent = TestCgroup::new("caps");
    let dir = policy_dir(
        "caps",
        &format!(
            "name: caps\nagents: {{ cgroup: {} }}\n",
            agent.rel.display()
        ),
    );
    const DAC_OVERRIDE: u32 = 1;
    const DAC_READ_SEARCH: u32 = 2;
    const NET_RAW: u32 = 13;
    const SYS_PTRACE: u32 = 19;
    const SYS_ADMIN: u32 = 21;
    let mask = |caps: &[u32]| caps.iter().fold(0u64, |m, c| m | 1 << c);
    for (flags, kept, names) in [
        (
            &[][..],
            mask(&[
                DAC_OVERRIDE,
                DAC_READ_SEARCH,
                NET_RAW,
                SYS_PTRACE,
                SYS_ADMIN,
            ]),
            &[
                "CAP_DAC_OVERRIDE",
                "CAP_DAC_READ_SEARCH",
                "CAP_NET_RAW",
                "CAP_SYS_ADMIN",
                "CAP_SYS_PTRACE",
            ][..],
        ),
        (
            &["--no-create-cgroups"][..],
            mask(&[DAC_READ_SEARCH, NET_RAW, SYS_PTRACE, SYS_ADMIN]),
            &[
                "CAP_DAC_READ_SEARCH",
                "CAP_NET_RAW",
                "CAP_SYS_ADMIN",
                "CAP_SYS_PTRACE",
            ][..],
        ),
        (
            &["--no-create-cgroups", "--no-proxy"][..],
            mask(&[DAC_READ_SEARCH, SYS_PTRACE, SYS_ADMIN]),
            &["CAP_DAC_READ_SEARCH", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"][..],
        ),
    ] {
        let pins = pin_dir("caps");
        let mut args = vec![
            "--allow-degraded",
            "--detach-on-exit",
            "--pins",
            pins.to_str().unwrap(),
        ];
        args.extend(flags);
        let (daemon, _) = start_daemon(&args, &dir);
        let status = || {
            let out = daemon.cli(&["status", "-o", "json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
        };
        // The control API listens a moment before the start's capabilities are dropped;
        // status reports them once they are.
        let caps = wait_for_value(
            "the daemon to report the capabilities it kept",
            Duration::from_secs(10),
            || Some(status()["capabilities"].take()).filter(|c| !c.is_null()),
        );
        let proxy = if flags.contains(&"--no-proxy") {
            serde_json::Value::Null
        } else {
            serde_json::json!([])
        };
        assert_eq!(
            caps,
            serde_json::json!({ "daemon": names, "proxy": proxy }),
            "{flags:?}"
        );

        // A thread that has not run yet (the blocking pool grows at any time) still has its
        // creator's name and sets; it limits itself first thing: wait for every thread.
        let pid = daemon.child.id();
        let mut last = Err(String::new());
        let settled = poll_until(Duration::from_secs(10), || {
            last = thread_capabilities(pid, kept);
            last.is_ok()
        });
        let (proxy_threads, others) = match last {
            Ok(counts) if settled => counts,
            Ok(_) | Err(_) => panic!("{flags:?}: {last:?}"),
        };
        // The main thread, the runtime's workers, the event and ring threads; the proxy's.
        assert!(others >= 5, "{flags:?}: {others} daemon threads");
        let no_proxy = flags.contains(&"--no-proxy");
        assert!(
            if no_proxy {
                proxy_threads == 0
            } else {
                proxy_threads >= 2
            },
            "{flags:?}: {proxy_threads} proxy threads"
        );

        // What was kept is enough to reload.
        signal(&daemon, nix::sys::signal::SIGHUP);
        wait_until("the reload to enforce", Duration::from_secs(20), || {
            status()["generation"] == 2
        });
        stop_daemon(daemon);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every thread of `pid`: the proxy's (`gov-proxy`) hold no capability, the others exactly
/// `kept` in their permitted, effective and bounding sets; none inheritable or ambient; all
/// with no_new_privs. Ok((proxy threads, other threads)), or the first that is not so.
fn thread_capabilities(pid: u32, kept: u64) -> Result<(usize, usize), String> {
    let (mut proxy_threads, mut others) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())? {
        let task = task.map_err(|e| e.to_string())?.path();
        // A thread that ended since the listing is no thread any more.
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let hex = |name: &str| u64::from_str_radix(&field(name), 16).ok();
        let proxy = comm.trim() == "gov-proxy";
        let want = if proxy { 0 } else { kept };
        let thread = format!("thread {} ({})", task.display(), comm.trim());
        for (set, want) in [
            ("CapPrm", want),
            ("CapEff", want),
            ("CapBnd", want),
            ("CapInh", 0),
            ("CapAmb", 0),
        ] {
            if hex(set) != Some(want) {
                return Err(format!("{thread}: {set} {:x?}, not {want:#x}", hex(set)));
            }
        }
        if field("NoNewPrivs") != "1" {
            return Err(format!("{thread}: NoNewPrivs {}", field("NoNewPrivs")));
        }
        if proxy {
            proxy_threads += 1;
        } else {
            others += 1;
        }
    }
    Ok((proxy_threads, others))
}

/// Red team round 33: a start killed while it attached its programs (an OOM kill, systemd's
/// stop timeout) left pins that carried the build id, and every later start adopted them: the
/// hooks not attached yet stayed missing for good (status said `DEGRADED`; a UDP send to a
/// blocked address went out). The build id now goes in once the last program is attached, so
/// a restart takes such a set for another build's: it attaches a whole set of its own beside
/// it and retires it. Here a start is stopped (SIGSTOP, then SIGKILL) at its first pinned link
/// (inotify on the links' directory); the restart's links are those of a clean start, and the
/// send is refused, with a control outside.
#[test]
fn a_start_killed_while_attaching_leaves_no_set_a_restart_adopts() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    require_root();
    let agent = TestCgroup::new("halfway");
    let outsider = TestCgroup::new("halfway-out");
    let dir = policy_dir(
        "halfway",
        &format!(
            "name: halfway\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: blocked, network: {{ cidr: 127.0.0.9/32 }}, verdict: block, reason: test }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("halfway");
    let links = pins.join("links");
    let names = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&links)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = [
        "--allow-degraded",
        "--no-create-cgroups",
        "--quiet",
        "--no-proxy",
        "--pins",
        pins.to_str().unwrap(),
    ];
    let send = Attempt::SendTo {
        addr: "127.0.0.9:9999".parse().unwrap(),
    };
    let refused = |what: &str| {
        let (_, outcome) = run_in(Some(&agent.path), "halfway", &send);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{what}: in the agent");
        let (_, outcome) = run_in(Some(&outsider.path), "outsider", &send);
        assert_eq!(outcome, Outcome::Exited(0), "{what}: control outside");
    };
    // A clean start: its links, and the send refused.
    let whole = {
        let (daemon, _) = start_daemon(&args, &dir);
        refused("a clean start");
        let whole = names();
        stop_daemon(daemon);
        unload(&pins);
        whole
    };
    assert!(whole.len() > 3, "{whole:?}");
    // A start stopped part-way through attaching (tried again if it was done before the stop
    // landed).
    let state = dir.join("killed");
    let mut partial = whole.clone();
    for _ in 0..5 {
        std::fs::create_dir_all(&links).unwrap();
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
        inotify.add_watch(&links, AddWatchFlags::IN_CREATE).unwrap();
        let mut cmd = Command::new(governance_bin());
        cmd.arg("run").args(args).arg("--policy").arg(&dir);
        for (flag, name) in [
            ("--socket", "sock"),
            ("--audit-dir", "audit"),
            ("--ca-dir", "ca"),
            ("--policy-in-force", "in-force"),
        ] {
            cmd.arg(flag).arg(state.join(name));
        }
        let mut child = Reaped(
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // (A blocking read: the daemon pins its first link within seconds of starting.)
        let first = inotify.read_events().unwrap();
        assert!(!first.is_empty());
        nix::sys::signal::kill(pid, nix::sys::signal::SIGSTOP).unwrap();
        partial = names();
        nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL).unwrap();
        let _ = child.wait();
        if partial.len() < whole.len() {
            break;
        }
        unload(&pins);
    }
    assert!(
        partial.len() < whole.len(),
        "five starts were each done attaching before SIGSTOP landed: {partial:?}"
    );
    // The restart: a whole set of links, the send refused again.
    let (daemon, _) = start_daemon(&args, &dir);
    let replaced = poll_until(Duration::from_secs(60), || names() == whole);
    assert!(
        replaced,
        "the restart's links within 60 s: {:?}, a clean start's {whole:?} (killed with {partial:?})",
        names()
    );
    refused("the restart after a start killed while attaching");
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 17, the in-kernel reporting policy: an allowed connect under `report: count` is counted
/// in the kernel, not reported one by one; the metric, `governance agents` and the audit log's
/// signed count records add up to the connects made, and no decision record names the rule. The
/// control, the same connects under `report: every`, gives one decision record each.
#[test]
fn counted_connects_add_up_in_metrics_agents_and_audit_count_records() {
    require_root();
    const N: u64 = 12;
    let agent = TestCgroup::new("report");
    let (_counted_l, counted) = listener([127, 0, 0, 21]);
    let (_every_l, every) = listener([127, 0, 0, 22]);
    let dir = policy_dir(
        "report",
        &format!(
            "name: report\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: counted, network: {{ cidr: 127.0.0.21/32 }}, verdict: allow, reason: routine, report: count }}\n\
             \x20 - {{ id: recorded, network: {{ cidr: 127.0.0.22/32 }}, verdict: allow, reason: worth a record, report: every }}\n",
            cg = agent.rel.display()
        ),
    );
    let health = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let pins = pin_dir("report");
    let key = dir.join("audit.key");
    // One state directory for both daemons (the second resumes the first's audit log).
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let health_at = health.to_string();
    let args = [
        "--allow-degraded",
        "--no-create-cgroups",
        "--detach-on-exit",
        "--quiet",
        "--no-proxy",
        "--pins",
        pins.to_str().unwrap(),
        "--health-listen",
        &health_at,
        "--audit-signing-key",
        key.to_str().unwrap(),
    ];
    let ag = Some(agent.path.as_path());
    let name = agent.rel.to_str().unwrap().to_owned();
    // Every count record of the agent's connects, whatever names it carries.
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&agent.path).unwrap().ino()
    };
    let counted_sum = |records: &[serde_json::Value]| -> u64 {
        records
            .iter()
            .filter(|r| r["kind"] == "decisions.counted" && r["agent"]["cgroup_id"] == cgroup_id)
            .map(|r| r["counts"]["connect"].as_u64().unwrap_or(0))
            .sum()
    };
    // Red team round 32: a daemon killed after its count records were written left the
    // kernel's (pinned) totals behind, and the next one recorded them again. Here a first
    // daemon writes its count record for 3 connects (every 30 s) and is killed; the test's own
    // daemon then takes over, and the records add up to the connects all the same.
    const BEFORE: u64 = 3;
    {
        let (first, _) = governance_tests::start_daemon_in(&args, &dir, state.clone());
        for i in 0..BEFORE {
            let (_, outcome) = run_in(ag, "report", &Attempt::connect(counted));
            assert_eq!(outcome, Outcome::Exited(0), "connect {i} before the crash");
        }
        let audit = first.audit();
        let recorded = poll_until(Duration::from_secs(60), || {
            counted_sum(&audit_records(&audit)) == BEFORE
        });
        assert!(recorded, "a count record of {BEFORE} connects within 60 s");
        let mut first = first;
        signal(&first, nix::sys::signal::SIGKILL);
        let _ = first.child.wait();
    }
    let (daemon, _) = governance_tests::start_daemon_in(&args, &dir, state.clone());
    for i in 0..N {
        for target in [counted, every] {
            let (_, outcome) = run_in(ag, "report", &Attempt::connect(target));
            assert_eq!(outcome, Outcome::Exited(0), "connect {i} to {target}");
        }
    }
    // The metric: read from the kernel once a second.
    let metric = format!(
        "governance_allowed_counted_total{{agent=\"{name}\",rule=\"report/counted\",kind=\"connect\"}}"
    );
    let scrape = || scrape_metrics(health);
    let value = metric_value;
    // Read from the kernel once a second.
    let counted_in_time = poll_until(Duration::from_secs(10), || {
        value(&scrape(), &metric) == Some(N)
    });
    let page = scrape();
    assert!(counted_in_time, "{metric} {N} within 10 s:\n{page}");
    assert!(
        !page.contains("rule=\"report/recorded\""),
        "an `every` rule is not counted: {page}"
    );
    // `governance agents` (and GET /v1/agents).
    let out = daemon.cli(&["agents", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name.as_str())
        .unwrap_or_else(|| panic!("agent {name} in {v}"));
    assert_eq!(a["counted"]["report/counted connect"], N, "{a}");
    let out = daemon.cli(&["agents"]);
    assert!(
        text(&out.stdout).contains(&format!("counted: report/counted connect {N}")),
        "{}",
        text(&out.stdout)
    );
    // Stopped here (not by stop_daemon, which removes its state): the last count record is
    // written on the way out.
    let mut daemon = daemon;
    signal(&daemon, nix::sys::signal::SIGTERM);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "governance exited with {status:?}");
    let audit = daemon.audit();
    // The audit log: signed, and its count records add up to N; no record per counted connect,
    // one per recorded connect.
    let out = Command::new(governance_bin())
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = audit_records(&audit);
    assert_eq!(
        counted_sum(&records),
        BEFORE + N,
        "count records of report/counted, across the crash"
    );
    let decisions = |rule: &str| {
        records
            .iter()
            .filter(|r| r["type"] == "decision" && r["rule"] == rule && r["kind"] == "connect")
            .count() as u64
    };
    assert_eq!(
        decisions("report/counted"),
        0,
        "no event per counted connect"
    );
    assert_eq!(
        decisions("report/recorded"),
        N,
        "one event per recorded connect"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "decisions.counted" && r["rule"] == "report/recorded"),
        "an `every` rule has no count records"
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_capability_inventory_of_a_live_agent() {
    require_root();
    let agent = TestCgroup::new("inventory");
    let other = TestCgroup::new("inventory-other");
    let dir = policy_dir(
        "inventory",
        &format!(
            "name: inv\nagents: {{ cgroup: {cg} }}\ndefaults: {{ network: block }}\n\
             kernel: {{ allow_mounts: true }}\nrules:\n\
             \x20 - {{ id: lo, network: {{ cidr: 127.0.0.1/32, ports: [80] }}, verdict: throttle, throttle: {{ rate: 5, per: 1m }}, reason: r }}\n\
             \x20 - {{ id: pay, http: {{ host: pay.example, method: POST }}, verdict: escalate, escalate: {{ timeout: 5m }}, reason: r }}\n\
             ---\nname: watch\nmode: shadow\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: tmp, file: {{ prefix: /tmp }}, verdict: block, reason: r }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("inventory");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    let name = agent.rel.to_str().unwrap().to_owned();
    let out = daemon.cli(&["agents", "--capabilities", &name, "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{v}");
    let a = &agents[0];
    assert_eq!(a["agent"], name.as_str(), "{a}");
    assert_eq!(a["policies"], serde_json::json!(["inv"]));
    assert_eq!(a["shadow_policies"], serde_json::json!(["watch"]));
    assert_eq!(a["defaults"]["network"], "block");
    let items: Vec<String> = a["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} {} {} {} {}",
                i["kind"], i["object"], i["verdict"], i["rule"], i["shadow"]
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            r#""file" "/tmp/** (any access)" "block" "watch/tmp" true"#,
            r#""network" "127.0.0.1/32 port 80 tcp/udp direct" "throttle 5/1m per agent_rule" "inv/lo" false"#,
            r#""http" "POST pay.example/**" "escalate (timeout 5m, then block)" "inv/pay" false"#,
        ]
    );
    let relaxed: Vec<&str> = a["builtins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["relaxed"] == true)
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(relaxed, ["allow_mounts"]);
    // In words; and every live agent without a name.
    let out = daemon.cli(&["agents", "--capabilities"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(
            "    127.0.0.1/32 port 80 tcp/udp direct: throttle 5/1m per agent_rule (inv/lo)"
        ),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq(["allow_mounts", "RELAXED:"])),
        "{text}"
    );
    // Control: an agent no policy selects is not live; asking for it fails.
    let out = daemon.cli(&["agents", "--capabilities", other.rel.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no live agent"),
        "{out:?}"
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pinned AGENTS map's keys: (cgroup id, slot, profile).
fn pinned_agents(pins: &Path) -> Vec<(u64, u32, u32)> {
    let map: aya::maps::HashMap<_, governance_common::AgentKey, governance_common::AgentValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(pins.join("maps/AGENTS")).unwrap(),
        ))
        .unwrap();
    map.keys()
        .map(|k| k.unwrap())
        .map(|k| (k.cgroup_id, k.slot, k.profile))
        .collect()
}

/// Cgroups a drill's canary left below the cgroup2 root.
fn canary_cgroups() -> Vec<String> {
    let root = agents::cgroup2_mount().unwrap();
    std::fs::read_dir(root)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("governance-drill-"))
        .collect()
}

/// What an attacker with root would do: delete the destination rules of `agent`'s class from
/// the pinned NET_RULES map (the daemon's own compiled policy no longer says what the kernel
/// decides). Returns how many entries went.
fn weaken_net_rules(pins: &Path, agent: u64) -> usize {
    let agents: aya::maps::HashMap<_, governance_common::AgentKey, governance_common::AgentValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(pins.join("maps/AGENTS")).unwrap(),
        ))
        .unwrap();
    let classes: Vec<u32> = agents
        .iter()
        .map(|r| r.unwrap())
        .filter(|(k, _)| k.cgroup_id == agent)
        .map(|(_, v)| v.class)
        .collect();
    assert!(!classes.is_empty(), "agent {agent} is in AGENTS");
    let mut net: aya::maps::LpmTrie<_, governance_common::NetKey, governance_common::NetValue> =
        aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(
            aya::maps::MapData::from_pin(pins.join("maps/NET_RULES")).unwrap(),
        ))
        .unwrap();
    let keys: Vec<_> = net
        .keys()
        .map(|k| k.unwrap())
        .filter(|k| classes.contains(&u32::from_be_bytes(k.data().class_be)))
        .collect();
    for k in &keys {
        net.remove(k).unwrap();
    }
    keys.len()
}

/// A drill's checks (from `governance drill -o json`), one line each:
/// `rule kind object passed=B got=G skipped=WHY`.
fn drill_checks(v: &serde_json::Value) -> Vec<String> {
    v["drill"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {} passed={} got={} skipped={}",
                c["rule"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["object"].as_str().unwrap(),
                c["passed"],
                c["got"].as_str().unwrap(),
                c["skipped_why"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

/// A drill from the daemon's canary: the network block rule and the default-deny probe are
/// refused (passed); after the block rule's entry is deleted from the pinned map the next drill
/// fails, naming the check, with a `drill.failed` record in the audit log and the metric at 0;
/// after a reload rewrites the maps it passes again. Nothing is left behind (no canary cgroup,
/// no canary in AGENTS), also when the daemon is stopped during a drill. Exec and file rules
/// cannot be enforced on this kernel (no BPF LSM): their checks are skipped, never passed.
#[test]
fn a_drill_passes_fails_against_a_weakened_kernel_map_and_passes_after_a_reload() {
    require_root();
    let blocked = TestCgroup::new("drill-block");
    let closed = TestCgroup::new("drill-default");
    let dir = policy_dir(
        "drill",
        &format!(
            "name: drill-block\nagents: {{ cgroup: {a} }}\nrules:\n\
             \x20 - {{ id: no-net, network: {{ cidr: 10.251.0.0/16, ports: [22] }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: no-secrets, file: {{ prefix: /etc/drill-secrets }}, verdict: block, reason: r }}\n\
             ---\nname: drill-default\nagents: {{ cgroup: {b} }}\ndefaults: {{ network: block }}\nrules:\n\
             \x20 - {{ id: lo, network: {{ cidr: 127.0.0.0/8 }}, verdict: allow, reason: r }}\n",
            a = blocked.rel.display(),
            b = closed.rel.display()
        ),
    );
    let health = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let pins = pin_dir("drill");
    let (mut daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--quiet",
            "--pins",
            pins.to_str().unwrap(),
            "--health-listen",
            &health.to_string(),
        ],
        &dir,
    );
    let live = [blocked.id(), closed.id()];
    let nothing_left = |when: &str| {
        assert_eq!(
            canary_cgroups(),
            Vec::<String>::new(),
            "{when}: canary cgroups"
        );
        let stray: Vec<_> = pinned_agents(&pins)
            .into_iter()
            .filter(|(id, _, profile)| *profile == 0 && !live.contains(id))
            .collect();
        assert_eq!(stray, vec![], "{when}: AGENTS entries of no live agent");
    };
    let drill = |want_ok: bool| -> serde_json::Value {
        let out = daemon.cli(&["drill", "-o", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(out.status.success(), want_ok, "{v:#}\n{out:?}");
        assert_eq!(v["passed"], want_ok, "{v:#}");
        v
    };
    // 1. Enforced as compiled: passes.
    let v = drill(true);
    let got = drill_checks(&v);
    assert_eq!(
        got[0],
        "drill-block/no-net network tcp 10.251.0.0:22 passed=true got=refused (EPERM) skipped=-",
        "{got:#?}"
    );
    assert!(
        got[1].starts_with(
            "drill-block/no-secrets file read /etc/drill-secrets passed=false got= \
             skipped=this kernel cannot enforce it: the file_open hook is not attached"
        ),
        "the file rule cannot be enforced here: skipped, not passed: {got:#?}"
    );
    assert_eq!(
        got[2], "default network tcp 192.0.2.1:9 passed=true got=refused (EPERM) skipped=-",
        "{got:#?}"
    );
    assert_eq!(got.len(), 3, "{got:#?}");
    let canaries = v["drill"]["canaries"].to_string();
    assert!(
        canaries.contains("drill-block: the live tables of agent"),
        "{canaries}"
    );
    nothing_left("after a passing drill");
    let metric = |name: &str| metric_value(&scrape_metrics(health), name);
    assert_eq!(metric("governance_drill_last_passed"), Some(1));

    // 2. The block rule deleted from the kernel map: the drill fails and names the check,
    // and a live subscriber to the lifecycle records gets the `drill.failed` record.
    let mut follower = std::process::Command::new(governance_bin())
        .args([
            "events",
            "--follow",
            "--type",
            "lifecycle",
            "-o",
            "json",
            "--socket",
        ])
        .arg(daemon.socket())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Subscribed: its first record is `stream.subscribed`.
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("stream.subscribed"), "{first}");
    assert!(weaken_net_rules(&pins, blocked.id()) > 0);
    let v = drill(false);
    let got = drill_checks(&v);
    assert!(
        got[0].starts_with(
            "drill-block/no-net network tcp 10.251.0.0:22 passed=false got=not refused"
        ),
        "{got:#?}"
    );
    assert!(
        got[2].contains("passed=true"),
        "the other policy still holds: {got:#?}"
    );
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains("FAILED")
            && summary.contains("drill-block/no-net network tcp 10.251.0.0:22"),
        "{summary}"
    );
    nothing_left("after a failing drill");
    assert_eq!(metric("governance_drill_last_passed"), Some(0));
    assert_eq!(
        metric("governance_drills_total{result=\"failed\"}"),
        Some(1)
    );
    assert!(metric("governance_drill_last_timestamp_seconds").unwrap_or(0) > 1_700_000_000);
    let id = v["drill"]["id"].as_str().unwrap().to_owned();
    let record = wait_for_value(
        "the drill.failed record in the audit log",
        Duration::from_secs(10),
        || {
            audit_records(&daemon.audit())
                .into_iter()
                .find(|r| r["kind"] == "drill.failed" && r["drill"]["id"] == id.as_str())
        },
    );
    assert_eq!(record["type"], "lifecycle", "{record:#}");
    assert_eq!(record["counts"]["failed"], 1, "{record:#}");
    assert_eq!(record["counts"]["passed"], 1, "{record:#}");
    assert_eq!(record["counts"]["skipped"], 1, "{record:#}");
    assert_eq!(record["counts"]["checks"], 3, "{record:#}");
    assert_eq!(record["drill"]["checks"][0]["rule"], "drill-block/no-net");
    assert_eq!(record["drill"]["checks"][0]["passed"], false);
    let delivered = wait_for_value(
        "drill.failed to the subscriber",
        Duration::from_secs(10),
        || {
            rx.try_iter()
                .find(|l| l.contains("\"drill.failed\"") && l.contains(id.as_str()))
        },
    );
    assert!(delivered.contains("\"lifecycle\""), "{delivered}");
    // Our own child, by its pid.
    let _ = follower.kill();
    let _ = follower.wait();
    let verify = std::process::Command::new(governance_bin())
        .args(["audit", "verify"])
        .arg(daemon.audit())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "the drill record is in the hash chain: {verify:?}"
    );

    // 3. A reload writes the maps again: it passes. The weakening deleted the entries of both
    // generation slots, and a reload writes only what differs from what it recorded, so the
    // failed drill made the daemon forget what the slots hold: each of the next two reloads
    // (one per slot) reads its slot back and mends it.
    for (reload, passed) in [(1, 2), (2, 3)] {
        let out = daemon.cli(&["policy", "reload"]);
        assert!(out.status.success(), "{out:?}");
        let v = drill(true);
        assert!(
            drill_checks(&v)[0].contains("passed=true"),
            "after reload {reload}: {v:#}"
        );
        assert_eq!(metric("governance_drill_last_passed"), Some(1));
        assert_eq!(
            metric("governance_drills_total{result=\"passed\"}"),
            Some(passed)
        );
    }
    nothing_left("after the reload's drill");

    // 4. Stopped during a drill (the weakened rule's probe waits for an answer): the daemon
    // cleans up before it exits.
    assert!(weaken_net_rules(&pins, blocked.id()) > 0);
    let start_drill = || {
        std::process::Command::new(governance_bin())
            .args(["drill", "--socket"])
            .arg(daemon.socket())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // The canary lives while the weakened probe waits for its answer, about a second. On a busy
    // machine the drill may be slow to start, or end between two looks: a drill that ended
    // unseen is started again.
    let mut cli = start_drill();
    let mut during = false;
    for _ in 0..5 {
        let settled = poll_until(Duration::from_secs(60), || {
            during = !canary_cgroups().is_empty();
            during || matches!(cli.try_wait(), Ok(Some(_)))
        });
        assert!(
            settled,
            "timed out after 60 s waiting for the drill's canary cgroup (the drill still runs)"
        );
        if during {
            break;
        }
        let _ = cli.wait();
        cli = start_drill();
    }
    assert!(during, "no drill's canary cgroup seen in five drills");
    signal(&daemon, nix::sys::signal::SIGTERM);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = cli.wait();
    nothing_left("after a stop during a drill");
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run --drill-every`: drills run on their own, each recorded (`drill.passed`) and counted.
#[test]
fn drills_run_on_a_schedule() {
    require_root();
    let agent = TestCgroup::new("drill-every");
    let dir = policy_dir(
        "drill-every",
        &format!(
            "name: every\nagents: {{ cgroup: {a} }}\nrules:\n\
             \x20 - {{ id: no-net, network: {{ cidr: 10.252.0.0/16 }}, verdict: block, reason: r }}\n",
            a = agent.rel.display()
        ),
    );
    let pins = pin_dir("drill-every");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            pins.to_str().unwrap(),
            "--drill-every",
            "1s",
        ],
        &dir,
    );
    let drills = wait_for_value(
        "two scheduled drills in the audit log",
        Duration::from_secs(20),
        || {
            let passed: Vec<serde_json::Value> = audit_records(&daemon.audit())
                .into_iter()
                .filter(|r| r["kind"] == "drill.passed")
                .collect();
            (passed.len() >= 2).then_some(passed)
        },
    );
    assert_eq!(drills[0]["counts"]["passed"], 1, "{:#}", drills[0]);
    assert_eq!(
        drills[0]["drill"]["checks"][0]["rule"], "every/no-net",
        "{:#}",
        drills[0]
    );
    assert_ne!(drills[0]["drill"]["id"], drills[1]["drill"]["id"]);
    // Stopped (a drill under way finishes and cleans up first): no canary is left.
    stop_daemon(daemon);
    assert!(canary_cgroups().is_empty(), "no canary cgroup is left");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sequence rules on the host kernel, whose file hook cannot load (no BPF LSM): the agent's
/// armed state is written into the pinned table as the file hook writes it after a classified
/// read; then the network hooks refuse the armed agent's direct connects and datagrams outside
/// the allowlist (the event naming the sequence rule), and the proxy's view of the state (the
/// same pinned table) says the agent is armed. Controls: the allowlisted destination, and a
/// second agent under the same policy with no state.
#[test]
fn sequence_rule_state_refuses_direct_egress_and_reaches_the_proxy() {
    require_root();
    let a = TestCgroup::new("seq-agent-a");
    let b = TestCgroup::new("seq-agent-b");
    let (_out, out_addr) = listener([127, 0, 0, 1]);
    let (_ok, ok_addr) = listener([127, 0, 0, 2]);
    let glob = format!("governance-test-{}-*-seq-agent-*", std::process::id());
    let mut k = load(&format!(
        "name: seq\nagents: {{ cgroup: '{glob}' }}\nrules:\n\
         \x20 - id: no-exfil-after-pii\n    sequence:\n      after: {{ file: {{ prefix: /data/pii, access: [read] }} }}\n      then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }}, http: {{ except_hosts: [db-api.internal] }} }}\n    verdict: block\n    reason: no exfiltration after PII\n"
    ));
    for hook in ["connect4", "connect6", "sendmsg4", "sendmsg6"] {
        k.require(hook);
    }
    let rule = "seq/no-exfil-after-pii";
    // What the file hook writes on the first classified read.
    k.arm_sequence(a.id(), rule, 1, std::process::id());
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", out_addr.port())
        .parse()
        .unwrap();
    let cases = [
        (
            "sequence: connect out (host)",
            Attempt::connect(out_addr),
            Kind::Connect,
        ),
        (
            "sequence: IPv4-mapped IPv6 connect (host)",
            Attempt::connect(mapped),
            Kind::Connect,
        ),
        (
            "sequence: UDP datagram (host)",
            Attempt::SendTo {
                addr: "127.0.0.1:53".parse().unwrap(),
            },
            Kind::Send,
        ),
    ];
    for (case, attempt, kind) in &cases {
        redteam(case, "tried");
        let (pid, outcome) = run_in(Some(&a.path), "agent", attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
        assert_eq!(Kind::from_u8(ev.kind), Some(*kind), "{case}");
        assert_eq!(
            ev.rule_id,
            governance_common::class_id(k.generation, 1),
            "{case}"
        );
        assert_ne!(ev.flags & flags::SEQUENCE, 0, "{case}");
        redteam(case, "denied");
        let (_, outcome) = run_in(Some(&b.path), "agent", attempt);
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "{case}: the agent with no state"
        );
        redteam(case, "control");
    }
    let (_, outcome) = run_in(Some(&a.path), "agent", &Attempt::connect(ok_addr));
    assert_eq!(outcome, Outcome::Exited(0), "the allowlisted destination");
    // The proxy's view: the same pinned table, by agent.
    let source = kernel::armed_source(&k.pins, &k.agents);
    let view = |cg: &TestCgroup| {
        let agent = k.agents.iter().find(|x| x.cgroup_id == cg.id()).unwrap();
        source(&agent.agent_ref(), &[rule])
    };
    let armed = view(&a);
    assert_eq!(armed.len(), 1);
    assert_eq!(
        (armed[0].rule.as_str(), armed[0].by.pid),
        (rule, std::process::id())
    );
    assert!(view(&b).is_empty(), "the other agent is not armed");
}

/// A TLS server on 127.0.0.1 (a self-signed certificate, made with openssl here) that stands in
/// for an LLM provider: it completes the handshake whatever the server name and answers `ok`.
/// Returns the server (killed on drop), its port and the temporary directory.
fn stand_in_llm_host(name: &str) -> (governance_tests::Reaped, u16, PathBuf) {
    let dir = PathBuf::from(format!(
        "/tmp/governance-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=stand-in",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    let server = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1] + "/cert.pem", sys.argv[1] + "/key.pem")
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(16)
print(l.getsockname()[1], flush=True)
def serve(c):
    try:
        with ctx.wrap_socket(c, server_side=True) as s:
            s.sendall(b"ok")
    except Exception:
        pass
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let mut child = governance_tests::Reaped(
        Command::new("python3")
            .args(["-c", server])
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the stand-in's port");
    (child, port, dir)
}

/// A TLS client in `cgroup` (python's ssl, OpenSSL) that connects to the stand-in on
/// 127.0.0.1:`port` asking for `sni`, reads `ok`, prints `connected`, and stays alive until its
/// stdin closes (so the daemon can look its process up).
fn tls_client(cgroup: &Path, port: u16, sni: &str) -> governance_tests::Reaped {
    let client = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname=sys.argv[2]) as s:
    assert s.recv(2) == b"ok"
print("connected", flush=True)
sys.stdin.read()
"#;
    let mut child = governance_tests::Reaped(
        governance_tests::command_in(
            Some(cgroup),
            "python3",
            &["-c", client, &port.to_string(), sni],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "connected",
        "the TLS connection must succeed (discovery never refuses)"
    );
    child
}

/// Discovery: a process outside every agent that talks TLS to an LLM provider's host (a
/// stand-in on loopback; the client sends the server name `api.openai.com`) is a candidate
/// agent, listed by `governance discover` with its evidence and a selector for its cgroup, and
/// recorded in the audit log once. Controls: the same client asking for `example.org` (not on
/// the host list) is not a candidate; a process inside an agent doing the same is not either
/// (it is governed); every connection succeeds (discovery never refuses).
#[test]
fn discovery_finds_an_unlabelled_process_talking_to_an_llm_host() {
    require_root();
    let agent = TestCgroup::new("disc-agent");
    let outside = TestCgroup::new("disc-outside");
    let other = TestCgroup::new("disc-other");
    let dir = policy_dir(
        "disc",
        &format!(
            "name: disc\nagents: {{ cgroup: {} }}\ndefaults: {{ network: allow }}\n",
            agent.rel.display()
        ),
    );
    let pins = pin_dir("disc");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(daemon.hook_state("discover"), Some("attached".into()));
    let (_server, port, tmp) = stand_in_llm_host("disc");

    // Controls first: another name outside, and the LLM host's name inside an agent.
    let not_listed = tls_client(&other.path, port, "example.org");
    let governed = tls_client(&agent.path, port, "api.openai.com");
    let candidate = tls_client(&outside.path, port, "api.openai.com");
    let pid = candidate.id();
    let cg = format!("/{}", outside.rel.display());
    let (e, selector) = wait_for_value(
        "the candidate in `governance discover`",
        Duration::from_secs(20),
        || {
            daemon
                .discovered()
                .into_iter()
                .find(|(e, _)| e["cgroup"] == cg.as_str() && e["what"] == "sni")
        },
    );
    assert_eq!(e["value"], "api.openai.com", "{e}");
    assert_eq!(e["matched"], "api.openai.com", "{e}");
    assert_eq!(e["pid"], pid, "{e}");
    assert_eq!(e["attributed"], "pid", "{e}");
    assert_eq!(e["comm"], "python3", "{e}");
    assert_eq!(
        selector,
        format!("agents:\n  cgroup: {}", outside.rel.display()),
        "{e}"
    );
    // The audit log has the candidate record, once.
    let audit = daemon.audit();
    let records = wait_for_value("the discovery record", Duration::from_secs(10), || {
        let r: Vec<_> = audit_records(&audit)
            .into_iter()
            .filter(|r| r["type"] == "discovery" && r["candidate"]["cgroup"] == cg.as_str())
            .collect();
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["kind"], "candidate.sni");
    assert_eq!(records[0]["denied"], false);
    assert_eq!(records[0]["process"]["pid"], pid);
    // A second connection of the same process's cgroup is counted, not recorded again.
    let again = tls_client(&outside.path, port, "api.openai.com");
    drop(again);
    // The controls are not candidates (their ClientHellos were sent before the candidate's, so
    // the daemon has read them).
    let all = daemon.discovered();
    for (e, _) in &all {
        assert_ne!(
            e["cgroup"],
            format!("/{}", other.rel.display()).as_str(),
            "{e}"
        );
        assert_ne!(
            e["cgroup"],
            format!("/{}", agent.rel.display()).as_str(),
            "{e}"
        );
        assert_ne!(e["value"], "example.org", "{e}");
    }
    // Nothing the agent did was changed: its connect was decided by its policy (allowed), and
    // no discovery record names it.
    assert!(
        !audit_records(&audit)
            .iter()
            .any(|r| r["type"] == "discovery"
                && r["candidate"]["cgroup"] == format!("/{}", agent.rel.display()).as_str()),
    );
    drop((candidate, governed, not_listed));
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A daemon for the discovery tests: one agent (`agent`), network allowed, no proxy. (Keep the
/// pin directory: dropping it unloads the programs.)
fn discovery_daemon(
    name: &str,
    agent: &TestCgroup,
) -> (
    governance_tests::Daemon,
    PolicyDir,
    governance_tests::PinDir,
) {
    let dir = policy_dir(
        name,
        &format!(
            "name: {name}\nagents: {{ cgroup: {} }}\ndefaults: {{ network: allow }}\n",
            agent.rel.display()
        ),
    );
    let pins = pin_dir(name);
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    (daemon, dir, pins)
}

/// A python3 process in `cgroup` running `code` with `env`, that prints `ready` and then waits
/// for its stdin to close.
fn python_in(cgroup: &Path, args: &[&str], env: &[(&str, &Path)]) -> governance_tests::Reaped {
    governance_tests::spawn_ready(
        governance_tests::command_in(Some(cgroup), "python3", args).envs(env.iter().copied()),
        &format!("python3 {args:?}"),
    )
}

/// Discovery from /proc: a python process outside every agent that runs a module named like a
/// known agent framework (a tiny local package `langchain_core` on PYTHONPATH, made here: no
/// real framework is installed) is a candidate with framework evidence; one that runs a stdio
/// MCP server as its child (a local module `mcp`) is a candidate with MCP evidence, and so is
/// the server. Control: the same framework process inside an agent is not a candidate.
#[test]
fn discovery_finds_agent_frameworks_and_mcp_servers_outside_agents() {
    require_root();
    let agent = TestCgroup::new("discfw-agent");
    let outside = TestCgroup::new("discfw-outside");
    let (daemon, dir, _pins) = discovery_daemon("discfw", &agent);
    let pkgs = dir.join("pythonpath");
    for module in ["langchain_core", "mcp"] {
        std::fs::create_dir_all(pkgs.join(module)).unwrap();
        std::fs::write(pkgs.join(module).join("__init__.py"), "").unwrap();
        std::fs::write(
            pkgs.join(module).join("__main__.py"),
            "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n",
        )
        .unwrap();
    }
    let env = [("PYTHONPATH", pkgs.as_path())];
    let governed = python_in(&agent.path, &["-m", "langchain_core"], &env);
    let framework = python_in(&outside.path, &["-m", "langchain_core"], &env);
    let host = python_in(
        &outside.path,
        &[
            "-c",
            "import subprocess, sys\n\
             p = subprocess.Popen([sys.executable, '-m', 'mcp'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n\
             p.stdout.readline()\n\
             print('ready', flush=True)\n\
             sys.stdin.read()\n",
        ],
        &env,
    );
    let cg = format!("/{}", outside.rel.display());
    let find = |what: &str, pid: u32| {
        daemon
            .discovered()
            .into_iter()
            .find(|(e, _)| e["cgroup"] == cg.as_str() && e["what"] == what && e["pid"] == pid)
    };
    let (e, selector) = wait_for_value("the framework candidate", Duration::from_secs(30), || {
        find("framework", framework.id())
    });
    assert_eq!(e["value"], "langchain_core", "{e}");
    assert_eq!(e["matched"], "langchain", "{e}");
    assert_eq!(
        selector,
        format!("agents:\n  cgroup: {}", outside.rel.display())
    );
    let (e, _) = wait_for_value("the MCP host", Duration::from_secs(30), || {
        find("mcp", host.id())
    });
    assert!(
        e["value"]
            .as_str()
            .unwrap()
            .starts_with("runs MCP server pid "),
        "{e}"
    );
    let all = daemon.discovered();
    assert!(
        all.iter().any(|(e, _)| e["what"] == "mcp"
            && e["value"] == "mcp"
            && e["cgroup"] == cg.as_str()
            && e["pid"] != host.id()),
        "the server itself: {all:?}"
    );
    // Control: the agent's process (scanned in the same passes) is not a candidate.
    assert!(
        !all.iter().any(|(e, _)| e["pid"] == governed.id()),
        "{all:?}"
    );
    let records = audit_records(&daemon.audit());
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "candidate.framework" && r["candidate"]["pid"] == framework.id()),
        "{records:?}"
    );
    drop((framework, host, governed));
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Discovery by DNS: a process outside every agent, in a network namespace made here (with its
/// own /etc/resolv.conf in a mount namespace), asks a stand-in resolver on 127.0.0.1:53 for
/// `api.anthropic.com` through glibc (`getaddrinfo`): a candidate with dns evidence. Control: a
/// query for `example.org` from another cgroup is not. The stand-in answers NXDOMAIN; the
/// queries are not refused (the answers arrive).
#[test]
fn discovery_finds_dns_queries_for_llm_hosts() {
    require_root();
    let agent = TestCgroup::new("discdns-agent");
    let outside = TestCgroup::new("discdns-outside");
    let other = TestCgroup::new("discdns-other");
    let (daemon, dir, _pins) = discovery_daemon("discdns", &agent);
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions attempts:1 timeout:5\n",
    )
    .unwrap();
    let script = dir.join("query.py");
    std::fs::write(
        &script,
        "import socket, sys, threading\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 53))\n\
         def serve():\n\
         \x20   while True:\n\
         \x20       q, a = s.recvfrom(512)\n\
         \x20       # NXDOMAIN: the query back, with QR, RA and rcode 3.\n\
         \x20       s.sendto(q[:2] + bytes([q[2] | 0x80, 0x83]) + q[4:], a)\n\
         threading.Thread(target=serve, daemon=True).start()\n\
         try:\n\
         \x20   socket.getaddrinfo(sys.argv[1], 443)\n\
         except socket.gaierror as e:\n\
         \x20   assert e.errno == socket.EAI_NONAME, e\n\
         print('ready', flush=True)\n\
         sys.stdin.read()\n",
    )
    .unwrap();
    let run = |cg: &TestCgroup, name: &str| {
        governance_tests::spawn_ready(
            &mut governance_tests::command_in(
                Some(&cg.path),
                "unshare",
                &[
                    "--net",
                    "--mount",
                    "sh",
                    "-c",
                    "ip link set lo up && mount --bind \"$1\" /etc/resolv.conf && exec python3 \"$2\" \"$3\"",
                    "sh",
                    resolv.to_str().unwrap(),
                    script.to_str().unwrap(),
                    name,
                ],
            ),
            "the query was answered (never refused), so the resolver",
        )
    };
    let control = run(&other, "example.org");
    let candidate = run(&outside, "api.anthropic.com");
    let cg = format!("/{}", outside.rel.display());
    let mut found = None;
    poll_until(Duration::from_secs(20), || {
        found = daemon
            .discovered()
            .into_iter()
            .find(|(e, _)| e["cgroup"] == cg.as_str() && e["what"] == "dns");
        found.is_some()
    });
    let Some((e, _)) = found else {
        let out = daemon.cli(&["discover", "-o", "json"]);
        let status = daemon.cli(&["status", "-o", "json"]);
        panic!(
            "no dns candidate for {cg} within 20 s: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&status.stdout)
        );
    };
    assert_eq!(e["value"], "api.anthropic.com", "{e}");
    assert_eq!(e["attributed"], "pid", "{e}");
    assert_eq!(e["comm"], "python3", "{e}");
    let all = daemon.discovered();
    assert!(
        !all.iter()
            .any(|(e, _)| e["cgroup"] == format!("/{}", other.rel.display()).as_str()),
        "{all:?}"
    );
    drop((candidate, control));
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run --no-discover`: the kernel's discovery program is detached (its link pin removed: no
/// cost to processes outside agents), `governance discover` says it is off, and a TLS client
/// asking for an LLM host's name is no candidate. Control: the other discovery tests, where
/// the same client is one.
#[test]
fn no_discover_detaches_the_discovery_program() {
    require_root();
    let agent = TestCgroup::new("nodisc-agent");
    let outside = TestCgroup::new("nodisc-outside");
    let dir = policy_dir(
        "nodisc",
        &format!(
            "name: nodisc\nagents: {{ cgroup: {} }}\ndefaults: {{ network: allow }}\n",
            agent.rel.display()
        ),
    );
    let pins = pin_dir("nodisc");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--no-discover",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(!pins.join("links").join("discover").exists());
    let out = daemon.cli(&["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hook = status["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["program"] == "discover")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        hook["state"], "NOT AVAILABLE: off (--no-discover)",
        "{status}"
    );
    assert_eq!(
        status["degraded"], true,
        "degraded by the LSM hooks only: {status}"
    );
    let (_server, port, tmp) = stand_in_llm_host("nodisc");
    let client = tls_client(&outside.path, port, "api.openai.com");
    let out = daemon.cli(&["discover", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["enabled"], false, "{v}");
    assert_eq!(v["groups"], serde_json::json!([]), "{v}");
    let out = daemon.cli(&["discover"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("discovery is off"),
        "{out:?}"
    );
    drop(client);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Issue 17 item 3, reload: a generation is written over the slot retired at the previous flip
/// by writing only what differs from what that slot holds (recorded as written, not found by
/// walking every table). After each install both slots hold exactly what was recorded for them
/// (keys and values): the new generation in its slot, the one before in the other. The same
/// policy again writes nothing; a one-rule change writes only that rule's entries. A restarted
/// daemon, which adopts pins a previous process wrote, learns both slots by one walk. Each
/// slot's identity filter has exactly the bits of the identities the slot holds.
#[test]
fn a_reload_writes_only_what_differs_from_its_slot_also_after_a_restart() {
    require_root();
    let agent = TestCgroup::new("slots");
    let yaml = |cidr: &str, file: &str| {
        format!(
            "name: slots\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: net, network: {{ cidr: {cidr} }}, verdict: block, reason: test }}\n  - {{ id: file, file: {{ prefix: {file} }}, verdict: block, reason: test }}\n  - {{ id: tool, exec: {{ path: /usr/bin/true }}, verdict: block, reason: test }}\n",
            agent.rel.display()
        )
    };
    let mut k = load(&yaml("127.0.0.1/32", "/tmp"));
    let root = agents::cgroup2_mount().unwrap();
    let check = |e: &mut kernel::Enforcer, generation: u32| {
        let walked = e.walk_slots().unwrap();
        for slot in [0, 1] {
            let recorded = e.recorded_slot(slot).expect("the slot is known").clone();
            assert_eq!(
                walked[slot as usize], recorded,
                "generation {generation}: slot {slot} holds what was recorded"
            );
            // The walks skip a level whose bit is clear: every identity in the slot has its
            // bit, and (written for the slot's generation) nothing else does.
            let mut want = vec![0u64; governance_common::IDENT_FILTER_WORDS];
            for ((_, dev, ino, scope, _), _) in walked[slot as usize].idents.iter() {
                let bit = governance_common::ident_filter_bit(*dev, *ino, *scope);
                want[(bit / 64) as usize] |= 1 << (bit % 64);
            }
            assert!(
                e.ident_filter(slot).unwrap()[..] == want[..],
                "generation {generation}: slot {slot}'s identity filter is not exactly its identities"
            );
        }
        let active = e
            .recorded_slot(governance_common::slot(generation))
            .unwrap();
        assert!(active.len() > 3, "{active:?}");
        assert!(
            !active.idents.is_empty(),
            "the file rule's identities: {active:?}"
        );
        assert_eq!(e.generation().unwrap(), generation);
    };
    check(&mut k.enforcer, 1);
    let install = |e: &mut kernel::Enforcer, generation: u32, yaml: String| {
        let set = governance::policy::parse(&[("p.yaml".into(), yaml)]).unwrap();
        let found = agents::discover(&root, &set, false, None).unwrap();
        let compiled = kernel::compile(&set, &found, generation, &kernel::Protect::default());
        e.install(compiled).unwrap();
        e.last_install()
    };
    // Different entries in each generation: every key of the slot's old one must go.
    let second = install(&mut k.enforcer, 2, yaml("127.0.0.2/32", "/var/tmp"));
    check(&mut k.enforcer, 2);
    let third = install(&mut k.enforcer, 3, yaml("10.0.0.0/8", "/srv"));
    check(&mut k.enforcer, 3);
    assert_eq!(second.deleted, 0, "slot 0 was empty: {second:?}");
    assert!(third.deleted > 0 && third.written > 0, "{third:?}");
    // The policy of generation 2 again, into its slot: nothing to write.
    let same = install(&mut k.enforcer, 4, yaml("127.0.0.2/32", "/var/tmp"));
    check(&mut k.enforcer, 4);
    assert_eq!(same, kernel::Written::default(), "the same policy again");
    let same = install(&mut k.enforcer, 5, yaml("10.0.0.0/8", "/srv"));
    check(&mut k.enforcer, 5);
    assert_eq!(same, kernel::Written::default(), "the same policy again");
    // One rule changed (its CIDR): its network entries go, new ones come (an IPv4 network is
    // two: IPv4-mapped and its NAT64 spelling).
    let one = install(&mut k.enforcer, 6, yaml("127.0.0.3/32", "/var/tmp"));
    check(&mut k.enforcer, 6);
    assert_eq!(
        one,
        kernel::Written {
            written: 2,
            deleted: 2
        },
        "one network rule changed"
    );
    // A restart: a new process adopts the pins and knows nothing of what they hold.
    let mut adopted = kernel::Enforcer::adopt(&k.pins).unwrap();
    assert!(adopted.recorded_slot(0).is_none() && adopted.recorded_slot(1).is_none());
    let learned = install(&mut adopted, 7, yaml("10.0.0.0/8", "/srv"));
    check(&mut adopted, 7);
    assert_eq!(learned, kernel::Written::default(), "learned by the walk");
    install(&mut adopted, 8, yaml("192.168.0.0/16", "/opt"));
    check(&mut adopted, 8);
    install(&mut adopted, 9, yaml("127.0.0.1/32", "/tmp"));
    check(&mut adopted, 9);
}

/// Issue 17, the identity filter with a drill's canary: the canary's identity entries go into
/// the active slot, beside the generation's, and the walks there skip a level whose bit is
/// clear. The slot's filter gains the canary's identities (and keeps every bit it had) before
/// the entries are written.
#[test]
fn a_canary_s_identities_are_added_to_the_active_slot_s_filter() {
    require_root();
    let agent = TestCgroup::new("filter-agent");
    let canary = TestCgroup::new("filter-canary");
    let yaml = |cgroup: &TestCgroup, prefix: &str| {
        format!(
            "name: f\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: file, file: {{ prefix: {prefix} }}, verdict: block, reason: test }}\n",
            cgroup.rel.display()
        )
    };
    let mut k = load(&yaml(&agent, "/tmp"));
    let slot = governance_common::slot(k.generation);
    let before = k.enforcer.ident_filter(slot).unwrap();
    let set = governance::policy::parse(&[("c.yaml".into(), yaml(&canary, "/var/tmp"))]).unwrap();
    let root = agents::cgroup2_mount().unwrap();
    let found = agents::discover(&root, &set, false, None).unwrap();
    let first_class = 0xc000;
    let compiled = kernel::compile_from(
        &set,
        &found,
        k.generation,
        &kernel::Protect::default(),
        first_class,
    );
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
    let written = k.enforcer.add_canary(compiled).unwrap();
    let after = k.enforcer.ident_filter(slot).unwrap();
    let walked = k.enforcer.walk_slots().unwrap();
    let canary_idents: Vec<_> = walked[slot as usize]
        .idents
        .iter()
        .filter(|((class, ..), _)| governance_common::id_number(*class) >= first_class)
        .map(|((_, dev, ino, scope, _), _)| (*dev, *ino, *scope))
        .collect();
    assert!(
        !canary_idents.is_empty(),
        "the canary's file rule has identities"
    );
    let has = |filter: &[u64], &(dev, ino, scope): &(u32, u64, u32)| {
        let bit = governance_common::ident_filter_bit(dev, ino, scope);
        filter[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    };
    for id in &canary_idents {
        assert!(
            has(&after[..], id),
            "the canary's identity {id:?} (device, inode, scope) has no bit in the active slot's filter"
        );
    }
    assert!(
        canary_idents.iter().any(|id| !has(&before[..], id)),
        "some identity of the canary was new to the slot's filter"
    );
    for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
        assert_eq!(b & a, *b, "word {i}: the active slot's filter lost bits");
    }
    k.enforcer.remove_canary(&written).unwrap();
}

/// Red team round 17: one file or socket named by two exact rules (hard links) gets the more
/// severe answer, whichever name sorts last (the later name's used to win); and a drill's
/// canary leaves the sockets the daemon follows as the generation's, so a rule's socket bound
/// again after a drill still asks for the next generation (the canary's install used to take
/// the list over).
#[test]
fn one_object_named_twice_gets_the_severer_rule_and_a_canary_keeps_the_followed_sockets() {
    require_root();
    let agent = TestCgroup::new("twice-agent");
    let canary = TestCgroup::new("twice-canary");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // Each pair is one file: blocked by the name that sorts first, then by the one that sorts
    // last.
    for (first, second) in [("a-blocked", "b-allowed"), ("c-allowed", "d-blocked")] {
        std::fs::write(dir.path().join(first), "#!/bin/sh\n").unwrap();
        std::fs::hard_link(dir.path().join(first), dir.path().join(second)).unwrap();
    }
    let sock = dir.path().join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::hard_link(&sock, dir.path().join("t.sock")).unwrap();
    let rule = |id: &str, what: &str, verdict: &str| {
        format!("  - {{ id: {id}, {what}, verdict: {verdict}, reason: test }}\n")
    };
    let yaml = format!(
        "name: twice\nagents: {{ cgroup: {} }}\nrules:\n{}{}{}{}{}{}",
        agent.rel.display(),
        rule("a", &format!("exec: {{ path: {d}/a-blocked }}"), "block"),
        rule("b", &format!("exec: {{ path: {d}/b-allowed }}"), "allow"),
        rule("c", &format!("exec: {{ path: {d}/c-allowed }}"), "allow"),
        rule("d", &format!("exec: {{ path: {d}/d-blocked }}"), "block"),
        rule("s", &format!("unix: {{ path: {d}/s.sock }}"), "block"),
        rule("t", &format!("unix: {{ path: {d}/t.sock }}"), "allow"),
    );
    let mut k = load(&yaml);
    let slot = governance_common::slot(k.generation);
    let walked = k.enforcer.walk_slots().unwrap();
    let walked = &walked[slot as usize];
    let verdicts = |pairs: Vec<&governance_common::RulePair>| {
        pairs
            .into_iter()
            .map(|v| Verdict::from_u8(v.enforce.verdict))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        verdicts(walked.exec.iter().map(|(_, v)| v).collect()),
        [Some(Verdict::Block); 2],
        "each file blocked, whichever of its names sorts last"
    );
    assert_eq!(
        verdicts(walked.unix.iter().map(|(_, v)| v).collect()),
        [Some(Verdict::Block)],
        "the socket blocked"
    );
    // A drill's canary, governed by a policy without `unix` rules.
    let followed = k.enforcer.unix_rule_paths();
    assert_eq!(followed, [sock.clone(), dir.path().join("t.sock")]);
    let set = governance::policy::parse(&[(
        "c.yaml".into(),
        format!(
            "name: c\nagents: {{ cgroup: {} }}\nrules:\n{}",
            canary.rel.display(),
            rule("x", "network: { cidr: 192.0.2.0/24 }", "block")
        ),
    )])
    .unwrap();
    let root = agents::cgroup2_mount().unwrap();
    let found = agents::discover(&root, &set, false, None).unwrap();
    let compiled = kernel::compile_from(
        &set,
        &found,
        k.generation,
        &kernel::Protect::default(),
        0xc000,
    );
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
    let written = k.enforcer.add_canary(compiled).unwrap();
    assert_eq!(
        k.enforcer.unix_rule_paths(),
        followed,
        "the canary's install left the followed sockets"
    );
    k.enforcer.remove_canary(&written).unwrap();
    assert!(!k.enforcer.unix_sockets_changed().unwrap().rules);
    // The socket's server binds it again: a new socket file the next generation must name.
    drop(listener);
    std::fs::remove_file(&sock).unwrap();
    let _again = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    assert!(
        k.enforcer.unix_sockets_changed().unwrap().rules,
        "a rule's socket bound again asks for the next generation"
    );
}

/// The bypass of connect-time checks: a connection made before the arming read keeps sending.
/// `sequence_egress` (cgroup_skb/egress) drops each packet of an armed agent outside the
/// allowlist, on connections of any age. Armed as the file hook arms (the host kernel has no
/// LSM): by writing SEQ_STATE.
#[test]
fn sequence_rule_drops_packets_of_connections_made_before_the_arming() {
    require_root();
    let a = TestCgroup::new("seqpkt-agent-a");
    let b = TestCgroup::new("seqpkt-agent-b");
    let glob = format!("governance-test-{}-*-seqpkt-agent-*", std::process::id());
    let mut k = load(&format!(
        "name: seq\nagents: {{ cgroup: '{glob}' }}\nrules:\n\
         \x20 - id: no-exfil-after-pii\n    sequence:\n      after: {{ file: {{ prefix: /data/pii, access: [read] }} }}\n      then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }} }}\n    verdict: block\n    reason: no exfiltration after PII\n"
    ));
    k.require("sequence_egress");
    let mut armed = Established::start(Some(&a.path), None);
    let mut unarmed = Established::start(Some(&b.path), None);
    let mut outside = Established::start(None, None);
    let rule = "seq/no-exfil-after-pii";
    k.arm_sequence(a.id(), rule, 1, armed.child.id());
    let case = "sequence: send on a TCP connection made before the arming (host)";
    redteam(case, "tried");
    let udp_result = armed.send_after();
    let refused = |k: &mut governance_tests::Loaded, port: u16| {
        k.event_where(|e| {
            e.agent_cgroup == a.id()
                && e.port == port
                && Kind::from_u8(e.kind) == Some(Kind::Send)
                && e.flags & flags::DENIED != 0
                && e.flags & flags::SEQUENCE != 0
        })
    };
    let ev = refused(&mut k, armed.out_port);
    assert_eq!(ev.rule_id, k.rule(1), "{case}");
    assert_eq!(ev.detail, governance_common::proto::TCP, "{case}");
    // The packet was dropped when the event was written: nothing more arrives.
    assert!(
        !Established::tcp_got_after(&armed.out, Duration::from_millis(500)),
        "{case}: the listener got the data"
    );
    redteam(case, "denied");
    let case = "sequence: send on a connected UDP socket made before the arming (host)";
    redteam(case, "tried");
    let ev = refused(&mut k, armed.udp_port);
    assert_eq!(ev.detail, governance_common::proto::UDP, "{case}");
    assert_eq!(udp_result, "EPERM", "{case}: the sender is told");
    assert!(
        !armed.udp_got_after(Duration::from_millis(500)),
        "{case}: the datagram arrived"
    );
    redteam(case, "denied");
    // Controls: the allowlisted destination of the armed agent; the unarmed agent under the
    // same policy; a process outside every agent.
    assert!(
        Established::tcp_got_after(&armed.ok, Duration::from_secs(5)),
        "the armed agent's allowlisted connection"
    );
    for (who, e) in [("unarmed agent", &mut unarmed), ("outside", &mut outside)] {
        assert_eq!(e.send_after(), "ok", "{who}");
        assert!(
            Established::tcp_got_after(&e.out, Duration::from_secs(5)),
            "{who}: TCP"
        );
        assert!(
            Established::tcp_got_after(&e.ok, Duration::from_secs(5)),
            "{who}: TCP allowlisted"
        );
        assert!(e.udp_got_after(Duration::from_secs(5)), "{who}: UDP");
    }
    for case in [
        "sequence: send on a TCP connection made before the arming (host)",
        "sequence: send on a connected UDP socket made before the arming (host)",
    ] {
        redteam(case, "control");
    }
}

/// A shadow sequence rule, armed: packets on a connection made before the arming are reported
/// (`SHADOW`, `SEQUENCE`, not denied) and still delivered.
#[test]
fn shadow_sequence_rule_reports_packets_of_old_connections_and_drops_nothing() {
    require_root();
    let a = TestCgroup::new("seqshadow-agent");
    let glob = format!("governance-test-{}-*-seqshadow-agent", std::process::id());
    let mut k = load(&format!(
        "name: seq\nagents: {{ cgroup: '{glob}' }}\nrules:\n\
         \x20 - id: no-exfil-after-pii\n    mode: shadow\n    sequence:\n      after: {{ file: {{ prefix: /data/pii, access: [read] }} }}\n      then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }} }}\n    verdict: block\n    reason: no exfiltration after PII\n"
    ));
    k.require("sequence_egress");
    let mut armed = Established::start(Some(&a.path), None);
    k.arm_sequence(a.id(), "seq/no-exfil-after-pii", 1, armed.child.id());
    assert_eq!(armed.send_after(), "ok", "a shadow rule refuses nothing");
    let ev = k.event_where(|e| {
        e.agent_cgroup == a.id()
            && e.port == armed.out_port
            && Kind::from_u8(e.kind) == Some(Kind::Send)
            && e.flags & flags::SEQUENCE != 0
    });
    assert_eq!(ev.flags & flags::DENIED, 0, "reported, not denied");
    assert_ne!(ev.flags & flags::SHADOW, 0);
    assert_eq!(ev.shadow_rule_id, k.rule(1));
    assert!(Established::tcp_got_after(
        &armed.out,
        Duration::from_secs(5)
    ));
    assert!(armed.udp_got_after(Duration::from_secs(5)));
    assert!(Established::tcp_got_after(
        &armed.ok,
        Duration::from_secs(5)
    ));
}

/// `sequence_egress` skips its cgroup walk while the active generation has no sequence rule
/// (`SEQ_ANY`, set per slot with the slot's tables). The flag follows the generation: a
/// reload that adds a sequence rule makes the packets of connections made before both the
/// reload and the arming droppable; a reload that removes it clears the flag. Controls: with
/// no sequence rule the same connections send, before and after.
#[test]
fn sequence_egress_flag_follows_the_generation_across_reloads() {
    use aya::maps::{Array, Map, MapData};
    require_root();
    let a = TestCgroup::new("seqany-agent");
    let glob = format!("governance-test-{}-*-seqany-agent", std::process::id());
    let plain = format!(
        "name: seq\nagents: {{ cgroup: '{glob}' }}\nrules:\n\
         \x20 - id: no-pii-writes\n    file: {{ prefix: /data/pii, access: [write] }}\n    verdict: block\n    reason: read only\n"
    );
    let sequence = format!(
        "name: seq\nagents: {{ cgroup: '{glob}' }}\nrules:\n\
         \x20 - id: no-exfil-after-pii\n    sequence:\n      after: {{ file: {{ prefix: /data/pii, access: [read] }} }}\n      then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }} }}\n    verdict: block\n    reason: no exfiltration after PII\n"
    );
    let mut k = load(&plain);
    k.require("sequence_egress");
    let maps = k.pins.join(governance_common::pins::MAPS);
    let flags_now = || -> [u32; 2] {
        let map = Map::from_map_data(MapData::from_pin(maps.join("SEQ_ANY")).unwrap()).unwrap();
        let any: Array<_, u32> = Array::try_from(map).unwrap();
        [any.get(&0, 0).unwrap(), any.get(&1, 0).unwrap()]
    };
    assert_eq!(flags_now(), [0, 0], "no sequence rule: no slot flagged");
    let mut conn = Established::start(Some(&a.path), None);
    assert_eq!(conn.send_after(), "ok", "control: no sequence rule");
    assert!(Established::tcp_got_after(
        &conn.out,
        Duration::from_secs(5)
    ));
    assert!(conn.udp_got_after(Duration::from_secs(5)));

    k.reload(&sequence);
    let slot = governance_common::slot(k.generation) as usize;
    let mut want = [0, 0];
    want[slot] = 1;
    assert_eq!(
        flags_now(),
        want,
        "the active slot flagged, the old one cleared"
    );
    k.arm_sequence(a.id(), "seq/no-exfil-after-pii", 1, conn.child.id());
    assert_eq!(
        conn.send_after(),
        "EPERM",
        "a connection made before the reload and the arming is refused after both"
    );
    let ev = k.event_where(|e| {
        e.agent_cgroup == a.id()
            && e.port == conn.out_port
            && Kind::from_u8(e.kind) == Some(Kind::Send)
            && e.flags & flags::DENIED != 0
            && e.flags & flags::SEQUENCE != 0
    });
    assert_eq!(ev.rule_id, k.rule(1));
    assert!(
        !Established::tcp_got_after(&conn.out, Duration::from_millis(500)),
        "the listener got the data"
    );

    k.reload(&plain);
    assert_eq!(
        flags_now(),
        [0, 0],
        "the sequence rule gone: no slot flagged"
    );
    assert_eq!(conn.send_after(), "ok", "control: the rule removed");
    assert!(
        conn.udp_got_after(Duration::from_secs(5)),
        "control: the datagram arrives"
    );
}

/// A drill's HTTP checks go through the proxy, from the canary: a block rule's request (made up
/// from its host, method, path and body condition) and the default-deny probe are refused by
/// the proxy, naming the rule: passed. With the kernel's record of where the proxy listens
/// zeroed in the pinned PROXY map, the canary's connection is no longer known to the proxy,
/// which refuses it as unidentified (`builtin:identity`), not by the rule: the drill fails. Restored,
/// it passes again. Nothing is left behind.
#[test]
fn a_drill_sends_http_checks_through_the_proxy_and_fails_when_the_kernel_loses_it() {
    require_root();
    let cg = TestCgroup::new("drill-http");
    let dir = policy_dir(
        "drill-http",
        &format!(
            "name: drill-http\nagents: {{ cgroup: {a} }}\ndefaults: {{ http: block }}\nrules:\n\
             \x20 - {{ id: small, http: {{ host: pay.drill.example, method: POST, path: /v1/refunds }}, verdict: allow, reason: r }}\n\
             \x20 - {{ id: large, http: {{ host: pay.drill.example, method: POST, path: /v1/refunds, body: ['$.amount > 100'] }}, verdict: block, reason: r }}\n",
            a = cg.rel.display()
        ),
    );
    let pins = pin_dir("drill-http");
    let (mut daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--quiet",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    let drill = |want_ok: bool| -> Vec<String> {
        let out = daemon.cli(&["drill", "-o", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(out.status.success(), want_ok, "{v:#}\n{out:?}");
        assert!(canary_cgroups().is_empty(), "a canary cgroup is left");
        drill_checks(&v)
    };
    let passing = [
        "drill-http/large http POST pay.drill.example/v1/refunds {\"amount\":101} passed=true \
         got=refused (HTTP 403, rule drill-http/large) skipped=-",
        "default http GET governance-drill.invalid/ passed=true got=refused (HTTP 403, rule default) \
         skipped=-",
    ];
    assert_eq!(drill(true), passing);

    // Weakened: the proxy's address zeroed in the kernel.
    let mut proxy: aya::maps::Array<_, governance_common::ProxyAddr> = aya::maps::Array::try_from(
        aya::maps::Map::Array(aya::maps::MapData::from_pin(pins.join("maps/PROXY")).unwrap()),
    )
    .unwrap();
    let saved = proxy.get(&0, 0).unwrap();
    assert_eq!(saved.enabled, 1, "{saved:?}");
    proxy
        .set(0, governance_common::ProxyAddr::default(), 0)
        .unwrap();
    let got = drill(false);
    assert_eq!(got.len(), 2, "{got:#?}");
    for (line, want) in got.iter().zip([
        "drill-http/large http POST pay.drill.example/v1/refunds {\"amount\":101} passed=false got=HTTP 403 by builtin:identity (",
        "default http GET governance-drill.invalid/ passed=false got=HTTP 403 by builtin:identity (",
    ]) {
        assert!(line.starts_with(want), "{line}\n{got:#?}");
    }

    // Restored: it passes again.
    proxy.set(0, saved, 0).unwrap();
    assert_eq!(drill(true), passing);
    daemon.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process of an agent that connects where it is told, for the sandbox tests: the kernel's
/// mark is per process, so the connects that mark it and those that probe it must come from
/// the same process. A python3 whose second thread serves lines of stdin: `HOST PORT` connects
/// and answers `ok` or `errno N`; `leave` makes the main thread exit by itself (the raw `exit`
/// syscall, x86_64's number, as `pthread_exit` does); `exec HOST PORT` makes the serving thread
/// exec a python3 that makes that connect and answers the same way.
struct Connector(
    governance_tests::Reaped,
    std::io::BufReader<std::process::ChildStdout>,
);

const CONNECTOR: &str = "import ctypes, os, socket, sys, threading\n\
    leave = threading.Event()\n\
    def connect(host, port):\n\
    \x20   s = socket.socket()\n\
    \x20   try:\n\
    \x20       s.connect((host, int(port)))\n\
    \x20       return 'ok'\n\
    \x20   except OSError as e:\n\
    \x20       return 'errno %d' % e.errno\n\
    \x20   finally:\n\
    \x20       s.close()\n\
    def serve():\n\
    \x20   for line in sys.stdin:\n\
    \x20       cmd = line.split()\n\
    \x20       if cmd[0] == 'leave':\n\
    \x20           leave.set()\n\
    \x20       elif cmd[0] == 'exec':\n\
    \x20           code = 'import socket, sys\\ns = socket.socket()\\ntry:\\n    s.connect((%r, %s)); print(\"ok\", flush=True)\\nexcept OSError as e:\\n    print(\"errno\", e.errno, flush=True)\\nsys.stdin.read()' % (cmd[1], cmd[2])\n\
    \x20           os.execv(sys.executable, [sys.executable, '-c', code])\n\
    \x20       else:\n\
    \x20           print(connect(*cmd), flush=True)\n\
    threading.Thread(target=serve, daemon=True).start()\n\
    print('ready', flush=True)\n\
    leave.wait()\n\
    ctypes.CDLL(None).syscall(60, 0)\n";

impl Connector {
    fn start(cgroup: &Path) -> Self {
        let mut child = python_in(cgroup, &["-c", CONNECTOR], &[]);
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Self(child, out)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Send one command line.
    fn send(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next answer.
    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.1.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    /// Connect to `addr`: "ok" or "errno N".
    fn connect(&mut self, addr: SocketAddr) -> String {
        self.send(&format!("{} {}", addr.ip(), addr.port()));
        self.answer()
    }
}

/// The policy of the sandbox-mark tests: connecting to `enter` sandboxes the process under
/// `jail` (no network). With `other`, a second profile (`open`, network through the proxy)
/// and a rule using it come first, which numbers the profiles' classes differently.
fn marks_policy(agent: &TestCgroup, enter: SocketAddr, other: Option<SocketAddr>) -> String {
    let mut doc = format!(
        "name: marks\nagents: {{ cgroup: {} }}\nsandbox_profiles:\n  jail: {{ network: none }}\n",
        agent.rel.display()
    );
    if other.is_some() {
        doc.push_str("  open: { network: proxy }\n");
    }
    doc.push_str("rules:\n");
    if let Some(o) = other {
        doc.push_str(&format!(
            "  - {{ id: other, network: {{ cidr: {}/32 }}, verdict: sandbox, sandbox: {{ profile: open }}, reason: test }}\n",
            o.ip()
        ));
    }
    doc.push_str(&format!(
        "  - {{ id: enter, network: {{ cidr: {}/32 }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: test }}\n",
        enter.ip()
    ));
    doc
}

/// A sandboxed process stays under its own profile when a reload changes which profiles the
/// generation has: a process that `jail` (no network) holds must not find itself under
/// another profile (here `open`, network through the proxy, which lets its connect through)
/// because a profile was added before it. The mark names the profile (a hash of its name,
/// looked up under the process's own agent), not its position. Controls: before the mark and
/// in a sibling process that was never marked, the same connect goes through.
#[test]
fn a_sandbox_mark_keeps_its_profile_across_a_reload_that_adds_profiles() {
    require_root();
    let agent = TestCgroup::new("marks");
    let (_enter_l, enter) = listener([127, 0, 0, 21]);
    let (_probe_l, probe) = listener([127, 0, 0, 22]);
    let other = SocketAddr::from(([127, 0, 0, 23], 9));
    let dir = policy_dir("marks", &marks_policy(&agent, enter, None));
    let pins = pin_dir("marks");
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--quiet",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(seen.contains("as generation 1"), "{seen}");
    let mut marked = Connector::start(&agent.path);
    assert_eq!(marked.connect(probe), "ok", "control: before the mark");
    assert_eq!(
        marked.connect(enter),
        "ok",
        "a sandbox verdict lets the action go on"
    );
    assert_eq!(
        marked.connect(probe),
        format!("errno {}", libc::EPERM),
        "jail: no network"
    );
    std::fs::write(dir.join("p.yaml"), marks_policy(&agent, enter, Some(other))).unwrap();
    daemon.wait_for("generation 2 is enforcing");
    redteam("sandbox mark across a reload that adds a profile", "tried");
    assert_eq!(
        marked.connect(probe),
        format!("errno {}", libc::EPERM),
        "still jail after the reload, not the profile that took its place"
    );
    redteam("sandbox mark across a reload that adds a profile", "denied");
    let mut sibling = Connector::start(&agent.path);
    assert_eq!(
        sibling.connect(probe),
        "ok",
        "control: a process never marked"
    );
    redteam(
        "sandbox mark across a reload that adds a profile",
        "control",
    );
    drop((marked, sibling));
    stop_daemon(daemon);
    unload(&pins);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Red team round 5, F1: a process sandboxed under `network: none` may not reach the policy
/// proxy either: through it, it would reach everything the proxy does (an explicit
/// `GET http://…` or `CONNECT` was answered 200). Its connect to the proxy's address is decided
/// by its profile's network table, which refuses it, and reported as the profile's refusal.
/// Controls: the same process reaches the proxy before its verdict; a sibling never sandboxed
/// and a process sandboxed under `network: proxy` reach it after.
#[test]
fn a_network_none_sandbox_may_not_reach_the_proxy() {
    require_root();
    let agent = TestCgroup::new("sbx-none");
    let (proxy, proxy_addr) = listener([127, 0, 0, 41]);
    // The kernel sends agents only to a listener marked as the proxy's.
    kernel::mark_proxy_listener(std::os::fd::AsFd::as_fd(&proxy)).unwrap();
    let (_jail_l, jail) = listener([127, 0, 0, 42]);
    let (_proxied_l, proxied) = listener([127, 0, 0, 43]);
    proxy.set_nonblocking(true).unwrap();
    let mut k = load(&format!(
        "name: sbxnone\nagents: {{ cgroup: {} }}\nsandbox_profiles:\n\
         \x20 jail: {{ network: none }}\n\
         \x20 proxied: {{ network: proxy }}\nrules:\n\
         \x20 - {{ id: jail, network: {{ cidr: {}/32 }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: test }}\n\
         \x20 - {{ id: proxied, network: {{ cidr: {}/32 }}, verdict: sandbox, sandbox: {{ profile: proxied }}, reason: test }}\n",
        agent.rel.display(),
        jail.ip(),
        proxied.ip(),
    ));
    k.require("sock_ops");
    let SocketAddr::V4(p4) = proxy_addr else {
        unreachable!()
    };
    k.enforcer
        .set_proxy(Some((*p4.ip(), std::net::Ipv6Addr::LOCALHOST, p4.port())))
        .unwrap();
    let accepted = |l: &TcpListener| accept_within(l, Duration::from_secs(5));
    let queued = |l: &TcpListener| accept_within(l, Duration::ZERO);
    let refused = format!("errno {}", libc::EPERM);
    let mut jailed = Connector::start(&agent.path);
    assert_eq!(
        jailed.connect(proxy_addr),
        "ok",
        "control: before the verdict"
    );
    assert!(accepted(&proxy).is_some());
    assert_eq!(
        jailed.connect(jail),
        "ok",
        "a sandbox verdict lets the action go on"
    );
    let case = "F1 a network:none sandboxed process connects to the policy proxy (host)";
    redteam(case, "tried");
    assert_eq!(jailed.connect(proxy_addr), refused, "{case}");
    assert!(
        queued(&proxy).is_none(),
        "{case}: nothing reached the proxy"
    );
    let pid = jailed.pid();
    let ev = k.event_where(|e| {
        e.tgid == pid && e.port == proxy_addr.port() && e.flags & flags::DENIED != 0
    });
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Connect));
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Block));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default), "{ev:?}");
    assert_ne!(ev.flags & flags::SANDBOXED, 0);
    redteam(case, "denied");
    let mut sibling = Connector::start(&agent.path);
    assert_eq!(
        sibling.connect(proxy_addr),
        "ok",
        "control: a process never sandboxed"
    );
    assert!(accepted(&proxy).is_some());
    let mut through = Connector::start(&agent.path);
    assert_eq!(through.connect(proxied), "ok");
    assert_eq!(
        through.connect(proxy_addr),
        "ok",
        "control: sandboxed under network: proxy"
    );
    assert!(accepted(&proxy).is_some());
    redteam(case, "control");
    // A process under one profile is not moved to another by a second sandbox verdict (the
    // way from `none` to `proxy` through a file rule): the action is refused, and the process
    // keeps the profile it has.
    let case = "R5 a sandboxed process triggers another profile's sandbox rule";
    redteam(case, "tried");
    assert_eq!(through.connect(jail), refused, "{case}");
    let pid = through.pid();
    let ev =
        k.event_where(|e| e.tgid == pid && e.port == jail.port() && e.flags & flags::DENIED != 0);
    assert_eq!(
        Verdict::from_u8(ev.verdict),
        Some(Verdict::Sandbox),
        "{ev:?}"
    );
    assert_ne!(ev.flags & flags::SANDBOXED, 0);
    assert_eq!(
        through.connect(proxy_addr),
        "ok",
        "{case}: the process keeps its own profile"
    );
    assert!(accepted(&proxy).is_some());
    redteam(case, "denied");
    let mut fresh = Connector::start(&agent.path);
    assert_eq!(
        fresh.connect(jail),
        "ok",
        "control: a first sandbox verdict"
    );
    redteam(case, "control");
}

/// Red team round 5, F5: a `network: proxy` sandbox is never looser than its agent. A
/// destination the agent's own `block` rule refuses (a stand-in for the cloud metadata
/// service) stays refused, by that rule, to a sandboxed process; it used to be sent to the
/// proxy, which in transparent mode applies only HTTP rules and answered 200. Controls: the
/// agent refuses it unsandboxed too; a destination the agent allows goes direct unsandboxed and
/// through the proxy sandboxed.
#[test]
fn a_proxy_sandbox_keeps_its_agent_s_network_blocks() {
    require_root();
    let agent = TestCgroup::new("sbx-proxy");
    let (proxy, proxy_addr) = listener([127, 0, 0, 44]);
    // The kernel sends agents only to a listener marked as the proxy's.
    kernel::mark_proxy_listener(std::os::fd::AsFd::as_fd(&proxy)).unwrap();
    let (blocked_l, blocked) = listener([127, 0, 0, 45]);
    let (open_l, open) = listener([127, 0, 0, 46]);
    let (_enter_l, enter) = listener([127, 0, 0, 47]);
    for l in [&proxy, &blocked_l, &open_l] {
        l.set_nonblocking(true).unwrap();
    }
    let mut k = load(&format!(
        "name: sbxproxy\nagents: {{ cgroup: {} }}\nsandbox_profiles:\n\
         \x20 proxied: {{ network: proxy }}\nrules:\n\
         \x20 - {{ id: metadata, network: {{ cidr: {}/32 }}, verdict: block, reason: no process of the agent may reach it }}\n\
         \x20 - {{ id: enter, network: {{ cidr: {}/32 }}, verdict: sandbox, sandbox: {{ profile: proxied }}, reason: test }}\n",
        agent.rel.display(),
        blocked.ip(),
        enter.ip(),
    ));
    k.require("sock_ops");
    let SocketAddr::V4(p4) = proxy_addr else {
        unreachable!()
    };
    k.enforcer
        .set_proxy(Some((*p4.ip(), std::net::Ipv6Addr::LOCALHOST, p4.port())))
        .unwrap();
    let accepted = |l: &TcpListener| accept_within(l, Duration::from_secs(5));
    let queued = |l: &TcpListener| accept_within(l, Duration::ZERO);
    let refused = format!("errno {}", libc::EPERM);
    let mut marked = Connector::start(&agent.path);
    assert_eq!(
        marked.connect(blocked),
        refused,
        "control: the agent's block"
    );
    assert_eq!(marked.connect(open), "ok", "control: unsandboxed, direct");
    assert!(accepted(&open_l).is_some() && queued(&proxy).is_none());
    assert_eq!(
        marked.connect(enter),
        "ok",
        "a sandbox verdict lets the action go on"
    );
    let case = "F5 a network:proxy sandboxed process connects where its agent's rule blocks (host)";
    redteam(case, "tried");
    assert_eq!(marked.connect(blocked), refused, "{case}");
    assert!(
        queued(&proxy).is_none() && queued(&blocked_l).is_none(),
        "{case}: nothing reached the proxy or the destination"
    );
    let pid = marked.pid();
    let ev = k.event_where(|e| {
        e.tgid == pid && e.port == blocked.port() && e.flags & flags::SANDBOXED != 0
    });
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Connect));
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Block));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule));
    assert_eq!(ev.rule_id, k.rule(1), "the agent's own rule refuses it");
    assert_ne!(ev.flags & flags::DENIED, 0);
    redteam(case, "denied");
    assert_eq!(
        marked.connect(open),
        "ok",
        "control: sandboxed, an allowed destination"
    );
    assert!(
        accepted(&proxy).is_some() && queued(&open_l).is_none(),
        "control: through the proxy, not direct"
    );
    let ev = k.event_where(|e| e.tgid == pid && e.port == open.port());
    assert_ne!(ev.flags & flags::PROXIED, 0, "{ev:?}");
    let mut sibling = Connector::start(&agent.path);
    assert_eq!(
        sibling.connect(blocked),
        refused,
        "control: the agent's block"
    );
    assert_eq!(sibling.connect(open), "ok");
    assert!(accepted(&open_l).is_some(), "control: unsandboxed, direct");
    redteam(case, "control");
}

/// A rolling upgrade carries the kernel's runtime state to the new build (its maps start
/// empty): a process sandboxed under the old build stays under its profile under the new one
/// alone, a throttle bucket the old build drained stays drained (one connect per hour), an
/// escalation a human approved under the old build stays approved (its grant), and an agent
/// whose sequence rule the old build armed stays restricted (its armed state).
/// A denial the old build's programs made while no daemon ran reaches the new build's audit
/// log (from the old build's ring).
/// Controls: a process never marked connects under the new build, a connect the throttle rule
/// does not cover goes through, an escalated destination nobody approved stays refused, and
/// the armed agent still reaches the destination its sequence rule allows.
#[test]
fn a_new_build_carries_the_kernel_s_runtime_state_over() {
    require_root();
    let agent = TestCgroup::new("carry");
    let (_enter_l, enter) = listener([127, 0, 0, 24]);
    let (_probe_l, probe) = listener([127, 0, 0, 25]);
    let (_slow_l, slow) = listener([127, 0, 0, 26]);
    let (_ask_l, ask) = listener([127, 0, 0, 30]);
    let (_unasked_l, unasked) = listener([127, 0, 0, 31]);
    let seq_agent = TestCgroup::new("carry-seq");
    let (_except_l, except) = listener([127, 0, 0, 2]);
    let policy = format!(
        "{}  - {{ id: slow, network: {{ cidr: {}/32 }}, verdict: throttle, throttle: {{ rate: 1, per: 1h }}, reason: test }}\n\
         \x20 - {{ id: ask, network: {{ cidr: 127.0.0.30/31 }}, verdict: escalate, escalate: {{ timeout: 5m }}, reason: test }}\n\
         ---\nname: seq\nagents: {{ cgroup: {} }}\nrules:\n\
         \x20 - id: no-exfil\n    sequence:\n      after: {{ file: {{ prefix: /data/pii, access: [read] }} }}\n      then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }} }}\n    verdict: block\n    reason: test\n",
        marks_policy(&agent, enter, None),
        slow.ip(),
        seq_agent.rel.display()
    );
    let dir = policy_dir("carry", &policy);
    let pins = pin_dir("carry");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let args = [
        "--allow-degraded",
        "--no-create-cgroups",
        "--quiet",
        "--pins",
        &pins_arg,
    ];
    let start = |salt: &str| start_daemon_of_build(&args, &dir, salt);
    let (old, _) = start("old build");
    let mut marked = Connector::start(&agent.path);
    let mut other = Connector::start(&agent.path);
    assert_eq!(marked.connect(enter), "ok");
    let refused = format!("errno {}", libc::EPERM);
    assert_eq!(marked.connect(probe), refused, "jail under the old build");
    assert_eq!(other.connect(slow), "ok", "the bucket's one token");
    assert_eq!(
        other.connect(slow),
        refused,
        "throttled under the old build"
    );
    // An escalation, approved: the grant lets the retry through.
    assert_eq!(other.connect(ask), refused, "escalated under the old build");
    let id = wait_for_value(
        "the escalated connect to be pending approval",
        Duration::from_secs(10),
        || {
            let out = old.cli(&["approvals", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            Some(v["pending"][0]["id"].as_str()?.to_owned())
        },
    );
    assert!(
        old.cli(&["approve", &id, "--as", "tester"])
            .status
            .success()
    );
    assert_eq!(other.connect(ask), "ok", "approved under the old build");
    // An armed sequence rule (the host has no file hook to arm it: armed in the pinned table,
    // as the old build's file_open would).
    let seq = Some(seq_agent.path.as_path());
    let (_, outcome) = run_in(seq, "carry-seq-before", &Attempt::connect(probe));
    assert_eq!(outcome, Outcome::Exited(0), "not armed yet");
    governance_tests::arm_sequence_at(&pins, seq_agent.id(), "seq/no-exfil", 0, std::process::id());
    let (_, outcome) = run_in(seq, "carry-seq-armed", &Attempt::connect(probe));
    assert_eq!(
        outcome,
        Outcome::Errno(libc::EPERM),
        "armed under the old build"
    );
    stop_daemon(old);
    // Decided by the old build's programs while no daemon runs: the event waits in its ring.
    let (_downtime_l, downtime) = listener([127, 0, 0, 28]);
    assert_eq!(marked.connect(downtime), refused, "jail with no daemon");
    let (new, seen) = start("new build");
    assert!(
        seen.contains("handed over")
            && seen.contains("carried over: 1 sandboxed processes (0 with a profile")
            && seen.contains("1 throttle buckets"),
        "the new build handed over and carried the mark and the bucket:\n{seen}"
    );
    assert!(
        seen.contains("1 armed sequence rules") && seen.contains("1 grants"),
        "the new build carried the grant and the armed state:\n{seen}"
    );
    // The kernel counts the marks it makes; the carried one was counted by the handover.
    let any: aya::maps::Array<_, u32> = aya::maps::Array::try_from(aya::maps::Map::Array(
        aya::maps::MapData::from_pin(pins.join("maps/SANDBOX_ANY")).unwrap(),
    ))
    .unwrap();
    assert_eq!(
        (any.get(&0, 0).unwrap(), any.get(&1, 0).unwrap()),
        (1, 1),
        "the new build's sandbox flag and count of marks"
    );
    let dest = downtime.to_string();
    let record = wait_for_value(
        "the denial made while no daemon ran, in the new build's audit log",
        Duration::from_secs(10),
        || {
            audit_records(&new.audit())
                .into_iter()
                .find(|r| r["outcome"] == "block" && r["object"]["dest"] == dest.as_str())
        },
    );
    assert_eq!(
        record["cgroup"]["path"],
        agent.rel.to_str().unwrap(),
        "{record:#}"
    );
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("previous build"),
        "{record:#}"
    );
    redteam(
        "sandbox mark and throttle bucket across a rolling upgrade",
        "tried",
    );
    assert_eq!(
        marked.connect(probe),
        refused,
        "still jail under the new build alone"
    );
    assert_eq!(
        other.connect(slow),
        refused,
        "still throttled under the new build alone"
    );
    let (_, outcome) = run_in(seq, "carry-seq-after", &Attempt::connect(probe));
    assert_eq!(
        outcome,
        Outcome::Errno(libc::EPERM),
        "still armed under the new build alone"
    );
    redteam(
        "sandbox mark and throttle bucket across a rolling upgrade",
        "denied",
    );
    assert_eq!(
        other.connect(ask),
        "ok",
        "still approved under the new build alone"
    );
    assert_eq!(
        other.connect(unasked),
        refused,
        "control: an escalated destination nobody approved"
    );
    let (_, outcome) = run_in(seq, "carry-seq-except", &Attempt::connect(except));
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "control: the armed agent reaches what its sequence rule allows"
    );
    assert_eq!(
        other.connect(probe),
        "ok",
        "control: a process never marked"
    );
    let (_free_l, free) = listener([127, 0, 0, 27]);
    assert_eq!(other.connect(free), "ok", "control: not throttled");
    redteam(
        "sandbox mark and throttle bucket across a rolling upgrade",
        "control",
    );
    drop((marked, other));
    stop_daemon(new);
    unload(&pins);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sandboxed process keeps its mark while any of its threads runs: its main thread ending
/// alone (the raw `exit` syscall, as `pthread_exit` does) leaves the other threads under the
/// same tgid, and an exec from another thread kills the main thread on the way (`de_thread`).
/// Neither may drop the mark: after each, the process's next connect is still the profile's
/// (refused). Control: a process of the same agent that was never marked connects.
#[test]
fn a_sandbox_mark_outlives_the_main_thread() {
    require_root();
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "the script calls exit by its x86_64 number"
    );
    let agent = TestCgroup::new("threads");
    let (_enter_l, enter) = listener([127, 0, 0, 31]);
    let (_probe_l, probe) = listener([127, 0, 0, 32]);
    let dir = policy_dir("threads", &marks_policy(&agent, enter, None));
    let pins = pin_dir("threads");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--quiet",
            "--pins",
            pins.to_str().unwrap(),
        ],
        &dir,
    );
    let refused = format!("errno {}", libc::EPERM);
    let case = "a sandboxed process whose main thread ends, or which execs from another thread";
    for variant in ["main thread exits", "exec from a second thread"] {
        let mut child = Connector::start(&agent.path);
        let pid = child.pid();
        assert_eq!(child.connect(enter), "ok", "{variant}: sandboxed");
        assert_eq!(child.connect(probe), refused, "{variant}: jail");
        println!("redteam: tried {case}: {variant}");
        if variant == "main thread exits" {
            child.send("leave");
            wait_until(
                "the main thread to end alone",
                Duration::from_secs(10),
                || {
                    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat")).is_ok_and(|s| {
                        s.rsplit(')')
                            .next()
                            .is_some_and(|r| r.trim_start().starts_with('Z'))
                    })
                },
            );
            assert_eq!(child.connect(probe), refused, "{variant}: still jail");
        } else {
            child.send(&format!("exec {} {}", probe.ip(), probe.port()));
            assert_eq!(child.answer(), refused, "{variant}: still jail");
        }
        println!("redteam: denied {case}: {variant}");
        // The mark dies with the process's last thread.
        let marks: aya::maps::HashMap<_, u32, u32> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
                aya::maps::MapData::from_pin(pins.join("maps/SANDBOXED")).unwrap(),
            ))
            .unwrap();
        // ... and so does its count (which keeps room for forks: see SANDBOX_RESERVE).
        let any: aya::maps::Array<_, u32> = aya::maps::Array::try_from(aya::maps::Map::Array(
            aya::maps::MapData::from_pin(pins.join("maps/SANDBOX_ANY")).unwrap(),
        ))
        .unwrap();
        assert!(
            marks.get(&pid, 0).is_ok(),
            "{variant}: marked while it runs"
        );
        assert_eq!(any.get(&1, 0).unwrap(), 1, "{variant}: one mark counted");
        drop(child);
        wait_until(
            "the mark of the ended process to go",
            Duration::from_secs(10),
            || marks.get(&pid, 0).is_err(),
        );
        assert_eq!(any.get(&1, 0).unwrap(), 0, "{variant}: no mark counted");
    }
    let mut never = Connector::start(&agent.path);
    assert_eq!(
        never.connect(probe),
        "ok",
        "control: a process never marked"
    );
    println!("redteam: control {case}");
    drop(never);
    stop_daemon(daemon);
    unload(&pins);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The proxy listens in an agent's own network namespace as soon as a process in it arrives in
/// the agent (the agent root's `cgroup.events` says its subtree became populated), not at the
/// next periodic look (every 10 s); and stops listening there once the process has gone.
#[test]
fn a_listener_opens_in_a_network_namespace_as_soon_as_its_process_joins_an_agent() {
    require_root();
    let agent = TestCgroup::new("netns-join");
    let dir = policy_dir(
        "netns-join",
        &format!(
            "name: netns-join\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: web, network: {{ cidr: 127.0.0.4/32, via_proxy: true }}, verdict: allow, reason: through the engine }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("netns-join");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--quiet",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    let proxy_port = proxy_port(&seen);
    // A process in a network namespace of its own, made outside the agent, then moved in (as
    // a container runtime does), into an agent that had no process.
    let (mut outside, pid) = sleep_in_own_netns();
    assert!(!listens_in(&pid, proxy_port), "no listener before it joins");
    std::fs::write(agent.path.join("cgroup.procs"), &pid).unwrap();
    // Well within the periodic look's 10 s: the watch told.
    wait_until(
        "the proxy to listen in the process's network namespace",
        Duration::from_secs(4),
        || listens_in(&pid, proxy_port),
    );
    // The namespace, held open here: once its process has gone, the listener goes too (it
    // would keep the namespace alive).
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let ns_path = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&ns)
    );
    let listening_in_ns = || {
        let out = Command::new("nsenter")
            .args([
                &format!("--net={ns_path}"),
                "cat",
                "/proc/net/tcp",
                "/proc/net/tcp6",
            ])
            .output()
            .unwrap();
        tcp_table_listens(&String::from_utf8_lossy(&out.stdout), proxy_port)
    };
    assert!(listening_in_ns(), "seen through the namespace itself");
    let _ = outside.kill();
    let _ = outside.wait();
    wait_until(
        "the proxy to stop listening in the namespace its process left",
        Duration::from_secs(4),
        || !listening_in_ns(),
    );
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Red team round 29: a socket priority above 6 (what CAP_NET_RAW gives, which
/// `allow_raw_sockets` hands back) is the mark of the daemon's proxy listeners, which the
/// connect programs trust: agents may not set one (`cgroup/setsockopt` reads the value, with or
/// without BPF LSM). Controls: 6 in the agent, and the mark itself outside every agent.
#[test]
fn agents_may_not_give_a_socket_the_proxy_listener_s_priority() {
    require_root();
    let agent = TestCgroup::new("priority");
    let mut k = load(&format!(
        "name: priority\nagents: {{ cgroup: {} }}\n",
        agent.rel.display()
    ));
    k.require("sockopt_set");
    let script = format!(
        "import socket\n\
         for p in (6, {mark}, 7):\n\
         \x20   s = socket.socket()\n\
         \x20   try:\n\
         \x20       s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, p); print('ok', end=' ')\n\
         \x20   except OSError as e: print(e.errno, end=' ')\n",
        mark = governance_common::PROXY_LISTENER_PRIORITY
    );
    let run = |cg: Option<&Path>| {
        let out = governance_tests::command_in(cg, "python3", &["-c", &script])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let case = "29 the proxy listener's priority set by an agent (host)";
    redteam(case, "tried");
    let eperm = libc::EPERM;
    assert_eq!(
        run(Some(&agent.path)),
        (true, format!("ok {eperm} {eperm}")),
        "{case}"
    );
    let ev = k.event_where(|e| Kind::from_u8(e.kind) == Some(Kind::Guard));
    assert_eq!(ev.detail, governance_common::guard::PACKET_MARK, "{case}");
    redteam(case, "denied");
    assert_eq!(
        run(None),
        (true, "ok ok ok".into()),
        "control: outside agents"
    );
    redteam(case, "control");
}

/// Red team round 29: a send on a connected UDP socket that carries an IP-level control
/// message (`IP_TOS`, as QUIC and ECN stacks send) reaches the sendmsg programs with no
/// address, and the kernel sends it to the connected peer whatever they decide; it was decided
/// as 127.0.0.1 port 0, refused under `defaults: { network: block }` and recorded with that
/// destination. Now it is decided (and recorded) as the peer: allowed to an allowed peer, with
/// its address and port in the event. Control: the same socket without a control message.
/// A send to a named destination the rules refuse is still refused (the denial's control).
#[test]
fn a_connected_udp_send_with_control_messages_is_decided_as_its_peer() {
    require_root();
    let agent = TestCgroup::new("udp-cmsg");
    let peer = std::net::UdpSocket::bind("127.0.0.4:0").unwrap();
    let port = peer.local_addr().unwrap().port();
    let mut k = load(&format!(
        "name: udpcmsg\nagents: {{ cgroup: {} }}\ndefaults: {{ network: block }}\nrules:\n\
         \x20 - {{ id: peer, network: {{ cidr: 127.0.0.4/32, protocol: udp }}, verdict: allow, report: every, reason: test }}\n",
        agent.rel.display()
    ));
    k.require("sendmsg4");
    // Prints each send's outcome: "ok" or the errno's number.
    let script = format!(
        r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.4", {port}))
def send(cmsg):
    try:
        s.sendmsg([b"x"], cmsg); return "ok"
    except OSError as e: return str(e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", ("127.0.0.5", {port})); named = "ok"
except OSError as e: named = str(e.errno)
print(send([(socket.IPPROTO_IP, socket.IP_TOS, struct.pack("i", 0))]), send([]), named, flush=True)
"#
    );
    let case = "29 a connected UDP send with a control message (host)";
    redteam(case, "tried");
    let out = governance_tests::command_in(Some(&agent.path), "python3", &["-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        said,
        format!("ok ok {}", libc::EPERM),
        "with IP_TOS, without, and to a refused address: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 8];
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        assert_eq!(peer.recv(&mut buf).unwrap(), 1, "both sends arrived");
    }
    // The events: the named send to the refused address (sent first), then the send with the
    // control message, decided as the peer and allowed.
    let send_to = |k: &mut governance_tests::Loaded, ip: [u8; 4]| {
        let addr = Ipv4Addr::from(ip).to_ipv6_mapped().octets();
        k.event_where(|e| Kind::from_u8(e.kind) == Some(Kind::Send) && e.addr == addr)
    };
    let refused = send_to(&mut k, [127, 0, 0, 5]);
    assert_eq!(Verdict::from_u8(refused.verdict), Some(Verdict::Block));
    let ev = send_to(&mut k, [127, 0, 0, 4]);
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Allow), "{case}");
    assert_eq!(
        (ev.port, ev.detail),
        (port, 17),
        "{case}: the peer's port, UDP"
    );
    redteam(case, "denied");
    redteam(case, "control");
}

/// A `sleep` in a network namespace of its own, made here (outside every agent), once it is
/// there: the process and its pid.
fn sleep_in_own_netns() -> (Reaped, String) {
    let holder = Reaped(
        Command::new("unshare")
            .args(["-n", "sleep", "120"])
            .spawn()
            .unwrap(),
    );
    let pid = holder.id().to_string();
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    wait_until(
        "the process's own network namespace",
        Duration::from_secs(20),
        || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|n| n != own)
                && std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|e| e.ends_with("sleep"))
        },
    );
    (holder, pid)
}

/// Red team round 29: the record of a process gone before its event was read names its cgroup
/// by the cgroup's id, one lookup (the walk of the agent's subtree it replaced cost each such
/// event thousands of directories the agent made): a nested cgroup is found, a removed one is
/// not.
#[test]
fn a_cgroup_is_found_by_its_id() {
    require_root();
    let root = agents::cgroup2_mount().unwrap();
    let agent = TestCgroup::new("by-id");
    let nested = agent.child("a");
    std::fs::create_dir(nested.join("b")).unwrap();
    let nested = nested.join("b");
    let id = agents::cgroup_id(&nested).unwrap();
    assert_eq!(
        agents::cgroup_by_id(&root, id).unwrap(),
        format!("{}/a/b", agent.rel.display())
    );
    assert_eq!(
        agents::cgroup_by_id(&root, agent.id()).unwrap(),
        agent.rel.display().to_string()
    );
    std::fs::remove_dir(&nested).unwrap();
    assert!(agents::cgroup_by_id(&root, id).is_err(), "a removed cgroup");
}

/// Red team round 29: in a network namespace whose port range holds the proxy's port (a pod
/// may set `net.ipv4.ip_local_port_range`), an agent is given that port by a bind to port 0,
/// which the bind programs do not refuse (no port is named), before the daemon's listener: the
/// daemon cannot listen there, and the kernel used to send the other agent processes'
/// redirected and explicit proxy connects, credentials and all, to the agent's listener. Now
/// the connect programs send an agent only to a listener marked as the daemon's: both are
/// refused (EPERM, recorded as fail-closed), and the agent's listener gets nothing. Control:
/// the same connects from outside every agent, in that namespace, reach that listener.
#[test]
fn an_agent_given_the_proxy_s_port_in_its_namespace_receives_no_one_s_connects() {
    require_root();
    let agent = TestCgroup::new("netns-port");
    let dir = policy_dir(
        "netns-port",
        &format!(
            "name: netns-port\nagents: {{ cgroup: {cg} }}\nrules:\n\
             \x20 - {{ id: web, network: {{ cidr: 127.0.0.4/32, via_proxy: true }}, verdict: allow, reason: through the engine }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("netns-port");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    let port = proxy_port(&seen);
    // The namespace, held by a process outside the agent; its port range is the proxy's port.
    let (mut holder, hpid) = sleep_in_own_netns();
    let net = format!("--net=/proc/{hpid}/ns/net");
    let sh = |script: &str| {
        let st = Command::new("nsenter")
            .args([net.as_str(), "sh", "-c", script])
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    };
    sh("ip link set lo up");
    // The range: the proxy's port alone while a listener is given a port, wider for the
    // clients' own ports.
    let range = |wide: bool| {
        let hi = if wide { port.saturating_add(200) } else { port };
        sh(&format!(
            "echo '{port} {hi}' > /proc/sys/net/ipv4/ip_local_port_range"
        ));
    };
    range(false);
    // A Python process in the namespace: `listen` binds port 0 and listens, printing the port it
    // was given, then (after a line on stdin) takes connections until a second line, and prints
    // their first bytes ("none" if none came); `connect HOST PORT` waits for a line on stdin (it
    // is moved into its cgroup first), then prints "ok" or the errno's number.
    const PY: &str = r#"
import select, socket, sys
if sys.argv[1] == "listen":
    s = socket.socket(); s.bind(("0.0.0.0", 0)); s.listen(8)
    print(s.getsockname()[1], flush=True)
    sys.stdin.readline()
    got = []
    def take():
        c, _ = s.accept(); c.settimeout(5)
        try: got.append(c.recv(200).decode(errors="replace").replace("\r\n", " "))
        except OSError: got.append("(connected)")
    while True:
        r, _, _ = select.select([s, sys.stdin], [], [])
        if sys.stdin in r: break
        take()
    s.setblocking(False)
    while True:
        try: take()
        except BlockingIOError: break
    print("|".join(got) if got else "none", flush=True)
else:
    sys.stdin.readline()
    c = socket.socket()
    try:
        c.connect((sys.argv[2], int(sys.argv[3]))); c.sendall(b"GET /victim HTTP/1.1\r\nAuthorization: Bearer VICTIM\r\n\r\n"); print("ok", flush=True)
    except OSError as e: print(e.errno, flush=True)
"#;
    let spawn = |args: &[&str], cgroup: Option<&Path>| {
        use std::io::Write as _;
        let mut child = Reaped(
            Command::new("nsenter")
                .args([net.as_str(), "python3", "-c", PY])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        if let Some(cg) = cgroup {
            std::fs::write(cg.join("cgroup.procs"), child.id().to_string()).unwrap();
        }
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        child
    };
    let line = |child: &mut Reaped| {
        use std::io::BufRead as _;
        let mut l = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut l)
            .unwrap();
        l.trim().to_owned()
    };
    let lines = daemon.line_count();
    // The thief: given the proxy's port, then moved into the agent (as a container's first
    // process is, with the daemon's listener not there yet).
    let mut thief = spawn(&["listen"], None);
    assert_eq!(
        line(&mut thief),
        port.to_string(),
        "the kernel gave the thief the proxy's port"
    );
    std::fs::write(agent.path.join("cgroup.procs"), thief.id().to_string()).unwrap();
    range(true);
    daemon
        .wait_line(
            lines,
            "the proxy cannot listen in the network namespace",
            Duration::from_secs(20),
        )
        .expect("the daemon found its port taken in the agent's namespace");
    let port_s = port.to_string();
    for (case, args) in [
        (
            "29 a redirected connect in a namespace where an agent holds the proxy's port",
            ["connect", "127.0.0.4", "80"],
        ),
        (
            "29 an explicit proxy connect in a namespace where an agent holds the proxy's port",
            ["connect", "127.0.0.1", port_s.as_str()],
        ),
    ] {
        redteam(case, "tried");
        let mut victim = spawn(&args, Some(&agent.path));
        let vpid = victim.id();
        assert_eq!(line(&mut victim), libc::EPERM.to_string(), "{case}");
        let v = wait_for_value(
            &format!("the refusal of {case} in the audit log"),
            Duration::from_secs(10),
            || {
                audit_records(&daemon.audit())
                    .into_iter()
                    .find(|r| r["process"]["pid"] == vpid && r["kind"] == "connect")
            },
        );
        assert_eq!(v["denied"], true, "{case}: {v}");
        assert!(
            v["reason"].as_str().is_some_and(|r| r.contains("proxy")),
            "{case}: {v}"
        );
        redteam(case, "denied");
    }
    let stop = |child: &mut Reaped| {
        use std::io::Write as _;
        writeln!(child.stdin.as_mut().unwrap(), "stop").unwrap();
    };
    stop(&mut thief);
    assert_eq!(line(&mut thief), "none", "the thief received nothing");
    let _ = thief.wait();
    // Control: outside every agent, in the namespace, the connect reaches that listener.
    range(false);
    let mut thief = spawn(&["listen"], None);
    assert_eq!(line(&mut thief), port.to_string());
    range(true);
    let mut outsider = spawn(&["connect", "127.0.0.1", port_s.as_str()], None);
    assert_eq!(line(&mut outsider), "ok", "control: outside agents, direct");
    stop(&mut thief);
    let got = line(&mut thief);
    assert!(
        got.contains("VICTIM"),
        "control: the listener got it: {got}"
    );
    for r in [
        "29 a redirected connect in a namespace where an agent holds the proxy's port",
        "29 an explicit proxy connect in a namespace where an agent holds the proxy's port",
    ] {
        redteam(r, "control");
    }
    let _ = holder.kill();
    let _ = holder.wait();
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Red team round 5, F2: an agent in a network namespace of its own (a container, a pod) must
/// not reach the node's loopback services through the proxy, which listens in the agent's
/// namespace but used to connect upstream from the node's. The node runs HTTP services at
/// 127.0.0.9 and 127.0.0.7 (the agent's rules allow 127.0.0.0/8: its own local servers; its
/// connects to 127.0.0.7 go `via_proxy`). From the agent's namespace, where nothing listens at
/// those addresses yet: a direct connect is refused (the control: the agent cannot reach them
/// itself), and through the proxy an absolute-form request, one by a name the proxy resolves
/// (`--proxy-host`), a CONNECT tunnel and a transparently redirected request all fail (502:
/// the upstream connection is made in the agent's namespace), none answered by the node's
/// services. Then the same services started in the agent's namespace (same addresses and
/// ports) answer all four: the agent's own upstreams are reached. A process of the same agent
/// in the node's namespace still reaches the node's services through the proxy (unchanged).
#[test]
fn an_agent_in_its_own_network_namespace_reaches_through_the_proxy_only_what_it_reaches_itself() {
    require_root();
    let agent = TestCgroup::new("netns-reach");
    let helper = env!("CARGO_BIN_EXE_redteam-helper");
    let named = listener([127, 0, 0, 9]).1;
    let redirected = listener([127, 0, 0, 7]).1;
    let serve = |ns: Option<&str>, addr: SocketAddr, name: &str| {
        let mut cmd = match ns {
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", pid, "-n", helper]);
                c
            }
            None => Command::new(helper),
        };
        let mut up = Reaped(
            cmd.args(["http-upstream", &addr.to_string(), name])
                .spawn()
                .unwrap(),
        );
        wait_until(
            &format!("the {name} upstream to listen on {addr}"),
            Duration::from_secs(10),
            || {
                assert!(matches!(up.try_wait(), Ok(None)), "the upstream exited");
                match ns {
                    Some(pid) => listens_in(pid, addr.port()),
                    None => std::net::TcpStream::connect(addr).is_ok(),
                }
            },
        );
        up
    };
    let _node_services = [serve(None, named, "node"), serve(None, redirected, "node")];
    let dir = policy_dir(
        "netns-reach",
        &format!(
            "name: netns-reach\nagents: {{ cgroup: {cg} }}\ndefaults: {{ network: block }}\nrules:\n\
             \x20 - {{ id: own-loopback, network: {{ cidr: 127.0.0.0/8 }}, verdict: allow, reason: the agent's own local servers }}\n\
             \x20 - {{ id: web, network: {{ cidr: 127.0.0.7/32, via_proxy: true }}, verdict: allow, reason: through the engine }}\n",
            cg = agent.rel.display()
        ),
    );
    let pins = pin_dir("netns-reach");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--quiet",
            "--pins",
            &pins_arg,
            "--proxy-host",
            "node-svc.test=127.0.0.9",
        ],
        &dir,
    );
    let proxy_port = proxy_port(&seen);
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    // The pod: a network namespace with its loopback up, made outside the agent, then moved
    // in (as a runtime does).
    let pod = Reaped(
        Command::new("unshare")
            .args(["-n", "sh", "-c", "ip link set lo up && exec sleep 300"])
            .spawn()
            .unwrap(),
    );
    let pid = pod.id().to_string();
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    wait_until(
        "the pod's network namespace",
        Duration::from_secs(20),
        || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|n| n != own)
                && std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|e| e.ends_with("sleep"))
        },
    );
    std::fs::write(agent.path.join("cgroup.procs"), &pid).unwrap();
    wait_until(
        "the proxy to listen in the pod's network namespace",
        Duration::from_secs(20),
        || listens_in(&pid, proxy_port),
    );
    // curl as the agent: in the pod's namespace (nsenter) or the node's, joined to the agent.
    let procs = agent.path.join("cgroup.procs");
    let curl = |in_pod: bool, args: &[&str]| -> (bool, String) {
        let script = format!(
            "echo $$ > {} && exec curl -sS -i --max-time 20 \"$@\"",
            procs.display()
        );
        let mut cmd = if in_pod {
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid, "-n", "sh", "-c", &script, "sh"]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script, "sh"]);
            c
        };
        let out = cmd.args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let n_url = format!("http://{named}/abs");
    let name_url = format!("http://node-svc.test:{}/name", named.port());
    let t_url = format!("http://{named}/tun");
    let r_url = format!("http://{redirected}/tr");
    let through: [(&str, Vec<&str>); 4] = [
        ("absolute-form", vec!["-x", &proxy, &n_url]),
        ("a name the proxy resolves", vec!["-x", &proxy, &name_url]),
        ("CONNECT", vec!["-p", "-x", &proxy, &t_url]),
        ("transparent", vec![&r_url]),
    ];

    // The control: the node's service is not the agent's to reach directly.
    let (ok, out) = curl(true, &["--noproxy", "*", &format!("http://{named}/direct")]);
    assert!(
        !ok && (out.contains("refused") || out.contains("Couldn't connect")),
        "direct: {out}"
    );
    // Nor through the proxy, any way.
    for (what, args) in &through {
        let (_, out) = curl(true, args);
        assert!(
            out.contains(" 502") && !out.contains("\"upstream\":\"node\""),
            "{what}: the node's service must not answer the pod: {out}"
        );
    }
    // The pod's own services at the same addresses: reached through the proxy every way.
    let _pod_services = [
        serve(Some(&pid), named, "pod"),
        serve(Some(&pid), redirected, "pod"),
    ];
    for (what, args) in &through {
        let (ok, out) = curl(true, args);
        assert!(
            ok && out.contains(" 200") && out.contains("\"upstream\":\"pod\""),
            "{what}: the pod's own service answers: {out}"
        );
    }
    // The same agent on the node (no namespace of its own): the node's services, as before.
    for (what, args) in &through {
        let (ok, out) = curl(false, args);
        assert!(
            ok && out.contains(" 200") && out.contains("\"upstream\":\"node\""),
            "{what}, from the node: {out}"
        );
    }
    drop(pod);
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One agent filling the event ring drops every agent's events (red team round 26: a flood of
/// denied connects by one agent left another's denials out of the audit log, with nothing to
/// say whose). Each drop is counted for the agent whose event it was (`EVENTS_DROPPED`, which
/// the daemon's `events.dropped` records name): the counts add up to the node-wide counter,
/// and the quiet agent's denials made while the ring was full are counted as its own.
#[test]
fn events_the_ring_had_no_room_for_are_counted_per_agent() {
    require_root();
    let flooder = TestCgroup::new("flooder");
    let quiet = TestCgroup::new("quiet");
    let (_blocked, addr) = listener([127, 0, 0, 1]);
    let rule = "rules: [ { id: no-loopback, network: { cidr: 127.0.0.1/32 }, verdict: block, reason: test } ]";
    let mut k = load(&format!(
        "name: flooder\nagents: {{ cgroup: {} }}\n{rule}\n---\nname: quiet\nagents: {{ cgroup: {} }}\n{rule}\n",
        flooder.rel.display(),
        quiet.rel.display()
    ));
    k.require("connect4");
    // Nobody drains the ring here: 20,000 events overfill its 4 MiB (about 11,400 records).
    flood_connects(&flooder.path, addr, 20_000);
    for _ in 0..5 {
        let (_, outcome) = run_in(Some(&quiet.path), "quiet", &Attempt::connect(addr));
        assert_eq!(
            outcome,
            Outcome::Errno(libc::EPERM),
            "the quiet agent's denial"
        );
    }
    let total = k.enforcer.counter(Counter::EventsDropped).unwrap();
    let by: std::collections::HashMap<u64, u64> =
        k.enforcer.dropped_by_agent().unwrap().into_iter().collect();
    let (f, q) = (
        by.get(&flooder.id()).copied().unwrap_or(0),
        by.get(&quiet.id()).copied().unwrap_or(0),
    );
    assert!(total > 0, "the ring never filled");
    assert_eq!(
        q, 5,
        "the quiet agent's denials made while the ring was full"
    );
    assert_eq!(f + q, total, "every drop is counted for its agent ({by:?})");
    // Forgotten on request (an agent gone).
    k.enforcer.forget_dropped(&[flooder.id()]).unwrap();
    let by = k.enforcer.dropped_by_agent().unwrap();
    assert_eq!(by, vec![(quiet.id(), 5)]);
}

/// A selector that covers the daemon's own cgroup leaves that cgroup out (red team round 30:
/// the daemon became an agent of its own programs, which refused its proxy listener's mark,
/// and it stopped; on Kubernetes, a crash loop and no new pod governed): the daemon serves,
/// with no agent, and says why. Control: the same daemon in the same cgroup, with a policy
/// that selects the cgroup beside it, serves with that agent.
#[test]
fn a_policy_may_not_make_the_daemon_its_own_agent() {
    require_root();
    let holder = TestCgroup::new("holder");
    let daemon_cg = holder.child("daemon");
    holder.child("agent");
    let dir = std::env::temp_dir().join(format!("governance-test-{}-own", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pins = pin_dir("own");
    // `run` in the daemon's cgroup with a policy selecting `selected`: what it printed until
    // its control API listened (it is then stopped, by its pid).
    let run = |selected: &str| -> String {
        std::fs::write(
            dir.join("p.yaml"),
            format!("name: p\nagents: {{ cgroup: '{selected}' }}\nrules: []\n"),
        )
        .unwrap();
        let mut cmd = governance_tests::command_in(
            Some(&daemon_cg),
            governance_bin().to_str().unwrap(),
            &[
                "run",
                "--allow-degraded",
                "--no-create-cgroups",
                "--no-proxy",
            ],
        );
        cmd.arg("--pins").arg(&*pins);
        for (flag, name) in [
            ("--socket", "s.sock"),
            ("--audit-dir", "audit"),
            ("--policy-in-force", "pif"),
        ] {
            cmd.arg(flag).arg(dir.join(name));
        }
        cmd.arg("--policy")
            .arg(&dir)
            .env("GOVERNANCE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let lines = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = String::new();
        let served = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("control API on") => break true,
                Ok(line) => seen.push_str(&format!("{line}\n")),
                Err(_) => break false,
            }
        };
        // We started it; we end it, by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        assert!(
            served,
            "the daemon did not serve (selecting {selected}):\n{seen}"
        );
        seen
    };
    let case = "R30 a selector covering the daemon's own cgroup";
    redteam(case, "tried");
    let seen = run(holder.rel.to_str().unwrap());
    assert!(seen.contains("holds the daemon itself"), "{seen}");
    assert!(seen.contains(", 0 agents)"), "no agent: {seen}");
    redteam(case, "denied");
    let seen = run(&format!("{}/agent", holder.rel.display()));
    assert!(!seen.contains("holds the daemon itself"), "{seen}");
    assert!(
        seen.contains(", 1 agents)"),
        "the agent beside the daemon: {seen}"
    );
    redteam(case, "control");
    let _ = std::fs::remove_dir_all(&dir);
}
