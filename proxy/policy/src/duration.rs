//! Durations as users write them: a number with a unit (`250ms`, `3s`, `1.5s`, `5m`, `1h`),
//! optionally chained (`1m30s`). A bare number is refused: a unit-less `30` is a common source
//! of "I meant seconds" outages.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed from a policy or config string. Serializes back to the same notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn get(self) -> Duration {
        self.0
    }
}

/// Parses `250ms`, `3s`, `1.5s`, `5m`, `1h`, `1m30s`, `100us`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. 250ms, 3s or 5m".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| format!("invalid duration {text:?}: {num:?} is not a number"))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("invalid duration {text:?}: missing unit (use ms, s, m or h)")),
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)")),
        };
        let secs = value * scale;
        if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
            return Err(format!("invalid duration {text:?}: too large"));
        }
        total = total
            .checked_add(Duration::from_secs_f64(secs))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        rest = next;
    }
    Ok(total)
}

/// Formats in the largest unit that represents the value exactly, e.g. `1500ms`, `3s`, `5m`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    for (unit, per) in
        [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)]
    {
        if nanos % per == 0 {
            return format!("{}{unit}", nanos / per);
        }
    }
    format!("{nanos}ns")
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        parse(s).map(Dur)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept YAML scalars of any type so that `timeout: 30` gets the "missing unit"
        // message instead of a type error.
        let v = yaml_serde::Value::deserialize(d)?;
        let text = match v {
            yaml_serde::Value::String(s) => s,
            yaml_serde::Value::Number(n) => n.to_string(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected a duration such as 250ms or 3s, found {other:?}"
                )))
            }
        };
        parse(&text).map(Dur).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_decimals_and_chains() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("100us").unwrap(), Duration::from_micros(100));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert!(parse("30").unwrap_err().contains("missing unit"));
        assert!(parse("3x").unwrap_err().contains("unknown unit \"x\""));
        assert!(parse("").is_err());
        assert!(parse("ms").unwrap_err().contains("expected a number"));
        assert!(parse("1..2s").is_err());
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(180)), "3m");
        assert_eq!(format(Duration::from_secs(3)), "3s");
        assert_eq!(format(Duration::ZERO), "0s");
        for s in ["250ms", "3s", "5m", "2h", "7us"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
