//! Recovery targets and the recovery settings written into a restored
//! data directory, for both styles: `recovery.signal` plus settings in
//! `postgresql.auto.conf` (PostgreSQL 12 and newer) and `recovery.conf`
//! (older). Every value is quoted as the GUC parser requires: an unquoted
//! `recovery_target_lsn = 0/3000028` does not parse.

use std::fmt;

use crate::guc::guc_quote;
use crate::lsn::Lsn;

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the archive.
    End,
    /// As soon as the backup is consistent.
    Immediate,
    /// A time, always with an explicit offset.
    Time(jiff::Zoned),
    Xid(u64),
    Lsn(Lsn),
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::End => f.write_str("end of archive"),
            Target::Immediate => f.write_str("immediate (consistency)"),
            Target::Time(t) => write!(f, "time {}", format_time(t)),
            Target::Xid(x) => write!(f, "transaction {x}"),
            Target::Lsn(l) => write!(f, "LSN {l}"),
            Target::Name(n) => write!(f, "restore point {n:?}"),
        }
    }
}

/// The accepted forms of a target time, for error messages.
pub const TIME_FORMS: &str =
    "YYYY-MM-DD HH:MM:SS[.ffffff][+-HH[:MM]] (local time without an offset) or RFC 3339 (2026-11-25T10:00:00Z)";

/// Parses a target time. Without an offset the time is in `tz` (the local
/// time zone); it is always written back with an explicit offset.
pub fn parse_time(s: &str, tz: &jiff::tz::TimeZone) -> Result<jiff::Zoned, String> {
    let s = s.trim();
    let err = || format!("invalid target time {s:?}: expected {TIME_FORMS}");
    // PostgreSQL keeps microseconds: finer digits would be silently dropped.
    let fraction = s.split_once('.').map(|(_, f)| f.bytes().take_while(u8::is_ascii_digit).count());
    if fraction.is_some_and(|n| n > 6) {
        return Err(format!(
            "invalid target time {s:?}: at most 6 fractional digits (microseconds); expected {TIME_FORMS}"
        ));
    }
    if s.ends_with(['Z', 'z']) {
        // RFC 3339 in UTC.
        let ts: jiff::Timestamp = s.parse().map_err(|_| err())?;
        return Ok(ts.to_zoned(jiff::tz::TimeZone::UTC));
    }
    let normalized = s.replacen(' ', "T", 1);
    let (body, offset) = split_offset(&normalized);
    let dt: jiff::civil::DateTime = body.parse().map_err(|_| err())?;
    match offset {
        Some(off) => {
            let off = parse_offset(off).ok_or_else(err)?;
            let ts = off.to_timestamp(dt).map_err(|_| err())?;
            Ok(ts.to_zoned(jiff::tz::TimeZone::fixed(off)))
        }
        None => dt.to_zoned(tz.clone()).map_err(|_| err()),
    }
}

fn split_offset(s: &str) -> (&str, Option<&str>) {
    // An offset starts at the last '+' or '-' after the time part.
    if let Some(t) = s.find('T') {
        if let Some(i) = s[t..].rfind(['+', '-']) {
            return (&s[..t + i], Some(&s[t + i..]));
        }
    }
    (s, None)
}

fn parse_offset(s: &str) -> Option<jiff::tz::Offset> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let rest = &s[1..];
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => (&rest[..2], &rest[2..]),
        None => (rest, "0"),
    };
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    if h > 15 || m > 59 {
        return None;
    }
    jiff::tz::Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

/// A time as PostgreSQL reads it back: `2026-11-25 10:00:00.123456+01:00`.
pub fn format_time(t: &jiff::Zoned) -> String {
    let off = t.offset().seconds();
    let sign = if off < 0 { '-' } else { '+' };
    let off = off.abs();
    format!("{}{sign}{:02}:{:02}", t.datetime().strftime("%Y-%m-%d %H:%M:%S%.6f"), off / 3600, (off % 3600) / 60)
}

/// Everything recovery needs.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    pub restore_command: String,
    pub target: Target,
    pub inclusive: bool,
    /// `latest`, `current` or a number.
    pub timeline: String,
    /// `promote`, `pause` or `shutdown`.
    pub action: String,
}

impl RecoverySettings {
    /// Name/value pairs, in the order they are written.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("restore_command", self.restore_command.clone())];
        match &self.target {
            Target::End => {}
            Target::Immediate => v.push(("recovery_target", "immediate".into())),
            Target::Time(t) => v.push(("recovery_target_time", format_time(t))),
            Target::Xid(x) => v.push(("recovery_target_xid", x.to_string())),
            Target::Lsn(l) => v.push(("recovery_target_lsn", l.to_string())),
            Target::Name(n) => v.push(("recovery_target_name", n.clone())),
        }
        if matches!(self.target, Target::Time(_) | Target::Xid(_) | Target::Lsn(_)) {
            v.push(("recovery_target_inclusive", self.inclusive.to_string()));
        }
        v.push(("recovery_target_timeline", self.timeline.clone()));
        if !matches!(self.target, Target::End) {
            v.push(("recovery_target_action", self.action.clone()));
        }
        v
    }

    /// Lines for `postgresql.auto.conf` (12+) or `recovery.conf` (older,
    /// which also needs `standby_mode` off, its default).
    pub fn render(&self) -> String {
        self.pairs().iter().map(|(k, v)| format!("{k} = {}\n", guc_quote(v))).collect()
    }
}

/// Every parameter a previous recovery may have left behind.
pub const RECOVERY_PARAMS: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "recovery_end_command",
    "primary_conninfo",
    "primary_slot_name",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guc::read_conf_value;

    fn utc() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::UTC
    }

    #[test]
    fn more_than_microseconds_is_refused() {
        let utc = jiff::tz::TimeZone::UTC;
        assert!(parse_time("2026-11-25 10:00:00.123456+00", &utc).is_ok());
        assert!(parse_time("2026-11-25 10:00:00.1234567+00", &utc).unwrap_err().contains("6 fractional digits"));
        assert!(parse_time("2026-11-25T10:00:00.1234567Z", &utc).is_err());
    }

    #[test]
    fn time_forms() {
        let berlin =
            jiff::tz::TimeZone::get("Europe/Berlin").unwrap_or_else(|_| jiff::tz::TimeZone::fixed(jiff::tz::offset(1)));
        let t = parse_time("2026-11-25 10:00:00", &berlin).unwrap();
        assert_eq!(format_time(&t), "2026-11-25 10:00:00.000000+01:00");
        let t = parse_time("2026-11-25 10:00:00.25+05:30", &utc()).unwrap();
        assert_eq!(format_time(&t), "2026-11-25 10:00:00.250000+05:30");
        let t = parse_time("2026-11-25 10:00:00-03", &utc()).unwrap();
        assert_eq!(format_time(&t), "2026-11-25 10:00:00.000000-03:00");
        let t = parse_time("2026-11-25T10:00:00Z", &berlin).unwrap();
        assert_eq!(format_time(&t), "2026-11-25 10:00:00.000000+00:00");
        let t = parse_time("2026-11-25T10:00:00+02:00", &berlin).unwrap();
        assert_eq!(format_time(&t), "2026-11-25 10:00:00.000000+02:00");
        for bad in ["yesterday", "2026-13-01 00:00:00", "2026-11-25 25:00:00", "10:00", "2026-11-25 10:00:00+99"] {
            assert!(parse_time(bad, &utc()).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_quoted_values_for_both_styles() {
        let s = RecoverySettings {
            restore_command: "/usr/bin/dbbackup wal fetch %f %p --repo '/b/it'\\''s'".into(),
            target: Target::Lsn("0/3000028".parse().unwrap()),
            inclusive: false,
            timeline: "latest".into(),
            action: "promote".into(),
        };
        let text = s.render();
        assert!(text.contains("recovery_target_lsn = '0/3000028'\n"), "{text}");
        assert!(text.contains("recovery_target_inclusive = 'false'\n"));
        assert_eq!(read_conf_value(&text, "restore_command").unwrap(), s.restore_command);
        let t = RecoverySettings { target: Target::Name("before 'drop'".into()), ..s.clone() };
        assert!(t.render().contains("recovery_target_name = 'before ''drop'''\n"));
        assert!(!t.render().contains("inclusive"));
        let e = RecoverySettings { target: Target::End, ..s };
        assert!(!e.render().contains("recovery_target_action"));
        assert!(e.render().contains("recovery_target_timeline = 'latest'"));
    }
}
