//! The policy file format, as written: serde types with source spans, and the JSON Schema that
//! `governance policy schema` prints for editors. Validation and compilation live in `compile`.

use std::collections::BTreeMap;

use marked_yaml::Spanned;
use schemars::JsonSchema;
use serde::Deserialize;

/// A string with the place it was written.
pub type Str = Spanned<String>;

/// A value written either alone or as a list: `method: POST` or `method: [PUT, PATCH]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for OneOrMany {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OneOrMany".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [generator.subschema_for::<String>(), generator.subschema_for::<Vec<String>>()]
        })
    }
}

/// A [`OneOrMany`] with where it was written.
pub type List = Spanned<OneOrMany>;

/// One policy document.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// Unique name of the policy; rule ids are quoted as `<name>/<rule id>`.
    #[schemars(with = "String")]
    pub name: Str,
    /// What the policy is for, for people.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Option<Str>,
    /// `enforce` (default) or `shadow`: a shadow policy decides and reports "would have",
    /// but never changes the outcome.
    #[serde(default)]
    #[schemars(with = "Option<Mode>")]
    pub mode: Option<Spanned<Mode>>,
    /// Which agents the policy governs. At least one selector is required; several must all
    /// match.
    #[schemars(with = "AgentSelector")]
    pub agents: Spanned<AgentSelector>,
    /// Verdict when no rule matches, per kind of action. Omitted kinds allow.
    #[serde(default)]
    pub defaults: Defaults,
    /// Named sandbox profiles that `sandbox` rules move processes into.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, SandboxProfile>")]
    pub sandbox_profiles: BTreeMap<String, Spanned<SandboxProfile>>,
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
    /// Settings of the HTTP policy proxy for the agents this policy governs.
    #[serde(default)]
    pub proxy: Option<ProxyDoc>,
    /// Built-in kernel protections this policy relaxes for its agents.
    #[serde(default)]
    pub kernel: Option<KernelDoc>,
}

/// Built-in protections are on for every agent; a policy may relax them. A relaxation applies
/// when an enforcing policy of the agent sets it `true` and none sets it `false`.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelDoc {
    /// Let the agent create raw (`SOCK_RAW`), packet (`AF_PACKET`) and netlink sockets, which
    /// are refused by default (they get around connect rules, or reconfigure the node).
    #[serde(default)]
    pub allow_raw_sockets: Option<bool>,
    /// Let the agent create user namespaces (refused by default: a new user namespace is the
    /// usual first step out of a sandbox). It may then hold capabilities inside them.
    #[serde(default)]
    pub allow_user_namespaces: Option<bool>,
    /// Let the agent connect to container-runtime and service-manager sockets (Docker,
    /// containerd, CRI-O, Podman, BuildKit, systemd's private socket, the system D-Bus, ...),
    /// which are refused by default: whoever talks to them can start a process outside the
    /// agent. `unix` rules and the `unix` default still decide. The daemon's own control
    /// socket stays refused whatever this says.
    #[serde(default)]
    pub allow_runtime_sockets: Option<bool>,
    /// Let the agent connect to name-service sockets (nscd's, systemd-resolved's varlink
    /// sockets, sssd's NSS pipe), which are refused by default: the service resolves names for
    /// whoever asks, so a name the agent makes up would leave the node as a DNS query its own
    /// network rules refuse. Refused, the C library resolves names itself (its own DNS
    /// queries, decided by the agent's `network` rules). `unix` rules and the `unix` default
    /// still decide.
    #[serde(default)]
    pub allow_name_service_sockets: Option<bool>,
    /// Give the agent back capabilities that agents never get by default (`CAP_NET_ADMIN`,
    /// `CAP_SYS_ADMIN`, ...: see docs/policy.md for the list and why each is refused). A
    /// capability is given back when an enforcing policy of the agent lists it and every other
    /// enforcing policy that writes this field lists it too.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub allow_capabilities: Option<Spanned<Vec<Str>>>,
    /// Let the agent mount, unmount, remount, pivot_root and move mounts where it holds
    /// CAP_SYS_ADMIN: inside a user namespace it made (`allow_user_namespaces`), or anywhere
    /// if `allow_capabilities` gives it CAP_SYS_ADMIN. Refused by default: a mount changes
    /// what the paths the rules name refer to.
    #[serde(default)]
    pub allow_mounts: Option<bool>,
    /// Let the agent run the dynamic loader as a program (`ld.so /path/to/program`), which
    /// runs that program's code without an exec of it. Refused by default; dynamically linked
    /// programs are not affected.
    #[serde(default)]
    pub allow_loader_exec: Option<bool>,
    /// Let the agent write the kernel's settings: /proc/sys (sysctls, among them
    /// core_pattern, modprobe and binfmt_misc, which make the kernel run a program as root
    /// outside every agent), /proc/sysrq-trigger and /sys (its own cgroup subtree excepted,
    /// which stays writable). Refused by default.
    #[serde(default)]
    pub allow_kernel_settings: Option<bool>,
    /// Let the agent write the node's own programs and the files that make the node run a
    /// program outside every agent: /etc (schedulers, services, the loader's preload list,
    /// logins, sudo, PAM, udev, modprobe), /usr, /bin, /sbin, /lib*, /boot, the cron and at
    /// spools, /run/systemd, dpkg's maintainer scripts, root's SSH keys and shell startup
    /// files. Refused by default (writes, creates, truncates, new names of any kind).
    #[serde(default)]
    pub allow_system_files: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyDoc {
    /// Largest request body the proxy buffers when a rule needs the body (`256KiB`, `1MiB`,
    /// or a number of bytes); a larger body is refused with 413. The smallest limit among an
    /// agent's enforcing policies applies (a shadow policy's proxy settings are not applied);
    /// without one, the proxy's default (1 MiB).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_body: Option<Str>,
    /// Hosts whose TLS the proxy intercepts (`api.example.com`, or `*.example.com` for any
    /// subdomain), matched against the TLS server name: it terminates the agent's TLS with a
    /// certificate from the node CA, which the agent must trust, so that every request inside
    /// is decided by the `http` rules. Other TLS is decided on its server name alone and
    /// passed through. The hosts of all of an agent's enforcing policies are intercepted.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub intercept_tls: Vec<Str>,
    /// How long a response from a host may go silent (`api.example.com`, `*.example.com` or
    /// `*` → `30s`, `10m`, `1h`): the wait for its head, then each gap in its body, after which
    /// the proxy cuts it. Without one: 30 s, and 10 minutes between the events of a
    /// `text/event-stream` response (SSE, MCP streams). The most specific host applies; among
    /// an agent's enforcing policies, the shortest.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub idle_timeout: BTreeMap<String, Str>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSelector {
    /// Glob over cgroup paths relative to the cgroup2 mount: `*` within one path segment,
    /// `**` across segments. The agent is the matching cgroup and all its descendants.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub cgroup: Option<Str>,
    /// Value of the `user.governance.agent` extended attribute on the agent's cgroup
    /// directory (`setfattr -n user.governance.agent -v NAME /sys/fs/cgroup/...`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub label: Option<Str>,
    /// Kubernetes: the labels of the agent's pod (a label selector, as in a Deployment's
    /// `selector`). The agent is the pod's cgroup; needs `governance run --kubernetes`.
    #[serde(default)]
    #[schemars(with = "Option<LabelSelector>")]
    pub pod_labels: Option<Spanned<LabelSelector>>,
    /// Kubernetes: the namespace of the agent's pod.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub namespace: Option<Str>,
    /// Kubernetes: the labels of the namespace of the agent's pod (a label selector).
    #[serde(default)]
    #[schemars(with = "Option<LabelSelector>")]
    pub namespace_labels: Option<Spanned<LabelSelector>>,
    /// Kubernetes: the service account the agent's pod runs as.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub service_account: Option<Str>,
}

/// A Kubernetes label selector: every `matchLabels` pair and every `matchExpressions`
/// requirement must hold.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must have exactly these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One requirement of a label selector.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    /// For `In` and `NotIn` (at least one); empty for `Exists` and `DoesNotExist`.
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum LabelOperator {
    /// The label is set to one of `values`.
    In,
    /// The label is not set, or set to none of `values`.
    NotIn,
    /// The label is set (to any value).
    Exists,
    /// The label is not set.
    DoesNotExist,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[schemars(with = "Option<Posture>")]
    pub exec: Option<Spanned<Posture>>,
    #[schemars(with = "Option<Posture>")]
    pub file: Option<Spanned<Posture>>,
    #[schemars(with = "Option<Posture>")]
    pub network: Option<Spanned<Posture>>,
    #[schemars(with = "Option<Posture>")]
    pub http: Option<Spanned<Posture>>,
    /// Connects and datagrams to named Unix sockets no `unix` rule covers.
    #[schemars(with = "Option<Posture>")]
    pub unix: Option<Spanned<Posture>>,
    /// How allowed actions of each kind are reported when the rule does not say, and when no
    /// rule matched: `every`, `count` or `{ sample: N }`. Without it: file opens are counted,
    /// the rest are events.
    #[serde(default)]
    pub report: Option<ReportDefaults>,
}

/// How allowed actions are reported: `every` (one event each), `count` (per-CPU counters per
/// agent and rule, exported as metrics and summed into signed count records in the audit
/// log), or `{ sample: N }` (counted, and one in N also an event). Denials, escalations,
/// throttles, sandboxings, shadow "would have" decisions and failures closed are always events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Report {
    Every,
    Count,
    Sample(u32),
}

/// `defaults.report`: per kind of kernel action.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportDefaults {
    #[schemars(with = "Option<Report>")]
    pub exec: Option<Spanned<Report>>,
    #[schemars(with = "Option<Report>")]
    pub file: Option<Spanned<Report>>,
    #[schemars(with = "Option<Report>")]
    pub network: Option<Spanned<Report>>,
    #[schemars(with = "Option<Report>")]
    pub unix: Option<Spanned<Report>>,
}

/// A default posture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Posture {
    Allow,
    Block,
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxProfile {
    /// What the profile is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Network access inside the sandbox: `none`, or `proxy` (only through the policy proxy).
    #[serde(default)]
    pub network: Option<SandboxNetwork>,
    /// Directory prefixes that stay writable; everything else becomes read-only.
    #[serde(default)]
    pub writable: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxNetwork {
    None,
    Proxy,
}

/// One rule: exactly one of `exec`, `file`, `network`, `http`, `unix` says what it matches.
///
/// The optional parts are boxed: with their spans inline a rule was 2,912 bytes, copied at each
/// step of deserializing and validating it (a tenth of reading 10,000 rules); now it is 544.
/// The schema is the same.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    /// Stable id, unique within the policy; events quote it.
    #[schemars(with = "String")]
    pub id: Str,
    #[schemars(with = "Verdict")]
    pub verdict: Spanned<Verdict>,
    /// Why the rule exists; events and denials quote it.
    #[schemars(with = "String")]
    pub reason: Str,
    /// Per-rule mode; overrides the policy's.
    #[serde(default)]
    #[schemars(with = "Option<Mode>")]
    pub mode: Option<Spanned<Mode>>,
    #[serde(default)]
    pub exec: Option<Box<ExecMatch>>,
    #[serde(default)]
    pub file: Option<Box<FileMatch>>,
    #[serde(default)]
    pub network: Option<Box<NetworkMatch>>,
    #[serde(default)]
    pub http: Option<Box<HttpMatch>>,
    #[serde(default)]
    pub unix: Option<Box<UnixMatch>>,
    /// A sequence rule: once the agent has done `after`, its egress outside `then`'s
    /// allowlists gets this rule's verdict (`block` or `escalate`), for `for` or for the rest
    /// of the agent's life. See docs/policy.md, "Sequence rules".
    #[serde(default)]
    pub sequence: Option<Box<SequenceDoc>>,
    /// Required with `verdict: throttle`.
    #[serde(default)]
    pub throttle: Option<Box<ThrottleDoc>>,
    /// Required with `verdict: escalate`.
    #[serde(default)]
    pub escalate: Option<Box<EscalateDoc>>,
    /// Required with `verdict: sandbox`.
    #[serde(default)]
    pub sandbox: Option<Box<SandboxDoc>>,
    /// How the actions this rule allows are reported (`verdict: allow`, kernel rules):
    /// `every`, `count` or `{ sample: N }`; else the policy's `defaults.report` for the kind.
    #[serde(default)]
    #[schemars(with = "Option<Report>")]
    pub report: Option<Spanned<Report>>,
}

/// The five verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Throttle,
    Sandbox,
    Escalate,
    Block,
}

impl Verdict {
    /// The name as policies write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Block => "block",
            Verdict::Throttle => "throttle",
            Verdict::Sandbox => "sandbox",
            Verdict::Escalate => "escalate",
        }
    }
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecMatch {
    /// An executable, by absolute path.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path: Option<Str>,
    /// Every executable below this directory.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub prefix: Option<Str>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path: Option<Str>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub prefix: Option<Str>,
    /// Accesses the rule covers; all when omitted.
    #[serde(default)]
    pub access: Vec<Access>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Create,
    Truncate,
    Exec,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkMatch {
    /// Destination networks (IPv4 or IPv6 CIDR, or single addresses); one or a list.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub cidr: Option<List>,
    /// Destination ports: `443`, `8000-8999`; one or a list. All when omitted.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub ports: Option<List>,
    /// `tcp`, `udp` or `any` (default).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// The connection is sent through the HTTP policy proxy instead of directly.
    #[serde(default)]
    pub via_proxy: bool,
}

/// A Unix socket an agent connects to (stream, seqpacket) or sends datagrams to. The kernel
/// decides on the socket itself: a `path` rule is resolved to the socket file's identity when
/// the policy is loaded (and again whenever the file is re-created), so every name of that
/// socket (a hard link, a bind mount, `/proc/self/root/...`, a relative path) is covered.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnixMatch {
    /// A filesystem socket, by absolute path (`/run/user/1000/bus`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path: Option<Str>,
    /// An abstract socket, by its name without the leading NUL (`/tmp/.X11-unix/X0`, shown
    /// as `@/tmp/.X11-unix/X0` by `ss`).
    #[serde(default, rename = "abstract")]
    #[schemars(with = "Option<String>")]
    pub abstract_name: Option<Str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Any,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// Exact host (`api.stripe.com`) or wildcard (`*.stripe.com`: any subdomain).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub host: Option<Str>,
    /// Method or methods (`POST`, or `[PUT, PATCH]`).
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub method: Option<List>,
    /// Path glob: `*` within a segment, `**` across segments (`/v1/refunds/**`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path: Option<Str>,
    /// Header name → value glob; all must match.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: BTreeMap<String, Str>,
    /// Conditions on the JSON body, all of which must hold: `$.amount > 100`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub body: Vec<Str>,
    /// An MCP JSON-RPC `tools/call`: the tool and conditions on its arguments.
    #[serde(default)]
    pub mcp: Option<McpMatch>,
}

/// `sequence:`: what arms the rule, what stays allowed once it is armed, and for how long.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceDoc {
    /// The earlier action that arms the rule: `{ file: { prefix: /data/pii/, access: read } }`
    /// (an open of a path the `file` matcher covers, which was allowed).
    pub after: SequenceAfter,
    /// What stays allowed once armed; every other outbound connection, datagram and HTTP
    /// request of the agent gets the rule's verdict. An omitted part allows nothing.
    #[serde(default)]
    pub then: SequenceThen,
    /// How long the rule stays armed after the arming action (`30s`, `10m`, `1h`); omitted:
    /// for the rest of the agent's life.
    #[serde(default, rename = "for")]
    #[schemars(with = "Option<String>")]
    pub window: Option<Str>,
}

/// The arming action of a sequence rule.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceAfter {
    /// A file open, matched as a `file` rule matches (`path` or `prefix`, `access`).
    pub file: FileMatch,
}

/// The allowlists of an armed sequence rule.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceThen {
    /// Connections and datagrams that go out directly (not through the HTTP proxy).
    #[serde(default)]
    pub network: Option<SequenceNetwork>,
    /// Requests through the HTTP proxy (and TLS it passes through, by server name).
    #[serde(default)]
    pub http: Option<SequenceHttp>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceNetwork {
    /// The destinations that stay reachable directly.
    #[serde(default)]
    pub except: Option<SequenceNetExcept>,
}

/// Destinations: an address in one of `cidr` and a port in `ports` (any port when omitted).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceNetExcept {
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub cidr: Option<List>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub ports: Option<List>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceHttp {
    /// Hosts (`api.internal.example`, `*.internal.example`) the proxy still lets requests go to.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub except_hosts: Vec<Str>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpMatch {
    /// Tool name (glob).
    #[schemars(with = "String")]
    pub tool: Str,
    /// Conditions on `params.arguments` (`$` is the arguments object).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub arguments: Vec<Str>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottleDoc {
    /// Requests allowed per `per`.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub rate: Option<Spanned<u32>>,
    /// Window: `1s`, `10m`, `1h`, `1d`.
    #[schemars(with = "String")]
    pub per: Str,
    /// Whose bucket: `agent` (one per agent), `rule` (one shared), `agent_rule` (default).
    #[serde(default)]
    pub key: Option<ThrottleKey>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleKey {
    Agent,
    Rule,
    AgentRule,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalateDoc {
    /// How long to wait for a human: `30s`, `15m`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Str>,
    /// What happens when nobody decides in time: `block` (default) or `allow`.
    #[serde(default)]
    pub on_timeout: Option<Posture>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxDoc {
    /// A profile from `sandbox_profiles` (exec, file, network rules).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub profile: Option<Str>,
    /// For HTTP rules: the upstream the request goes to instead (`http://staging:8080`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub upstream: Option<Str>,
}
