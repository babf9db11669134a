use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{Arc, LazyLock},
    time::Duration,
};

use proptest::prelude::*;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsConnector;

use super::*;

// ---------------------------------------------------------------------------------------------
// ClientHellos to parse

fn bare_client_config(roots: RootCertStore) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// The first flight of a rustls client: exactly what goes on the wire (the loopback test below
/// checks that against a real connection).
fn rustls_hello(server_name: &str, enable_sni: bool) -> Vec<u8> {
    let mut config = bare_client_config(RootCertStore::empty());
    config.enable_sni = enable_sni;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

static HELLO: LazyLock<Vec<u8>> = LazyLock::new(|| rustls_hello("api.payments.example", true));

/// What curl 7.88 (OpenSSL 3.0) sent for `https://api.payments.example/`, captured on loopback:
/// another implementation's layout (more extensions, padding).
const CURL_HELLO: &[u8] = include_bytes!("testdata/curl-7.88-openssl-3.0-client-hello.bin");

/// A ClientHello put together by hand, in one record: TLS 1.2 style, with the given extensions
/// (None: no extensions block at all).
fn synthetic_hello(extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    records(&handshake(&hello_body(extensions)), usize::MAX)
}

fn hello_body(extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7; 32]); // random
    body.push(0); // session_id
    body.extend([0, 2, 0x13, 0x01]); // one cipher suite
    body.extend([1, 0]); // null compression
    if let Some(exts) = extensions {
        let mut block = Vec::new();
        for (ty, data) in exts {
            block.extend(ty.to_be_bytes());
            block.extend((data.len() as u16).to_be_bytes());
            block.extend(data);
        }
        body.extend((block.len() as u16).to_be_bytes());
        body.extend(block);
    }
    body
}

fn handshake(body: &[u8]) -> Vec<u8> {
    let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
    msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    msg
}

/// `msg` in handshake records of at most `fragment` bytes each.
fn records(msg: &[u8], fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in msg.chunks(fragment.min(MAX_RECORD)) {
        out.extend([CONTENT_HANDSHAKE, 3, 1]);
        out.extend((chunk.len() as u16).to_be_bytes());
        out.extend(chunk);
    }
    out
}

/// A server_name extension's data with these (name type, name) entries.
fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, name) in entries {
        list.push(*ty);
        list.extend((name.len() as u16).to_be_bytes());
        list.extend(*name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend(list);
    data
}

fn sni(name: &str) -> SniResult {
    SniResult::Sni(name.to_owned())
}

// ---------------------------------------------------------------------------------------------
// parse_sni

#[test]
fn rustls_hello_gives_its_sni() {
    assert_eq!(parse_sni(&HELLO), sni("api.payments.example"));
    // Whatever follows the hello (here: more records) changes nothing.
    let mut more = HELLO.clone();
    more.extend(b"\x17\x03\x03\x00\x05hello");
    assert_eq!(parse_sni(&more), sni("api.payments.example"));
}

#[test]
fn curl_hello_gives_its_sni() {
    assert_eq!(parse_sni(CURL_HELLO), sni("api.payments.example"));
}

#[test]
fn every_truncation_needs_more() {
    for hello in [&HELLO[..], &rustls_hello("example.com", false), CURL_HELLO] {
        for len in 0..hello.len() {
            assert_eq!(
                parse_sni(&hello[..len]),
                SniResult::NeedMore,
                "cut at {len}"
            );
        }
    }
}

#[test]
fn hello_without_sni() {
    // rustls leaves SNI out when told to, and for IP addresses.
    assert_eq!(
        parse_sni(&rustls_hello("example.com", false)),
        SniResult::NoSni
    );
    assert_eq!(
        parse_sni(&rustls_hello("192.0.2.1", true)),
        SniResult::NoSni
    );
    assert_eq!(parse_sni(&synthetic_hello(None)), SniResult::NoSni);
    assert_eq!(
        parse_sni(&synthetic_hello(Some(&[(10, vec![0, 2, 0, 29])]))),
        SniResult::NoSni
    );
}

#[test]
fn hello_split_over_records() {
    // The handshake message of the rustls hello, re-fragmented into records of 100 bytes.
    let msg = &HELLO[5..];
    let split = records(msg, 100);
    assert!(split.len() > HELLO.len() + 5, "spans several records");
    assert_eq!(parse_sni(&split), sni("api.payments.example"));
    for len in 0..split.len() {
        assert_eq!(
            parse_sni(&split[..len]),
            SniResult::NeedMore,
            "cut at {len}"
        );
    }
    // Even one byte a record, as long as it all ends within 16 KiB.
    assert_eq!(parse_sni(&records(msg, 1)), sni("api.payments.example"));
    assert_eq!(
        parse_sni(&records(&msg[..msg.len() - 1], 1)),
        SniResult::NeedMore
    );
    // A record of another type in the middle.
    let mut interrupted = records(&msg[..50], 50);
    interrupted.extend(b"\x17\x03\x03\x00\x01x");
    assert!(matches!(parse_sni(&interrupted), SniResult::Malformed(_)));
}

#[test]
fn names_are_normalized_and_validated() {
    let with = |name: &[u8]| parse_sni(&synthetic_hello(Some(&[(0, sni_ext(&[(0, name)]))])));
    assert_eq!(with(b"API.Example.COM"), sni("api.example.com"));
    assert_eq!(with(b"example.com."), sni("example.com"));
    assert_eq!(with(b"under_score.example"), sni("under_score.example"));
    for bad in [
        &b"example.com.."[..],
        b"",
        b"192.0.2.1",
        b"::1",
        b"exa mple.com",
        b"-example.com",
        b"caf\xc3\xa9.example",
        b"\xff\xfe",
        b"a..b",
        &[b'a'; 300],
    ] {
        assert!(
            matches!(with(bad), SniResult::Malformed(_)),
            "{bad:?}: {:?}",
            with(bad)
        );
    }
}

#[test]
fn ambiguous_names_are_malformed() {
    let one = sni_ext(&[(0, b"a.example")]);
    let two_names = sni_ext(&[(0, b"a.example"), (0, b"b.example")]);
    let two_exts = [(0, one.clone()), (0, sni_ext(&[(0, b"b.example")]))];
    assert!(matches!(
        parse_sni(&synthetic_hello(Some(&[(0, two_names)]))),
        SniResult::Malformed(_)
    ));
    assert!(matches!(
        parse_sni(&synthetic_hello(Some(&two_exts))),
        SniResult::Malformed(_)
    ));
    // Entries of another name type are skipped; a list with no host name is malformed.
    let other_type = sni_ext(&[(7, b"x"), (0, b"a.example")]);
    assert_eq!(
        parse_sni(&synthetic_hello(Some(&[(0, other_type)]))),
        sni("a.example")
    );
    let no_host = sni_ext(&[(7, b"x")]);
    assert!(matches!(
        parse_sni(&synthetic_hello(Some(&[(0, no_host)]))),
        SniResult::Malformed(_)
    ));
    let empty = sni_ext(&[]);
    assert!(matches!(
        parse_sni(&synthetic_hello(Some(&[(0, empty)]))),
        SniResult::Malformed(_)
    ));
    // Bytes after the list, or after the extensions.
    let mut trailing = one.clone();
    trailing.push(0);
    assert!(matches!(
        parse_sni(&synthetic_hello(Some(&[(0, trailing)]))),
        SniResult::Malformed(_)
    ));
}

#[test]
fn not_tls() {
    for input in [
        &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x80\x2e\x01\x03\x01", // SSLv2-compatible hello
        b"\x16\x02\x00\x00\x10",
        b"\x17\x03\x03\x00\x10",
        b"G",
        b"\x16\x01",
    ] {
        assert_eq!(parse_sni(input), SniResult::NotTls, "{input:?}");
    }
    assert_eq!(parse_sni(b""), SniResult::NeedMore);
    assert_eq!(parse_sni(b"\x16"), SniResult::NeedMore);
}

#[test]
fn malformed_handshakes() {
    // A handshake that is not a ClientHello (here a ServerHello).
    let mut server_hello = HELLO.clone();
    server_hello[5] = 2;
    assert!(matches!(parse_sni(&server_hello), SniResult::Malformed(_)));
    // Empty and oversized records.
    assert!(matches!(
        parse_sni(b"\x16\x03\x01\x00\x00"),
        SniResult::Malformed(_)
    ));
    assert!(matches!(
        parse_sni(b"\x16\x03\x01\x40\x01"),
        SniResult::Malformed(_)
    ));
    // A hello that claims more than 16 KiB: rejected at once, not after waiting for it.
    assert!(matches!(
        parse_sni(b"\x16\x03\x01\x40\x00\x01\x00\x40\x00"),
        SniResult::Malformed(_)
    ));
    // A length field inside the hello pointing past its end.
    let mut long_sid = synthetic_hello(None);
    long_sid[5 + 4 + 34] = 200;
    assert!(matches!(parse_sni(&long_sid), SniResult::Malformed(_)));
}

/// A hello for "big.example", padded (extension 21) so that its records of at most `fragment`
/// bytes take exactly `total` bytes.
fn padded_hello(total: usize, fragment: usize) -> Vec<u8> {
    let build = |pad: usize| {
        let exts = [(0, sni_ext(&[(0, b"big.example")])), (21, vec![0; pad])];
        records(&handshake(&hello_body(Some(&exts))), fragment)
    };
    // Too much padding at first (more records, more headers), then less until it fits.
    let mut pad = total - build(0).len();
    loop {
        let hello = build(pad);
        if hello.len() <= total {
            assert_eq!(hello.len(), total);
            return hello;
        }
        pad -= 1;
    }
}

#[test]
fn hello_ending_exactly_at_16_kib() {
    for fragment in [MAX_RECORD, 4000] {
        let hello = padded_hello(MAX_CLIENT_HELLO, fragment);
        assert_eq!(parse_sni(&hello), sni("big.example"));
        let too_big = padded_hello(MAX_CLIENT_HELLO + 1, fragment);
        assert!(matches!(parse_sni(&too_big), SniResult::Malformed(_)));
        assert!(matches!(
            parse_sni(&too_big[..MAX_CLIENT_HELLO]),
            SniResult::Malformed(_)
        ));
    }
    // In one record, the lengths tell at once: no waiting for the rest.
    let too_big = padded_hello(MAX_CLIENT_HELLO + 1, MAX_RECORD);
    assert!(matches!(parse_sni(&too_big[..9]), SniResult::Malformed(_)));
}

#[test]
fn never_reads_past_16_kib() {
    // A record that would end just past the limit is rejected, whatever lies beyond.
    let mut big = vec![
        CONTENT_HANDSHAKE,
        3,
        1,
        0x40,
        0x00,
        HANDSHAKE_CLIENT_HELLO,
        0,
        0x3f,
        0xfc,
    ];
    big.resize(MAX_CLIENT_HELLO + 100, 0);
    assert!(matches!(parse_sni(&big), SniResult::Malformed(_)));
    assert!(matches!(
        parse_sni(&big[..MAX_CLIENT_HELLO]),
        SniResult::Malformed(_)
    ));
}

proptest! {
    // Cheap, and they reach every length and field check: many cases.
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_hellos_never_panic(
        curl in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut hello = if curl { CURL_HELLO.to_vec() } else { HELLO.clone() };
        for (at, byte) in flips {
            let at = at % hello.len();
            hello[at] = byte;
        }
        let hello = &hello[..cut % (hello.len() + 1)];
        if let SniResult::Sni(name) = parse_sni(hello) {
            prop_assert!(DnsName::try_from(name.as_str()).is_ok());
            prop_assert_eq!(name.to_ascii_lowercase(), name);
        }
    }
}

proptest! {
    // Generating long random inputs is what costs here.
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        let _ = parse_sni(&bytes);
    }

    #[test]
    fn tls_looking_garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..3_000),
        len in any::<u16>(),
    ) {
        let mut input = vec![CONTENT_HANDSHAKE, 3, 1];
        input.extend(len.to_be_bytes());
        input.push(HANDSHAKE_CLIENT_HELLO);
        input.extend(bytes);
        let _ = parse_sni(&input);
    }
}

// ---------------------------------------------------------------------------------------------
// peek_client_hello

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

#[tokio::test]
async fn peek_leaves_a_real_hello_in_the_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let config = Arc::new(bare_client_config(RootCertStore::empty()));
        let name = ServerName::try_from("api.payments.example").unwrap();
        // Fails once the server hangs up; only the hello matters.
        let _ = TlsConnector::from(config).connect(name, tcp).await;
    });
    let (server, _) = listener.accept().await.unwrap();
    let got = peek_client_hello(&server, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got, sni("api.payments.example"));

    // Every byte is still there: the captured hello starts the stream and parses the same.
    let mut server = server;
    let mut record = vec![0; 5];
    server.read_exact(&mut record).await.unwrap();
    let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    record.resize(5 + len, 0);
    server.read_exact(&mut record[5..]).await.unwrap();
    assert_eq!(parse_sni(&record), got);
    assert_eq!(
        record.len(),
        HELLO.len(),
        "the captured hello and write_tls's agree in size"
    );
    drop(server);
    client.await.unwrap();
}

#[tokio::test]
async fn peek_does_not_consume() {
    let (mut client, mut server) = pair().await;
    let mut sent = HELLO.clone();
    sent.extend(b"and then the rest of the stream");
    client.write_all(&sent).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(
        peek_client_hello(&server, Duration::from_secs(5))
            .await
            .unwrap(),
        sni("api.payments.example")
    );
    // A second peek sees the same.
    assert_eq!(
        peek_client_hello(&server, Duration::from_secs(5))
            .await
            .unwrap(),
        sni("api.payments.example")
    );
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, sent);
}

#[tokio::test]
async fn peek_waits_for_a_hello_sent_in_pieces() {
    let (mut client, server) = pair().await;
    let hello = HELLO.clone();
    let writer = tokio::spawn(async move {
        for piece in hello.chunks(hello.len() / 3 + 1) {
            client.write_all(piece).await.unwrap();
            // Each piece arrives on its own, so the peek sees a partial hello and must wait
            // for more: the behaviour under test (the peek's 5 s deadline bounds it).
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        client
    });
    let got = peek_client_hello(&server, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got, sni("api.payments.example"));
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn peek_gives_up_on_a_slow_client() {
    let (mut client, server) = pair().await;
    client.write_all(&HELLO[..HELLO.len() / 2]).await.unwrap();
    let started = Instant::now();
    let err = peek_client_hello(&server, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Plain HTTP is told at once, and so is a closed connection.
    let (mut client, server) = pair().await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert_eq!(
        peek_client_hello(&server, Duration::from_secs(5))
            .await
            .unwrap(),
        SniResult::NotTls
    );
    let (client, server) = pair().await;
    drop(client);
    let err = peek_client_hello(&server, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

// ---------------------------------------------------------------------------------------------
// splice

#[tokio::test]
async fn splice_relays_both_ways_with_half_close() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();

    let relaying = tokio::spawn(async move {
        let (client, _) = relay.accept().await.unwrap();
        let upstream = TcpStream::connect(upstream_addr).await.unwrap();
        splice(client, upstream).await.unwrap()
    });
    // The upstream reads the whole request (to the agent's half-close) and only then answers.
    let serving = tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.unwrap();
        let mut request = Vec::new();
        conn.read_to_end(&mut request).await.unwrap();
        let mut reply = b"got: ".to_vec();
        reply.extend(&request);
        conn.write_all(&reply).await.unwrap();
        conn.shutdown().await.unwrap();
        request
    });

    let mut agent = TcpStream::connect(relay_addr).await.unwrap();
    let request = vec![b'x'; 100_000];
    agent.write_all(&request).await.unwrap();
    agent.shutdown().await.unwrap();
    let mut reply = Vec::new();
    agent.read_to_end(&mut reply).await.unwrap();

    assert_eq!(serving.await.unwrap(), request);
    assert_eq!(&reply[..5], b"got: ");
    assert_eq!(&reply[5..], &request[..]);
    assert_eq!(relaying.await.unwrap(), (100_000, 100_005));
}

// ---------------------------------------------------------------------------------------------
// NodeCa

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn node_ca_is_created_once_and_reloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let ca = NodeCa::load_or_create(&dir).unwrap();
    assert_eq!(ca.cert_path(), dir.join("ca.crt"));
    assert_eq!(mode(&dir.join("ca.crt")), 0o644);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(
        fs::read_to_string(dir.join("ca.crt")).unwrap(),
        ca.cert_pem()
    );
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key"], "no temporary files left");

    let der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(x509.is_ca());
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cn.starts_with("governance node CA "), "{cn}");
    let usage = x509.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign());

    let key_before = fs::read(dir.join("ca.key")).unwrap();
    let again = NodeCa::load_or_create(&dir).unwrap();
    assert_eq!(again.cert_pem(), ca.cert_pem());
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), key_before);
}

#[test]
fn node_ca_refuses_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    NodeCa::load_or_create(dir).unwrap();
    let key_path = dir.join("ca.key");
    let cert_path = dir.join("ca.crt");
    let good_key = fs::read(&key_path).unwrap();
    let good_cert = fs::read(&cert_path).unwrap();

    fs::write(&key_path, "not a key").unwrap();
    let err = NodeCa::load_or_create(dir).unwrap_err().to_string();
    assert!(err.contains(&*key_path.to_string_lossy()), "{err}");
    assert_eq!(
        fs::read(&key_path).unwrap(),
        b"not a key",
        "left alone, not regenerated"
    );

    // The key of another CA.
    let other = tempfile::tempdir().unwrap();
    NodeCa::load_or_create(other.path()).unwrap();
    fs::copy(other.path().join("ca.key"), &key_path).unwrap();
    let err = NodeCa::load_or_create(dir).unwrap_err();
    assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");

    fs::write(&key_path, &good_key).unwrap();
    fs::write(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = NodeCa::load_or_create(dir).unwrap_err().to_string();
    assert!(err.contains(&*cert_path.to_string_lossy()), "{err}");

    fs::remove_file(&cert_path).unwrap();
    let err = NodeCa::load_or_create(dir).unwrap_err();
    assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");
    assert!(!cert_path.exists(), "no new CA behind the operator's back");

    fs::write(&cert_path, &good_cert).unwrap();
    NodeCa::load_or_create(dir).unwrap();
}

#[test]
fn leaves_are_cached_and_evicted_oldest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = NodeCa::load_or_create(tmp.path()).unwrap();
    let a = ca.server_config_for("a.example").unwrap();
    assert!(Arc::ptr_eq(
        &a,
        &ca.server_config_for("A.example.").unwrap()
    ));
    assert_eq!(a.alpn_protocols, [b"http/1.1".to_vec()]);

    ca.cache().cap = 2;
    ca.server_config_for("b.example").unwrap();
    ca.server_config_for("c.example").unwrap();
    assert_eq!(ca.cache().by_host.len(), 2);
    assert!(
        !Arc::ptr_eq(&a, &ca.server_config_for("a.example").unwrap()),
        "a was evicted"
    );
    assert_eq!(ca.cache().order, ["c.example", "a.example"]);

    ca.server_config_for("192.0.2.7").unwrap();
    ca.server_config_for("::1").unwrap();
    for bad in ["", "exa mple", "a..b", "-x.example", "1.2.3.4.5"] {
        let err = ca.server_config_for(bad).unwrap_err();
        assert!(matches!(err, TlsError::InvalidHost(_)), "{bad}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Interception and the upstream client, end to end on loopback

fn trusting(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(bare_client_config(roots))
}

/// Serves one intercepted connection: peek the SNI, terminate TLS, answer one HTTP/1.1 request.
async fn intercept_one(ca: &NodeCa, listener: &TcpListener) -> Result<String, TlsError> {
    let (tcp, _) = listener.accept().await.unwrap();
    let host = match peek_client_hello(&tcp, Duration::from_secs(5))
        .await
        .unwrap()
    {
        SniResult::Sni(host) => host,
        other => panic!("{other:?}"),
    };
    let mut tls = accept_intercepted(ca, tcp, &host).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.ends_with(b"\r\n\r\n") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "request cut short");
        request.extend(&buf[..n]);
    }
    let body = format!("intercepted {host}");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(response.as_bytes()).await.unwrap();
    tls.shutdown().await.unwrap();
    Ok(String::from_utf8(request).unwrap())
}

#[tokio::test]
async fn interception_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_pem = NodeCa::load_or_create(tmp.path())
        .unwrap()
        .cert_pem()
        .to_owned();
    // A restarted daemon: leaves from the reloaded CA must chain to the certificate agents have.
    let ca = Arc::new(NodeCa::load_or_create(tmp.path()).unwrap());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { intercept_one(&ca, &listener).await });

    let connector = TlsConnector::from(trusting(&ca_pem));
    let name = ServerName::try_from("api.payments.example").unwrap();
    let mut tls = connector
        .connect(name, TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /v1/charges HTTP/1.1\r\nHost: api.payments.example\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with("\r\n\r\nintercepted api.payments.example"),
        "{response}"
    );
    let request = server.await.unwrap().unwrap();
    assert!(
        request.starts_with("GET /v1/charges HTTP/1.1\r\n"),
        "{request}"
    );
}

#[tokio::test]
async fn interception_fails_for_a_client_that_does_not_trust_the_node_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Arc::new(NodeCa::load_or_create(tmp.path()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let first = intercept_one(&ca, &listener).await;
        let second = intercept_one(&ca, &listener).await;
        [first, second]
    });

    // Trusts the public roots, or another node's CA: both must refuse. (Another CA created on
    // this host has the same name, so that one fails on the signature, not on the issuer.)
    let other = tempfile::tempdir().unwrap();
    let other_pem = NodeCa::load_or_create(other.path())
        .unwrap()
        .cert_pem()
        .to_owned();
    for config in [client_config(None).unwrap(), trusting(&other_pem)] {
        let name = ServerName::try_from("api.payments.example").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let err = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("UnknownIssuer") || err.contains("BadSignature"),
            "{err}"
        );
    }
    for result in server.await.unwrap() {
        let err = result.unwrap_err();
        assert!(matches!(err, TlsError::Accept { .. }), "{err}");
        assert!(err.to_string().contains("api.payments.example"), "{err}");
    }
}

#[tokio::test]
async fn upstream_client_with_extra_roots() {
    // A local upstream whose certificate comes from a test CA (a NodeCa serves well as one).
    let tmp = tempfile::tempdir().unwrap();
    let test_ca = NodeCa::load_or_create(tmp.path()).unwrap();
    let acceptor = TlsAcceptor::from(test_ca.server_config_for("upstream.test").unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                tls.write_all(b"hello from upstream").await.unwrap();
                tls.shutdown().await.unwrap();
            }
        }
    });

    let without = client_config(None).unwrap();
    let err = connect_upstream(&without, addr, "upstream.test")
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Upstream { .. }), "{err}");
    assert!(err.to_string().contains("upstream.test"), "{err}");

    let with = client_config(Some(test_ca.cert_path())).unwrap();
    let mut tls = connect_upstream(&with, addr, "upstream.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut got = String::new();
    tls.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello from upstream");
    server.await.unwrap();

    // Roots that are not there, or not certificates, are errors naming the file.
    let missing = tmp.path().join("nope.pem");
    let err = client_config(Some(&missing)).unwrap_err().to_string();
    assert!(err.contains("nope.pem"), "{err}");
    let err = client_config(Some(&tmp.path().join("ca.key")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ca.key") && err.contains("no PEM certificates"),
        "{err}"
    );
    let err = connect_upstream(&with, addr, "not a name")
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::InvalidHost(_)), "{err}");
}
