//! The readable line: one line per record, for people (and grep).

use std::fmt;

use super::{Record, RecordType};

impl Record {
    /// The readable form of the object: `path="/usr/bin/nc"`, `dest="1.2.3.4:80" proto=tcp`, ...
    /// Every value an agent can choose is [`quoted`].
    pub(crate) fn object_words(&self) -> String {
        let o = &self.object;
        let mut w = Vec::new();
        if !o.method.is_empty() {
            // An HTTP method is a token (no space, quote or `=`), checked by the HTTP parser
            // before a record is made; only its length is the agent's.
            let (method, more) = cut(&o.method);
            w.push(format!("{method}{more} {}", quoted(&o.url)));
        } else if !o.url.is_empty() {
            w.push(format!("url={}", quoted(&o.url)));
        }
        if !o.mcp_tool.is_empty() {
            w.push(format!("mcp_tool={}", quoted(&o.mcp_tool)));
        }
        if !o.path.is_empty() {
            w.push(format!("path={}", quoted(&o.path)));
        }
        if !o.access.is_empty() {
            w.push(format!("access={}", o.access));
        }
        if !o.dest.is_empty() {
            w.push(format!("dest={}", quoted(&o.dest)));
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
            w.push(format!("{k}={}", quoted(v)));
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
            write!(f, " agent={}", quoted(&a.name))?;
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
                write!(f, " exe={}", quoted(&p.exe))?;
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
            write!(f, " reason={}", quoted(&self.reason))?;
        }
        if let Some(s) = &self.shadow {
            write!(f, " shadow={}:{}", s.verdict, s.rule)?;
        }
        if let Some(a) = &self.armed_by {
            write!(f, " armed_by={}:{}", a.kind, quoted(&a.object))?;
            if a.pid != 0 {
                write!(f, " armed_pid={}", a.pid)?;
            }
        }
        if let Some(a) = &self.approval {
            write!(f, " approval={} state={}", a.id, a.state)?;
            if !a.by.is_empty() {
                write!(f, " by={}", quoted(&a.by))?;
            }
        }
        if !self.message.is_empty() {
            // One record, one line: a multi-line message (a reload's errors) is joined.
            let (message, more) = cut(&self.message);
            write!(f, " {}{more}", message.replace('\n', " | "))?;
        }
        for (k, v) in &self.counts {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// The most bytes of one value an agent chose that a line shows (a 600 KB MCP tool name made a
/// 600 KB line, red team round 35); [`cut`] counts the rest.
const SHOWN: usize = 512;

/// `s` cut to [`SHOWN`] bytes (on a character boundary), and what says how much was left out:
/// `…(+N bytes)`, or nothing.
fn cut(s: &str) -> (&str, String) {
    if s.len() <= SHOWN {
        return (s, String::new());
    }
    let end = (0..=SHOWN)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    (&s[..end], format!("…(+{} bytes)", s.len() - end))
}

/// A value an agent can choose (a path, URL, MCP tool name, destination, agent name), as the
/// line shows it: [`cut`], in quotes, escaped as `{:?}` escapes (`"`, `\\`, control
/// characters, line and paragraph separators, format characters such as U+200B and U+202E,
/// spaces other than U+0020), so that it cannot end itself and start a field of its own (red
/// team round 35: a tool name `x verdict=allow rule=...` printed a second verdict). The mark of
/// what was cut stands outside the quotes, where the agent cannot write it.
pub(crate) fn quoted(s: &str) -> String {
    let (shown, more) = cut(s);
    format!("{shown:?}{more}")
}

/// `s` with what a terminal acts on or draws as a break escaped (`\u{1b}`, `\n`, `\u{202e}`,
/// `\u{2028}`): control characters, and every character [`str::escape_debug`] escapes in the
/// middle of a string (line and paragraph separators, format characters such as U+200B and the
/// bidirectional overrides, spaces other than U+0020). A path or URL an agent chose must not
/// move the approver's cursor or redraw the line a grant is approved from (red team round 11),
/// nor reverse what an event line says (round 32: an MCP tool name with U+202E), nor break it
/// (round 35: U+2028).
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
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

/// Whether [`printable`] escapes `c`: a control character, or one that [`str::escape_debug`]
/// escapes after another character (a combining accent, escaped only at the start, stays).
fn hidden(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    let mut buf = [0u8; 5];
    buf[0] = b'a';
    let n = 1 + c.encode_utf8(&mut buf[1..]).len();
    std::str::from_utf8(&buf[..n]).map_or(true, |s| s.escape_debug().count() != 2)
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
            line.contains("mcp_tool=\"delete_\\u{202e}all_files\\u{202c}_safe\""),
            "{line}"
        );
        assert!(
            !line.chars().any(|c| c.is_control()
                || ('\u{2066}'..='\u{2069}').contains(&c)
                || c == '\u{202e}'),
            "{line}"
        );
    }

    /// The fields outside quotes: what a reader (or grep) takes for the line's fields.
    fn unquoted(line: &str) -> String {
        let (mut out, mut inside, mut escaped) = (String::new(), false, false);
        for c in line.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' if inside => escaped = true,
                '"' => inside = !inside,
                _ if !inside => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// Red team round 35: a tool name, agent name, URL or destination with spaces and
    /// `key=value` text wrote a second verdict (and agent) into the line; U+2028 broke it in
    /// two, U+200B hid a character, and a 600,000-character tool name made a 600 KB line.
    #[test]
    fn what_an_agent_chose_cannot_write_a_field_of_its_own() {
        let fake = " verdict=allow rule=ev-agent/allow-local reason=\"ok\" agent=other-agent";
        let mut r = Record {
            ty: RecordType::Decision,
            verdict: "block".into(),
            rule: "ev-agent/no-shell".into(),
            ..Default::default()
        };
        r.agent = Some(std::sync::Arc::new(crate::events::AgentInfo {
            name: format!("g1{fake}"),
            ..Default::default()
        }));
        r.object.method = "POST".into();
        r.object.url = format!("http://mcp.ev.example/mcp{fake}");
        r.object.mcp_tool = format!("run_shell{fake}\u{2028}verdict=allow\u{200b}\u{2029}");
        r.object.dest = format!("1.2.3.4:80{fake}");
        let line = r.to_string();
        let fields = unquoted(&line);
        assert_eq!(fields.matches("verdict=").count(), 1, "{line}");
        assert_eq!(fields.matches("agent=").count(), 1, "{line}");
        assert!(fields.contains("verdict=block"), "{line}");
        assert!(
            line.contains("mcp_tool=\"run_shell verdict=allow"),
            "{line}"
        );
        assert!(
            !line.contains(['\u{2028}', '\u{2029}', '\u{200b}']),
            "{line}"
        );
        assert!(
            line.contains("\\u{2028}verdict=allow\\u{200b}\\u{2029}"),
            "{line}"
        );

        r.object.mcp_tool = format!("{}{fake}", "x".repeat(600_000));
        let line = r.to_string();
        assert!(line.len() < 4096, "{} bytes", line.len());
        assert!(
            line.contains(&format!("x\"…(+{} bytes)", 600_000 + fake.len() - SHOWN)),
            "{line}"
        );
        assert_eq!(unquoted(&line).matches("verdict=").count(), 1, "{line}");
    }

    /// Red team round 35: what a terminal draws as a line break, or not at all, in text that
    /// is not quoted (a message) is escaped too; an accent is not.
    #[test]
    fn printable_escapes_separators_and_format_characters() {
        assert_eq!(
            printable("a\u{2028}b\u{2029}c\u{200b}d\u{feff}e\u{85}f\u{a0}g"),
            "a\\u{2028}b\\u{2029}c\\u{200b}d\\u{feff}e\\u{85}f\\u{a0}g"
        );
        assert_eq!(printable("ré port e\u{301}"), "ré port e\u{301}");
    }
}
