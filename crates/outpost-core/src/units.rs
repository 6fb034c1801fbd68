//! Durations and sizes as operators write them in flags and settings: `90s`, `30m`, `12h`, `7d`; `500MiB`.

use std::time::Duration;

/// A duration or size that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

/// Splits `90s` into 90 and `s`; `what` says what the text should look like when it has no number.
fn number_and_unit<'a>(text: &'a str, what: &str) -> Result<(u64, &'a str), UnitError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number = number
        .parse()
        .map_err(|_| UnitError(format!("{text:?} is not {what}")))?;
    Ok((number, unit))
}

/// Reads a positive duration: a number followed by `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (number, unit) = number_and_unit(text, "a duration like 90s, 30m, 12h or 7d")?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(UnitError(format!(
                "{text:?}: the unit must be ms, s, m, h or d"
            )))
        }
    };
    match number.checked_mul(unit_ms) {
        Some(0) => Err(UnitError("the duration must be more than 0".into())),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(UnitError(format!("{text:?} is too long"))),
    }
}

/// Reads a positive size: bytes, or a number followed by `KiB`, `MiB` or `GiB`.
pub fn parse_bytes(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = number_and_unit(text, "a size like 500MiB or 1GiB")?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => {
            return Err(UnitError(format!(
                "{text:?}: the unit must be B, KiB, MiB or GiB"
            )))
        }
    };
    match number.checked_mul(1 << shift) {
        Some(0) => Err(UnitError("the size must be more than 0".into())),
        Some(bytes) => Ok(bytes),
        None => Err(UnitError(format!("{text:?} is too large"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_their_units_and_refuse_zero_and_bare_numbers() {
        assert_eq!(parse_duration("1d"), Ok(Duration::from_hours(24)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }

    #[test]
    fn sizes_read_their_units_and_refuse_zero() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("2KiB"), Ok(2048));
        assert!(parse_bytes("0MiB").is_err());
        assert!(parse_bytes("1TB").is_err());
    }
}
