//! The decision engine: (agent, action, time) → decision. Pure apart from the token buckets
//! that throttle rules keep, which live beside it behind a lock and outlive it: the next
//! generation takes them over (see [`Engine::carry_buckets`]).
//!
//! This is the reference semantics: the HTTP proxy calls it in process, `governance policy
//! test` runs it, and the kernel maps encode the subset the kernel programs enforce.
//!
//! Precedence, for one action: among the rules of every policy that governs the agent, the most
//! specific matching rule wins ([`crate::policy::Matcher`]'s specificity); at equal specificity
//! the most severe verdict wins (block > escalate > sandbox > throttle > allow). With no
//! matching rule, the default posture applies: block if any enforcing policy of the agent
//! defaults to block for that kind, else allow. Shadow rules and shadow policies never change
//! the outcome; when they would have, the decision carries what they would have done.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::policy::{
    Access, HostMatch, HttpMatcher, Kind, Matcher, Mode, PolicySet, Posture, Protocol, Rule,
    SandboxTarget, Throttle, ThrottleKey, UnixTarget, Verdict,
    glob::{self, match_path},
};

/// Something an agent is about to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Exec {
        path: PathBuf,
    },
    File {
        path: PathBuf,
        access: Access,
    },
    Network {
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    Http(HttpRequest),
    /// A connect to, or a datagram sent to, a named Unix socket. (The kernel decides on the
    /// socket's identity; here a path rule matches the path as written.)
    Unix {
        target: UnixTarget,
    },
}

impl Action {
    pub fn kind(&self) -> Kind {
        match self {
            Action::Exec { .. } => Kind::Exec,
            Action::File { .. } => Kind::File,
            Action::Network { .. } => Kind::Network,
            Action::Http(_) => Kind::Http,
            Action::Unix { .. } => Kind::Unix,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    /// Host without port, any case.
    pub host: String,
    pub path: String,
    /// (name, value); names any case.
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body, if it is JSON.
    pub body: Option<Value>,
}

/// The agent an action comes from: its root cgroup (relative to the cgroup2 mount) and label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentRef {
    pub name: String,
    pub cgroup: String,
    pub label: Option<String>,
    /// Kubernetes: the agent's pod.
    pub pod: Option<crate::policy::PodIdentity>,
}

/// What happens to the action.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Allow,
    Block,
    /// Over a throttle rule's rate; try again after this long.
    Throttle {
        retry_after: Duration,
    },
    Sandbox(SandboxTarget),
    /// Hold for a human; on timeout, `on_timeout`.
    Escalate {
        timeout: Duration,
        on_timeout: Posture,
    },
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::Allow => Verdict::Allow,
            Outcome::Block => Verdict::Block,
            Outcome::Throttle { .. } => Verdict::Throttle,
            Outcome::Sandbox(_) => Verdict::Sandbox,
            Outcome::Escalate { .. } => Verdict::Escalate,
        }
    }
}

/// A decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    /// `<policy>/<rule>` of the deciding rule; None when the default posture decided.
    pub rule: Option<String>,
    pub reason: String,
    pub generation: u32,
    /// What shadow rules would have done instead, when it differs.
    pub shadow: Option<Box<Decision>>,
    /// When an armed sequence rule decided: the earlier action that armed it.
    pub armed_by: Option<crate::events::sequence::ArmedBy>,
}

impl Decision {
    pub fn verdict(&self) -> Verdict {
        self.outcome.verdict()
    }
}

/// A token bucket: `rate` tokens per `per`, holding at most `rate`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What a bucket counts, by names that mean the same in every generation (rule indices do
/// not: they move when a rule before them comes or goes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BucketId {
    /// `<policy>/<rule>`; None for the bucket that all of an agent's `key: agent` rules share.
    rule: Option<String>,
    /// The agent's name; empty for a `key: rule` bucket, which every agent shares.
    who: String,
    /// Counted by shadow decisions (which never touch the enforcing buckets).
    shadow: bool,
}

/// The token buckets, shared by an engine and the engines that succeed it.
type Buckets = Arc<Mutex<HashMap<BucketId, Bucket>>>;

/// The rules that apply to one agent, ordered for first-match-wins.
#[derive(Debug, Default)]
pub struct AgentRules {
    agent: AgentRef,
    /// Indices into `Engine::rules`, per kind, most specific (then most severe) first.
    by_kind: HashMap<Kind, Vec<usize>>,
    /// HTTP rules by exact host, then suffix rules, then any-host rules (each ordered).
    http_exact: HashMap<String, Vec<usize>>,
    http_suffix: Vec<usize>,
    http_any: Vec<usize>,
    /// Default posture per kind from enforcing policies, and from shadow policies.
    defaults: HashMap<Kind, Posture>,
    shadow_defaults: HashMap<Kind, Posture>,
    /// The smallest `proxy.max_body` among the agent's policies.
    max_body: Option<usize>,
    /// `proxy.intercept_tls` of all the agent's policies.
    intercept_tls: Vec<HostMatch>,
    /// `proxy.idle_timeout` of all the agent's policies.
    idle_timeouts: Vec<(HostMatch, Duration)>,
}

impl AgentRules {
    /// The agent these rules are for.
    pub fn agent(&self) -> &AgentRef {
        &self.agent
    }

    /// The smallest `proxy.max_body` among the agent's policies, if any sets one.
    pub fn max_body(&self) -> Option<usize> {
        self.max_body
    }

    /// Whether some policy of the agent intercepts TLS to `host` (a lowercase server name).
    pub fn intercepts_tls(&self, host: &str) -> bool {
        self.intercept_tls.iter().any(|m| m.matches(host))
    }

    /// How long responses from `host` (lowercase) may go silent, if a policy of the agent says
    /// (`proxy.idle_timeout`): the most specific host wins (exact, then the longest
    /// `*.suffix`, then `*`), and among equally specific ones the shortest time.
    pub fn idle_timeout(&self, host: &str) -> Option<Duration> {
        let rank = |m: &HostMatch| match m {
            HostMatch::Exact(_) => usize::MAX,
            HostMatch::Suffix(s) => s.len(),
            HostMatch::Any => 0,
        };
        self.idle_timeouts
            .iter()
            .filter(|(m, _)| m.matches(host))
            .max_by(|(a, ta), (b, tb)| rank(a).cmp(&rank(b)).then(tb.cmp(ta)))
            .map(|(_, t)| *t)
    }
}

/// What the enforcing rules of a route read in request bodies ([`Engine::body_route`]).
#[derive(Debug, Default)]
pub struct BodyRoute<'a> {
    /// Some rule of the route has body or MCP conditions.
    pub governed: bool,
    /// Some rule of the route is an MCP rule: bodies are JSON-RPC.
    pub mcp: bool,
    /// Some body condition starts with an index (`$[0]`): the body may be an array.
    pub array_docs: bool,
    /// The body conditions.
    pub body: Vec<&'a crate::policy::cond::Condition>,
    /// (tool glob, argument conditions) of the MCP rules.
    pub arguments: Vec<(&'a str, &'a [crate::policy::cond::Condition])>,
}

/// One generation of policy, ready to decide.
pub struct Engine {
    pub generation: u32,
    set: PolicySet,
    /// Rule index → (policy, rule) in `set`: rules are numbered across the whole set.
    rules: Vec<(usize, usize)>,
    /// `<policy>/<rule>` → rule index.
    by_id: HashMap<String, usize>,
    buckets: Buckets,
    /// What agents have armed (see [`Engine::with_armed_source`]).
    armed: Option<ArmedSource>,
}

impl Engine {
    pub fn new(set: PolicySet, generation: u32) -> Self {
        let rules = set
            .policies
            .iter()
            .enumerate()
            .flat_map(|(p, policy)| (0..policy.rules.len()).map(move |r| (p, r)))
            .collect::<Vec<_>>();
        let by_id = rules
            .iter()
            .enumerate()
            .map(|(i, &(p, r))| (set.policies[p].rules[r].id.clone(), i))
            .collect();
        Self {
            generation,
            set,
            rules,
            by_id,
            buckets: Buckets::default(),
            armed: None,
        }
    }

    /// Take over the token buckets of `previous`, the generation this one replaces (call it
    /// before this engine decides anything).
    ///
    /// A throttle rule that is still there (same `<policy>/<rule>`) keeps each agent's level,
    /// so a reload never hands out a fresh budget; if its rate changed, the level is capped at
    /// the new burst when next used. From here on both engines share one store: a request that
    /// the previous generation is still deciding after the switch takes its token from the
    /// same bucket, so nothing is copied that could miss it, and no moment exists with a fresh
    /// bucket. Buckets that no rule of this generation uses are dropped, and so are full ones
    /// (a full bucket decides exactly as a missing one), so the store does not grow with
    /// agents and rules that came and went.
    pub fn carry_buckets(&mut self, previous: &Engine, now: Instant) {
        self.buckets = previous.buckets.clone();
        fn throttle(rule: &Rule) -> Option<&Throttle> {
            rule.throttle
                .as_ref()
                .filter(|_| rule.verdict == Verdict::Throttle)
        }
        // The `key: agent` rules, which share one bucket per agent.
        let per_agent: Vec<&Throttle> = (0..self.rules.len())
            .filter_map(|i| throttle(self.rule(i)))
            .filter(|t| t.key == ThrottleKey::Agent)
            .collect();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|id, b| {
            // The throttles of this generation that would take tokens from this bucket.
            let users: Vec<&Throttle> = match &id.rule {
                None => per_agent.clone(),
                Some(name) => self
                    .rule_by_id(name)
                    .and_then(throttle)
                    .filter(|t| match t.key {
                        ThrottleKey::Agent => false,
                        ThrottleKey::Rule => id.who.is_empty(),
                        ThrottleKey::AgentRule => !id.who.is_empty(),
                    })
                    .into_iter()
                    .collect(),
            };
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            let full = |t: &&Throttle| {
                let per_token = t.per.as_secs_f64() / f64::from(t.rate.max(1));
                b.tokens + elapsed / per_token >= f64::from(t.rate)
            };
            !users.is_empty() && !users.iter().all(full)
        });
    }

    /// The policy set this generation decides with.
    pub fn policies(&self) -> &PolicySet {
        &self.set
    }

    /// The rule a decision quotes (`<policy>/<rule>`).
    pub fn rule_by_id(&self, id: &str) -> Option<&Rule> {
        self.by_id.get(id).map(|&i| self.rule(i))
    }

    /// The HTTP rules that could match a request to `host` (lowercase), in precedence order.
    fn http_rules<'a>(
        &'a self,
        view: &'a AgentRules,
        host: &'a str,
    ) -> impl Iterator<Item = &'a HttpMatcher> + 'a {
        let exact = view.http_exact.get(host).map_or(&[][..], Vec::as_slice);
        exact
            .iter()
            .chain(&view.http_suffix)
            .chain(&view.http_any)
            .filter_map(move |&i| match &self.rule(i).matcher {
                Matcher::Http(h) if h.host.matches(host) => Some(&**h),
                _ => None,
            })
    }

    /// Whether deciding a request to `host` (lowercase) for this agent needs its body: some
    /// HTTP rule that could match the host has body or MCP conditions. When it does not, the
    /// proxy streams the body through untouched.
    pub fn needs_body(&self, view: &AgentRules, host: &str) -> bool {
        self.http_rules(view, host)
            .any(|h| !h.body.is_empty() || h.mcp.is_some())
    }

    /// The header names (lowercase, as compiled) the HTTP rules that could match `host`
    /// (lowercase) read (the proxy copies the headers for the engine only when there are some).
    pub fn headers_read<'a>(&'a self, view: &'a AgentRules, host: &'a str) -> Vec<&'a str> {
        let mut names: Vec<&str> = self
            .http_rules(view, host)
            .flat_map(|h| h.headers.iter().map(|(n, _)| n.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The enforcing allow rule that could match a request to `host` (lowercase), `method` and
    /// `path` only because rule paths match in any case: its path spelt otherwise than the
    /// request's (`/files/public.txt` for `/files/PUBLIC.TXT`, which a case-sensitive upstream
    /// serves as another resource). The proxy refuses such a request rather than allow it, or
    /// let it fall through to a broader rule.
    pub fn allowed_in_another_case(
        &self,
        view: &AgentRules,
        host: &str,
        method: &str,
        path: &str,
    ) -> Option<String> {
        let folded = match_path(path);
        let exact = glob::exact_path(path);
        let exact_host = view.http_exact.get(host).map_or(&[][..], Vec::as_slice);
        exact_host
            .iter()
            .chain(&view.http_suffix)
            .chain(&view.http_any)
            .map(|&i| (i, self.rule(i)))
            .find(|(_, rule)| {
                let Matcher::Http(h) = &rule.matcher else {
                    return false;
                };
                rule.mode == Mode::Enforce
                    && rule.verdict == Verdict::Allow
                    && h.path.is_some()
                    && h.host.matches(host)
                    && h.covers_method(method)
                    && path_matches(h.path.as_deref(), &folded)
                    && !path_matches(h.path_exact.as_deref(), &exact)
            })
            .map(|(_, rule)| rule.id.clone())
    }

    /// Whether some HTTP rule that could match `host` (lowercase) names methods. A POST's body
    /// may then override its method (`_method`, which Rails, Laravel and Express's
    /// `method-override` read): the proxy reads POST bodies to that host to check.
    pub fn names_methods(&self, view: &AgentRules, host: &str) -> bool {
        self.http_rules(view, host).any(|h| !h.methods.is_empty())
    }

    /// The first enforcing HTTP rule that could match `host` (lowercase) and decides by what
    /// is inside its requests: a method (other than `CONNECT`, which is the tunnel's own),
    /// a path, headers, body or MCP conditions. A TLS connection to such a host cannot be
    /// spliced: its decision could depend on bytes the proxy never reads (the server name
    /// is all it sees), and a server on the other end may read those bytes as requests (a
    /// plaintext server parses a crafted ClientHello as one). The proxy refuses it unless
    /// the host is intercepted. Shadow rules never refuse: they are not counted.
    pub fn looks_inside(&self, view: &AgentRules, host: &str) -> Option<&str> {
        let exact = view.http_exact.get(host).map_or(&[][..], Vec::as_slice);
        exact
            .iter()
            .chain(&view.http_suffix)
            .chain(&view.http_any)
            .map(|&i| self.rule(i))
            .find(|rule| {
                let Matcher::Http(h) = &rule.matcher else {
                    return false;
                };
                let connect_only = !h.methods.is_empty()
                    && h.methods.iter().all(|m| m.eq_ignore_ascii_case("CONNECT"));
                rule.mode == Mode::Enforce
                    && h.host.matches(host)
                    && !connect_only
                    && (!h.methods.is_empty()
                        || h.path.is_some()
                        || !h.headers.is_empty()
                        || !h.body.is_empty()
                        || h.mcp.is_some())
            })
            .map(|rule| rule.id.as_str())
    }

    /// Whether some MCP rule of the agent could match `host` (lowercase), whatever the path.
    pub fn has_mcp_rules(&self, view: &AgentRules, host: &str) -> bool {
        self.http_rules(view, host).any(|h| h.mcp.is_some())
    }

    /// Whether `host` + `path` is an MCP endpoint for this agent: an MCP rule matches the host
    /// and the path. The proxy refuses invalid JSON there (400) instead of deciding without it.
    pub fn is_mcp_endpoint(&self, view: &AgentRules, host: &str, path: &str) -> bool {
        let path = match_path(path);
        self.http_rules(view, host)
            .any(|h| h.mcp.is_some() && path_matches(h.path.as_deref(), &path))
    }

    /// What the enforcing rules that could match a request to `host` (lowercase), `method` and
    /// `path` (whatever its headers and body) read in its body: their body conditions and MCP
    /// argument conditions. The proxy refuses a body it cannot read with certainty on such a
    /// route, instead of letting it fall through to a broader rule (see `proxy::canonical`).
    pub fn body_route<'a>(
        &'a self,
        view: &'a AgentRules,
        host: &'a str,
        method: &str,
        path: &str,
    ) -> BodyRoute<'a> {
        let path = match_path(path);
        let mut route = BodyRoute::default();
        let exact = view.http_exact.get(host).map_or(&[][..], Vec::as_slice);
        for &i in exact.iter().chain(&view.http_suffix).chain(&view.http_any) {
            let rule = self.rule(i);
            let Matcher::Http(h) = &rule.matcher else {
                continue;
            };
            if rule.mode != Mode::Enforce
                || !h.host.matches(host)
                || !h.covers_method(method)
                || !path_matches(h.path.as_deref(), &path)
            {
                continue;
            }
            for c in &h.body {
                route.governed = true;
                route.array_docs |= c.reads_array();
                route.body.push(c);
            }
            if let Some((tool, args)) = &h.mcp {
                route.governed = true;
                route.mcp = true;
                route.arguments.push((tool.as_str(), args.as_slice()));
            }
        }
        route
    }

    /// [`Engine::body_route`] for a tool call that names no server: every enforcing MCP rule
    /// of the agent (as [`Engine::decide_tool`] considers them).
    pub fn mcp_route<'a>(&'a self, view: &'a AgentRules) -> BodyRoute<'a> {
        let mut route = BodyRoute::default();
        for &i in view.by_kind.get(&Kind::Http).map_or(&[][..], Vec::as_slice) {
            let rule = self.rule(i);
            if let (Matcher::Http(h), Mode::Enforce) = (&rule.matcher, rule.mode)
                && let Some((tool, args)) = &h.mcp
            {
                route.governed = true;
                route.mcp = true;
                route.body.extend(&h.body);
                route.arguments.push((tool.as_str(), args.as_slice()));
            }
        }
        route
    }

    /// Decide an MCP `tools/call` (`call` is the JSON-RPC request object) that names no
    /// server: every MCP rule of the agent is a candidate, whatever its host, path and method;
    /// rules with header conditions never match (there are no headers), body conditions apply
    /// to `call`. Precedence and the HTTP default posture are as in [`Engine::decide`].
    pub fn decide_tool(&self, view: &AgentRules, call: &Value, now: Instant) -> Decision {
        let candidates = view
            .by_kind
            .get(&Kind::Http)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .copied();
        self.decide_among(view, Kind::Http, candidates, now, |rule| {
            match &rule.matcher {
                Matcher::Http(h) => {
                    let fold_case = rule.verdict != Verdict::Allow;
                    h.mcp.is_some()
                        && h.headers.is_empty()
                        && h.body.iter().all(|c| c.holds(call, fold_case))
                        && mcp_matches(h.mcp.as_ref(), Some(call), fold_case)
                }
                _ => false,
            }
        })
    }

    fn rule(&self, i: usize) -> &Rule {
        let (p, r) = self.rules[i];
        &self.set.policies[p].rules[r]
    }

    /// The rules that govern `agent`: every policy whose selector matches it.
    pub fn agent(&self, agent: &AgentRef) -> AgentRules {
        let mut view = AgentRules {
            agent: agent.clone(),
            ..Default::default()
        };
        let mut index = 0;
        for p in &self.set.policies {
            let applies =
                p.selector
                    .matches(&agent.cgroup, agent.label.as_deref(), agent.pod.as_ref());
            for r in &p.rules {
                if applies {
                    view.by_kind
                        .entry(r.matcher.kind())
                        .or_default()
                        .push(index);
                }
                index += 1;
            }
            // The proxy's settings are an enforcing policy's: a shadow policy's body limit,
            // interception or idle timeouts would change what the agent's requests meet (red
            // team round 27), and a shadow policy changes no outcome.
            let enforcing = applies && p.mode == Mode::Enforce;
            if enforcing && let Some(m) = p.max_body {
                view.max_body = Some(view.max_body.map_or(m, |v| v.min(m)));
            }
            if enforcing {
                view.intercept_tls.extend(p.intercept_tls.iter().cloned());
                view.idle_timeouts.extend(p.idle_timeouts.iter().cloned());
            }
            if applies {
                let target = match p.mode {
                    Mode::Enforce => &mut view.defaults,
                    Mode::Shadow => &mut view.shadow_defaults,
                };
                for (kind, posture) in &p.defaults {
                    let slot = target.entry(*kind).or_insert(Posture::Allow);
                    if *posture == Posture::Block {
                        *slot = Posture::Block;
                    }
                }
            }
        }
        for list in view.by_kind.values_mut() {
            list.sort_by(|&a, &b| {
                let (ra, rb) = (self.rule(a), self.rule(b));
                rb.specificity
                    .cmp(&ra.specificity)
                    .then(rb.verdict.cmp(&ra.verdict))
                    .then(a.cmp(&b))
            });
        }
        for &i in view
            .by_kind
            .get(&Kind::Http)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Matcher::Http(h) = &self.rule(i).matcher else {
                continue;
            };
            match &h.host {
                HostMatch::Exact(host) => view.http_exact.entry(host.clone()).or_default().push(i),
                HostMatch::Suffix(_) => view.http_suffix.push(i),
                HostMatch::Any => view.http_any.push(i),
            }
        }
        view
    }

    /// Decide `action` for the agent of `view` at `now`, with what the agent has armed (the
    /// engine's source, see [`Engine::with_armed_source`]) for outbound actions.
    pub fn decide(&self, view: &AgentRules, action: &Action, now: Instant) -> Decision {
        let armed = match action {
            Action::Http(_) | Action::Network { .. } => self.armed_now(view),
            _ => Vec::new(),
        };
        self.decide_armed(view, action, now, &armed)
    }

    /// The decision of a TCP/UDP connection to `port` when it is the same for every address
    /// (no enforcing `network` rule of the agent that covers the port and protocol names
    /// addresses: the first that names none, or the default posture): what the proxy knows
    /// without resolving a name. None: the decision depends on the address. Sequence rules are
    /// not consulted (as for the proxy's own connects: they decide by host, `then.http`).
    pub fn network_without_address(
        &self,
        view: &AgentRules,
        port: u16,
        protocol: Protocol,
        now: Instant,
    ) -> Option<Decision> {
        let rules = view
            .by_kind
            .get(&Kind::Network)
            .map_or(&[][..], Vec::as_slice);
        // Any enforcing rule that names addresses and covers the port may decide (a rule ranks
        // by the prefix that matched: `Engine::decide_armed`), so the address is needed;
        // otherwise the rule that ranks first where it matched (its narrowest range holding the
        // port, then the verdict, then the order: as `decide_plain` ranks them; not the list's
        // order, which is by each rule's broadest range: red team round 26), or the default.
        let mut first: Option<(usize, [u32; 4])> = None;
        for &i in rules {
            let rule = self.rule(i);
            let Matcher::Network {
                nets,
                ports,
                protocol: p,
                ..
            } = &rule.matcher
            else {
                continue;
            };
            let covers = (ports.is_empty()
                || ports.iter().any(|(lo, hi)| (lo..=hi).contains(&&port)))
                && (*p == Protocol::Any || *p == protocol);
            if !covers || rule.mode != Mode::Enforce {
                continue;
            }
            if !nets.is_empty() {
                return None;
            }
            // (No address is read for a rule that names none.)
            let Some(at) = rule
                .matcher
                .specificity_at(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port)
            else {
                continue;
            };
            let ranks_first = first.is_none_or(|(j, best)| {
                at.cmp(&best)
                    .then(rule.verdict.cmp(&self.rule(j).verdict))
                    .then(j.cmp(&i))
                    .is_gt()
            });
            if ranks_first {
                first = Some((i, at));
            }
        }
        Some(match first {
            Some((i, _)) => self.apply(i, &view.agent, now, false),
            None => self.default(view.defaults.get(&Kind::Network), Kind::Network),
        })
    }

    /// Whether a rule of the agent names `host` (lowercase): an `http` rule for that host or
    /// a `*.suffix` of it, or `proxy.intercept_tls`; a rule for any host (`*`) names none. The
    /// proxy looks such a name up in DNS for the agent: the policy chose it, not the agent.
    pub fn names_host(&self, view: &AgentRules, host: &str) -> bool {
        let http = view.http_exact.contains_key(host)
            || view.http_suffix.iter().any(
                |&i| matches!(&self.rule(i).matcher, Matcher::Http(h) if h.host.matches(host)),
            );
        http || view
            .intercept_tls
            .iter()
            .any(|m| !matches!(m, HostMatch::Any) && m.matches(host))
    }

    /// [`Engine::decide`] without sequence rules.
    fn decide_plain(&self, view: &AgentRules, action: &Action, now: Instant) -> Decision {
        let kind = action.kind();
        // Hosts usually arrive lowercase (the proxy normalises them): no copy then.
        let host = match action {
            Action::Http(r) if r.host.bytes().any(|b| b.is_ascii_uppercase()) => {
                Some(std::borrow::Cow::Owned(r.host.to_ascii_lowercase()))
            }
            Action::Http(r) => Some(std::borrow::Cow::Borrowed(r.host.as_str())),
            _ => None,
        };
        // HTTP rules come as three ordered lists (exact host, wildcard host, any host); other
        // kinds as one. Chaining slices keeps the hot path free of allocation.
        let (first, suffix, any_host): (&[usize], &[usize], &[usize]) = match &host {
            Some(host) => (
                view.http_exact
                    .get(host.as_ref())
                    .map_or(&[], Vec::as_slice),
                &view.http_suffix,
                &view.http_any,
            ),
            None => (view.by_kind.get(&kind).map_or(&[], Vec::as_slice), &[], &[]),
        };
        let candidates = first.iter().chain(suffix).chain(any_host).copied();
        // Network rules rank by the prefix and port range that matched, not by the rule's
        // broadest (as the kernel's entries do, one per prefix and range).
        if let Action::Network { addr, port, .. } = action {
            let mut matched: Vec<(usize, [u32; 4])> = candidates
                .filter(|&i| matches(self.rule(i), action, ""))
                .filter_map(|i| Some((i, self.rule(i).matcher.specificity_at(*addr, *port)?)))
                .collect();
            matched.sort_by(|(a, sa), (b, sb)| {
                sb.cmp(sa)
                    .then(self.rule(*b).verdict.cmp(&self.rule(*a).verdict))
                    .then(a.cmp(b))
            });
            return self.decide_among(view, kind, matched.into_iter().map(|(i, _)| i), now, |_| {
                true
            });
        }
        let path = match action {
            Action::Http(r) => match_path(&r.path),
            _ => std::borrow::Cow::Borrowed(""),
        };
        self.decide_among(view, kind, candidates, now, |rule| {
            matches(rule, action, &path)
        })
    }

    /// The first matching rule among `candidates` (in precedence order) decides.
    fn decide_among(
        &self,
        view: &AgentRules,
        kind: Kind,
        candidates: impl Iterator<Item = usize>,
        now: Instant,
        matches: impl Fn(&Rule) -> bool,
    ) -> Decision {
        let mut enforced = None;
        let mut any = None;
        for i in candidates {
            let rule = self.rule(i);
            if !matches(rule) {
                continue;
            }
            if any.is_none() {
                any = Some(i);
            }
            if rule.mode == Mode::Enforce {
                enforced = Some(i);
                break;
            }
        }
        let decision = match enforced {
            Some(i) => self.apply(i, &view.agent, now, false),
            None => self.default(view.defaults.get(&kind), kind),
        };
        let shadow = match any {
            Some(i) if Some(i) != enforced => Some(self.apply(i, &view.agent, now, true)),
            None if view.shadow_defaults.get(&kind) == Some(&Posture::Block)
                && decision.outcome == Outcome::Allow =>
            {
                Some(self.default(Some(&Posture::Block), kind))
            }
            _ => None,
        }
        .filter(|s| s.outcome != decision.outcome || s.rule != decision.rule);
        Decision {
            shadow: shadow.map(Box::new),
            ..decision
        }
    }

    fn default(&self, posture: Option<&Posture>, kind: Kind) -> Decision {
        let block = posture == Some(&Posture::Block);
        Decision {
            outcome: if block {
                Outcome::Block
            } else {
                Outcome::Allow
            },
            rule: None,
            reason: format!(
                "no rule matched; the default for {} is {}",
                kind.as_str(),
                if block { "block" } else { "allow" }
            ),
            generation: self.generation,
            shadow: None,
            armed_by: None,
        }
    }

    fn apply(&self, i: usize, agent: &AgentRef, now: Instant, shadow: bool) -> Decision {
        let rule = self.rule(i);
        let outcome = match rule.verdict {
            Verdict::Allow => Outcome::Allow,
            Verdict::Block => Outcome::Block,
            Verdict::Throttle => match &rule.throttle {
                Some(t) => self.take(i, agent, now, shadow, t.rate, t.per, t.key),
                None => Outcome::Block, // validation guarantees a throttle block; fail closed
            },
            Verdict::Sandbox => match &rule.sandbox {
                Some(s) => Outcome::Sandbox(s.clone()),
                None => Outcome::Block,
            },
            Verdict::Escalate => match &rule.escalate {
                Some(e) => Outcome::Escalate {
                    timeout: e.timeout,
                    on_timeout: e.on_timeout,
                },
                None => Outcome::Block,
            },
        };
        Decision {
            outcome,
            rule: Some(rule.id.clone()),
            reason: rule.reason.clone(),
            generation: self.generation,
            shadow: None,
            armed_by: None,
        }
    }

    /// Take a token from the rule's bucket: Allow if there was one, Throttle otherwise.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        rule: usize,
        agent: &AgentRef,
        now: Instant,
        shadow: bool,
        rate: u32,
        per: Duration,
        key: ThrottleKey,
    ) -> Outcome {
        let who = match key {
            ThrottleKey::Rule => String::new(),
            // The agent root, as the kernel keys its buckets: agents of one label share a
            // name, not a rate (red team round 34).
            ThrottleKey::Agent | ThrottleKey::AgentRule => agent.cgroup.clone(),
        };
        // Agent-keyed buckets are shared by all the agent's throttle rules.
        let rule = (key != ThrottleKey::Agent).then(|| self.rule(rule).id.clone());
        let per_token = per.as_secs_f64() / f64::from(rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets
            .entry(BucketId { rule, who, shadow })
            .or_insert(Bucket {
                tokens: f64::from(rate),
                at: now,
            });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed / per_token).min(f64::from(rate));
        b.at = now.max(b.at);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Outcome::Allow
        } else {
            Outcome::Throttle {
                retry_after: Duration::from_secs_f64((1.0 - b.tokens) * per_token),
            }
        }
    }
}

/// `path` is the request's [`match_path`] (HTTP actions).
fn matches(rule: &Rule, action: &Action, path: &str) -> bool {
    match (&rule.matcher, action) {
        (Matcher::Exec(p), Action::Exec { path }) => p.matches(path),
        // A file rule holds for the four accesses the kernel decides by file rules, not for
        // exec, which exec rules decide (red team round 34: `policy test` said a block on a
        // prefix refused running a program there, which the kernel let run; `exec` listed in
        // `access` is not enforced, and said so at load).
        (Matcher::File { path: p, access }, Action::File { path, access: a }) => {
            p.matches(path)
                && *a != crate::policy::Access::Exec
                && (access.is_empty() || access.contains(a))
        }
        (
            Matcher::Network {
                nets,
                ports,
                protocol,
                ..
            },
            Action::Network {
                addr,
                port,
                protocol: p,
            },
        ) => {
            (nets.is_empty() || nets.iter().any(|n| n.contains(*addr)))
                && (ports.is_empty() || ports.iter().any(|(lo, hi)| (lo..=hi).contains(&port)))
                && (*protocol == Protocol::Any || protocol == p)
        }
        (Matcher::Http(h), Action::Http(req)) => {
            // A rule that restricts reads strings as every upstream might, in any case
            // (URL schemes and SQL keywords have none); an allow rule, only as it spells them.
            // (Paths match in any case; an allow rule's path in another case is refused
            // before: `Engine::allowed_in_another_case`.)
            let allows = rule.verdict == Verdict::Allow;
            h.host.matches(&req.host)
                && h.covers_method(&req.method)
                && path_matches(h.path.as_deref(), path)
                && h.headers.iter().all(|(name, value)| {
                    // A restricting rule reads a value in any case an upstream folds, as
                    // servers read auth schemes and media types (`bearer`, `Application/JSON`).
                    req.headers.iter().any(|(n, v)| {
                        n.eq_ignore_ascii_case(name)
                            && if allows {
                                glob::simple(value, v)
                            } else {
                                glob::simple(
                                    &crate::policy::cond::fold(value),
                                    &crate::policy::cond::fold(v),
                                )
                            }
                    })
                })
                && (h.body.is_empty()
                    || req
                        .body
                        .as_ref()
                        .is_some_and(|b| h.body.iter().all(|c| c.holds(b, !allows))))
                && mcp_matches(h.mcp.as_ref(), req.body.as_ref(), !allows)
        }
        (Matcher::Unix(t), Action::Unix { target }) => t == target,
        _ => false,
    }
}

/// `rule` (a rule's path, in [`match_path`] form) against `path` (a request's, in that form).
fn path_matches(rule: Option<&str>, path: &str) -> bool {
    rule.is_none_or(|p| {
        if glob::is_glob(p) {
            glob::path(p, path)
        } else {
            p == path
        }
    })
}

/// An MCP condition (tool glob, argument conditions) on a JSON-RPC `tools/call` body.
fn mcp_matches(
    mcp: Option<&(String, Vec<crate::policy::cond::Condition>)>,
    body: Option<&Value>,
    fold_case: bool,
) -> bool {
    mcp.is_none_or(|(tool, args)| {
        let Some(body) = body else { return false };
        body.get("method").and_then(Value::as_str) == Some("tools/call")
            && body
                .pointer("/params/name")
                .and_then(Value::as_str)
                .is_some_and(|name| glob::simple(tool, name))
            && args.iter().all(|c| {
                c.holds(
                    body.pointer("/params/arguments").unwrap_or(&Value::Null),
                    fold_case,
                )
            })
    })
}

mod sequence;
pub mod testing;

pub use self::sequence::{Armed, ArmedSource};

#[cfg(test)]
mod tests;
