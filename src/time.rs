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

/// Days since 1970-01-01 of a (year, month, day) of the proleptic
/// Gregorian calendar (the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of an HTTP date in its one current form
/// (`Thu, 03 Dec 2026 02:45:29 GMT`, RFC 9110's IMF-fixdate); None for
/// anything else.
pub fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let f: Vec<&str> = s.trim().split(' ').collect();
    let [wd, day, mon, year, hms, "GMT"] = f[..] else {
        return None;
    };
    if wd.len() != 4 || !wd.ends_with(',') || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let num = |t: &str, max: u32| {
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse::<u32>().ok())
            .flatten()
            .filter(|&n| n <= max)
    };
    let d = num(day, 31).filter(|&d| d >= 1)?;
    let m = MONTHS.iter().position(|&x| x == mon)? as u32 + 1;
    let y = i64::from(num(year, 9999)?);
    let [h, mi, sec] = hms.split(':').collect::<Vec<_>>()[..] else {
        return None;
    };
    if [h, mi, sec].iter().any(|t| t.len() != 2) {
        return None;
    }
    let (h, mi, sec) = (num(h, 23)?, num(mi, 59)?, num(sec, 60)?);
    Some(days_from_civil(y, m, d) * 86_400 + i64::from(h * 3600 + mi * 60 + sec))
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
    fn http_dates_parse_and_nothing_else_does() {
        assert_eq!(
            parse_http_date("Thu, 03 Dec 2026 02:45:29 GMT"),
            Some(1_796_265_929)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for secs in [0i64, 951_782_400, 1_796_265_929, 4_102_444_800] {
            let (y, mo, d, h, mi, s) = utc_parts_secs(secs);
            const M: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let text = format!(
                "Mon, {d:02} {} {y:04} {h:02}:{mi:02}:{s:02} GMT",
                M[mo as usize - 1]
            );
            assert_eq!(parse_http_date(&text), Some(secs), "{text}");
        }
        for bad in [
            "",
            "Thu, 03 Dec 2026 02:45:29",
            "Thu, 03 Dec 2026 02:45:29 UTC",
            "Thursday, 03-Dec-26 02:45:29 GMT",
            "Thu Dec  3 02:45:29 2026",
            "Thu, 32 Dec 2026 02:45:29 GMT",
            "Thu, 03 Dez 2026 02:45:29 GMT",
            "Thu, 03 Dec 2026 24:45:29 GMT",
            "Thu, 03 Dec 2026 02:4:29 GMT",
            "Thu, +3 Dec 2026 02:45:29 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

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
