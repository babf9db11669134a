//! BPF LSM tests. They run inside the VM that `cargo xtask test` boots (a Debian 6.1 kernel with
//! `bpf` among its LSMs), because the host kernel refuses LSM programs.
//!
//! Every denial is paired with a control: the same exec from a process outside the agent, which
//! must succeed and must not be reported.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use governance_common::{Cause, Event, Kind, Verdict};
use governance_tests::{
    Attempt, Loaded, Outcome, TestCgroup, load, require_root, run_in, start_daemon, stop_daemon,
    text,
};

/// A private copy of busybox under a name of our choosing: its own inode, so a rule for it
/// blocks exactly this file. busybox picks the applet from argv[0], so we run it as `true`.
struct Tool {
    dir: PathBuf,
    blocked: PathBuf,
    allowed: PathBuf,
}

impl Tool {
    fn new() -> Self {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("busybox must be present (the VM image ships it)");
        let dir = std::env::temp_dir().join(format!(
            "governance-vm-test-{}-{}",
            std::process::id(),
            rand()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let blocked = dir.join("exfil-tool");
        let allowed = dir.join("list-tool");
        std::fs::copy(busybox, &blocked).unwrap();
        std::fs::copy(busybox, &allowed).unwrap();
        Self {
            dir,
            blocked,
            allowed,
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// Load a policy whose agent `agent` may not run `blocked`, and attach the exec hook.
fn enforce_exec(agent: &TestCgroup, blocked: &Path) -> Loaded {
    let mut k = load(&format!(
        "name: exec-agent\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: no-exfil, exec: {{ path: {} }}, verdict: block, reason: test }}\n",
        agent.rel.display(),
        blocked.display()
    ));
    k.enforcer
        .attach_exec()
        .unwrap_or_else(|e| panic!("lsm/bprm_check_security must attach in the VM: {e}"));
    k
}

fn assert_exec_event(
    ev: &Event,
    k: &Loaded,
    cgroup_id: u64,
    pid: u32,
    comm: &str,
    path: &str,
    verdict: Verdict,
) {
    assert_eq!(Kind::from_u8(ev.kind), Some(Kind::Exec));
    assert_eq!(Verdict::from_u8(ev.verdict), Some(verdict));
    assert_eq!(ev.agent_id, k.agents[0].agent_id());
    assert_eq!(ev.cgroup_id, cgroup_id, "cgroup id");
    assert_eq!(ev.tgid, pid, "pid");
    assert_eq!(ev.pid, pid, "single-threaded child: tid == pid");
    assert_eq!(text(&ev.comm), comm, "comm");
    assert_eq!(text(&ev.path), path, "path");
    assert_eq!(ev.uid, 0);
}

#[test]
fn blocked_exec_is_denied_in_the_agent_and_runs_outside() {
    require_root();
    let tool = Tool::new();
    let agent = TestCgroup::new("agent");
    let outsider = TestCgroup::new("outsider");
    let mut k = enforce_exec(&agent, &tool.blocked);

    let attempt = Attempt::exec(&tool.blocked, "true");
    let (pid, outcome) = run_in(Some(&agent.path), "agent-proc", &attempt);
    assert_eq!(
        outcome,
        Outcome::Errno(libc::EPERM),
        "exec of a blocked binary in the agent"
    );
    let ev = k.event_for(pid);
    assert_exec_event(
        &ev,
        &k,
        agent.id(),
        pid,
        "agent-proc",
        tool.blocked.to_str().unwrap(),
        Verdict::Block,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Rule));
    assert_eq!(ev.rule_id, 1);
    assert_ne!(ev.time_ns, 0);

    // Controls: outside the agent (a sibling cgroup, and the root cgroup) the exec runs.
    let (pid, outcome) = run_in(Some(&outsider.path), "outsider", &attempt);
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "control: same exec outside the agent"
    );
    assert!(
        k.try_event_for(pid, Duration::from_millis(300)).is_none(),
        "no event for non-agents"
    );
    let (_, outcome) = run_in(None, "outsider", &attempt);
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn unlisted_exec_is_allowed_and_reported() {
    require_root();
    let tool = Tool::new();
    let agent = TestCgroup::new("agent");
    let mut k = enforce_exec(&agent, &tool.blocked);
    let (pid, outcome) = run_in(
        Some(&agent.path),
        "agent-ok",
        &Attempt::exec(&tool.allowed, "true"),
    );
    assert_eq!(outcome, Outcome::Exited(0));
    let ev = k.event_for(pid);
    assert_exec_event(
        &ev,
        &k,
        agent.id(),
        pid,
        "agent-ok",
        tool.allowed.to_str().unwrap(),
        Verdict::Allow,
    );
    assert_eq!(Cause::from_u8(ev.cause), Some(Cause::Default));
    assert_eq!(ev.rule_id, governance_common::NO_RULE);
}

#[test]
fn descendant_cgroups_are_the_same_agent() {
    require_root();
    let tool = Tool::new();
    let agent = TestCgroup::new("agent");
    let grandchild = {
        let child = agent.child("sub");
        let gc = child.join("deeper");
        std::fs::create_dir(&gc).unwrap();
        gc
    };
    let mut k = enforce_exec(&agent, &tool.blocked);
    let (pid, outcome) = run_in(
        Some(&grandchild),
        "nested",
        &Attempt::exec(&tool.blocked, "true"),
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let ev = k.event_for(pid);
    let gc_id = governance::agents::cgroup_id(&grandchild).unwrap();
    assert_exec_event(
        &ev,
        &k,
        gc_id,
        pid,
        "nested",
        tool.blocked.to_str().unwrap(),
        Verdict::Block,
    );
}

/// The decision is on the file being executed, not on the name used to reach it.
#[test]
fn symlinks_hardlinks_and_fd_exec_reach_the_same_denial() {
    require_root();
    let tool = Tool::new();
    let agent = TestCgroup::new("agent");
    let outsider = TestCgroup::new("outsider");
    let mut k = enforce_exec(&agent, &tool.blocked);
    let symlink = tool.dir.join("innocent-name");
    std::os::unix::fs::symlink(&tool.blocked, &symlink).unwrap();
    let hardlink = tool.dir.join("another-name");
    std::fs::hard_link(&tool.blocked, &hardlink).unwrap();
    let via_proc_root =
        PathBuf::from("/proc/self/root").join(tool.blocked.strip_prefix("/").unwrap());

    let cases = [
        ("symlink", Attempt::exec(&symlink, "true")),
        ("hardlink", Attempt::exec(&hardlink, "true")),
        ("proc-root", Attempt::exec(&via_proc_root, "true")),
        ("execveat", Attempt::exec_fd(&tool.blocked, "true")),
    ];
    for (name, attempt) in &cases {
        let (pid, outcome) = run_in(Some(&agent.path), name, attempt);
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{name} in the agent");
        let ev = k.event_for(pid);
        assert_eq!(Verdict::from_u8(ev.verdict), Some(Verdict::Block), "{name}");
        assert_eq!(ev.rule_id, 1, "{name}");
        let (_, outcome) = run_in(Some(&outsider.path), name, attempt);
        assert_eq!(
            outcome,
            Outcome::Exited(0),
            "{name}: control outside the agent"
        );
    }
}

/// What the daemon reports matches what the kernel did: `governance run` prints the denial.
#[test]
fn governance_run_prints_decisions_as_they_happen() {
    use std::io::{BufRead as _, BufReader};
    require_root();
    let tool = Tool::new();
    let agent = TestCgroup::new("cli");
    let dir = tool.dir.join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "name: cli-agent\nagents: {{ cgroup: {} }}\nrules:\n  - {{ id: no-exfil, exec: {{ path: {} }}, verdict: block, reason: exfiltration tool }}\n",
            agent.rel.display(),
            tool.blocked.display()
        ),
    )
    .unwrap();
    let (mut daemon, seen) = start_daemon(&["--no-create-cgroups"], &dir);
    assert!(
        seen.contains("exec    (lsm/bprm_check_security)  attached"),
        "{seen}"
    );

    let (pid, outcome) = run_in(
        Some(&agent.path),
        "cli-proc",
        &Attempt::exec(&tool.blocked, "true"),
    );
    assert_eq!(outcome, Outcome::Errno(libc::EPERM));
    let mut stdout = BufReader::new(daemon.child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    for part in [
        " BLOCK exec ",
        &format!("agent={}", agent.rel.display()),
        &format!("path={:?}", tool.blocked.display().to_string()),
        &format!("pid={pid} "),
        "comm=\"cli-proc\"",
        &format!("cgroup={} ", agent.id()),
        " gen=1 ",
        "rule=cli-agent/no-exfil reason=\"exfiltration tool\"",
    ] {
        assert!(line.contains(part), "missing {part:?} in {line:?}");
    }
    stop_daemon(daemon);

    // Programs go away with the daemon (pinning comes with the lifecycle work).
    let (_, outcome) = run_in(
        Some(&agent.path),
        "cli-proc",
        &Attempt::exec(&tool.blocked, "true"),
    );
    assert_eq!(outcome, Outcome::Exited(0));
}
