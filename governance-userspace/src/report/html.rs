//! The report as one self-contained HTML page: inline CSS, inline SVG charts, no script, no
//! external resource. Everything that comes from records is escaped ([`esc`]).

use std::fmt::Write as _;

use super::*;

/// Escape text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A record's time for people: `2026-11-30 13:07:42 UTC` (the JSON keeps the nanoseconds);
/// anything else as it is.
pub fn short_time(t: &str) -> String {
    match (t.get(..10), t.get(10..11), t.get(11..19), t.ends_with('Z')) {
        (Some(day), Some("T"), Some(time), true) => format!("{day} {time} UTC"),
        _ => t.to_owned(),
    }
}

/// [`short_time`], escaped.
pub fn when(t: &str) -> String {
    esc(&short_time(t))
}

/// The fill colour of each verdict in the charts.
pub fn colour(verdict: &str) -> &'static str {
    match verdict {
        "allow" => "#43a047",
        "block" => "#d32f2f",
        "escalate" => "#f57c00",
        "throttle" => "#1e88e5",
        "sandbox" => "#8e24aa",
        "granted" => "#00897b",
        "kill" => "#212121",
        _ => "#9e9e9e",
    }
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
margin:2em auto;max-width:1100px;color:#222;line-height:1.45;padding:0 1em}\
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;\
margin-top:2em}h3{margin-top:1.5em}p.explain{color:#555;margin-top:0}\
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em;\
text-align:left;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;\
font-variant-numeric:tabular-nums}code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;\
font-size:.9em;overflow-wrap:anywhere}.hash{word-break:break-all}.status{padding:1em 1.2em;border-radius:6px;font-size:1.15em;\
margin:1em 0}.passed{background:#e8f5e9;border:2px solid #43a047}.failed{background:#ffebee;\
border:2px solid #d32f2f}.status strong{font-size:1.3em}.none{font-style:italic;color:#444;\
background:#fff8e1;padding:.5em .8em;border-left:4px solid #f9a825}\
svg.chart{max-width:100%;height:auto;border:1px solid #eee;background:#fff}\
.legend span{display:inline-block;margin-right:1.2em}.swatch{display:inline-block;width:.9em;\
height:.9em;margin-right:.3em;vertical-align:middle}footer{margin-top:3em;color:#666;\
font-size:.9em}";

/// Render the report.
pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let title = format!(
        "Governance compliance report: {} ({} to {})",
        r.node,
        short_time(&r.period.since),
        short_time(&r.period.until)
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc("Governance compliance report")
    );
    header(&mut h, r);
    verification(&mut h, &r.verification);
    decisions(&mut h, r);
    refused(&mut h, r);
    agents(&mut h, r);
    escalations(&mut h, &r.escalations);
    generations(&mut h, &r.generations);
    drills(&mut h, &r.drills);
    let _ = write!(
        h,
        "<footer><p>Made by <code>governance report</code> {} (commit {}) from the audit log in \
         <code>{}</code>, read directly from its files. To check it yourself: \
         <code>governance audit verify {}</code>; the same data as JSON: \
         <code>governance report --format json</code>.</p></footer>\n</body>\n</html>\n",
        esc(&r.tool.version),
        esc(&r.tool.commit),
        esc(&r.audit_dir),
        esc(&r.audit_dir)
    );
    h
}

fn header(h: &mut String, r: &Report) {
    let _ = write!(
        h,
        "<section id=\"summary\">\n<p class=\"explain\">What the tamper-evident audit log of this \
         node says about the period: the decisions the kernel and the HTTP proxy made for AI \
         agents, the escalations people decided, the policies that were enforcing, the drills \
         that tested them, and whether the log itself is intact.</p>\n<table>\n\
         <tr><th>Node</th><td>{}</td></tr>\n<tr><th>Period</th><td>{} to {} (charts by {})</td></tr>\n\
         <tr><th>Generated</th><td>{}</td></tr>\n\
         <tr><th>Tool</th><td>governance {} (commit {}, eBPF {})</td></tr>\n\
         <tr><th>Audit log</th><td><code>{}</code></td></tr>\n",
        esc(&r.node),
        when(&r.period.since),
        when(&r.period.until),
        esc(&r.period.bucket),
        when(&r.generated_at),
        esc(&r.tool.version),
        esc(&r.tool.commit),
        esc(&r.tool.ebpf),
        esc(&r.audit_dir),
    );
    if let Some(a) = &r.agent_filter {
        let _ = writeln!(
            h,
            "<tr><th>Agent</th><td>{} (decisions and escalations of this agent only)</td></tr>",
            esc(a)
        );
    }
    let _ = write!(
        h,
        "<tr><th>Records in the period</th><td>{}</td></tr>\n</table>\n</section>\n",
        r.records
    );
}

fn verification(h: &mut String, v: &Verification) {
    h.push_str(
        "<section id=\"verification\">\n<h2>Audit log verification</h2>\n<p class=\"explain\">\
         Every record of the log is bound to the one before it by a SHA-256 hash chain, and \
         each closed file is sealed with an Ed25519 signature. The verifier re-reads every \
         file and checks every hash, sequence number, seal and the retention checkpoint: a \
         changed, removed or reordered record makes it fail and says where.</p>\n",
    );
    if v.passed {
        let _ = writeln!(
            h,
            "<div class=\"status passed\" id=\"verification-status\"><strong>PASSED</strong>: \
             {} records in {} files, {} seals, {} crash recoveries.</div>",
            v.records, v.files, v.seals, v.recoveries
        );
    } else {
        let _ = writeln!(
            h,
            "<div class=\"status failed\" id=\"verification-status\"><strong>FAILED</strong>: \
             the audit log does not verify. The first problem found: <code>{}</code>. \
             What this report shows from the log cannot be relied upon past that place.</div>",
            esc(v.problem.as_deref().unwrap_or("unknown"))
        );
    }
    h.push_str("<table>\n");
    let row = |h: &mut String, k: &str, v: String| {
        let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), v);
    };
    if v.passed {
        row(h, "Files checked", v.files.to_string());
        row(h, "Records checked", v.records.to_string());
        row(
            h,
            "Sequence numbers",
            format!(
                "{} to {}",
                v.first_seq,
                v.last_seq.map_or("(none)".into(), |s| s.to_string())
            ),
        );
        row(
            h,
            "Last hash",
            format!(
                "<span class=\"hash\">{}</span> (compare with a copy kept elsewhere to detect \
                 a cut-off tail)",
                esc(&v.last_hash)
            ),
        );
        row(
            h,
            "Records after the last seal",
            format!("{} (chained, not yet signed)", v.unsealed_records),
        );
        if let Some(c) = &v.checkpoint {
            row(
                h,
                "Retention checkpoint",
                format!(
                    "older files were removed by retention; the checkpoint is {}",
                    esc(c)
                ),
            );
        }
        let gaps = if v.gaps.is_empty() {
            "none".to_string()
        } else {
            let list: Vec<String> = v
                .gaps
                .iter()
                .map(|g| {
                    esc(&format!(
                        "{} records lost between {} and {}: {}",
                        g.lost, g.from, g.until, g.cause
                    ))
                })
                .collect();
            format!(
                "{} gap(s), {} records lost: {}",
                v.gaps.len(),
                v.lost_records,
                list.join("; ")
            )
        };
        row(h, "Gaps (records the writer could not write)", gaps);
    }
    row(
        h,
        "Seal keys (Ed25519, hex)",
        if v.seal_keys.is_empty() {
            "no seals in the files read for the period (the log is not signed, or no file \
             was closed)"
                .into()
        } else {
            v.seal_keys
                .iter()
                .map(|k| format!("<span class=\"hash\">{}</span>", esc(k)))
                .collect::<Vec<_>>()
                .join("<br>")
        },
    );
    row(
        h,
        "Expected key",
        v.expected_key.as_ref().map_or(
            "none given: each seal is checked against the key it names".into(),
            |k| format!("<span class=\"hash\">{}</span>", esc(k)),
        ),
    );
    let at = |r: &Option<RecordRef>| {
        r.as_ref().map_or("(no records in the period)".into(), |r| {
            format!("{} (seq {})", when(&r.time), r.seq)
        })
    };
    row(h, "First record of the period", at(&v.first_record));
    row(h, "Last record of the period", at(&v.last_record));
    h.push_str("</table>\n</section>\n");
}

fn totals_table(h: &mut String, d: &Decisions) {
    if d.by_verdict.is_empty() {
        h.push_str("<p class=\"none\">No decisions in this period.</p>\n");
        return;
    }
    h.push_str("<table class=\"totals\">\n<tr><th>Verdict</th><th>Decisions</th></tr>\n");
    for s in &d.series {
        let n: u64 = s.counts.iter().sum();
        let note = if s.verdict == "allow" && d.counted > 0 {
            format!(" (of which {} counted by the kernel)", d.counted)
        } else {
            String::new()
        };
        let _ = writeln!(
            h,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td>\
             <td class=\"n\">{n}{note}</td></tr>",
            colour(&s.verdict),
            esc(&s.verdict)
        );
    }
    let total: u64 = d.by_verdict.values().sum();
    let _ = writeln!(
        h,
        "<tr><th>Total</th><th class=\"n\">{total}</th></tr>\n</table>"
    );
}

/// A stacked bar chart: one bar per bucket, one coloured segment (`rect.bar`) per verdict with
/// decisions in it.
pub fn chart(h: &mut String, id: &str, d: &Decisions, buckets: &[String], hourly: bool) {
    if d.series.is_empty() {
        return;
    }
    let (w, ht, left, bottom, top) = (960.0f64, 260.0f64, 60.0f64, 40.0f64, 10.0f64);
    let n = buckets.len().max(1);
    let plot_w = w - left - 10.0;
    let plot_h = ht - bottom - top;
    let max = (0..n)
        .map(|i| {
            d.series
                .iter()
                .map(|s| s.counts.get(i).copied().unwrap_or(0))
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = plot_w / n as f64;
    let bar_w = (slot * 0.8).max(0.5);
    let _ = write!(
        h,
        "<svg class=\"chart\" id=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {ht}\" \
         width=\"{w}\" height=\"{ht}\" role=\"img\" data-series=\"{}\" data-buckets=\"{n}\" \
         aria-label=\"Decisions by verdict per bucket\">",
        esc(id),
        d.series.len(),
    );
    // Axes and the scale.
    let _ = writeln!(
        h,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{left}\" y1=\"{0}\" x2=\"{}\" y2=\"{0}\" stroke=\"#999\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{max}</text>\
         <text x=\"{}\" y=\"{0}\" font-size=\"11\" text-anchor=\"end\">0</text>",
        top + plot_h,
        left + plot_w,
        left - 4.0,
        top + 10.0,
        left - 4.0,
    );
    let mut g = String::new();
    for i in 0..n {
        let x = left + i as f64 * slot + (slot - bar_w) / 2.0;
        let mut y = top + plot_h;
        for s in &d.series {
            let c = s.counts.get(i).copied().unwrap_or(0);
            if c == 0 {
                continue;
            }
            let bh = (c as f64 / max as f64 * plot_h).max(1.0);
            y -= bh;
            let _ = writeln!(
                g,
                "<rect class=\"bar\" data-verdict=\"{}\" data-bucket=\"{}\" data-count=\"{c}\" \
                 x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{bh:.1}\" fill=\"{}\">\
                 <title>{}: {} {c}</title></rect>",
                esc(&s.verdict),
                esc(buckets.get(i).map_or("", String::as_str)),
                colour(&s.verdict),
                esc(buckets.get(i).map_or("", String::as_str)),
                esc(&s.verdict),
            );
        }
    }
    h.push_str(&g);
    // Labels: about ten, from the first bucket on.
    let step = n.div_ceil(10).max(1);
    for i in (0..n).step_by(step) {
        let label = buckets.get(i).map_or("", String::as_str);
        // 2026-11-30T13:00:00Z → 11-30 13h, or 11-30 for days.
        let (day, hour) = (label.get(5..10), label.get(11..13));
        let short = match (day, hour) {
            (Some(d), Some(hh)) if hourly => format!("{d} {hh}h"),
            (Some(d), _) => d.to_string(),
            _ => label.to_string(),
        };
        let x = left + i as f64 * slot + slot / 2.0;
        let _ = writeln!(
            h,
            "<text x=\"{x:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            top + plot_h + 16.0,
            esc(&short)
        );
    }
    h.push_str("</svg>\n<p class=\"legend\">");
    for s in &d.series {
        let _ = write!(
            h,
            "<span><span class=\"swatch\" style=\"background:{}\"></span>{}</span>",
            colour(&s.verdict),
            esc(&s.verdict)
        );
    }
    h.push_str("</p>\n");
}

fn decisions(h: &mut String, r: &Report) {
    let _ = write!(
        h,
        "<section id=\"decisions\">\n<h2>Decisions by verdict</h2>\n<p class=\"explain\">Every \
         action of a governed agent the kernel or the HTTP proxy decided in the period, by \
         what happened to it (allow, block, escalate, throttle, sandbox, ...), per {}. Allowed \
         actions the kernel counted rather than recorded one by one (count records, \
         <code>decisions.counted</code>) are included in <em>allow</em>, at the time of their \
         count record (written every 30 seconds), so the totals are complete.</p>\n",
        esc(&r.period.bucket)
    );
    totals_table(h, &r.decisions);
    chart(
        h,
        "chart-node",
        &r.decisions,
        &r.period.buckets,
        r.period.bucket == "hour",
    );
    h.push_str("</section>\n");
}

fn refused_table(h: &mut String, d: &Decisions) {
    if d.top_refused.is_empty() {
        h.push_str("<p class=\"none\">No refused actions in this period.</p>\n");
        return;
    }
    h.push_str("<table class=\"refused\">\n<tr><th>Rule</th><th>Refused</th></tr>\n");
    for rc in &d.top_refused {
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td></tr>",
            esc(&rc.rule),
            rc.refused
        );
    }
    h.push_str("</table>\n");
}

fn refused(h: &mut String, r: &Report) {
    let _ = write!(
        h,
        "<section id=\"refused\">\n<h2>Top refused rules</h2>\n<p class=\"explain\">The rules \
         that refused the most actions ({} refusals in all): <code>policy/rule</code>, \
         <code>default</code> (no rule matched: the default posture refused), \
         <code>builtin:...</code> (a built-in protection) or <code>fail-closed:...</code>.</p>\n",
        r.decisions.refused
    );
    refused_table(h, &r.decisions);
    h.push_str("</section>\n");
}

fn agents(h: &mut String, r: &Report) {
    h.push_str(
        "<section id=\"agents\">\n<h2>Per agent</h2>\n<p class=\"explain\">The same, for each \
         agent (a cgroup subtree the policies govern) that had decisions in the period.</p>\n",
    );
    if r.agents.is_empty() {
        h.push_str("<p class=\"none\">No agent had decisions in this period.</p>\n");
    }
    for (i, a) in r.agents.iter().enumerate() {
        let _ = writeln!(
            h,
            "<div class=\"agent\">\n<h3>Agent <code>{}</code></h3>",
            esc(&a.agent)
        );
        totals_table(h, &a.decisions);
        chart(
            h,
            &format!("chart-agent-{i}"),
            &a.decisions,
            &r.period.buckets,
            r.period.bucket == "hour",
        );
        refused_table(h, &a.decisions);
        h.push_str("</div>\n");
    }
    h.push_str("</section>\n");
}

fn seconds(s: Option<f64>) -> String {
    match s {
        None => String::new(),
        Some(s) if s < 120.0 => format!("{s:.1} s"),
        Some(s) if s < 7200.0 => format!("{:.1} min", s / 60.0),
        Some(s) => format!("{:.1} h", s / 3600.0),
    }
}

fn escalations(h: &mut String, e: &Escalations) {
    h.push_str(
        "<section id=\"escalations\">\n<h2>Escalations</h2>\n<p class=\"explain\">Actions a \
         policy escalated to a person: who approved or denied each, and how long the decision \
         took (from the request to the decision). Expired requests were refused when nobody \
         decided in time; withdrawn ones were given up by the agent.</p>\n",
    );
    if e.total == 0 && e.not_listed == 0 {
        h.push_str("<p class=\"none\">No escalations in this period.</p>\n</section>\n");
        return;
    }
    let states: Vec<String> = e
        .by_state
        .iter()
        .map(|(s, n)| format!("{} {n}", esc(s)))
        .collect();
    let _ = writeln!(
        h,
        "<p>{} escalations: {}. Time to decision: median {}, longest {}.</p>",
        e.total,
        states.join(", "),
        seconds(e.median_seconds).if_empty("n/a"),
        seconds(e.max_seconds).if_empty("n/a"),
    );
    h.push_str(
        "<table class=\"escalations\">\n<tr><th>Requested</th><th>Agent</th><th>Action</th>\
         <th>Rule</th><th>State</th><th>By</th><th>Decided</th><th>Time to decision</th></tr>\n",
    );
    for x in &e.listed {
        let state = if x.denial.is_empty() {
            esc(&x.state)
        } else {
            format!("{} ({})", esc(&x.state), esc(&x.denial))
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>\
             <td>{state}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            when(&x.requested).if_empty("(before the period)"),
            esc(&x.agent),
            esc(&x.object),
            esc(&x.rule),
            esc(&x.by),
            when(&x.decided),
            seconds(x.seconds),
        );
    }
    h.push_str("</table>\n");
    if e.not_listed > 0 {
        let _ = writeln!(
            h,
            "<p>{} more approval records are not listed.</p>",
            e.not_listed
        );
    }
    h.push_str("</section>\n");
}

fn generations(h: &mut String, g: &Generations) {
    h.push_str(
        "<section id=\"generations\">\n<h2>Policy generations</h2>\n<p class=\"explain\">Which \
         policy was enforcing when: each generation is one version of the policy directory \
         compiled into the kernel and the proxy, identified by its content hash (SHA-256 of \
         the policy files, reproducible with <code>sha256sum</code>, see the documentation). \
         A generation enforces from its start until the next one takes over (the kernel \
         programs keep enforcing it even while the daemon is stopped).</p>\n",
    );
    if g.at_start.is_none() && g.changes.is_empty() {
        h.push_str(
            "<p class=\"none\">No policy generation started in this period, and the log read \
             does not say which one was enforcing before it.</p>\n",
        );
    } else {
        h.push_str(
            "<table class=\"generations\">\n<tr><th>Generation</th><th>Enforcing from</th>\
             <th>Until</th><th>Content hash (SHA-256)</th><th>Policy</th><th>Rules</th>\
             <th>Agents</th></tr>\n",
        );
        for (x, before) in g
            .at_start
            .iter()
            .map(|x| (x, true))
            .chain(g.changes.iter().map(|x| (x, false)))
        {
            let _ = writeln!(
                h,
                "<tr><td class=\"n\">{}</td><td>{}{}</td><td>{}</td><td class=\"hash\">{}</td>\
                 <td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                x.generation,
                when(&x.from),
                if before { " (before the period)" } else { "" },
                when(&x.until).if_empty("the end of the period"),
                esc(&x.sha256).if_empty("(not recorded by this daemon version)"),
                esc(&x.policy),
                x.rules,
                x.agents
            );
        }
        h.push_str("</table>\n");
    }
    if !g.failed_reloads.is_empty() {
        h.push_str(
            "<p>Reloads that failed (the generation named kept enforcing):</p>\n<table>\
             <tr><th>Time</th><th>Kept</th><th>Why</th></tr>\n",
        );
        for f in &g.failed_reloads {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"n\">{}</td><td><code>{}</code></td></tr>",
                when(&f.time),
                f.generation,
                esc(&f.message)
            );
        }
        h.push_str("</table>\n");
    }
    if g.not_listed > 0 {
        let _ = writeln!(
            h,
            "<p>{} more policy records are not listed.</p>",
            g.not_listed
        );
    }
    h.push_str("</section>\n");
}

fn drills(h: &mut String, d: &Drills) {
    h.push_str(
        "<section id=\"drills\">\n<h2>Drills</h2>\n<p class=\"explain\">A drill attempts the \
         known-bad actions of the live policies from a short-lived canary agent and checks \
         that each is refused. A failed drill means a refusal the policy promises did not \
         happen.</p>\n",
    );
    if d.total == 0 {
        h.push_str(
            "<p class=\"none\" id=\"no-drills\">No drills in this period: the log holds no \
             drill record between its start and its end.</p>\n</section>\n",
        );
        return;
    }
    let _ = writeln!(
        h,
        "<p>{} drills: {} passed, {} failed.</p>",
        d.total, d.passed, d.failed
    );
    h.push_str(
        "<table class=\"drills\">\n<tr><th>Time</th><th>Result</th><th>Checks</th>\
         <th>Passed</th><th>Failed</th><th>Skipped</th><th>Message</th></tr>\n",
    );
    for x in &d.listed {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            when(&x.time),
            if x.passed {
                "<strong style=\"color:#2e7d32\">passed</strong>"
            } else {
                "<strong style=\"color:#c62828\">FAILED</strong>"
            },
            x.checks,
            x.checks_passed,
            x.checks_failed,
            x.checks_skipped,
            esc(&x.message)
        );
        for f in &x.failures {
            let _ = writeln!(
                h,
                "<tr class=\"drill-failure\"><td></td><td colspan=\"6\">failed check: \
                 <code>{}/{}</code> {} <code>{}</code>: expected {}, got {}</td></tr>",
                esc(&f.policy),
                esc(&f.rule),
                esc(&f.kind),
                esc(&f.object),
                esc(&f.expected),
                esc(&f.got)
            );
        }
    }
    h.push_str("</table>\n");
    if d.not_listed > 0 {
        let _ = writeln!(h, "<p>{} more drills are not listed.</p>", d.not_listed);
    }
    h.push_str("</section>\n");
}

/// A placeholder for empty text.
trait IfEmpty {
    fn if_empty(self, instead: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, instead: &str) -> String {
        if self.is_empty() {
            instead.to_owned()
        } else {
            self
        }
    }
}
