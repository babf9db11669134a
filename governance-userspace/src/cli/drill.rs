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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::{Check, Drill};

    #[test]
    fn the_text_says_pass_fail_or_skip_per_check() {
        let check =
            |rule: &str, kind: &str, object: &str, got: &str, passed, why: Option<&str>| Check {
                policy: "p".into(),
                rule: rule.into(),
                kind: kind.into(),
                object: object.into(),
                expected: "block".into(),
                got: got.into(),
                passed,
                skipped_why: why.map(Into::into),
            };
        let drill = Drill {
            id: "d-0".into(),
            checks: vec![
                check(
                    "p/no-net",
                    "network",
                    "tcp 10.20.0.0:22",
                    "refused (EPERM)",
                    true,
                    None,
                ),
                check(
                    "default",
                    "exec",
                    "/usr/bin/curl",
                    "not refused: the exec succeeded",
                    false,
                    None,
                ),
                check(
                    "p/api",
                    "http",
                    "GET api.example/**",
                    "",
                    false,
                    Some("not probed"),
                ),
            ],
            canaries: Vec::new(),
        };
        let r = wire::DrillResult {
            passed: drill.ok(),
            summary: drill.summary(),
            drill,
        };
        assert_eq!(
            text(&r),
            "drill d-0 FAILED: 3 checks, 1 passed, 1 failed, 1 skipped; failed: default exec /usr/bin/curl: got not refused: the exec succeeded\n\
             \x20 PASS  p/no-net                         network  tcp 10.20.0.0:22             refused (EPERM)\n\
             \x20 FAIL  default                          exec     /usr/bin/curl                not refused: the exec succeeded\n\
             \x20 SKIP  p/api                            http     GET api.example/**           not probed\n"
        );
    }
}
