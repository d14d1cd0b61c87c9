//! Wall-clock time as HTTP and the access log write it, always in UTC.
//!
//! UTC needs no time-zone database read in every child, and has no hour
//! that happens twice when clocks change.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

struct Civil {
    year: i64,
    month: &'static str,
    day: u32,
    weekday: &'static str,
    hms: (u64, u64, u64),
}

fn civil(t: SystemTime) -> Civil {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let s = secs % 86_400;
    Civil {
        year,
        month: MONTHS[(month - 1) as usize],
        day,
        weekday: WEEKDAYS[(days % 7) as usize],
        hms: (s / 3600, s / 60 % 60, s % 60),
    }
}

/// Common Log Format time: `23/Nov/2026:19:20:00 +0000`.
pub fn clf_time(t: SystemTime) -> String {
    let c = civil(t);
    let (h, m, s) = c.hms;
    format!(
        "{:02}/{}/{}:{h:02}:{m:02}:{s:02} +0000",
        c.day, c.month, c.year
    )
}

/// IMF-fixdate (RFC 9110 §5.6.7): `Mon, 23 Nov 2026 19:20:00 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let c = civil(t);
    let (h, m, s) = c.hms;
    format!(
        "{}, {:02} {} {} {h:02}:{m:02}:{s:02} GMT",
        c.weekday, c.day, c.month, c.year
    )
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form
/// every HTTP/1.1 sender uses; the obsolete forms give `None`.
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    let rest = text.trim().get(5..)?; // "Sun, "
    let mut parts = rest.split(' ');
    let day: i64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as i64 + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|n| n.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).ok()?))
}

/// (year, month, day) to days since 1970-01-01, Howard Hinnant's algorithm.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
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

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Milliseconds on CLOCK_MONOTONIC: one clock for every process on the
/// machine, unaffected by changes of the wall clock.
pub fn now_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn formats() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(clf_time(t), "06/Nov/1994:08:49:37 +0000");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        let now = UNIX_EPOCH + Duration::from_secs(1_795_460_400);
        assert_eq!(parse_http_date(&http_date(now)), Some(now));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }
}
