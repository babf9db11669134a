//! The daemon (`governance run`): policy generations, agent discovery, reloads, the kernel
//! event drainer, the HTTP policy proxy and the control API.
//!
//! The programs are attached once and pinned (see [`kernel::Enforcer`]); a restarted daemon
//! adopts them. A generation is one validated policy set with the agent cgroups found for it,
//! compiled into the maps' inactive slot and made active by one flip (see governance_common),
//! and handed to the HTTP engine at the same time. A reload (SIGHUP, `governance policy
//! reload`, a change in the policy directory, an agent cgroup that appears, goes or is
//! labelled) builds the next generation; one that fails (invalid policy, unenforceable policy,
//! kernel error) changes nothing: the current generation keeps enforcing and the failure is
//! reported and counted. A change in the cgroup tree that leaves the set of agents as it was (a
//! cgroup made or removed inside an agent, or outside every selector) builds nothing. Throttle
//! buckets carry over from one generation to the next, in the kernel and in the HTTP engine.
//!
//! Data flow: kernel ring buffer → drainer thread → [`pipeline`] (enrich, audit log, metrics,
//! subscribers); the proxy and the approval queue publish into the same pipeline.
//!
//! When the daemon stops (or dies), the programs stay attached with the last generation:
//! enforcement fails closed. `governance unload` (or `run --detach-on-exit`) removes them.

mod burst;
mod counts;
mod discover;
mod drain;
mod drill;
pub mod generation;
mod identify;
mod in_force;
mod netns;
mod notify;
mod serve;
mod watch;
mod worker;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

use self::{
    drain::Drainer,
    generation::SharedNames,
    identify::KernelIdentify,
    serve::{Daemon, Signals, lifecycle},
    worker::Worker,
};
use crate::{
    api::{self, ApiState, Snapshot},
    approvals::{self, Approvals},
    audit::AuditOptions,
    client,
    engine::Engine,
    events::{self, Clock, Ids, Record, Sink, rfc3339},
    kernel::{
        self, Enforcer, Probe, ProxyConns,
        probe::{EXIT_CANNOT_ENFORCE, report},
    },
    metrics::Metrics,
    pipeline::{self, Publisher},
    policy,
    proxy::{self, Proxy},
};

// `governance run`: what to enforce, where, and how the daemon is reached. (No doc comment:
// clap would take it for the help text of `run`, which is the `Command::Run` variant's.)
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The config file: defaults for these flags, under their names in snake_case (see
    /// docs/operations.md). Default /etc/governance/config.yaml if it exists; a file named
    /// here must exist.
    #[arg(long, env = "GOVERNANCE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory of policy files (*.yaml, *.yml).
    #[arg(
        long,
        short,
        env = "GOVERNANCE_POLICY_DIR",
        default_value = "/etc/governance/policies"
    )]
    pub policy: PathBuf,
    /// The directory where the daemon keeps a copy of the policy in force (`policy.json`,
    /// written after each generation read from the policy directory). A start whose policy
    /// directory does not read enforces this copy, and says so, instead of exiting; without
    /// one it exits 1.
    #[arg(
        long,
        value_name = "DIR",
        env = "GOVERNANCE_POLICY_IN_FORCE",
        default_value = "/var/lib/governance/policy-in-force"
    )]
    pub policy_in_force: PathBuf,
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
    /// The control socket (mode 0600, root only).
    #[arg(long, env = "GOVERNANCE_SOCKET", default_value = client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also serve the control API on TCP at this address (e.g. 127.0.0.1:7777); needs
    /// --api-token-file or --api-tokens. (Checked when the daemon starts, not by clap: the token
    /// files may come from the config file, which clap's `requires` would not see.)
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// File holding the bearer token of the TCP API.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Where the HTTP policy proxy listens (agents' `via_proxy` traffic is sent here by the
    /// kernel). Give an IPv4 address; it also listens on [::1] at the same port.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub proxy_listen: std::net::SocketAddrV4,
    /// Do not run the HTTP policy proxy (`via_proxy` connects are then refused).
    #[arg(long)]
    pub no_proxy: bool,
    /// Directory of the node CA for TLS interception (ca.crt, ca.key; created when the proxy
    /// first starts).
    #[arg(long, default_value = "/var/lib/governance/ca")]
    pub ca_dir: PathBuf,
    /// Extra PEM roots the proxy trusts for upstream TLS (besides the public roots).
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Host → address overrides for the proxy's Host check, `host=ip[,ip]` (repeatable), for
    /// hosts your resolver does not know.
    #[arg(long = "proxy-host", value_name = "HOST=IP")]
    pub proxy_hosts: Vec<String>,
    /// Do not check that the Host of a redirected request resolves to where the agent was
    /// connecting (labs only: rules then trust a Host header the agent chose).
    #[arg(long)]
    pub no_host_check: bool,
    /// The audit log directory.
    #[arg(
        long,
        env = "GOVERNANCE_AUDIT_DIR",
        default_value = "/var/lib/governance/audit"
    )]
    pub audit_dir: PathBuf,
    /// Rotate audit files at this size (bytes; K, M, G suffixes).
    #[arg(long, default_value = "64M", value_parser = crate::policy::parse_size)]
    pub audit_max_bytes: u64,
    /// Rotate audit files at this age (`1h`, `1d`).
    #[arg(long, default_value = "24h", value_parser = policy::parse_duration)]
    pub audit_max_age: Duration,
    /// Ed25519 key that seals each audit file (created 0600 if missing).
    #[arg(long)]
    pub audit_signing_key: Option<PathBuf>,
    /// While the audit log cannot be written (full disk, I/O error): `continue` (actions go on;
    /// a gap record counts the records lost) or `block` (the HTTP proxy answers 503, approvals
    /// and pre-authorizations are refused; kernel decisions go on, counted).
    #[arg(long, value_enum, default_value_t = crate::audit::OnFailure::Continue)]
    pub audit_on_failure: crate::audit::OnFailure,
    /// Remove the oldest audit files while the log is larger than this (K, M, G suffixes); a
    /// checkpoint (signed with the signing key) keeps the rest verifiable.
    #[arg(long, value_parser = crate::policy::parse_size)]
    pub audit_retain_bytes: Option<u64>,
    /// Remove audit files whose last record is older than this (`30d`).
    #[arg(long, value_parser = crate::policy::parse_duration)]
    pub audit_retain_age: Option<Duration>,
    /// Do not print each event on stdout (the audit log and the API still have them).
    #[arg(long, short)]
    pub quiet: bool,
    /// Send records to a collector (repeatable): `syslog+udp|tcp|tls://HOST:PORT`,
    /// `webhook+http(s)://HOST/PATH`, `otlp+http(s)://HOST:PORT`, `otlp+grpc(s)://HOST:PORT`, with
    /// `?kind=…&outcome=…&secret=FILE&…` (see docs/export-and-notify.md).
    #[arg(long = "export", value_name = "URL")]
    pub exports: Vec<String>,
    /// Post a Slack-compatible message to this URL for every escalation (approval request).
    #[arg(long, value_name = "URL")]
    pub notify_webhook: Option<String>,
    /// Sign the notifications with the key in this file (`X-Governance-Signature`).
    #[arg(long, requires = "notify_webhook")]
    pub notify_secret: Option<PathBuf>,
    /// Per-user bearer tokens of the TCP API: a YAML file of `name: token` lines; the name is
    /// recorded as the approver of what its token approves.
    #[arg(long)]
    pub api_tokens: Option<PathBuf>,
    /// Serve the TCP API over TLS with this certificate chain (PEM); with --api-tls-key.
    #[arg(long, requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --api-tls-cert.
    #[arg(long, requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Kubernetes: watch this node's pods and the namespaces through the API server (in-cluster
    /// service account, or $KUBECONFIG), so `pod_labels`, `namespace`, `namespace_labels` and
    /// `service_account` selectors match pods' cgroups (see docs/kubernetes.md).
    #[arg(long, env = "GOVERNANCE_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubernetes: the name of this node (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Serve /healthz, /readyz and /metrics on this address, without a token (probes and
    /// scrapers; e.g. 0.0.0.0:9090 in a pod). Off by default.
    #[arg(long, env = "GOVERNANCE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Run a drill (`governance drill`) every this long, e.g. `24h`; off by default. See
    /// docs/operations.md, "Drills".
    #[arg(long, value_parser = policy::parse_duration)]
    pub drill_every: Option<Duration>,
    /// Discovery of unlabelled agents: the LLM provider hosts (one pattern a line, `*.` for
    /// subdomains, `#` comments) whose TLS server names and DNS queries make a process outside
    /// every agent a candidate (default: the built-in list, see docs/discovery.md).
    #[arg(long, value_name = "FILE")]
    pub discover_hosts: Option<PathBuf>,
    /// Do not look for unlabelled agents: the kernel's `discover` program is detached (no cost
    /// to processes outside agents), no `discovery` records, `governance discover` says off.
    #[arg(long)]
    pub no_discover: bool,
}

/// The policy directory does not read (`error`): the copy of the policy in force, said loudly,
/// or the error (then `run` exits 1, as `policy check` does).
fn policy_in_force(
    args: &RunArgs,
    error: policy::PolicyError,
) -> anyhow::Result<(in_force::Kept, String)> {
    let path = &args.policy_in_force;
    match in_force::load(path, &args.policy) {
        Ok(Some(kept)) => {
            crate::say!(
                "{error}\nthe policy directory {} does not read: enforcing the copy of the policy \
                 in force saved at {} ({}) until it does",
                args.policy.display(),
                kept.saved,
                in_force::file(path).display()
            );
            Ok((kept, error.to_string()))
        }
        Ok(None) => Err(error.into()),
        Err(copy) => Err(anyhow::anyhow!(
            "{error}\nand the copy of the policy in force is no use: {copy:#}"
        )),
    }
}

/// How long a stopping daemon lets open API connections (event streams) finish.
const API_DRAIN: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // The start (the policy parsed twice, the programs loaded, the first generation built)
    // frees far more than the daemon then keeps: hand it back as it is freed.
    let start = crate::memory::Burst::start();
    // Before anything else is allocated: the OOM killer must never pick the daemon.
    if let Err(e) = never_oom_killed() {
        crate::say!(
            "WARNING: could not set the daemon's oom_score_adj to {OOM_SCORE_ADJ} ({e}): under memory pressure the kernel's OOM killer may pick the daemon, and an agent can make that pressure (set OOMScoreAdjust=-1000 in its unit, or give it CAP_SYS_RESOURCE)"
        );
    }
    // No core dump of the daemon: its memory holds the audit signing key, the CA's key and the
    // API's tokens (red team round 22; the unit also sets LimitCORE=0).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        crate::say!("WARNING: could not make the daemon not dumpable: {e}");
    }
    if let Some(why) = own_mount_namespace() {
        crate::say!("WARNING: {why}");
    }
    if let Err(e) = most_descriptors() {
        crate::say!("WARNING: could not raise the daemon's open-file limit: {e}");
    }
    // The policy first, before the kernel is probed or anything is loaded: a typo or a missing
    // directory is reported with its place, and the exit status is that of `policy check`
    // (1), not 3 ("cannot enforce").
    // A directory that does not read falls back on the copy of the policy in force, if there
    // is one (see `in_force`).
    let kept = match policy::load_dir(&args.policy) {
        Ok(_) => None,
        Err(e) => Some(policy_in_force(&args, e)?),
    };
    // Before anything is attached, so a stop or reload request is never lost.
    let mut signals = Signals::new()?;
    let probe = Probe::run();
    let root = probe.cgroup2.clone().context(
        "no cgroup2 filesystem is mounted; agents are cgroup v2 groups, so there is nothing to govern",
    )?;
    let hosts = host_overrides(&args.proxy_hosts)?;
    let token = api_token(&args)?;
    let exporters = exporters(&args)?;
    let discover_hosts = match &args.discover_hosts {
        Some(path) => crate::discovery::Hosts::load(path)?,
        None => crate::discovery::Hosts::default(),
    };
    let Some(Attached {
        enforcer,
        ring,
        hooks,
        previous,
        adopted,
        complete,
    }) = attach(&args, &probe, &root)?
    else {
        return Ok(ExitCode::from(EXIT_CANNOT_ENFORCE));
    };

    // The event pipeline, with the audit log.
    let metrics = Arc::new(Metrics::new());
    let pipe = open_pipeline(&args, &root, &metrics)?;
    let publisher = pipe.publisher.clone();
    let exports = crate::export::start(exporters, &publisher, &metrics).await?;
    publisher.publish(started(previous, adopted, complete));
    let pods = kubernetes(&args, &publisher, &metrics).await?;

    // Approvals: HTTP holds, and kernel escalations approved by a time-bounded grant.
    let (sink, approvals) = approvals(&publisher, &enforcer, &pipe.ids);

    // Drain kernel events from now on (what the programs decided while no daemon ran first).
    let names: SharedNames = Arc::default();
    let drain = Drainer {
        ring,
        names: names.clone(),
        clock: Clock::now(),
        publisher: publisher.clone(),
        approvals: approvals.clone(),
    };
    let mut drainer = Worker::start("ring", "starting the event drainer", move |flag| {
        drain.run(flag)
    })?;

    // Discovery of unlabelled agents: never fatal (see discover.rs).
    let (discovery, mut discovery_thread) =
        discover::start(&args, discover_hosts, &root, &enforcer, &publisher);

    let snapshot = Arc::new(Mutex::new(Snapshot {
        policy_dir: args.policy.clone(),
        pins: args.pins.clone(),
        degraded: !complete,
        hooks,
        proxy: None,
        audit: Some(args.audit_dir.clone()),
        started: rfc3339(SystemTime::now()),
        generation: previous,
        ..Default::default()
    }));
    let mut daemon = Daemon {
        args: &args,
        root: &root,
        enforcer: enforcer.clone(),
        publisher: publisher.clone(),
        metrics: metrics.clone(),
        snapshot: snapshot.clone(),
        approvals: approvals.clone(),
        names: names.clone(),
        engine: Arc::new(ArcSwap::from_pointee(Engine::new(
            policy::PolicySet::default(),
            previous,
        ))),
        current: previous,
        agents_now: Vec::new(),
        last_failed: false,
        failures: 0,
        dropped: 0,
        dropped_by: Default::default(),
        proxy: None,
        netns: None,
        pods,
        counts: counts::Counts::resume(args.policy_in_force.join(counts::RECORDED), &enforcer),
        parsed: Default::default(),
        in_force: in_force::Saver::start(args.policy_in_force.clone(), args.policy.clone()),
        content_hash: None,
        ticks: 0,
        mounts: crate::kernel::unlisted_mounts(&crate::kernel::mountinfo()),
        marked_mounts: Vec::new(),
        remount_tried: None,
    };
    // The control socket's directory, before the first generation is compiled: its identity
    // rules then hold it from the start (agents may not unlink, rename or bind a socket there).
    control_socket_dir(&args.socket)?;
    // The copy's directory, before the first generation is compiled (see `in_force`); not
    // before: a start refused on the way (exit 3) leaves nothing behind.
    if let Err(e) = in_force::prepare(&args.policy_in_force) {
        crate::say!(
            "could not make {} for the copy of the policy in force: {e}",
            args.policy_in_force.display()
        );
    }
    if !daemon.first_generation(adopted, kept)? {
        return Ok(ExitCode::from(EXIT_CANNOT_ENFORCE));
    }
    drop(start);

    // The HTTP policy proxy.
    let mut tasks = Vec::new();
    let proxy = start_proxy(&args, hosts, &daemon, sink.clone(), &mut tasks).await?;
    // ... and in agents' own network namespaces.
    if let Some((p, v4)) = &proxy {
        let n = netns::NetnsSync::start(netns::NetnsListeners::new(p.clone(), *v4.ip(), v4.port()))
            .context("starting the thread that serves agents' network namespaces")?;
        n.sync(&daemon.agents_now);
        daemon.netns = Some(n);
        daemon.proxy = Some((p.clone(), *v4));
    }
    let proxy = proxy.map(|(p, _)| p);
    // A handover from another build's pins: this build enforces the policy now (and its proxy
    // address is set), so the previous build's programs go.
    let (previous_events, handed) = {
        let mut e = enforcer.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        // Opened while its pin is there; read once this build's maps hold the carried state.
        let previous = e
            .previous_events()
            .context("opening the previous build's event ring")?;
        let handed = e
            .finish_handover()
            .context("taking over from the previous build's programs (they stay attached)")?;
        (previous.zip(e.enforcing_since()), handed)
    };
    if let Some(carried) = handed {
        tracing::info!(%carried, "carried over the previous build's runtime state");
        eprintln!(
            "governance: handed over from the previous build's programs (now detached); this build enforces; carried over: {carried}"
        );
    }
    if let Some((ring, until)) = previous_events {
        let n = drain::publish_previous(ring, until, &Clock::now(), &publisher, &approvals);
        eprintln!(
            "governance: recorded {n} events the previous build decided while no daemon read them"
        );
    }

    // The control API.
    let (reload_tx, mut reload_rx) = mpsc::channel::<api::ReloadReply>(8);
    let (drill_tx, mut drill_rx) = mpsc::channel::<api::DrillRequest>(4);
    let state = Arc::new(ApiState {
        publisher: publisher.clone(),
        counts: pipe.counts.clone(),
        audit_dir: Some(args.audit_dir.clone()),
        metrics: metrics.clone(),
        approvals: approvals.clone(),
        enforcer: enforcer.clone(),
        snapshot: snapshot.clone(),
        reload: reload_tx,
        drill: drill_tx,
        proxy: proxy.clone(),
        tokens: token,
        exporters: exports.stats.clone(),
        discovery,
    });
    let api = serve_api(&args, &state, &enforcer).await?;
    // Everything that needed the start's privileges is done: keep only what is still needed.
    crate::privilege::started().context("dropping the capabilities only the start needs")?;
    let capabilities = api::wire::Capabilities {
        daemon: crate::privilege::held(),
        proxy: match &proxy {
            Some(p) => p.capabilities().await,
            None => None,
        },
    };
    snapshot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .capabilities = Some(capabilities);
    // systemd (Type=notify): ready once the first generation enforces and the API listens.
    notify::notify(&format!(
        "READY=1\nSTATUS=generation {} is enforcing",
        daemon.current
    ));

    // An error while serving stops the daemon like a signal, with an exit status of its own
    // (`EXIT_FAILED_SERVING`): the service manager restarts it, where an invalid policy or
    // config (1) or a kernel that cannot enforce (3) would fail the same way again.
    let served = daemon
        .serve(&mut signals, &mut reload_rx, &mut drill_rx)
        .await;
    if let Err(e) = &served {
        tracing::error!("stopping on an error: {e:#}");
    }
    notify::notify("STOPPING=1");

    // Stop: no new connections, the last events recorded, then the pipeline closes the log.
    for t in &tasks {
        t.abort();
    }
    let _ = api.stop.send(true);
    let _ = std::fs::remove_file(&args.socket);
    drainer.stop();
    if let Some(t) = discovery_thread.as_mut() {
        t.stop();
    }
    daemon.take_counts();
    publisher.publish(daemon.stopped());
    let current = daemon.current;
    drop((daemon, publisher, sink, approvals, state, proxy, tasks));
    // Connections still open (an `events --follow`) hold publishers: stop explicitly.
    pipe.publisher.stop();
    let _ = tokio::task::spawn_blocking(move || pipe.thread.join()).await;
    // The exporters send what their queues still hold (bounded, as the API's streams).
    let sent = futures_util::future::join_all(exports.tasks);
    if tokio::time::timeout(API_DRAIN, sent).await.is_err() {
        tracing::warn!("exporters still sending after {API_DRAIN:?}; their last records are lost");
    }
    // The streams have their last record; let them end cleanly (bounded: a client that does
    // not read keeps nothing alive).
    let drained = futures_util::future::join_all(api.tasks);
    if tokio::time::timeout(API_DRAIN, drained).await.is_err() {
        tracing::warn!("API connections still open after {API_DRAIN:?}; closing them");
    }
    if args.detach_on_exit {
        kernel::unload(&args.pins).context("removing the pins")?;
        crate::say!("programs detached (--detach-on-exit)");
    } else {
        crate::say!(
            "generation {current} stays enforcing (pinned in {}); `governance unload` removes it",
            args.pins.display()
        );
    }
    Ok(match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILED_SERVING),
    })
}

/// Raise the soft limit on open files to the hard one: the proxy holds two descriptors for
/// each connection an agent keeps open (a tunnel lives as long as it sends), and a daemon
/// that cannot open a file cannot build a generation (red team round 16: a root agent with a
/// few hundred tunnels reached the default soft limit of 1,024).
fn most_descriptors() -> nix::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(())
}

/// The exit status of a daemon that stopped on an error after it started enforcing (see
/// `packaging/governance.service`: restarted, unlike 1 and 3).
pub const EXIT_FAILED_SERVING: u8 = 4;

/// With `--kubernetes`: the pods of this node and the namespaces, watched from now on (the
/// first list is awaited a while, so the first generation knows the pods already there).
async fn kubernetes(
    args: &RunArgs,
    publisher: &Publisher,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<crate::kubernetes::Identities>>> {
    use crate::kubernetes::{ApiState, Identities};
    if !args.kubernetes {
        return Ok(None);
    }
    let node = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .context("--kubernetes needs the node's name: --node-name or NODE_NAME (the downward API's spec.nodeName)")?;
    let client = kube::Client::try_default().await.context(
        "Kubernetes: no API server configuration (in-cluster service account or $KUBECONFIG)",
    )?;
    let ids = Arc::new(Identities::default());
    // What the last daemon was told stands until the API server answers (the copy of the
    // policy in force's directory is the daemon's, out of agents' reach).
    let saved = args.policy_in_force.join(crate::kubernetes::SAVED);
    // A file that does not read is not written over until the API has answered (an outage
    // would otherwise replace it with nothing).
    let mut may_save = match ids.restore(&saved) {
        Ok(n) => {
            crate::say!(
                "the identities of {n} pods the API server told the last daemon ({}) stand until it answers",
                saved.display()
            );
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            crate::say!(
                "could not read the pod identities the last daemon kept ({}): {e}; pods match when the API server answers",
                saved.display()
            );
            false
        }
    };
    {
        let (ids, mut changed) = (ids.clone(), ids.subscribe());
        tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                may_save |= ids.api_state() == ApiState::Synced;
                if !may_save {
                    continue;
                }
                let (ids, saved) = (ids.clone(), saved.clone());
                let kept = tokio::task::spawn_blocking(move || {
                    let dir = saved.parent().unwrap_or(Path::new("/"));
                    in_force::prepare(dir)
                        .and_then(|()| ids.save(&saved))
                        .map_err(|e| format!("{}: {e}", saved.display()))
                })
                .await;
                if let Ok(Err(e)) = kept {
                    tracing::warn!(error = %e, "could not keep the pod identities for the next start");
                }
            }
        });
    }
    let (p, m) = (publisher.clone(), metrics.clone());
    let report = move |state: &ApiState| {
        let (kind, message) = match state {
            ApiState::Synced => (
                "kubernetes.synced",
                "the pods of this node and the namespaces are listed and watched".to_owned(),
            ),
            ApiState::Unreachable(e) => (
                "kubernetes.unreachable",
                format!(
                    "the Kubernetes API server cannot be reached ({e}); the last known pod identities stand"
                ),
            ),
            ApiState::Starting => return,
        };
        crate::say!("{message}");
        m.set_kubernetes_api(*state == ApiState::Synced);
        p.publish(lifecycle(kind, message));
    };
    tokio::spawn(crate::kubernetes::watch(client, node, ids.clone(), report));
    let mut rx = ids.subscribe();
    let first = rx.wait_for(|_| ids.api_state() != ApiState::Starting);
    if tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .is_err()
    {
        crate::say!("the Kubernetes API server has not answered in 30 s; pods match when it does");
    }
    Ok(Some(ids))
}

/// The bearer tokens of the TCP API (`--api-token-file`, `--api-tokens`), with their users.
fn api_token(args: &RunArgs) -> anyhow::Result<api::auth::Tokens> {
    let mut tokens = api::auth::Tokens::default();
    if let Some(p) = &args.api_token_file {
        tokens.extend(api::auth::Tokens::load_single(p)?);
    }
    if let Some(p) = &args.api_tokens {
        tokens.extend(api::auth::Tokens::load(p)?);
    }
    if args.api_listen.is_some() && tokens.is_empty() {
        anyhow::bail!("--api-listen needs tokens: --api-token-file or --api-tokens");
    }
    if args.api_listen.is_none() && args.api_tls_cert.is_some() {
        anyhow::bail!("--api-tls-cert is for the TCP API: give --api-listen too");
    }
    // Read now, before anything is attached, so a bad pair stops the start with its place.
    if let (Some(cert), Some(key)) = (&args.api_tls_cert, &args.api_tls_key) {
        api::auth::tls_config(cert, key)?;
    }
    Ok(tokens)
}

/// The `--export` exporters and the `--notify-webhook` notifier.
fn exporters(args: &RunArgs) -> anyhow::Result<Vec<crate::export::Exporter>> {
    let mut out = args
        .exports
        .iter()
        .map(|s| crate::export::Exporter::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(url) = &args.notify_webhook {
        out.push(crate::export::Exporter::notifier(
            url,
            args.notify_secret.as_deref(),
            args.upstream_ca.as_deref(),
        )?);
    }
    Ok(out)
}

/// The programs, attached (or adopted) and protected.
struct Attached {
    enforcer: Arc<Mutex<Enforcer>>,
    ring: RingBuf<MapData>,
    /// (program, what it enforces, its state), for the status.
    hooks: Vec<(String, String, String)>,
    /// The generation that was pinned (0: none).
    previous: u32,
    /// Whether the programs were pinned by an earlier daemon.
    adopted: bool,
    /// Whether every hook is attached.
    complete: bool,
}

/// With `net.ipv6.ip_nonlocal_bind` on, Linux sends IPv6 from any address a socket binds, with
/// no `IPV6_FREEBIND` the hooks could refuse: an agent's datagram to an allowed host then has
/// a refused host's address as its source, and the replies (ICMPv6 errors quote the datagram)
/// go there (red team round 27). Said at start, as the node's setting to change.
fn warn_nonlocal_bind() {
    const SETTING: &str = "/proc/sys/net/ipv6/ip_nonlocal_bind";
    if crate::procfs::read_to_string(SETTING).is_ok_and(|v| v.trim() != "0") {
        tracing::warn!(
            setting = SETTING,
            "IPv6 non-local binds are on in the host's network namespace: agents there can \
             send IPv6 from addresses the node does not own (replies go to hosts their \
             policy may refuse); set net.ipv6.ip_nonlocal_bind=0"
        );
    }
}

/// Load and attach the programs (or adopt the pinned ones), report what this kernel can
/// enforce, and protect the daemon's process. Ok(None): not every hook is attached and
/// degraded mode was not accepted; nothing this run attached is left behind.
fn attach(args: &RunArgs, probe: &Probe, root: &Path) -> anyhow::Result<Option<Attached>> {
    let mut enforcer =
        Enforcer::start(&args.pins, root, args.allow_degraded).with_context(|| {
            format!(
                "loading the eBPF programs (pins in {})",
                args.pins.display()
            )
        })?;
    // Discovery never stops the daemon: a program that cannot be detached is reported.
    if args.no_discover
        && let Err(e) = enforcer.detach_discover()
    {
        tracing::warn!("--no-discover: the discovery program stays attached: {e}");
    }
    let previous = enforcer.generation().unwrap_or(0);
    let adopted = enforcer.adopted;
    if adopted {
        crate::say!(
            "adopted the programs pinned in {} (generation {previous} was enforcing while no daemon ran)",
            args.pins.display()
        );
    }
    if let Some(old) = &enforcer.handover_from {
        eprintln!(
            "governance: the programs pinned in {} are another build's; this build's are attached beside them (both enforce) and take over once its policy is in place",
            old.display()
        );
    }
    let complete = report(probe, &enforcer);
    warn_nonlocal_bind();
    if !complete && !args.allow_degraded {
        crate::say!(
            "refusing to run: not every hook is attached (see NOT AVAILABLE and why \
             above). Pass --allow-degraded to enforce only what is available."
        );
        if !adopted {
            // Leave nothing attached behind.
            let _ = kernel::unload(&enforcer.pin_dir);
        }
        return Ok(None);
    }
    enforcer
        .protect(&[std::process::id()])
        .context("protecting the daemon's process")?;
    let hooks = enforcer
        .hooks
        .iter()
        .map(|(p, s)| (p.name.to_owned(), p.what.to_owned(), s.to_string()))
        .collect();
    let ring = enforcer.take_events()?;
    Ok(Some(Attached {
        enforcer: Arc::new(Mutex::new(enforcer)),
        ring,
        hooks,
        previous,
        adopted,
        complete,
    }))
}

/// The event pipeline, with the audit log.
fn open_pipeline(
    args: &RunArgs,
    root: &Path,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<pipeline::Handles> {
    let signing_key = args
        .audit_signing_key
        .as_deref()
        .map(crate::audit::load_or_create_key)
        .transpose()?;
    pipeline::start(pipeline::Config {
        audit: Some((
            args.audit_dir.clone(),
            AuditOptions {
                max_bytes: args.audit_max_bytes,
                max_age: Some(args.audit_max_age),
                signing_key,
                on_failure: args.audit_on_failure,
                retain_bytes: args.audit_retain_bytes,
                retain_age: args.audit_retain_age,
                ..Default::default()
            },
        )),
        cgroup_root: root.to_owned(),
        metrics: metrics.clone(),
        stdout: !args.quiet,
    })
    .with_context(|| format!("opening the audit log in {}", args.audit_dir.display()))
}

/// The `daemon.started` record.
fn started(previous: u32, adopted: bool, complete: bool) -> Record {
    let mut started = lifecycle(
        "daemon.started",
        format!(
            "governance {} started (pid {}){}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            if complete { "" } else { " DEGRADED" }
        ),
    );
    started.generation = previous;
    if adopted {
        started.message.push_str(&format!(
            "; adopted the pinned programs: generation {previous} enforced while no daemon ran"
        ));
    }
    started
}

/// Whether the daemon runs in a mount namespace of its own (a container, a Kubernetes
/// DaemonSet), and what that means: the node's files it protects by identity (the system
/// files, the homes, exact exec rules, the mounts below container storage) are resolved in its
/// own root, not the node's. Agents in their own mount namespaces cannot reach the node's
/// files, but an agent pod given a hostPath volume of a node path can, unprotected by those
/// identities (red team round 12). None where both are the same, or the node's is not visible.
fn own_mount_namespace() -> Option<String> {
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    let node = std::fs::read_link("/proc/1/ns/mnt").ok()?;
    (ours != node).then(|| {
        "the daemon runs in a mount namespace of its own (a container): the node's files it \
         protects by identity (system files, homes, exact exec rules, container storage) are \
         resolved in the daemon's root, not the node's; give agent pods and containers no \
         hostPath or bind mounts of node paths (docs/limits.md)"
            .to_owned()
    })
}

/// The approval queue (HTTP holds, and kernel escalations approved by a time-bounded grant)
/// and the sink the proxy and the queue report to.
fn approvals(
    publisher: &Publisher,
    enforcer: &Arc<Mutex<Enforcer>>,
    ids: &Arc<Ids>,
) -> (Sink, Arc<Approvals>) {
    let sink: Sink = {
        let p = publisher.clone();
        Arc::new(move |r| p.publish(r))
    };
    let grant: approvals::Grant = {
        let e = enforcer.clone();
        Arc::new(move |g: governance_common::GrantKey, d: Duration| {
            let mut e = e.lock().map_err(|_| "the kernel state lock is poisoned")?;
            e.grant(
                g,
                events::monotonic_ns().saturating_add(d.as_nanos() as u64),
            )
            .map_err(|e| e.to_string())
        })
    };
    let approvals = Approvals::with_ids(
        approvals::Limits::default(),
        sink.clone(),
        grant,
        ids.clone(),
    );
    (sink, approvals)
}

/// The HTTP policy proxy, listening on `--proxy-listen` and [::1] at the same port (its tasks
/// go to `tasks`); None with `--no-proxy`. The kernel is told where it listens.
async fn start_proxy(
    args: &RunArgs,
    hosts: HashMap<String, Vec<IpAddr>>,
    daemon: &Daemon<'_>,
    sink: Sink,
    tasks: &mut Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> anyhow::Result<Option<(Arc<Proxy>, std::net::SocketAddrV4)>> {
    let enforcer = &daemon.enforcer;
    if args.no_proxy {
        enforcer
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .set_proxy(None)?;
        return Ok(None);
    }
    // Port 0 picks a free port; the IPv6 listener and the kernel use the same one.
    let first = tokio::net::TcpListener::bind(args.proxy_listen)
        .await
        .with_context(|| format!("the proxy cannot listen on {}", args.proxy_listen))?;
    let v4 = match first.local_addr()? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => anyhow::bail!("--proxy-listen takes an IPv4 address"),
    };
    let v6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, v4.port(), 0, 0);
    let mut listeners = vec![first];
    match tokio::net::TcpListener::bind(v6).await {
        Ok(l) => listeners.push(l),
        Err(e) => tracing::warn!(
            "the proxy does not listen on {v6} ({e}); IPv6 agents' via_proxy connects will be refused"
        ),
    }
    for l in &listeners {
        crate::kernel::mark_proxy_listener(std::os::fd::AsFd::as_fd(l)).with_context(|| {
            format!(
                "marking the proxy's listener on {} as the daemon's (SO_PRIORITY; needs \
                 CAP_NET_ADMIN): the kernel sends agents only to a marked listener",
                l.local_addr()
                    .map_or_else(|e| e.to_string(), |a| a.to_string())
            )
        })?;
    }
    let identify = Arc::new(KernelIdentify {
        conns: Mutex::new(ProxyConns::open(
            &enforcer
                .lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .pin_dir,
        )?),
        names: daemon.names.clone(),
    });
    let cfg = proxy::ProxyConfig {
        host_check: if args.no_host_check {
            proxy::HostCheck::Off
        } else {
            proxy::HostCheck::Resolve
        },
        host_addresses: hosts,
        ca_dir: Some(args.ca_dir.clone()),
        upstream_ca: args.upstream_ca.clone(),
        audit: Some(daemon.publisher.audit_health().clone()),
        ..Default::default()
    };
    let p = Proxy::new(
        cfg,
        daemon.engine.clone(),
        identify,
        daemon.approvals.clone(),
        sink,
    );
    // What agents send is parsed on threads of the proxy's own, which hold no capability.
    p.serve_on(proxy::Threads::start(2).context("starting the proxy's threads")?);
    for l in listeners {
        tasks.push(tokio::spawn(p.clone().serve(l)));
    }
    enforcer
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .set_proxy(Some((*v4.ip(), Ipv6Addr::LOCALHOST, v4.port())))?;
    crate::say!("HTTP policy proxy on {v4} and [::1]:{}", v4.port());
    daemon
        .snapshot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .proxy = Some(v4.to_string());
    Ok(Some((p, v4)))
}

/// The control socket's directory (the directory `socket` names its socket in), made 0700 if
/// it is not there. It is the daemon's own: agents may create, remove or rename nothing in it
/// (see `generation::protect`), so none can take the socket's name over (unlink it, bind a
/// listener of its own there, and answer the administrator's `governance approve`). A shared
/// directory (`/`, or one anyone may write, as /tmp) cannot be refused to agents whole, and a
/// name in it is free whenever the socket is not there: refused.
pub(super) fn control_socket_dir(socket: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let dir = generation::socket_dir(socket);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the control socket's directory {}", dir.display()))?;
    let shared = dir.canonicalize().is_ok_and(|d| d == Path::new("/"))
        || std::fs::metadata(&dir).is_ok_and(|m| m.permissions().mode() & 0o1002 != 0);
    if shared {
        anyhow::bail!(
            "the control socket {} is in a shared directory ({}: the root, world-writable or sticky): \
             agents could take its name over while it is not there; give it a directory of its own \
             (the default is {})",
            socket.display(),
            dir.display(),
            crate::client::DEFAULT_SOCKET
        );
    }
    Ok(dir)
}

/// The daemon's `oom_score_adj`: never chosen by the OOM killer.
pub const OOM_SCORE_ADJ: i32 = -1000;

/// Keep the OOM killer off the daemon: an agent that fills memory with many processes, each
/// smaller than the daemon, would otherwise have the kernel kill the daemon first (agents may
/// not write its `oom_score_adj`: the `inode_permission` guard). Lowering it needs
/// CAP_SYS_RESOURCE; under systemd the unit's `OOMScoreAdjust=-1000` has set it already.
fn never_oom_killed() -> std::io::Result<()> {
    let path = "/proc/self/oom_score_adj";
    let now = crate::procfs::read_to_string(path)?;
    if now.trim().parse::<i32>().ok() == Some(OOM_SCORE_ADJ) {
        return Ok(());
    }
    std::fs::write(path, OOM_SCORE_ADJ.to_string())
}

/// The control API's servers, and how to stop them gracefully.
struct ApiServers {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Serve the control API on the socket (and on TCP with `--api-listen`); agents are refused
/// both in the kernel.
async fn serve_api(
    args: &RunArgs,
    state: &Arc<ApiState>,
    enforcer: &Mutex<Enforcer>,
) -> anyhow::Result<ApiServers> {
    let socket = api::bind_socket(&args.socket)
        .with_context(|| format!("creating the control socket {}", args.socket.display()))?;
    // Agents may never reach it, whatever the policy says: refused by its identity, which
    // the kernel checks whatever name an agent uses.
    enforcer
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .protect_control_socket(&args.socket)
        .context("refusing the control socket to agents")?;
    // The API servers stop gracefully: live event streams end with their last record and a
    // proper end of body, not a connection cut mid-chunk.
    let (api_stop, api_stopping) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = api_stopping.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut api_tasks = Vec::new();
    {
        let app =
            api::router(state.clone(), false).into_make_service_with_connect_info::<api::Caller>();
        let stop = stopped();
        api_tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(socket, app).with_graceful_shutdown(stop).await {
                tracing::error!("control socket: {e}");
            }
        }));
    }
    let mut api_addr = None;
    if let Some(addr) = args.api_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("the API cannot listen on {addr}"))?;
        api_addr = Some(l.local_addr()?);
        let app =
            api::router(state.clone(), true).into_make_service_with_connect_info::<api::Caller>();
        let stop = stopped();
        let tls = match (&args.api_tls_cert, &args.api_tls_key) {
            (Some(cert), Some(key)) => Some(api::auth::tls_config(cert, key)?),
            _ => None,
        };
        api_tasks.push(match tls {
            Some(config) => {
                let l = api::auth::TlsListener::new(l, config)?;
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                        tracing::error!("API on {addr}: {e}");
                    }
                })
            }
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                    tracing::error!("API on {addr}: {e}");
                }
            }),
        });
    }
    if let Some(addr) = args.health_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("the health endpoints cannot listen on {addr}"))?;
        eprintln!(
            "governance: /healthz, /readyz and /metrics on {} (no token)",
            l.local_addr()?
        );
        let app = api::health_router(state.clone());
        let stop = stopped();
        api_tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                tracing::error!("health endpoints on {addr}: {e}");
            }
        }));
    }
    // Agents' connects to the TCP API are refused in the kernel (and a previous daemon's
    // address forgotten).
    enforcer
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .set_api_addr(api_addr)
        .context("refusing the TCP control API to agents")?;
    crate::say!(
        "control API on {}{}",
        args.socket.display(),
        args.api_listen
            .map(|a| format!(
                " and {a} (bearer token{})",
                if args.api_tls_cert.is_some() {
                    ", TLS"
                } else {
                    ""
                }
            ))
            .unwrap_or_default()
    );
    Ok(ApiServers {
        stop: api_stop,
        tasks: api_tasks,
    })
}

/// `host=ip[,ip]` overrides of the proxy's Host check.
fn host_overrides(args: &[String]) -> anyhow::Result<HashMap<String, Vec<IpAddr>>> {
    let mut out = HashMap::new();
    for a in args {
        let (host, ips) = a
            .split_once('=')
            .with_context(|| format!("--proxy-host `{a}`: expected HOST=IP[,IP]"))?;
        let ips = ips
            .split(',')
            .map(|ip| {
                ip.trim()
                    .parse()
                    .with_context(|| format!("--proxy-host `{a}`: `{ip}` is not an IP address"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.insert(host.trim().to_ascii_lowercase(), ips);
    }
    Ok(out)
}
