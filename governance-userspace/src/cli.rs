//! The `governance` command line: the daemon (`run`) and its tools.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    kernel::{Enforcer, KernelPolicy, Probe},
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
    /// Enforce the policy: load and attach the programs, fill the maps, print each decision.
    ///
    /// Exits with status 3 if a hook cannot be attached on this kernel, or the kernel cannot
    /// enforce part of the policy, unless --allow-degraded is given. Reloads the policy on
    /// SIGHUP and when the policy directory changes; a reload that fails keeps the current
    /// generation. Stops on SIGINT or SIGTERM; the programs are detached when it exits.
    Run(RunArgs),
    /// Report what this kernel can enforce: loads and attaches every program, then detaches.
    ///
    /// Exits 0 if everything is available, 3 if not.
    Probe,
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
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
    /// kernel without BPF LSM), enforcing only what the kernel allows.
    #[arg(long)]
    pub allow_degraded: bool,
    /// Fail instead of creating agent cgroups that do not exist yet.
    #[arg(long)]
    pub no_create_cgroups: bool,
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

/// Load everything and attach every hook we know, recording how each fared.
pub(crate) fn load_and_attach(
    generation: u32,
    cgroup_root: &Path,
    policy: Option<&KernelPolicy>,
) -> anyhow::Result<Enforcer> {
    let mut enforcer = Enforcer::load(generation).context("loading the eBPF object")?;
    // The maps are filled before anything is attached, so no agent ever runs ungoverned
    // behind an attached program with empty maps.
    if let Some(policy) = policy {
        for skipped in enforcer
            .install(policy)
            .context("writing the policy into the kernel maps")?
        {
            tracing::warn!("{skipped}; not enforced until the policy is loaded again");
        }
    }
    let _ = enforcer.attach_exec();
    let _ = enforcer.attach_connect4(cgroup_root);
    Ok(enforcer)
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
    let _ = writeln!(
        out,
        "  exec    (lsm/bprm_check_security)  {}",
        enforcer.exec
    );
    let _ = writeln!(
        out,
        "  connect (cgroup/connect4)          {}",
        enforcer.connect4
    );
    enforcer.fully_attached()
}

fn probe() -> anyhow::Result<ExitCode> {
    require_root()?;
    let probe = Probe::run();
    let root = probe
        .cgroup2
        .clone()
        .context("no cgroup2 filesystem is mounted")?;
    let enforcer = load_and_attach(0, &root, None)?;
    Ok(if report(&probe, &enforcer) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CANNOT_ENFORCE)
    })
}
