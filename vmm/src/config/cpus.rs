//! `--cpus boot=N[,max=M]`: how many vCPUs run at boot and how many may be hotplugged up to.

use std::fmt;
use std::str::FromStr;

use super::options::{parse_options, parse_u32, OptionsError};

/// The most vCPUs plugvm supports, whatever KVM allows.
///
/// vCPU *i* gets APIC id *i*, and the MADT describes them as xAPIC entries, whose ids are
/// 8 bits with 255 meaning broadcast; x2APIC ids of 255 and above would also need interrupt
/// remapping for the IOAPIC to reach them. Ids 0..=253 are safe, hence 254.
pub const PLUGVM_MAX_VCPUS: u32 = 254;

/// The syntax of `--cpus`, for help and error messages.
pub(crate) const CPUS_SYNTAX: &str = "boot=N[,max=M]";

/// vCPU counts. Invariant after parsing: `1 <= boot <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CpusConfig {
    /// vCPUs started at boot (ids `0..boot`).
    pub boot: u32,
    /// vCPUs that can exist at once; `max - boot` can be hotplugged. The ACPI tables describe
    /// all `max`.
    pub max: u32,
}

impl Default for CpusConfig {
    /// `boot=1,max=1`.
    fn default() -> Self {
        CpusConfig { boot: 1, max: 1 }
    }
}

/// Why a `--cpus` value was rejected (a usage error: exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpusError {
    /// The `key=value` list itself is malformed (unknown or repeated key, missing `=`...).
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// A count that is not a decimal integer in `u32` range.
    #[error(
        "{key}={value:?} is not a vCPU count (expected an integer from 1 to {})",
        u32::MAX
    )]
    NotANumber {
        /// `boot` or `max`.
        key: &'static str,
        /// The rejected text.
        value: String,
    },
    /// `boot=0` or `max=0`.
    #[error("{key}=0: a VM needs at least one vCPU")]
    Zero {
        /// `boot` or `max`.
        key: &'static str,
    },
    /// `boot` greater than `max`.
    #[error("boot={boot} exceeds max={max}")]
    BootExceedsMax {
        /// Requested boot vCPUs.
        boot: u32,
        /// Requested maximum.
        max: u32,
    },
}

impl CpusConfig {
    /// Parses `boot=N[,max=M]` (keys in any order; both optional: `boot` defaults to 1 and
    /// `max` to `boot`). Host limits are checked later by
    /// [`VmConfig::validate_host`](super::VmConfig::validate_host).
    pub fn parse(value: &str) -> Result<Self, CpusError> {
        let [boot, max] = parse_options(value, ["boot", "max"], CPUS_SYNTAX)?;
        let boot = boot.map(|v| count("boot", v)).transpose()?.unwrap_or(1);
        let max = max.map(|v| count("max", v)).transpose()?.unwrap_or(boot);
        if boot > max {
            return Err(CpusError::BootExceedsMax { boot, max });
        }
        Ok(CpusConfig { boot, max })
    }

    /// How many vCPUs can be hotplugged after boot.
    pub fn hotpluggable(&self) -> u32 {
        self.max.saturating_sub(self.boot)
    }
}

fn count(key: &'static str, value: &str) -> Result<u32, CpusError> {
    match parse_u32(value) {
        None => Err(CpusError::NotANumber {
            key,
            value: value.to_owned(),
        }),
        Some(0) => Err(CpusError::Zero { key }),
        Some(n) => Ok(n),
    }
}

impl FromStr for CpusConfig {
    type Err = CpusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for CpusConfig {
    /// The `--cpus` syntax, e.g. `boot=1,max=4`; parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boot={},max={}", self.boot, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_one_vcpu() {
        assert_eq!(CpusConfig::default(), CpusConfig { boot: 1, max: 1 });
        assert_eq!(CpusConfig::default().hotpluggable(), 0);
    }

    #[test]
    fn accepted_values() {
        let cases: &[(&str, u32, u32)] = &[
            ("boot=1", 1, 1),
            ("boot=4", 4, 4),
            ("max=4", 1, 4),
            ("boot=2,max=8", 2, 8),
            ("max=8,boot=2", 2, 8),
            ("boot=3,max=3", 3, 3),
            ("boot=254,max=254", 254, 254),
            // Limits against the host and PLUGVM_MAX_VCPUS are checked later (exit code 1).
            ("boot=1,max=100000", 1, 100_000),
            ("boot=007", 7, 7),
        ];
        for &(text, boot, max) in cases {
            let cpus = CpusConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(cpus, CpusConfig { boot, max }, "{text}");
            assert_eq!(cpus.hotpluggable(), max - boot);
            assert_eq!(cpus.to_string().parse::<CpusConfig>(), Ok(cpus));
        }
    }

    #[test]
    fn rejected_values() {
        use CpusError::*;
        let not_a_number = |key, value: &str| NotANumber {
            key,
            value: value.into(),
        };
        let cases: Vec<(&str, CpusError)> = vec![
            ("boot=4,max=2", BootExceedsMax { boot: 4, max: 2 }),
            ("max=2,boot=3", BootExceedsMax { boot: 3, max: 2 }),
            ("boot=0", Zero { key: "boot" }),
            ("boot=0,max=4", Zero { key: "boot" }),
            ("max=0", Zero { key: "max" }),
            ("boot=", not_a_number("boot", "")),
            ("boot=two", not_a_number("boot", "two")),
            ("boot=-1", not_a_number("boot", "-1")),
            ("boot=+1", not_a_number("boot", "+1")),
            ("boot=1.5", not_a_number("boot", "1.5")),
            ("boot= 1", not_a_number("boot", " 1")),
            ("max=4294967296", not_a_number("max", "4294967296")),
            (
                "",
                Options(OptionsError::Empty {
                    expected: CPUS_SYNTAX,
                }),
            ),
            (
                "4",
                Options(OptionsError::MissingEquals {
                    item: "4".into(),
                    expected: CPUS_SYNTAX,
                }),
            ),
            (
                "boot=1,sockets=1",
                Options(OptionsError::UnknownKey {
                    key: "sockets".into(),
                    valid: "boot, max".into(),
                }),
            ),
            (
                "boot=1,boot=2",
                Options(OptionsError::DuplicateKey { key: "boot".into() }),
            ),
            (
                "boot=1,",
                Options(OptionsError::EmptyItem {
                    list: "boot=1,".into(),
                }),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(CpusConfig::parse(text), Err(want), "{text}");
        }
    }

    #[test]
    fn messages() {
        let msg = |s: &str| CpusConfig::parse(s).unwrap_err().to_string();
        assert_eq!(msg("boot=4,max=2"), "boot=4 exceeds max=2");
        assert_eq!(msg("boot=0"), "boot=0: a VM needs at least one vCPU");
        assert_eq!(
            msg("max=x"),
            "max=\"x\" is not a vCPU count (expected an integer from 1 to 4294967295)"
        );
        assert_eq!(msg("foo=1"), "unknown key 'foo' (valid keys: boot, max)");
    }
}
