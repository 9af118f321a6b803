//! Cron expressions read in an IANA time zone: 5 fields, or 6 with seconds first (croner).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::{
    parser::{CronParser, Seconds, Year},
    Cron,
};

/// A schedule's timing: when it is due, in its own time zone (daylight saving included).
#[derive(Clone, Debug)]
pub struct Timing {
    cron: Cron,
    zone: Tz,
}

/// Due times counted at most when telling how many runs were missed.
const MISSED_COUNT_CAP: u32 = 10_000;

impl Timing {
    /// Parses both parts; each error names its field.
    pub fn parse(cron: &str, timezone: &str) -> Result<Timing, (&'static str, String)> {
        // croner reads more than cron's characters (tabs, other whitespace); the API documents
        // these, so anything else is refused here.
        if let Some(c) = cron.chars().find(|c| !(*c == ' ' || c.is_ascii_alphanumeric() || "*/,?#-".contains(*c))) {
            return Err(("cron", format!("{c:?} is not a cron character (fields are separated by spaces)")));
        }
        let fields = cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(("cron", format!("needs 5 fields, or 6 with seconds first; got {fields}")));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|e| ("cron", format!("not a valid cron expression: {e}")))?;
        let zone: Tz = timezone.parse().map_err(|_| ("timezone", format!("{timezone:?} is not an IANA time zone")))?;
        let timing = Timing { cron: parsed, zone };
        // Patterns like `0 0 30 2 *` parse but never fire.
        if timing.next_after(Utc::now()).is_none() {
            return Err(("cron", "never matches a date".into()));
        }
        Ok(timing)
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t.with_timezone(&self.zone), false).ok().map(|d| d.with_timezone(&Utc))
    }

    /// Due times in `(after, until]`, counted up to a cap: the runs no replica was up for.
    pub fn count_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> u32 {
        let mut n = 0;
        let mut t = after;
        while n < MISSED_COUNT_CAP {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    n += 1;
                    t = next;
                }
                _ => break,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_read_in_the_zone_across_daylight_saving() {
        let t = Timing::parse("30 2 * * *", "Europe/Berlin").unwrap();
        // 02:30 Berlin is 00:30 UTC in summer and 01:30 UTC in winter.
        assert_eq!(t.next_after(at("2026-07-01T12:00:00Z")), Some(at("2026-07-02T00:30:00Z")));
        assert_eq!(t.next_after(at("2026-12-01T12:00:00Z")), Some(at("2026-12-02T01:30:00Z")));
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let t = Timing::parse("*/5 * * * * *", "UTC").unwrap();
        let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap();
        assert_eq!(t.next_after(base), Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 5).unwrap()));
        assert_eq!(t.count_between(base, base + chrono::Duration::seconds(20)), 4);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(Timing::parse("* * *", "UTC").unwrap_err().0, "cron");
        assert_eq!(Timing::parse("0 0 * * * * 2030", "UTC").unwrap_err().0, "cron");
        assert_eq!(Timing::parse("61 * * * *", "UTC").unwrap_err().0, "cron");
        assert_eq!(Timing::parse("0 0 30 2 *", "UTC").unwrap_err().0, "cron");
        assert_eq!(Timing::parse("0 3 * * *", "Mars/Olympus").unwrap_err().0, "timezone");
    }
}
