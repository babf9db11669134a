//! The report as Markdown (for a ticket or a wiki page): the same sections as the HTML, with
//! tables instead of charts. Text from records is escaped so that it cannot break a table or
//! smuggle HTML into a renderer ([`cell`]).

use std::fmt::Write as _;

use super::*;

/// Text for a Markdown table cell: no line breaks, `|` and the characters Markdown or HTML
/// would interpret escaped.
pub fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '#' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn decisions_md(m: &mut String, d: &Decisions) {
    if d.by_verdict.is_empty() {
        m.push_str("No decisions in this period.\n\n");
        return;
    }
    m.push_str("| Verdict | Decisions |\n|---|---:|\n");
    for (v, n) in &d.by_verdict {
        let note = if v == "allow" && d.counted > 0 {
            format!(" (of which {} counted by the kernel)", d.counted)
        } else {
            String::new()
        };
        let _ = writeln!(m, "| {} | {n}{note} |", cell(v));
    }
    m.push('\n');
    if d.top_refused.is_empty() {
        m.push_str("No refused actions in this period.\n\n");
    } else {
        m.push_str("| Refused by rule | Refused |\n|---|---:|\n");
        for r in &d.top_refused {
            let _ = writeln!(m, "| {} | {} |", cell(&r.rule), r.refused);
        }
        m.push('\n');
    }
}

/// Render the report.
pub fn render(r: &Report) -> String {
    let mut m = String::new();
    let v = &r.verification;
    let _ = write!(
        m,
        "# Governance compliance report\n\n\
         What the tamper-evident audit log of this node says about the period: decisions, \
         escalations, policy generations, drills, and whether the log is intact.\n\n\
         | | |\n|---|---|\n| Node | {} |\n| Period | {} to {} |\n| Generated | {} |\n\
         | Tool | governance {} (commit {}) |\n| Audit log | {} |\n| Records in the period | {} |\n",
        cell(&r.node),
        cell(&super::html::short_time(&r.period.since)),
        cell(&super::html::short_time(&r.period.until)),
        cell(&super::html::short_time(&r.generated_at)),
        cell(&r.tool.version),
        cell(&r.tool.commit),
        cell(&r.audit_dir),
        r.records
    );
    if let Some(a) = &r.agent_filter {
        let _ = writeln!(
            m,
            "| Agent | {} (its decisions and escalations only) |",
            cell(a)
        );
    }
    m.push_str("\n## Audit log verification\n\nThe hash chain, sequence numbers, seals and retention checkpoint of every file, re-checked.\n\n");
    if v.passed {
        let _ = writeln!(
            m,
            "**PASSED**: {} records in {} files, {} seals, {} crash recoveries; seq {} to {}; \
             last hash {}; {} gap(s), {} records lost; {} records after the last seal.\n",
            v.records,
            v.files,
            v.seals,
            v.recoveries,
            v.first_seq,
            v.last_seq.map_or("(none)".into(), |s| s.to_string()),
            cell(&v.last_hash),
            v.gaps.len(),
            v.lost_records,
            v.unsealed_records
        );
    } else {
        let _ = writeln!(
            m,
            "**FAILED**: the audit log does not verify: {}\n",
            cell(v.problem.as_deref().unwrap_or("unknown"))
        );
    }
    let keys: Vec<String> = v.seal_keys.iter().map(|k| cell(k)).collect();
    let _ = writeln!(
        m,
        "Seal keys: {}.\n",
        if keys.is_empty() {
            "none in the files read".into()
        } else {
            keys.join(", ")
        }
    );
    let _ = writeln!(
        m,
        "## Decisions by verdict\n\nPer {}; the kernel's counted allowed actions are in allow.\n",
        cell(&r.period.bucket)
    );
    decisions_md(&mut m, &r.decisions);
    m.push_str("## Per agent\n\n");
    if r.agents.is_empty() {
        m.push_str("No agent had decisions in this period.\n\n");
    }
    for a in &r.agents {
        let _ = writeln!(m, "### Agent {}\n", cell(&a.agent));
        decisions_md(&mut m, &a.decisions);
    }
    m.push_str(
        "## Escalations\n\nWho approved or denied each escalated action, and how long it took.\n\n",
    );
    let e = &r.escalations;
    if e.total == 0 && e.not_listed == 0 {
        m.push_str("No escalations in this period.\n\n");
    } else {
        m.push_str("| Requested | Agent | Action | Rule | State | By | Decided | Seconds |\n|---|---|---|---|---|---|---|---:|\n");
        for x in &e.listed {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&super::html::short_time(&x.requested)),
                cell(&x.agent),
                cell(&x.object),
                cell(&x.rule),
                cell(&x.state),
                cell(&x.by),
                cell(&super::html::short_time(&x.decided)),
                x.seconds.map_or(String::new(), |s| format!("{s:.1}"))
            );
        }
        m.push('\n');
    }
    m.push_str("## Policy generations\n\nWhich policy (by content hash) enforced when.\n\n");
    let g = &r.generations;
    if g.at_start.is_none() && g.changes.is_empty() {
        m.push_str("No policy generation is recorded for this period.\n\n");
    } else {
        m.push_str("| Generation | From | Until | SHA-256 | Policy |\n|---:|---|---|---|---|\n");
        for x in g.at_start.iter().chain(&g.changes) {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} |",
                x.generation,
                cell(&super::html::short_time(&x.from)),
                if x.until.is_empty() {
                    "end of period".into()
                } else {
                    cell(&super::html::short_time(&x.until))
                },
                cell(&x.sha256),
                cell(&x.policy)
            );
        }
        m.push('\n');
    }
    m.push_str("## Drills\n\n");
    let d = &r.drills;
    if d.total == 0 {
        m.push_str("No drills in this period.\n");
    } else {
        let _ = writeln!(
            m,
            "{} drills: {} passed, {} failed.\n",
            d.total, d.passed, d.failed
        );
        m.push_str("| Time | Result | Checks | Passed | Failed | Skipped | Message |\n|---|---|---:|---:|---:|---:|---|\n");
        for x in &d.listed {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&super::html::short_time(&x.time)),
                if x.passed { "passed" } else { "**FAILED**" },
                x.checks,
                x.checks_passed,
                x.checks_failed,
                x.checks_skipped,
                cell(&x.message)
            );
        }
    }
    m
}
