//! `governance discover`: the candidate agents the daemon found, by group, with a selector to
//! paste.

use std::{io::Write as _, process::ExitCode};

use crate::{
    api::wire,
    client::{self, ApiArgs},
};

pub async fn run(api: &ApiArgs, output: &str) -> anyhow::Result<ExitCode> {
    let v = client::call(api, "GET", "/v1/discover", None).await?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let d: wire::Discover = serde_json::from_value(v)?;
    let mut out = std::io::stdout().lock();
    if !d.enabled {
        writeln!(out, "discovery is off (run --no-discover)")?;
        return Ok(ExitCode::SUCCESS);
    }
    if d.groups.is_empty() {
        writeln!(out, "no candidate agents outside the labelled ones")?;
    }
    for g in &d.groups {
        writeln!(out, "{} {}", g.by, g.key)?;
        for e in &g.evidence {
            let who = if e.pid != 0 {
                format!("pid {} {}", e.pid, e.comm)
            } else {
                format!("cgroup {}", e.cgroup)
            };
            writeln!(
                out,
                "  {who:<24} {:<9} {} (matches {}; {}x, last {})",
                e.what, e.value, e.matched, e.count, e.last_seen
            )?;
        }
        writeln!(out, "  suggested selector:")?;
        for line in g.suggested_selector.lines() {
            writeln!(out, "    {line}")?;
        }
    }
    if let Some(k) = d.kernel
        && (k.dropped != 0 || k.limited != 0)
    {
        writeln!(
            out,
            "(kernel: {} reported, {} dropped with the ring full, {} over the rate limit)",
            k.reported, k.dropped, k.limited
        )?;
    }
    if d.errors != 0 {
        writeln!(out, "({} discovery errors; see the daemon's log)", d.errors)?;
    }
    Ok(ExitCode::SUCCESS)
}
