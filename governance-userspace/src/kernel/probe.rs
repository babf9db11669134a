//! The probe report: what this kernel can enforce, and the exit status when it cannot.
//!
//! `governance probe` prints it on stdout; `governance run` on stderr before it enforces.

use governance_common::programs::Attach;

use super::{Enforcer, Probe};

/// Exit status when the kernel cannot enforce what was asked (and no degraded mode was accepted).
pub const EXIT_CANNOT_ENFORCE: u8 = 3;

/// What the kernel can enforce, on stderr (the daemon's stdout is its event stream).
pub fn report(probe: &Probe, enforcer: &Enforcer) -> bool {
    if !crate::logging::log_json() {
        return report_to(&mut std::io::stderr().lock(), probe, enforcer);
    }
    // `--log-format json`: one log event a line.
    let mut text = Vec::new();
    let complete = report_to(&mut text, probe, enforcer);
    for line in String::from_utf8_lossy(&text).lines() {
        if !line.trim().is_empty() {
            tracing::info!("{}", line.trim_end());
        }
    }
    complete
}

/// Write the probe report; true if every required hook is attached. When LSM hooks are
/// missing, says why (test loads of minimal programs tell a missing `bpf` LSM from a host
/// that refuses BPF LSM programs).
pub fn report_to(out: &mut dyn std::io::Write, probe: &Probe, enforcer: &Enforcer) -> bool {
    let yes_no = |b: bool| if b { "yes" } else { "NO" };
    let lsm_missing = enforcer.hooks.iter().any(|(p, h)| {
        matches!(p.attach, Attach::Lsm(_)) && !matches!(h, super::HookState::Attached)
    });
    let facts = lsm_missing.then(|| probe.lsm_facts());
    let refused = facts
        .as_ref()
        .is_some_and(|f| matches!(f.lsm, super::TestLoad::Refused { .. }));
    let _ = writeln!(out, "governance: what this kernel can enforce");
    let _ = writeln!(out, "  kernel                    {}", probe.kernel);
    let _ = writeln!(out, "  BTF (/sys/kernel/btf)     {}", yes_no(probe.btf));
    let _ = writeln!(
        out,
        "  BPF LSM active            {} ({}){}",
        yes_no(probe.bpf_lsm_active()),
        probe.lsm_list.as_deref().unwrap_or("securityfs unreadable"),
        if probe.bpf_lsm_active() && refused {
            ", but LSM programs are REFUSED"
        } else {
            ""
        }
    );
    let lockdown = match probe.lockdown.as_deref() {
        Some(raw) => super::lockdown_mode(raw).unwrap_or(raw),
        None => "unknown (unreadable)",
    };
    let _ = writeln!(out, "  lockdown                  {lockdown}");
    let caps = match probe.caps {
        Some(caps) => caps.to_string(),
        None => "unknown (/proc/self/status unreadable)".to_owned(),
    };
    let _ = writeln!(out, "  capabilities              {caps}");
    let _ = writeln!(
        out,
        "  cgroup v2                 {}",
        probe
            .cgroup2
            .as_deref()
            .map_or("NOT MOUNTED".into(), |p| p.display().to_string())
    );
    for (program, state) in &enforcer.hooks {
        let _ = writeln!(
            out,
            "  {:<34} {:<28} {state}",
            program.what,
            attach_point(program.attach)
        );
    }
    if let Some(why) = facts.as_ref().and_then(super::diagnose) {
        let _ = writeln!(out, "  why LSM hooks are missing: {why}");
    }
    enforcer.fully_attached()
}

pub fn attach_point(a: Attach) -> String {
    match a {
        Attach::Lsm(h) => format!("lsm/{h}"),
        Attach::SockAddr(h) => format!("cgroup/{h}"),
        Attach::RawTracepoint(t) => format!("raw_tp/{t}"),
        Attach::SockOps => "cgroup/sock_ops".into(),
        Attach::SkbEgress => "cgroup_skb/egress".into(),
        Attach::SockCreate => "cgroup/sock_create".into(),
        Attach::SetSockopt => "cgroup/setsockopt".into(),
    }
}
