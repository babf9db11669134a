//! Follows the message framing of an HTTP/1 connection's raw bytes, head by head, to tell the
//! proxy what each request head said about its length before hyper parsed it: hyper merges two
//! equal `Content-Length` lines into one and drops a `Content-Length` that comes with
//! `Transfer-Encoding`, so its parsed headers cannot show either. The proxy refuses both
//! ([`super::request::check_framing`]), on every request of a connection.
//!
//! The framer reads what hyper reads, in the same order: a head (lines up to an empty one;
//! empty lines before a request line are skipped), then its body as the head frames it
//! (`Transfer-Encoding: chunked` → chunks and trailers; else `Content-Length` bytes; else
//! none). What it cannot follow (a malformed chunk size, a head over 64 KiB, a
//! `Transfer-Encoding` other than `chunked`, which hyper refuses anyway) makes it *lost*: every
//! later request of the connection is then refused (fail closed).

/// What the raw bytes of one request head said about its length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawHead {
    /// `Content-Length` lines in the head.
    pub content_lengths: u32,
    /// A `Transfer-Encoding` line in the head.
    pub transfer_encoding: bool,
    /// The framer lost the connection's framing before this head.
    pub lost: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading head lines.
    Head,
    /// Skipping a body of this many bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping this many chunk bytes, then the CRLF after them.
    ChunkData(u64),
    /// Reading the (empty) line that ends a chunk.
    ChunkEnd,
    /// Reading trailer lines up to an empty one.
    Trailers,
    Lost,
}

/// Longest head or chunk line followed (hyper refuses heads over its own, smaller, limit).
const MAX_LINE: usize = 64 << 10;

/// The framing state of one connection's client-to-proxy bytes.
#[derive(Debug)]
pub struct Framer {
    state: State,
    line: Vec<u8>,
    /// The head being read: a request line was seen.
    started: bool,
    head: RawHead,
    chunked: bool,
    length: Option<u64>,
}

impl Default for Framer {
    fn default() -> Self {
        Self {
            state: State::Head,
            line: Vec::new(),
            started: false,
            head: RawHead::default(),
            chunked: false,
            length: None,
        }
    }
}

impl Framer {
    /// Whether the framing could not be followed.
    pub fn lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Follow `bytes`; `done` gets each request head completed in them.
    pub fn feed(&mut self, mut bytes: &[u8], done: &mut impl FnMut(RawHead)) {
        while !bytes.is_empty() {
            match self.state {
                State::Lost => return,
                State::Body(n) | State::ChunkData(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[take..];
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                _ => {
                    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(bytes);
                        if self.line.len() > MAX_LINE {
                            self.state = State::Lost;
                        }
                        return;
                    };
                    self.line.extend_from_slice(&bytes[..nl]);
                    bytes = &bytes[nl + 1..];
                    if self.line.len() > MAX_LINE {
                        self.state = State::Lost;
                        return;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.line_done(&line, done);
                    line.clear();
                    self.line = line;
                }
            }
        }
    }

    fn line_done(&mut self, line: &[u8], done: &mut impl FnMut(RawHead)) {
        match self.state {
            State::Head if !self.started => self.started = !line.is_empty(),
            State::Head if line.is_empty() => {
                done(self.head);
                self.state = if self.head.transfer_encoding {
                    if self.chunked {
                        State::ChunkSize
                    } else {
                        State::Lost
                    }
                } else {
                    match self.length {
                        Some(n) if n > 0 => State::Body(n),
                        _ => State::Head,
                    }
                };
                self.started = false;
                self.head = RawHead::default();
                self.chunked = false;
                self.length = None;
            }
            State::Head => {
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    return;
                };
                let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
                if name.eq_ignore_ascii_case(b"content-length") {
                    self.head.content_lengths += 1;
                    if self.length.is_none() {
                        self.length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    }
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    self.head.transfer_encoding = true;
                    self.chunked = value.eq_ignore_ascii_case(b"chunked");
                }
            }
            State::ChunkSize => {
                let size = line.split(|&b| b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size.trim_ascii())
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                self.state = match size {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Lost,
                };
            }
            State::ChunkEnd => {
                self.state = if line.is_empty() {
                    State::ChunkSize
                } else {
                    State::Lost
                };
            }
            State::Trailers if line.is_empty() => self.state = State::Head,
            State::Trailers => {}
            State::Body(_) | State::ChunkData(_) | State::Lost => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(chunks: &[&[u8]]) -> (Vec<RawHead>, bool) {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut |h| out.push(h));
        }
        (out, f.lost())
    }

    fn h(content_lengths: u32, transfer_encoding: bool) -> RawHead {
        RawHead {
            content_lengths,
            transfer_encoding,
            lost: false,
        }
    }

    #[test]
    fn follows_heads_and_bodies() {
        // A body that looks like a head line is skipped as a body.
        let body = "\r\nContent-Length: 9\r\n\r\n";
        let stream = format!(
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n\
POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}\
POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n\
POST / HTTP/1.1\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\n{{}}\
POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            body.len()
        );
        let stream = stream.as_bytes();
        let want = vec![
            h(0, false),
            h(1, false),
            h(0, true),
            h(2, false),
            h(1, true),
        ];
        assert_eq!(heads(&[stream]), (want.clone(), false));
        // The same, a byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(heads(&bytes), (want, false));
        // Bare LF line endings, and empty lines between messages.
        assert_eq!(
            heads(&[b"\r\nGET / HTTP/1.1\nContent-Length: 1\n\nx\r\nGET / HTTP/1.1\n\n"]),
            (vec![h(1, false), h(0, false)], false)
        );
    }

    #[test]
    fn gets_lost_on_what_it_cannot_follow() {
        assert!(heads(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]).1);
        assert!(heads(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"]).1);
        assert!(heads(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n"]).1);
        assert!(heads(&[&vec![b'a'; MAX_LINE + 2]]).1);
    }
}
