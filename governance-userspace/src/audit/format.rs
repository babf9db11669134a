//! The line format: framing, the chain hash, seals, file names, tail scanning, hex.

use super::*;

/// Write one framed line; returns its length.
pub(super) fn write_framed(
    out: &mut impl Write,
    seq: u64,
    prev: &[u8; 32],
    hash: &[u8; 32],
    body: &[u8],
) -> io::Result<u64> {
    let mut digits = [0u8; 20];
    let seq_text = decimal(seq, &mut digits);
    out.write_all(b"{\"seq\":")?;
    out.write_all(seq_text)?;
    out.write_all(b",\"prev\":\"")?;
    out.write_all(&hex32(prev))?;
    out.write_all(b"\",\"hash\":\"")?;
    out.write_all(&hex32(hash))?;
    out.write_all(b"\",")?;
    out.write_all(body)?;
    out.write_all(b"}\n")?;
    Ok((7 + seq_text.len() + 9 + 64 + 10 + 64 + 2 + body.len() + 2) as u64)
}

pub(super) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

pub(super) fn chain_hash(prev: &[u8; 32], seq: u64, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(body);
    h.finalize().into()
}

pub(super) fn seal_message(last_hash: &[u8; 32]) -> Vec<u8> {
    [SEAL_DOMAIN, last_hash].concat()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Seal {
    pub(super) first_seq: u64,
    pub(super) records: u64,
    pub(super) last_hash: String,
    pub(super) time: String,
    pub(super) public_key: String,
    pub(super) signature: String,
}

pub(super) fn file_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

/// The first seq in an `audit-<20 digits>.jsonl` name.
pub(super) fn seq_in_name(name: &OsStr) -> Option<u64> {
    let digits = name
        .to_str()?
        .strip_prefix("audit-")?
        .strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The audit files in `dir`, in seq order.
pub(super) fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if let Some(seq) = seq_in_name(&entry.file_name()) {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

pub(super) fn create_file(dir: &Path, first_seq: u64) -> Result<Active, AuditError> {
    let path = dir.join(file_name(first_seq));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o640)
        .open(&path)
        .map_err(io_err("creating", &path))?;
    sync_dir(dir)?;
    debug!(file = %path.display(), "audit log: new file");
    Ok(Active {
        path,
        out: BufWriter::with_capacity(64 * 1024, file),
        first_seq,
        bytes: 0,
        created: Instant::now(),
    })
}

pub(super) fn reopen_file(path: &Path, first_seq: u64) -> Result<Active, AuditError> {
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    let meta = file.metadata().map_err(io_err("reading", path))?;
    // Age from the file's birth time where the filesystem records it, else from its last write.
    let born = meta.created().or_else(|_| meta.modified());
    let age = born
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    Ok(Active {
        path: path.to_path_buf(),
        out: BufWriter::with_capacity(64 * 1024, file),
        first_seq,
        bytes: meta.len(),
        created: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
    })
}

#[derive(Clone, Copy)]
pub(super) struct Last {
    pub(super) seq: u64,
    pub(super) hash: [u8; 32],
    pub(super) seal: bool,
}

pub(super) struct Tail {
    pub(super) len: u64,
    /// The file up to the end of its last good line.
    pub(super) good_len: u64,
    pub(super) last: Option<Last>,
    /// What is wrong with the first bad line found from the end.
    pub(super) problem: Option<String>,
}

/// Find the last line of `path` that is complete and whose hash verifies, reading backwards.
pub(super) fn scan_tail(path: &Path) -> Result<Tail, AuditError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let len = file.metadata().map_err(io_err("reading", path))?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0; (len - start) as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(io_err("reading", path))?;
        // Unless at the start of the file, the window begins inside a line: skip it.
        let skip = if start == 0 {
            Some(0)
        } else {
            buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
        };
        if let Some(skip) = skip {
            let region = &buf[skip..];
            let mut end = region
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let mut problem = (end < region.len())
                .then(|| "the last line has no trailing newline (a torn write)".to_string());
            while end > 0 {
                let line_start = region[..end - 1]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                match check_line(&region[line_start..end - 1]) {
                    Ok(last) => {
                        return Ok(Tail {
                            len,
                            good_len: start + (skip + end) as u64,
                            last: Some(last),
                            problem,
                        });
                    }
                    Err(why) => {
                        problem.get_or_insert(why);
                        end = line_start;
                    }
                }
            }
            if start == 0 {
                return Ok(Tail {
                    len,
                    good_len: 0,
                    last: None,
                    problem,
                });
            }
        }
        window = window.saturating_mul(2);
    }
}

pub(super) fn check_line(line: &[u8]) -> Result<Last, String> {
    let rec = parse_line(line).map_err(|why| format!("not an audit record: {why}"))?;
    if chain_hash(&rec.prev, rec.seq, rec.body) != rec.hash {
        return Err(format!("seq {}: hash mismatch", rec.seq));
    }
    Ok(Last {
        seq: rec.seq,
        hash: rec.hash,
        seal: rec.seal,
    })
}

pub(super) struct Line<'a> {
    pub(super) seq: u64,
    pub(super) prev: [u8; 32],
    pub(super) hash: [u8; 32],
    pub(super) seal: bool,
    /// What the hash covers: `"record":<json>` or `"seal":<json>`.
    pub(super) body: &'a [u8],
    /// The JSON value in `body`.
    pub(super) value: &'a [u8],
}

/// Split a line (without its newline) into its fields, accepting only the exact framing the
/// writer produces.
pub(super) fn parse_line(line: &[u8]) -> Result<Line<'_>, &'static str> {
    let rest = line
        .strip_prefix(b"{\"seq\":")
        .ok_or("it does not start with {\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, rest) = rest.split_at(digits);
    let seq = std::str::from_utf8(number)
        .ok()
        .filter(|n| !n.is_empty() && (n.len() == 1 || !n.starts_with('0')))
        .and_then(|n| n.parse().ok())
        .ok_or("seq is not an unsigned integer")?;
    let rest = rest
        .strip_prefix(b",\"prev\":\"")
        .ok_or("\"prev\" does not follow seq")?;
    let (prev, rest) = take_hash(rest).ok_or("prev is not 64 lowercase hex digits")?;
    let rest = rest
        .strip_prefix(b"\",\"hash\":\"")
        .ok_or("\"hash\" does not follow prev")?;
    let (hash, rest) = take_hash(rest).ok_or("hash is not 64 lowercase hex digits")?;
    let body = rest
        .strip_prefix(b"\",")
        .and_then(|b| b.strip_suffix(b"}"))
        .ok_or("it does not end in a \"record\" or \"seal\" field and }")?;
    let (seal, value) = if let Some(v) = body.strip_prefix(b"\"record\":") {
        (false, v)
    } else if let Some(v) = body.strip_prefix(b"\"seal\":") {
        (true, v)
    } else {
        return Err("\"record\" or \"seal\" does not follow hash");
    };
    Ok(Line {
        seq,
        prev,
        hash,
        seal,
        body,
        value,
    })
}

pub(super) fn take_hash(s: &[u8]) -> Option<([u8; 32], &[u8])> {
    let (hex, rest) = s.split_at_checked(64)?;
    Some((from_hex(hex)?, rest))
}

pub(super) const HEX: &[u8; 16] = b"0123456789abcdef";

pub(super) fn hex32(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

pub(super) fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// Lowercase hex only, so that each value has exactly one spelling.
pub(super) fn from_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}
