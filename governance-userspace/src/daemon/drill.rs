//! Running a drill (see [`crate::drill`]): for each enforcing policy in turn, a canary agent
//! cgroup of the daemon's own (`<cgroup2>/governance-drill-<pid>-<n>`, never below a real
//! agent) is governed by that policy alone: its classes are compiled and written into the
//! active generation's slot beside the real agents' (whose tables are not touched), a process
//! forked from the daemon joins it and attempts each check's object, and the syscall's result
//! says whether it was refused. Whatever happens, [`CanaryGuard`] then kills the canary's
//! processes, removes its map entries and its cgroup.
//!
//! The drill runs inside the daemon's loop, so no reload changes the generation under it, and
//! a stop request is served once it has cleaned up (a drill's probes are bounded in time).
//!
//! Harm a broken enforcement could do: a connect probe that is not refused reaches the rule's
//! destination with a TCP handshake (or a UDP connect, which sends nothing), closed at once; a
//! Unix probe connects and closes. HTTP probes go to the proxy, which never forwards a
//! canary's request ([`Proxy::set_canary`]): they leave the node in no case.

use std::{
    ffi::CString,
    fs::File,
    io::Write as _,
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use super::{RunArgs, generation::SharedNames};
use crate::{
    agents::{self, AgentCgroup},
    drill::{self, CANARY_LABEL, Check, Drill, Planned, Probe},
    events::AgentInfo,
    kernel::{self, Enforcer},
    policy::{Access, PolicySet, UnixTarget},
    proxy::{self, Proxy},
};

/// Class numbers of the canary's classes start after this (the generation's own are numbered
/// from 1, one per agent and sandbox profile; class numbers stay below 2^16).
const CANARY_FIRST_CLASS: u32 = 0xc000;

/// How long one connect probe waits for an answer the kernel did not refuse.
const CONNECT_WAIT: Duration = Duration::from_secs(1);
/// How long an HTTP probe waits for the proxy's answer (it decides without going upstream).
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The most of an answer an HTTP probe reads (its head and a refusal's JSON body fit).
const ANSWER_MAX: usize = 4096;

/// What a drill needs from the daemon.
pub(super) struct DrillRun<'a> {
    pub args: &'a RunArgs,
    pub root: &'a Path,
    pub enforcer: &'a Mutex<Enforcer>,
    pub names: &'a SharedNames,
    pub set: &'a PolicySet,
    pub generation: u32,
    /// The live agents of the generation.
    pub agents: &'a [AgentCgroup],
    /// The HTTP policy proxy and where it listens (None: `--no-proxy`).
    pub proxy: Option<(&'a Arc<Proxy>, SocketAddr)>,
}

static DRILLS: AtomicU64 = AtomicU64::new(0);

/// Run a drill against every enforcing policy (or `only`).
pub(super) fn run(r: &DrillRun, only: Option<&str>) -> anyhow::Result<Drill> {
    let policies = drill::policies(r.set, only);
    if policies.is_empty() {
        anyhow::bail!(match only {
            Some(p) => format!(
                "no enforcing policy named `{p}` in generation {}",
                r.generation
            ),
            None => format!("generation {} has no enforcing policy", r.generation),
        });
    }
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let id = format!("{ms:x}-{}", DRILLS.fetch_add(1, Ordering::Relaxed));
    let mut out = Drill {
        id: id.clone(),
        ..Default::default()
    };
    for (n, p) in policies.into_iter().enumerate() {
        let planned = drill::plan(r.set, p);
        if planned.iter().all(|c| c.probe.is_none()) {
            out.checks.extend(planned.into_iter().map(|c| c.check));
            continue;
        }
        let dir = r
            .root
            .join(format!("governance-drill-{}-{n}", std::process::id()));
        match canary(r, &p.name, &dir, &planned) {
            Ok((checks, tables)) => {
                out.checks.extend(checks);
                out.canaries.push(format!("{}: {tables}", p.name));
            }
            Err(e) => {
                // The canary could not be set up: every check that would have run failed.
                let why = format!("{e:#}");
                tracing::error!("drill {id}: policy {}: {why}", p.name);
                out.checks.extend(planned.into_iter().map(|mut c| {
                    if c.probe.is_some() {
                        c.check.got = format!("not run: {why}");
                    }
                    c.check
                }));
            }
        }
    }
    Ok(out)
}

/// One policy's probes from a fresh canary at `dir`, and whose tables it had; the canary is
/// gone when this returns.
///
/// When a live agent is governed by this policy alone, the canary gets that agent's tables
/// (its AGENTS entry points to the agent's class): the drill then checks what decides for the
/// agent, as it is in the maps now, tampering included. Otherwise its tables are compiled for
/// it from the policy, as a reload would.
fn canary(
    r: &DrillRun,
    policy: &str,
    dir: &Path,
    planned: &[Planned],
) -> anyhow::Result<(Vec<Check>, String)> {
    let mut guard = CanaryGuard {
        enforcer: r.enforcer,
        dir: None,
        tables: None,
        child: None,
        scratch: Vec::new(),
        proxy: None,
        listeners: Vec::new(),
    };
    if let Err(e) = std::fs::create_dir(dir) {
        let held = crate::privilege::held();
        if e.kind() == std::io::ErrorKind::PermissionDenied
            && !held.iter().any(|c| c == "CAP_DAC_OVERRIDE")
        {
            anyhow::bail!(
                "creating the canary cgroup {}: {e}: the cgroup2 root is not writable by its \
                 owner here, and the daemon does not hold CAP_DAC_OVERRIDE after start (it keeps \
                 it unless --no-create-cgroups; see docs/operations.md, \"Drills\")",
                dir.display()
            );
        }
        return Err(e).with_context(|| format!("creating the canary cgroup {}", dir.display()));
    }
    guard.dir = Some(dir.to_owned());
    let cgroup_id = agents::cgroup_id(dir).context("the canary cgroup's id")?;
    let rel = format!(
        "/{}",
        dir.strip_prefix(r.root)
            .unwrap_or(dir)
            .to_string_lossy()
            .trim_start_matches('/')
    );
    let agent = AgentCgroup {
        index: 0,
        name: format!("{CANARY_LABEL} ({policy})"),
        rel: rel.clone(),
        label: Some(CANARY_LABEL.into()),
        path: dir.to_owned(),
        cgroup_id,
        pod: None,
    };
    name_canary(r, &agent, policy);
    if let Some((p, _)) = r.proxy {
        // The proxy decides the canary's requests by the policy under drill alone.
        let engine = crate::engine::Engine::new(drill::canary_set(r.set, policy), r.generation);
        p.set_canary(Some(proxy::Canary {
            cgroup_id,
            engine: Arc::new(engine),
        }));
        guard.proxy = Some(p);
    }
    let live = r.agents.iter().find(|a| {
        let governing: Vec<&str> = r
            .set
            .policies
            .iter()
            .filter(|p| {
                p.selector
                    .matches(&a.rel, a.label.as_deref(), a.pod.as_ref())
            })
            .map(|p| p.name.as_str())
            .collect();
        governing == [policy]
    });
    if let Some(a) = live {
        let mut e = lock(r.enforcer)?;
        if let Some(value) = e.agent_value(a.cgroup_id)? {
            guard.tables = Some(
                e.add_canary_agent(cgroup_id, value)
                    .context("writing the canary into the kernel maps")?,
            );
            drop(e);
            let checks = run_probes(r, policy, dir, planned, &mut guard)?;
            drop(guard);
            return Ok((checks, format!("the live tables of agent {}", a.name)));
        }
    }
    let set = drill::canary_set(r.set, policy);
    let protect = super::generation::protect(r.args, r.root, &lock(r.enforcer)?.pin_dir);
    let compiled = kernel::compile_from(
        &set,
        std::slice::from_ref(&agent),
        r.generation,
        &protect,
        CANARY_FIRST_CLASS,
    );
    if !compiled.errors.is_empty() {
        anyhow::bail!(
            "the canary's tables do not compile: {}",
            compiled.errors.join("; ")
        );
    }
    guard.tables = Some(
        lock(r.enforcer)?
            .add_canary(compiled)
            .context("writing the canary into the kernel maps")?,
    );
    let checks = run_probes(r, policy, dir, planned, &mut guard)?;
    drop(guard);
    Ok((
        checks,
        "tables compiled for the drill (no live agent is governed by this policy alone)".into(),
    ))
}

/// Run the probes of `planned` from the canary at `dir`; the checks with what each got. A
/// probe the kernel at hand cannot enforce, or whose object is not here, is skipped with why.
fn run_probes(
    r: &DrillRun,
    policy: &str,
    dir: &Path,
    planned: &[Planned],
    guard: &mut CanaryGuard,
) -> anyhow::Result<Vec<Check>> {
    let mut out: Vec<Check> = planned.iter().map(|p| p.check.clone()).collect();
    let mut prepared: Vec<(usize, Prepared)> = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        let Some(probe) = &p.probe else { continue };
        match prepare(r, policy, &p.check.rule, probe, guard) {
            Ok(prep) => {
                // The object as attempted: the file found, or the scratch file.
                match &prep {
                    Prepared::Exec { path } => out[i].object = path.to_string_lossy().into(),
                    Prepared::Open { path, flags } => {
                        let how = if flags & libc::O_CREAT != 0 {
                            "create"
                        } else if flags & libc::O_WRONLY != 0 {
                            "write"
                        } else {
                            "read"
                        };
                        out[i].object = format!("{how} {}", path.to_string_lossy());
                    }
                    Prepared::Sequence { arm, .. } => {
                        out[i].object = format!(
                            "read {}, then {}",
                            arm.to_string_lossy(),
                            out[i].object.rsplit_once(", then ").map_or("", |(_, t)| t)
                        );
                    }
                    Prepared::Connect { .. } | Prepared::Http { .. } => {}
                }
                prepared.push((i, prep));
            }
            Err(why) => out[i].skipped_why = Some(why),
        }
    }
    if prepared.is_empty() {
        return Ok(out);
    }
    let results = probe(dir, &prepared, guard)?;
    for ((i, prep), result) in prepared.iter().zip(results) {
        let c = &mut out[*i];
        (c.passed, c.got) = match (prep, result) {
            (_, Some(Got::Code(code))) if (SOCKET_FAILED - 999..=SOCKET_FAILED).contains(&code) => {
                c.skipped_why = Some(format!(
                    "no such socket here ({}): nothing was attempted",
                    std::io::Error::from_raw_os_error(SOCKET_FAILED - code)
                ));
                continue;
            }
            (
                Prepared::Connect {
                    to:
                        Dest {
                            family: libc::AF_UNIX,
                            ..
                        },
                    ..
                },
                Some(Got::Code(libc::ECONNREFUSED)),
            ) => {
                c.skipped_why = Some(
                    "nothing listens on that socket here: the hook decides only a connect to a \
                     listening socket; not probed, not passed"
                        .into(),
                );
                continue;
            }
            (Prepared::Sequence { .. }, Some(Got::Code(code))) if code <= ARM_FAILED => {
                c.skipped_why = Some(format!(
                    "the arming open was refused ({}): the rule cannot be armed here; not \
                     probed, not passed",
                    errno_name(ARM_FAILED - code)
                ));
                continue;
            }
            (Prepared::Sequence { .. }, Some(Got::Code(code))) if code <= REFUSED_UNARMED => {
                c.skipped_why = Some(format!(
                    "the connect was refused before the arming open too ({}): not a test of \
                     the rule; not probed, not passed",
                    errno_name(REFUSED_UNARMED - code)
                ));
                continue;
            }
            (Prepared::Http { .. }, Some(Got::Answer(answer))) => {
                let Some(Probe::Http(h)) = &planned[*i].probe else {
                    continue;
                };
                match drill::judge(h, &c.rule, &answer) {
                    Ok(got) => (true, got),
                    Err(got) => (false, got),
                }
            }
            (Prepared::Http { .. }, Some(Got::Code(code))) if code > NOT_JOINED => (
                false,
                match code {
                    TIMED_OUT => format!(
                        "no answer from the proxy within {} s",
                        ANSWER_WAIT.as_secs()
                    ),
                    c => format!(
                        "the request did not reach the proxy: {}",
                        std::io::Error::from_raw_os_error(c)
                    ),
                },
            ),
            (_, Some(Got::Code(code))) => verdict(prep, code),
            (_, Some(Got::Answer(_))) | (_, None) => {
                (false, "no result: the probe process ended early".into())
            }
        };
    }
    Ok(out)
}

/// Events of the canary's cgroup name it as the drill's canary.
fn name_canary(r: &DrillRun, agent: &AgentCgroup, policy: &str) {
    let mut names = r.names.write().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(&r.generation) {
        let mut n = (**n).clone();
        n.agents.insert(
            agent.cgroup_id,
            AgentInfo {
                name: agent.name.clone(),
                selector: format!("label={CANARY_LABEL} (drill of policy {policy})"),
                cgroup_id: agent.cgroup_id,
                cgroup: agent.rel.clone(),
                ..Default::default()
            }
            .into(),
        );
        n.refs
            .insert(agent.cgroup_id, drill::canary_ref(&agent.rel));
        names.insert(r.generation, Arc::new(n));
    }
}

fn lock(m: &Mutex<Enforcer>) -> anyhow::Result<std::sync::MutexGuard<'_, Enforcer>> {
    m.lock()
        .map_err(|_| anyhow::anyhow!("the kernel state lock is poisoned"))
}

/// A probe's result code: 0 not refused (connected, ran, opened), > 0 an errno, or one of
/// these; [`NOT_JOINED`] - errno when the process could not join the canary.
const TIMED_OUT: i32 = -1;
const KILLED_AFTER_EXEC: i32 = -2;
const NOT_CONFINED: i32 = -3;
/// The exec probe's child could not install its filter (see [`exec_probe`]).
const NOT_CONFINED_EXIT: i32 = 254;
const NOT_JOINED: i32 = -1000;
/// SOCKET_FAILED - errno: no socket of that family here (no IPv6, say): nothing was attempted.
const SOCKET_FAILED: i32 = -2000;
/// An HTTP probe's answer follows (a u32 length, then that many bytes).
const ANSWERED: i32 = -3000;
/// A sequence probe's first connect (before the arming open) was refused with EPERM/EACCES:
/// REFUSED_UNARMED - errno.
const REFUSED_UNARMED: i32 = -4000;
/// A sequence probe's arming open failed: ARM_FAILED - errno.
const ARM_FAILED: i32 = -5000;

/// What a probe reported.
enum Got {
    /// A result code (above).
    Code(i32),
    /// The proxy's answer to an HTTP probe, as read (at most [`ANSWER_MAX`] bytes).
    Answer(Vec<u8>),
}

fn verdict(p: &Prepared, code: i32) -> (bool, String) {
    match code {
        libc::EPERM | libc::EACCES => (true, format!("refused ({})", errno_name(code))),
        0 => (
            false,
            match p {
                Prepared::Connect { .. } => "not refused: connected".into(),
                Prepared::Exec { .. } => "not refused: the exec succeeded (the traced program \
                                           was stopped before its first instruction and killed)"
                    .into(),
                Prepared::Open { .. } => "not refused: opened".into(),
                Prepared::Http { .. } => "not refused".into(),
                Prepared::Sequence { .. } => "not refused: connected after the arming open".into(),
            },
        ),
        TIMED_OUT => (
            false,
            format!("not refused: no answer within {} s", CONNECT_WAIT.as_secs()),
        ),
        KILLED_AFTER_EXEC => (
            false,
            "not refused: the exec succeeded and the process was killed after it \
             (degraded exec enforcement)"
                .into(),
        ),
        NOT_CONFINED => (
            false,
            "the exec probe could not confine its child (seccomp refused): not run".into(),
        ),
        c if c <= NOT_JOINED => (
            false,
            format!(
                "the probe could not join the canary cgroup: {}",
                std::io::Error::from_raw_os_error(NOT_JOINED - c)
            ),
        ),
        c => (
            false,
            format!(
                "not refused by the policy: {} ({})",
                std::io::Error::from_raw_os_error(c),
                errno_name(c)
            ),
        ),
    }
}

fn errno_name(code: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(code))
}

/// A probe made concrete before the fork (the probe process allocates nothing).
enum Prepared {
    Connect {
        to: Dest,
        ty: libc::c_int,
    },
    Exec {
        path: CString,
    },
    Open {
        path: CString,
        flags: libc::c_int,
    },
    /// A TCP connect, an open of `arm` (read-only, nothing read) and the connect again.
    Sequence {
        arm: CString,
        to: Dest,
    },
    /// A connect to the proxy (as [`Prepared::Connect`], TCP), `request` written, the answer
    /// read.
    Http {
        to: Dest,
        request: Vec<u8>,
    },
}

/// Where a probe connects, as the probe process passes it to socket(2) and connect(2).
struct Dest {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
    family: libc::c_int,
}

impl Dest {
    fn inet(addr: &SocketAddr) -> Dest {
        let family = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        Dest::of(&nix::sys::socket::SockaddrStorage::from(*addr), family)
    }

    fn of(sa: &impl nix::sys::socket::SockaddrLike, family: libc::c_int) -> Dest {
        let len = sa.len();
        // SAFETY: `sa` holds `len` bytes of a socket address; storage is large enough for any.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr().cast::<u8>(),
                (&raw mut addr).cast::<u8>(),
                (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>()),
            );
        }
        Dest { addr, len, family }
    }
}

/// Whether the kernel at hand enforces `hook` (the BPF LSM program is attached): Err(why not).
fn enforced(r: &DrillRun, hook: &governance_common::programs::Program) -> Result<(), String> {
    let e = r
        .enforcer
        .lock()
        .map_err(|_| "the kernel state lock is poisoned")?;
    match e.hooks.iter().find(|(p, _)| p.name == hook.name) {
        Some((_, kernel::HookState::Attached)) => Ok(()),
        Some((_, kernel::HookState::Unavailable(why))) => Err(format!(
            "this kernel cannot enforce it: the {} hook is not attached ({why}); not probed, \
             not passed",
            hook.name
        )),
        None => Err(format!(
            "this kernel cannot enforce it: no {} hook; not probed, not passed",
            hook.name
        )),
    }
}

fn prepare(
    r: &DrillRun,
    policy: &str,
    rule: &str,
    p: &Probe,
    guard: &mut CanaryGuard,
) -> Result<Prepared, String> {
    let cpath = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| "a path with a NUL byte".to_owned())
    };
    match p {
        Probe::Connect { addr, udp } => {
            let ty = if *udp {
                libc::SOCK_DGRAM
            } else {
                libc::SOCK_STREAM
            };
            Ok(Prepared::Connect {
                to: Dest::inet(addr),
                ty,
            })
        }
        Probe::Http(h) => {
            let Some((_, at)) = r.proxy else {
                return Err(
                    "no HTTP policy proxy runs here (--no-proxy): HTTP requests are not \
                            decided; not probed, not passed"
                        .into(),
                );
            };
            Ok(Prepared::Http {
                to: Dest::inet(&at),
                request: h.wire(),
            })
        }
        Probe::Sequence { arm, addr } => {
            // Armed by the file hook.
            enforced(r, &governance_common::programs::FILE)?;
            let file = if arm.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(arm)
                    .map_err(|e| format!("{}: {e}: nothing to arm the rule with", arm.display()))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
                    .collect();
                files.sort();
                files.into_iter().next().ok_or_else(|| {
                    format!(
                        "no file directly in {} here: nothing to arm the rule with",
                        arm.display()
                    )
                })?
            } else if arm.is_file() {
                arm.clone()
            } else {
                return Err(format!(
                    "{} does not exist here: nothing to arm the rule with",
                    arm.display()
                ));
            };
            Ok(Prepared::Sequence {
                arm: cpath(&file)?,
                to: Dest::inet(addr),
            })
        }
        Probe::Unix(target) => {
            enforced(r, &governance_common::programs::UNIX_CONNECT)?;
            let addr = match target {
                UnixTarget::Path(p) => {
                    use std::os::unix::fs::FileTypeExt as _;
                    if !std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                        return Err(format!(
                            "no socket at {} here: nothing to connect to",
                            p.display()
                        ));
                    }
                    nix::sys::socket::UnixAddr::new(p.as_path())
                }
                UnixTarget::Abstract(name) => {
                    // Listen on it for the probe, unless something does.
                    use std::os::linux::net::SocketAddrExt as _;
                    let at = std::os::unix::net::SocketAddr::from_abstract_name(name)
                        .map_err(|e| format!("the abstract name: {e}"))?;
                    match std::os::unix::net::UnixListener::bind_addr(&at) {
                        Ok(l) => guard.listeners.push(l),
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                        Err(e) => {
                            return Err(format!("listening on {}: {e}", target.display()));
                        }
                    }
                    nix::sys::socket::UnixAddr::new_abstract(name)
                }
            }
            .map_err(|e| format!("{}: {e}", target.display()))?;
            Ok(Prepared::Connect {
                to: Dest::of(&addr, libc::AF_UNIX),
                ty: libc::SOCK_STREAM,
            })
        }
        Probe::Exec { paths } => {
            enforced(r, &governance_common::programs::EXEC)?;
            // Not a file an allowing exec rule names under another name (the kernel decides
            // by identity).
            let allowed: Vec<(u64, u64)> = drill::exec_allowed_files(r.set, policy)
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| (m.dev(), m.ino()))
                .collect();
            let path = first(paths, |p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && !allowed.contains(&(m.dev(), m.ino())))
            })
            .ok_or_else(|| {
                format!(
                    "{} does not exist here, or is a file an allowing rule names: nothing to run",
                    list(paths)
                )
            })?;
            Ok(Prepared::Exec { path: cpath(path)? })
        }
        Probe::ExecUnder { dir } => {
            enforced(r, &governance_common::programs::EXEC)?;
            let path = drill::exec_under(r.set, policy, rule, dir).ok_or_else(|| {
                format!(
                    "no executable file directly in {} that this rule decides: nothing to run",
                    dir.display()
                )
            })?;
            Ok(Prepared::Exec {
                path: cpath(&path)?,
            })
        }
        Probe::Open { paths, access } => {
            enforced(r, &governance_common::programs::FILE)?;
            let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
            let path = first(paths, exists)
                .ok_or_else(|| format!("{} does not exist here: nothing to open", list(paths)))?;
            match access {
                Access::Read => Ok(Prepared::Open {
                    path: cpath(path)?,
                    flags: libc::O_RDONLY,
                }),
                Access::Write | Access::Create => {
                    if !path.is_dir() {
                        return Err(format!(
                            "{} is not a directory here: no scratch file can be made in it",
                            path.display()
                        ));
                    }
                    let scratch = path.join(format!(".governance-drill-{}", std::process::id()));
                    guard.scratch.push(scratch.clone());
                    let flags = if *access == Access::Write {
                        // The daemon makes it; the canary opens it for writing, writing nothing.
                        File::create_new(&scratch).map_err(|e| {
                            format!("creating the scratch file {}: {e}", scratch.display())
                        })?;
                        libc::O_WRONLY
                    } else {
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL
                    };
                    Ok(Prepared::Open {
                        path: cpath(&scratch)?,
                        flags,
                    })
                }
                _ => Err("only read, write and create accesses are probed".into()),
            }
        }
    }
}

fn first(paths: &[PathBuf], f: impl Fn(&Path) -> bool) -> Option<&Path> {
    paths.iter().map(PathBuf::as_path).find(|p| f(p))
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fork a process that joins the canary cgroup at `dir` and runs `probes`; their result codes
/// in order (None: no result). The process is killed and reaped before this returns (and by
/// the guard if this fails).
fn probe(
    dir: &Path,
    probes: &[(usize, Prepared)],
    guard: &mut CanaryGuard,
) -> anyhow::Result<Vec<Option<Got>>> {
    let procs = File::options()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", dir.display()))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("a pipe")?;
    let wait_ms = CONNECT_WAIT.as_millis() as libc::c_int;
    // What the probes may take: a connect's wait each, and an answer's for HTTP.
    let budget = probes
        .iter()
        .map(|(_, p)| match p {
            Prepared::Http { .. } => CONNECT_WAIT + ANSWER_WAIT,
            Prepared::Sequence { .. } => 2 * CONNECT_WAIT,
            _ => CONNECT_WAIT,
        })
        .sum::<Duration>()
        + 2 * CONNECT_WAIT;
    // SAFETY: the child only makes system calls on memory prepared before the fork, then
    // _exits: no allocation, no lock, no destructor.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        unsafe { child(procs.as_raw_fd(), wr.as_raw_fd(), probes, wait_ms) }
    }
    guard.child = Some(pid);
    drop(wr);
    drop(procs);
    let results = read_results(rd, probes.len(), budget);
    guard.reap();
    Ok(results)
}

/// The probe process. Never returns.
unsafe fn child(procs: i32, out: i32, probes: &[(usize, Prepared)], wait_ms: libc::c_int) -> ! {
    unsafe {
        let errno = || *libc::__errno_location();
        let send = |i: usize, code: i32| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&(i as u32).to_ne_bytes());
            b[4..].copy_from_slice(&code.to_ne_bytes());
            libc::write(out, b.as_ptr().cast(), 8);
        };
        // "0": the writing process joins the cgroup.
        if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
            let e = errno();
            for i in 0..probes.len() {
                send(i, NOT_JOINED - e);
            }
            libc::_exit(2);
        }
        for (i, (_, p)) in probes.iter().enumerate() {
            let code = match p {
                Prepared::Connect { to, ty } => connect_probe(to, *ty, wait_ms),
                Prepared::Exec { path } => exec_probe(path),
                Prepared::Sequence { arm, to } => {
                    let before = connect_probe(to, libc::SOCK_STREAM, wait_ms);
                    if before == libc::EPERM || before == libc::EACCES {
                        REFUSED_UNARMED - before
                    } else {
                        let fd = libc::open(
                            arm.as_ptr(),
                            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
                        );
                        if fd < 0 {
                            ARM_FAILED - errno()
                        } else {
                            libc::close(fd);
                            connect_probe(to, libc::SOCK_STREAM, wait_ms)
                        }
                    }
                }
                Prepared::Http { to, request } => {
                    let mut buf = [0u8; 12 + ANSWER_MAX];
                    match http_probe(to, request, &mut buf[12..]) {
                        Ok(n) => {
                            buf[..4].copy_from_slice(&(i as u32).to_ne_bytes());
                            buf[4..8].copy_from_slice(&ANSWERED.to_ne_bytes());
                            buf[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
                            // One writer: the message is not interleaved with another.
                            let mut off = 0;
                            while off < 12 + n {
                                let w = libc::write(out, buf[off..].as_ptr().cast(), 12 + n - off);
                                if w <= 0 {
                                    break;
                                }
                                off += w as usize;
                            }
                            continue;
                        }
                        Err(code) => code,
                    }
                }
                Prepared::Open { path, flags } => {
                    let fd = libc::open(
                        path.as_ptr(),
                        flags | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
                        0o600,
                    );
                    if fd < 0 {
                        errno()
                    } else {
                        libc::close(fd);
                        if flags & libc::O_CREAT != 0 {
                            libc::unlink(path.as_ptr());
                        }
                        0
                    }
                }
            };
            send(i, code);
        }
        libc::_exit(0)
    }
}

/// In the probe process: a non-blocking connect, waiting [`CONNECT_WAIT`] for an answer.
unsafe fn connect_probe(to: &Dest, ty: libc::c_int, wait_ms: libc::c_int) -> i32 {
    unsafe {
        let errno = || *libc::__errno_location();
        let fd = libc::socket(to.family, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return SOCKET_FAILED - errno();
        }
        let r = libc::connect(fd, (&raw const to.addr).cast(), to.len);
        let code = if r == 0 {
            0
        } else if errno() == libc::EINPROGRESS {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, wait_ms) <= 0 {
                TIMED_OUT
            } else {
                let mut err: libc::c_int = 0;
                let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&raw mut err).cast(),
                    &mut l,
                );
                err
            }
        } else {
            errno()
        };
        libc::close(fd);
        code
    }
}

/// In the probe process: connect to the proxy, send `request`, read its answer into `buf`
/// until it closes (the request says `Connection: close`), `buf` is full or
/// [`ANSWER_WAIT`] passes: Ok(bytes read), or Err(result code).
unsafe fn http_probe(to: &Dest, request: &[u8], buf: &mut [u8]) -> Result<usize, i32> {
    unsafe {
        let errno = || *libc::__errno_location();
        let fd = libc::socket(to.family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(SOCKET_FAILED - errno());
        }
        // Bounds connect, each write and each read.
        let tv = libc::timeval {
            tv_sec: ANSWER_WAIT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let fail = |code: i32| {
            libc::close(fd);
            Err(code)
        };
        if libc::connect(fd, (&raw const to.addr).cast(), to.len) != 0 {
            return fail(errno());
        }
        let mut off = 0;
        while off < request.len() {
            let n = libc::write(fd, request[off..].as_ptr().cast(), request.len() - off);
            if n <= 0 {
                return fail(errno());
            }
            off += n as usize;
        }
        let mut got = 0;
        while got < buf.len() {
            let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got);
            if n < 0 && got == 0 {
                let e = errno();
                return fail(if e == libc::EAGAIN { TIMED_OUT } else { e });
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        libc::close(fd);
        Ok(got)
    }
}

/// The seccomp architecture of this build (`AUDIT_ARCH_*`): a system call of another ABI is
/// refused by [`exec_probe`]'s filter.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// In the probe process: exec `path` in a child whose every system call after the exec kills
/// it. The child installs a seccomp filter that lets through only `execve`, a `write` to the
/// report pipe (closed by the exec) and the exits: a refused exec returns its errno, which the
/// child writes to the pipe; an exec that was not refused starts the program, whose first
/// system call (the loader's, before any of the program's code) kills it with `SIGSYS`. The
/// drill used to trace the child (`PTRACE_TRACEME`), which agents under an exec allowlist may
/// not do (red team round 16).
unsafe fn exec_probe(path: &CString) -> i32 {
    unsafe {
        let errno = || *libc::__errno_location();
        let mut report = [0i32; 2];
        if libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return errno();
        }
        let [rd, wr] = report;
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let load = |offset: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
        let ret = |k: u32| stmt(libc::BPF_RET | libc::BPF_K, k);
        // seccomp_data: nr at 0, arch at 4, args from 16 (the first argument's low word on a
        // little-endian machine).
        // (Jumps count the instructions skipped: to KILL at 10, to ALLOW at 11.)
        let filter = [
            /* 0 */ load(4),
            /* 1 */ jeq(AUDIT_ARCH, 1, 0),
            /* 2 */ ret(libc::SECCOMP_RET_KILL_PROCESS),
            /* 3 */ load(0),
            /* 4 */ jeq(libc::SYS_execve as u32, 6, 0),
            /* 5 */ jeq(libc::SYS_exit_group as u32, 5, 0),
            /* 6 */ jeq(libc::SYS_exit as u32, 4, 0),
            /* 7 */ jeq(libc::SYS_write as u32, 0, 2),
            /* 8 */ load(16),
            /* 9 */ jeq(wr as u32, 1, 0),
            /* 10 */ ret(libc::SECCOMP_RET_KILL_PROCESS),
            /* 11 */ ret(libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        let pid = libc::fork();
        if pid < 0 {
            let e = errno();
            libc::close(rd);
            libc::close(wr);
            return e;
        }
        if pid == 0 {
            libc::close(rd);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                libc::_exit(NOT_CONFINED_EXIT);
            }
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null::<libc::c_char>()];
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = errno();
            libc::write(wr, (&raw const e).cast(), 4);
            libc::_exit(0);
        }
        libc::close(wr);
        let mut status = 0;
        let reaped = libc::waitpid(pid, &mut status, 0) == pid;
        let mut refused = 0i32;
        let got = libc::read(rd, (&raw mut refused).cast(), 4);
        libc::close(rd);
        if !reaped {
            libc::kill(pid, libc::SIGKILL);
            return NOT_CONFINED;
        }
        if got == 4 {
            return refused;
        }
        // Not refused: killed at its first system call, or a program that made none but its
        // exit. Killed otherwise: by the degraded exec enforcement.
        if libc::WIFEXITED(status) {
            if libc::WEXITSTATUS(status) == NOT_CONFINED_EXIT {
                NOT_CONFINED
            } else {
                0
            }
        } else if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS {
            0
        } else {
            KILLED_AFTER_EXEC
        }
    }
}

/// Read (index, code) pairs, and the answers that follow [`ANSWERED`], until the probe process
/// closes the pipe, or `budget` (what its probes may take) has passed.
fn read_results(rd: OwnedFd, n: usize, budget: Duration) -> Vec<Option<Got>> {
    let mut out: Vec<Option<Got>> = (0..n).map(|_| None).collect();
    let deadline = Instant::now() + budget;
    let mut file = File::from(rd);
    let mut buf = [0u8; 8];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if left.is_zero() || unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) } <= 0 {
            break;
        }
        match std::io::Read::read_exact(&mut file, &mut buf) {
            Ok(()) => {
                let i = u32::from_ne_bytes(buf[..4].try_into().unwrap_or_default()) as usize;
                let code = i32::from_ne_bytes(buf[4..].try_into().unwrap_or_default());
                let got = if code == ANSWERED {
                    let mut len = [0u8; 4];
                    if std::io::Read::read_exact(&mut file, &mut len).is_err() {
                        break;
                    }
                    let len = (u32::from_ne_bytes(len) as usize).min(ANSWER_MAX);
                    let mut answer = vec![0u8; len];
                    if std::io::Read::read_exact(&mut file, &mut answer).is_err() {
                        break;
                    }
                    Got::Answer(answer)
                } else {
                    Got::Code(code)
                };
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(got);
                }
            }
            Err(_) => break,
        }
    }
    out
}

/// Removes the canary, whatever happened: its process (killed and reaped), its map entries,
/// its cgroup (after `cgroup.kill`, for anything it left running).
struct CanaryGuard<'a> {
    enforcer: &'a Mutex<Enforcer>,
    dir: Option<PathBuf>,
    tables: Option<kernel::Canary>,
    child: Option<libc::pid_t>,
    /// Scratch files of write and create probes.
    scratch: Vec<PathBuf>,
    /// The proxy, told of the canary (told it is gone when the guard drops).
    proxy: Option<&'a Arc<Proxy>>,
    /// Abstract Unix sockets listened on for the probes (closed when the guard drops).
    listeners: Vec<std::os::unix::net::UnixListener>,
}

impl CanaryGuard<'_> {
    fn reap(&mut self) {
        if let Some(pid) = self.child.take() {
            // SAFETY: our own child, not yet reaped: its pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

impl Drop for CanaryGuard<'_> {
    fn drop(&mut self) {
        self.reap();
        for f in self.scratch.drain(..) {
            let _ = std::fs::remove_file(f);
        }
        self.listeners.clear();
        if let Some(p) = self.proxy.take() {
            p.set_canary(None);
        }
        if let Some(dir) = &self.dir
            && let Ok(mut f) = File::options().write(true).open(dir.join("cgroup.kill"))
        {
            let _ = f.write_all(b"1");
        }
        if let Some(t) = self.tables.take() {
            match self.enforcer.lock() {
                Ok(mut e) => {
                    if let Err(err) = e.remove_canary(&t) {
                        tracing::error!("drill: removing the canary's map entries: {err}");
                    }
                    if e.agent_cgroups()
                        .is_ok_and(|ids| ids.contains(&t.cgroup_id))
                    {
                        tracing::error!("drill: the canary's agent entry is still in the maps");
                    }
                }
                Err(_) => tracing::error!("drill: the kernel state lock is poisoned"),
            }
        }
        if let Some(dir) = self.dir.take() {
            // A killed process leaves the cgroup as it is reaped: a moment after cgroup.kill.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        tracing::error!("drill: removing the canary cgroup {}: {e}", dir.display());
                        break;
                    }
                }
            }
        }
    }
}

impl super::serve::Daemon<'_> {
    /// Run a drill now (against `only`, or every enforcing policy) and record it: a
    /// `drill.passed` or `drill.failed` lifecycle record with the checks, and the metrics.
    pub(super) fn drill(&mut self, only: Option<&str>) -> Result<Drill, String> {
        let engine = self.engine.load();
        let r = DrillRun {
            args: self.args,
            root: self.root,
            enforcer: &self.enforcer,
            names: &self.names,
            set: engine.policies(),
            generation: self.current,
            agents: &self.agents_now,
            proxy: self.proxy.as_ref().map(|(p, at)| (p, SocketAddr::V4(*at))),
        };
        let d = run(&r, only).map_err(|e| format!("{e:#}"))?;
        let ok = d.ok();
        let message = d.summary();
        if ok {
            crate::say!("{message}");
        } else {
            tracing::error!("{message}");
            // The tables may not hold what was written (a reload writes only what differs
            // from what it recorded): the next reload reads them back and mends them.
            match self.enforcer.lock() {
                Ok(mut e) => e.forget_slots(),
                Err(_) => tracing::error!("drill: the kernel state lock is poisoned"),
            }
        }
        let mut rec =
            super::serve::lifecycle(if ok { "drill.passed" } else { "drill.failed" }, message);
        rec.generation = self.current;
        for (k, v) in [
            ("checks", d.checks.len()),
            ("passed", d.passed()),
            ("failed", d.failed()),
            ("skipped", d.skipped()),
        ] {
            rec.counts.insert(k.into(), v as u64);
        }
        rec.drill = Some(Box::new(d.clone()));
        self.publisher.publish(rec);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.metrics.set_drill(ok, now);
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exec probe tells an exec that was refused (its errno) from one that was not, and the
    /// program it started never runs a system call of its own: a program that would write a
    /// file is killed first.
    #[test]
    fn the_exec_probe_stops_a_program_at_its_first_system_call() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let script = dir.path().join("writes");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho ran > {}\n", marker.display()),
        )
        .unwrap();
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, "data").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let probe = |p: &Path| {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: the probe forks a child that makes only system calls.
            unsafe { exec_probe(&c) }
        };
        assert_eq!(probe(Path::new("/bin/true")), 0, "not refused");
        assert_eq!(probe(&script), 0, "not refused");
        assert!(!marker.exists(), "the started program ran no system call");
        assert_eq!(probe(&dir.path().join("missing")), libc::ENOENT);
        assert_eq!(probe(&plain), libc::EACCES);
    }
}
