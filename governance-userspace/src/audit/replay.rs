//! Reading records back (`events --since`), with a seek by time.

use super::*;

/// Replay records from the log in `dir`: every record (seals and lines that do not parse are
/// skipped; `verify` is the integrity check) with `time` at or after `since` and seq before
/// `until_seq`, in order, until `each` returns false.
pub fn replay(
    dir: &Path,
    since: SystemTime,
    until_seq: u64,
    mut each: impl FnMut(crate::events::Record) -> bool,
) -> Result<(), AuditError> {
    let files = list_files(dir)?;
    let start = seek(&files, since);
    for (first, path) in files.into_iter().skip(start) {
        if first >= until_seq {
            break;
        }
        let file = File::open(&path).map_err(io_err("reading", &path))?;
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(io_err("reading", &path))?;
            let Ok(l) = parse_line(&line) else { continue };
            if l.seq >= until_seq {
                return Ok(());
            }
            if l.seal {
                continue;
            }
            let Ok(r) = serde_json::from_slice::<crate::events::Record>(l.value) else {
                continue;
            };
            if crate::events::parse_rfc3339(&r.time).is_some_and(|t| t >= since) && !each(r) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The file a replay from `since` starts at: the last file whose first record is before
/// `since` (binary search on each file's first line; records are written in time order, so
/// every earlier file ends before it). A file whose first time cannot be read counts as after
/// `since`, so it is read rather than skipped.
pub(super) fn seek(files: &[(u64, PathBuf)], since: SystemTime) -> usize {
    files
        .partition_point(|(_, path)| first_time(path).is_some_and(|t| t < since))
        .saturating_sub(1)
}

/// The `time` of a file's first record.
pub(super) fn first_time(path: &Path) -> Option<SystemTime> {
    let line = first_line(path).ok()?;
    let l = parse_line(&line).ok()?;
    #[derive(Deserialize)]
    struct Time<'a> {
        #[serde(borrow)]
        time: std::borrow::Cow<'a, str>,
    }
    let t: Time = serde_json::from_slice(l.value).ok()?;
    crate::events::parse_rfc3339(&t.time)
}

/// One line of the log as [`replay_lines`] hands it over.
pub struct RawLine<'a> {
    pub seq: u64,
    /// A seal rather than a record.
    pub seal: bool,
    /// The record's (or seal's) JSON, as written.
    pub json: &'a [u8],
}

/// Every line of the log in `dir` that parses, in order, from the file a replay from `since`
/// starts at (so records a little before `since` come too: the caller filters by time), until
/// `each` returns false. Lines that do not parse are counted in the result, not handed over;
/// `verify` is the integrity check. Reads one line at a time.
pub fn replay_lines(
    dir: &Path,
    since: SystemTime,
    mut each: impl FnMut(RawLine<'_>) -> bool,
) -> Result<u64, AuditError> {
    let files = list_files(dir)?;
    let start = seek(&files, since);
    let mut unreadable = 0;
    for (_, path) in files.into_iter().skip(start) {
        let file = File::open(&path).map_err(io_err("reading", &path))?;
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(io_err("reading", &path))?;
            let Ok(l) = parse_line(&line) else {
                unreadable += 1;
                continue;
            };
            let raw = RawLine {
                seq: l.seq,
                seal: l.seal,
                json: l.value,
            };
            if !each(raw) {
                return Ok(unreadable);
            }
        }
    }
    Ok(unreadable)
}
