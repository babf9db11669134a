use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::*;

/// The first flight of a real TLS client (rustls) for `name`: what goes on the wire.
fn rustls_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// What curl 7.88 (OpenSSL 3.0) sent for `https://api.payments.example/`, captured on loopback
/// (the proxy's test data).
const CURL_HELLO: &[u8] =
    include_bytes!("../proxy/testdata/curl-7.88-openssl-3.0-client-hello.bin");

/// The query glibc's resolver (`getent ahosts api.anthropic.com`, Debian 13) sent to a stand-in
/// resolver on 127.0.0.1:53 in a network namespace, captured with a UDP socket.
const GLIBC_QUERY: &str = "6c76010000010000000000000361706909616e7468726f70696303636f6d0000010001";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn server_names_of_real_client_hellos() {
    assert_eq!(
        parse::sni(&rustls_hello("API.OpenAI.com")).as_deref(),
        Some("api.openai.com")
    );
    assert_eq!(
        parse::sni(CURL_HELLO).as_deref(),
        Some("api.payments.example")
    );
    // What the program copies is a prefix: one cut before the end is no name (never a wrong one).
    let hello = rustls_hello("api.anthropic.com");
    assert_eq!(parse::sni(&hello[..hello.len() - 1]), None);
    assert_eq!(parse::sni(b"GET / HTTP/1.1\r\n\r\n"), None);
    assert_eq!(parse::sni(&[]), None);
}

#[test]
fn names_of_dns_queries() {
    let q = unhex(GLIBC_QUERY);
    assert_eq!(parse::dns_query(&q).as_deref(), Some("api.anthropic.com"));
    // A response (QR set) is not a query; garbage is nothing.
    let mut r = q.clone();
    r[2] |= 0x80;
    assert_eq!(parse::dns_query(&r), None);
    assert_eq!(parse::dns_query(&q[..10]), None);
    assert_eq!(parse::dns_query(b"\x16\x03\x01"), None);
}

#[test]
fn host_list_matching() {
    let h = Hosts::default();
    assert_eq!(h.matches("api.openai.com"), Some("api.openai.com"));
    assert_eq!(h.matches("API.OPENAI.COM."), Some("api.openai.com"));
    assert_eq!(
        h.matches("myco.openai.azure.com"),
        Some("*.openai.azure.com")
    );
    assert_eq!(
        h.matches("a.b.openai.azure.com"),
        Some("*.openai.azure.com")
    );
    assert_eq!(h.matches("openai.azure.com"), None, "`*.` needs a label");
    assert_eq!(
        h.matches("bedrock-runtime.us-east-1.amazonaws.com"),
        Some("bedrock-runtime.*.amazonaws.com")
    );
    assert_eq!(h.matches("bedrock-runtime.amazonaws.com"), None);
    assert_eq!(
        h.matches("us-central1-aiplatform.googleapis.com"),
        Some("*-aiplatform.googleapis.com")
    );
    for no in [
        "example.org",
        "openai.com",
        "api.openai.com.evil.example",
        "xapi.openai.com",
    ] {
        assert_eq!(h.matches(no), None, "{no}");
    }
    let dir = std::env::temp_dir().join(format!("discover-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("hosts");
    std::fs::write(
        &f,
        "# ours\nllm.internal.example  # the gateway\n*.inference.example\n\n",
    )
    .unwrap();
    let h = Hosts::load(&f).unwrap();
    assert_eq!(
        h.matches("llm.internal.example"),
        Some("llm.internal.example")
    );
    assert_eq!(
        h.matches("eu.inference.example"),
        Some("*.inference.example")
    );
    assert_eq!(
        h.matches("api.openai.com"),
        None,
        "a file replaces the defaults"
    );
    std::fs::write(&f, "ok.example\nbad host\n").unwrap();
    let err = Hosts::load(&f).unwrap_err().to_string();
    assert!(err.contains(":2: `bad host`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn sni_evidence(pid: u32, cgroup: &str, host: &str) -> Evidence {
    Evidence {
        what: "sni".into(),
        value: host.into(),
        matched: host.into(),
        pid,
        comm: "python3".into(),
        cgroup_id: 7,
        cgroup: cgroup.into(),
        attributed: "pid".into(),
        first_seen: "t0".into(),
        last_seen: "t0".into(),
        count: 1,
        ..Default::default()
    }
}

#[test]
fn one_record_per_candidate_and_evidence_per_interval() {
    let mut t = Table::default();
    let t0 = Instant::now();
    let e = sni_evidence(10, "/svc", "api.openai.com");
    assert!(t.see(e.clone(), t0).is_some(), "new: recorded");
    for i in 1..1000 {
        let mut again = e.clone();
        again.last_seen = format!("t{i}");
        assert!(
            t.see(again, t0 + Duration::from_secs(1)).is_none(),
            "a busy process does not flood"
        );
    }
    // Other evidence of the same process, or another process: recorded.
    assert!(
        t.see(sni_evidence(10, "/svc", "api.anthropic.com"), t0)
            .is_some()
    );
    assert!(
        t.see(sni_evidence(11, "/svc", "api.openai.com"), t0)
            .is_some()
    );
    // After the interval: recorded again, with its count.
    let r = t.see(e.clone(), t0 + RECORD_INTERVAL).unwrap();
    assert_eq!((r.count, r.first_seen.as_str()), (1001, "t0"));
    assert_eq!(t.list().len(), 3);
    let rec = record(&r);
    assert_eq!(
        (rec.ty, rec.kind.as_ref()),
        (RecordType::Discovery, "candidate.sni")
    );
    assert!(!rec.denied);
    assert_eq!(rec.candidate.as_ref().unwrap().value, "api.openai.com");
    assert!(rec.message.contains("not enforced"), "{}", rec.message);
    // What the process chose is quoted: a server name with spaces writes no field of its own
    // into the event line (red team round 35's review).
    let forged = record(&sni_evidence(12, "/svc", "x verdict=allow agent=victim"));
    assert!(
        forged
            .message
            .contains("TLS to \"x verdict=allow agent=victim\""),
        "{}",
        forged.message
    );
}

#[test]
fn the_table_is_bounded() {
    let mut t = Table::default();
    let t0 = Instant::now();
    for i in 0..(MAX_CANDIDATES as u32 + 10) {
        t.see(
            sni_evidence(i, "/x", "api.openai.com"),
            t0 + Duration::from_millis(u64::from(i)),
        );
    }
    let list = t.list();
    assert_eq!(list.len(), MAX_CANDIDATES);
    assert!(
        !list.iter().any(|e| e.pid < 10),
        "the least recently seen went first"
    );
}

#[test]
fn suggested_selectors() {
    let e = |cgroup: &str| sni_evidence(1, cgroup, "api.openai.com");
    let s = suggest(&e("/system.slice/support-bot.service"));
    assert!(
        s.starts_with("# support-bot.service's cgroup is made again each time it restarts")
            && s.contains("Slice=support-bot-agent.slice")
            && s.ends_with("agents:\n  cgroup: system.slice/support-bot.service"),
        "{s}"
    );
    assert_eq!(
        suggest(&e("/agents.slice/support-bot.scope")),
        "agents:\n  cgroup: agents.slice/support-bot.scope"
    );
    let s = suggest(&e("/"));
    assert!(
        s.contains("root cgroup") && s.ends_with("cgroup: system.slice/my-agent.scope"),
        "{s}"
    );
    let s = suggest(&e("/user.slice/user-0.slice/session-3.scope"));
    assert!(
        s.starts_with("# user.slice/user-0.slice/session-3.scope is a login session"),
        "{s}"
    );
    let pod = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_0000_4000_8000_00000000abcd.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
    let s = suggest(&e(pod));
    assert!(s.contains("pod_labels"), "{s}");
    assert!(
        s.ends_with("cgroup: kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_0000_4000_8000_00000000abcd.slice"),
        "{s}"
    );
    let (c, p) = procs::container_of(pod);
    assert_eq!(
        c,
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(p, "0a1b2c3d-0000-4000-8000-00000000abcd");
    let podman = format!("/machine.slice/libpod-{}.scope/container", "ab".repeat(32));
    assert_eq!(
        procs::container_of(&podman),
        ("ab".repeat(32), String::new())
    );
    // Grouping: by pod, container, then cgroup.
    let groups = api::groups(vec![e(pod), e("/a.service"), e("/a.service"), e(&podman)]);
    let keys: Vec<(&str, &str)> = groups
        .iter()
        .map(|g| (g.by.as_str(), g.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("cgroup", "/a.service"),
            ("container", "ab".repeat(32).as_str()),
            ("pod", "0a1b2c3d-0000-4000-8000-00000000abcd"),
        ]
    );
    assert_eq!(groups[0].evidence.len(), 2);
}

#[test]
fn framework_and_mcp_words() {
    let hit = |w: &str, list| procs::word_names_for_test(w, list);
    assert_eq!(hit("langchain_core", procs::FRAMEWORKS), Some("langchain"));
    assert_eq!(hit("crewai", procs::FRAMEWORKS), Some("crewai"));
    assert_eq!(
        hit(
            "/srv/venv/lib/python3.12/site-packages/llama_index/core/x.py",
            procs::FRAMEWORKS
        ),
        Some("llama_index")
    );
    assert_eq!(
        hit(
            "/app/node_modules/@modelcontextprotocol/sdk/dist/index.js",
            procs::MCP
        ),
        Some("@modelcontextprotocol")
    );
    assert_eq!(
        hit("@modelcontextprotocol/server-filesystem", procs::MCP),
        Some("@modelcontextprotocol")
    );
    assert_eq!(hit("mcp-server-git", procs::MCP), Some("mcp-server"));
    assert_eq!(hit("mcp", procs::MCP), Some("mcp"));
    // Generic words alone are not evidence.
    assert_eq!(hit("agents/refund-1", procs::FRAMEWORKS), None);
    assert_eq!(hit("ai", procs::FRAMEWORKS), None);
    assert_eq!(hit("mcpd.conf", procs::MCP), None);
    assert_eq!(
        hit(
            "/usr/lib/python3/dist-packages/agents/run.py",
            procs::FRAMEWORKS
        ),
        Some("agents")
    );
}
