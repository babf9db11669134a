//! The red-team suite (../shared/redteam.md) against the BPF LSM programs. It runs inside the VM
//! that `cargo xtask test` boots (a Debian 6.1 kernel with `bpf` among its LSMs), because the
//! host kernel refuses LSM programs.
//!
//! Layout, after Landlock's selftests: one fixture (an agent cgroup, an outsider cgroup, a
//! policy, files and tools), and a matrix of cases, each attempt made in a freshly forked child:
//! in the agent it must fail with EPERM and produce the matching decision event; the same
//! attempt outside the agent (the control) must not be refused. Each case prints
//! `redteam: tried|denied|control <case>`, which `cargo xtask test` counts.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use governance_common::{Cause, Event, Kind, Verdict, flags};
use governance_tests::{
    Attempt, Loaded, Outcome, TestCgroup, cstr, governance_bin, load, pin_dir, require_root,
    run_in, start_daemon, start_daemon_in, text,
};

const BUSYBOX: &str = "/bin/busybox";
const HELPER: &str = "/governance/bin/redteam-helper";

/// Files and tools of one test, in a private directory.
struct Fixture {
    dir: PathBuf,
    agent: TestCgroup,
    outsider: TestCgroup,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!("/tmp/rt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["allowed", "blocked", "secrets", "scratch", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // busybox picks the applet from argv[0]'s base name: these are `true` wherever they are.
        for tool in [
            "allowed/true",
            "allowed/sh",
            "blocked/true",
            "allowed/sandboxme",
        ] {
            std::fs::copy(BUSYBOX, dir.join(tool)).unwrap();
        }
        std::fs::copy(BUSYBOX, dir.join("blocked/interp")).unwrap();
        std::fs::write(dir.join("secrets/key"), "secret").unwrap();
        std::fs::write(dir.join("readonly.txt"), "read me").unwrap();
        std::fs::write(dir.join("public.txt"), "public").unwrap();
        std::fs::write(dir.join("approve-me.txt"), "after approval").unwrap();
        std::fs::write(dir.join("shadowed.txt"), "shadowed").unwrap();
        std::fs::write(dir.join("throttled.txt"), "throttled").unwrap();
        Self {
            dir,
            agent: TestCgroup::new("agent"),
            outsider: TestCgroup::new("outsider"),
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The red-team policy: exec allow-list, file and network rules, one of each verdict.
    fn policy(&self, extra: &str) -> String {
        let d = self.dir.display();
        format!(
            "name: redteam\n\
             agents: {{ cgroup: {agent} }}\n\
             defaults: {{ exec: block }}\n\
             sandbox_profiles:\n  jail: {{ network: none, writable: [{d}/scratch] }}\n\
             rules:\n\
             \x20 - {{ id: tools, exec: {{ prefix: {d}/allowed }}, verdict: allow, reason: the allow-list }}\n\
             \x20 - {{ id: busybox, exec: {{ path: {BUSYBOX} }}, verdict: allow, reason: shell }}\n\
             \x20 - {{ id: helper, exec: {{ path: {HELPER} }}, verdict: allow, reason: test helper }}\n\
             \x20 - {{ id: exfil, exec: {{ path: {d}/blocked/true }}, verdict: block, reason: exfiltration tool }}\n\
             \x20 - {{ id: sandboxed, exec: {{ path: {d}/allowed/sandboxme }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: untrusted tool }}\n\
             \x20 - {{ id: secrets, file: {{ prefix: {d}/secrets }}, verdict: block, reason: credentials }}\n\
             \x20 - {{ id: readonly, file: {{ path: {d}/readonly.txt, access: [write, truncate] }}, verdict: block, reason: read only }}\n\
             \x20 - {{ id: approve, file: {{ path: {d}/approve-me.txt }}, verdict: escalate, escalate: {{ timeout: 5m }}, reason: needs a human }}\n\
             \x20 - {{ id: trial, mode: shadow, file: {{ path: {d}/shadowed.txt }}, verdict: block, reason: trial rule }}\n\
             \x20 - {{ id: burst, file: {{ path: {d}/throttled.txt }}, verdict: throttle, throttle: {{ rate: 3, per: 1h }}, reason: rate limit }}\n\
             \x20 - {{ id: meta, network: {{ cidr: 169.254.169.254/32 }}, verdict: block, reason: metadata }}\n\
             \x20 - {{ id: v6, network: {{ cidr: 'fd00::/8' }}, verdict: block, reason: private v6 }}\n\
             \x20 - {{ id: dns, network: {{ ports: 53, protocol: udp }}, verdict: block, reason: no outside resolvers }}\n\
             {extra}",
            agent = self.agent.rel.display(),
        )
    }

    fn load(&self, extra: &str) -> Loaded {
        let k = load(&self.policy(extra));
        for hook in [
            "bprm_check_security",
            "file_open",
            "socket_create",
            "userns_create",
            "bpf",
            "task_kill",
            "ptrace_access_check",
            "inode_unlink",
            "connect4",
            "connect6",
            "sendmsg4",
            "sendmsg6",
            "sock_ops",
        ] {
            k.require(hook);
        }
        k
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the control (the same attempt outside the agent) must show.
#[derive(Clone, Copy)]
enum Control {
    /// It succeeds.
    Succeeds,
    /// It is not refused by us (other errors are the network's: no route in the VM).
    NotEperm,
}

/// A denial case: EPERM and a denial event of `kind` in the agent; the control outside.
fn deny(
    k: &mut Loaded,
    fx: &Fixture,
    case: &str,
    attempt: &Attempt,
    kind: Kind,
    control: Control,
) -> Event {
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}: in the agent");
    // The denial (a #! script, say, is allowed before its interpreter is refused).
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(Kind::from_u8(ev.kind), Some(kind), "{case}: event kind");
    assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}: event agent");
    assert_eq!(ev.cgroup_id, fx.agent.id(), "{case}: event cgroup");
    assert_eq!(ev.generation, k.generation, "{case}: event generation");
    assert_eq!(text(&ev.comm), "agent", "{case}: comm");
    println!("redteam: denied {case}");
    let (pid, outcome) = run_in(Some(&fx.outsider.path), "outsider", attempt);
    match control {
        Control::Succeeds => assert_eq!(outcome, Outcome::Exited(0), "{case}: control"),
        Control::NotEperm => assert_ne!(outcome, Outcome::Errno(libc::EPERM), "{case}: control"),
    }
    assert!(
        k.try_event_for(pid, Duration::from_millis(100)).is_none(),
        "{case}: no event outside the agent"
    );
    println!("redteam: control {case}");
    ev
}

/// An attempt that must pass in the agent (and be reported).
fn allow(k: &mut Loaded, fx: &Fixture, case: &str, attempt: &Attempt) -> Event {
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: allowed in the agent");
    let ev = k.event_for(pid);
    assert_eq!(ev.flags & flags::DENIED, 0, "{case}: event says allowed");
    ev
}

#[test]
fn exec_cases() {
    require_root();
    let fx = Fixture::new("exec");
    let mut k = fx.load("");
    let blocked = fx.p("blocked/true");

    // 1. The blocked binary by its path: the exact (inode) rule.
    let ev = deny(
        &mut k,
        &fx,
        "1 exec blocked binary",
        &Attempt::exec(&blocked, "true"),
        Kind::Exec,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(4));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule));
    assert_eq!(text(&ev.path), blocked.to_str().unwrap());

    // 2. Through a symlink, a hardlink and /proc/self/root.
    let symlink = fx.p("allowed/innocent");
    std::os::unix::fs::symlink(&blocked, &symlink).unwrap();
    let hardlink = fx.p("tmp/true");
    std::fs::hard_link(&blocked, &hardlink).unwrap();
    let proc_root = PathBuf::from("/proc/self/root").join(blocked.strip_prefix("/").unwrap());
    for (case, path) in [
        ("2 exec via symlink", &symlink),
        ("2 exec via hardlink", &hardlink),
        ("2 exec via /proc/self/root", &proc_root),
    ] {
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::exec(path, "true"),
            Kind::Exec,
            Control::Succeeds,
        );
        assert_eq!(ev.rule_id, k.rule(4), "{case}");
    }

    // 3. A copy of an allowed binary outside the allow-list: the default (block) decides.
    let copy = fx.p("tmp/copy-of-true");
    std::fs::copy(fx.p("allowed/true"), &copy).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "3 exec copy outside the allow-list",
        &Attempt::exec(&copy, "true"),
        Kind::Exec,
        Control::Succeeds,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));

    // 4. execveat(fd, "", AT_EMPTY_PATH) (what fexecve does): the kernel names it /dev/fd/N.
    let ev = deny(
        &mut k,
        &fx,
        "4 execveat AT_EMPTY_PATH",
        &Attempt::exec_fd(&blocked, "true"),
        Kind::Exec,
        Control::Succeeds,
    );
    assert!(text(&ev.path).starts_with("/dev/fd/"), "{}", text(&ev.path));

    // 5. A #! script whose interpreter is blocked (by the default): the interpreter is checked.
    let script = fx.p("allowed/script");
    std::fs::write(&script, format!("#!{}\n", fx.p("blocked/interp").display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "5 #! with a blocked interpreter",
        &Attempt::exec(&script, "script"),
        Kind::Exec,
        Control::NotEperm,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));

    // 5. `sh -c` starting the blocked binary: the shell runs, its inner exec is denied.
    println!("redteam: tried 5 sh -c blocked");
    let sh_c = Attempt::exec_args(
        &fx.p("allowed/sh"),
        &["sh", "-c", blocked.to_str().unwrap()],
    );
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &sh_c);
    assert_ne!(
        outcome,
        Outcome::Exited(0),
        "sh -c: the inner exec must fail"
    );
    let denied = k.event_where(|ev| {
        ev.flags & flags::DENIED != 0 && text(&ev.path) == blocked.to_str().unwrap()
    });
    assert_eq!(denied.rule_id, k.rule(4));
    println!("redteam: denied 5 sh -c blocked");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &sh_c);
    assert_eq!(outcome, Outcome::Exited(0), "sh -c control");
    println!("redteam: control 5 sh -c blocked");

    // 6. A binary unlinked after opening, executed through /proc/self/fd/N (default-deny).
    for (who, cgroup) in [("agent", &fx.agent.path), ("outsider", &fx.outsider.path)] {
        let copy = fx.p(&format!("tmp/unlinked-{who}"));
        std::fs::copy(fx.p("allowed/true"), &copy).unwrap();
        let attempt = Attempt::ExecUnlinked {
            path: cstr(&copy),
            argv: vec![c"true".into()],
        };
        if who == "agent" {
            println!("redteam: tried 6 exec of an unlinked binary via /proc/self/fd");
        }
        let (pid, outcome) = run_in(Some(cgroup), who, &attempt);
        if who == "agent" {
            assert_eq!(
                outcome,
                Outcome::Errno(libc::EPERM),
                "6 unlinked binary in the agent"
            );
            let ev = k.event_for(pid);
            assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
            println!("redteam: denied 6 exec of an unlinked binary via /proc/self/fd");
        } else {
            assert_eq!(outcome, Outcome::Exited(0), "6 control");
            println!("redteam: control 6 exec of an unlinked binary via /proc/self/fd");
        }
    }

    // The allow-list itself works, and is reported.
    let ev = allow(
        &mut k,
        &fx,
        "allowed tool",
        &Attempt::exec(&fx.p("allowed/true"), "true"),
    );
    assert_eq!(ev.rule_id, k.rule(1));
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Allow));
}

#[test]
fn file_cases() {
    require_root();
    let fx = Fixture::new("file");
    let mut k = fx.load("");
    let key = fx.p("secrets/key");
    let rd = libc::O_RDONLY;

    // 7. Directly, through `..`, a symlink, /proc/self/root.
    let link = fx.p("tmp/not-a-key");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let dotdot = fx.p("allowed/../secrets/./key");
    let proc_root = PathBuf::from("/proc/self/root").join(key.strip_prefix("/").unwrap());
    for (case, path) in [
        ("7 open denied file", &key),
        ("7 open via ..", &dotdot),
        ("7 open via symlink", &link),
        ("7 open via /proc/self/root", &proc_root),
    ] {
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::open(path, rd),
            Kind::File,
            Control::Succeeds,
        );
        assert_eq!(ev.rule_id, k.rule(6), "{case}");
        assert_eq!(
            text(&ev.path),
            key.to_str().unwrap(),
            "{case}: the resolved path"
        );
        assert_eq!(ev.detail, 1, "{case}: read access");
    }
    // 8. O_PATH is not an open the LSM sees; re-opening it through /proc/self/fd/N is.
    deny(
        &mut k,
        &fx,
        "8 O_PATH then /proc/self/fd reopen",
        &Attempt::Reopen {
            path: cstr(&key),
            flags: rd,
        },
        Kind::File,
        Control::Succeeds,
    );
    // 9. openat2 with RESOLVE_* flags.
    for (case, resolve) in [
        ("9 openat2 RESOLVE_NO_SYMLINKS", 0x04u64),
        ("9 openat2 RESOLVE_NO_MAGICLINKS", 0x02),
    ] {
        let attempt = Attempt::Openat2 {
            path: cstr(&key),
            flags: rd,
            resolve,
        };
        deny(&mut k, &fx, case, &attempt, Kind::File, Control::Succeeds);
    }
    // 10. A write-only rule: reading works, writing and truncating do not.
    let ro = fx.p("readonly.txt");
    let ev = allow(
        &mut k,
        &fx,
        "10 read of a write-protected file",
        &Attempt::open(&ro, rd),
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
    deny(
        &mut k,
        &fx,
        "10 write of a write-protected file",
        &Attempt::open(&ro, libc::O_WRONLY),
        Kind::File,
        Control::Succeeds,
    );
    deny(
        &mut k,
        &fx,
        "10 truncate of a write-protected file",
        &Attempt::open(&ro, libc::O_RDONLY | libc::O_TRUNC),
        Kind::File,
        Control::Succeeds,
    );

    // A path longer than the kernel matches denies for agents (fail closed).
    let mut long = fx.p("tmp");
    while long.as_os_str().len() < 300 {
        long = long.join("a-rather-long-directory-name-0123456789");
    }
    std::fs::create_dir_all(&long).unwrap();
    let file = long.join("f");
    std::fs::write(&file, "x").unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "long path fails closed",
        &Attempt::open(&file, rd),
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::TooLong));
}

#[test]
fn network_cases() {
    require_root();
    let fx = Fixture::new("net");
    let svc = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = svc.local_addr().unwrap().port();
    let mut k = fx.load(&format!(
        "\x20 - {{ id: svc, network: {{ cidr: 127.0.0.1/32, ports: {port} }}, verdict: block, reason: other local service }}\n"
    ));
    let v4 = |a: [u8; 4], p: u16| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), p));
    // 11/16. Direct TCP to a non-allowed address and to the metadata service.
    deny(
        &mut k,
        &fx,
        "16 connect to 169.254.169.254",
        &Attempt::connect(v4([169, 254, 169, 254], 80)),
        Kind::Connect,
        Control::NotEperm,
    );
    let ev = deny(
        &mut k,
        &fx,
        "16 connect to another local service",
        &Attempt::connect(v4([127, 0, 0, 1], port)),
        Kind::Connect,
        Control::Succeeds,
    );
    assert_eq!(ev.port, port);
    // 12. IPv6, and IPv4-mapped IPv6 to the same local service.
    deny(
        &mut k,
        &fx,
        "12 IPv6 connect",
        &Attempt::connect("[fd00::1]:443".parse().unwrap()),
        Kind::Connect,
        Control::NotEperm,
    );
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
    deny(
        &mut k,
        &fx,
        "12 IPv4-mapped IPv6 connect",
        &Attempt::connect(mapped),
        Kind::Connect,
        Control::Succeeds,
    );
    // 13. Unconnected UDP to port 53; 14. connected UDP.
    let dns = v4([127, 0, 0, 53], 53);
    let ev = deny(
        &mut k,
        &fx,
        "13 unconnected UDP sendto :53",
        &Attempt::SendTo { addr: dns },
        Kind::Send,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, 17);
    deny(
        &mut k,
        &fx,
        "14 connected UDP to :53",
        &Attempt::Connect {
            addr: dns,
            udp: true,
        },
        Kind::Connect,
        Control::Succeeds,
    );
    // Another port of the same address is fine (port rules, not address rules).
    allow(
        &mut k,
        &fx,
        "UDP to another port",
        &Attempt::SendTo {
            addr: v4([127, 0, 0, 53], 54),
        },
    );
}

#[test]
fn escape_and_self_protection_cases() {
    require_root();
    let fx = Fixture::new("escape");
    let mut k = fx.load("");
    // 15. Raw, packet and netlink sockets.
    for (case, family, ty, protocol) in [
        (
            "15 raw socket",
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
        ),
        ("15 packet socket", libc::AF_PACKET, libc::SOCK_RAW, 0),
        (
            "15 netlink route socket",
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_ROUTE,
        ),
    ] {
        deny(
            &mut k,
            &fx,
            case,
            &Attempt::Socket {
                family,
                ty,
                protocol,
            },
            Kind::Socket,
            Control::Succeeds,
        );
    }
    // 17. Moving out of the agent through another cgroup's cgroup.procs.
    let procs = fx.outsider.path.join("cgroup.procs");
    deny(
        &mut k,
        &fx,
        "17 write pid into a cgroup.procs outside",
        &Attempt::write(&procs, "0"),
        Kind::File,
        Control::Succeeds,
    );
    // ... while moving into a child cgroup of its own works, and stays governed.
    let child = fx.agent.child("worker");
    allow(
        &mut k,
        &fx,
        "17 move into own child cgroup",
        &Attempt::write(&child.join("cgroup.procs"), "0"),
    );
    println!("redteam: tried 17 child cgroup still governed");
    let (pid, outcome) = run_in(
        Some(&child),
        "agent",
        &Attempt::exec(&fx.p("blocked/true"), "true"),
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    assert_eq!(k.event_for(pid).agent_cgroup, fx.agent.id());
    println!("redteam: denied 17 child cgroup still governed");
    println!("redteam: control 17 child cgroup still governed");
    // 18. New user namespaces.
    deny(
        &mut k,
        &fx,
        "18 unshare -U",
        &Attempt::Unshare {
            flags: libc::CLONE_NEWUSER,
        },
        Kind::Userns,
        Control::Succeeds,
    );
    // 19. bpf() on the pins, and removing a pin.
    let state_pin = k.pins.join("maps/STATE");
    deny(
        &mut k,
        &fx,
        "19 bpf(BPF_OBJ_GET) on a pin",
        &Attempt::BpfObjGet {
            path: cstr(&state_pin),
        },
        Kind::Bpf,
        Control::Succeeds,
    );
    println!("redteam: tried 19 rm of a pin");
    let (pid, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::Unlink {
            path: cstr(&k.pins.join("maps/COUNTERS")),
        },
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    assert_eq!(Kind::from_u8(k.event_for(pid).kind), Some(Kind::Unlink));
    assert!(k.pins.join("maps/COUNTERS").exists());
    println!("redteam: denied 19 rm of a pin");
    // The control removes a pin of its own (a second pin of the same map).
    let spare = k.pins.join("spare");
    aya::maps::MapData::from_pin(k.pins.join("maps/COUNTERS"))
        .unwrap()
        .pin(&spare)
        .unwrap();
    let (_, outcome) = run_in(
        Some(&fx.outsider.path),
        "outsider",
        &Attempt::Unlink { path: cstr(&spare) },
    );
    assert_eq!(outcome, Outcome::Exited(0));
    println!("redteam: control 19 rm of a pin");
    // 20. Signals and ptrace against a protected process (standing in for the daemon).
    let mut guarded = std::process::Command::new(BUSYBOX)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let gpid = guarded.id();
    k.enforcer.protect(&[gpid]).unwrap();
    deny(
        &mut k,
        &fx,
        "20 ptrace attach to the daemon",
        &Attempt::PtraceSeize { pid: gpid as i32 },
        Kind::Ptrace,
        Control::Succeeds,
    );
    deny(
        &mut k,
        &fx,
        "20 SIGSTOP to the daemon",
        &Attempt::Kill {
            pid: gpid as i32,
            sig: libc::SIGSTOP,
        },
        Kind::Signal,
        Control::Succeeds,
    );
    // SIGSTOP's control stopped it; the next control (SIGKILL) ends it.
    deny(
        &mut k,
        &fx,
        "20 kill -9 of the daemon",
        &Attempt::Kill {
            pid: gpid as i32,
            sig: libc::SIGKILL,
        },
        Kind::Signal,
        Control::Succeeds,
    );
    let _ = guarded.wait();
}

#[test]
fn verdicts_shadow_throttle_sandbox_escalate() {
    require_root();
    let fx = Fixture::new("verdicts");
    let mut k = fx.load("");
    let rd = libc::O_RDONLY;
    // Shadow: allowed, reported as "would block".
    let ev = allow(
        &mut k,
        &fx,
        "shadow",
        &Attempt::open(&fx.p("shadowed.txt"), rd),
    );
    assert_ne!(ev.flags & flags::SHADOW, 0);
    assert_eq!(ev.shadow_rule_id, k.rule(9));
    assert_eq!(Verdict::from_u8(ev.shadow_verdict), Some(Verdict::Block));
    // Throttle: 3 per hour, the 4th is refused.
    let t = Attempt::open(&fx.p("throttled.txt"), rd);
    for _ in 0..3 {
        let ev = allow(&mut k, &fx, "throttle within the rate", &t);
        assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Throttle));
    }
    let ev = deny(
        &mut k,
        &fx,
        "throttle beyond the rate",
        &t,
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Throttle));
    // Sandbox: the tool runs, marked; from then on it and its children are confined
    // (no writes outside scratch/, no network).
    let script = format!(
        "echo ok > {d}/scratch/ok && ! echo no > {d}/tmp/escaped && ! nc 127.0.0.1 1 </dev/null",
        d = fx.dir.display()
    );
    println!("redteam: tried sandbox confines the process and its children");
    let sandboxed = Attempt::exec_args(&fx.p("allowed/sandboxme"), &["sh", "-c", &script]);
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &sandboxed);
    let ev = k.event_for(pid);
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Sandbox));
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "sandboxed: scratch writable, the rest not"
    );
    assert!(fx.p("scratch/ok").exists());
    // The kernel creates an O_CREAT file before file_open decides: an empty file may remain,
    // but nothing was written to it (see the README's limits).
    assert_eq!(
        std::fs::read_to_string(fx.p("tmp/escaped")).unwrap_or_default(),
        ""
    );
    let confined =
        k.event_where(|e| e.flags & flags::SANDBOXED != 0 && e.flags & flags::DENIED != 0);
    assert_eq!(Kind::from_u8(confined.kind), Some(Kind::File));
    println!("redteam: denied sandbox confines the process and its children");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &sandboxed);
    assert_ne!(
        outcome,
        Outcome::Exited(0),
        "control: unconfined, the escape write succeeds"
    );
    assert_eq!(
        std::fs::read_to_string(fx.p("tmp/escaped")).unwrap(),
        "no\n"
    );
    println!("redteam: control sandbox confines the process and its children");
    // Escalate: refused now with an approval request; approved; the retry passes.
    let a = Attempt::open(&fx.p("approve-me.txt"), rd);
    let ev = deny(
        &mut k,
        &fx,
        "escalate holds until approved",
        &a,
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Escalate));
    // Approval through the daemon is tested in `daemon_events_and_approvals`; here the grant
    // is written straight into the map, as the daemon's approval does.
    let g = governance::events::GrantRequest::of(&ev).expect("an approval request");
    k.enforcer
        .grant(
            governance_common::GrantKey {
                cgroup_id: g.cgroup_id,
                kind: g.kind,
                _pad: [0; 7],
                object: g.object,
            },
            governance::events::monotonic_ns() + 60_000_000_000,
        )
        .unwrap();
    let ev = allow(&mut k, &fx, "escalate retried after approval", &a);
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Granted));
    // The grant is for that object only.
    deny(
        &mut k,
        &fx,
        "escalate grant is per object",
        &Attempt::open(&fx.p("secrets/key"), rd),
        Kind::File,
        Control::Succeeds,
    );
}

/// Red-team case 21, the Phantom race: the path buffer flips between an allowed and a denied file while the
/// kernel reads it; the verdict always matches the object actually opened or executed.
#[test]
fn phantom_race_decides_on_the_object() {
    require_root();
    let fx = Fixture::new("phantom");
    let mut k = fx.load("");
    // Same-length names: an allowed file and the denied one.
    let allowed = fx.p("allowed/key");
    std::fs::write(&allowed, "public").unwrap();
    let denied = fx.p("secrets/key");
    let (ap, dp) = (allowed.to_str().unwrap(), denied.to_str().unwrap());
    assert_eq!(ap.len(), dp.len());
    println!("redteam: tried 21 phantom race on open");
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::exec_args(
            Path::new(HELPER),
            &["redteam-helper", "phantom-open", ap, dp, "10000"],
        ),
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "phantom-open: 0 ok, 1 a denied file was opened, 2 no race"
    );
    println!("redteam: denied 21 phantom race on open");
    println!("redteam: control 21 phantom race on open");
    // Every file event is consistent: denials name the denied file, allows the allowed one.
    // The helper has exited, so its events are in the ring already: the drain ends at the
    // first 200 ms without one (nothing is waited for).
    let mut seen = 0;
    while let Some(ev) = k.try_event_where(Duration::from_millis(200), |e| {
        Kind::from_u8(e.kind) == Some(Kind::File) && [ap, dp].contains(&text(&e.path).as_str())
    }) {
        let path = text(&ev.path);
        if ev.flags & flags::DENIED != 0 {
            assert_eq!(path, dp);
        } else {
            assert_eq!(path, ap);
        }
        seen += 1;
    }
    assert!(seen > 0);

    // Exec: a spawned child shares the flipping buffer while it execs.
    let (ea, ed) = (fx.p("allowed/true"), fx.p("blocked/true"));
    let (ea, ed) = (ea.to_str().unwrap(), ed.to_str().unwrap());
    assert_eq!(ea.len(), ed.len());
    println!("redteam: tried 21 phantom race on exec");
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::exec_args(
            Path::new(HELPER),
            &["redteam-helper", "phantom-exec", ea, ed, "300"],
        ),
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "phantom-exec: both outcomes must occur"
    );
    // As above: the helper has exited, its events are all in the ring.
    let mut checked = 0;
    while let Some(ev) = k.try_event_where(Duration::from_millis(200), |e| {
        Kind::from_u8(e.kind) == Some(Kind::Exec) && [ea, ed].contains(&text(&e.path).as_str())
    }) {
        let path = text(&ev.path);
        // The name in the event is the kernel's copy, the one it resolved: it decides.
        if ev.flags & flags::DENIED != 0 {
            assert_eq!(path, ed);
        } else {
            assert_eq!(path, ea);
        }
        checked += 1;
    }
    assert!(checked > 0);
    println!("redteam: denied 21 phantom race on exec");
    println!("redteam: control 21 phantom race on exec");
}

/// Reliability fault 4: a flood of denied opens. Every one is denied; events beyond the ring's
/// capacity are dropped and counted.
#[test]
fn ring_buffer_flood_never_loses_a_denial() {
    require_root();
    let fx = Fixture::new("flood");
    let k = fx.load("");
    let n = 50_000;
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::exec_args(
            Path::new(HELPER),
            &[
                "redteam-helper",
                "flood",
                fx.p("secrets/key").to_str().unwrap(),
                &n.to_string(),
            ],
        ),
    );
    assert_eq!(outcome, Outcome::Exited(0), "every open denied");
    let denials = k
        .enforcer
        .counter(governance_common::Counter::Denials)
        .unwrap();
    let dropped = k
        .enforcer
        .counter(governance_common::Counter::EventsDropped)
        .unwrap();
    assert!(denials >= n, "denials counted: {denials}");
    assert!(
        dropped > 0,
        "nobody read the ring: drops must be counted ({dropped})"
    );
    // Counted per CPU, and shown so by `governance status`.
    let per_cpu = k
        .enforcer
        .counter_per_cpu(governance_common::Counter::EventsDropped)
        .unwrap();
    assert_eq!(per_cpu.len(), aya::util::nr_cpus().unwrap());
    assert_eq!(per_cpu.iter().sum::<u64>(), dropped);
    let status = std::process::Command::new(governance_bin())
        .args(["status", "--pinned", "--pins"])
        .arg(&*k.pins)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    let each: Vec<String> = per_cpu.iter().map(u64::to_string).collect();
    assert!(
        shown.contains(&format!(
            "events dropped   {dropped} (per CPU: {})",
            each.join(" ")
        )),
        "{shown}"
    );
}

/// Reliability fault 1: `kill -9` the daemon in the middle of an exec loop. Denials continue
/// (the links are pinned); a restarted daemon adopts the pins without attaching again and
/// prints the events of the downtime.
#[test]
fn daemon_killed_enforcement_continues_and_restart_adopts() {
    use std::io::Read as _;
    require_root();
    let fx = Fixture::new("kill");
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), fx.policy("")).unwrap();
    let pins = pin_dir("daemon");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let args = ["--no-create-cgroups", "--pins", &pins_arg];
    let state = fx.p("state");
    let (mut daemon, _) = start_daemon_in(&args, &dir, state.clone());
    let blocked = Attempt::exec(&fx.p("blocked/true"), "true");
    let links = || {
        let out = std::process::Command::new("/usr/sbin/bpftool")
            .args(["link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("prog"))
            .count()
    };
    let before = links();
    let (_, outcome) = run_in(Some(&fx.agent.path), "before-kill", &blocked);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    daemon.child.kill().unwrap(); // SIGKILL, by pid
    let _ = daemon.child.wait();
    let mut pids = Vec::new();
    for _ in 0..5 {
        let (pid, outcome) = run_in(Some(&fx.agent.path), "while-dead", &blocked);
        assert_eq!(
            outcome,
            Outcome::Errno(libc::EPERM),
            "denials continue while the daemon is dead"
        );
        pids.push(pid);
    }
    let (outside_pid, outcome) = run_in(Some(&fx.outsider.path), "outsider", &blocked);
    assert_eq!(outcome, Outcome::Exited(0));
    let _ = outside_pid;
    let (mut daemon, seen) = start_daemon_in(&args, &dir, state.clone());
    assert!(seen.contains("adopted the programs pinned in"), "{seen}");
    assert_eq!(links(), before, "no link attached twice");
    // The downtime's events come first on stdout.
    governance_tests::signal(&daemon, nix::sys::signal::SIGTERM);
    let mut out = String::new();
    daemon
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(daemon.child.wait().unwrap().success());
    for pid in pids {
        assert!(
            out.contains(&format!("pid={pid} ")),
            "event of pid {pid} drained:\n{out}"
        );
    }
    // The audit log survived the SIGKILL: its chain verifies across both runs, and the
    // restart says enforcement went on while no daemon ran.
    let verify = std::process::Command::new(governance_bin())
        .args(["audit", "verify"])
        .arg(state.join("audit"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains("audit log OK"), "{report}");
    assert!(out.contains("adopted the pinned programs"), "{out}");
    // Still pinned after a clean stop; unload removes it and enforcement ends.
    let (_, outcome) = run_in(Some(&fx.agent.path), "after-stop", &blocked);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let out = std::process::Command::new(governance_bin())
        .args(["unload", "--pins", &pins_arg])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (_, outcome) = run_in(Some(&fx.agent.path), "after-unload", &blocked);
    assert_eq!(outcome, Outcome::Exited(0));
}

/// The built-in refusals of raw sockets and user namespaces are the policy's to relax: with
/// `kernel: { allow_raw_sockets: true, allow_user_namespaces: true }` the agent gets them (and
/// the decision is reported as allowed by the built-in).
#[test]
fn policy_relaxes_built_in_protections() {
    require_root();
    let fx = Fixture::new("relaxed");
    let mut k = fx.load("kernel: { allow_raw_sockets: true, allow_user_namespaces: true }\n");
    for attempt in [
        Attempt::Socket {
            family: libc::AF_NETLINK,
            ty: libc::SOCK_RAW,
            protocol: libc::NETLINK_ROUTE,
        },
        Attempt::Unshare {
            flags: libc::CLONE_NEWUSER,
        },
    ] {
        let ev = allow(&mut k, &fx, "relaxed built-in", &attempt);
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin));
    }
}

/// The incident responder's view: denied execs from an agent reach a live `governance events
/// --follow` subscriber, in order, with every field right; an escalation is approved with
/// `governance approve` and the agent's retry passes; the approval is on the stream with who
/// approved it.
#[test]
fn daemon_events_and_approvals() {
    use std::io::BufRead as _;
    require_root();
    let fx = Fixture::new("stream");
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), fx.policy("")).unwrap();
    let pins = pin_dir("stream");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, _) = start_daemon(
        &[
            "--no-create-cgroups",
            "--detach-on-exit",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    let agent = fx.agent.rel.display().to_string();
    let mut follower = std::process::Command::new(governance_bin())
        .args([
            "events", "--follow", "-o", "json", "--agent", &agent, "--socket",
        ])
        .arg(daemon.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
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
        // Generous: the VM is emulated and may share its two cores with a loaded host.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} on the event stream within 60 s"));
            if pred(&v) {
                return v;
            }
        }
    };
    // The stream's first record says the subscription is live: nothing after it is missed.
    let live = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no first record (stream.subscribed) on the event stream within 60 s");
    assert_eq!(
        live["kind"], "stream.subscribed",
        "the first record: {live}"
    );
    assert_eq!(live["type"], "lifecycle");
    assert_eq!(live["stream"]["filter"]["agent"], agent.as_str());
    assert!(live["stream"]["after_id"].as_str().is_some(), "{live}");
    let blocked = Attempt::exec(&fx.p("blocked/true"), "true");
    let mut pids = Vec::new();
    for _ in 0..3 {
        let (pid, outcome) = run_in(Some(&fx.agent.path), "stream-agent", &blocked);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM));
        pids.push(pid);
        let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &blocked);
        assert_eq!(outcome, Outcome::Exited(0), "control");
    }
    let mut last_id = String::new();
    for pid in pids {
        let v = next("the denied exec", &|v| {
            v["type"] == "decision" && v["kind"] == "exec" && v["denied"] == true
        });
        // In order, and every field as the kernel and the policy say.
        assert_eq!(v["process"]["pid"], pid, "in order: {v}");
        assert!(
            v["id"].as_str().unwrap() > last_id.as_str(),
            "ids ascend: {v}"
        );
        last_id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(v["outcome"], "block");
        assert_eq!(v["verdict"], "block");
        assert_eq!(v["mode"], "enforce");
        assert_eq!(v["rule"], "redteam/exfil");
        assert_eq!(v["reason"], "exfiltration tool");
        assert_eq!(v["generation"], 1);
        assert_eq!(v["source"], "kernel");
        assert_eq!(v["agent"]["name"], agent.as_str());
        assert_eq!(v["agent"]["cgroup"], agent.as_str());
        assert_eq!(v["agent"]["cgroup_id"], fx.agent.id());
        assert_eq!(v["agent"]["selector"], format!("cgroup={agent}"));
        assert_eq!(v["agent"]["pod"], "");
        assert_eq!(v["cgroup"]["id"], fx.agent.id());
        assert_eq!(v["process"]["tid"], pid);
        assert_eq!(v["process"]["ppid"], std::process::id());
        assert_eq!(v["process"]["uid"], 0);
        assert_eq!(v["process"]["comm"], "stream-agent");
        // The child exits right after the refused exec: procfs may or may not still have it.
        let e = v["process"]["enrichment"].as_str().unwrap();
        assert!(e == "procfs" || e == "gone", "{v}");
        assert_eq!(v["object"]["path"], fx.p("blocked/true").to_str().unwrap());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(!v["node"].as_str().unwrap().is_empty());
    }
    // An escalated open: refused now, queued for a human.
    let a = Attempt::open(&fx.p("approve-me.txt"), libc::O_RDONLY);
    let (_, outcome) = run_in(Some(&fx.agent.path), "stream-agent", &a);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let asked = next("the escalation", &|v| v["outcome"] == "escalate");
    let id = asked["approval"]["id"]
        .as_str()
        .expect("an approval id")
        .to_owned();
    let listed = daemon.cli(&["approvals", "-o", "json"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&id), "{listed}");
    let approved = daemon.cli(&["approve", &id, "--for", "1m", "--as", "tester"]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let (_, outcome) = run_in(Some(&fx.agent.path), "stream-agent", &a);
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "the retry passes after approval"
    );
    let granted = next("the approval", &|v| v["kind"] == "approval.approved");
    let by = granted["approval"]["by"].as_str().unwrap();
    assert!(
        by.starts_with("tester (uid 0 via the control socket)"),
        "{by}"
    );
    next("the granted retry", &|v| v["outcome"] == "granted");
    // A second approval of the same id is refused, naming who settled it.
    let again = daemon.cli(&["approve", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("approved"));
    // A stopping daemon ends the stream with a record that says why and a proper end of
    // body: the follower exits 0 (a cut mid-chunk would make it fail).
    governance_tests::stop_daemon(daemon);
    let ended = next("the end of the stream (stream.ended)", &|v| {
        v["kind"] == "stream.ended"
    });
    assert_eq!(ended["message"], "the daemon is stopping", "{ended}");
    let status = follower.wait().unwrap();
    assert!(status.success(), "the follower exited with {status:?}");
}

/// An attempt that must pass in the agent without a refusal (links and renames of unprotected
/// objects are not reported: nothing was at stake).
fn passes(k: &mut Loaded, fx: &Fixture, case: &str, attempt: &Attempt) {
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: allowed in the agent");
    assert!(
        k.try_event_where(Duration::from_millis(100), |e| e.tgid == pid
            && e.flags & flags::DENIED != 0)
            .is_none(),
        "{case}: nothing refused"
    );
}

/// Red-team cases 22-26: a file has many names. File rules decide on the object (its identity
/// and the identity of the directories above it), so another name for the same object (a hard
/// link, a renamed directory, a bind mount, another mount namespace, a chroot) reaches the same
/// rule; and an agent cannot make a name that would take a protected object out of its rule.
#[test]
fn names_cases() {
    require_root();
    let fx = Fixture::new("names");
    let rd = libc::O_RDONLY;
    // The state before the load: a hard link to a file in the protected directory (made by an
    // accomplice, or by the agent before it was governed), and the objects of the extra rules.
    std::fs::write(fx.p("secrets/linked"), "secret").unwrap();
    std::fs::hard_link(fx.p("secrets/linked"), fx.p("tmp/early-link")).unwrap();
    std::fs::write(fx.p("apikey.txt"), "key").unwrap();
    std::fs::create_dir_all(fx.p("vault")).unwrap();
    std::fs::write(fx.p("vault/doc"), "doc").unwrap();
    std::fs::create_dir_all(fx.p("outer/inner/deep")).unwrap();
    std::fs::write(fx.p("outer/inner/deep/f"), "deep").unwrap();
    for dir in [
        "tmp/ws/objects",
        "tmp/ws/sub",
        "tmp/bind-view",
        "tmp/ns-view",
        "tmp/own-view",
        "tmp/cg",
    ] {
        std::fs::create_dir_all(fx.p(dir)).unwrap();
    }
    let d = fx.dir.display();
    let extra = format!(
        "\x20 - {{ id: apikey, file: {{ path: {d}/apikey.txt }}, verdict: block, reason: api key }}\n\
         \x20 - {{ id: vault, file: {{ prefix: {d}/vault }}, verdict: block, reason: vault }}\n\
         \x20 - {{ id: deep, file: {{ prefix: {d}/outer/inner/deep }}, verdict: block, reason: deep }}\n"
    );
    let mut k = fx.load(&extra);
    k.require("inode_link");
    k.require("inode_rename");
    let (secrets, readonly) = (k.rule(6), k.rule(7));
    let (apikey, vault, deep) = (k.rule(14), k.rule(15), k.rule(16));

    /// An open refused in the agent by `rule`, through `path`, a name no path rule names.
    fn denied_open(k: &mut Loaded, fx: &Fixture, case: &str, path: &Path, rule: u32) -> Event {
        let ev = deny(
            k,
            fx,
            case,
            &Attempt::open(path, libc::O_RDONLY),
            Kind::File,
            Control::Succeeds,
        );
        assert_eq!(ev.rule_id, rule, "{case}: rule");
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule), "{case}: cause");
        ev
    }
    /// A link or rename refused in the agent by `rule`.
    fn denied_name(k: &mut Loaded, fx: &Fixture, case: &str, attempt: &Attempt, rule: u32, op: u8) {
        let ev = deny(k, fx, case, attempt, Kind::Link, Control::Succeeds);
        assert_eq!(ev.rule_id, rule, "{case}: rule");
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule), "{case}: cause");
        assert_eq!(ev.detail, op, "{case}: link or rename");
    }
    let (link_op, rename_op) = (
        governance_common::LINK_OP_LINK,
        governance_common::LINK_OP_RENAME,
    );

    // 22. Hard links: one made before the load, opened by its other name (the file had two
    // names at load, so it carries the directory's rule itself).
    let early = fx.p("tmp/early-link");
    let ev = denied_open(
        &mut k,
        &fx,
        "22 hard link made before the load",
        &early,
        secrets,
    );
    assert_eq!(
        text(&ev.path),
        early.to_str().unwrap(),
        "the name the agent used"
    );
    // One made from outside after the load, to a file with a rule of its own.
    let apikey_link = fx.p("tmp/apikey-link");
    std::fs::hard_link(fx.p("apikey.txt"), &apikey_link).unwrap();
    let ev = denied_open(
        &mut k,
        &fx,
        "22 hard link made from outside after the load",
        &apikey_link,
        apikey,
    );
    assert_eq!(text(&ev.path), apikey_link.to_str().unwrap());
    // The agent making one: of a protected file, and of a file made in the protected
    // directory after the load (its directory decides).
    denied_name(
        &mut k,
        &fx,
        "22 agent hard-links a protected file out",
        &Attempt::link(&fx.p("secrets/key"), &fx.p("tmp/agent-link")),
        secrets,
        link_op,
    );
    std::fs::write(fx.p("secrets/late"), "made after the load").unwrap();
    denied_name(
        &mut k,
        &fx,
        "22 agent hard-links a file made in the protected directory after the load",
        &Attempt::link(&fx.p("secrets/late"), &fx.p("tmp/late-link")),
        secrets,
        link_op,
    );
    // ... and of a file protected by its own rule, even in its own directory.
    denied_name(
        &mut k,
        &fx,
        "22 agent hard-links a file with its own rule",
        &Attempt::link(&fx.p("apikey.txt"), &fx.p("apikey-2.txt")),
        apikey,
        link_op,
    );

    // 23. Renames: a protected directory renamed from outside, the file opened by its new path.
    std::fs::rename(fx.p("vault"), fx.p("tmp/vault-moved")).unwrap();
    let moved = fx.p("tmp/vault-moved/doc");
    let ev = denied_open(
        &mut k,
        &fx,
        "23 ancestor directory renamed from outside",
        &moved,
        vault,
    );
    assert_eq!(text(&ev.path), moved.to_str().unwrap());
    std::fs::rename(fx.p("tmp/vault-moved"), fx.p("vault")).unwrap();
    // ... and a directory further up.
    std::fs::rename(fx.p("outer"), fx.p("tmp/outer-moved")).unwrap();
    let moved = fx.p("tmp/outer-moved/inner/deep/f");
    let ev = denied_open(
        &mut k,
        &fx,
        "23 a directory further up renamed from outside",
        &moved,
        deep,
    );
    assert_eq!(text(&ev.path), moved.to_str().unwrap());
    std::fs::rename(fx.p("tmp/outer-moved"), fx.p("outer")).unwrap();
    // The agent renaming it (away, or in place: the next generation would not find it at its
    // rule's path), or moving a protected file out. Each control moved it; it goes back.
    for (case, from, to, rule) in [
        (
            "23 agent renames a protected directory away",
            "vault",
            "tmp/vault-away",
            vault,
        ),
        (
            "23 agent renames a protected directory in place",
            "vault",
            "vault-2",
            vault,
        ),
        (
            "23 agent moves a file out of a protected directory",
            "secrets/key",
            "tmp/key-out",
            secrets,
        ),
        (
            "23 agent renames a file with its own rule",
            "apikey.txt",
            "apikey-old.txt",
            apikey,
        ),
        (
            "23 agent renames a directory above a protected one in place",
            "outer/inner",
            "outer/inner-2",
            deep,
        ),
        (
            "23 agent moves a directory above a protected one away",
            "outer",
            "tmp/outer-away",
            deep,
        ),
    ] {
        denied_name(
            &mut k,
            &fx,
            case,
            &Attempt::rename(&fx.p(from), &fx.p(to)),
            rule,
            rename_op,
        );
        std::fs::rename(fx.p(to), fx.p(from)).unwrap();
    }

    // 24. Views: a bind mount of the protected directory made outside (a file made in it after
    // the load too), another mount namespace's view through /proc/PID/root, a chroot, and the
    // agent's own mounts (as root it may mount, in a namespace of its own).
    let view = fx.p("tmp/bind-view");
    let (src, dst) = (cstr(&fx.p("secrets")), cstr(&view));
    // SAFETY: plain mount(2) with NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "bind mount: {}", std::io::Error::last_os_error());
    let ev = denied_open(
        &mut k,
        &fx,
        "24 bind mount of the protected directory",
        &view.join("key"),
        secrets,
    );
    assert_eq!(text(&ev.path), view.join("key").to_str().unwrap());
    denied_open(
        &mut k,
        &fx,
        "24 bind mount, a file made after the load",
        &view.join("late"),
        secrets,
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::umount2(dst.as_ptr(), 0) }, 0, "umount");
    {
        let ns = governance_tests::MountNsView::new(&fx.p("secrets"), &fx.p("tmp/ns-view"));
        let path = ns.path(&fx.p("tmp/ns-view/key"));
        let ev = denied_open(
            &mut k,
            &fx,
            "24 another mount namespace's view",
            &path,
            secrets,
        );
        assert_ne!(
            text(&ev.path),
            fx.p("secrets/key").to_str().unwrap(),
            "not the rule's path"
        );
    }
    let ev = deny(
        &mut k,
        &fx,
        "24 chroot view",
        &Attempt::ChrootOpen {
            root: cstr(&fx.dir),
            path: c"/secrets/key".into(),
            flags: rd,
        },
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(
        (ev.rule_id, text(&ev.path).as_str()),
        (secrets, "/secrets/key")
    );
    let ev = deny(
        &mut k,
        &fx,
        "24 agent bind-mounts the protected directory itself",
        &Attempt::MountOpen {
            source: cstr(&fx.p("secrets")),
            target: cstr(&fx.p("tmp/own-view")),
            fstype: c"".into(),
            mount_flags: libc::MS_BIND,
            path: cstr(&fx.p("tmp/own-view/key")),
            flags: rd,
        },
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, secrets);
    // A second cgroup2 mount, to move out through another cgroup's cgroup.procs: the
    // built-in protection of the cgroup tree holds by identity too.
    let procs = fx.p("tmp/cg").join(&fx.outsider.rel).join("cgroup.procs");
    let ev = deny(
        &mut k,
        &fx,
        "24 agent mounts cgroup2 again and opens another cgroup's cgroup.procs",
        &Attempt::MountOpen {
            source: c"none".into(),
            target: cstr(&fx.p("tmp/cg")),
            fstype: c"cgroup2".into(),
            mount_flags: 0,
            path: cstr(&procs),
            flags: libc::O_WRONLY,
        },
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(
        (ev.rule_id & 0x7fff_ffff, Cause::from_u8(ev.cause)),
        (0, Some(Cause::Rule)),
        "the built-in protected path"
    );

    // Opens by file handle (open_by_handle_at; root has CAP_DAC_READ_SEARCH): no name at all.
    // On tmpfs the handle finds a dentry of the file, below its directory. (Not secrets/key:
    // the control above gave it a second name outside, and the handle may find that one.)
    deny(
        &mut k,
        &fx,
        "24 open_by_handle_at of a protected file",
        &Attempt::OpenByHandle {
            dir: cstr(&fx.dir),
            handle: governance_tests::file_handle(&fx.p("vault/doc")),
            flags: rd,
        },
        Kind::File,
        Control::Succeeds,
    );
    // Another cgroup's cgroup.procs by handle, to move out: refused whether the handle finds
    // the file's cached dentry (the walk reaches the cgroup root) or, its name evicted from
    // the cache (kernfs, like disks, drops unused dentries), builds one connected to nothing
    // (its directories are unknown: the open fails closed). The VM's dentries stay cached, so
    // this exercises the first.
    let handle = governance_tests::file_handle(&fx.outsider.path.join("cgroup.procs"));
    let ev = deny(
        &mut k,
        &fx,
        "24 open_by_handle_at of another cgroup's cgroup.procs",
        &Attempt::OpenByHandle {
            dir: cstr(&fx.agent.path),
            handle,
            flags: libc::O_WRONLY,
        },
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(
        (ev.rule_id & 0x7fff_ffff, Cause::from_u8(ev.cause)),
        (0, Some(Cause::Rule)),
        "the built-in protected path"
    );

    // 25. Symlinks are resolved by the open: the object behind them decides.
    let sym = fx.p("tmp/ws/secrets-link");
    std::os::unix::fs::symlink(fx.p("secrets"), &sym).unwrap();
    let ev = denied_open(
        &mut k,
        &fx,
        "25 symlink to the protected directory",
        &sym.join("key"),
        secrets,
    );
    assert_eq!(text(&ev.path), fx.p("secrets/key").to_str().unwrap());

    // Legitimate work goes on: an editor's write-temp-and-rename, `mv` within a workspace,
    // git-like hard links, renaming over a file, all of unprotected objects.
    std::fs::write(fx.p("tmp/ws/file.tmp"), "draft").unwrap();
    std::fs::write(fx.p("tmp/ws/new.tmp"), "draft 2").unwrap();
    for (case, attempt) in [
        (
            "editor saves: rename the temporary file over the file",
            Attempt::rename(&fx.p("tmp/ws/file.tmp"), &fx.p("tmp/ws/file")),
        ),
        (
            "mv into another directory of the workspace",
            Attempt::rename(&fx.p("tmp/ws/file"), &fx.p("tmp/ws/sub/file")),
        ),
        (
            "git-like hard link of an unprotected object",
            Attempt::link(&fx.p("tmp/ws/sub/file"), &fx.p("tmp/ws/objects/ab12")),
        ),
        (
            "rename over an existing file elsewhere in the workspace",
            Attempt::rename(&fx.p("tmp/ws/new.tmp"), &fx.p("tmp/ws/sub/file")),
        ),
    ] {
        passes(&mut k, &fx, case, &attempt);
    }
    // A write-only rule through a hard link made outside: reading is fine, writing is not.
    let ro_link = fx.p("tmp/ro-link");
    std::fs::hard_link(fx.p("readonly.txt"), &ro_link).unwrap();
    let ev = allow(
        &mut k,
        &fx,
        "read of a write-protected file by another name",
        &Attempt::open(&ro_link, rd),
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
    let ev = deny(
        &mut k,
        &fx,
        "22 write of a write-protected file by another name",
        &Attempt::open(&ro_link, libc::O_WRONLY),
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, readonly);
    // A new name is a create in its directory, and a rename over a file replaces it: an agent
    // may not plant a file in the protected directory, rename within it, or replace a
    // write-protected file by renaming another over it.
    std::fs::write(fx.p("tmp/ws/replacement"), "not read only").unwrap();
    for (case, attempt, rule, op) in [
        (
            "23 agent links a file into the protected directory",
            Attempt::link(&fx.p("tmp/ws/objects/ab12"), &fx.p("secrets/planted")),
            secrets,
            link_op,
        ),
        (
            "23 agent renames a file within the protected directory",
            Attempt::rename(&fx.p("secrets/key"), &fx.p("secrets/key-2")),
            secrets,
            rename_op,
        ),
        (
            "23 agent renames a file over a write-protected one",
            Attempt::rename(&fx.p("tmp/ws/replacement"), &fx.p("readonly.txt")),
            readonly,
            rename_op,
        ),
    ] {
        denied_name(&mut k, &fx, case, &attempt, rule, op);
    }
    std::fs::rename(fx.p("secrets/key-2"), fx.p("secrets/key")).unwrap();

    // 26. Reloads resolve again. The protected file is replaced from outside (an editor
    // writes a new file and renames it over the old one), then hard-linked from outside: the
    // new generation knows the new file.
    std::fs::write(fx.p("apikey.new"), "new key").unwrap();
    std::fs::rename(fx.p("apikey.new"), fx.p("apikey.txt")).unwrap();
    // Meanwhile its path rule still applies.
    denied_open(
        &mut k,
        &fx,
        "26 replaced file, by its path",
        &fx.p("apikey.txt"),
        apikey,
    );
    k.reload(&fx.policy(&extra));
    let (secrets, apikey) = (k.rule(6), k.rule(14));
    let new_link = fx.p("tmp/apikey-new-link");
    std::fs::hard_link(fx.p("apikey.txt"), &new_link).unwrap();
    denied_open(
        &mut k,
        &fx,
        "26 replaced file, after the reload, by a new hard link",
        &new_link,
        apikey,
    );
    // A file made in the protected directory after the first load and hard-linked from
    // outside is known from the next generation on.
    let late_link = fx.p("tmp/late-outside-link");
    std::fs::hard_link(fx.p("secrets/late"), &late_link).unwrap();
    denied_open(
        &mut k,
        &fx,
        "26 file made after the load, hard-linked from outside, after the reload",
        &late_link,
        secrets,
    );
}
