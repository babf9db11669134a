//! `cargo xtask test`: every place, in order, failing (never skipping) when one cannot run.

use super::*;

pub(super) fn test(kernel: Option<PathBuf>) -> Result<ExitCode> {
    let started = Instant::now();
    let mut steps = Steps::default();
    steps.time("setup", setup::ensure)?;
    if !setup::is_root() {
        bail!(
            "the kernel tests load eBPF programs and create cgroups, so `cargo xtask test` must run as root"
        );
    }
    // No --quiet for cargo anywhere below: on a fresh clone clippy and the test builds compile
    // for minutes, and cargo's "Compiling ..." lines (on stderr) are what shows them moving.
    progress("checking formatting (cargo fmt --check)");
    steps.time("formatting", || {
        heartbeat("checking formatting", || {
            run(Command::new("cargo").args(["fmt", "--all", "--check"]))
        })
    })?;
    progress("linting (cargo clippy --workspace --all-targets -D warnings)");
    steps.time("clippy", || {
        heartbeat("linting (cargo clippy)", || {
            run(Command::new("cargo").args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })
    })?;
    let b = steps.time("build", build)?;
    let mut places: Vec<(&str, bool, Counts)> = Vec::new();

    progress("unit tests (host)");
    // `-- --quiet`: libtest prints a dot per test (echoed as they come), cargo its progress.
    let (ok, c) = steps.time("unit tests", || {
        heartbeat("building and running the unit tests", || {
            counted(&["test", "--", "--quiet"], &[])
        })
    })?;
    places.push(("unit tests, host", ok, c));

    progress("policy check and policy tests (policies/)");
    let (ok, c) = steps.time("policy tests", || {
        heartbeat("checking and testing the policies", || -> Result<_> {
            run(Command::new(&b.governance).args(["policy", "check", "policies"]))?;
            let out = Command::new(&b.governance)
                .args(["policy", "test", "policies"])
                .output()
                .context("running governance policy test")?;
            let text = String::from_utf8_lossy(&out.stdout);
            print!("{text}{}", String::from_utf8_lossy(&out.stderr));
            let mut c = Counts::default();
            text.lines().for_each(|l| c.add_line(l));
            Ok((out.status.success(), c))
        })
    })?;
    places.push(("policy tests (policies/)", ok, c));

    progress("kernel tests on the host kernel (cgroup socket programs)");
    let (ok, c) = steps.time("kernel tests, host kernel", || {
        heartbeat("building and running the host kernel tests", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "host_kernel",
                    "--",
                    "--nocapture",
                    // One at a time: several start daemons, floods and 1,000-cgroup churns, and
                    // they share two cores; in parallel their timing assertions measure each
                    // other.
                    "--test-threads=1",
                ],
                &[("GOVERNANCE_BIN", &b.governance)],
            )
        })
    })?;
    places.push(("kernel tests, host kernel", ok, c));

    progress("audit log faults: a tmpfs filled to the brim, then given room again");
    let (ok, c) = steps.time("audit log faults", || {
        heartbeat("running the audit fault tests", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "audit_faults",
                    "--",
                    "--nocapture",
                    "--test-threads=1",
                ],
                &[],
            )
        })
    })?;
    places.push(("audit log faults (tmpfs filled)", ok, c));

    progress("containers: agents as podman containers (runc, busybox), host kernel");
    let (ok, c) = steps.time("containers", || {
        heartbeat("running the container tests", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "containers",
                    "--",
                    "--nocapture",
                    "--test-threads=1",
                ],
                &[("GOVERNANCE_BIN", &b.governance)],
            )
        })
    })?;
    places.push(("containers (podman, host kernel)", ok, c));
    progress("compliance report: a real daemon's audit log, rendered by headless chromium");
    let (ok, c) = steps.time("compliance report", || {
        heartbeat("rendering the compliance report in chromium", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "report_browser",
                    "--",
                    "--nocapture",
                    "--test-threads=1",
                ],
                &[("GOVERNANCE_BIN", &b.governance)],
            )
        })
    })?;
    places.push(("compliance report (headless chromium)", ok, c));
    progress("manifest checks: kubectl kustomize deploy/kubernetes against the API's types");
    let (ok, c) = steps.time("manifest checks", || {
        heartbeat("checking the Kubernetes manifests", || {
            counted(
                &["test", "-p", "governance-tests", "--test", "manifests"],
                &[],
            )
        })
    })?;
    places.push(("manifest checks (deploy/kubernetes)", ok, c));

    progress("package test: this build's .deb installed in a throwaway system, its unit started");
    let (ok, c) = steps
        .time("package test", || {
            heartbeat("building and testing the package", || {
                deb::place(&b.governance)
            })
        })
        .unwrap_or_else(|e| {
            eprintln!("xtask: the package test could not run: {e:#}");
            (false, Counts::default())
        });
    places.push(("package test (.deb, unit started)", ok, c));

    progress(
        "HTTP compatibility suite: real clients and frameworks through the kernel redirect (host kernel)",
    );
    let compat_dir = setup::compat_dir();
    let (ok, c) = steps.time("HTTP compatibility", || {
        heartbeat("running the HTTP compatibility suite", || {
            counted(
                &[
                    "test",
                    "-p",
                    "governance-tests",
                    "--test",
                    "compat",
                    "--",
                    "--nocapture",
                    "--test-threads=1",
                ],
                &[
                    ("GOVERNANCE_BIN", &b.governance),
                    ("GOVERNANCE_COMPAT_DIR", &compat_dir),
                ],
            )
        })
    })?;
    places.push((
        "HTTP compatibility (real clients, host kernel)",
        ok,
        c.as_cases(),
    ));

    // Once per kernel of `setup::VM_KERNELS` (a kernel named with --kernel: that one alone, and
    // every test), the kernels side by side: each guest runs on one host thread (both vCPUs:
    // see `vm::boot`), so two use the machine's two cores and the step takes as long as the
    // slower kernel. Loading the programs is most of a test's cost, 100 to 150 s of emulated
    // verifying each time: the test process loads them once (`governance_tests::shared_pins`)
    // for every hook's cases, which each kernel runs, and the daemon tests about the daemon
    // itself (its events, approvals, control socket, counts, memory, leases and inotify) start
    // their daemons on that set, which adopt it as a restart does; those run on one kernel each
    // (`VmKernel::daemon_tests`). The daemon tests about loading, adopting and unloading
    // programs load their own, on each kernel. With a load of its own each, the daemon tests
    // made the step 32 minutes of a 60-minute CI (2026-12-07), 34 of 64 split between the
    // kernels (stop 62).
    // (label, tag, image, the tests it leaves to the other kernels)
    type Kernel<'a> = (&'a str, Option<&'a str>, Option<PathBuf>, Vec<&'a str>);
    let kernels: Vec<Kernel> = match kernel {
        Some(k) => vec![("kernel tests, VM (BPF LSM)", None, Some(k), Vec::new())],
        None => setup::VM_KERNELS
            .iter()
            .map(|k| {
                let image = setup::vm_kernel_of(k).ok().map(|(p, _)| p);
                let others = setup::VM_KERNELS
                    .iter()
                    .filter(|o| o.tag != k.tag)
                    .flat_map(|o| o.daemon_tests.iter().copied())
                    .collect();
                (k.label, Some(k.tag), image, others)
            })
            .collect(),
    };
    let labels: Vec<&str> = kernels.iter().map(|(label, ..)| *label).collect();
    progress(&match labels.len() {
        1 => labels[0].to_owned(),
        _ => format!("{}, side by side", labels.join(" and ")),
    });
    // The guest prints each test as it starts and ends (--nocapture, one thread);
    // vm::boot says when the guest has been quiet for a while.
    let script = |skip: &[&str]| {
        let skip: String = skip.iter().map(|t| format!(" --skip {t}")).collect();
        format!(
            "export RUST_BACKTRACE=1 GOVERNANCE_BIN=/governance/bin/governance\n\
             rc=0\n\
             for t in /governance/tests/*; do echo \"== $t\"; \"$t\" --test-threads=1 --nocapture --exact{skip} || rc=1; done\n\
             exit $rc\n"
        )
    };
    let runs = std::thread::scope(|s| {
        let b = &b;
        let running: Vec<_> = kernels
            .into_iter()
            .map(|(label, tag, image, skip)| {
                let script = script(&skip);
                s.spawn(move || {
                    let started = Instant::now();
                    let vm = match image {
                        // A guard against a hung guest, not a measure of speed: the emulated
                        // VM ran the suite in 9 minutes on 2026-12-05, in 36 on a loaded
                        // machine on 2026-12-06, and in about 50 beside the other kernel's VM on
                        // 2026-12-07 (each daemon start 110-150 s of verifying).
                        Some(image) => boot(Some(image), b, script, Duration::from_secs(3300), tag),
                        None => Err(anyhow::anyhow!(
                            "the kernel could not be downloaded (see setup)"
                        )),
                    };
                    (label, started.elapsed(), vm)
                })
            })
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("a VM's thread panicked"))
            .collect::<Vec<_>>()
    });
    for (label, took, vm) in runs {
        steps.0.push((label, took));
        let (ok, c) = match &vm {
            Ok(out) => {
                let mut c = Counts::default();
                out.output.iter().for_each(|l| c.add_line(l));
                (out.status == 0, c)
            }
            Err(e) => {
                eprintln!("xtask: {label}: the VM tests could not run: {e:#}");
                (false, Counts::default())
            }
        };
        places.push((label, ok, c));
    }

    println!();
    println!("test summary");
    let mut total = Counts::default();
    let mut all_ok = true;
    let width = places.iter().map(|(p, _, _)| p.len()).max().unwrap_or(0);
    for (place, ok, c) in &places {
        println!(
            "  {place:<width$} {:>3} passed, {} failed, {} ignored{}",
            c.passed,
            c.failed,
            c.ignored,
            if *ok { "" } else { "   <- FAILED" }
        );
        // A place that ran nothing has not shown anything: that is a failure, never a skip.
        all_ok &= *ok && c.passed > 0;
        total.passed += c.passed;
        total.failed += c.failed;
        total.ignored += c.ignored;
        total.tried += c.tried;
        total.denied += c.denied;
        total.controls += c.controls;
        total.differential_runs += c.differential_runs;
        total.variants += c.variants;
        total.variants_as_canonical += c.variants_as_canonical;
        total.variants_differ += c.variants_differ;
    }
    println!(
        "red team: {} cases tried, {} denied as expected, {} controls allowed",
        total.tried, total.denied, total.controls
    );
    let (differential_ok, line) = total.differential_summary();
    println!("{line}");
    all_ok &= differential_ok;
    // A place that failed without a failing test (build, boot, harness) counts as one failure;
    // so does a differential test that did not run.
    let broken = places
        .iter()
        .filter(|(_, ok, c)| (!ok || c.passed == 0) && c.failed == 0)
        .count() as u32
        + u32::from(total.differential_runs == 0);
    println!("{} passed, {} failed", total.passed, total.failed + broken);
    println!();
    println!("time per step");
    for (step, took) in &steps.0 {
        println!("  {step:<28} {:>12}", human(*took));
    }
    println!("  {:<28} {:>12}", "total", human(started.elapsed()));
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
