//! `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`, UTC) to and from seconds since the epoch.
//!
//! Accepted as AWS's SDKs write it, and as this module always accepted it: exactly 16
//! characters, digits where digits belong, month 1-12, day 1-31 (a day past the end of its
//! month counts on into the next), hour 0-23, minute 0-59, second 0-60 (a leap second counts
//! as the next minute's first).

use time::{Date, Month, OffsetDateTime};

/// Days from 1970-01-01 to day `d` of month `m` of year `y` (proleptic Gregorian), with `d`
/// counted from the first of the month, so day 31 of a 30-day month is the next month's
/// first. `None` when the month is not 1-12 or the year is outside `time`'s range.
pub fn epoch_day(y: i64, m: i64, d: i64) -> Option<i64> {
    let month = Month::try_from(u8::try_from(m).ok()?).ok()?;
    let first = Date::from_calendar_date(i32::try_from(y).ok()?, month, 1).ok()?;
    let epoch = OffsetDateTime::UNIX_EPOCH.date().to_julian_day();
    Some(i64::from(first.to_julian_day()) - i64::from(epoch) + d - 1)
}

/// Seconds since the epoch for `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(epoch_day(y, m, d)? * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Formats seconds since the epoch as `YYYYMMDDTHHMMSSZ`. Times outside years 0000-9999
/// (which `X-Amz-Date` cannot write) are clamped to that range's ends.
pub fn format_amz_date(secs: i64) -> String {
    let min = Date::from_calendar_date(0, Month::January, 1)
        .map_or(0, |d| d.midnight().assume_utc().unix_timestamp());
    let max = Date::from_calendar_date(9999, Month::December, 31)
        .map_or(0, |d| d.midnight().assume_utc().unix_timestamp() + 86_399);
    let t = OffsetDateTime::from_unix_timestamp(secs.clamp(min, max))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(t, 1_440_938_160);
        assert_eq!(format_amz_date(t), "20150830T123600Z");
        assert!(parse_amz_date("20151330T123600Z").is_none());
        assert!(parse_amz_date("2015083OT123600Z").is_none());
        assert!(parse_amz_date("").is_none());
        assert_eq!(format_amz_date(0), "19700101T000000Z");
        assert_eq!(format_amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(format_amz_date(-1), "19691231T235959Z");
    }

    /// What the hand-written civil-date arithmetic accepted stays accepted, with the same
    /// value: days past a month's end and a leap second roll over.
    #[test]
    fn lenient_days_and_leap_seconds() {
        assert_eq!(
            parse_amz_date("20150231T000000Z"),
            parse_amz_date("20150303T000000Z")
        );
        assert_eq!(
            parse_amz_date("20151231T235960Z"),
            parse_amz_date("20160101T000000Z")
        );
        assert_eq!(parse_amz_date("00000101T000000Z"), Some(-62_167_219_200));
        assert_eq!(epoch_day(1970, 1, 1), Some(0));
        assert_eq!(epoch_day(2000, 3, 1), Some(11_017));
        assert_eq!(epoch_day(2000, 13, 1), None);
    }
}
