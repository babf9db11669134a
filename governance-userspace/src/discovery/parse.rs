//! The names in the bytes the `discover` program copies: the server name (SNI) of a TLS
//! ClientHello (the proxy's parser, which the proxy's tests and fuzz target exercise) and the
//! question of a DNS query (simple-dns).

use crate::proxy::tls::{SniResult, parse_sni};

/// The server name a ClientHello asks for, lowercased, or None (not a ClientHello, no SNI,
/// malformed, or cut before its end: the program copies at most
/// governance_common::discover::DISCOVER_BYTES).
pub fn sni(payload: &[u8]) -> Option<String> {
    match parse_sni(payload) {
        SniResult::Sni(name) => host(name.as_bytes()),
        _ => None,
    }
}

/// The name of a DNS query's first question (without the trailing dot), lowercased, or None
/// (not a query, no question).
pub fn dns_query(payload: &[u8]) -> Option<String> {
    let packet = simple_dns::Packet::parse(payload).ok()?;
    if packet.has_flags(simple_dns::PacketFlag::RESPONSE) {
        return None;
    }
    let q = packet.questions.first()?;
    let name = q.qname.to_string();
    host(name.trim_end_matches('.').as_bytes())
}

/// A host name as the host list compares it: ASCII letters, digits, `-`, `_` and dots only
/// (what is on the wire is the A-label form), lowercased.
fn host(name: &[u8]) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    ok.then(|| String::from_utf8_lossy(name).to_ascii_lowercase())
}
