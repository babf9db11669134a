//! A [`Record`] as JSON, written directly: the pipeline encodes every record once, for the
//! audit log and the live streams, and `serde_json` spent most of that time escaping strings a
//! byte at a time (`cargo xtask bench events`, docs/benchmarks.md).
//!
//! The output is byte for byte what `serde_json::to_writer` writes for the same record (the
//! derived `Serialize`: fields in declaration order, the same ones skipped, the same escapes),
//! so the audit log's lines and hashes, and every reader, are unchanged. The parts that are
//! rare on the hot path (approvals, streams, drills, sequence and discovery details) are
//! written by `serde_json` itself. The tests compare the two over every field, over strings
//! of every kind, and check that the fields written here are the schema's.

use std::collections::BTreeMap;

use super::record::{AgentInfo, CgroupInfo, Object, ProcessInfo, Record, Shadow};

/// Append `r` as one JSON object to `out`. On an error (only from the parts `serde_json`
/// writes) `out` may hold part of the object: truncate it.
pub fn write(r: &Record, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let mut o = Obj::open(out);
    o.str("id", &r.id);
    o.str("time", &r.time);
    o.str("node", &r.node);
    o.raw_str("type", r.ty.as_str());
    o.raw_str("source", r.source.as_str());
    o.str("kind", &r.kind);
    o.str_nonempty("outcome", &r.outcome);
    o.bool("denied", r.denied);
    if r.sampled {
        o.bool("sampled", true);
    }
    o.str_nonempty("verdict", &r.verdict);
    o.str_nonempty("mode", &r.mode);
    o.str_nonempty("rule", &r.rule);
    o.str_nonempty("reason", &r.reason);
    o.num("generation", u64::from(r.generation));
    if let Some(s) = &r.shadow {
        o.key("shadow");
        shadow(o.out, s);
    }
    if let Some(a) = &r.agent {
        o.key("agent");
        agent(o.out, a);
    }
    if let Some(c) = &r.cgroup {
        o.key("cgroup");
        cgroup(o.out, c);
    }
    if let Some(p) = &r.process {
        o.key("process");
        process(o.out, p);
    }
    if !r.object.is_empty() {
        o.key("object");
        object(o.out, &r.object);
    }
    if let Some(a) = &r.approval {
        o.key("approval");
        serde_json::to_writer(&mut *o.out, a)?;
    }
    o.str_nonempty("message", &r.message);
    if !r.counts.is_empty() {
        o.key("counts");
        let mut m = Obj::open(o.out);
        for (k, v) in &r.counts {
            m.data_key(k);
            number(m.out, *v);
        }
        m.close();
    }
    if let Some(s) = &r.stream {
        o.key("stream");
        serde_json::to_writer(&mut *o.out, s)?;
    }
    if let Some(d) = &r.drill {
        o.key("drill");
        serde_json::to_writer(&mut *o.out, d)?;
    }
    if let Some(a) = &r.armed_by {
        o.key("armed_by");
        serde_json::to_writer(&mut *o.out, a)?;
    }
    if let Some(c) = &r.candidate {
        o.key("candidate");
        serde_json::to_writer(&mut *o.out, c)?;
    }
    o.close();
    Ok(())
}

fn shadow(out: &mut Vec<u8>, s: &Shadow) {
    let mut o = Obj::open(out);
    o.str("verdict", &s.verdict);
    o.str("rule", &s.rule);
    o.close();
}

fn agent(out: &mut Vec<u8>, a: &AgentInfo) {
    let mut o = Obj::open(out);
    o.str("name", &a.name);
    o.str_nonempty("selector", &a.selector);
    o.num("cgroup_id", a.cgroup_id);
    o.str_nonempty("cgroup", &a.cgroup);
    o.str("pod", &a.pod);
    o.str("namespace", &a.namespace);
    o.str_nonempty("container", &a.container);
    o.close();
}

fn cgroup(out: &mut Vec<u8>, c: &CgroupInfo) {
    let mut o = Obj::open(out);
    o.num("id", c.id);
    o.str_nonempty("path", &c.path);
    o.close();
}

fn process(out: &mut Vec<u8>, p: &ProcessInfo) {
    let mut o = Obj::open(out);
    o.num("pid", u64::from(p.pid));
    o.num("tid", u64::from(p.tid));
    o.num_nonzero("ns_pid", p.ns_pid);
    o.num("ppid", u64::from(p.ppid));
    o.num("uid", u64::from(p.uid));
    o.str("comm", &p.comm);
    o.str_nonempty("exe", &p.exe);
    if !p.argv.is_empty() {
        o.key("argv");
        o.out.push(b'[');
        for (i, a) in p.argv.iter().enumerate() {
            if i > 0 {
                o.out.push(b',');
            }
            string(o.out, a);
        }
        o.out.push(b']');
    }
    if p.sandboxed {
        o.bool("sandboxed", true);
    }
    o.str_nonempty("enrichment", &p.enrichment);
    o.close();
}

fn object(out: &mut Vec<u8>, x: &Object) {
    let mut o = Obj::open(out);
    o.str_nonempty("path", &x.path);
    o.str_nonempty("access", &x.access);
    o.str_nonempty("dest", &x.dest);
    o.str_nonempty("protocol", &x.protocol);
    o.str_nonempty("method", &x.method);
    o.str_nonempty("url", &x.url);
    o.str_nonempty("mcp_tool", &x.mcp_tool);
    o.num_nonzero("target_pid", x.target_pid);
    o.num_nonzero("signal", x.signal);
    if !x.detail.is_empty() {
        o.key("detail");
        strings(o.out, &x.detail);
    }
    o.close();
}

fn strings(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    let mut o = Obj::open(out);
    for (k, v) in map {
        o.data_key(k);
        string(o.out, v);
    }
    o.close();
}

/// An object being written: its members, comma-separated.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    fn close(self) {
        self.out.push(b'}');
    }

    /// A member's name: one of this module's own (plain ASCII: nothing to escape).
    fn key(&mut self, k: &str) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A member's name from the data (a count's or a detail's): escaped.
    fn data_key(&mut self, k: &str) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        string(self.out, k);
        self.out.push(b':');
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        string(self.out, v);
    }

    fn str_nonempty(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.str(k, v);
        }
    }

    /// A value that never needs escaping (the enums' names).
    fn raw_str(&mut self, k: &str, v: &'static str) {
        self.key(k);
        self.out.push(b'"');
        self.out.extend_from_slice(v.as_bytes());
        self.out.push(b'"');
    }

    fn num(&mut self, k: &str, v: u64) {
        self.key(k);
        number(self.out, v);
    }

    fn num_nonzero(&mut self, k: &str, v: u32) {
        if v != 0 {
            self.num(k, u64::from(v));
        }
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }
}

fn number(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A JSON string, escaped as `serde_json` escapes it: `"`, `\` and the control characters
/// (`\b \t \n \f \r` by name, the others as `\u00xx`); everything else as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none needs an escape (most strings need none).
        if let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            if !needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        i += 1;
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0..0x20 => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i - 1]);
        out.extend_from_slice(escape);
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether any byte of `w` is below 0x20, a `"` or a `\` (exact as a yes/no: the classic
/// has-zero-byte test, on `w` itself and on `w` with each of the two characters cancelled).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGH != 0
}

/// The members this module writes for each part, for the test that holds them to the schema.
#[cfg(test)]
pub(super) const WRITTEN: &[(&str, &[&str])] = &[
    (
        "Record",
        &[
            "id",
            "time",
            "node",
            "type",
            "source",
            "kind",
            "outcome",
            "denied",
            "sampled",
            "verdict",
            "mode",
            "rule",
            "reason",
            "generation",
            "shadow",
            "agent",
            "cgroup",
            "process",
            "object",
            "approval",
            "message",
            "counts",
            "stream",
            "drill",
            "armed_by",
            "candidate",
        ],
    ),
    ("Shadow", &["verdict", "rule"]),
    (
        "AgentInfo",
        &[
            "name",
            "selector",
            "cgroup_id",
            "cgroup",
            "pod",
            "namespace",
            "container",
        ],
    ),
    ("CgroupInfo", &["id", "path"]),
    (
        "ProcessInfo",
        &[
            "pid",
            "tid",
            "ns_pid",
            "ppid",
            "uid",
            "comm",
            "exe",
            "argv",
            "sandboxed",
            "enrichment",
        ],
    ),
    (
        "Object",
        &[
            "path",
            "access",
            "dest",
            "protocol",
            "method",
            "url",
            "mcp_tool",
            "target_pid",
            "signal",
            "detail",
        ],
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::events::{ApprovalInfo, RecordType, Source, StreamInfo, sequence::ArmedBy};

    fn serde(r: &Record) -> String {
        serde_json::to_string(r).unwrap()
    }

    fn ours(r: &Record) -> String {
        let mut out = b"prefix:".to_vec();
        write(r, &mut out).unwrap();
        String::from_utf8(out.split_off(7)).unwrap()
    }

    /// A record with every field set to `s` (strings), `n` (numbers) and `b` (flags).
    fn full(s: &str, n: u32, b: bool) -> Record {
        let t = || s.to_owned();
        Record {
            id: t(),
            time: t(),
            node: t().into(),
            ty: RecordType::Approval,
            source: Source::Proxy,
            kind: t().into(),
            outcome: t().into(),
            denied: b,
            sampled: b,
            verdict: t().into(),
            mode: t().into(),
            rule: t(),
            reason: t(),
            generation: n,
            shadow: Some(Shadow {
                verdict: t(),
                rule: t(),
            }),
            agent: Some(
                AgentInfo {
                    name: t(),
                    selector: t(),
                    cgroup_id: u64::from(n) << 20,
                    cgroup: t(),
                    pod: t(),
                    namespace: t(),
                    container: t(),
                }
                .into(),
            ),
            cgroup: Some(CgroupInfo {
                id: u64::MAX - u64::from(n),
                path: t(),
            }),
            process: Some(ProcessInfo {
                pid: n,
                tid: n,
                ns_pid: n,
                ppid: n,
                uid: n,
                comm: t(),
                exe: t(),
                argv: vec![t(), String::new(), t()],
                sandboxed: b,
                enrichment: t().into(),
            }),
            object: Object {
                path: t(),
                access: t(),
                dest: t(),
                protocol: t(),
                method: t(),
                url: t(),
                mcp_tool: t(),
                target_pid: n,
                signal: n,
                detail: [(t(), t()), (format!("{s}2"), String::new())].into(),
            },
            approval: Some(Box::new(ApprovalInfo {
                id: t(),
                state: t(),
                by: t(),
                deadline: t(),
                reason: t(),
            })),
            message: t(),
            counts: [(t(), u64::from(n)), (format!("{s}x"), u64::MAX)].into(),
            stream: Some(Box::new(StreamInfo {
                filter: Default::default(),
                after_id: t(),
                next_seq: u64::from(n),
            })),
            drill: None,
            armed_by: Some(Box::new(ArmedBy {
                rule: t(),
                kind: t(),
                object: t(),
                ..Default::default()
            })),
            candidate: None,
        }
    }

    /// Every field set, every field empty (what is skipped when empty or zero), and the usual
    /// kernel decision in between.
    #[test]
    fn writes_what_serde_json_writes() {
        for r in [
            full("a \"quoted\" \\ value\n\t\u{1}\u{1f}\u{7f} é 😀", 7, true),
            full("", 0, false),
            full("x", u32::MAX, true),
            Record::default(),
            Record {
                kind: "connect".into(),
                outcome: "block".into(),
                denied: true,
                agent: Some(Default::default()),
                process: Some(ProcessInfo::default()),
                cgroup: Some(CgroupInfo::default()),
                ..Default::default()
            },
        ] {
            assert_eq!(ours(&r), serde(&r));
        }
    }

    proptest! {
        /// Strings of every kind, at every length around the eight-byte steps: the escapes
        /// `serde_json` writes and nothing else.
        #[test]
        fn escapes_as_serde_json_does(
            chars in prop::collection::vec(
                prop_oneof![
                    Just('"'), Just('\\'), Just('\n'), Just('\r'), Just('\t'), Just('\u{8}'),
                    Just('\u{c}'), Just('\u{0}'), Just('\u{1f}'), Just(' '), Just('\u{7f}'),
                    Just('!'), Just('#'), Just('['), Just(']'), Just('\u{a2}'), Just('\u{2028}'),
                    any::<char>(), proptest::char::range('a', 'z'),
                ],
                0..40,
            ),
            n: u32,
            b: bool,
        ) {
            let s: String = chars.into_iter().collect();
            let r = full(&s, n, b);
            prop_assert_eq!(ours(&r), serde(&r));
        }
    }

    /// The members written here are the schema's, part by part: a field added to the record
    /// fails this until it is written here too.
    #[test]
    fn writes_every_member_of_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(Record)).unwrap();
        let members = |v: &serde_json::Value| -> BTreeSet<String> {
            v["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("no properties in {v}"))
                .keys()
                .cloned()
                .collect()
        };
        for (part, written) in WRITTEN {
            let def = if *part == "Record" {
                &schema
            } else {
                &schema["$defs"][*part]
            };
            let written: BTreeSet<String> = written.iter().map(|s| s.to_string()).collect();
            assert_eq!(members(def), written, "{part}");
        }
    }

    #[test]
    fn the_eight_byte_test_finds_each_special_byte_at_each_place() {
        for place in 0..8 {
            for b in (0u8..=255).filter(|b| !b.is_ascii_alphanumeric()) {
                let mut w = *b"abcdefgh";
                w[place] = b;
                let special = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(
                    needs_escape(u64::from_le_bytes(w)),
                    special,
                    "{b:#x} at {place}"
                );
            }
        }
    }
}
