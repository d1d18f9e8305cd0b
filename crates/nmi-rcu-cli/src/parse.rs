//! Value parsers for the command-line flags.
//!
//! Each parser returns a [`ValueError`]; clap prints it after naming the flag
//! and exits with status 2, its status for usage errors.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

/// Shortest run that the `--duration` flags accept, in seconds.
pub const MIN_DURATION_SECS: f64 = 0.1;

/// Longest run that the `--duration` flags accept, in seconds (one day).
pub const MAX_DURATION_SECS: f64 = 86_400.0;

/// An invalid flag value.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueError {
    /// The value is not a number.
    NotANumber {
        /// The text given on the command line.
        value: String,
        /// Description of the expected value, such as "a whole number".
        expected: &'static str,
    },
    /// The value is a number outside the accepted range.
    OutOfRange {
        /// The text given on the command line.
        value: String,
        /// The smallest accepted value, as printed.
        min: String,
        /// The largest accepted value, as printed.
        max: String,
    },
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::NotANumber { value, expected } => {
                write!(f, "'{value}' is not {expected}")
            }
            ValueError::OutOfRange { value, min, max } => {
                write!(
                    f,
                    "{value} is out of range; use a value from {min} to {max}"
                )
            }
        }
    }
}

impl std::error::Error for ValueError {}

/// Parses a run length in seconds, such as `5` or `2.5`.
///
/// # Errors
///
/// [`ValueError::NotANumber`] for text that is not a finite number, and
/// [`ValueError::OutOfRange`] outside [`MIN_DURATION_SECS`] to
/// [`MAX_DURATION_SECS`].
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let not_a_number = || ValueError::NotANumber {
        value: text.to_owned(),
        expected: "a number of seconds (such as 5 or 2.5)",
    };
    let seconds: f64 = text.trim().parse().map_err(|_| not_a_number())?;
    if !seconds.is_finite() {
        return Err(not_a_number());
    }

    if !(MIN_DURATION_SECS..=MAX_DURATION_SECS).contains(&seconds) {
        return Err(ValueError::OutOfRange {
            value: text.to_owned(),
            min: format!("{MIN_DURATION_SECS} s"),
            max: format!("{MAX_DURATION_SECS} s"),
        });
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a whole number within `range`.
///
/// # Errors
///
/// [`ValueError::NotANumber`] for text that is not a whole number, and
/// [`ValueError::OutOfRange`] for a number outside `range`.
pub fn parse_count(text: &str, range: RangeInclusive<u64>) -> Result<u64, ValueError> {
    // Parse wider than u64 so that a negative or huge number is reported as
    // out of range rather than as not a number.
    let count: i128 = text.trim().parse().map_err(|_| ValueError::NotANumber {
        value: text.to_owned(),
        expected: "a whole number",
    })?;

    match u64::try_from(count) {
        Ok(count) if range.contains(&count) => Ok(count),
        _ => Err(ValueError::OutOfRange {
            value: text.to_owned(),
            min: range.start().to_string(),
            max: range.end().to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_accepts_decimals() {
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn duration_rejects_text_and_non_finite() {
        for text in ["abc", "", "inf", "NaN", "5s"] {
            let error = parse_duration(text).unwrap_err();
            assert!(
                matches!(error, ValueError::NotANumber { .. }),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn duration_rejects_out_of_range() {
        for text in ["0", "-1", "0.01", "86401"] {
            let error = parse_duration(text).unwrap_err();
            assert!(
                matches!(error, ValueError::OutOfRange { .. }),
                "{text}: {error}"
            );
            assert!(error.to_string().starts_with(text), "{error}");
        }
    }

    #[test]
    fn count_checks_range() {
        assert_eq!(parse_count("4", 1..=8), Ok(4));
        assert!(matches!(
            parse_count("0", 1..=8),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse_count("-3", 1..=8),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse_count("3.5", 1..=8),
            Err(ValueError::NotANumber { .. })
        ));
    }
}
