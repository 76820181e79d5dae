//! The `key=value,key=value` lists used by `--cpus` and `--memory`.
//!
//! Keys may come in any order; every key must be one of the caller's, at most once; values
//! may not contain commas (none of ours need to). Whitespace is not trimmed: `boot= 2` is a
//! value of ` 2`, which the caller then rejects as not a number.

/// Why a `key=value` list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The whole argument is empty.
    #[error("empty value (expected {expected})")]
    Empty {
        /// A description of the accepted keys, e.g. `boot=N[,max=M]`.
        expected: &'static str,
    },
    /// An item between commas is empty (`boot=1,,max=2`, a trailing comma).
    #[error("empty item in '{list}'")]
    EmptyItem {
        /// The whole list.
        list: String,
    },
    /// An item has no `=` (`4`, `boot`).
    #[error("'{item}' is not of the form key=value (expected {expected})")]
    MissingEquals {
        /// The item without `=`.
        item: String,
        /// A description of the accepted keys.
        expected: &'static str,
    },
    /// A key that the option does not have.
    #[error("unknown key '{key}' (valid keys: {valid})")]
    UnknownKey {
        /// The unknown key.
        key: String,
        /// The accepted keys, comma-separated.
        valid: String,
    },
    /// The same key twice (`boot=1,boot=2`).
    #[error("key '{key}' given more than once")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
}

/// Splits `list` into one value per key of `keys`, in the order of `keys`.
///
/// `expected` describes the syntax for error messages (e.g. `boot=N[,max=M]`).
pub(crate) fn parse_options<'a, const N: usize>(
    list: &'a str,
    keys: [&str; N],
    expected: &'static str,
) -> Result<[Option<&'a str>; N], OptionsError> {
    if list.is_empty() {
        return Err(OptionsError::Empty { expected });
    }
    let mut values = [None; N];
    for item in list.split(',') {
        if item.is_empty() {
            return Err(OptionsError::EmptyItem {
                list: list.to_owned(),
            });
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(OptionsError::MissingEquals {
                item: item.to_owned(),
                expected,
            });
        };
        let Some(slot) = keys.iter().position(|k| *k == key) else {
            return Err(OptionsError::UnknownKey {
                key: key.to_owned(),
                valid: keys.join(", "),
            });
        };
        if values[slot].replace(value).is_some() {
            return Err(OptionsError::DuplicateKey {
                key: key.to_owned(),
            });
        }
    }
    Ok(values)
}

/// Parses a switch: `on`/`off` (Cloud Hypervisor's and QEMU's spelling) or `true`/`false`.
pub(crate) fn parse_switch(value: &str) -> Option<bool> {
    match value {
        "on" | "true" => Some(true),
        "off" | "false" => Some(false),
        _ => None,
    }
}

/// Parses a plain decimal `u32`: ASCII digits only (no sign, no whitespace), no overflow.
pub(crate) fn parse_u32(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 2] = ["a", "bb"];

    fn parse(list: &str) -> Result<[Option<&str>; 2], OptionsError> {
        parse_options(list, KEYS, "a=X[,bb=Y]")
    }

    #[test]
    fn keys_in_any_order_and_optional() {
        assert_eq!(parse("a=1"), Ok([Some("1"), None]));
        assert_eq!(parse("bb=2"), Ok([None, Some("2")]));
        assert_eq!(parse("a=1,bb=2"), Ok([Some("1"), Some("2")]));
        assert_eq!(parse("bb=2,a=1"), Ok([Some("1"), Some("2")]));
        // Values are passed through untrimmed, including empty ones and extra '='.
        assert_eq!(parse("a=,bb= x=y"), Ok([Some(""), Some(" x=y")]));
    }

    #[test]
    fn every_rejection() {
        assert_eq!(
            parse(""),
            Err(OptionsError::Empty {
                expected: "a=X[,bb=Y]"
            })
        );
        for list in [",", "a=1,", ",a=1", "a=1,,bb=2"] {
            assert_eq!(
                parse(list),
                Err(OptionsError::EmptyItem { list: list.into() }),
                "{list}"
            );
        }
        assert_eq!(
            parse("4"),
            Err(OptionsError::MissingEquals {
                item: "4".into(),
                expected: "a=X[,bb=Y]"
            })
        );
        assert_eq!(
            parse("a=1,c=2"),
            Err(OptionsError::UnknownKey {
                key: "c".into(),
                valid: "a, bb".into()
            })
        );
        // Keys are exact: no case folding, no trimming, no prefixes.
        for key in ["A", " a", "b", "bbb", ""] {
            assert!(
                matches!(
                    parse(&format!("{key}=1")),
                    Err(OptionsError::UnknownKey { .. })
                ),
                "{key:?}"
            );
        }
        assert_eq!(
            parse("a=1,bb=2,a=1"),
            Err(OptionsError::DuplicateKey { key: "a".into() })
        );
    }

    #[test]
    fn parse_u32_is_strict() {
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("007"), Some(7));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "0x1",
            "4294967296",
            "1e3",
            "٣",
        ] {
            assert_eq!(parse_u32(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages() {
        assert_eq!(
            parse("c=1").unwrap_err().to_string(),
            "unknown key 'c' (valid keys: a, bb)"
        );
        assert_eq!(
            parse("a=1,a=2").unwrap_err().to_string(),
            "key 'a' given more than once"
        );
        assert_eq!(
            parse("4").unwrap_err().to_string(),
            "'4' is not of the form key=value (expected a=X[,bb=Y])"
        );
    }
}
