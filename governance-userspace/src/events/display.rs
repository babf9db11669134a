//! The readable line: one line per record, for people (and grep).

use std::fmt;

use super::{Record, RecordType};

impl Record {
    /// The readable form of the object: `path="/usr/bin/nc"`, `dest=1.2.3.4:80 proto=tcp`, ...
    pub(crate) fn object_words(&self) -> String {
        let o = &self.object;
        let mut w = Vec::new();
        if !o.method.is_empty() {
            w.push(format!("{} {}", o.method, o.url));
        } else if !o.url.is_empty() {
            w.push(format!("url={}", o.url));
        }
        if !o.mcp_tool.is_empty() {
            w.push(format!("mcp_tool={}", o.mcp_tool));
        }
        if !o.path.is_empty() {
            w.push(format!("path={:?}", o.path));
        }
        if !o.access.is_empty() {
            w.push(format!("access={}", o.access));
        }
        if !o.dest.is_empty() {
            w.push(format!("dest={}", o.dest));
        }
        if !o.protocol.is_empty() {
            w.push(format!("proto={}", o.protocol));
        }
        if o.target_pid != 0 {
            w.push(format!("target={}", o.target_pid));
        }
        if o.signal != 0 {
            w.push(format!("signal={}", o.signal));
        }
        for (k, v) in &o.detail {
            w.push(format!("{k}={v:?}"));
        }
        w.join(" ")
    }
}

/// One readable line per record, for people (and grep): time, OUTCOME, kind, agent, object,
/// process, rule, reason; nothing in it a terminal acts on ([`printable`]).
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_line(&mut Printable(f))
    }
}

/// Writes what it is given as [`printable`] makes it.
struct Printable<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Printable<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(&printable(s))
    }
}

impl Record {
    fn write_line(&self, f: &mut impl fmt::Write) -> fmt::Result {
        let head = if self.ty == RecordType::Decision {
            self.outcome.to_uppercase()
        } else {
            self.ty.as_str().to_uppercase()
        };
        write!(f, "{} {head:<8} {:<7}", self.time, self.kind)?;
        if let Some(a) = &self.agent {
            write!(f, " agent={}", a.name)?;
        }
        let object = self.object_words();
        if !object.is_empty() {
            write!(f, " {object}")?;
        }
        if let Some(p) = &self.process {
            write!(
                f,
                " pid={} ppid={} comm={:?} uid={}",
                p.pid, p.ppid, p.comm, p.uid
            )?;
            if p.ns_pid != 0 {
                write!(f, " ns_pid={}", p.ns_pid)?;
            }
            if !p.exe.is_empty() {
                write!(f, " exe={:?}", p.exe)?;
            }
            if p.sandboxed {
                f.write_str(" sandboxed")?;
            }
        }
        if let Some(c) = &self.cgroup {
            write!(f, " cgroup={}", c.id)?;
        }
        if self.ty == RecordType::Decision {
            write!(
                f,
                " gen={} verdict={} rule={}",
                self.generation, self.verdict, self.rule
            )?;
            if self.mode == "shadow" {
                f.write_str(" mode=shadow")?;
            }
        }
        if !self.reason.is_empty() {
            write!(f, " reason={:?}", self.reason)?;
        }
        if let Some(s) = &self.shadow {
            write!(f, " shadow={}:{}", s.verdict, s.rule)?;
        }
        if let Some(a) = &self.armed_by {
            write!(f, " armed_by={}:{:?}", a.kind, a.object)?;
            if a.pid != 0 {
                write!(f, " armed_pid={}", a.pid)?;
            }
        }
        if let Some(a) = &self.approval {
            write!(f, " approval={} state={}", a.id, a.state)?;
            if !a.by.is_empty() {
                write!(f, " by={:?}", a.by)?;
            }
        }
        if !self.message.is_empty() {
            // One record, one line: a multi-line message (a reload's errors) is joined.
            write!(f, " {}", self.message.replace('\n', " | "))?;
        }
        for (k, v) in &self.counts {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// `s` with its control and bidirectional-override characters escaped (`\u{1b}`, `\n`,
/// `\u{202e}`): a path or URL an agent chose must not move the approver's cursor or redraw
/// the line a grant is approved from (red team round 11), nor reverse what an event line says
/// (round 32: an MCP tool name with U+202E).
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(hidden) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red team round 32: an MCP tool name with a right-to-left override, printed raw by
    /// `governance events`, reversed the rest of the line on a terminal.
    #[test]
    fn an_event_line_has_nothing_a_terminal_acts_on() {
        let mut r = Record::default();
        r.object.mcp_tool = "delete_\u{202e}all_files\u{202c}_safe".into();
        r.object.url = "http://x/\u{1b}[2J".into();
        r.message = "two\u{2066}lines".into();
        let line = r.to_string();
        assert!(
            line.contains("mcp_tool=delete_\\u{202e}all_files\\u{202c}_safe"),
            "{line}"
        );
        assert!(
            !line.chars().any(|c| c.is_control()
                || ('\u{2066}'..='\u{2069}').contains(&c)
                || c == '\u{202e}'),
            "{line}"
        );
    }
}
