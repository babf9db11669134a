//! The compliance report (`governance report`) of a real daemon's audit log, rendered by a real
//! browser: Debian's chromium, headless, `--dump-dom` (the DOM after the page has loaded and
//! any script in it has run). The agent's name carries markup that would run script if it were
//! not escaped. `cargo xtask test` runs this as the place "compliance report (headless
//! chromium)"; it fails, never skips, without chromium (`cargo xtask setup` installs it).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use governance_tests::{
    Attempt, Outcome, TestCgroup, governance_bin, pin_dir, require_root, run_in, signal,
    start_daemon, text, wait_until,
};

/// What the injected name would do if the page ran it.
const INJECTED: &str = "x<img src=x onerror=document.title='pwned'>";

fn listener(ip: [u8; 4]) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::from(ip), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// `chromium --headless ARG page`: its standard output (the DOM for `--dump-dom`).
fn chromium(arg: &str, page: &Path, profile: &Path) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1200,2000",
            arg,
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running chromium: {e} (Debian's chromium: `cargo xtask setup` installs it)")
        });
    let pid = child.id();
    let mut status = None;
    wait_until(
        "chromium to render the report",
        Duration::from_secs(60),
        || {
            status = child.try_wait().unwrap();
            status.is_some()
        },
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium (pid {pid}) exited with {:?}: {}",
        out.status,
        text(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_report_of_a_real_log_renders_in_headless_chromium() {
    require_root();
    const REFUSED: usize = 3;
    const COUNTED: u64 = 4;
    let agent = TestCgroup::new(INJECTED);
    let (_blocked_l, blocked) = listener([127, 0, 0, 41]);
    let (_counted_l, counted) = listener([127, 0, 0, 42]);
    let dir = PathBuf::from(format!(
        "/tmp/governance-test-report-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "name: report\nagents: {{ cgroup: \"{cg}\" }}\nrules:\n\
             \x20 - {{ id: no-exfil, network: {{ cidr: 127.0.0.41/32 }}, verdict: block, reason: \"not <b>there</b>\" }}\n\
             \x20 - {{ id: routine, network: {{ cidr: 127.0.0.42/32 }}, verdict: allow, reason: routine, report: count }}\n",
            cg = agent.rel.display()
        ),
    )
    .unwrap();
    let pins = pin_dir("report-browser");
    let key = dir.join("audit.key");
    let (daemon, _) = start_daemon(
        &[
            "--allow-degraded",
            "--no-create-cgroups",
            "--detach-on-exit",
            "--quiet",
            "--no-proxy",
            "--pins",
            pins.to_str().unwrap(),
            "--audit-signing-key",
            key.to_str().unwrap(),
        ],
        &dir,
    );
    let ag = Some(agent.path.as_path());
    for i in 0..REFUSED {
        let (_, outcome) = run_in(ag, "report", &Attempt::connect(blocked));
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "refused connect {i}");
    }
    // The control: allowed, counted in the kernel.
    for i in 0..COUNTED {
        let (_, outcome) = run_in(ag, "report", &Attempt::connect(counted));
        assert_eq!(outcome, Outcome::Exited(0), "allowed connect {i}");
    }
    // Stopped (the last count record and the seal are written on the way out), its state kept
    // until the report is made.
    let mut daemon = daemon;
    signal(&daemon, nix::sys::signal::SIGTERM);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "governance exited with {status:?}");
    let audit = daemon.audit();

    let report = |format: &str, out: &Path| {
        let o = Command::new(governance_bin())
            .args(["report", "--since", "1h", "--format", format, "--audit-dir"])
            .arg(&audit)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "governance report: {}", text(&o.stderr));
    };
    let (html, json) = (dir.join("report.html"), dir.join("report.json"));
    report("html", &html);
    report("json", &json);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let name = agent.rel.to_str().unwrap();
    assert_eq!(r["verification"]["passed"], true, "{}", r["verification"]);
    assert_eq!(
        r["decisions"]["by_verdict"]["block"], REFUSED,
        "{}",
        r["decisions"]
    );
    assert!(
        r["decisions"]["counted"].as_u64().unwrap() >= COUNTED,
        "the counted connects are in allow: {}",
        r["decisions"]
    );
    assert_eq!(
        r["decisions"]["top_refused"][0],
        serde_json::json!({"rule": "report/no-exfil", "refused": REFUSED})
    );
    let a = r["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == name)
        .unwrap_or_else(|| panic!("agent {name} in {}", r["agents"]));
    assert_eq!(a["decisions"]["by_verdict"]["block"], REFUSED);
    // The generation's content hash is what sha256sum says of the policy.
    let sums = Command::new("sh")
        .args(["-c", "sha256sum p.yaml | sha256sum"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let expected = text(&sums.stdout);
    assert_eq!(
        r["generations"]["changes"][0]["sha256"].as_str(),
        expected.split_whitespace().next(),
        "{}",
        r["generations"]
    );
    // The bars each chart should have: one per bucket and verdict with decisions.
    let bars = |d: &serde_json::Value| -> usize {
        d["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["counts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c.as_u64() != Some(0))
                    .count()
            })
            .sum()
    };
    let node_bars = bars(&r["decisions"]);
    let series = r["decisions"]["series"].as_array().unwrap().len();
    assert!(node_bars >= 2 && series >= 2, "{}", r["decisions"]);

    let profile = dir.join("chromium-profile");
    let dom = chromium("--dump-dom", &html, &profile);
    // Rendered: its title, untouched by the injected name (whose handler would set it to
    // `pwned`).
    let title = dom
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or_else(|| panic!("no title in the DOM:\n{dom}"));
    assert!(
        title.starts_with("Governance compliance report: "),
        "{title}"
    );
    assert!(!dom.contains("<img"), "an injected element is in the DOM");
    assert!(
        !dom.contains("<b>there"),
        "an injected element is in the DOM"
    );
    assert!(dom.contains("x&lt;img src=x onerror=document.title='pwned'&gt;"));
    for section in [
        "summary",
        "verification",
        "decisions",
        "refused",
        "agents",
        "escalations",
        "generations",
        "drills",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"{section}\">")),
            "section {section}"
        );
    }
    assert!(dom.contains("<strong>PASSED</strong>"));
    assert!(dom.contains("No drills in this period"));
    // The node's chart: an SVG element with one rect per bar and its series.
    let chart = dom
        .split("id=\"chart-node\"")
        .nth(1)
        .and_then(|c| c.split("</svg>").next())
        .unwrap_or_else(|| panic!("no node chart in the DOM"));
    assert!(
        chart.contains(&format!("data-series=\"{series}\"")),
        "{chart}"
    );
    assert_eq!(
        chart.matches("<rect class=\"bar\"").count(),
        node_bars,
        "{chart}"
    );
    assert_eq!(
        chart.matches("data-verdict=\"block\"").count(),
        r["decisions"]["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["verdict"] == "block")
            .map(|s| s["counts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c.as_u64() != Some(0))
                .count())
            .unwrap()
    );
    // One chart per agent with decisions.
    assert_eq!(
        dom.matches("id=\"chart-agent-").count(),
        r["agents"].as_array().unwrap().len()
    );
    // And painted: a screenshot of the page, a PNG of the window's size.
    let png = dir.join("report.png");
    chromium(&format!("--screenshot={}", png.display()), &html, &profile);
    let png = std::fs::read(&png).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1200, 2000), "the screenshot's size");
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
