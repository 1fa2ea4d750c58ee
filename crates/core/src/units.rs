//! Sizes and durations as operators write them (`64KiB`, `1MB`, `500ms`, `30s`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigErrors;

/// A byte count: an integer, or a string with a unit (`B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    pub fn bytes(n: u64) -> Self {
        RawSize::Bytes(n)
    }

    pub fn parse(&self) -> Result<u64, String> {
        match self {
            RawSize::Bytes(n) => Ok(*n),
            RawSize::Text(s) => parse_size(s),
        }
    }

    /// Parses, recording an error at `path` (and yielding 0) when malformed.
    pub fn compile(&self, path: &str, errors: &mut ConfigErrors) -> u64 {
        self.parse().unwrap_or_else(|e| {
            errors.push(path, e);
            0
        })
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size (e.g. 1024, 64KiB, 10MB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "KB" | "kB" | "kb" => 1_000,
        "KiB" | "K" | "k" => 1 << 10,
        "MB" | "mb" => 1_000_000,
        "MiB" | "M" | "m" => 1 << 20,
        "GB" | "gb" => 1_000_000_000,
        "GiB" | "G" | "g" => 1 << 30,
        other => return Err(format!("\"{s}\": unknown size unit \"{other}\"")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("\"{s}\" is too large"))
}

/// The longest duration a configuration may give: 100 years. Longer ones are refused rather
/// than taken: a deadline computed from one (now + timeout) would not be a point in time, and
/// the arithmetic would fail on the request path.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `250ms`, `5s`, `2m`, `1h`, `1d` (also combinations such as `1m30s`), up to
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("\"{s}\" is not a duration (e.g. 500ms, 5s, 2m, 1h)");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(d);
    }
    if total > MAX_DURATION {
        return Err(format!(
            "\"{s}\" is longer than the longest duration accepted (36500d)"
        ));
    }
    Ok(total)
}

/// Parses a duration at `path`, recording an error (and yielding `fallback`) when malformed.
pub fn compile_duration(s: &str, path: &str, errors: &mut ConfigErrors) -> Duration {
    parse_duration(s).unwrap_or_else(|e| {
        errors.push(path, e);
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "5", "5 s", "-1s", "1.5s", "5x"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        for too_long in ["36500d1ms", "18446744073709551615s", "999999999999d"] {
            let e = parse_duration(too_long).unwrap_err();
            assert!(e.contains("longest duration accepted"), "{e}");
        }
    }
}
