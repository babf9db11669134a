//! Validation: the model of one document → a validated [`Policy`], or problems.

use super::*;

/// Validation context for one document.
pub(super) struct Cx<'a> {
    pub(super) file: &'a Arc<Path>,
    /// Line offset of the document in its file.
    pub(super) offset: usize,
    pub(super) problems: &'a mut Vec<Problem>,
}

/// What a policy's rules are validated against, besides their own text and place: the
/// policy's name (the rules' ids are `<policy>/<id>`), its mode and its sandbox profiles.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RuleContext {
    pub(super) name: String,
    pub(super) mode: Mode,
    pub(super) profiles: BTreeMap<String, model::SandboxProfile>,
}

impl RuleContext {
    /// The context `policy`'s rules were validated against.
    pub(super) fn of(policy: &Policy) -> RuleContext {
        RuleContext {
            name: policy.name.clone(),
            mode: policy.mode,
            profiles: policy.sandbox_profiles.clone(),
        }
    }
}

/// A document read into its parts ([`Cx::parts`]), before validation ([`Cx::finish`]).
pub(super) struct Parts {
    /// The policy without its rules (they are in `rules`).
    pub(super) doc: Option<model::PolicyDoc>,
    /// Whether it was read without a problem.
    pub(super) top_clean: bool,
    /// Whether its only problems were unknown fields.
    pub(super) top_unknown_only: bool,
    /// The rules read without a problem, in order.
    pub(super) rules: Vec<model::RuleDoc>,
    /// The line (0-based, in the document) where each of them starts.
    pub(super) rule_lines: Vec<usize>,
    /// Whether every rule was.
    pub(super) rules_clean: bool,
}

impl Parts {
    /// Read without a problem: every rule of the document is in `rules`.
    pub(super) fn clean(&self) -> bool {
        self.doc.is_some() && self.top_clean && self.rules_clean
    }
}

impl Cx<'_> {
    pub(super) fn loc(&self, span: &Span) -> Location {
        let (line, column) = span.start().map_or((self.offset + 1, 1), |m| {
            (m.line() + self.offset, m.column())
        });
        Location {
            file: Arc::clone(self.file),
            line,
            column,
        }
    }

    pub(super) fn problem_at(&mut self, at: Option<Marker>, message: String) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            at: at.map(|m| (m.line() + self.offset, m.column())),
            message,
        });
    }

    pub(super) fn problem(&mut self, span: &Span, message: impl ToString) {
        self.problem_at(span.start().copied(), message.to_string());
    }

    pub(super) fn found(&mut self, found: Vec<Found>, prefix: &str) {
        for f in found {
            let message = f.message(prefix);
            self.problem_at(f.at, message);
        }
    }

    /// A document's tree (parsed YAML) read into its parts: the policy without its rules, and
    /// the rules, each on its own (problems recorded; [`Cx::finish`] validates them).
    ///
    /// Every problem a document has is found, not just the first: the rules are read one by
    /// one, and a part with a problem is read again without the entry at fault (see
    /// [`recover`]). The parts read cleanly are then validated as usual; a part that had a
    /// problem is not, since what is left of it would report problems that are not there.
    pub(super) fn parts(&mut self, mut node: marked_yaml::Node) -> Parts {
        let rule_nodes = match node.as_mapping_mut().and_then(|m| m.get_mut("rules")) {
            Some(marked_yaml::Node::Sequence(seq)) => std::mem::take(&mut **seq),
            _ => Vec::new(),
        };
        let (doc, top) = recover::<model::PolicyDoc>(node);
        let top_clean = top.is_empty();
        let top_unknown_only = top.iter().all(|f| f.unknown_field);
        self.found(top, "");
        let mut rules = Vec::with_capacity(rule_nodes.len());
        let mut rule_lines = Vec::with_capacity(rule_nodes.len());
        let mut rules_clean = true;
        for (i, rule) in rule_nodes.into_iter().enumerate() {
            let line = rule
                .span()
                .start()
                .map_or(0, |m| m.line().saturating_sub(1));
            match recover::<model::RuleDoc>(rule) {
                (Some(rule), found) if found.is_empty() => {
                    rules.push(rule);
                    rule_lines.push(line);
                }
                (_, found) => {
                    rules_clean = false;
                    self.found(found, &format!("rules[{i}]"));
                }
            }
        }
        Parts {
            doc,
            top_clean,
            top_unknown_only,
            rules,
            rule_lines,
            rules_clean,
        }
    }

    /// Validate a document's parts; None if it had problems (recorded since `before`, then put
    /// in the order they appear).
    pub(super) fn finish(&mut self, parts: Parts, before: usize) -> Option<Policy> {
        let Parts {
            doc,
            top_clean,
            top_unknown_only,
            rules,
            rules_clean,
            ..
        } = parts;
        let policy = doc.and_then(|mut doc| {
            doc.rules = rules;
            if top_clean {
                self.policy(doc).filter(|_| rules_clean)
            } else {
                if top_unknown_only {
                    // The rest of the policy says what it says: its rules can be checked.
                    self.rules_only(doc);
                }
                None
            }
        });
        self.problems[before..].sort_by_key(|p| p.at);
        policy
    }

    /// Validate the rules of a policy whose other parts had problems (already recorded).
    pub(super) fn rules_only(&mut self, doc: model::PolicyDoc) {
        let mut ignored = Vec::new();
        let profiles = Cx {
            file: self.file,
            offset: self.offset,
            problems: &mut ignored,
        }
        .profiles(&doc.sandbox_profiles);
        let mode = doc.mode.as_ref().map_or(Mode::Enforce, |m| **m);
        self.rules(doc.name.trim(), mode, &profiles, doc.rules);
    }

    pub(super) fn profiles(
        &mut self,
        docs: &BTreeMap<String, Spanned<model::SandboxProfile>>,
    ) -> BTreeMap<String, model::SandboxProfile> {
        let mut profiles = BTreeMap::new();
        for (pname, profile) in docs {
            for w in &profile.writable {
                if let Err(msg) = self.abs_path(w) {
                    self.problem(profile.span(), format!("sandbox profile `{pname}`: {msg}"))
                }
            }
            profiles.insert(pname.clone(), (**profile).clone());
        }
        profiles
    }

    pub(super) fn rules(
        &mut self,
        name: &str,
        mode: Mode,
        profiles: &BTreeMap<String, model::SandboxProfile>,
        docs: Vec<model::RuleDoc>,
    ) -> Vec<Arc<Rule>> {
        let mut ids: BTreeMap<String, Location> = BTreeMap::new();
        // Each rule goes into its `Arc` as it is made. (Mapping a `Vec<Rule>` into `Arc`s
        // afterwards collects in place: the policy would keep the rules' whole buffer, a few
        // hundred bytes per rule, as the capacity of its list of pointers.)
        let mut rules = Vec::with_capacity(docs.len());
        for r in docs {
            let at = self.loc(r.id.span());
            if let Some(first) = ids.get(r.id.as_str()) {
                self.problem(
                    r.id.span(),
                    format!("duplicate rule id `{}` (first at {first})", *r.id),
                );
                continue;
            }
            ids.insert(r.id.to_string(), at);
            if let Some(rule) = self.rule(name, mode, profiles, r) {
                rules.push(Arc::new(rule));
            }
        }
        rules
    }

    /// Validate one policy document; None if it had problems (already recorded).
    pub(super) fn policy(&mut self, doc: model::PolicyDoc) -> Option<Policy> {
        self.policy_with(doc, |cx, context, docs| {
            Some(cx.rules(&context.name, context.mode, &context.profiles, docs))
        })
    }

    /// [`policy`](Self::policy), its rules made by `rules` from its own (which it may leave
    /// aside: a re-read takes the rules that did not change as they were validated, see
    /// `items`); None if `rules` gave none.
    pub(super) fn policy_with(
        &mut self,
        mut doc: model::PolicyDoc,
        rules: impl FnOnce(&mut Self, &RuleContext, Vec<model::RuleDoc>) -> Option<Vec<Arc<Rule>>>,
    ) -> Option<Policy> {
        let before = self.problems.len();
        let name = doc.name.trim().to_owned();
        if !valid_name(&name) {
            self.problem(
                doc.name.span(),
                format!("policy name `{name}`: use letters, digits, `-`, `_` or `.`"),
            );
        }
        let mode = doc.mode.as_ref().map_or(Mode::Enforce, |m| **m);
        let selector = self.selector(&doc.agents);
        let mut defaults = BTreeMap::new();
        for (kind, posture) in [
            (Kind::Exec, &doc.defaults.exec),
            (Kind::File, &doc.defaults.file),
            (Kind::Network, &doc.defaults.network),
            (Kind::Http, &doc.defaults.http),
            (Kind::Unix, &doc.defaults.unix),
        ] {
            if let Some(p) = posture {
                defaults.insert(kind, **p);
            }
        }
        let report_defaults = self.report_defaults(&doc.defaults.report);
        let context = RuleContext {
            name,
            mode,
            profiles: self.profiles(&doc.sandbox_profiles),
        };
        let rules = rules(self, &context, std::mem::take(&mut doc.rules))?;
        let RuleContext {
            name,
            mode,
            profiles,
        } = context;
        let max_body = doc
            .proxy
            .as_ref()
            .and_then(|p| p.max_body.as_ref())
            .and_then(|m| {
                match parse_size(m).map_err(|e| e.to_string()).and_then(|n| {
                    usize::try_from(n)
                        .ok()
                        .filter(|n| (1..=MAX_BODY_LIMIT).contains(n))
                        .ok_or_else(|| {
                            format!("size `{}` must be between 1 byte and 1GiB", m.trim())
                        })
                }) {
                    Ok(n) => Some(n),
                    Err(msg) => {
                        self.problem(m.span(), format!("proxy.max_body: {msg}"));
                        None
                    }
                }
            });
        let mut intercept_tls = Vec::new();
        for h in doc.proxy.iter().flat_map(|p| &p.intercept_tls) {
            let host = h.trim().to_ascii_lowercase();
            let spelled = host_spelling(&host).unwrap_or_default();
            let checked = if spelled.parse::<std::net::IpAddr>().is_ok() {
                Err(format!(
                    "host `{host}` is an IP address; TLS is intercepted by server name"
                ))
            } else {
                host_match(&host).map_err(|e| e.to_string())
            };
            match checked {
                Ok(m) => intercept_tls.push(m),
                Err(msg) => self.problem(h.span(), format!("proxy.intercept_tls: {msg}")),
            }
        }
        let mut idle_timeouts = Vec::new();
        for (h, t) in doc.proxy.iter().flat_map(|p| &p.idle_timeout) {
            let host = h.trim().to_ascii_lowercase();
            match host_match(&host).and_then(|m| parse_duration(t).map(|d| (m, d))) {
                Ok(x) => idle_timeouts.push(x),
                Err(msg) => self.problem(t.span(), format!("proxy.idle_timeout: {msg}")),
            }
        }
        let at = self.loc(doc.name.span());
        let kernel = doc.kernel.unwrap_or_default();
        let allow_capabilities = kernel
            .allow_capabilities
            .as_ref()
            .map(|names| self.capabilities(names));
        (self.problems.len() == before).then(|| Policy {
            max_body,
            intercept_tls,
            idle_timeouts,
            allow_raw_sockets: kernel.allow_raw_sockets,
            allow_user_namespaces: kernel.allow_user_namespaces,
            allow_runtime_sockets: kernel.allow_runtime_sockets,
            allow_name_service_sockets: kernel.allow_name_service_sockets,
            allow_capabilities,
            allow_mounts: kernel.allow_mounts,
            allow_loader_exec: kernel.allow_loader_exec,
            allow_kernel_settings: kernel.allow_kernel_settings,
            allow_system_files: kernel.allow_system_files,
            name,
            at,
            description: doc
                .description
                .map(|d| d.trim().to_owned())
                .unwrap_or_default(),
            file: self.file.to_path_buf(),
            mode,
            selector: selector.unwrap_or_default(),
            defaults,
            report_defaults,
            sandbox_profiles: profiles,
            rules,
        })
    }

    /// `kernel.allow_capabilities`: capability names → mask. Every name must be a
    /// capability that agents are refused (the others they have already).
    pub(super) fn capabilities(&mut self, names: &[model::Str]) -> u64 {
        use governance_common::caps;
        let mut mask = 0;
        for name in names {
            match caps::by_name(name) {
                Some(cap) if caps::REFUSED & (1 << cap) != 0 => mask |= 1 << cap,
                Some(cap) => self.problem(
                    name.span(),
                    format!(
                        "kernel.allow_capabilities: agents are never refused {}; only these can be given back: {}",
                        caps::name(cap),
                        refusable_capabilities()
                    ),
                ),
                None => self.problem(
                    name.span(),
                    format!(
                        "kernel.allow_capabilities: `{}` is not a capability (write e.g. CAP_NET_ADMIN); these can be given back: {}",
                        name.trim(),
                        refusable_capabilities()
                    ),
                ),
            }
        }
        mask
    }

    pub(super) fn selector(&mut self, agents: &Spanned<model::AgentSelector>) -> Option<Selector> {
        let span = agents.span();
        let kube = agents.pod_labels.is_some()
            || agents.namespace.is_some()
            || agents.namespace_labels.is_some()
            || agents.service_account.is_some();
        if agents.cgroup.is_none() && agents.label.is_none() && !kube {
            self.problem(
                span,
                "empty selector: give `cgroup` (a path glob), `label`, or a Kubernetes selector \
                 (`pod_labels`, `namespace`, `namespace_labels`, `service_account`)",
            );
            return None;
        }
        let mut sel = Selector::default();
        if kube {
            sel.pod = Some(self.pod_selector(agents));
        }
        if let Some(c) = &agents.cgroup {
            let g = c.trim().trim_start_matches('/');
            let bad = if g.is_empty() {
                Some("the cgroup2 root itself is never an agent")
            } else if g.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
                Some("empty, `.` and `..` segments never name a cgroup")
            } else if g.split('/').any(|s| s.starts_with("cgroup.")) {
                Some("`cgroup.*` names are the kernel's interface files, never cgroups")
            } else if g.contains('\0') {
                Some("NUL never appears in a cgroup name")
            } else if g.split('/').count() >= governance_common::MAX_CGROUP_DEPTH as usize {
                Some("deeper than the kernel programs look for agent roots")
            } else {
                None
            };
            match bad {
                Some(why) => self.problem(
                    c.span(),
                    format!("selector matches nothing: cgroup `{}`: {why}", **c),
                ),
                None => sel.cgroup = Some(g.to_owned()),
            }
        }
        if let Some(l) = &agents.label {
            if l.is_empty() || l.len() > 255 || l.chars().any(char::is_control) {
                self.problem(
                    l.span(),
                    "selector matches nothing: a label is 1 to 255 printable characters",
                );
            } else {
                sel.label = Some(l.to_string());
            }
        }
        Some(sel)
    }

    pub(super) fn pod_selector(&mut self, agents: &model::AgentSelector) -> PodSelector {
        let mut pod = PodSelector::default();
        for (doc, out) in [
            (&agents.pod_labels, &mut pod.pod_labels),
            (&agents.namespace_labels, &mut pod.namespace_labels),
        ] {
            if let Some(doc) = doc {
                match kube::LabelSelector::from_doc(doc) {
                    Ok(s) => *out = Some(s),
                    Err(e) => self.problem(doc.span(), format!("selector matches nothing: {e}")),
                }
            }
        }
        if let Some(n) = &agents.namespace {
            if kube::dns_label(n) {
                pod.namespace = Some(n.to_string());
            } else {
                self.problem(
                    n.span(),
                    format!("selector matches nothing: namespace `{}` is not a DNS label (a-z, 0-9, `-`, at most 63)", **n),
                );
            }
        }
        if let Some(a) = &agents.service_account {
            if kube::dns_subdomain(a) {
                pod.service_account = Some(a.to_string());
            } else {
                self.problem(
                    a.span(),
                    format!(
                        "selector matches nothing: service account `{}` is not a DNS subdomain",
                        **a
                    ),
                );
            }
        }
        pod
    }

    pub(super) fn abs_path(&self, p: &str) -> Result<PathBuf, String> {
        if !p.starts_with('/') {
            return Err(format!("`{p}` is not an absolute path"));
        }
        if p.len() > MAX_PATH_LEN {
            return Err(format!(
                "path is {} bytes long; the limit is {MAX_PATH_LEN}",
                p.len()
            ));
        }
        if p.split('/').any(|s| s == "." || s == "..") {
            return Err(format!(
                "`{p}` has `.` or `..` segments; write the resolved path"
            ));
        }
        // The kernel names files with single slashes: a rule spelled with `//` would match
        // nothing there (red team round 27).
        if p.contains("//") {
            return Err(format!(
                "`{p}` has an empty segment (`//`); write single slashes"
            ));
        }
        // Paths are literal: a `*` would match only a file named `*` (red team round 27).
        if p.contains(['*', '?']) {
            return Err(format!(
                "`{p}` has `*` or `?`: file, exec and socket paths are literal, not patterns; \
                 write `prefix:` for everything below a directory"
            ));
        }
        Ok(PathBuf::from(p))
    }

    pub(super) fn path_match(
        &mut self,
        what: &str,
        span: &Span,
        path: &Option<model::Str>,
        prefix: &Option<model::Str>,
    ) -> Option<PathMatch> {
        let (s, exact) = match (path, prefix) {
            (Some(p), None) => (p, true),
            (None, Some(p)) => (p, false),
            _ => {
                self.problem(
                    span,
                    format!("{what}: give exactly one of `path` or `prefix`"),
                );
                return None;
            }
        };
        match self.abs_path(s) {
            // A file's name has no trailing slash: the kernel never names one that way.
            Ok(_) if exact && s.len() > 1 && s.ends_with('/') => {
                self.problem(
                    s.span(),
                    format!(
                        "{what}: `path: {}` ends in `/` and so names no file; write `prefix: {}` \
                         for a directory and everything below it, or drop the `/`",
                        **s, **s
                    ),
                );
                None
            }
            Ok(p) if exact => Some(PathMatch::Exact(p)),
            // A prefix is its directory and what is below it, written with or without the
            // trailing `/`: kept without it, so that every table made from it holds the
            // directory itself too (red team round 32: `prefix: /d/` had no entry for `/d`
            // in the kernel's path and identity tables, so the agent renamed, listed or
            // changed the mode of the directory its rule protects).
            // (`//` is refused: one `/` at most; `/` itself stays.)
            Ok(_) => Some(PathMatch::Prefix(PathBuf::from(
                s.strip_suffix('/').filter(|d| !d.is_empty()).unwrap_or(s),
            ))),
            Err(msg) => {
                self.problem(s.span(), format!("{what}: {msg}"));
                None
            }
        }
    }

    pub(super) fn unix_target(&mut self, span: &Span, u: &model::UnixMatch) -> Option<UnixTarget> {
        match (&u.path, &u.abstract_name) {
            (Some(p), None) => match self.abs_path(p) {
                Ok(p) => Some(UnixTarget::Path(p)),
                Err(msg) => {
                    self.problem(p.span(), format!("unix: {msg}"));
                    None
                }
            },
            (None, Some(n)) => {
                let bytes = n.as_bytes().to_vec();
                if bytes.is_empty() || bytes.len() >= governance_common::SUN_PATH_LEN {
                    self.problem(
                        n.span(),
                        format!(
                            "unix: an abstract name is 1 to {} bytes (without the leading NUL)",
                            governance_common::SUN_PATH_LEN - 1
                        ),
                    );
                    None
                } else {
                    Some(UnixTarget::Abstract(bytes))
                }
            }
            _ => {
                self.problem(span, "unix: give exactly one of `path` or `abstract`");
                None
            }
        }
    }

    pub(super) fn conditions(&mut self, list: &[model::Str]) -> Vec<Condition> {
        list.iter()
            .filter_map(|c| match c.parse::<Condition>() {
                Ok(c) => Some(c),
                Err(msg) => {
                    self.problem(c.span(), format!("bad JSON condition `{}`: {msg}", **c));
                    None
                }
            })
            .collect()
    }

    pub(super) fn matcher(&mut self, r: &model::RuleDoc) -> Option<Matcher> {
        let span = r.id.span();
        if !exactly_one(&[
            r.exec.is_some(),
            r.file.is_some(),
            r.network.is_some(),
            r.http.is_some(),
            r.unix.is_some(),
            r.sequence.is_some(),
        ]) {
            self.problem(
                span,
                format!(
                    "rule `{}`: give exactly one of `exec`, `file`, `network`, `http`, `unix` or `sequence`",
                    *r.id
                ),
            );
            return None;
        }
        if let Some(s) = &r.sequence {
            return self
                .sequence(span, &r.verdict, s)
                .map(|s| Matcher::Sequence(Box::new(s)));
        }
        if let Some(u) = &r.unix {
            return self.unix_target(span, u).map(Matcher::Unix);
        }
        if let Some(e) = &r.exec {
            return self
                .path_match("exec", span, &e.path, &e.prefix)
                .map(Matcher::Exec);
        }
        if let Some(f) = &r.file {
            let path = self.path_match("file", span, &f.path, &f.prefix)?;
            return Some(Matcher::File {
                path,
                access: f.access.clone(),
            });
        }
        if let Some(n) = &r.network {
            let mut nets = Vec::new();
            if let Some(list) = &n.cidr {
                for c in &list.0 {
                    match c.trim().parse::<IpNet>() {
                        Ok(net) => nets.push(net),
                        Err(msg) => self.problem(list.span(), format!("bad CIDR: {msg}")),
                    }
                }
            }
            let mut ports = Vec::new();
            if let Some(list) = &n.ports {
                for p in &list.0 {
                    match parse_ports(p) {
                        Ok(range) => ports.push(range),
                        Err(msg) => self.problem(list.span(), msg),
                    }
                }
            }
            return Some(Matcher::Network {
                nets,
                ports,
                protocol: n.protocol.unwrap_or(Protocol::Any),
                via_proxy: n.via_proxy,
            });
        }
        let h = r.http.as_ref()?;
        let host = match &h.host {
            None => HostMatch::Any,
            Some(raw) => match host_match(&raw.trim().to_ascii_lowercase()) {
                Ok(m) => m,
                Err(msg) => {
                    self.problem(raw.span(), msg);
                    return None;
                }
            },
        };
        let mut methods = Vec::new();
        if let Some(list) = &h.method {
            for m in &list.0 {
                let up = m.trim().to_ascii_uppercase();
                if up.is_empty() || !up.chars().all(|c| c.is_ascii_alphabetic()) {
                    self.problem(list.span(), format!("`{m}` is not an HTTP method"));
                }
                methods.push(up);
            }
        }
        // Rule paths are matched in the form requests are: normalised as the proxy normalises
        // request paths, then ASCII-lowercased and without a trailing slash.
        let path = h.path.as_ref().and_then(|p| {
            if !p.starts_with('/') {
                self.problem(p.span(), format!("HTTP path `{}` must start with `/`", **p));
                return None;
            }
            match crate::proxy::request::normalise_path(p) {
                Ok(n) => Some((
                    glob::match_path(&n).into_owned(),
                    glob::exact_path(&n).into_owned(),
                )),
                Err(e) => {
                    self.problem(
                        p.span(),
                        format!("HTTP path `{}` can never match a request: {e}", **p),
                    );
                    None
                }
            }
        });
        let headers = h
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        let body = self.conditions(&h.body);
        let mcp = h
            .mcp
            .as_ref()
            .map(|m| (m.tool.to_string(), self.conditions(&m.arguments)));
        let (path, path_exact) = path.unzip();
        Some(Matcher::Http(Box::new(HttpMatcher {
            host,
            methods,
            path,
            path_exact,
            headers,
            body,
            mcp,
        })))
    }

    pub(super) fn rule(
        &mut self,
        policy: &str,
        policy_mode: Mode,
        profiles: &BTreeMap<String, model::SandboxProfile>,
        r: model::RuleDoc,
    ) -> Option<Rule> {
        let before = self.problems.len();
        let id_span = r.id.span();
        if !valid_name(&r.id) {
            self.problem(
                id_span,
                format!("rule id `{}`: use letters, digits, `-`, `_` or `.`", *r.id),
            );
        }
        if r.reason.trim().is_empty() {
            self.problem(
                r.reason.span(),
                "a rule needs a reason: events and denials quote it",
            );
        }
        let matcher = self.matcher(&r);
        let verdict = *r.verdict;
        let vspan = r.verdict.span();
        for (name, has, wanted) in [
            ("throttle", r.throttle.is_some(), Verdict::Throttle),
            ("escalate", r.escalate.is_some(), Verdict::Escalate),
            ("sandbox", r.sandbox.is_some(), Verdict::Sandbox),
        ] {
            if has && verdict != wanted {
                self.problem(
                    vspan,
                    format!("`{name}` settings only go with `verdict: {name}`"),
                );
            }
            if !has && verdict == wanted {
                self.problem(vspan, format!("`verdict: {name}` needs a `{name}:` block"));
            }
        }
        let throttle = r.throttle.as_ref().and_then(|t| {
            let rate = match &t.rate {
                Some(rate) if **rate > 0 => **rate,
                Some(rate) => {
                    self.problem(rate.span(), "throttle rate must be at least 1");
                    return None;
                }
                None => {
                    self.problem(
                        t.per.span(),
                        "a throttle needs a `rate` (requests per `per`)",
                    );
                    return None;
                }
            };
            match parse_duration(&t.per) {
                Ok(per) => Some(Throttle {
                    rate,
                    per,
                    key: t.key.unwrap_or(ThrottleKey::AgentRule),
                }),
                Err(msg) => {
                    self.problem(t.per.span(), msg);
                    None
                }
            }
        });
        let escalate = r.escalate.as_ref().and_then(|e| match &e.timeout {
            None => {
                self.problem(
                    vspan,
                    "an escalation needs a `timeout` (what if nobody answers?)",
                );
                None
            }
            Some(t) => match parse_duration(t) {
                Ok(timeout) => Some(Escalate {
                    timeout,
                    on_timeout: e.on_timeout.unwrap_or(Posture::Block),
                }),
                Err(msg) => {
                    self.problem(t.span(), msg);
                    None
                }
            },
        });
        let sandbox = r.sandbox.as_ref().and_then(|s| {
            let is_http = matcher.as_ref().is_some_and(|m| m.kind() == Kind::Http);
            match (&s.profile, &s.upstream) {
                (Some(p), None) if !is_http => {
                    if profiles.contains_key(p.as_str()) {
                        Some(SandboxTarget::Profile(p.to_string()))
                    } else {
                        self.problem(p.span(), format!("no sandbox profile `{}` in this policy's `sandbox_profiles`", **p));
                        None
                    }
                }
                (None, Some(u)) if is_http => {
                    if u.starts_with("http://") || u.starts_with("https://") {
                        Some(SandboxTarget::Upstream(u.to_string()))
                    } else {
                        self.problem(u.span(), format!("sandbox upstream `{}` must be an http:// or https:// URL", **u));
                        None
                    }
                }
                _ => {
                    self.problem(
                        vspan,
                        "sandbox: HTTP rules take `upstream`, other rules take `profile` (exactly one)",
                    );
                    None
                }
            }
        });
        let matcher = matcher?;
        let report = self.rule_report(&r.report, verdict, matcher.kind());
        (self.problems.len() == before).then(|| Rule {
            report,
            id: format!("{policy}/{}", *r.id),
            verdict,
            reason: r.reason.trim().to_owned(),
            mode: r.mode.as_ref().map_or(policy_mode, |m| **m),
            specificity: matcher.specificity(),
            matcher,
            throttle,
            escalate,
            sandbox,
            at: self.loc(id_span),
        })
    }
}
