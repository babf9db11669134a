//! `governance drill`: ask the daemon to run a drill and show its checks.

use std::process::ExitCode;

use crate::{api::wire, client, client::ApiArgs};

pub(super) async fn drill(
    api: &ApiArgs,
    policy: Option<String>,
    output: &str,
) -> anyhow::Result<ExitCode> {
    let body = serde_json::to_value(wire::DrillAsk { policy })?;
    let v = client::call(api, "POST", "/v1/drill", Some(body)).await?;
    let r: wire::DrillResult = serde_json::from_value(v.clone())?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", text(&r));
    }
    Ok(if r.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The summary line, then one line per check: PASS, FAIL or SKIP, rule, kind, object, and
/// what happened (or why it was skipped).
pub(crate) fn text(r: &wire::DrillResult) -> String {
    let mut out = format!("{}\n", r.summary);
    for c in &r.drill.checks {
        let (mark, what) = match &c.skipped_why {
            Some(why) => ("SKIP", why.as_str()),
            None if c.passed => ("PASS", c.got.as_str()),
            None => ("FAIL", c.got.as_str()),
        };
        out.push_str(&format!(
            "  {mark}  {:<32} {:<8} {:<28} {what}\n",
            c.rule, c.kind, c.object
        ));
    }
    out
}
