//! From a parsed request head to what the engine decides on, and what is forwarded.
//!
//! Pure functions, so the fuzz target and the property tests drive exactly what the proxy
//! runs. What is decided on is what is forwarded: the path the engine sees is the normalised
//! path, and that normalised path (with the original query) is what goes upstream.
//!
//! - **Host**: the absolute-form (or HTTP/2 `:authority`) authority, else the `Host` header;
//!   port stripped, lowercased, a trailing dot removed, IPv6 brackets removed. Two `Host`
//!   headers, userinfo (`user@host`) or an unparsable authority → 400.
//! - **Path** ([`normalise_path`]): percent-encoded unreserved characters (`A-Z a-z 0-9 - . _
//!   ~`) are decoded (RFC 3986 §6.2.2.2: the same resource), repeated slashes are merged,
//!   other escapes are kept in uppercase hex, raw non-ASCII characters are percent-encoded.
//!   Refused with 400, since servers read them differently: `.`/`..` segments (also encoded
//!   ones), `%2F` (an encoded `/`), `%5C` and raw `\`, encoded control characters (`%00`...),
//!   `%25` followed by two hex digits (double encoding), escapes that decode to bytes that are
//!   not UTF-8 (overlong `%C0%AE`), non-ASCII characters that case folding or NFKC reads as
//!   ASCII letters, digits or name characters (the Kelvin sign, fullwidth letters), segments
//!   that start or end with a Unicode space or invisible character (which trimming reads
//!   away), `;` (path parameters, which some servers strip), segments
//!   that end in `.` or a space (which Windows servers strip), and bad escapes. Rules match the path ASCII-lowercased, without a trailing slash
//!   and with the escapes of other printable characters decoded
//!   ([`crate::policy::glob::match_path`]); the path forwarded keeps its case and escapes.
//! - **Framing** ([`check_framing`]): more than one `Content-Length` (also equal ones, and a
//!   list `5, 5`), a `Transfer-Encoding` other than exactly `chunked`, or `Content-Length`
//!   together with `Transfer-Encoding` → 400 and the connection is closed, on any request of a
//!   connection. hyper already refuses differing `Content-Length`s and `chunked, identity`; it
//!   quietly merges equal `Content-Length` lines and drops one that comes with
//!   `Transfer-Encoding: chunked`, so the proxy also follows the raw framing of HTTP/1
//!   connections (see [`super::framing`]).

use std::borrow::Cow;

use hyper::{
    HeaderMap, Method, Uri, Version,
    header::{self, HeaderValue},
    http::uri::Authority,
};
use serde_json::Value;

pub use super::framing::RawHead;
use crate::engine::HttpRequest;

/// Why a request is refused before any decision (each → 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("ambiguous message framing: {0}")]
    Framing(&'static str),
    #[error("bad request target: {0}")]
    Target(String),
    #[error("bad path: {0}")]
    Path(&'static str),
}

/// The request target, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Uppercase.
    pub method: String,
    /// Lowercase, no port, no brackets, no trailing dot.
    pub host: String,
    pub port: Option<u16>,
    /// `host[:port]` for the upstream's `Host` header, as the client wrote it.
    pub authority: String,
    /// Normalised (see the module documentation); empty for CONNECT.
    pub path: String,
    /// The query, without `?`, as written.
    pub query: Option<String>,
    /// The request named its target itself (HTTP/1 absolute-form): explicit proxy use.
    pub absolute: bool,
    /// How it came over TLS, if it did (its URL is then `https://`).
    pub tls: Option<Tls>,
}

/// How a request came over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// A TLS connection decided on its server name (method `CONNECT`), spliced if allowed.
    Spliced,
    /// A request inside a TLS connection the proxy intercepted.
    Intercepted,
}

impl Tls {
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Spliced => "spliced",
            Tls::Intercepted => "intercepted",
        }
    }
}

impl Head {
    /// `http://authority/path?query`, or `https://` over TLS; a CONNECT's authority (for
    /// records and approvals).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        if self.method == "CONNECT" {
            return match self.tls {
                Some(_) => format!("{scheme}{}", self.authority),
                None => self.authority.clone(),
            };
        }
        let mut url = String::with_capacity(8 + self.authority.len() + self.path.len());
        url.push_str(scheme);
        url.push_str(&self.authority);
        url.push_str(&self.path);
        if let Some(q) = &self.query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    /// The path and query to send upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Refuse a request whose body length could be read two ways. `raw`: what the raw bytes of
/// this request's head said (HTTP/1; see [`super::framing`]): hyper merges equal
/// `Content-Length` lines and drops one that comes with `Transfer-Encoding`, so the parsed
/// headers cannot show either.
pub fn check_framing(headers: &HeaderMap, raw: Option<RawHead>) -> Result<(), Reject> {
    let cl = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(raw) = raw {
        if raw.lost {
            return Err(Reject::Framing(
                "the connection's message framing could not be followed",
            ));
        }
        if raw.content_lengths > 1 {
            return Err(Reject::Framing("more than one Content-Length"));
        }
        if raw.content_lengths > 0 && raw.transfer_encoding {
            return Err(Reject::Framing(
                "Content-Length together with Transfer-Encoding",
            ));
        }
    }
    if cl > 1 {
        return Err(Reject::Framing("more than one Content-Length"));
    }
    if let Some(v) = headers.get(header::CONTENT_LENGTH)
        && (v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err(Reject::Framing("a Content-Length that is not one number"));
    }
    if let Some(v) = te.next() {
        if te.next().is_some() {
            return Err(Reject::Framing("more than one Transfer-Encoding"));
        }
        if !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Reject::Framing("Transfer-Encoding other than `chunked`"));
        }
        if cl > 0 {
            return Err(Reject::Framing(
                "Content-Length together with Transfer-Encoding",
            ));
        }
    }
    Ok(())
}

/// Normalise the request target. `method` and `uri` as hyper parsed them.
pub fn target(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<Head, Reject> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject::Target("more than one Host header".into()));
    }
    let absolute = version != Version::HTTP_2 && uri.authority().is_some();
    let authority: Cow<'_, str> = match (uri.authority(), host_header) {
        (Some(a), _) => Cow::Borrowed(a.as_str()),
        (None, Some(h)) => Cow::Owned(
            h.to_str()
                .map_err(|_| Reject::Target("Host is not ASCII".into()))?
                .to_owned(),
        ),
        (None, None) => Cow::Borrowed(""),
    };
    if authority.contains('@') {
        return Err(Reject::Target("userinfo in the authority".into()));
    }
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
    {
        return Err(Reject::Target(format!(
            "scheme `{scheme}`: send https through CONNECT"
        )));
    }
    let (host, port) = if authority.is_empty() {
        (String::new(), None)
    } else {
        let a: Authority = authority
            .parse()
            .map_err(|_| Reject::Target(format!("`{authority}` is not a host[:port]")))?;
        if a.port().is_some() && a.port_u16().is_none() {
            return Err(Reject::Target("bad port".into()));
        }
        let host = normalise_host(a.host());
        // An empty label (`api.example.com..`, `.api.example.com`): a name resolvers may read
        // as the one without it, which rules would not (red team round 13).
        if host.starts_with('.') || host.ends_with('.') || host.contains("..") {
            return Err(Reject::Target(format!("`{}` has an empty label", a.host())));
        }
        (ip_literal(host)?, a.port_u16())
    };
    let (path, query) = if method == Method::CONNECT {
        (String::new(), None)
    } else {
        let raw = uri.path();
        let path = if raw == "*" && method == Method::OPTIONS {
            Cow::Borrowed("*")
        } else {
            normalise_path(raw)?
        };
        (path.into_owned(), uri.query().map(str::to_owned))
    };
    Ok(Head {
        method: method.as_str().to_ascii_uppercase(),
        host,
        port,
        authority: authority.into_owned(),
        path,
        query,
        absolute,
        tls: None,
    })
}

pub use crate::policy::normalise_host;

/// A request's host in the one spelling rules name it by ([`crate::policy::host_spelling`]);
/// an IPv4 address in a form readers differ on is refused.
pub fn ip_literal(host: String) -> Result<String, Reject> {
    crate::policy::host_spelling(&host).map_err(|e| Reject::Target(e.to_string()))
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Why a non-ASCII character of a path may be read as an ASCII one a rule names, if it may: a
/// router or an app that ignores case or normalises names (NFKC) reads `/v1/tas\u{212a}s` or
/// `/files/ｓecret.txt` as `/v1/tasks` or `/files/secret.txt` (red team rounds 7 and 28). Only
/// letters, digits and the characters of names (`.`, `-`, `_`, `~`) count: `…` (three dots) or
/// `™` in a slug are refused, `❤️` or `日本` are not.
fn read_away(c: char) -> Option<&'static str> {
    use unicode_normalization::UnicodeNormalization;
    if crate::policy::cond::ascii_case_of(c).is_some() {
        Some(
            "a character whose upper or lower case is an ASCII letter (the Kelvin sign, the long \
             s, a dotless or dotted i): routers that ignore case read it as a letter no rule names",
        )
    } else if std::iter::once(c)
        .nfkc()
        .any(|n| n.is_ascii_alphanumeric() || matches!(n, '.' | '-' | '_' | '~'))
    {
        Some(
            "a character whose compatibility form is an ASCII letter, digit or name character \
             (fullwidth letters, ligatures, superscripts...): apps that normalise names (NFKC) \
             read it as one no rule names",
        )
    } else {
        None
    }
}

/// Does a segment of the normalised path `s` start or end with a Unicode space or an invisible
/// character, which apps that trim names read away (`/files/secret.txt%C2%A0` is
/// `secret.txt` to Python's `str.strip`; red team round 28)? Inside a segment they stay:
/// zero-width joiners are how emoji sequences and Persian and Indic words are written.
fn trimmed_away(s: &str) -> bool {
    s.split('/').any(|seg| {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
        let text = String::from_utf8_lossy(&bytes);
        [text.chars().next(), text.chars().next_back()]
            .into_iter()
            .flatten()
            .any(|c| !c.is_ascii() && (c.is_whitespace() || invisible(c)))
    })
}

/// Characters that print as nothing (Unicode's format characters that text tools drop: soft
/// hyphen, zero-width and direction marks, word joiners, the byte order mark, tags; not the
/// variation selectors, which end emoji).
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}' | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// See the module documentation. Borrowed when the path is already normal.
pub fn normalise_path(raw: &str) -> Result<Cow<'_, str>, Reject> {
    if !raw.starts_with('/') {
        return Err(Reject::Path("must start with `/`"));
    }
    let bytes = raw.as_bytes();
    let plain = bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() && !matches!(b, b'%' | b';' | b'\\'))
        && !raw.contains("//")
        && !raw.contains("/.")
        && !raw.contains("./");
    if plain && !raw.ends_with('.') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    // Consecutive escaped bytes of 0x80 and above: they must spell UTF-8.
    let mut run: Vec<u8> = Vec::new();
    // And none of them may spell a character whose case mapping is ASCII: a router that
    // matches paths in any case (find-my-way with `caseSensitive: false`, `(?i)` patterns,
    // `equalsIgnoreCase`) reads `/v1/tas%E2%84%AAs` (the Kelvin sign) as `/v1/tasks`, which
    // no path rule names (red team round 7).
    let check_run = |run: &mut Vec<u8>| {
        let text = std::str::from_utf8(run).map(|t| t.chars().find_map(read_away));
        run.clear();
        match text {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(Reject::Path(why)),
            Err(_) => Err(Reject::Path(
                "percent-escapes that are not UTF-8 (overlong or invalid sequences)",
            )),
        }
    };
    let push_escape = |out: &mut Vec<u8>, c: u8| {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(Reject::Path("bad percent-escape"));
            };
            let c = h << 4 | l;
            match c {
                b'/' => {
                    return Err(Reject::Path(
                        "an encoded `/` (%2F): servers disagree on whether it separates segments",
                    ));
                }
                b'\\' => {
                    return Err(Reject::Path(
                        "an encoded backslash (%5C): some servers read it as `/`",
                    ));
                }
                0..=0x1f | 0x7f => {
                    return Err(Reject::Path("an encoded control character (%00-%1F, %7F)"));
                }
                b'%' if bytes.get(i + 3).copied().and_then(hex).is_some()
                    && bytes.get(i + 4).copied().and_then(hex).is_some() =>
                {
                    return Err(Reject::Path(
                        "double percent-encoding (%25 before two hex digits)",
                    ));
                }
                _ => {}
            }
            if c >= 0x80 {
                run.push(c);
                push_escape(&mut out, c);
            } else {
                check_run(&mut run)?;
                if unreserved(c) {
                    out.push(c);
                } else {
                    // Keep the escape, in uppercase hex (the normal form).
                    push_escape(&mut out, c);
                }
            }
            i += 3;
            continue;
        }
        if b >= 0x80 {
            run.push(b);
            push_escape(&mut out, b);
            i += 1;
            continue;
        }
        check_run(&mut run)?;
        match b {
            b';' => {
                return Err(Reject::Path(
                    "`;` path parameters: some servers strip them, others do not",
                ));
            }
            b'\\' => return Err(Reject::Path("a backslash: some servers read it as `/`")),
            0..=0x20 | 0x7f => return Err(Reject::Path("a control character or space")),
            b'/' if out.last() == Some(&b'/') => {}
            _ => out.push(b),
        }
        i += 1;
    }
    check_run(&mut run)?;
    // Every byte pushed is ASCII, so this never fails.
    let s = String::from_utf8(out).map_err(|_| Reject::Path("not ASCII"))?;
    if s.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Reject::Path("`.` or `..` segment"));
    }
    if trimmed_away(&s) {
        return Err(Reject::Path(
            "a segment that starts or ends with a Unicode space or an invisible character \
             (no-break space, zero-width space, byte order mark): apps that trim names read it \
             away",
        ));
    }
    if s.split('/')
        .any(|seg| seg.ends_with('.') || seg.ends_with("%20"))
    {
        return Err(Reject::Path(
            "a segment that ends in `.` or a space: Windows servers (IIS) strip them",
        ));
    }
    Ok(Cow::Owned(s))
}

/// The engine's view of a request. `headers` are copied only when a rule looks at them.
pub fn to_engine(head: &Head, headers: Option<&HeaderMap>, body: Option<Value>) -> HttpRequest {
    HttpRequest {
        method: head.method.clone(),
        host: head.host.clone(),
        path: head.path.clone(),
        headers: headers.map_or_else(Vec::new, |h| {
            h.iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect()
        }),
        body,
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and what they name, which a proxy never forwards;
/// also `Expect` (the proxy answers it itself) and the client's own `X-Governance-*`
/// headers (upstreams may trust the ones the proxy sets).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for n in named {
        headers.remove(n.as_str());
    }
    for h in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::EXPECT,
    ] {
        headers.remove(h);
    }
    for h in ["keep-alive", "proxy-connection"] {
        headers.remove(h);
    }
    if headers
        .keys()
        .any(|k| k.as_str().starts_with("x-governance-"))
    {
        let ours: Vec<_> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-governance-"))
            .cloned()
            .collect();
        for k in ours {
            headers.remove(k);
        }
    }
}

/// Whether the request asks to switch protocols (HTTP/1.1 `Upgrade`, e.g. WebSocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// A header value from text the proxy made (rule ids, decision ids); never fails.
pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, uri: &str, host: Option<&str>) -> Result<Head, Reject> {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        target(
            &method.parse().unwrap(),
            &uri.parse().unwrap(),
            Version::HTTP_11,
            &h,
        )
    }

    #[test]
    fn hosts_are_normalised() {
        let h = head(
            "post",
            "/v1/refunds?x=1",
            Some("API.Payments.Example.:8080"),
        )
        .unwrap();
        assert_eq!(
            (h.method.as_str(), h.host.as_str(), h.port, h.absolute),
            ("POST", "api.payments.example", Some(8080), false)
        );
        assert_eq!(h.url(), "http://API.Payments.Example.:8080/v1/refunds?x=1");
        let h = head("GET", "http://[::1]:80/x", Some("other")).unwrap();
        assert_eq!((h.host.as_str(), h.absolute), ("::1", true));
        assert!(head("GET", "/", Some("u@h")).is_err());
        assert!(head("GET", "https://h/", None).is_err());
        // An empty label: resolvers may read it as the name without it (red team round 13).
        for host in [
            "api.payments.example..",
            ".api.payments.example",
            "api..payments.example",
        ] {
            assert!(head("GET", "/", Some(host)).is_err(), "{host}");
            assert!(
                head("CONNECT", &format!("{host}:443"), None).is_err(),
                "{host}"
            );
        }
        let h = head("CONNECT", "api.example:443", None).unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.path.as_str()),
            ("api.example", Some(443), "")
        );
    }

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(normalise_path("/v1/refunds").unwrap(), "/v1/refunds");
        assert_eq!(normalise_path("/v1//%72efunds").unwrap(), "/v1/refunds");
        assert_eq!(normalise_path("/a%3fb%c3%a9").unwrap(), "/a%3Fb%C3%A9");
        assert_eq!(normalise_path("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        for bad in [
            "/v1/../admin",
            "/v1/%2e%2E/admin",
            "/./x",
            "/x/.",
            "/%zz",
            "/%4",
            "x",
            "/a%2fb",
            "/v1%2Frefunds",
            "/v1/refunds;x=1",
            "/v1;/refunds",
            "/v1\\refunds",
            "/v1%5crefunds",
            "/v1/refunds%00",
            "/v1/refunds%0a",
            "/v1/%C0%AE%C0%AE/admin",
            "/v1/%c3",
            "/v1/%252e%252e/admin",
            // Red team round 7: characters a case-insensitive router reads as ASCII letters
            // (`/v1/tasks`, `/v1/refunds`, `/admin`), escaped or raw.
            "/v1/tas%E2%84%AAs",
            "/v1/refund%C5%BF",
            "/adm%C4%B1n",
            "/%C4%B0ndex",
            "/v1/tas\u{212a}s",
            // Red team round 28: what apps that trim or normalise names (NFKC) read away or as
            // ASCII: `secret.txt` behind a no-break space, a zero-width space, a byte order
            // mark, an ideographic space; fullwidth letters, a ligature, a superscript.
            "/files/secret.txt%C2%A0",
            "/files/secret.txt%E2%80%8B",
            "/files/%EF%BB%BFsecret.txt",
            "/files/secret.txt\u{3000}",
            "/files/secret.txt\u{202f}/x",
            "/files/%EF%BD%93ecret.txt",
            "/files/\u{fb01}le",
            "/v\u{b9}/refunds",
            "/files/secret\u{2024}txt",
        ] {
            assert!(normalise_path(bad).is_err(), "{bad}");
        }
        // Other letters outside ASCII stay (their cases are not ASCII), and so do scripts
        // NFKC leaves as they are, joiners and variation selectors inside a segment (emoji
        // sequences, Persian words), and symbols that are no letter or digit.
        assert_eq!(
            normalise_path("/\u{65e5}\u{672c}/\u{440}\u{443}\u{441}").unwrap(),
            "/%E6%97%A5%E6%9C%AC/%D1%80%D1%83%D1%81"
        );
        for good in [
            "/tags/\u{2764}\u{fe0f}",
            "/tags/\u{1f469}\u{200d}\u{1f4bb}",
            "/w/\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{647}\u{645}",
            "/a\u{a0}b",
            "/caf\u{e9}/cr\u{e8}me",
        ] {
            assert!(normalise_path(good).is_ok(), "{good}");
        }
        assert_eq!(
            normalise_path("/%C3%85ngstr%C3%B6m").unwrap(),
            "/%C3%85ngstr%C3%B6m"
        );
        assert_eq!(normalise_path("/a/.b/c.d").unwrap(), "/a/.b/c.d");
        for bad in ["/a/b.", "/a/c../d", "/a/b%20", "/a/b%20/c", "/a/b%2e"] {
            assert!(normalise_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn framing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let raw = |content_lengths, transfer_encoding| {
            Some(RawHead {
                content_lengths,
                transfer_encoding,
                lost: false,
            })
        };
        assert!(check_framing(&h, None).is_ok());
        assert!(check_framing(&h, raw(0, true)).is_ok());
        assert!(check_framing(&h, raw(1, true)).is_err());
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(check_framing(&h, None).is_err());
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(check_framing(&h, raw(1, false)).is_ok());
        // hyper merged two equal lines into one header.
        assert!(check_framing(&h, raw(2, false)).is_err());
        assert!(
            check_framing(
                &h,
                Some(RawHead {
                    lost: true,
                    ..RawHead::default()
                })
            )
            .is_err()
        );
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(check_framing(&h, None).is_err());
        for bad in ["5, 5", "+5", " ", "0x5"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(bad));
            assert!(check_framing(&h, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-governance-sandboxed", HeaderValue::from_static("forged"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }
}

/// Property tests: any request head normalises without panicking, and normalisation is
/// stable (what is decided on is a fixed point).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn raw_path() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9_~-]{1,4}",
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("".to_owned()),
                "%[0-9a-fA-F]{2}",
                "%[g-z]{0,2}",
            ],
            0..6,
        )
        .prop_map(|segs| format!("/{}", segs.join("/")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn normalised_paths_are_fixed_points(raw in raw_path()) {
            if let Ok(p) = normalise_path(&raw) {
                prop_assert_eq!(normalise_path(&p).unwrap(), p.clone());
                prop_assert!(!p.contains("//"));
                prop_assert!(!p.split('/').any(|s| s == "." || s == ".."));
                // The normal form is a valid request target.
                prop_assert!(p.parse::<Uri>().is_ok(), "{}", p);
            }
        }

        #[test]
        fn encoding_unreserved_characters_changes_nothing(raw in "/[a-z0-9/._~-]{0,12}") {
            let encoded: String = raw
                .bytes()
                .map(|b| if b == b'/' { "/".to_owned() } else { format!("%{b:02x}") })
                .collect();
            prop_assert_eq!(normalise_path(&raw).ok(), normalise_path(&encoded).ok());
        }

        #[test]
        fn any_head_converts_without_panicking(
            method in "[A-Za-z]{1,8}",
            raw_target in "[ -~]{0,30}",
            host in "[ -~]{0,20}",
            names in prop::collection::vec("[a-z-]{1,10}", 0..4),
            value in "[ -~]{0,16}",
        ) {
            let Ok(method) = method.parse::<Method>() else { return Ok(()) };
            let Ok(uri) = raw_target.parse::<Uri>() else { return Ok(()) };
            let mut headers = HeaderMap::new();
            if let Ok(h) = HeaderValue::from_str(&host) {
                headers.insert(header::HOST, h);
            }
            for n in &names {
                if let (Ok(n), Ok(v)) = (n.parse::<header::HeaderName>(), HeaderValue::from_str(&value)) {
                    headers.append(n, v);
                }
            }
            let _ = check_framing(&headers, None);
            if let Ok(head) = target(&method, &uri, Version::HTTP_11, &headers) {
                let req = to_engine(&head, Some(&headers), None);
                prop_assert_eq!(&req.host, &req.host.to_ascii_lowercase());
                prop_assert!(!req.host.ends_with('.'));
                prop_assert_eq!(req.headers.len(), headers.len());
                prop_assert_eq!(&req.method, &req.method.to_ascii_uppercase());
                let _ = head.url();
                let _ = head.path_and_query();
            }
        }
    }
}
