use super::*;

fn one(text: &str) -> Result<PolicySet, PolicyError> {
    parse(&[(PathBuf::from("p.yaml"), text.to_owned())])
}

fn problems(text: &str) -> Vec<String> {
    match one(text) {
        Err(PolicyError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

const HEAD: &str = "name: p\nagents: { cgroup: agents/a }\nrules:\n";

#[test]
fn parses_every_kind_with_its_details() {
    let set = one(&format!(
        "{HEAD}  - id: e\n    exec: {{ prefix: /usr/local/bin }}\n    verdict: block\n    reason: r\n\
         \x20 - id: f\n    file: {{ path: /etc/shadow, access: [read] }}\n    verdict: block\n    reason: r\n\
         \x20 - id: n\n    network: {{ cidr: 10.0.0.0/8, ports: [443, 8000-8999], protocol: tcp }}\n    verdict: allow\n    reason: r\n\
         \x20 - id: h\n    http: {{ host: '*.Stripe.com', method: post, path: /v1/**, headers: {{ X-Env: prod* }} }}\n    verdict: throttle\n    throttle: {{ rate: 5, per: 1m, key: agent }}\n    reason: r\n"
    ))
    .unwrap();
    let p = &set.policies[0];
    assert_eq!(p.rules.len(), 4);
    assert_eq!(p.rules[0].id, "p/e");
    assert_eq!(p.rules[0].at.line, 4);
    assert!(
        matches!(&p.rules[0].matcher, Matcher::Exec(PathMatch::Prefix(d)) if d == Path::new("/usr/local/bin"))
    );
    let Matcher::Network {
        nets,
        ports,
        protocol,
        ..
    } = &p.rules[2].matcher
    else {
        panic!()
    };
    assert_eq!(
        (nets.len(), ports.as_slice(), *protocol),
        (1, &[(443, 443), (8000, 8999)][..], Protocol::Tcp)
    );
    let Matcher::Http(h) = &p.rules[3].matcher else {
        panic!()
    };
    assert_eq!(h.host, HostMatch::Suffix(".stripe.com".into()));
    assert_eq!(h.methods, ["POST"]);
    assert_eq!(h.headers, [("x-env".to_owned(), "prod*".to_owned())]);
    assert_eq!(
        p.rules[3].throttle,
        Some(Throttle {
            rate: 5,
            per: Duration::from_secs(60),
            key: ThrottleKey::Agent
        })
    );
}

/// A policy's rule list is pointers, sized to its rules: not the buffer the rules were made
/// in (a `Vec<Rule>` mapped into `Arc`s collects in place and keeps it, a few hundred bytes per
/// rule held for as long as the policy enforces: 3.5 MiB of a daemon with 10,000 rules).
#[test]
fn a_policy_holds_its_rules_without_the_buffer_they_were_made_in() {
    let set = one(&many_rules(200, 2, 7)).unwrap();
    let rules = &set.policies[0].rules;
    assert_eq!(rules.len(), 201);
    assert!(
        rules.capacity() <= rules.len(),
        "room for {} rule pointers, for {} rules",
        rules.capacity(),
        rules.len()
    );
}

/// A rule's room in memory: every one is held for as long as it enforces (10,000 rules of 1,000
/// agents in the daemon memory benchmark). An HTTP matcher, four times the size of the others,
/// is boxed, and a rule's location shares its file's name with every other location there.
#[test]
fn a_rule_takes_little_room_and_shares_its_file_name() {
    assert!(
        size_of::<Matcher>() <= 64,
        "a matcher takes {} bytes",
        size_of::<Matcher>()
    );
    assert!(
        size_of::<Rule>() <= 256,
        "a rule takes {} bytes",
        size_of::<Rule>()
    );
    let set = one(&many_rules(3, 2, 7)).unwrap();
    let rules = &set.policies[0].rules;
    assert!(
        rules
            .windows(2)
            .all(|w| Arc::ptr_eq(&w[0].at.file, &w[1].at.file)),
        "one file name for every rule of the file"
    );
}

#[test]
fn several_documents_per_file_keep_their_line_numbers() {
    let text = format!(
        "{HEAD}  []\n---\nname: q\nagents: {{ label: bot }}\nrules:\n  - id: x\n    exec: {{ path: rel }}\n    verdict: block\n    reason: r\n"
    );
    let errs = problems(&text.replace("rules:\n  []", "rules: []"));
    assert_eq!(errs, ["p.yaml:9:19: exec: `rel` is not an absolute path"]);
}

#[test]
fn every_problem_is_reported_and_nothing_applies() {
    let errs = problems(&format!(
        "{HEAD}  - id: a\n    exec: {{ path: /bin/a, prefix: /bin }}\n    verdict: sandbox\n    reason: ''\n\
         \x20 - id: b\n    network: {{ cidr: 10.0.0.1/8, ports: 0 }}\n    verdict: block\n    reason: r\n\
         \x20 - id: c\n    http: {{ host: 'bad host', method: 'P0ST' }}\n    verdict: escalate\n    escalate: {{ timeout: soon }}\n    reason: r\n\
         \x20 - id: d\n    verdict: allow\n    reason: r\n    throttle: {{ rate: 1, per: 1s }}\n\
         \x20 - {{ id: e, http: {{ method: [GET, 'P0ST'] }}, verdict: allow, reason: r }}\n"
    ));
    let all = errs.join("\n");
    for needle in [
        "a rule needs a reason",
        "give exactly one of `path` or `prefix`",
        "`verdict: sandbox` needs a `sandbox:` block",
        "host bits set",
        "bad port or range `0`",
        "host `bad host`",
        "`P0ST` is not an HTTP method",
        "bad duration `soon`",
        "give exactly one of `exec`, `file`, `network`, `http`, `unix` or `sequence`",
        "`throttle` settings only go with `verdict: throttle`",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

/// Red team round 27: paths the kernel never names (a file with a trailing `/`, `//`) and
/// patterns taken as literal names (`*`, `?`) made rules that `policy test` said block while
/// the kernel matched nothing with them. Each is an error at its place.
#[test]
fn paths_the_kernel_never_names_are_errors() {
    for (matcher, why) in [
        (
            "exec: { path: /opt/tool/ }",
            "ends in `/` and so names no file",
        ),
        (
            "file: { path: /srv/secret.txt/ }",
            "ends in `/` and so names no file",
        ),
        ("exec: { prefix: /opt//bin/ }", "empty segment (`//`)"),
        ("file: { path: /srv//secret.txt }", "empty segment (`//`)"),
        ("file: { prefix: '/home/*/.ssh/' }", "literal, not patterns"),
        ("file: { path: '/home/**/id_rsa' }", "literal, not patterns"),
        ("unix: { path: '/run/x?.sock' }", "literal, not patterns"),
    ] {
        let errs = problems(&format!(
            "name: p\nagents: {{ cgroup: a }}\nrules:\n  - {{ id: r, {matcher}, verdict: block, reason: r }}\n"
        ));
        assert!(
            errs.len() == 1 && errs[0].contains(why),
            "{matcher}: {errs:?}"
        );
        assert!(errs[0].starts_with("p.yaml:4:"), "{matcher}: {errs:?}");
    }
    // The controls: a directory's prefix with or without its `/`, and `/` itself.
    for matcher in [
        "file: { prefix: /srv/data/ }",
        "file: { prefix: /srv/data }",
        "file: { prefix: / }",
        "exec: { path: /opt/tool }",
    ] {
        let ok = one(&format!(
            "name: p\nagents: {{ cgroup: a }}\nrules:\n  - {{ id: r, {matcher}, verdict: block, reason: r }}\n"
        ));
        assert!(ok.is_ok(), "{matcher}: {ok:?}");
    }
}

#[test]
fn selectors_must_be_able_to_match() {
    for (sel, why) in [
        ("{}", "empty selector"),
        ("{ cgroup: '' }", "root itself"),
        ("{ cgroup: a//b }", "segments never name"),
        ("{ cgroup: a/cgroup.procs }", "interface files"),
        ("{ label: '' }", "1 to 255 printable"),
        (
            "{ pod_labels: { app: x } }",
            "field `app`, expected `matchLabels`",
        ),
        (
            "{ pod_labels: { matchLabels: { app: 'a b' } } }",
            "value `a b`",
        ),
        ("{ namespace: Agents }", "not a DNS label"),
        ("{ service_account: 'a_b' }", "not a DNS subdomain"),
    ] {
        let errs = problems(&format!("name: p\nagents: {sel}\n"));
        assert!(errs[0].contains(why), "{sel}: {errs:?}");
        assert!(errs[0].starts_with("p.yaml:2:"), "{sel}: {errs:?}");
    }
}

#[test]
fn duplicate_policy_names_are_rejected_across_files() {
    let err = parse(&[
        ("a.yaml".into(), "name: p\nagents: { label: x }\n".into()),
        ("b.yaml".into(), "name: p\nagents: { label: y }\n".into()),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("b.yaml:1:7: policy `p` is already defined at a.yaml:1:7"),
        "{err}"
    );
}

#[test]
fn agent_keyed_throttles_must_share_one_rate() {
    let policy = |name: &str, rate: u32, per: &str| {
        format!(
            "name: {name}\nagents: {{ label: x }}\nrules:\n\
             \x20 - {{ id: t, network: {{ cidr: 10.0.0.0/8 }}, verdict: throttle, \
             throttle: {{ rate: {rate}, per: {per}, key: agent }}, reason: r }}\n"
        )
    };
    // One bucket per agent: a fast rule would fill a slow one's (red team round 24).
    let err = parse(&[
        ("a.yaml".into(), policy("fast", 1000, "1m")),
        ("b.yaml".into(), policy("slow", 2, "1h")),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("b.yaml:4:")
            && err.contains("share one bucket per agent")
            && err.contains("`fast/t` at a.yaml:4:"),
        "{err}"
    );
    // Controls: the same rate and window, and a different rate keyed per rule.
    parse(&[
        ("a.yaml".into(), policy("fast", 1000, "1m")),
        ("b.yaml".into(), policy("slow", 1000, "1m")),
    ])
    .unwrap();
    parse(&[
        ("a.yaml".into(), policy("fast", 1000, "1m")),
        (
            "b.yaml".into(),
            policy("slow", 2, "1h").replace("key: agent", "key: agent_rule"),
        ),
    ])
    .unwrap();
}

#[test]
fn too_many_rules_is_an_error() {
    let rule = "  - { id: rNUM, exec: { path: /bin/xNUM }, verdict: block, reason: r }\n";
    let mut text = String::from(HEAD);
    for i in 0..=MAX_RULES {
        text.push_str(&rule.replace("NUM", &i.to_string()));
    }
    let errs = problems(&text);
    assert!(errs[0].contains("the limit is"), "{errs:?}");
}

#[test]
fn networks_durations_and_ports() {
    let v4: IpNet = "10.0.0.0/8".parse().unwrap();
    assert!(v4.contains("10.255.0.1".parse().unwrap()));
    assert!(v4.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!v4.contains("11.0.0.1".parse().unwrap()));
    let v6: IpNet = "fd00::/8".parse().unwrap();
    assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
    let all: IpNet = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("1.2.3.4".parse().unwrap()) && !all.contains("2001::1".parse().unwrap()));
    assert!("10.0.0.1/33".parse::<IpNet>().is_err());
    assert!("::1/129".parse::<IpNet>().is_err());
    // The IPv4-mapped spelling of an IPv4 network is that network, NAT64 spelling included
    // (red team round 34).
    let mapped: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
    assert_eq!(mapped, v4);
    assert_eq!(
        "::ffff:127.0.0.6".parse::<IpNet>().unwrap(),
        "127.0.0.6/32".parse::<IpNet>().unwrap()
    );
    assert!(mapped.contains("64:ff9b::a01:203".parse().unwrap()));
    assert_eq!(mapped.ipv6_networks().count(), 2);
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    assert!(parse_duration("0s").is_err() && parse_duration("5w").is_err());
    // The same grammar, with zero: how far back `since` goes.
    assert_eq!(parse_span("0s").unwrap(), Duration::ZERO);
    assert_eq!(parse_span("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_span("5w").is_err() && parse_span("m").is_err());
    assert_eq!(parse_ports("80").unwrap(), (80, 80));
    assert!(parse_ports("9-8").is_err() && parse_ports("70000").is_err());
}

/// The deliberately broken policies in tests/policies/broken: each file says, in its first
/// line, the `line:col: message` it must be rejected with.
#[test]
fn broken_policy_files_fail_with_the_right_place_and_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/policies/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 10, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .unwrap();
        let (at, message) = expect.split_at(expect.find(": ").unwrap());
        let err = match parse(&[(file.clone(), text.clone())]) {
            Err(PolicyError::Invalid(p)) => p,
            other => panic!("{}: expected a problem, got {other:?}", file.display()),
        };
        assert_eq!(err.len(), 1, "{}: {err:?}", file.display());
        let got = err[0].to_string();
        let want_prefix = format!("{}:{at}: ", file.display());
        assert!(
            got.starts_with(&want_prefix),
            "{got}\nwanted prefix {want_prefix}"
        );
        assert!(got.contains(&message[2..]), "{got}\nwanted {message}");
    }
}

#[test]
fn the_shipped_policies_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let set = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(set.policies.len() >= 6, "{}", set.policies.len());
}

#[test]
fn the_json_schema_names_the_fields() {
    let schema = serde_json::to_string(&schemars::schema_for!(model::PolicyDoc)).unwrap();
    for field in [
        "agents",
        "defaults",
        "sandbox_profiles",
        "verdict",
        "escalate",
        "mcp",
        "intercept_tls",
    ] {
        assert!(schema.contains(field), "{field}");
    }
}

#[test]
fn load_dir_names_the_directory_and_recurses() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(load_dir(dir.path()), Err(PolicyError::Empty(_))));
    assert!(matches!(
        load_dir(&dir.path().join("nope")),
        Err(PolicyError::Dir { .. })
    ));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/a.yaml"), "name: [").unwrap();
    let err = load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("sub/a.yaml:2:1: "), "{err}");
}

#[test]
fn links_out_of_the_policy_directory_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = "name: p\nagents: { label: x }\n";
    std::fs::write(outside.path().join("a.yaml"), policy).unwrap();
    // A ConfigMap's shape: a file linked into a dot directory of the policy directory itself.
    std::fs::create_dir(dir.path().join("..2026_12_06")).unwrap();
    std::fs::write(
        dir.path().join("..2026_12_06/b.yaml"),
        policy.replace("p\n", "q\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_12_06", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/b.yaml", dir.path().join("b.yaml")).unwrap();
    assert_eq!(load_dir(dir.path()).unwrap().policies.len(), 1);
    // A file, a directory and a missing file outside it: an agent could write there (red team
    // round 24), so nothing is read.
    for (link, target) in [
        ("a.yaml", outside.path().join("a.yaml")),
        ("team", outside.path().to_path_buf()),
        ("c.yaml", outside.path().join("missing.yaml")),
    ] {
        let at = dir.path().join(link);
        std::os::unix::fs::symlink(&target, &at).unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        assert!(matches!(err, PolicyError::Outside { .. }), "{link}: {err}");
        assert!(
            err.to_string().contains("outside the policy directory"),
            "{err}"
        );
        std::fs::remove_file(&at).unwrap();
    }
}

#[test]
fn every_typo_of_a_file_is_reported_with_its_place() {
    let errs = problems(&format!(
        "{HEAD}  - id: a\n    exec: {{ path: /bin/a }}\n    verdict: blok\n    reason: r\n\
         \x20 - id: b\n    exec: {{ path: /bin/b }}\n    verdict: block\n    reasn: r\n\
         \x20 - id: c\n    file: {{ path: /etc/x, access: [read, wirte] }}\n    verdict: block\n    reason: r\n\
         \x20 - id: d\n    network: {{ cidr: 10.0.0.0/8, via_proxy: maybe }}\n    verdict: block\n    reason: r\n"
    ));
    assert_eq!(
        errs,
        [
            "p.yaml:6:14: rules[0].verdict: unknown variant `blok`, expected one of `allow`, `throttle`, `sandbox`, `escalate`, `block`",
            "p.yaml:11:5: rules[1].reasn: Unknown field `reasn`, expected one of `id`, `verdict`, `reason`, `mode`, `exec`, `file`, `network`, `http`, `unix`, `sequence`, `throttle`, `escalate`, `sandbox`, or `report`",
            "p.yaml:13:42: rules[2].file.access[1]: unknown variant `wirte`, expected one of `read`, `write`, `create`, `truncate`, `exec`",
            "p.yaml:17:45: rules[3].network.via_proxy: Value was not a boolean",
        ]
    );
}

#[test]
fn problems_in_one_rule_and_around_it_are_all_reported() {
    // Two typos in one rule, one in the policy, and a rule that reads fine but is invalid:
    // each is reported once, in file order, and a misspelt required field is not also
    // reported missing.
    let errs = problems(
        "name: p\ndescripton: x\nagents: { cgroup: agents/a }\nrules:\n\
         \x20 - id: a\n    exec: { path: /bin/a }\n    verdit: block\n    reason: r\n    mdoe: shadow\n\
         \x20 - id: b\n    exec: { path: bin/b }\n    verdict: block\n    reason: r\n",
    );
    let at: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        at,
        ["p.yaml:2:1", "p.yaml:7:5", "p.yaml:9:5", "p.yaml:11:19"],
        "{errs:#?}"
    );
    assert!(errs[0].contains("Unknown field `descripton`"), "{errs:?}");
    assert!(errs[1].contains("rules[0].verdit: Unknown field `verdit`"));
    assert!(errs[2].contains("rules[0].mdoe: Unknown field `mdoe`"));
    assert!(errs[3].contains("exec: `bin/b` is not an absolute path"));
}

#[test]
fn unix_rules_name_a_socket_file_or_an_abstract_name() {
    let set = one(
        "name: p\nagents: { cgroup: agents/a }\ndefaults: { unix: block }\n\
         kernel: { allow_runtime_sockets: true }\nrules:\n\
         \x20 - { id: bus, unix: { path: /run/user/1000/bus }, verdict: escalate, escalate: { timeout: 5m }, reason: r }\n\
         \x20 - { id: x11, unix: { abstract: /tmp/.X11-unix/X0 }, verdict: block, reason: r }\n",
    )
    .unwrap();
    let p = &set.policies[0];
    assert_eq!(p.defaults.get(&Kind::Unix), Some(&Posture::Block));
    assert_eq!(p.allow_runtime_sockets, Some(true));
    assert!(
        matches!(&p.rules[0].matcher, Matcher::Unix(UnixTarget::Path(s)) if s == Path::new("/run/user/1000/bus"))
    );
    assert_eq!(p.rules[0].matcher.kind(), Kind::Unix);
    assert!(
        matches!(&p.rules[1].matcher, Matcher::Unix(UnixTarget::Abstract(n)) if n == b"/tmp/.X11-unix/X0")
    );
    assert_eq!(
        UnixTarget::Abstract(b"x".to_vec()).display(),
        "@x",
        "as ss shows it"
    );

    let long = "n".repeat(governance_common::SUN_PATH_LEN);
    let errs = problems(&format!(
        "{HEAD}  - {{ id: a, unix: {{ path: run/x.sock }}, verdict: block, reason: r }}\n\
         \x20 - {{ id: b, unix: {{ path: /x, abstract: y }}, verdict: block, reason: r }}\n\
         \x20 - {{ id: c, unix: {{ abstract: '' }}, verdict: block, reason: r }}\n\
         \x20 - {{ id: d, unix: {{ abstract: {long} }}, verdict: block, reason: r }}\n\
         \x20 - {{ id: e, unix: {{ path: /x }}, exec: {{ path: /x }}, verdict: block, reason: r }}\n\
         \x20 - {{ id: f, unix: {{ prefix: /run }}, verdict: block, reason: r }}\n"
    ));
    let all = errs.join("\n");
    assert!(
        all.contains("unix: `run/x.sock` is not an absolute path"),
        "{all}"
    );
    assert!(
        all.contains("unix: give exactly one of `path` or `abstract`"),
        "{all}"
    );
    assert!(all.contains("an abstract name is 1 to 107 bytes"), "{all}");
    assert!(
        all.contains("exactly one of `exec`, `file`, `network`, `http`, `unix` or `sequence`"),
        "{all}"
    );
    assert!(all.contains("Unknown field `prefix`"), "{all}");
    assert_eq!(errs.len(), 6, "{all}");
}

#[test]
fn capabilities_to_give_back_are_checked_by_name_with_their_place() {
    let set = one(
        "name: p\nagents: { cgroup: agents/a }\n\
         kernel: { allow_capabilities: [CAP_NET_ADMIN, sys_time], allow_mounts: true, allow_loader_exec: false }\n",
    )
    .unwrap();
    let p = &set.policies[0];
    use governance_common::caps::{NET_ADMIN, SYS_TIME};
    assert_eq!(p.allow_capabilities, Some(1 << NET_ADMIN | 1 << SYS_TIME));
    assert_eq!(
        (p.allow_mounts, p.allow_loader_exec),
        (Some(true), Some(false))
    );
    let errs = problems(
        "name: p\nagents: { cgroup: agents/a }\n\
         kernel:\n  allow_capabilities:\n    - CAP_NET_ADMIN\n    - CAP_NET_ADMN\n    - CAP_CHOWN\n",
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "p.yaml:6:7: kernel.allow_capabilities: `CAP_NET_ADMN` is not a capability"
        ),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with(
            "p.yaml:7:7: kernel.allow_capabilities: agents are never refused CAP_CHOWN"
        ),
        "{errs:?}"
    );
    assert!(errs[1].contains("CAP_SYS_ADMIN"), "{errs:?}");
}

/// The content hash is what `sha256sum FILES | sha256sum` prints for the policy files, and
/// any change of a byte changes it.
#[test]
fn the_content_hash_is_reproducible_with_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let a = format!(
        "{HEAD}  - id: a\n    exec: {{ path: /bin/a }}\n    verdict: block\n    reason: r\n"
    );
    let b = a.replace("name: p", "name: q").replace("id: a", "id: b");
    std::fs::write(dir.path().join("a.yaml"), &a).unwrap();
    std::fs::write(dir.path().join("sub/b.yml"), &b).unwrap();
    std::fs::write(dir.path().join("a.tests.yaml"), "not a policy").unwrap();
    let (_, hash) =
        load_dir_hashed(dir.path(), &mut Parsed::default()).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("sha256sum a.yaml sub/b.yml | sha256sum")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let expected = String::from_utf8(out.stdout).unwrap();
    assert_eq!(Some(hash.as_str()), expected.split_whitespace().next());
    std::fs::write(
        dir.path().join("a.yaml"),
        a.replace("reason: r", "reason: s"),
    )
    .unwrap();
    assert_ne!(
        load_dir_hashed(dir.path(), &mut Parsed::default())
            .unwrap()
            .1,
        hash
    );
}

/// Issue 17, reload: a daemon re-reading its policies parses only the documents whose text or
/// place changed; the others are the very policies of the previous read.
/// A file that is one document: `load_dir_hashed` knows the document by the file's hash (it
/// hashed the file already), the same key as the document's own hash: reused when unchanged,
/// read again when changed.
#[test]
fn a_document_that_is_its_whole_file_is_known_by_the_file_hash() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.yaml");
    let text = |exec: &str| {
        format!(
            "name: a\nagents: {{ cgroup: agents/a }}\nrules:\n  - {{ id: r, exec: {{ path: {exec} }}, verdict: block, reason: r }}\n"
        )
    };
    std::fs::write(&file, text("/bin/x")).unwrap();
    let mut parsed = Parsed::default();
    // Read first as `parse` does (hashing the document), then as the daemon does.
    let first = parse_reusing(&[(file.clone(), text("/bin/x"))], &mut parsed).unwrap();
    let (second, _) = load_dir_hashed(dir.path(), &mut parsed).unwrap();
    assert!(Arc::ptr_eq(&first.policies[0], &second.policies[0]));
    std::fs::write(&file, text("/bin/y")).unwrap();
    let (third, _) = load_dir_hashed(dir.path(), &mut parsed).unwrap();
    assert!(!Arc::ptr_eq(&second.policies[0], &third.policies[0]));
    assert!(
        matches!(&third.policies[0].rules[0].matcher, Matcher::Exec(PathMatch::Exact(p)) if p == Path::new("/bin/y"))
    );
    let (fourth, _) = load_dir_hashed(dir.path(), &mut parsed).unwrap();
    assert!(Arc::ptr_eq(&third.policies[0], &fourth.policies[0]));
}

#[test]
fn a_reread_reuses_unchanged_documents_and_reads_changed_and_moved_ones() {
    use std::sync::Arc;
    let doc = |name: &str, exec: &str, extra: &str| {
        format!(
            "name: {name}\nagents: {{ cgroup: agents/{name} }}\n{extra}rules:\n  - {{ id: r, exec: {{ path: {exec} }}, verdict: block, reason: r }}\n"
        )
    };
    let file = |a: &str, b: &str| vec![(PathBuf::from("p.yaml"), format!("{a}---\n{b}"))];
    let mut parsed = Parsed::default();
    let read = |sources: Vec<(PathBuf, String)>, parsed: &mut Parsed| {
        parse_reusing(&sources, parsed).unwrap_or_else(|e| panic!("{e}"))
    };
    let first = read(
        file(&doc("a", "/bin/x", ""), &doc("b", "/bin/y", "")),
        &mut parsed,
    );
    // b's rule changed: b is read again, a is reused.
    let second = read(
        file(&doc("a", "/bin/x", ""), &doc("b", "/bin/z", "")),
        &mut parsed,
    );
    assert!(
        Arc::ptr_eq(&first.policies[0], &second.policies[0]),
        "a unchanged"
    );
    assert!(
        !Arc::ptr_eq(&first.policies[1], &second.policies[1]),
        "b changed"
    );
    assert!(
        matches!(&second.policies[1].rules[0].matcher, Matcher::Exec(PathMatch::Exact(p)) if p == Path::new("/bin/z"))
    );
    // a grows by a line: b's text is the same but it moved, so it is read again and its
    // positions follow.
    let third = read(
        file(
            &doc("a", "/bin/x", "description: d\n"),
            &doc("b", "/bin/z", ""),
        ),
        &mut parsed,
    );
    assert!(
        !Arc::ptr_eq(&second.policies[1], &third.policies[1]),
        "b moved"
    );
    assert_eq!(third.policies[1].at.line, second.policies[1].at.line + 1);
    assert_eq!(
        third.policies[1].rules[0].at.line,
        second.policies[1].rules[0].at.line + 1
    );
    // A document with a problem is not kept: it is reported at every read.
    let bad = file(&doc("a", "/bin/x", ""), "name: c\nrules: 5\n");
    for _ in 0..2 {
        assert!(parse_reusing(&bad, &mut parsed).is_err());
    }
    // The same document under another file name is read again (its problems name the file).
    let other = vec![(
        PathBuf::from("q.yaml"),
        format!("{}---\n{}", doc("a", "/bin/x", ""), doc("b", "/bin/z", "")),
    )];
    let fourth = read(other, &mut parsed);
    assert!(!Arc::ptr_eq(&first.policies[0], &fourth.policies[0]));
    assert_eq!(fourth.policies[0].file, Path::new("q.yaml"));
}

/// Documents are split at `---` lines (trailing blanks allowed), each with the number of its
/// first line; comment-only documents are dropped. A file with CRLF line ends reads as the same
/// policies, at the same positions, and its problems are reported at the same places.
#[test]
fn documents_split_at_marker_lines_and_crlf_reads_the_same() {
    let text = "# head\n---\nname: a\n---  \n# only a comment\n---\nname: b\nx: |\n  ---\n";
    let docs = super::load::documents(text);
    let firsts: Vec<usize> = docs.iter().map(|d| d.0).collect();
    assert_eq!(firsts, [2, 6], "{docs:?}");
    assert_eq!(docs[0].1, "name: a\n");
    assert_eq!(docs[1].1, "name: b\nx: |\n  ---\n");
    let lf = "name: a\nagents: { cgroup: agents/a }\nrules:\n  - { id: r, exec: { path: /bin/x }, verdict: block, reason: r }\n---\nname: b\nagents: { cgroup: agents/b }\nrules:\n  - id: s\n    exec: { path: /bin/y }\n    verdict: allow\n    reason: |\n      two\n      lines\n";
    let crlf = lf.replace('\n', "\r\n");
    let read = |t: &str| parse(&[(PathBuf::from("p.yaml"), t.to_owned())]);
    let (a, b) = (read(lf).unwrap(), read(&crlf).unwrap());
    assert_eq!(a.policies.len(), 2);
    for (p, q) in a.policies.iter().zip(&b.policies) {
        assert_eq!(p.name, q.name);
        assert_eq!(p.at, q.at);
        for (r, s) in p.rules.iter().zip(&q.rules) {
            assert_eq!((&r.id, &r.at, &r.reason), (&s.id, &s.at, &s.reason));
        }
    }
    assert!(b.policies[1].rules[0].reason.starts_with("two\nlines"));
    let bad = lf.replace("verdict: allow", "verdict: maybe");
    let (e1, e2) = (
        read(&bad).unwrap_err().to_string(),
        read(&bad.replace('\n', "\r\n")).unwrap_err().to_string(),
    );
    assert_eq!(e1, e2);
    assert!(e1.contains("p.yaml:11:"), "{e1}");
}

/// A document of `n` rules in every style the format allows (flow and block mappings, folded
/// and literal reasons, quoted and plain strings, comments and blank lines between and inside
/// items, nested sequences), with the `rules:` items at `indent` spaces.
fn many_rules(n: usize, indent: usize, seed: u64) -> String {
    let pad = " ".repeat(indent);
    let mut y = String::from(
        "# generated\nname: big\ndescription: many rules\nagents: { cgroup: agents/big }\ndefaults: { exec: allow, file: allow, network: allow, http: block }\nsandbox_profiles:\n  jail: { network: none }\nrules:  # the rules\n",
    );
    y.push_str(&pad);
    y.push_str("- { id: jailed, exec: { prefix: /opt/jailed }, verdict: sandbox, sandbox: { profile: jail }, reason: j }\n");
    for i in 0..n {
        let k = (i as u64).wrapping_mul(seed | 1) % 7;
        let item = match k {
            0 => format!(
                "- {{ id: r{i}, exec: {{ path: /opt/x/{i} }}, verdict: block, reason: r{i} }}\n"
            ),
            1 => format!(
                "- id: r{i}\n  file: {{ path: /srv/d/{i}.txt, access: [read, write] }}\n  verdict: block\n  reason: \"quoted # not a comment {i}\"\n"
            ),
            2 => format!(
                "- id: r{i}\n  network:\n    cidr: 10.0.{k}.0/24\n    ports: [443, 8000-8999]\n    protocol: tcp\n  verdict: allow\n  reason: |\n    literal {i}\n    - not an item\n\n    rules: not a key\n"
            ),
            3 => format!(
                "# a comment before r{i}\n\n- id: r{i}\n  http: {{ host: api{i}.example, method: POST, path: /v1/*, body: ['$.amount > {i}'] }}\n  verdict: escalate\n  escalate: {{ timeout: 10m, on_timeout: block }}\n  reason: >\n    folded\n    reason {i}\n"
            ),
            4 => format!(
                "-\n  id: r{i}\n  exec: {{ prefix: /opt/p/{i} }}\n  verdict: block\n  reason: 'single ''quoted'' {i}'\n"
            ),
            5 => format!(
                "- id: r{i}   # trailing comment\n  network: {{ cidr: 'fd00::{i:x}/128', ports: 53, protocol: udp }}\n  verdict: throttle\n  throttle: {{ rate: 60, per: 1m, key: agent }}\n  reason: \"two\n    lines {i}\"\n"
            ),
            _ => format!(
                "- id: r{i}\n  file:\n    prefix: /srv/t/{i}\n    access:\n      - read\n      - exec\n  verdict: block\n  reason: plain\n    continued {i}\n"
            ),
        };
        for line in item.split_inclusive('\n') {
            if line.trim().is_empty() || line.starts_with('#') {
                y.push_str(line);
            } else {
                y.push_str(&pad);
                y.push_str(line);
            }
        }
    }
    y.push_str("# after the rules\nmode: enforce\n");
    y
}

/// A small deterministic generator (xorshift), so that each case can be named by its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One edit of `text`: the usual ones (a value changed, an item added, removed or moved) and
/// hostile ones (lines that look like items or keys, quotes and brackets left open, indentation
/// changed, tabs, anchors, duplicate keys, document markers, bytes anywhere).
fn edit(text: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    let at = rng.below(lines.len());
    let inserted = [
        "  - { id: added, exec: { path: /opt/added }, verdict: block, reason: added }\n",
        "  - not a rule\n",
        "- { id: outdented, exec: { path: /opt/o }, verdict: block, reason: o }\n",
        "    reason: \"left open\n",
        "    reason: [left, open\n",
        "  - \"closes a string\"\n",
        "rules:\n",
        "rules :\n",
        "---\n",
        "...\n",
        "x: 1\n",
        "# a comment at column 0\n",
        "\t- { id: tab, exec: { path: /opt/t }, verdict: block, reason: t }\n",
        "  - &anchor { id: a, exec: { path: /opt/a }, verdict: block, reason: a }\n",
        "  - *anchor\n",
        "    verdict: allow\n",
        "    id: duplicate\n",
        "    reason: |\n",
        "      indented text\n",
        "\n",
        "description: \"open\n",
        "  - !tag { id: g, exec: { path: /opt/g }, verdict: block, reason: g }\n",
    ];
    match rng.below(8) {
        // A value changed: a digit, a verdict, a path.
        0 | 1 => {
            let line = &mut lines[at];
            for (from, to) in [
                ("443", "8443"),
                ("block", "allow"),
                ("/opt", "/usr"),
                ("1", "7"),
            ] {
                if line.contains(from) {
                    *line = line.replacen(from, to, 1);
                    break;
                }
            }
        }
        2 | 3 => lines.insert(at, inserted[rng.below(inserted.len())].to_owned()),
        4 => {
            lines.remove(at);
        }
        5 => {
            // Indentation changed by one or two spaces.
            let line = &mut lines[at];
            match rng.below(3) {
                0 => line.insert(0, ' '),
                1 => line.insert_str(0, "  "),
                _ => {
                    if line.starts_with(' ') {
                        line.remove(0);
                    }
                }
            }
        }
        6 => {
            // A line moved elsewhere.
            let line = lines.remove(at);
            let to = rng.below(lines.len() + 1);
            lines.insert(to, line);
        }
        _ => {
            // A byte anywhere.
            let line = &mut lines[at];
            let pos = rng.below(line.len() + 1);
            let pos = (0..=pos)
                .rev()
                .find(|&p| line.is_char_boundary(p))
                .unwrap_or(0);
            let c = [
                '"', '\'', '[', '{', ']', '}', ':', '#', '-', ' ', '|', '>', '&', '*', '!', '\t',
                '\n', 'x', '%', '@', '`',
            ][rng.below(21)];
            line.insert(pos, c);
        }
    }
    lines.concat()
}

/// What a read gives, to compare two reads: the policies (every rule, with its position) or
/// the problems.
fn outcome(r: Result<PolicySet, PolicyError>) -> String {
    match r {
        Ok(set) => format!("{:?}", set.policies),
        Err(e) => e.to_string(),
    }
}

/// A large document read again after an edit, with the rules of its previous read kept by
/// their line and text (`policy::items`), reads as the edited document read from nothing: the
/// same policy, every rule at its line, or the same problems. Edits of every kind, one to three
/// at a time, over documents whose items sit at 0, 2 and 4 spaces, with LF and CRLF line ends;
/// and the kept rules are used (a rule changed in place is read from them), or the test would
/// show nothing.
#[test]
fn a_reread_of_changed_items_reads_as_the_whole_document() {
    let file = PathBuf::from("big.yaml");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut reused = 0;
    let cases = 250;
    for case in 0..cases {
        let indent = [0, 2, 4][case % 3];
        let base = many_rules(items::MIN_ITEMS + rng.below(12), indent, rng.next());
        // Every fourth with CRLF line ends.
        let base = if case % 4 == 3 {
            base.replace('\n', "\r\n")
        } else {
            base
        };
        let mut parsed = Parsed::default();
        let first = parse_reusing(&[(file.clone(), base.clone())], &mut parsed);
        assert!(
            first.is_ok(),
            "case {case}: the generated document: {first:?}"
        );
        let mut text = base.clone();
        for _ in 0..1 + rng.below(3) {
            text = edit(&text, &mut rng);
        }
        let before = items::REREAD.load(std::sync::atomic::Ordering::Relaxed);
        let again = outcome(parse_reusing(&[(file.clone(), text.clone())], &mut parsed));
        reused += items::REREAD.load(std::sync::atomic::Ordering::Relaxed) - before;
        let whole = outcome(parse(&[(file.clone(), text.clone())]));
        assert_eq!(again, whole, "case {case}: edited document:\n{text}");
        // And once more, from what that read kept.
        let third = edit(&text, &mut rng);
        let again = outcome(parse_reusing(&[(file.clone(), third.clone())], &mut parsed));
        let whole = outcome(parse(&[(file.clone(), third.clone())]));
        assert_eq!(again, whole, "case {case}: edited twice:\n{third}");
        // A rule of the generated document changed in place (a path, a reason): read from the
        // kept rules, the one changed parsed alone.
        let mut parsed = Parsed::default();
        parse_reusing(&[(file.clone(), base.clone())], &mut parsed).unwrap();
        let rule = rng.below(base.matches("id: r").count());
        // Its id, `id: r<n>` followed by anything but a digit, made `id: q<n>`.
        let id = format!("id: r{rule}");
        let at = base
            .match_indices(&id)
            .map(|(at, _)| at)
            .find(|&at| !base[at + id.len()..].starts_with(|c: char| c.is_ascii_digit()))
            .expect("every rule has an id");
        let changed = format!("{}id: q{}", &base[..at], &base[at + "id: q".len()..]);
        let before = items::REREAD.load(std::sync::atomic::Ordering::Relaxed);
        let again = outcome(parse_reusing(
            &[(file.clone(), changed.clone())],
            &mut parsed,
        ));
        assert_eq!(
            items::REREAD.load(std::sync::atomic::Ordering::Relaxed),
            before + 1,
            "case {case}: rule r{rule} changed in place was not read from the kept rules"
        );
        assert_eq!(
            again,
            outcome(parse(&[(file.clone(), changed.clone())])),
            "case {case}: rule r{rule} changed"
        );
        reused += 1;
        // The rest of the document changed what the rules mean: the policy's name (each rule's
        // id), its mode (the rules' own) or its sandbox profiles (the one a rule names gone):
        // the kept rules are validated again.
        for (from, to) in [
            ("name: big", "name: bog"),
            ("mode: enforce", "mode: shadow"),
            ("  jail: {", "  cell: {"),
        ] {
            let mut parsed = Parsed::default();
            parse_reusing(&[(file.clone(), base.clone())], &mut parsed).unwrap();
            let edited = base.replacen(from, to, 1);
            assert_eq!(
                outcome(parse_reusing(
                    &[(file.clone(), edited.clone())],
                    &mut parsed
                )),
                outcome(parse(&[(file.clone(), edited.clone())])),
                "case {case}: {from} → {to}"
            );
        }
    }
    assert!(reused > 0);
}
/// A document read whole keeps its rules under the items its lines found only when each rule
/// starts on its item's first line (or below a `-` alone on that line): a rule that started
/// elsewhere would be kept under text that is not its own.
#[test]
fn rules_are_kept_only_under_the_items_they_start_in() {
    let doc = many_rules(items::MIN_ITEMS, 2, 3);
    let split = items::split(&doc).expect("the generated document's items");
    let node = marked_yaml::parse_yaml_with_options(0, doc.as_str(), load::yaml_options()).unwrap();
    let mut problems = Vec::new();
    let mut cx = Cx {
        file: &Arc::from(Path::new("big.yaml")),
        offset: 0,
        problems: &mut problems,
    };
    let parts = cx.parts(node);
    assert!(parts.clean());
    let lines = parts.rule_lines.clone();
    let policy = cx
        .finish(parts, 0)
        .expect("the generated document's policy");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(policy.rules.len(), split.items.len());
    assert!(items::keep(&split, &policy, &lines).is_some(), "as read");
    let mut off = lines.clone();
    off[1] += 1;
    assert!(
        items::keep(&split, &policy, &off).is_none(),
        "a rule one line down"
    );
    let shifted: Vec<usize> = [lines[0]]
        .into_iter()
        .chain(lines[..lines.len() - 1].iter().copied())
        .collect();
    assert!(
        items::keep(&split, &policy, &shifted).is_none(),
        "each rule one item down"
    );
    let mut fewer = policy.clone();
    fewer.rules.remove(0);
    assert!(
        items::keep(&split, &fewer, &lines[1..]).is_none(),
        "a rule fewer"
    );
}

/// A rule's host is kept in the one spelling requests are decided in (red team round 31: a
/// block on `0:0:0:0:0:0:0:1` or `::ffff:127.0.0.3` was accepted and matched no request, whose
/// host the proxy writes `::1` and `127.0.0.3`); spellings no request has are errors.
#[test]
fn rule_hosts_are_kept_in_the_spelling_requests_are_decided_in() {
    let rule = |host: &str| {
        format!(
            "{HEAD}  - id: h\n    http: {{ host: '{host}' }}\n    verdict: block\n    reason: r\n"
        )
    };
    for (written, kept) in [
        ("0:0:0:0:0:0:0:1", "::1"),
        ("[0:0::1]", "::1"),
        ("::ffff:127.0.0.3", "127.0.0.3"),
        ("2001:0DB8::5", "2001:db8::5"),
        ("API.Example.", "api.example"),
        ("10.0.0.5", "10.0.0.5"),
    ] {
        let set = one(&rule(written)).unwrap_or_else(|e| panic!("{written}: {e}"));
        let Matcher::Http(h) = &set.policies[0].rules[0].matcher else {
            panic!("{written}: not an HTTP rule")
        };
        assert_eq!(h.host, HostMatch::Exact(kept.into()), "{written}");
        // What the proxy makes of a request naming the host the rule was written with.
        let asked =
            crate::proxy::request::ip_literal(crate::proxy::request::normalise_host(written));
        assert!(h.host.matches(&asked.unwrap()), "{written}");
    }
    for refused in [
        "010.0.0.5",
        "127.1",
        "2130706433",
        "0x7f000001",
        "api.example:443",
        "*.::1",
        "*.",
        "a..b",
        "*..example",
    ] {
        let found = problems(&rule(refused));
        assert!(
            found.iter().any(|p| p.contains("host")),
            "{refused}: {found:?}"
        );
    }
    // TLS is intercepted by server name: an IP address in any spelling names none.
    for ip in ["[::1]", "::ffff:10.0.0.1", "10.0.0.1.", "[0:0::1]"] {
        let found = problems(&format!(
            "name: p\nagents: {{ cgroup: agents/a }}\nproxy: {{ intercept_tls: ['{ip}'] }}\n"
        ));
        assert!(
            found.iter().any(|p| p.contains("IP address")),
            "{ip}: {found:?}"
        );
    }
}

/// Red team round 34: which selectors can match only cgroups below an agent root (their policy
/// then never applies: the outermost root governs).
#[test]
fn selectors_only_below_a_root() {
    let sel = |c: &str| Selector {
        cgroup: Some(c.into()),
        label: None,
        pod: None,
    };
    for (c, root, below) in [
        ("x/y", "x", true),
        ("/x/y/", "x", true),
        ("x/pool/*", "x", true),
        ("x/*", "x", true),
        ("x/*/y", "x", true),
        ("x", "x", false),
        ("xx/y", "x", false),
        ("x*", "x", false),
        ("*/z", "x", false),
        ("x/y", "x/y", false),
        ("a/b/c", "a/b", true),
        ("x/**", "x", false),
        ("x/y/**", "x", true),
    ] {
        assert_eq!(sel(c).only_below(root), below, "{c} below {root}");
    }
    let label_only = Selector {
        cgroup: None,
        label: Some("x".into()),
        pod: None,
    };
    assert!(!label_only.only_below("x"));
}
