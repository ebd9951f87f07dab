//! Durations as people write them in `marty.toml` and in attributes: `"250ms"`, `"10s"`, `"2m"`, `"1h"`,
//! `"7d"`.

use std::time::Duration;

/// The units a duration may be written in, smallest first, with their length in nanoseconds.
const UNITS: &[(&str, u64)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// Why a duration did not parse; its `Display` is the `help:` a user needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    /// What was wrong, lowercase, no trailing period.
    pub problem: String,
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problem)
    }
}

/// The hint shown with every malformed duration.
pub const DURATION_HELP: &str =
    "write a whole number followed by a unit (`ns`, `us`, `ms`, `s`, `m`, `h` or `d`), e.g. `\"250ms\"` or `\"10s\"`";

/// Parses `"250ms"`, `"10s"`, `"2m"`, `"1h"`, `"7d"`, `"0ms"`. One number and one unit: no fractions, no spaces,
/// no compound forms, so what a reviewer reads is what the service does.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(DurationError { problem: format!("invalid duration `{text}`: it must start with a whole number") });
    }
    let Some(&(_, nanos_per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        let problem = if unit.is_empty() {
            format!("invalid duration `{text}`: the unit is missing")
        } else {
            format!("invalid duration `{text}`: unknown unit `{unit}`")
        };
        return Err(DurationError { problem });
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(nanos_per_unit))
        .map(Duration::from_nanos)
        .ok_or_else(|| DurationError { problem: format!("invalid duration `{text}`: it is too large") })
}

/// Writes a duration back in the largest unit that represents it exactly (`1500ms`, `2s`).
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    let (name, per_unit) = UNITS
        .iter()
        .rev()
        .find(|(_, per_unit)| nanos.is_multiple_of(u128::from(*per_unit)))
        .copied()
        .unwrap_or(("ns", 1));
    format!("{}{name}", nanos / u128::from(per_unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("7us"), Ok(Duration::from_micros(7)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_is_ambiguous_or_malformed() {
        for bad in ["", "10", "ms", "1.5s", "10 s", "10sec", "-1s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_duration("10x").unwrap_err().problem.contains("unknown unit `x`"));
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::ZERO), "0d");
    }
}
