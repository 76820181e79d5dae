//! Byte sizes as written on the command line (`512M`, `1GiB`, `1048576`) and back.
//!
//! `plugvm`'s options and `plugvm-remote`'s arguments both use this one syntax.
//!
//! Syntax: a decimal number of ASCII digits followed by an optional binary suffix.
//! Every suffix is a power of 1024, whichever spelling is used:
//!
//! | suffix | factor |
//! |---|---|
//! | none | 1 (bytes) |
//! | `K`, `KiB` | 2^10 |
//! | `M`, `MiB` | 2^20 |
//! | `G`, `GiB` | 2^30 |
//! | `T`, `TiB` | 2^40 |
//!
//! The letter is case-insensitive (`512m`, `2gib`). Decimal-looking suffixes such as `MB`
//! are rejected rather than guessed at, as are signs, fractions, hex and whitespace.

use std::fmt;

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// One tebibyte.
pub const TIB: u64 = 1 << 40;

/// The suffixes [`parse_size`] accepts, for error messages.
const SUFFIXES: &str = "K, M, G or T";

/// Why a size string was rejected. Each variant keeps the offending text; the message is
/// only the reason, for the caller to put after the value (`size=12Q: unknown suffix 'Q'...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing was given (`size=`).
    #[error("empty size (expected a number of bytes with an optional {SUFFIXES} suffix)")]
    Empty,
    /// The value does not start with a digit (`-1`, `abc`, `+5`, `.5G`).
    #[error("not a number (expected a number of bytes with an optional {SUFFIXES} suffix)")]
    NotANumber(String),
    /// The digits are followed by something that is not a known suffix (`12Q`, `1.5G`, `1MB`).
    #[error("unknown suffix '{suffix}' (expected {SUFFIXES}, optionally followed by iB)")]
    UnknownSuffix {
        /// The whole value.
        value: String,
        /// The part after the digits.
        suffix: String,
    },
    /// The value does not fit in 64 bits.
    #[error("too large (more than 2^64 bytes)")]
    Overflow(String),
}

/// Parses a size such as `512M`, `2GiB` or `1048576` into bytes. See the module docs.
pub fn parse_size(value: &str) -> Result<u64, SizeError> {
    if value.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, suffix) = value.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NotANumber(value.to_owned()));
    }
    let factor = match suffix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        _ => {
            return Err(SizeError::UnknownSuffix {
                value: value.to_owned(),
                suffix: suffix.to_owned(),
            })
        }
    };
    // Only ASCII digits remain, so the only possible parse failure is overflow.
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| SizeError::Overflow(value.to_owned()))
}

/// Displays a byte count exactly, in the largest binary unit that divides it:
/// `512 MiB`, `3 GiB`, `1536 KiB`, `1000 bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n != 0 && n.is_multiple_of(unit) {
                return write!(f, "{} {name}", n / unit);
            }
        }
        write!(f, "{n} bytes")
    }
}

/// Displays a byte count rounded to one decimal in the largest binary unit it reaches:
/// `23.5 GiB`, `512 MiB`, `100 bytes`. For sizes the user did not type (the host's memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApproxSize(pub u64);

impl fmt::Display for ApproxSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n >= unit {
                // Tenths of a unit, rounded; u128 cannot overflow.
                let tenths = (u128::from(n) * 10 + u128::from(unit) / 2) / u128::from(unit);
                return if tenths % 10 == 0 {
                    write!(f, "{} {name}", tenths / 10)
                } else {
                    write!(f, "{}.{} {name}", tenths / 10, tenths % 10)
                };
            }
        }
        write!(f, "{n} bytes")
    }
}

/// Formats a byte count the way [`parse_size`] reads it back: `512M`, `3G`, `1000`.
pub fn size_arg(n: u64) -> String {
    for (unit, suffix) in [(TIB, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")] {
        if n != 0 && n.is_multiple_of(unit) {
            return format!("{}{suffix}", n / unit);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_documented_spelling() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("1048576", MIB),
            ("4K", 4 * KIB),
            ("4k", 4 * KIB),
            ("4KiB", 4 * KIB),
            ("4kib", 4 * KIB),
            ("512M", 512 * MIB),
            ("512m", 512 * MIB),
            ("512MiB", 512 * MIB),
            ("2G", 2 * GIB),
            ("2GiB", 2 * GIB),
            ("2gib", 2 * GIB),
            ("1T", TIB),
            ("1TiB", TIB),
            ("0007M", 7 * MIB),
            ("16777215T", 16_777_215 * TIB),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_sizes_with_the_right_variant() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        for text in ["-1", "+5", "abc", "M", " 5M", ".5G", "−1"] {
            assert_eq!(
                parse_size(text),
                Err(SizeError::NotANumber(text.into())),
                "{text}"
            );
        }
        for (text, suffix) in [
            ("12Q", "Q"),
            ("1.5G", ".5G"),
            ("1MB", "MB"),
            ("1 M", " M"),
            ("5M ", "M "),
            ("1Mi", "Mi"),
            ("1KiBB", "KiBB"),
            ("1e6", "e6"),
            ("0x10", "x10"),
            ("1G\u{301}", "G\u{301}"),
        ] {
            assert_eq!(
                parse_size(text),
                Err(SizeError::UnknownSuffix {
                    value: text.into(),
                    suffix: suffix.into()
                }),
                "{text}"
            );
        }
        for text in [
            "18446744073709551616",
            "16777216T",
            "99999999999999999999999G",
        ] {
            assert_eq!(
                parse_size(text),
                Err(SizeError::Overflow(text.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            parse_size("12Q").unwrap_err().to_string(),
            "unknown suffix 'Q' (expected K, M, G or T, optionally followed by iB)"
        );
        assert_eq!(
            parse_size("-1").unwrap_err().to_string(),
            "not a number (expected a number of bytes with an optional K, M, G or T suffix)"
        );
        assert_eq!(
            parse_size("").unwrap_err().to_string(),
            "empty size (expected a number of bytes with an optional K, M, G or T suffix)"
        );
        assert_eq!(
            parse_size("99999999999T").unwrap_err().to_string(),
            "too large (more than 2^64 bytes)"
        );
    }

    #[test]
    fn byte_size_display_is_exact() {
        assert_eq!(ByteSize(0).to_string(), "0 bytes");
        assert_eq!(ByteSize(1000).to_string(), "1000 bytes");
        assert_eq!(ByteSize(1536 * KIB).to_string(), "1536 KiB");
        assert_eq!(ByteSize(512 * MIB).to_string(), "512 MiB");
        assert_eq!(ByteSize(3 * GIB).to_string(), "3 GiB");
        assert_eq!(ByteSize(2 * TIB).to_string(), "2 TiB");
    }

    #[test]
    fn approx_size_display() {
        assert_eq!(ApproxSize(0).to_string(), "0 bytes");
        assert_eq!(ApproxSize(1023).to_string(), "1023 bytes");
        assert_eq!(ApproxSize(KIB).to_string(), "1 KiB");
        assert_eq!(ApproxSize(512 * MIB).to_string(), "512 MiB");
        assert_eq!(ApproxSize(24_684_092 * KIB).to_string(), "23.5 GiB");
        assert_eq!(ApproxSize(GIB - 1).to_string(), "1024 MiB");
        assert_eq!(ApproxSize(u64::MAX).to_string(), "16777216 TiB");
    }

    #[test]
    fn size_arg_round_trips() {
        for n in [
            0,
            1,
            1000,
            KIB,
            1536 * KIB,
            512 * MIB,
            3 * GIB,
            TIB,
            u64::MAX,
        ] {
            assert_eq!(parse_size(&size_arg(n)), Ok(n), "{n}");
        }
    }
}
