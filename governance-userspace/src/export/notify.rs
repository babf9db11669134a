//! Escalations reach humans: each `approval.requested` record becomes one Slack-compatible
//! message (`text`, and `blocks` in Block Kit's `section`/`mrkdwn` form) with the approval id,
//! the agent, the action, the reason, the deadline and the commands that decide it.

use serde_json::{Value, json};

use crate::events::Record;

/// The commands that decide approval `id`.
pub fn commands(id: &str) -> (String, String) {
    (
        format!("governance approve {id} --as NAME"),
        format!("governance deny {id} --reason \"...\" --as NAME"),
    )
}

/// The message for an `approval.requested` record.
pub fn slack_payload(r: &Record) -> Value {
    let a = r.approval.clone().unwrap_or_default();
    let agent = r.agent.as_ref().map_or("(unknown)", |a| a.name.as_str());
    let action = {
        let o = r.object_words();
        if o.is_empty() { r.message.clone() } else { o }
    };
    let (approve, deny) = commands(&a.id);
    let reason = if r.reason.is_empty() {
        "(no reason given)"
    } else {
        r.reason.as_str()
    };
    let text = format!(
        "governance: agent {agent} asks for approval {}: {action} (rule {}: {reason}); decide \
         before {}: `{approve}` or `{deny}`",
        a.id, r.rule, a.deadline
    );
    json!({
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!("*Approval needed* on {}: agent *{agent}* was escalated", r.node),
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": format!("*Approval id*\n`{}`", a.id)},
                    {"type": "mrkdwn", "text": format!("*Agent*\n{agent}")},
                    {"type": "mrkdwn", "text": format!("*Action*\n{}", r.message)},
                    {"type": "mrkdwn", "text": format!("*Object*\n{action}")},
                    {"type": "mrkdwn", "text": format!("*Rule*\n{}", r.rule)},
                    {"type": "mrkdwn", "text": format!("*Reason*\n{reason}")},
                    {"type": "mrkdwn", "text": format!("*Deadline*\n{}", a.deadline)},
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
        "approval": {
            "id": a.id,
            "agent": agent,
            "action": action,
            "reason": r.reason,
            "rule": r.rule,
            "deadline": a.deadline,
            "approve": approve,
            "deny": deny,
        },
    })
}
