//! Decoding kernel records; the committed schema.

use std::time::{Duration, SystemTime};

use governance_common::{Cause, Event, GrantKey, Kind, Verdict, flags};

use super::*;

fn names() -> Names {
    Names {
        agents: [(
            4000,
            AgentInfo {
                name: "bot".into(),
                selector: "cgroup=agents/bot".into(),
                cgroup_id: 4000,
                cgroup: "agents/bot".into(),
                ..Default::default()
            }
            .into(),
        )]
        .into(),
        refs: Default::default(),
        rules: vec![RuleName {
            id: "bot/no-wget".into(),
            reason: "no downloads".into(),
            escalate: Some((Duration::from_secs(60), crate::policy::Posture::Block)),
            shadow: false,
        }],
    }
}

fn event() -> Event {
    // SAFETY: Event is plain data; all zeroes is a valid value.
    let mut ev: Event = unsafe { std::mem::zeroed() };
    ev.time_ns = 1_500_000_000;
    ev.cgroup_id = 4242;
    ev.agent_cgroup = 4000;
    ev.pid = 11;
    ev.tgid = 10;
    ev.ppid = 9;
    ev.rule_id = governance_common::class_id(3, 1);
    ev.generation = 3;
    ev.kind = Kind::Exec as u8;
    ev.verdict = Verdict::Block as u8;
    ev.cause = Cause::Rule as u8;
    ev.flags = flags::DENIED;
    ev.comm[..2].copy_from_slice(b"sh");
    ev.path[..13].copy_from_slice(b"/usr/bin/wget");
    ev
}

#[test]
fn decodes_a_block_with_its_rule() {
    let clock = Clock {
        boot_wall: SystemTime::UNIX_EPOCH,
    };
    let r = Record::from_kernel(&event(), &names(), &clock);
    assert_eq!(r.agent.as_ref().unwrap().name, "bot");
    assert_eq!(r.object.path, "/usr/bin/wget");
    assert_eq!(r.rule, "bot/no-wget");
    assert_eq!((r.outcome.as_ref(), r.denied), ("block", true));
    let p = r.process.as_ref().unwrap();
    assert_eq!((p.pid, p.tid, p.ppid), (10, 11, 9));
    let line = r.to_string();
    assert!(
        line.starts_with(
            "1970-01-01T00:00:01.500000000Z BLOCK    exec    agent=\"bot\" path=\"/usr/bin/wget\" pid=10 ppid=9 comm=\"sh\""
        ),
        "{line}"
    );
    assert!(
        line.ends_with(" gen=3 verdict=block rule=bot/no-wget reason=\"no downloads\""),
        "{line}"
    );
    // The JSON form round-trips.
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    assert!(
        !json.contains("ns_pid"),
        "no ns_pid in the node's namespace: {json}"
    );
    // In a container's PID namespace: its own pid beside the node's.
    let mut ev = event();
    ev.ns_pid = 1;
    let r = Record::from_kernel(&ev, &names(), &clock);
    let p = r.process.as_ref().unwrap();
    assert_eq!((p.pid, p.ns_pid), (10, 1));
    assert!(
        r.to_string()
            .contains(" pid=10 ppid=9 comm=\"sh\" uid=0 ns_pid=1"),
        "{r}"
    );
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["process"]["ns_pid"], 1);
}

#[test]
fn escalations_name_the_grant_they_ask_for() {
    let mut ev = event();
    ev.verdict = Verdict::Escalate as u8;
    ev.object = 0xabc;
    let r = Record::from_kernel(&ev, &names(), &Clock::now());
    assert_eq!(r.outcome, "escalate");
    assert_eq!(
        requested_grant(&ev),
        Some(GrantKey::new(4000, Kind::Exec, 0xabc))
    );
    ev.flags = 0;
    assert_eq!(requested_grant(&ev), None);
}

#[test]
fn decodes_connect_shadow_and_unknowns_without_panicking() {
    let clock = Clock::now();
    let mut ev = event();
    ev.kind = Kind::Connect as u8;
    ev.addr = std::net::Ipv4Addr::new(169, 254, 169, 254)
        .to_ipv6_mapped()
        .octets();
    ev.port = 80;
    ev.detail = 6;
    ev.agent_cgroup = 99;
    ev.rule_id = 77;
    ev.flags = flags::SHADOW;
    ev.verdict = Verdict::Allow as u8;
    ev.shadow_verdict = Verdict::Block as u8;
    ev.shadow_rule_id = 1;
    let r = Record::from_kernel(&ev, &names(), &clock);
    assert_eq!(
        (
            r.object.dest.as_str(),
            r.object.protocol.as_str(),
            r.agent.as_ref().unwrap().name.as_str()
        ),
        ("169.254.169.254:80", "tcp", "cgroup:99")
    );
    assert_eq!(r.rule, "#77");
    assert!(r.to_string().contains(" shadow=block:bot/no-wget"), "{r}");
    ev.kind = 200;
    ev.verdict = 200;
    ev.cause = 200;
    ev.comm = [0xff; 16];
    let line = Record::from_kernel(&ev, &names(), &clock).to_string();
    assert!(line.contains("unknown:200"), "{line}");
}

#[test]
fn decodes_unix_sockets_and_names_their_built_ins() {
    use governance_common::{unix_detail, unix_hook, unix_protected};
    let clock = Clock::now();
    let mut ev = event();
    ev.kind = Kind::Unix as u8;
    ev.cause = Cause::Builtin as u8;
    ev.rule_id = 0;
    ev.detail = unix_detail::PATH | (unix_protected::CONTROL as u8) << unix_detail::PROTECTED_SHIFT;
    ev.port = unix_hook::CONNECT;
    let sock = b"/run/governance/governance.sock\0";
    ev.path = [0; governance_common::EVENT_PATH_LEN];
    ev.path[..sock.len()].copy_from_slice(sock);
    let dev = (8u32 << 20) | 1;
    ev.addr[..4].copy_from_slice(&dev.to_ne_bytes());
    ev.addr[4..8].copy_from_slice(&(sock.len() as u32).to_ne_bytes());
    ev.addr[8..].copy_from_slice(&77u64.to_ne_bytes());
    let r = Record::from_kernel(&ev, &names(), &clock);
    assert_eq!(r.kind, "unix");
    assert_eq!(r.rule, "builtin:control-socket");
    assert_eq!(r.object.path, "/run/governance/governance.sock");
    assert_eq!(r.object.protocol, "unix-stream");
    assert_eq!(r.object.detail["inode"], "8:1:77");
    ev.detail = unix_detail::PATH | (unix_protected::RUNTIME as u8) << unix_detail::PROTECTED_SHIFT;
    let r = Record::from_kernel(&ev, &names(), &clock);
    assert_eq!(r.rule, "builtin:runtime-socket");
    assert!(r.reason.contains("allow_runtime_sockets"), "{r}");
    ev.detail =
        unix_detail::PATH | (unix_protected::NAME_SERVICE as u8) << unix_detail::PROTECTED_SHIFT;
    let r = Record::from_kernel(&ev, &names(), &clock);
    assert_eq!(r.rule, "builtin:name-service-socket");
    assert!(r.reason.contains("allow_name_service_sockets"), "{r}");
    // An abstract name, with a NUL inside, sent a datagram: as `ss` shows it.
    ev.detail = unix_detail::ABSTRACT;
    ev.port = unix_hook::SEND;
    let name = b"\0bus\0x";
    ev.path = [0; governance_common::EVENT_PATH_LEN];
    ev.path[..name.len()].copy_from_slice(name);
    ev.addr[4..8].copy_from_slice(&(name.len() as u32).to_ne_bytes());
    ev.cause = Cause::Rule as u8;
    ev.rule_id = governance_common::class_id(3, 1);
    let r = Record::from_kernel(&ev, &names(), &clock);
    assert_eq!(r.object.path, "@bus@x");
    assert_eq!(r.object.protocol, "unix-dgram");
    assert_eq!(r.rule, "bot/no-wget");
    // The TCP control API, refused in connect4/6.
    let mut ev = event();
    ev.kind = Kind::Connect as u8;
    ev.cause = Cause::Builtin as u8;
    let r = Record::from_kernel(&ev, &names(), &clock);
    assert_eq!(r.rule, "builtin:control-api");
    ev.flags = 0;
    let r = Record::from_kernel(&ev, &names(), &clock);
    assert_eq!(r.rule, "builtin:connect", "the proxy, let through");
}

#[test]
fn decodes_a_refused_link_or_rename() {
    let mut ev = event();
    ev.kind = Kind::Link as u8;
    ev.detail = governance_common::LINK_OP_RENAME;
    ev.path = [0; governance_common::EVENT_PATH_LEN];
    ev.path[..3].copy_from_slice(b"key");
    let r = Record::from_kernel(&ev, &names(), &Clock::now());
    assert_eq!((r.kind.as_ref(), r.outcome.as_ref()), ("link", "block"));
    assert_eq!(r.object.path, "key");
    assert_eq!(r.object.detail["op"], "rename");
    assert_eq!(r.rule, "bot/no-wget");
    ev.detail = governance_common::LINK_OP_LINK;
    let r = Record::from_kernel(&ev, &names(), &Clock::now());
    assert_eq!(r.object.detail["op"], "link");
}

#[test]
fn parse_checks_the_record_size() {
    assert!(parse(&[0u8; 3]).is_none());
    let bytes = [0u8; std::mem::size_of::<Event>()];
    assert_eq!(parse(&bytes).unwrap().cgroup_id, 0);
}

#[cfg(test)]
mod schema_tests {
    /// `docs/event.schema.json` is what `governance events --schema` prints: regenerate it with
    /// that command when the record changes.
    #[test]
    fn the_committed_schema_is_current() {
        let schema = schemars::schema_for!(super::Record);
        let now = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let committed = include_str!("../../../docs/event.schema.json");
        assert!(
            committed == now,
            "docs/event.schema.json is stale: run `governance events --schema > docs/event.schema.json`"
        );
    }
}

proptest::proptest! {
    /// A connect's destination is written as `core::fmt` writes the address and port.
    #[test]
    fn a_destination_is_written_as_fmt_writes_it(v4: u32, v6: u128, port: u16, mapped: bool) {
        let ip = if mapped {
            std::net::Ipv4Addr::from(v4).to_ipv6_mapped()
        } else {
            std::net::Ipv6Addr::from(v6)
        };
        let mut ev = event();
        ev.kind = Kind::Connect as u8;
        ev.addr = ip.octets();
        ev.port = port;
        let r = Record::from_kernel(&ev, &names(), &Clock::now());
        let expected = match ip.to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{port}"),
            None => format!("[{ip}]:{port}"),
        };
        proptest::prop_assert_eq!(r.object.dest, expected);
    }
}
