//! Bytes → the TLS ClientHello parser (`proxy::tls::parse_sni`): what the proxy reads a TLS
//! connection's server name from, before deciding it, from bytes the agent chose.
//!
//! Besides never panicking: a server name is a lowercase DNS name without a trailing dot and
//! never an IP address; bytes past `MAX_CLIENT_HELLO` are never looked at; and reading the
//! same bytes in pieces (as the proxy does while they arrive) gives `NeedMore` until the
//! answer, never another answer: a ClientHello split over reads reads as the whole one.
#![no_main]

use std::net::IpAddr;

use governance::proxy::tls::{MAX_CLIENT_HELLO, SniResult, parse_sni};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_sni(data);
    assert_eq!(whole, parse_sni(data), "deterministic");
    if data.len() > MAX_CLIENT_HELLO {
        assert_eq!(whole, parse_sni(&data[..MAX_CLIENT_HELLO]), "bytes past the limit count");
    }
    if let SniResult::Sni(name) = &whole {
        assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
        assert!(name.is_ascii() && *name == name.to_ascii_lowercase(), "{name:?}");
        assert!(!name.ends_with('.'), "{name:?}");
        assert!(name.parse::<IpAddr>().is_err(), "{name:?}");
    }
    if matches!(whole, SniResult::Sni(_) | SniResult::NoSni) {
        // Cut points: every eighth of the input, and one byte short.
        let cuts = (1..8)
            .map(|i| data.len() * i / 8)
            .chain([data.len().saturating_sub(1)]);
        for cut in cuts {
            let part = parse_sni(&data[..cut]);
            assert!(
                part == SniResult::NeedMore || part == whole,
                "the first {cut} bytes read as {part:?}, all of them as {whole:?}"
            );
        }
    }
});
