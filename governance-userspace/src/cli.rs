//! The `governance` command line: the daemon (`run`) and its tools.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use governance_common::{Counter, GrantKey, Kind, programs::Attach};

use crate::{
    events::{Approval, monotonic_ns},
    kernel::{self, Enforcer, Probe},
    policy,
};

/// Exit status when the kernel cannot enforce what was asked (and no degraded mode was accepted).
pub const EXIT_CANNOT_ENFORCE: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "governance",
    version,
    about = "Kernel-level policy enforcement for AI agents (eBPF LSM + cgroup hooks)",
    long_about = "Kernel-level policy enforcement for AI agents.\n\n\
        An agent is a cgroup v2 and all of its descendants. `governance run` loads eBPF programs \
        that decide, in the kernel, whether processes of an agent may execute a binary or \
        connect somewhere, according to the YAML policies in a directory, and prints every \
        decision as it happens.\n\n\
        Needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_PERFMON) and a kernel with BPF \
        LSM active for exec enforcement; run `governance probe` to see what this node offers."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter for diagnostics on stderr (tracing's EnvFilter syntax, e.g. `debug`).
    #[arg(long, global = true, env = "GOVERNANCE_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce the policy: attach the programs (or adopt pinned ones), fill the maps, print
    /// each decision.
    ///
    /// Exits with status 3 if a hook cannot be attached on this kernel, or the kernel cannot
    /// enforce part of the policy, unless --allow-degraded is given. Reloads the policy on
    /// SIGHUP, when the policy directory changes and when agent cgroups come, go or are
    /// labelled; a reload that fails keeps the current generation. Stops on SIGINT or SIGTERM.
    /// The programs stay attached, enforcing the last generation, after the daemon stops or
    /// dies; `governance unload` removes them, and the next `run` adopts them.
    Run(RunArgs),
    /// Report what this kernel can enforce: loads and attaches every program under a
    /// temporary pin directory, then removes it.
    ///
    /// Exits 0 if everything is available, 3 if not.
    Probe,
    /// Show what is pinned and attached, the generation, the agents and the counters.
    Status {
        #[command(flatten)]
        pins: PinsArg,
    },
    /// Detach every program and remove the pins (enforcement stops).
    Unload {
        #[command(flatten)]
        pins: PinsArg,
    },
    /// Approve an escalated action, so that a retry passes for a while.
    ///
    /// TOKEN is the `approve=` value of the ESCALATE event. The request must be approved
    /// before the rule's escalation timeout; after that it stays blocked (fail closed).
    Approve {
        token: String,
        /// How long the approval lets the action through (`30s`, `10m`, `1h`).
        #[arg(long = "for", default_value = "5m", value_parser = parse_duration)]
        duration: std::time::Duration,
        #[command(flatten)]
        pins: PinsArg,
    },
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Clone, clap::Args)]
pub struct PinsArg {
    /// bpffs directory of the pinned maps and links.
    #[arg(long = "pins", env = "GOVERNANCE_PINS", default_value = governance_common::pins::DIR)]
    pub dir: PathBuf,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and a unit, like 10m"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{s}`: the unit is s, m or h")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory of policy files (*.yaml, *.yml).
    #[arg(
        long,
        short,
        env = "GOVERNANCE_POLICY_DIR",
        default_value = "/etc/governance/policies"
    )]
    pub policy: PathBuf,
    /// Keep running when some hooks cannot be attached (for example exec enforcement on a
    /// kernel without BPF LSM), enforcing only what the kernel allows; exec then falls back to
    /// killing a process right after a blocked exec.
    #[arg(long)]
    pub allow_degraded: bool,
    /// Fail instead of creating agent cgroups that do not exist yet.
    #[arg(long)]
    pub no_create_cgroups: bool,
    /// Detach the programs when the daemon stops (default: they stay, enforcing the last
    /// generation, until `governance unload`).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// bpffs directory of the pinned maps and links.
    #[arg(long = "pins", env = "GOVERNANCE_PINS", default_value = governance_common::pins::DIR)]
    pub pins: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory (recursively); lists every problem with file, line and
    /// column, and exits non-zero if there is any.
    Check {
        /// Directory of policy files.
        dir: PathBuf,
    },
    /// Run the policy tests (`*.tests.yaml`) found below DIR against the policies there.
    Test {
        /// Directory of policy files and their tests.
        dir: PathBuf,
    },
    /// Print the JSON Schema of the policy file format (for editors).
    Schema,
}

pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(async {
                require_root()?;
                crate::daemon::run(args).await
            }),
        Command::Probe => probe(),
        Command::Status { pins } => status(&pins.dir),
        Command::Unload { pins } => {
            require_root()?;
            let removed = kernel::unload(&pins.dir)
                .with_context(|| format!("removing the pins in {}", pins.dir.display()))?;
            if removed.is_empty() {
                println!("nothing pinned in {}", pins.dir.display());
            } else {
                println!(
                    "removed {} pins from {}; the programs are detached",
                    removed.len(),
                    pins.dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve {
            token,
            duration,
            pins,
        } => approve(&token, duration, &pins.dir),
        Command::Policy(PolicyCommand::Check { dir }) => {
            let set = policy::load_dir(&dir)?;
            println!(
                "{}: ok ({} policies, {} rules)",
                dir.display(),
                set.policies.len(),
                set.rule_count()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Test { dir }) => {
            let set = policy::load_dir(&dir)?;
            let (_, tests) = policy::policy_files(&dir)?;
            if tests.is_empty() {
                anyhow::bail!("no policy tests (*.tests.yaml) below {}", dir.display());
            }
            let report = policy::testing::run(&set, &tests);
            print!("{}", report.text);
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Policy(PolicyCommand::Schema) => {
            let schema = schemars::schema_for!(policy::model::PolicyDoc);
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "must run as root: loading eBPF programs and attaching them to cgroups needs \
             CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_PERFMON"
        );
    }
    Ok(())
}

pub(crate) fn report(probe: &Probe, enforcer: &Enforcer) -> bool {
    let yes_no = |b: bool| if b { "yes" } else { "NO" };
    let mut out = std::io::stderr().lock();
    let _ = writeln!(out, "governance: what this kernel can enforce");
    let _ = writeln!(out, "  kernel                    {}", probe.kernel);
    let _ = writeln!(out, "  BTF (/sys/kernel/btf)     {}", yes_no(probe.btf));
    let _ = writeln!(
        out,
        "  BPF LSM active            {} ({})",
        yes_no(probe.bpf_lsm_active()),
        probe.lsm_list.as_deref().unwrap_or("securityfs unreadable")
    );
    let _ = writeln!(
        out,
        "  cgroup v2                 {}",
        probe
            .cgroup2
            .as_deref()
            .map_or("NOT MOUNTED".into(), |p| p.display().to_string())
    );
    for (program, state) in &enforcer.hooks {
        let at = match program.attach {
            Attach::Lsm(h) => format!("lsm/{h}"),
            Attach::SockAddr(h) => format!("cgroup/{h}"),
            Attach::RawTracepoint(t) => format!("raw_tp/{t}"),
            Attach::SockOps => "cgroup/sock_ops".into(),
        };
        let _ = writeln!(out, "  {:<34} {:<28} {state}", program.what, at);
    }
    enforcer.fully_attached()
}

fn probe() -> anyhow::Result<ExitCode> {
    require_root()?;
    let probe = Probe::run();
    let root = probe
        .cgroup2
        .clone()
        .context("no cgroup2 filesystem is mounted")?;
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/governance-probe-{}",
        std::process::id()
    ));
    let complete = Enforcer::start(&dir, &root, true).map(|e| report(&probe, &e));
    kernel::unload(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(if complete? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CANNOT_ENFORCE)
    })
}

fn status(pins: &Path) -> anyhow::Result<ExitCode> {
    require_root()?;
    if !pins.join(governance_common::pins::MAPS).exists() {
        println!(
            "nothing pinned in {}: no enforcement on this node",
            pins.display()
        );
        return Ok(ExitCode::from(EXIT_CANNOT_ENFORCE));
    }
    let probe = Probe::run();
    let enforcer = Enforcer::adopt(pins)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "pins        {}", pins.display())?;
    writeln!(out, "generation  {}", enforcer.generation()?)?;
    writeln!(out, "hooks")?;
    for (program, state) in &enforcer.hooks {
        writeln!(out, "  {:<24} {:<34} {state}", program.name, program.what)?;
    }
    let agents = enforcer.agents()?;
    writeln!(out, "agents      {}", agents.len())?;
    let paths = probe
        .cgroup2
        .as_deref()
        .map(crate::agents::cgroup_paths)
        .unwrap_or_default();
    for (cgroup_id, class) in agents {
        let path = paths
            .get(&cgroup_id)
            .map_or_else(|| "(cgroup gone)".to_owned(), |p| p.display().to_string());
        writeln!(
            out,
            "  cgroup {cgroup_id:<10} class {:<6} {path}",
            class & 0x7fff_ffff
        )?;
    }
    writeln!(out, "counters")?;
    for (name, c) in [
        ("decisions", Counter::Decisions),
        ("denials", Counter::Denials),
        ("events dropped", Counter::EventsDropped),
        ("map full", Counter::MapFull),
    ] {
        writeln!(out, "  {name:<16} {}", enforcer.counter(c)?)?;
    }
    Ok(if enforcer.fully_attached() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CANNOT_ENFORCE)
    })
}

fn approve(token: &str, duration: std::time::Duration, pins: &Path) -> anyhow::Result<ExitCode> {
    require_root()?;
    let approval: Approval = token.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let now = monotonic_ns();
    if now > approval.deadline_ns {
        anyhow::bail!(
            "this request expired {}s ago (the rule's escalation timeout); the action stays blocked. \
             Ask the agent to retry, and approve the new request in time.",
            (now - approval.deadline_ns) / 1_000_000_000
        );
    }
    let mut enforcer =
        Enforcer::adopt(pins).with_context(|| format!("opening the pins in {}", pins.display()))?;
    enforcer.grant(
        GrantKey {
            cgroup_id: approval.cgroup_id,
            kind: approval.kind,
            _pad: [0; 7],
            object: approval.object,
        },
        now + duration.as_nanos() as u64,
    )?;
    println!(
        "approved: {} by cgroup {} may go ahead for {}s",
        Kind::from_u8(approval.kind).map_or("?", Kind::as_str),
        approval.cgroup_id,
        duration.as_secs()
    );
    Ok(ExitCode::SUCCESS)
}
