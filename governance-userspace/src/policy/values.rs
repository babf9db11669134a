//! The small grammars of values: hosts, names, ports, sizes, durations.

use super::*;

/// A value that does not follow its grammar. The message names the value and the grammar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("host `{0}`: use `name.example` or `*.example`")]
    Host(String),
    #[error(
        "host `{0}` is an IPv4 address in a form readers differ on; write it as four decimal octets"
    )]
    OddIpv4(String),
    #[error("bad port or range `{0}` (1-65535, `lo-hi`)")]
    Ports(String),
    #[error("bad size `{0}`: use a number of bytes or KiB, MiB, GiB (256KiB)")]
    Size(String),
    #[error("bad duration `{0}`: use a number and a unit (500ms, 30s, 10m, 1h, 1d)")]
    Duration(String),
    #[error("bad duration unit in `{0}`: use ms, s, m, h or d")]
    DurationUnit(String),
    #[error("duration `{0}` must be more than zero")]
    ZeroDuration(String),
}

/// Exactly one of the alternatives is given (rules and test cases name one kind of action).
pub(crate) fn exactly_one(given: &[bool]) -> bool {
    given.iter().filter(|g| **g).count() == 1
}

/// A host pattern (trimmed, lowercase): `*` (any host), `*.example` (any subdomain) or a name,
/// kept in the spelling requests are decided by ([`host_spelling`]): `example.com.` is
/// `example.com`, `[0:0::1]` is `::1`, `::ffff:10.0.0.5` is `10.0.0.5`, and `010.0.0.5` is
/// refused. A rule kept as written would never match a request's host (red team round 31).
pub(super) fn host_match(h: &str) -> Result<HostMatch, ValueError> {
    if h == "*" {
        return Ok(HostMatch::Any);
    }
    let (bare, suffix) = match h.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (h, false),
    };
    let unbracketed = bare
        .strip_prefix('[')
        .and_then(|b| b.strip_suffix(']'))
        .unwrap_or(bare);
    if unbracketed.is_empty()
        || unbracketed.starts_with('.')
        || !unbracketed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':')
    {
        return Err(ValueError::Host(h.to_owned()));
    }
    // No empty label (`a..b`): no request's host has one.
    let name = unbracketed.strip_suffix('.').unwrap_or(unbracketed);
    if !name.contains(':') && name.split('.').any(str::is_empty) {
        return Err(ValueError::Host(h.to_owned()));
    }
    // A colon is only an IPv6 address's: `api.example:443` would name no request's host.
    if unbracketed.contains(':') && (suffix || unbracketed.parse::<std::net::Ipv6Addr>().is_err()) {
        return Err(ValueError::Host(h.to_owned()));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(
            ".{}",
            unbracketed.strip_suffix('.').unwrap_or(unbracketed)
        ))
    } else {
        HostMatch::Exact(host_spelling(bare)?)
    })
}

/// Lowercase, brackets and a trailing dot removed (names only: [`host_spelling`] also writes
/// IP addresses in one spelling).
pub fn normalise_host(host: &str) -> String {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let h = h.strip_suffix('.').unwrap_or(h);
    h.to_ascii_lowercase()
}

/// A host in the one spelling requests are decided by, and rules are kept in: lowercase,
/// brackets and a trailing dot removed, IPv6 compressed (`::1`), and an IPv4-mapped IPv6
/// address as the IPv4 address it maps (`::ffff:127.0.0.1` is `127.0.0.1`). A host whose last
/// label is a number (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.0.0.01`) is an
/// IPv4 address to URL parsers and `getaddrinfo`, read in ways that differ (octal or decimal);
/// unless it is four plain decimal octets it is refused, so a rule on `127.0.0.1` cannot be
/// dodged by another spelling. Other names pass lowercased.
pub fn host_spelling(host: &str) -> Result<String, ValueError> {
    let h = normalise_host(host);
    if let Ok(v6) = h.parse::<std::net::Ipv6Addr>() {
        return Ok(match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        });
    }
    let last = h.rsplit('.').next().unwrap_or_default();
    let numeric = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|x| x.bytes().all(|b| b.is_ascii_hexdigit()));
    if !numeric {
        return Ok(h);
    }
    match h.parse::<std::net::Ipv4Addr>() {
        Ok(v4) if v4.to_string() == h => Ok(h),
        _ => Err(ValueError::OddIpv4(h)),
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `443`, `8000-8999`.
pub(super) fn parse_ports(s: &str) -> Result<(u16, u16), ValueError> {
    let bad = || ValueError::Ports(s.to_owned());
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Largest `proxy.max_body` a policy may set.
pub const MAX_BODY_LIMIT: usize = 1 << 30;

/// `4096`, `64KiB`, `1MiB`, `1GiB` (binary units; `K`, `KB` and `KiB` are the same, in any
/// case).
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let bad = || ValueError::Size(s.to_owned());
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// `500ms`, `30s`, `10m`, `1h`, `1d`, more than zero: for timeouts, windows and rotation ages.
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let d = parse_span(s)?;
    if d.is_zero() {
        return Err(ValueError::ZeroDuration(s.trim().to_owned()));
    }
    Ok(d)
}

/// The one duration grammar (policies, the command line, the API's `since`): a number and a
/// unit, `ms`, `s`, `m`, `h` or `d`; zero is allowed ([`parse_duration`] refuses it).
pub fn parse_span(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| ValueError::Duration(s.to_owned()))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(ValueError::DurationUnit(s.to_owned())),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}
