//! Agents as real containers on the host kernel: podman (Debian's package, runtime runc) runs
//! busybox containers from a root filesystem this test builds (Debian's static /bin/busybox),
//! each in its own network, mount and PID namespaces and its own cgroup. The agent is the
//! container's cgroup (`podman inspect`'s `.State.CgroupPath`), selected by the policy's path
//! glob below a parent cgroup the test makes (`--cgroup-parent`); a control container runs
//! under another parent, outside every agent. `cargo xtask test` runs this as the place
//! "containers (podman, host kernel)"; it fails, never skips, when podman cannot run.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use governance_tests::{
    Reaped, TestCgroup, listens_in, pin_dir, proxy_port, require_root, start_daemon, stop_daemon,
    wait_until,
};

/// A test-made containers.conf and root filesystem, removed on drop.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Self {
        let dir = PathBuf::from(format!(
            "/tmp/governance-test-{}-podman",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.join("rootfs/tmp")).unwrap();
        std::fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("/bin/busybox (Debian's busybox-static, installed by `cargo xtask setup`)");
        for applet in ["sh", "sleep", "nc", "wget", "cat"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        // No ulimits from the host's defaults (runc refuses some here), runc (crun fails on
        // hybrid cgroups).
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n",
        )
        .unwrap();
        Self { dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args(args);
        c
    }

    /// `podman ARGS`, which must succeed; its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap_or_else(|e| {
            panic!(
                "podman cannot run ({e}); `cargo xtask setup` installs podman, netavark and runc"
            )
        });
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A detached container sleeping under `parent` (a cgroup path relative to the cgroup2
    /// root), removed on drop.
    fn start(&self, parent: &Path) -> Container<'_> {
        let parent = format!("/{}", parent.display());
        let rootfs = self.dir.join("rootfs");
        let id = self.run(&[
            "run",
            "-d",
            "--runtime",
            "runc",
            "--cgroup-parent",
            &parent,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "/bin/sleep",
            "600",
        ]);
        Container { podman: self, id }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Container<'a> {
    podman: &'a Podman,
    id: String,
}

impl Container<'_> {
    fn inspect(&self, format: &str) -> String {
        self.podman.run(&["inspect", "--format", format, &self.id])
    }

    /// `podman exec` (the process joins the container's cgroup and namespaces): (success,
    /// stdout and stderr).
    fn exec(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["exec", self.id.as_str()];
        all.extend_from_slice(args);
        let out = self.podman.cmd(&all).output().unwrap();
        let text = format!(
            "[{}] {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.cmd(&["rm", "-f", "-t", "0", &self.id]).output();
    }
}

/// Network block, an HTTP block through the proxy from the container's own network
/// namespace, an allowed request (the original destination recovered exactly: the upstream at
/// the address and port the container asked for, connected from the container's namespace),
/// each with a control container outside the agent.
#[test]
fn containers_are_agents() {
    require_root();
    let podman = Podman::new();
    let agents = TestCgroup::new("containers");
    let outside = TestCgroup::new("containers-outside");
    // Containers first: the bridge's gateway (the host, as containers reach it) is known once
    // one runs.
    let agent = podman.start(&agents.rel);
    let control = podman.start(&outside.rel);
    let gateway = agent.inspect("{{.NetworkSettings.Gateway}}");
    assert!(!gateway.is_empty(), "the container has a bridge network");
    let blocked = TcpListener::bind((gateway.as_str(), 0)).expect("a listener on the bridge");
    let blocked_port = blocked.local_addr().unwrap().port();
    // The upstream, on the host's bridge address: where the container reaches the host (the
    // proxy connects from the container's namespace; the host's loopback is not the
    // container's).
    let port = {
        let l = TcpListener::bind((gateway.as_str(), 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let upstream_addr = format!("{gateway}:{port}");
    let mut upstream = Reaped(
        Command::new(env!("CARGO_BIN_EXE_redteam-helper"))
            .args(["http-upstream", &upstream_addr, "payments"])
            .spawn()
            .unwrap(),
    );
    wait_until("the upstream to listen", Duration::from_secs(10), || {
        assert!(
            matches!(upstream.try_wait(), Ok(None)),
            "the upstream exited"
        );
        std::net::TcpStream::connect(&upstream_addr).is_ok()
    });

    let dir = PathBuf::from(format!(
        "/tmp/governance-test-containers-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "name: containers\nagents: {{ cgroup: '{}/*' }}\ndefaults: {{ http: block }}\nrules:\n\
             \x20 - {{ id: node, network: {{ cidr: {gateway}/32 }}, verdict: block, reason: not the node }}\n\
             \x20 - {{ id: api, network: {{ cidr: {gateway}/32, ports: [{port}], via_proxy: true }}, verdict: allow, reason: through the engine }}\n\
             \x20 - {{ id: ok, http: {{ path: /allowed }}, verdict: allow, reason: fine }}\n\
             \x20 - {{ id: no, http: {{ path: /refunds }}, verdict: block, reason: never from a container }}\n",
            agents.rel.display()
        ),
    )
    .unwrap();
    let pins = pin_dir("containers");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let (daemon, seen) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--pins",
            &pins_arg,
        ],
        &dir,
    );
    let proxy_port = proxy_port(&seen);

    // The agent is the container's cgroup.
    let cgroup = agent.inspect("{{.State.CgroupPath}}");
    let status = || {
        let out = daemon.cli(&["agents"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(
        &format!("the daemon to govern the container's cgroup {cgroup}"),
        Duration::from_secs(30),
        || status().contains(cgroup.trim_start_matches('/')),
    );
    let control_cgroup = control.inspect("{{.State.CgroupPath}}");
    assert!(
        !status().contains(control_cgroup.trim_start_matches('/')),
        "the control container is no agent"
    );
    // The proxy listens in the container's network namespace (and not in the control's).
    let pid = agent.inspect("{{.State.Pid}}");
    wait_until(
        "the proxy to listen in the container's network namespace",
        Duration::from_secs(30),
        || listens_in(&pid, proxy_port),
    );
    assert!(!listens_in(&control.inspect("{{.State.Pid}}"), proxy_port));

    // A network block: refused in the kernel, in the container.
    let nc = |c: &Container<'_>| {
        c.exec(&[
            "sh",
            "-c",
            &format!("nc -w 5 {gateway} {blocked_port} </dev/null && echo CONNECTED"),
        ])
    };
    let (_, out) = nc(&agent);
    assert!(
        out.contains("Operation not permitted") && !out.contains("CONNECTED"),
        "the agent container's connect is refused: {out}"
    );
    // Control: the same from outside the agent reaches the node (one connection, accepted
    // and closed, which ends nc).
    let accepted = std::thread::spawn(move || blocked.accept().map(|_| ()));
    let (ok, out) = nc(&control);
    assert!(ok && out.contains("CONNECTED"), "control: {out}");
    accepted.join().unwrap().expect("the control's connection");

    // HTTP through the proxy, from the container's network namespace. By hand through busybox
    // nc (Debian's static busybox wget crashes resolving in a container: static glibc and NSS):
    // `nc -e` runs a script that writes the request to the connection and copies the answer to
    // stderr until the server closes.
    for path in ["allowed", "refunds"] {
        let script = podman.dir.join("rootfs/bin").join(format!("get-{path}"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf 'GET /{path} HTTP/1.1\\r\\nHost: {upstream_addr}\\r\\nConnection: close\\r\\n\\r\\n'\ncat >&2\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let http = |c: &Container<'_>, path: &str| {
        let script = format!("/bin/get-{}", path.trim_start_matches('/'));
        c.exec(&["nc", "-w", "20", &gateway, &port.to_string(), "-e", &script])
    };
    let (ok, out) = http(&agent, "/allowed");
    assert!(
        ok && out.contains("HTTP/1.1 200")
            && out.contains("\"upstream\":\"payments\"")
            && out.contains("\"path\":\"/allowed\""),
        "allowed: the upstream the container asked for answers: {out}"
    );
    let (_, out) = http(&agent, "/refunds");
    assert!(
        out.contains("HTTP/1.1 403") && !out.contains("\"upstream\""),
        "blocked by the proxy: {out}"
    );
    // Control: outside the agent nothing is redirected: the upstream answers what the proxy
    // refuses, undecided.
    let (_, out) = http(&control, "/refunds");
    assert!(
        out.contains("HTTP/1.1 200")
            && out.contains("\"upstream\":\"payments\"")
            && out.contains("\"path\":\"/refunds\""),
        "control: {out}"
    );

    // The records of the container's denials carry the pid inside the container (its own PID
    // namespace) beside the node's: the kernel's connect event always, the proxy's HTTP
    // record when the client was still alive to be read from procfs.
    let record = |kind: &str| {
        governance_tests::wait_for_value(
            &format!("the container's {kind} denial in the audit log"),
            Duration::from_secs(30),
            || {
                let files = std::fs::read_dir(daemon.audit()).ok()?;
                files.flatten().find_map(|f| {
                    let text = std::fs::read_to_string(f.path()).ok()?;
                    text.lines().find_map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).ok()?;
                        let r = &v["record"];
                        (r["kind"] == kind && r["denied"] == true).then(|| r["process"].clone())
                    })
                })
            },
        )
    };
    let p = record("connect");
    assert!(p["ns_pid"].as_u64().is_some_and(|n| n != p["pid"]), "{p}");
    let p = record("http");
    println!("containers: the HTTP denial's process: {p}");
    if p["enrichment"] == "procfs" {
        assert!(p["ns_pid"].as_u64().is_some_and(|n| n != p["pid"]), "{p}");
    }

    drop((control, agent));
    stop_daemon(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
