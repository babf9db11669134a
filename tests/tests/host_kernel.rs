//! Kernel tests that run on the host kernel: cgroup socket programs load and enforce here even
//! where LSM programs cannot. Real programs, real cgroups, real sockets on loopback.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    process::Command,
};

use governance_common::{Cause, Kind, Verdict};
use governance_tests::{
    Attempt, Outcome, TestCgroup, load, require_root, run_in, signal, start_daemon, stop_daemon,
};

/// A loopback listener on an address of the 127/8 range.
fn listener(ip: [u8; 4]) -> (TcpListener, SocketAddrV4) {
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::from(ip), 0)).unwrap();
    let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
        unreachable!()
    };
    (l, addr)
}

#[test]
fn connect4_block_denies_agent_and_its_descendants_but_not_others() {
    require_root();
    let agent = TestCgroup::new("agent");
    let child = agent.child("worker");
    let outsider = TestCgroup::new("outsider");
    let (_blocked, blocked_addr) = listener([127, 0, 0, 1]);
    let (_open, open_addr) = listener([127, 0, 0, 2]);
    let mut k = load(&format!(
        "name: netbot\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: no-loopback-1, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n",
        agent.rel.display()
    ));
    let root = governance::agents::cgroup2_mount().unwrap();
    k.enforcer
        .attach_connect4(&root)
        .expect("cgroup/connect4 must attach on this kernel");

    // Denied in the agent, with the event naming the cgroup, process, rule and destination.
    let blocked = Attempt::Connect4 { addr: blocked_addr };
    let (pid, outcome) = run_in(Some(&agent.path), "net-agent", &blocked);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let ev = k.event_for(pid);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Connect4));
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Block));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule));
    assert_eq!(ev.rule_id, 1);
    assert_eq!(ev.agent_id, k.agents[0].agent_id());
    assert_eq!(ev.cgroup_id, agent.id());
    assert_eq!(governance_tests::text(&ev.comm), "net-agent");
    assert_eq!(&ev.addr[..4], &[127, 0, 0, 1]);
    assert_eq!(ev.port, blocked_addr.port());

    // A descendant cgroup of the agent is the agent too.
    let (pid, outcome) = run_in(Some(&child), "net-worker", &blocked);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let ev = k.event_for(pid);
    assert_eq!(ev.cgroup_id, governance::agents::cgroup_id(&child).unwrap());
    assert_eq!(ev.agent_id, k.agents[0].agent_id());

    // An unlisted destination is allowed for the agent, and reported as allowed by default.
    let (pid, outcome) = run_in(
        Some(&agent.path),
        "net-agent",
        &Attempt::Connect4 { addr: open_addr },
    );
    assert_eq!(outcome, Outcome::Exited(0));
    let ev = k.event_for(pid);
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Allow));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));

    // Controls: the same blocked connect from outside the agent succeeds and is not reported.
    let (pid, outcome) = run_in(Some(&outsider.path), "net-outsider", &blocked);
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "control connect outside the agent must succeed"
    );
    assert!(
        k.try_event_for(pid, std::time::Duration::from_millis(300))
            .is_none()
    );
    let (_, outcome) = run_in(None, "net-here", &blocked);
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn detaching_on_drop_stops_enforcement() {
    require_root();
    let agent = TestCgroup::new("agent");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let attempt = Attempt::Connect4 { addr };
    {
        let mut k = load(&format!(
            "name: a\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: no-loopback, network: {{ cidr: 127.0.0.0/8 }}, verdict: block, reason: test }}\n",
            agent.rel.display()
        ));
        k.enforcer
            .attach_connect4(&governance::agents::cgroup2_mount().unwrap())
            .unwrap();
        assert_eq!(
            run_in(Some(&agent.path), "a", &attempt).1,
            Outcome::Errno(libc::EPERM)
        );
    }
    // Until the lifecycle work pins links, enforcement lives as long as the loader. A link is
    // detached when its last fd closes, and children that other tests fork at the same moment
    // hold copies of every fd of this process until they exit: allow them a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut outcome = run_in(Some(&agent.path), "a", &attempt).1;
    while outcome != Outcome::Exited(0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        outcome = run_in(Some(&agent.path), "a", &attempt).1;
    }
    assert_eq!(outcome, Outcome::Exited(0));
}

/// `governance run` must never pretend to enforce: where the exec hook cannot attach it
/// explains why and exits 3; `--allow-degraded` runs with what is available.
#[test]
fn run_refuses_without_exec_enforcement_unless_degraded_is_accepted() {
    require_root();
    let bin = governance_tests::governance_bin();
    let mut probe = governance::kernel::Enforcer::load(1).unwrap();
    let exec_available = probe.attach_exec().is_ok();
    drop(probe);
    let agent = TestCgroup::new("cli");
    let dir = std::env::temp_dir().join(format!("governance-test-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!("name: cli\nagents: {{ cgroup: {} }}\n", agent.rel.display()),
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["run", "--no-create-cgroups", "--policy"])
        .arg(&dir)
        .env("GOVERNANCE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if exec_available {
        panic!(
            "this kernel loads BPF LSM programs; host_kernel expects the CI host, which does not:\n{stderr}"
        );
    }
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("exec    (lsm/bprm_check_security)  NOT AVAILABLE"),
        "{stderr}"
    );
    assert!(
        stderr.contains("connect (cgroup/connect4)          attached"),
        "{stderr}"
    );
    assert!(stderr.contains("refusing generation 1"), "{stderr}");
    assert!(stderr.contains("--allow-degraded"), "{stderr}");

    // With --allow-degraded it starts, says DEGRADED, and stops cleanly on SIGTERM.
    let (daemon, seen) = start_daemon(&["--allow-degraded", "--no-create-cgroups"], &dir);
    assert!(seen.contains("running DEGRADED"), "{seen}");
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A running daemon reloads: a broken policy keeps generation N enforcing, a good one becomes
/// N+1, and events say which generation decided.
#[test]
fn reload_keeps_the_generation_on_a_broken_policy_and_moves_on_with_a_good_one() {
    use std::io::BufRead as _;
    require_root();
    let agent = TestCgroup::new("reload");
    let (_l, addr) = listener([127, 0, 0, 1]);
    let attempt = Attempt::Connect4 { addr };
    let dir = std::env::temp_dir().join(format!("governance-test-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.yaml");
    let blocking = format!(
        "name: reload\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: no-loopback, network: {{ cidr: 127.0.0.1/32 }}, verdict: block, reason: test }}\n",
        agent.rel.display()
    );
    std::fs::write(&policy, &blocking).unwrap();
    let (mut daemon, seen) = start_daemon(&["--allow-degraded", "--no-create-cgroups"], &dir);
    assert!(seen.contains("as generation 1"), "{seen}");
    let mut stdout = std::io::BufReader::new(daemon.child.stdout.take().unwrap());
    let mut next_event = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    };
    assert_eq!(
        run_in(Some(&agent.path), "reload", &attempt).1,
        Outcome::Errno(libc::EPERM)
    );
    let line = next_event();
    assert!(
        line.contains(" BLOCK connect ") && line.contains(" gen=1 "),
        "{line}"
    );

    // A broken file: the reload fails, names the place, and generation 1 keeps enforcing.
    std::fs::write(
        &policy,
        "name: reload\nagents: { cgroup: x }\nrules:\n  - { id: a, verdict: deny }\n",
    )
    .unwrap();
    let seen = daemon.wait_for("p.yaml:4:");
    assert!(seen.contains("generation 1 keeps enforcing"), "{seen}");
    assert_eq!(
        run_in(Some(&agent.path), "reload", &attempt).1,
        Outcome::Errno(libc::EPERM)
    );
    assert!(next_event().contains(" gen=1 "));

    // A good file: generation 2 allows, and says so.
    let allowing = blocking.replace("verdict: block", "verdict: allow");
    std::fs::write(&policy, &allowing).unwrap();
    daemon.wait_for("generation 2 is enforcing");
    assert_eq!(
        run_in(Some(&agent.path), "reload", &attempt).1,
        Outcome::Exited(0)
    );
    let line = next_event();
    assert!(
        line.contains(" ALLOW connect ") && line.contains(" gen=2 "),
        "{line}"
    );

    // SIGHUP reloads too.
    signal(&daemon, nix::sys::signal::SIGHUP);
    daemon.wait_for("generation 3 is enforcing");
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
