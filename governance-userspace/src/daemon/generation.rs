//! Policy generations: validate the policy directory, find the agents, compile and install a
//! generation, and keep what the kernel ids of recent generations stand for ([`Names`]: the
//! agents by cgroup id, the rules by the ids the kernel compiler assigns in rule order).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use anyhow::Context as _;

use super::RunArgs;
use crate::{
    agents,
    api::AgentView,
    engine::Engine,
    events::{AgentInfo, Names, RuleName},
    kernel::{self, Enforcer, Protect},
    policy,
};

/// Generations whose names are kept for events still in the ring.
const NAMED_GENERATIONS: usize = 8;

/// Names of recent generations, shared by the drainer and the proxy's agent lookup.
pub(super) type SharedNames = Arc<RwLock<BTreeMap<u32, Arc<Names>>>>;

/// One built generation.
pub(super) struct Built {
    pub names: Names,
    pub engine: Engine,
    pub agents: Vec<AgentView>,
    /// The agent cgroups it was built for.
    pub found: Vec<agents::AgentCgroup>,
    pub rules: usize,
    /// The policy's content hash ([`policy::load_dir_hashed`]).
    pub content_hash: String,
    /// What was read from the policy directory (None: a kept policy).
    pub sources: Option<policy::Sources>,
    /// The mounts of the devices its identity entries are on ([`kernel::remounted`]).
    pub marked_mounts: Vec<(Vec<u8>, u32)>,
}

/// Where a build takes its policy from.
pub(super) enum Source<'a> {
    /// The policy directory, read now (a document that did not change comes from `Parsed`).
    Read(&'a mut policy::Parsed),
    /// A policy read before, and its content hash: the one the current generation enforces,
    /// for a reload for the agents' sake while the directory is being written or does not read.
    Kept(policy::PolicySet, String),
}

/// Validate the policy (from `source`), find the agents, and install generation `number`.
/// Ok(None): it compiled, but some of it cannot be enforced here and degraded mode was not
/// accepted; nothing changed.
pub(super) fn build(
    number: u32,
    args: &RunArgs,
    enforcer: &Mutex<Enforcer>,
    root: &Path,
    pods: Option<&crate::kubernetes::Identities>,
    source: Source<'_>,
) -> anyhow::Result<Option<Built>> {
    let pin_dir = {
        let mut e = enforcer
            .lock()
            .map_err(|_| anyhow::anyhow!("the kernel state lock is poisoned"))?;
        // Key btrfs files as the programs do (and say so once if btrfs was loaded after them)
        // before the identities are resolved below.
        e.key_btrfs_subvolumes()?;
        e.pin_dir.clone()
    };
    // A generation is built from files that must read (the cgroup tree, /etc/passwd, the
    // mount table, /proc/devices); several of them read as "nothing there" when missing.
    // A daemon out of descriptors would read them all as missing and build a generation that
    // protects less: refuse to build then, and the generation in force stays (red team round
    // 16: an agent's proxy tunnels held every descriptor, and a reload dropped every agent).
    if let Err(e) = std::fs::File::open("/proc/self/status") {
        anyhow::bail!("the daemon cannot open files ({e}); not building a generation");
    }
    // Listing the built-in protected directories does not depend on the policy: it runs
    // while the policy is read and compiled, up to the first listing the compile needs.
    let ahead = kernel::ReadAhead::start(protect(args, root, &pin_dir));
    let (set, content_hash, sources) = match source {
        Source::Read(parsed) => {
            let (set, sources) = policy::load_sources(&args.policy, parsed)?;
            (set, sources.hash.clone(), Some(sources))
        }
        Source::Kept(set, hash) => (set, hash, None),
    };
    if pods.is_none()
        && let Some(p) = set.kubernetes_policies().next()
    {
        anyhow::bail!(
            "policy `{}` selects agents by Kubernetes identity ({}); run the daemon with --kubernetes",
            p.name,
            p.selector
        );
    }
    let found = agents::discover(root, &set, !args.no_create_cgroups, pods)?;
    let mountinfo = kernel::mountinfo();
    let compiled = kernel::compile_ahead(&set, &found, number, ahead);
    let marked_mounts = kernel::mounts_of(&mountinfo, &compiled.identity_devices());
    if !compiled.errors.is_empty() {
        anyhow::bail!(
            "the policy does not fit the kernel tables:\n  {}",
            compiled.errors.join("\n  ")
        );
    }
    crate::logging::say_all(
        compiled
            .unenforceable
            .iter()
            .map(|line| format!("NOT ENFORCED: {line}")),
    );
    for line in &compiled.notes {
        tracing::warn!("{line}");
    }
    // Degraded mode's undecidable exec rules: only without the exec hook (attached hooks do
    // not change while the daemon runs), and outside the kernel state lock (it reads the
    // rules' files).
    if enforcer.lock().is_ok_and(|e| !e.exec_by_path()) {
        crate::logging::say_all(degraded_exec_rules(&set));
    }
    // The kernel state from here to the flip (the compile needs none of it: a cleanup after
    // the previous flip may hold it meanwhile).
    let mut enforcer = enforcer
        .lock()
        .map_err(|_| anyhow::anyhow!("the kernel state lock is poisoned"))?;
    let complete = enforcer.fully_attached() && compiled.unenforceable.is_empty();
    if !complete && !args.allow_degraded {
        crate::say!(
            "refusing generation {number}: some of the policy cannot be enforced here \
             (see NOT AVAILABLE / NOT ENFORCED above; exec and file enforcement need BPF LSM, \
             and `governance probe` says why this node refuses it). Pass --allow-degraded to \
             enforce only what is available."
        );
        return Ok(None);
    }
    // Up to the flip; what is left after it is settled once the new generation is in place
    // everywhere (see `Daemon::settle_later`).
    for skipped in enforcer
        .flip(compiled)
        .context("writing the policy into the kernel maps")?
    {
        match skipped {
            kernel::KernelError::UnixTarget { .. } => tracing::warn!(
                "{skipped}; its rule applies from the generation installed when the socket appears"
            ),
            _ => tracing::warn!(
                "{skipped}; its exact rule waits for the next generation (path rules still apply)"
            ),
        }
    }
    drop(enforcer);
    let enforcing = format!(
        "enforcing {} as generation {number} ({} policies, {} rules, {} agents){}",
        args.policy.display(),
        set.policies.len(),
        set.rule_count(),
        found.len(),
        if complete { "" } else { " DEGRADED" }
    );
    crate::logging::say_all(std::iter::once(enforcing).chain(found.iter().map(|a| {
        format!(
            "agent {} = cgroup {} (id {})",
            a.name,
            a.path.display(),
            a.cgroup_id
        )
    })));
    let matching = selected(&set, &found);
    let names = names(&set, &found, &matching);
    let agents = found
        .iter()
        .zip(&matching)
        .map(|(a, matching)| AgentView {
            name: a.name.clone(),
            cgroup: a.rel.clone(),
            cgroup_id: a.cgroup_id,
            selector: names
                .agents
                .get(&a.cgroup_id)
                .map(|i| i.selector.clone())
                .unwrap_or_default(),
            policies: matching
                .iter()
                .map(|&i| set.policies[i].name.clone())
                .collect(),
            agent_ref: a.agent_ref(),
        })
        .collect();
    let rules = set.rule_count();
    Ok(Some(Built {
        names,
        engine: Engine::new(set, number).with_armed_source(kernel::armed_source(&pin_dir, &found)),
        agents,
        found,
        rules,
        content_hash,
        sources,
        marked_mounts,
    }))
}

/// The systemd units that start the daemon and the directories of their drop-ins (an
/// `ExecStart=` there names what runs).
const SERVICE_UNITS: [&str; 6] = [
    "/etc/systemd/system/governance.service",
    "/etc/systemd/system/governance.service.d",
    "/run/systemd/system/governance.service",
    "/run/systemd/system/governance.service.d",
    "/usr/lib/systemd/system/governance.service",
    "/lib/systemd/system/governance.service",
];

/// What agents may not touch, whatever their policy says (see [`Protect`]).
pub(super) fn protect(args: &RunArgs, root: &Path, pin_dir: &Path) -> Protect {
    Protect {
        cgroup_root: root.to_owned(),
        // The policy (and the copy of it a start may enforce), the pins, the control socket's
        // directory (no agent may unlink or rename the socket, nor bind one of its own at its
        // name: see `control_socket_dir`), the daemon's own executable, and what sets how the
        // next start runs: the config file (the one named and the default, which a start reads
        // if it exists) and the service's units (red team round 15: under `allow_system_files`
        // an agent could otherwise name its own policy for the next start).
        no_write: [
            args.policy.clone(),
            args.policy_in_force.clone(),
            pin_dir.to_owned(),
            socket_dir(&args.socket),
            PathBuf::from(crate::cli::config::DEFAULT_PATH),
        ]
        .into_iter()
        .chain(args.config.clone())
        .chain(SERVICE_UNITS.iter().map(PathBuf::from))
        .chain(std::env::current_exe().ok())
        // What the daemon trusts and whom it tells (red team round 33): the roots the proxy
        // trusts upstream and the exporters trust (an agent's root added there would let it
        // answer for any upstream or collector), the TCP API's certificate (replaced, the next
        // start fails), and the hosts discovery looks for (emptied, discovery is blind).
        .chain(args.upstream_ca.clone())
        .chain(args.api_tls_cert.clone())
        .chain(args.discover_hosts.clone())
        .chain(crate::export::files_named(&args.exports, "ca"))
        // The cgroup v1 hierarchies of a hybrid layout (`freezer`, `memory`, `pids`, ...):
        // their `cgroup.procs` moves the daemon into a cgroup an agent made, frozen or starved,
        // with no check of the kind cgroup2's border has; they are under `/sys`, which
        // `allow_kernel_settings` opens (red team round 29). Not relaxed by anything.
        .chain(crate::agents::cgroup_v1_mounts())
        .collect(),
        // The daemon's secrets: the audit log and the key that seals it (read, an agent could
        // re-seal a rewritten log; replaced, the next start seals with its key: red team round
        // 10), the CA, the API's tokens and TLS key, and the exporters' and notifier's signing
        // keys.
        no_access: [
            Some(&args.audit_dir),
            args.audit_signing_key.as_ref(),
            Some(&args.ca_dir),
            args.api_token_file.as_ref(),
            args.api_tokens.as_ref(),
            args.api_tls_key.as_ref(),
            args.notify_secret.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .chain(crate::export::files_named(&args.exports, "secret"))
        .chain(swap_files(
            &crate::procfs::read_to_string("/proc/swaps").unwrap_or_default(),
        ))
        .chain(CORE_DUMPS.iter().map(PathBuf::from))
        .collect(),
        system_links: crate::kernel::system_link_targets(Path::new("/etc")),
    }
}

/// Where the node keeps core dumps (systemd-coredump's, apport's): a process's memory, the
/// daemon's keys and tokens among it if it ever crashed, and other services' secrets (red team
/// round 22). The daemon also makes itself not dumpable at start.
pub(super) const CORE_DUMPS: [&str; 2] = ["/var/lib/systemd/coredump", "/var/crash"];

/// The swap files in use, from /proc/swaps (`Filename Type ...`, the name with `\ooo` escapes
/// for spaces, tabs, newlines and backslashes): every process's swapped-out memory, the
/// daemon's keys and tokens among it, is readable there by root with no capability (a swap
/// partition is a block device, refused as raw storage; red team round 10).
fn swap_files(proc_swaps: &str) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    proc_swaps
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (name, kind) = (fields.next()?, fields.next()?);
            (kind == "file").then_some(name)
        })
        .map(|name| {
            PathBuf::from(std::ffi::OsString::from_vec(crate::procfs::unescape(
                name.as_bytes(),
            )))
        })
        .collect()
}

/// The directory the control socket is named in (see `super::control_socket_dir`).
pub(super) fn socket_dir(socket: &Path) -> PathBuf {
    match socket.parent() {
        Some(d) if d.as_os_str().is_empty() => PathBuf::from("."),
        Some(d) => d.to_owned(),
        None => PathBuf::from("/"),
    }
}

/// The indices of the policies that select each agent of `found`, each policy matched once
/// per agent at most (see `kernel::Selectors`).
pub fn selected(set: &policy::PolicySet, found: &[agents::AgentCgroup]) -> Vec<Vec<usize>> {
    let selectors = kernel::Selectors::new(set);
    found.iter().map(|a| selectors.matching(set, a)).collect()
}

/// What the kernel ids of one generation stand for. `matching`: [`selected`].
pub fn names(
    set: &policy::PolicySet,
    found: &[agents::AgentCgroup],
    matching: &[Vec<usize>],
) -> Names {
    let mut agents = HashMap::new();
    let mut refs = HashMap::new();
    for (a, matching) in found.iter().zip(matching) {
        let selector = matching
            .iter()
            .map(|&i| set.policies[i].selector.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(" ");
        agents.insert(
            a.cgroup_id,
            AgentInfo {
                name: a.name.clone(),
                selector,
                cgroup_id: a.cgroup_id,
                cgroup: a.rel.clone(),
                pod: a.pod.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
                namespace: a
                    .pod
                    .as_ref()
                    .map(|p| p.namespace.clone())
                    .unwrap_or_default(),
                ..Default::default()
            }
            .into(),
        );
        refs.insert(a.cgroup_id, a.agent_ref());
    }
    Names {
        agents,
        refs,
        // Index n - 1 is kernel rule number n (see `PolicySet::numbered`).
        rules: set
            .numbered()
            .map(|(p, r, _)| RuleName {
                id: r.id.clone(),
                reason: r.reason.clone(),
                escalate: r.escalate.as_ref().map(|e| (e.timeout, e.on_timeout)),
                shadow: p.mode == policy::Mode::Shadow || r.mode == policy::Mode::Shadow,
            })
            .collect(),
    }
}

/// Name generation `g`, keeping the recent ones for events still in the ring.
///
/// A generation whose names are those of the one before (a reload that changed no agent and no
/// rule's name, reason or mode) shares that one's: with thousands of agents and rules, eight
/// copies were tens of MiB of the daemon's memory.
pub(super) fn install_names(names: &SharedNames, g: u32, n: Names) {
    let mut names = names.write().unwrap_or_else(|e| e.into_inner());
    let n = match names.values().next_back() {
        Some(last) if **last == n => last.clone(),
        _ => Arc::new(n),
    };
    names.insert(g, n);
    while names.len() > NAMED_GENERATIONS {
        names.pop_first();
    }
}

/// The exec rules degraded mode cannot decide (red team round 27: a `prefix` block ran, and its
/// record said no rule matched): without the exec LSM hook, exec is decided after the fact from
/// the identity of the program the kernel ran, so no path rule is read, and a script's exact
/// rule names a file the kernel has swapped for its interpreter by then.
///
/// Nor is code mapped executable decided (no `mmap_file`, `file_mprotect`): under an exec
/// allowlist an allowed dynamically linked program loads any library (`LD_PRELOAD`, `dlopen`),
/// and an ELF naming another program as its interpreter (`PT_INTERP`) runs it, past an exact
/// rule too (red team round 29): said once per policy with an allowlist or exact exec rules.
fn degraded_exec_rules(set: &crate::policy::PolicySet) -> Vec<String> {
    use crate::policy::{Matcher, PathMatch, Posture};
    let mut lines = Vec::new();
    for policy in &set.policies {
        let allowlist = policy.defaults.get(&crate::policy::Kind::Exec) == Some(&Posture::Block);
        let exact = policy
            .rules
            .iter()
            .any(|r| matches!(r.matcher, Matcher::Exec(PathMatch::Exact(_))));
        if allowlist || exact {
            lines.push(format!(
                "PARTLY ENFORCED: {} ({}): its exec {}; without the mapping LSM hooks, code \
                 mapped executable is not decided: an allowed dynamically linked program loads \
                 any library (LD_PRELOAD, dlopen) and an ELF naming a program as its interpreter \
                 (PT_INTERP) runs it",
                policy.name,
                policy.at,
                if allowlist { "allowlist" } else { "rules" }
            ));
        }
        for rule in &policy.rules {
            match &rule.matcher {
                Matcher::Exec(PathMatch::Prefix(_)) => lines.push(format!(
                    "NOT ENFORCED: {} ({}): an exec `prefix` rule; without the exec LSM hook \
                     exec is decided by the program's identity and the default alone",
                    rule.id, rule.at
                )),
                Matcher::Exec(PathMatch::Exact(path)) if runs_through_interpreter(path) => lines
                    .push(format!(
                        "NOT ENFORCED: {} ({}): `{}` is a script or another format the kernel runs \
                     through an interpreter (binfmt_misc); without the exec LSM hook the \
                     interpreter is decided, not the file",
                        rule.id,
                        rule.at,
                        path.display()
                    )),
                _ => {}
            }
        }
    }
    lines
}

/// Is `path` a regular file the kernel runs through an interpreter: not a native ELF (a `#!`
/// script, or a binfmt_misc format: a jar, a Windows program)? Opened without blocking and
/// read only if it is a regular file: an agent may be able to replace a rule's file (a FIFO
/// there held the reload; a device's open may act; round 27b).
fn runs_through_interpreter(path: &std::path::Path) -> bool {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    else {
        return false;
    };
    let mut head = [0u8; 4];
    f.metadata().is_ok_and(|m| m.is_file())
        && f.read_exact(&mut head).is_ok()
        && &head != b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RuleName;

    fn named(rule: &str) -> Names {
        Names {
            rules: vec![RuleName {
                id: rule.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Red team round 27: degraded mode ran an exec `prefix` block and a blocked script, and
    /// the record said no rule matched. Each such rule is listed as not enforced there; an
    /// exact rule on a program (the control) is enforced by identity and not listed.
    #[test]
    fn degraded_mode_lists_the_exec_rules_it_cannot_decide() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("tool.sh");
        let program = tmp.path().join("tool");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::write(&program, b"\x7fELF").unwrap();
        let yaml = format!(
            "name: p\nagents: {{ cgroup: a }}\nrules:\n\
             \x20 - {{ id: dir, exec: {{ prefix: /opt/tools/ }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: script, exec: {{ path: {} }}, verdict: block, reason: r }}\n\
             \x20 - {{ id: program, exec: {{ path: {} }}, verdict: block, reason: r }}\n",
            script.display(),
            program.display()
        );
        let set = crate::policy::parse(&[("p.yaml".into(), yaml)]).unwrap();
        let lines = degraded_exec_rules(&set);
        assert_eq!(lines.len(), 3, "{lines:?}");
        // Red team round 29: what degraded mode does not decide for any exact rule.
        assert!(
            lines[0].starts_with("PARTLY ENFORCED: p (p.yaml:") && lines[0].contains("PT_INTERP"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("NOT ENFORCED: p/dir (p.yaml:4:"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("NOT ENFORCED: p/script (p.yaml:5:"),
            "{lines:?}"
        );
        assert!(lines[2].contains("is a script"), "{lines:?}");
        // A policy with neither an allowlist nor an exact exec rule: nothing to say.
        let set = crate::policy::parse(&[(
            "q.yaml".into(),
            "name: q\nagents: { cgroup: a }\nrules:\n  - { id: d, exec: { prefix: /opt/ }, verdict: allow, reason: r }\n".into(),
        )])
        .unwrap();
        assert!(
            degraded_exec_rules(&set)
                .iter()
                .all(|l| !l.starts_with("PARTLY")),
            "{:?}",
            degraded_exec_rules(&set)
        );
    }

    /// Every secret the daemon is given is one agents may not read or write: the audit
    /// log's signing key too (red team round 10: it was left out).
    #[test]
    fn every_secret_of_the_daemon_is_out_of_agents_reach() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: RunArgs,
        }
        let secrets = [
            ("--audit-dir", "/s/audit"),
            ("--audit-signing-key", "/s/audit-signing.key"),
            ("--ca-dir", "/s/ca"),
            ("--api-token-file", "/s/api-token"),
            ("--notify-secret", "/s/notify.key"),
        ];
        // (`--api-tls-key` is given below, with its certificate.)
        // (`--notify-secret` goes with a webhook.)
        let mut argv = vec![
            "run",
            "--policy",
            "/p",
            "--config",
            "/c/config.yaml",
            "--notify-webhook",
            "http://127.0.0.1:9/",
            "--upstream-ca",
            "/t/upstream-ca.pem",
            "--api-listen",
            "127.0.0.1:9",
            "--api-tls-cert",
            "/t/api.crt",
            "--api-tls-key",
            "/s/api.key",
            "--discover-hosts",
            "/t/discover-hosts",
            "--export",
            "syslog+tls://h:1?ca=/t/syslog-ca.pem",
        ];
        for (flag, path) in &secrets {
            argv.extend([*flag, *path]);
        }
        let args = Cli::try_parse_from(argv).unwrap().args;
        let protect = protect(
            &args,
            Path::new("/sys/fs/cgroup"),
            Path::new("/sys/fs/bpf/g"),
        );
        for (flag, path) in secrets
            .into_iter()
            .chain(CORE_DUMPS.map(|d| ("core dumps", d)))
        {
            assert!(
                protect.no_access.contains(&PathBuf::from(path)),
                "{flag}: {:?}",
                protect.no_access
            );
        }
        // What the next start runs and with which flags (red team round 15).
        // What it trusts and whom it tells (red team round 33).
        for path in [
            "/p",
            "/c/config.yaml",
            crate::cli::config::DEFAULT_PATH,
            "/etc/systemd/system/governance.service.d",
            "/t/upstream-ca.pem",
            "/t/api.crt",
            "/t/discover-hosts",
            "/t/syslog-ca.pem",
        ] {
            assert!(
                protect.no_write.contains(&PathBuf::from(path)),
                "{path}: {:?}",
                protect.no_write
            );
        }
        // The cgroup v1 hierarchies of a hybrid layout (red team round 29), as this node
        // mounts them: with the policy, refused to write whatever the relaxations
        // (`allow_kernel_settings` too; `kernel::compile::denied_dirs`).
        for m in crate::agents::cgroup_v1_mounts() {
            assert!(
                protect.no_write.contains(&m),
                "{}: {:?}",
                m.display(),
                protect.no_write
            );
        }
    }

    #[test]
    fn swap_files_are_read_from_proc_swaps() {
        let swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                     /swap.img                               file\t\t2097148\t\t0\t\t-2\n\
                     /dev/sda3                               partition\t1048572\t\t0\t\t-3\n\
                     /var/swap\\040file                       file\t\t1024\t\t0\t\t-4\n";
        assert_eq!(
            swap_files(swaps),
            [PathBuf::from("/swap.img"), PathBuf::from("/var/swap file")]
        );
        assert!(swap_files("").is_empty());
    }

    /// Equal names are shared with the generation before; changed ones are not, and only the
    /// recent generations are kept.
    #[test]
    fn a_generation_with_the_same_names_shares_them() {
        let shared: SharedNames = Arc::default();
        install_names(&shared, 1, named("p/a"));
        install_names(&shared, 2, named("p/a"));
        install_names(&shared, 3, named("p/b"));
        let n = shared.read().unwrap();
        assert!(Arc::ptr_eq(&n[&1], &n[&2]));
        assert!(!Arc::ptr_eq(&n[&2], &n[&3]));
        assert_eq!(n[&3].rules[0].id, "p/b");
        drop(n);
        for g in 4..20 {
            install_names(&shared, g, named("p/b"));
        }
        let n = shared.read().unwrap();
        assert_eq!(n.len(), NAMED_GENERATIONS);
        assert_eq!(n.keys().next(), Some(&12));
    }
}
