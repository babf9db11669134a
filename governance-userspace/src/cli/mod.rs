//! The `governance` command line: the daemon (`run`) and the tools that talk to it.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use governance_common::Counter;

use crate::{
    api::wire,
    client::{self, ApiArgs},
    daemon, engine,
    events::{Object, Record, display::printable},
    kernel::{
        self, Enforcer, Probe,
        probe::{self, EXIT_CANNOT_ENFORCE},
    },
    policy,
};

#[derive(Debug, Parser)]
#[command(
    name = "governance",
    version = crate::version::LONG,
    about = "Kernel-level policy enforcement for AI agents (eBPF LSM + cgroup hooks + HTTP policy proxy)",
    long_about = "Kernel-level policy enforcement for AI agents.\n\n\
        An agent is a cgroup v2 and all of its descendants. `governance run` loads eBPF programs \
        that decide, in the kernel, whether processes of an agent may execute a binary, open a \
        file or connect somewhere, forces their HTTP egress through a policy proxy, and records \
        every decision in a tamper-evident audit log and a live event stream.\n\n\
        The other commands talk to the running daemon over its control socket \
        (/run/governance/governance.sock, root only).\n\n\
        Needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_PERFMON) and a kernel with BPF \
        LSM active for exec and file enforcement; run `governance probe` to see what this node \
        offers."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter for diagnostics on stderr (tracing's EnvFilter syntax, e.g. `debug`).
    #[arg(long, global = true, env = "GOVERNANCE_LOG", default_value = "info")]
    pub log: String,
    /// How diagnostics are written on stderr: `text` (readable lines) or `json` (one JSON
    /// object a line: timestamp, level, fields.message; for log shippers).
    #[arg(
        long,
        global = true,
        env = "GOVERNANCE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

pub use crate::logging::LogFormat;

pub mod config;
mod discover;
mod drill;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce the policy: attach the programs (or adopt pinned ones), fill the maps, run the
    /// HTTP policy proxy and the control API, record every decision.
    ///
    /// The policy is validated first, before the kernel is probed: an invalid policy or a
    /// missing directory is reported with file:line:col and exits with status 1 (as `policy
    /// check` does). Exits with status 3 if a hook cannot be attached on this kernel, or the
    /// kernel cannot enforce part of the policy, unless --allow-degraded is given. Reloads the
    /// policy on SIGHUP, on `governance policy reload`, when the policy directory changes and
    /// when agent cgroups come, go or are labelled; a reload that fails keeps the current
    /// generation.
    /// Stops on SIGINT or SIGTERM. The programs stay attached, enforcing the last generation,
    /// after the daemon stops or dies; `governance unload` removes them, and the next `run`
    /// adopts them.
    Run(Box<daemon::RunArgs>),
    /// Report what this kernel can enforce (on stdout): loads and attaches every program under
    /// a temporary pin directory, then removes it. When LSM hooks are missing, says why: `bpf`
    /// missing from the active LSMs, missing capabilities, lockdown, or a host that refuses BPF
    /// LSM programs. Exits 0 if everything is available, 3 if not.
    Probe,
    /// What the daemon enforces: generation, hooks, agents, counters. Without a running daemon,
    /// what is pinned in the kernel.
    Status {
        #[command(flatten)]
        pins: PinsArg,
        /// Show what is pinned in the kernel (works without a daemon) instead of asking the
        /// daemon.
        #[arg(long)]
        pinned: bool,
        #[command(flatten)]
        api: ApiArgs,
        /// Print the JSON the daemon answers.
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
    /// The live agents: their cgroups, the policies that govern them and their decisions by
    /// outcome.
    Agents {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
        /// What each live agent (or only AGENT, a name or cgroup) can do under the enforcing
        /// generation: the binaries, paths, destinations, HTTP requests and MCP tools its rules
        /// cover with their verdicts and rules, the defaults, and the built-in refusals.
        #[arg(long, value_name = "AGENT", num_args = 0..=1)]
        capabilities: Option<Option<String>>,
    },
    /// Candidate agents nobody labelled: processes outside every agent that talk to LLM provider
    /// APIs (TLS server names, DNS), run agent frameworks or run or call MCP servers; grouped by
    /// container, pod or cgroup, each with a suggested `agents:` selector. Never enforced.
    Discover {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
    /// Decision events: live (--follow) and from the audit log (--since).
    ///
    /// Examples:
    ///   governance events --follow --agent billing-bot --verdict block
    ///   governance events --since 10m -o json | jq .rule
    ///   governance events --follow -o ocsf     (OCSF 1.3 JSON for a SIEM forwarder)
    #[command(verbatim_doc_comment)]
    Events(EventsArgs),
    /// Pending approvals (escalated actions waiting for a human).
    Approvals {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
    /// Approve an escalated action. A held HTTP request goes ahead; for a kernel escalation
    /// (exec, file, connect, refused at once), the agent's retry passes for --for.
    Approve {
        /// The approval id (`governance approvals`).
        id: String,
        /// How long a kernel grant lets the action through (`30s`, `10m`, `1h`).
        #[arg(long = "for", default_value = "5m")]
        duration: String,
        /// Your name, recorded beside the caller the socket identifies.
        #[arg(long = "as", env = "GOVERNANCE_APPROVER")]
        by: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Deny an escalated action (the held request gets 403 with the reason).
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long = "as", env = "GOVERNANCE_APPROVER")]
        by: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Compliance evidence from the audit log (read directly; no daemon needed): decisions by
    /// verdict over time, top refused rules, escalations, policy generations, drills and the
    /// log's verification, as self-contained HTML, JSON or Markdown. Exits 1 if the log does
    /// not verify (the report, saying so, is written anyway).
    ///
    /// Example: governance report --since 30d -o report.html
    Report(crate::report::ReportArgs),
    /// Detach every program and remove the pins (enforcement stops).
    Unload {
        #[command(flatten)]
        pins: PinsArg,
    },
    /// This binary's version, the git commit it was built from and the SHA-256 (12 hex
    /// digits) of the eBPF object embedded in it. `governance status` shows the daemon's.
    Version {
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
    /// Print a shell completion script on stdout, e.g.
    /// `governance completions bash > /etc/bash_completion.d/governance`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Ask the running daemon to run a drill: from a canary agent of its own, attempt each
    /// enforcing policy's known-bad actions (every block rule's object, a default-deny probe)
    /// and confirm each is refused. Recorded in the audit log (`drill.passed`,
    /// `drill.failed`). Exits 0 when it passed, 1 when a check failed.
    Drill {
        #[command(flatten)]
        api: ApiArgs,
        /// Drill this policy only.
        #[arg(long)]
        policy: Option<String>,
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct PinsArg {
    /// bpffs directory of the pinned maps and links.
    #[arg(long = "pins", env = "GOVERNANCE_PINS", default_value = governance_common::pins::DIR)]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep streaming new events.
    #[arg(long, short)]
    pub follow: bool,
    /// Only this agent (its name or cgroup path).
    #[arg(long)]
    pub agent: Option<String>,
    /// Only these outcomes (allow, block, throttle, sandbox, escalate, granted, kill; `denied`
    /// for every refusal), comma-separated.
    #[arg(long, alias = "outcome")]
    pub verdict: Option<String>,
    /// Only these kinds (exec, file, connect, send, http, ...), comma-separated.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only these record types (decision, approval, policy, lifecycle, discovery), comma-separated.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: Option<String>,
    /// Replay from the audit log from this time on (RFC 3339, or back from now: 30s, 10m, 2h,
    /// 1d).
    #[arg(long)]
    pub since: Option<String>,
    /// `text`: one readable line per event; `json`: the event record (NDJSON); `ocsf`: OCSF
    /// 1.3 JSON.
    #[arg(long, short = 'o', value_parser = ["text", "json", "ocsf"], default_value = "text")]
    pub output: String,
    /// Stop after this many events.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Records the daemon queues for this subscriber before it loses some (counted and told;
    /// the daemon never slows down for a subscriber). Default 8192.
    #[arg(long)]
    pub queue: Option<usize>,
    /// Print the JSON Schema of the event record and exit.
    #[arg(long)]
    pub schema: bool,
    #[command(flatten)]
    pub api: ApiArgs,
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
    /// How each agent's capabilities change from the policies in OLD to those in NEW (no
    /// daemon needed): rules added, removed or with another verdict, defaults and built-in
    /// relaxations. Agents are described by selector. Exits 0 when nothing changes, 1 when
    /// something does, 2 on errors (an invalid policy, with file:line:col).
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
    /// Ask the running daemon to reload its policy directory now.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain (and seals) of audit files or directories; reports the first broken
    /// record. Exits 1 if anything is wrong.
    Verify {
        /// Audit files or directories (a directory means all its audit-*.jsonl files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Check seals against this Ed25519 public key (hex or a key file) instead of the one
        /// each seal names.
        #[arg(long)]
        public_key: Option<String>,
    },
}

/// The command line, with `run`'s defaults from the config file (see [`config`]).
/// Exits as clap does on a bad command line, with status 1 on a bad config file.
pub fn parse() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    let mut matches = cmd.clone().get_matches_from(&args);
    if let Some(("run", run)) = matches.subcommand() {
        let explicit = run.get_one::<PathBuf>("config").cloned();
        let applied = config::read(explicit.as_deref()).and_then(|file| match file {
            Some((path, text)) => config::apply(cmd, &path, &text),
            None => Ok(cmd),
        });
        cmd = applied.unwrap_or_else(|e| {
            eprintln!("governance: error: {e}");
            std::process::exit(1)
        });
        matches = cmd.get_matches_from(&args);
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start({
                // Each thread but the main one keeps only what the daemon needs after start.
                crate::privilege::keep(
                    (!args.no_proxy).then_some(args.proxy_listen.port()),
                    !args.no_create_cgroups,
                );
                crate::privilege::thread_started
            })
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(async {
                require_root()?;
                daemon::run(*args).await
            }),
        Command::Probe => probe(),
        Command::Status {
            pins,
            pinned,
            api,
            output,
        } => {
            if pinned {
                pinned_status(&pins.dir)
            } else {
                runtime()?.block_on(status(&pins.dir, &api, &output))
            }
        }
        Command::Agents {
            api,
            output,
            capabilities: Some(agent),
        } => runtime()?.block_on(agent_capabilities(&api, agent.as_deref(), &output)),
        Command::Agents { api, output, .. } => runtime()?.block_on(agents(&api, &output)),
        Command::Events(args) => runtime()?.block_on(events(args)),
        Command::Discover { api, output } => runtime()?.block_on(discover::run(&api, &output)),
        Command::Approvals { api, output } => runtime()?.block_on(approvals(&api, &output)),
        Command::Drill {
            api,
            policy,
            output,
        } => runtime()?.block_on(drill::drill(&api, policy, &output)),
        Command::Approve {
            id,
            duration,
            by,
            api,
        } => runtime()?.block_on(async {
            policy::parse_duration(&duration).map_err(|e| anyhow::anyhow!("--for: {e}"))?;
            let body = wire::Approve {
                duration: Some(duration),
                by,
            };
            let v = client::call(
                &api,
                "POST",
                &format!("/v1/approvals/{id}/approve"),
                Some(serde_json::to_value(body)?),
            )
            .await?;
            let a = serde_json::from_value::<wire::Approved>(v)?.approved;
            println!(
                "approved {id}: {} {} by agent {}",
                a.kind,
                object_of(&a.object),
                a.agent.name,
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Deny {
            id,
            reason,
            by,
            api,
        } => runtime()?.block_on(async {
            client::call(
                &api,
                "POST",
                &format!("/v1/approvals/{id}/deny"),
                Some(serde_json::to_value(wire::Deny {
                    reason: Some(reason),
                    by,
                })?),
            )
            .await?;
            println!("denied {id}");
            Ok(ExitCode::SUCCESS)
        }),
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
            let report = engine::testing::run(&set, &tests);
            print!("{}", report.text);
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Policy(PolicyCommand::Diff { old, new, output }) => {
            policy_diff(&old, &new, &output)
        }
        Command::Policy(PolicyCommand::Schema) => {
            let schema = schemars::schema_for!(policy::model::PolicyDoc);
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Reload { api }) => runtime()?.block_on(async {
            let v = client::call(&api, "POST", "/v1/policy/reload", None).await?;
            let r: wire::Reloaded = serde_json::from_value(v)?;
            println!("generation {} is enforcing", r.generation);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Report(args) => crate::report::run(&args),
        Command::Audit(AuditCommand::Verify { paths, public_key }) => {
            audit_verify(&paths, public_key.as_deref())
        }
        Command::Version { output } => {
            let v = crate::version::Version::this();
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "governance {}\ncommit     {}\nebpf       {} (sha256 of the embedded object)",
                    v.version, v.commit, v.ebpf
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "governance", &mut script);
            match std::io::stdout().write_all(&script) {
                // `| head` is no error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing the completion script")
                }
                _ => Ok(ExitCode::SUCCESS),
            }
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
    // The report is this command's output: stdout.
    let complete = Enforcer::start(&dir, &root, true)
        .map(|e| probe::report_to(&mut std::io::stdout().lock(), &probe, &e));
    kernel::unload(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(if complete? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CANNOT_ENFORCE)
    })
}

/// The status line of the audit log; during an outage it counts the records refused so far,
/// which no gap record counts yet (red team round 35: it said `0 records lost` meanwhile).
fn audit_status(a: &crate::audit::HealthView) -> String {
    format!(
        "audit log    {} (on failure: {}); {} write failures, {} gaps, {} records lost, {} actions blocked{}",
        a.state,
        a.on_failure,
        a.write_failures,
        a.gaps,
        a.records_lost,
        a.blocked,
        a.failing_since
            .as_deref()
            .map(|s| format!(
                "; failing since {s}, {} records refused so far (not in the log): {}",
                a.refused_now,
                a.cause.as_deref().unwrap_or("?")
            ))
            .unwrap_or_default()
    )
}

async fn status(pins: &Path, api: &ApiArgs, output: &str) -> anyhow::Result<ExitCode> {
    let v = match client::call(api, "GET", "/v1/status", None).await {
        Ok(v) => v,
        Err(e) if api.api.is_none() && !api.socket.exists() => {
            eprintln!("governance: no daemon is running ({e:#}); what is pinned:");
            return pinned_status(pins);
        }
        Err(e) => return Err(e),
    };
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    let v: wire::Status = serde_json::from_value(v)?;
    if output != "json" {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "generation   {}{}",
            v.generation,
            if v.degraded { " (DEGRADED)" } else { "" }
        )?;
        writeln!(out, "policy       {}", v.policy_dir.display())?;
        if let Some(version) = &v.version {
            writeln!(out, "version      {version}")?;
        }
        writeln!(out, "started      {}", v.started)?;
        if let Some(c) = &v.capabilities {
            let names = |n: &[String]| {
                if n.is_empty() {
                    "none".to_owned()
                } else {
                    n.join(" ")
                }
            };
            writeln!(
                out,
                "capabilities {} (proxy threads: {})",
                names(&c.daemon),
                c.proxy.as_deref().map_or("no proxy".to_owned(), names)
            )?;
        }
        writeln!(out, "agents       {}", v.agents)?;
        writeln!(out, "proxy        {}", v.proxy.as_deref().unwrap_or("off"))?;
        writeln!(
            out,
            "audit        {}",
            v.audit
                .as_deref()
                .map_or("off".into(), |a| a.display().to_string())
        )?;
        if let Some(a) = &v.audit_log {
            writeln!(out, "{}", audit_status(a))?;
        }
        for e in &v.exporters {
            writeln!(
                out,
                "export       {}: {} sent, {} lost, {} failed sends{}",
                e.name,
                e.sent,
                e.lost,
                e.failures,
                e.last_error
                    .as_deref()
                    .map(|m| format!("; last error: {m}"))
                    .unwrap_or_default()
            )?;
        }
        writeln!(out, "approvals    {} pending", v.pending_approvals)?;
        writeln!(out, "reloads      {} failed", v.reload_failures)?;
        if let Some(e) = &v.last_error {
            writeln!(out, "last error   {e}")?;
        }
        writeln!(out, "hooks")?;
        for h in &v.hooks {
            writeln!(out, "  {:<24} {:<34} {}", h.program, h.enforces, h.state)?;
        }
        writeln!(out, "kernel counters")?;
        let k = v.kernel.as_ref();
        for (n, label) in [
            (k.map(|k| k.decisions), "decisions"),
            (k.map(|k| k.denials), "denials"),
            (k.map(|k| k.events_dropped), "events dropped"),
            (k.map(|k| k.map_full), "map full"),
        ] {
            // `null`: the daemon could not read the kernel's counters.
            let n = n.map_or("null".into(), |n| n.to_string());
            write!(out, "  {label:<16} {n}")?;
            if label == "events dropped" {
                let per_cpu = k.map(|k| k.events_dropped_per_cpu.as_slice());
                write!(out, "{}", per_cpu_note(per_cpu.unwrap_or_default()))?;
            }
            writeln!(out)?;
        }
        writeln!(out, "pipeline backlog {}", v.pipeline_backlog)?;
    }
    let complete = v.hooks.iter().all(|h| h.state == "attached");
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CANNOT_ENFORCE)
    })
}

/// `" (per CPU: 0 3 1)"` when something was counted, else nothing.
fn per_cpu_note(per_cpu: &[u64]) -> String {
    if per_cpu.iter().all(|n| *n == 0) {
        return String::new();
    }
    let each: Vec<String> = per_cpu.iter().map(u64::to_string).collect();
    format!(" (per CPU: {})", each.join(" "))
}

/// `status` without a daemon: what the pins say.
fn pinned_status(pins: &Path) -> anyhow::Result<ExitCode> {
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
    writeln!(
        out,
        "generation  {} (enforcing without a daemon: no events are recorded, no approvals)",
        enforcer.generation()?
    )?;
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
            governance_common::id_number(class)
        )?;
    }
    writeln!(out, "counters")?;
    for (name, c) in [
        ("decisions", Counter::Decisions),
        ("denials", Counter::Denials),
        ("events dropped", Counter::EventsDropped),
        ("map full", Counter::MapFull),
    ] {
        let per_cpu = enforcer.counter_per_cpu(c)?;
        write!(out, "  {name:<16} {}", per_cpu.iter().sum::<u64>())?;
        if c == Counter::EventsDropped {
            write!(out, "{}", per_cpu_note(&per_cpu))?;
        }
        writeln!(out)?;
    }
    Ok(if enforcer.fully_attached() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CANNOT_ENFORCE)
    })
}

async fn agents(api: &ApiArgs, output: &str) -> anyhow::Result<ExitCode> {
    let v = client::call(api, "GET", "/v1/agents", None).await?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let v: wire::Agents = serde_json::from_value(v)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "generation {}", v.generation)?;
    for a in &v.agents {
        let counts: Vec<String> = a
            .decisions
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        writeln!(
            out,
            "{:<28} cgroup={} ({}) selector={:?} policies={} decisions: {}",
            a.name,
            a.cgroup,
            a.cgroup_id,
            a.selector,
            a.policies.join(","),
            if counts.is_empty() {
                "none yet".into()
            } else {
                counts.join(" ")
            }
        )?;
        for (what, n) in &a.counted {
            writeln!(out, "{:<28}   counted: {what} {n}", "")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn agent_capabilities(
    api: &ApiArgs,
    agent: Option<&str>,
    output: &str,
) -> anyhow::Result<ExitCode> {
    let path = match agent {
        Some(a) => format!(
            "/v1/agents/capabilities?{}",
            serde_urlencoded::to_string([("agent", a)])?
        ),
        None => "/v1/agents/capabilities".into(),
    };
    let v = client::call(api, "GET", &path, None).await?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let v: wire::AgentCapabilitiesList = serde_json::from_value(v)?;
    let mut text = format!("generation {}\n", v.generation);
    for a in &v.agents {
        crate::capabilities::render(a, &mut text);
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `policy diff`: 0 no change, 1 changes, 2 an error.
fn policy_diff(old: &Path, new: &Path, output: &str) -> anyhow::Result<ExitCode> {
    let load = |d: &Path| policy::load_dir(d).map(|s| crate::capabilities::by_selector(&s));
    let (a, b) = match (load(old), load(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("governance: error: {:#}", anyhow::Error::from(e));
            return Ok(ExitCode::from(2));
        }
    };
    let diff = crate::capabilities::diff(&a, &b);
    if output == "json" {
        let v = serde_json::json!({ "by_selector": true, "changed": diff });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if diff.is_empty() {
        println!("no capability changes (agents described by selector)");
    } else {
        println!("capability changes (agents described by selector):");
        print!("{}", crate::capabilities::render_diff(&diff));
    }
    Ok(if diff.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The readable object of an approval: method and URL, MCP tool, path, destination.
fn object_of(o: &Object) -> String {
    [&o.method, &o.url, &o.mcp_tool, &o.path, &o.dest]
        .into_iter()
        .filter(|w| !w.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

async fn approvals(api: &ApiArgs, output: &str) -> anyhow::Result<ExitCode> {
    let v = client::call(api, "GET", "/v1/approvals", None).await?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pending = serde_json::from_value::<wire::Pending>(v)?.pending;
    if pending.is_empty() {
        println!("no pending approvals");
    }
    for a in pending {
        println!(
            "{}  {:<8} agent={} {} rule={} deadline={}\n    reason: {}",
            printable(&a.id),
            printable(&a.kind),
            printable(&a.agent.name),
            printable(&object_of(&a.object)),
            printable(&a.rule),
            printable(&a.deadline),
            printable(&a.reason),
        );
        for (k, v) in &a.object.detail {
            println!("    {} = {}", printable(k), printable(v));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    if args.schema {
        let schema = schemars::schema_for!(Record);
        println!("{}", serde_json::to_string_pretty(&schema)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !args.follow && args.since.is_none() {
        anyhow::bail!(
            "say what to show: --follow (live), --since TIME (from the audit log), or both"
        );
    }
    let query = wire::EventsQuery {
        follow: args.follow.then(|| "true".into()),
        agent: args.agent.clone(),
        verdict: args.verdict.clone(),
        kind: args.kind.clone(),
        ty: args.ty.clone(),
        since: args.since.clone(),
        format: (args.output == "ocsf").then(|| "ocsf".into()),
        queue: args.queue,
        ..Default::default()
    };
    let path = query.path();
    let resp = client::request(&args.api, "GET", &path, None).await?;
    let mut seen = 0u64;
    let mut out = std::io::stdout();
    let mut failed = None;
    // A live stream's first line is `stream.subscribed` (and its last may be `stream.ended`).
    let mut first = args.follow;
    client::lines(resp, |line| {
        let stream_record = std::mem::take(&mut first) || is_stream_record(line);
        let written = if args.output == "text" {
            match serde_json::from_slice::<Record>(line) {
                Ok(r) if r.stream.is_some() => {
                    eprintln!("governance: {}", r.message);
                    Ok(())
                }
                Ok(r) => writeln!(out, "{r}"),
                Err(e) => writeln!(out, "(unreadable event: {e})"),
            }
        } else {
            out.write_all(line).and_then(|()| out.write_all(b"\n"))
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            // A closed pipe (| head) ends the stream quietly.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                failed = Some(e);
            }
            return false;
        }
        if !stream_record {
            seen += 1;
        }
        args.count.is_none_or(|n| seen < n)
    })
    .await?;
    if let Some(e) = failed {
        return Err(e).context("writing events");
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether an NDJSON line is `stream.ended` (the first line of a live stream,
/// `stream.subscribed`, is known by its place; after `stream.ended` nothing is counted).
fn is_stream_record(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(default)]
        kind: String,
    }
    serde_json::from_slice::<Kind>(line).is_ok_and(|k| k.kind.starts_with("stream."))
}

fn audit_verify(paths: &[PathBuf], public_key: Option<&str>) -> anyhow::Result<ExitCode> {
    let key = public_key
        .map(crate::audit::parse_public_key)
        .transpose()
        .context("--public-key")?;
    match crate::audit::verify(paths, key) {
        Ok(report) => {
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("audit log BROKEN: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_size;

    /// What an agent put in an approval's object is shown escaped, never run by the
    /// terminal; plain text is shown as it is.
    #[test]
    fn approvals_show_control_characters_escaped() {
        let hostile = "/w/x\r\u{1b}[2K/usr/bin/make\u{202e}fdp.exe";
        let shown = printable(hostile);
        assert_eq!(shown, "/w/x\\u{d}\\u{1b}[2K/usr/bin/make\\u{202e}fdp.exe");
        assert!(!shown.chars().any(char::is_control));
        assert!(matches!(
            printable("/data/ré port.csv"),
            std::borrow::Cow::Borrowed("/data/ré port.csv")
        ));
    }

    /// Red team round 35: during an outage status said `0 records lost` while records were
    /// being refused; it counts them.
    #[test]
    fn status_counts_the_records_an_outage_refused_so_far() {
        let a = crate::audit::HealthView {
            state: "failing".into(),
            failing_since: Some("T".into()),
            cause: Some("No space left on device".into()),
            refused_now: 42,
            ..Default::default()
        };
        let line = audit_status(&a);
        assert!(
            line.ends_with(
                "; failing since T, 42 records refused so far (not in the log): No space left on device"
            ),
            "{line}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("1T").is_err() && parse_size("x").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
