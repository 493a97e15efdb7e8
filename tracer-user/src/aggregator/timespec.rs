//! Times given to `--since`/`--until` and to the API's `since=`/`until=`:
//! a duration ago (`90s`, `5m`, `2h 30m`), an RFC 3339 time
//! (`2026-11-26T23:40:01Z`, or without the zone, read as UTC), `now`, or
//! nanoseconds since the Unix epoch (`0` is the beginning).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn ns_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Resolves `spec` against `now` to ns since the epoch.
pub fn parse_time_at(spec: &str, now: SystemTime) -> Result<i64, String> {
    let spec = spec.trim();
    if spec == "now" {
        return Ok(ns_since_epoch(now));
    }
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        return spec
            .parse::<i64>()
            .map_err(|_| format!("{spec:?}: too large for ns since the epoch"));
    }
    if let Ok(ago) = humantime::parse_duration(spec) {
        let t = now.checked_sub(ago).unwrap_or(UNIX_EPOCH);
        return Ok(ns_since_epoch(t));
    }
    humantime::parse_rfc3339_weak(spec)
        .or_else(|_| humantime::parse_rfc3339(spec))
        .map(ns_since_epoch)
        .map_err(|_| {
            format!(
                "{spec:?} is not a time: use a duration ago (5m, 2h), an RFC 3339 time \
                 (2026-11-26T23:40:01Z), `now`, or ns since the epoch"
            )
        })
}

pub fn parse_time(spec: &str) -> Result<i64, String> {
    parse_time_at(spec, SystemTime::now())
}

/// RFC 3339 with microseconds, as the text output prints times.
pub fn format_ns(ns: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_time_at("now", now), Ok(1_000_000_000_000_000));
        assert_eq!(parse_time_at("5m", now), Ok(999_700_000_000_000));
        assert_eq!(parse_time_at("1h 1s", now), Ok(996_399_000_000_000));
        assert_eq!(parse_time_at("0", now), Ok(0));
        assert_eq!(parse_time_at("1234", now), Ok(1234));
        assert_eq!(
            parse_time_at("1970-01-01T00:00:01Z", now),
            Ok(1_000_000_000)
        );
        assert_eq!(
            parse_time_at("1970-01-01T00:00:01.5", now),
            Ok(1_500_000_000)
        );
        assert_eq!(parse_time_at("100000000h", now), Ok(0));
        assert!(parse_time_at("yesterday", now).is_err());
        assert!(parse_time_at("99999999999999999999", now).is_err());
    }
}
