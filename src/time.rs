//! UTC timestamps without a calendar dependency: snapshot names and listings.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Broken-down UTC time of nanoseconds since the epoch.
pub fn utc_parts(ns: i64) -> (i64, u32, u32, u32, u32, u32) {
    utc_parts_secs(ns.div_euclid(1_000_000_000))
}

/// Broken-down UTC time of seconds since the epoch (any i64: file times
/// reach past the years an i64 of nanoseconds holds).
pub fn utc_parts_secs(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    (
        y,
        mo,
        d,
        (s / 3600) as u32,
        (s / 60 % 60) as u32,
        (s % 60) as u32,
    )
}

/// `2026-11-24T02-00-00Z`: sortable, and usable as a file name everywhere (no colons).
pub fn snapshot_stamp(ns: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(ns);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}-{mi:02}-{s:02}Z")
}

/// `2026-11-24 02:00:00Z`, for listings.
pub fn display(ns: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(ns);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

/// RFC 3339, for JSON.
pub fn rfc3339(ns: i64) -> String {
    rfc3339_secs(ns.div_euclid(1_000_000_000))
}

/// RFC 3339 of seconds since the epoch (file times).
pub fn rfc3339_secs(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts_secs(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_known_instants() {
        assert_eq!(snapshot_stamp(0), "1970-01-01T00-00-00Z");
        // 2026-11-24T02:00:00Z
        assert_eq!(
            snapshot_stamp(1_795_485_600 * 1_000_000_000),
            "2026-11-24T02-00-00Z"
        );
        // 2000-02-29T23:59:59Z, a leap day
        assert_eq!(rfc3339(951_868_799 * 1_000_000_000), "2000-02-29T23:59:59Z");
        assert_eq!(display(-1_000_000_000), "1969-12-31 23:59:59Z");
    }
}
