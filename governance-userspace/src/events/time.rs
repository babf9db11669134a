//! Time: the kernel's clock (CLOCK_MONOTONIC) on the wall, and RFC 3339.

use std::time::{Duration, SystemTime};

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub(super) boot_wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            boot_wall: SystemTime::now() - Duration::from_nanos(monotonic_ns()),
        }
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        self.boot_wall + Duration::from_nanos(monotonic_ns)
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_nanos() as u64)
        .unwrap_or_default()
}

/// Year, month, day, and seconds into the day, of a time since the epoch (Howard Hinnant's
/// civil-from-days).
fn civil(d: Duration) -> (i64, i64, i64, u64) {
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day, rem)
}

/// [`rfc3339`] with `format!`: for years past 9999.
fn rfc3339_formatted(d: Duration) -> String {
    let (year, month, day, rem) = civil(d);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// RFC 3339 UTC with nanoseconds, without pulling in a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, rem) = civil(d);
    if !(0..=9999).contains(&year) {
        return rfc3339_formatted(d);
    }
    // The same, without the formatting machinery (every decision event is stamped).
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    for (at, len, value) in [
        (0, 4, year as u64),
        (5, 2, month as u64),
        (8, 2, day as u64),
        (11, 2, rem / 3600),
        (14, 2, rem / 60 % 60),
        (17, 2, rem % 60),
        (20, 9, u64::from(d.subsec_nanos())),
    ] {
        put_digits(&mut out[at..at + len], value);
    }
    // ASCII digits and separators.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// `value` in decimal, zero-padded to fill `dst` (the lowest digits if it does not fit).
pub(super) fn put_digits(dst: &mut [u8], mut value: u64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Parse an RFC 3339 time (what [`rfc3339`] writes, or one with another offset): for `--since`
/// and replay from the audit log. A date that does not exist (2024-02-31) is refused, and so is
/// a second 60 other than a leap second (23:59:60 UTC, read as the last nanosecond of its
/// minute).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    ::time::OffsetDateTime::parse(s, &::time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_795_000_000_123_456_789);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123456789Z");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(leap));
        // Another offset is the same instant.
        assert_eq!(parse_rfc3339("2000-02-29T01:00:00+01:00"), Some(leap));
        // A leap second is the last nanosecond of its minute.
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_483_228_800);
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60Z"),
            Some(before - Duration::from_nanos(1))
        );
        for bad in [
            "",
            "2000-02-29",
            "2000-13-01T00:00:00Z",
            "x-y-zTa:b:cZ",
            "2000-01-01T00:00:00.x1Z",
            // Dates that do not exist, and seconds that are not leap seconds.
            "2024-02-31T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T12:00:00Z",
            "2024-01-01T12:00:60Z",
            "2024-01-01T24:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_are_formatted_as_by_format() {
        let at = |secs, nanos| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(at(1_795_330_278, 251_580_230)),
            "2026-11-22T06:51:18.251580230Z"
        );
        let reference =
            |t: SystemTime| rfc3339_formatted(t.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..10_000u64 {
            // Anything up to the year 2554, and the edges.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ns = match i {
                0 => 0,
                1 => 253_402_300_799_999_999_999, // 9999-12-31T23:59:59.999999999Z
                2 => 253_402_300_800_000_000_000, // year 10000: the slow path
                _ => u128::from(x),
            };
            let t = SystemTime::UNIX_EPOCH
                + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32);
            assert_eq!(rfc3339(t), reference(t));
        }
    }
}
