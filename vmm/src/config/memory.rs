//! `--memory size=SIZE[,hotplug_size=SIZE][,hotplug_slots=N][,thp=on|off][,hugepages=on|off]`:
//! boot RAM, the hotplug area, and how the host backs guest memory.
//!
//! Sizes use the syntax of [`parse_size`](plugvm_remote::size::parse_size) (`512M`, `2G`, bytes).

use std::fmt;
use std::str::FromStr;

use plugvm_remote::size::{parse_size, size_arg, ByteSize, SizeError, MIB};

use super::options::{parse_options, parse_switch, parse_u32, OptionsError};

/// Boot RAM when `--memory` is not given, or given without `size`.
pub const DEFAULT_MEMORY_SIZE: u64 = 512 * MIB;
/// The smallest boot RAM accepted: below this a Linux guest with an initramfs does not get
/// far, and it leaves room for the boot structures plugvm places in low memory.
pub const MIN_MEMORY: u64 = 64 * MIB;
/// Boot RAM must be a multiple of this (keeps the E820 map and memslots page-table friendly).
pub const MEMORY_ALIGNMENT: u64 = MIB;
/// The guest's memory block size (Linux x86-64 `memory_block_size_bytes()` for small
/// machines): the unit in which memory is hotplugged and onlined, so `hotplug_size` must be
/// a multiple of it.
pub const HOTPLUG_BLOCK_SIZE: u64 = 128 * MIB;
/// `hotplug_slots` when `hotplug_size` is given without it.
pub const DEFAULT_HOTPLUG_SLOTS: u32 = 8;
/// The most hotplug slots (memory devices described in the DSDT).
pub const MAX_HOTPLUG_SLOTS: u32 = 64;

/// The syntax of `--memory`, for help and error messages.
pub(crate) const MEMORY_SYNTAX: &str =
    "size=SIZE[,hotplug_size=SIZE][,hotplug_slots=N][,thp=on|off][,hugepages=on|off]";

/// Guest memory. Invariants after parsing: `size` is a multiple of [`MEMORY_ALIGNMENT`] and at
/// least [`MIN_MEMORY`]; `hotplug_size` is a multiple of [`HOTPLUG_BLOCK_SIZE`];
/// `hotplug_slots` is 0 when `hotplug_size` is 0 and in `1..=MAX_HOTPLUG_SLOTS` otherwise;
/// `size + hotplug_size` does not overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryConfig {
    /// Boot RAM in bytes.
    pub size: u64,
    /// Bytes of guest-physical space reserved for hotplugged memory (0: no memory hotplug).
    pub hotplug_size: u64,
    /// How many memory devices can be hotplugged into that space.
    pub hotplug_slots: u32,
    /// Advise transparent huge pages on guest memory (`MADV_HUGEPAGE`, the default, as
    /// QEMU and Cloud Hypervisor do): the guest's first touch of 2 MiB costs the host one
    /// fault instead of 512.
    pub thp: bool,
    /// Back guest memory (boot RAM and every hotplugged slot) with the host's huge pages
    /// (`MAP_HUGETLB`, reserved when mapped): no faults after the first, no THP needed.
    pub hugepages: bool,
}

impl Default for MemoryConfig {
    /// `size=512M`, no hotplug.
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY_SIZE,
            hotplug_size: 0,
            hotplug_slots: 0,
            thp: true,
            hugepages: false,
        }
    }
}

/// Why a `--memory` value was rejected (a usage error: exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The `key=value` list itself is malformed (unknown or repeated key, missing `=`...).
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// `size` or `hotplug_size` is not a size.
    #[error("{key}={value}: {source}")]
    InvalidSize {
        /// `size` or `hotplug_size`.
        key: &'static str,
        /// The rejected text.
        value: String,
        /// What is wrong with it.
        source: SizeError,
    },
    /// `size` is not a multiple of [`MEMORY_ALIGNMENT`].
    #[error("size={} is not a multiple of {}", ByteSize(*.0), ByteSize(MEMORY_ALIGNMENT))]
    SizeNotAligned(u64),
    /// `size` is below [`MIN_MEMORY`].
    #[error("size={} is below the minimum of {}", ByteSize(*.0), ByteSize(MIN_MEMORY))]
    SizeTooSmall(u64),
    /// `hotplug_size` is not a multiple of [`HOTPLUG_BLOCK_SIZE`].
    #[error(
        "hotplug_size={} is not a multiple of the guest's memory block size ({})",
        ByteSize(*.0),
        ByteSize(HOTPLUG_BLOCK_SIZE)
    )]
    HotplugSizeNotAligned(u64),
    /// `hotplug_slots` is not a decimal integer.
    #[error("hotplug_slots={0:?} is not a number (expected 1 to {MAX_HOTPLUG_SLOTS})")]
    SlotsNotANumber(String),
    /// `hotplug_slots` is 0 or above [`MAX_HOTPLUG_SLOTS`].
    #[error("hotplug_slots={0} is out of range (expected 1 to {MAX_HOTPLUG_SLOTS})")]
    SlotsOutOfRange(u32),
    /// `hotplug_slots` without a non-zero `hotplug_size`.
    #[error("hotplug_slots={0} needs a non-zero hotplug_size")]
    SlotsWithoutHotplugSize(u32),
    /// `thp` or `hugepages` is not `on` or `off`.
    #[error("{key}={value:?} is not a switch (expected on or off)")]
    NotASwitch {
        /// `thp` or `hugepages`.
        key: &'static str,
        /// The rejected text.
        value: String,
    },
    /// `size + hotplug_size` does not fit in 64 bits.
    #[error("size + hotplug_size is too large (more than 2^64 bytes)")]
    TotalOverflow,
}

impl MemoryConfig {
    /// Parses `size=SIZE[,hotplug_size=SIZE][,hotplug_slots=N]` (keys in any order, all
    /// optional). Whether the host has that much memory is checked later by
    /// [`VmConfig::validate_host`](super::VmConfig::validate_host).
    pub fn parse(value: &str) -> Result<Self, MemoryError> {
        let [size, hotplug_size, hotplug_slots, thp, hugepages] = parse_options(
            value,
            ["size", "hotplug_size", "hotplug_slots", "thp", "hugepages"],
            MEMORY_SYNTAX,
        )?;
        let thp = switch("thp", thp)?.unwrap_or(true);
        let hugepages = switch("hugepages", hugepages)?.unwrap_or(false);
        let size = size
            .map(|v| bytes("size", v))
            .transpose()?
            .unwrap_or(DEFAULT_MEMORY_SIZE);
        if !size.is_multiple_of(MEMORY_ALIGNMENT) {
            return Err(MemoryError::SizeNotAligned(size));
        }
        if size < MIN_MEMORY {
            return Err(MemoryError::SizeTooSmall(size));
        }
        let hotplug_size = hotplug_size
            .map(|v| bytes("hotplug_size", v))
            .transpose()?
            .unwrap_or(0);
        if !hotplug_size.is_multiple_of(HOTPLUG_BLOCK_SIZE) {
            return Err(MemoryError::HotplugSizeNotAligned(hotplug_size));
        }
        let hotplug_slots = match hotplug_slots {
            None if hotplug_size == 0 => 0,
            None => DEFAULT_HOTPLUG_SLOTS,
            Some(v) => {
                let slots =
                    parse_u32(v).ok_or_else(|| MemoryError::SlotsNotANumber(v.to_owned()))?;
                if !(1..=MAX_HOTPLUG_SLOTS).contains(&slots) {
                    return Err(MemoryError::SlotsOutOfRange(slots));
                }
                if hotplug_size == 0 {
                    return Err(MemoryError::SlotsWithoutHotplugSize(slots));
                }
                slots
            }
        };
        if size.checked_add(hotplug_size).is_none() {
            return Err(MemoryError::TotalOverflow);
        }
        Ok(MemoryConfig {
            size,
            hotplug_size,
            hotplug_slots,
            thp,
            hugepages,
        })
    }

    /// Boot RAM plus the hotplug area: the most RAM the guest can ever have. Saturates (the
    /// parser guarantees it does not overflow).
    pub fn total(&self) -> u64 {
        self.size.saturating_add(self.hotplug_size)
    }
}

fn switch(key: &'static str, value: Option<&str>) -> Result<Option<bool>, MemoryError> {
    value
        .map(|v| {
            parse_switch(v).ok_or_else(|| MemoryError::NotASwitch {
                key,
                value: v.to_owned(),
            })
        })
        .transpose()
}

fn bytes(key: &'static str, value: &str) -> Result<u64, MemoryError> {
    parse_size(value).map_err(|source| MemoryError::InvalidSize {
        key,
        value: value.to_owned(),
        source,
    })
}

impl FromStr for MemoryConfig {
    type Err = MemoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for MemoryConfig {
    /// The `--memory` syntax, e.g. `size=512M` or `size=1G,hotplug_size=2G,hotplug_slots=8`;
    /// parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "size={}", size_arg(self.size))?;
        if self.hotplug_size != 0 {
            write!(
                f,
                ",hotplug_size={},hotplug_slots={}",
                size_arg(self.hotplug_size),
                self.hotplug_slots
            )?;
        }
        if !self.thp {
            f.write_str(",thp=off")?;
        }
        if self.hugepages {
            f.write_str(",hugepages=on")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use plugvm_remote::size::GIB;

    use super::*;

    fn mem(size: u64, hotplug_size: u64, hotplug_slots: u32) -> MemoryConfig {
        MemoryConfig {
            size,
            hotplug_size,
            hotplug_slots,
            ..MemoryConfig::default()
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(MemoryConfig::default(), mem(512 * MIB, 0, 0));
        assert_eq!(MemoryConfig::default().total(), 512 * MIB);
        // Every key is optional.
        assert_eq!(MemoryConfig::parse("size=1G"), Ok(mem(GIB, 0, 0)));
        assert_eq!(
            MemoryConfig::parse("hotplug_size=1G"),
            Ok(mem(512 * MIB, GIB, DEFAULT_HOTPLUG_SLOTS))
        );
    }

    #[test]
    fn accepted_values() {
        let cases: &[(&str, MemoryConfig)] = &[
            ("size=512M", mem(512 * MIB, 0, 0)),
            ("size=64M", mem(MIN_MEMORY, 0, 0)),
            ("size=67108864", mem(MIN_MEMORY, 0, 0)),
            ("size=65536K", mem(MIN_MEMORY, 0, 0)),
            ("size=65MiB", mem(65 * MIB, 0, 0)),
            ("size=2g", mem(2 * GIB, 0, 0)),
            ("size=1G,hotplug_size=0", mem(GIB, 0, 0)),
            ("size=1G,hotplug_size=128M", mem(GIB, 128 * MIB, 8)),
            (
                "size=1G,hotplug_size=4G,hotplug_slots=1",
                mem(GIB, 4 * GIB, 1),
            ),
            (
                "hotplug_slots=64,hotplug_size=2G,size=1G",
                mem(GIB, 2 * GIB, 64),
            ),
            // The host's size is checked later (exit code 1).
            ("size=100000G", mem(100_000 * GIB, 0, 0)),
            (
                "size=1G,thp=off",
                MemoryConfig {
                    thp: false,
                    ..mem(GIB, 0, 0)
                },
            ),
            ("size=1G,thp=on", mem(GIB, 0, 0)),
            (
                "size=1G,hugepages=on,hotplug_size=1G",
                MemoryConfig {
                    hugepages: true,
                    ..mem(GIB, GIB, 8)
                },
            ),
            (
                "size=1G,hugepages=true,thp=false",
                MemoryConfig {
                    hugepages: true,
                    thp: false,
                    ..mem(GIB, 0, 0)
                },
            ),
        ];
        for (text, want) in cases {
            let got = MemoryConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, *want, "{text}");
            assert_eq!(got.to_string().parse::<MemoryConfig>(), Ok(got), "{text}");
        }
    }

    #[test]
    fn rejected_values() {
        use MemoryError::*;
        let invalid = |key, value: &str, source| InvalidSize {
            key,
            value: value.into(),
            source,
        };
        let cases: Vec<(&str, MemoryError)> = vec![
            (
                "size=12Q",
                invalid(
                    "size",
                    "12Q",
                    SizeError::UnknownSuffix {
                        value: "12Q".into(),
                        suffix: "Q".into(),
                    },
                ),
            ),
            ("size=", invalid("size", "", SizeError::Empty)),
            (
                "size=-1",
                invalid("size", "-1", SizeError::NotANumber("-1".into())),
            ),
            (
                "size=99999999999T",
                invalid(
                    "size",
                    "99999999999T",
                    SizeError::Overflow("99999999999T".into()),
                ),
            ),
            (
                "size=1G,hotplug_size=x",
                invalid("hotplug_size", "x", SizeError::NotANumber("x".into())),
            ),
            ("size=0", SizeTooSmall(0)),
            ("size=32M", SizeTooSmall(32 * MIB)),
            ("size=63M", SizeTooSmall(63 * MIB)),
            ("size=1000000", SizeNotAligned(1_000_000)),
            ("size=65537K", SizeNotAligned(65_537 * 1024)),
            ("size=10", SizeNotAligned(10)),
            ("size=1G,hotplug_size=64M", HotplugSizeNotAligned(64 * MIB)),
            (
                "size=1G,hotplug_size=129M",
                HotplugSizeNotAligned(129 * MIB),
            ),
            ("size=1G,hotplug_slots=4", SlotsWithoutHotplugSize(4)),
            (
                "size=1G,hotplug_size=0,hotplug_slots=4",
                SlotsWithoutHotplugSize(4),
            ),
            ("hotplug_size=1G,hotplug_slots=0", SlotsOutOfRange(0)),
            ("hotplug_size=1G,hotplug_slots=65", SlotsOutOfRange(65)),
            (
                "hotplug_size=1G,hotplug_slots=-1",
                SlotsNotANumber("-1".into()),
            ),
            ("hotplug_size=1G,hotplug_slots=", SlotsNotANumber("".into())),
            ("size=16777215T,hotplug_size=2T", TotalOverflow),
            (
                "size=1G,thp=yes",
                NotASwitch {
                    key: "thp",
                    value: "yes".into(),
                },
            ),
            (
                "size=1G,hugepages=",
                NotASwitch {
                    key: "hugepages",
                    value: "".into(),
                },
            ),
            (
                "",
                Options(OptionsError::Empty {
                    expected: MEMORY_SYNTAX,
                }),
            ),
            (
                "512M",
                Options(OptionsError::MissingEquals {
                    item: "512M".into(),
                    expected: MEMORY_SYNTAX,
                }),
            ),
            (
                "size=1G,shared=on",
                Options(OptionsError::UnknownKey {
                    key: "shared".into(),
                    valid: "size, hotplug_size, hotplug_slots, thp, hugepages".into(),
                }),
            ),
            (
                "size=1G,size=2G",
                Options(OptionsError::DuplicateKey { key: "size".into() }),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(MemoryConfig::parse(text), Err(want), "{text}");
        }
    }

    #[test]
    fn messages() {
        let msg = |s: &str| MemoryConfig::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("size=12Q"),
            "size=12Q: unknown suffix 'Q' (expected K, M, G or T, optionally followed by iB)"
        );
        assert_eq!(
            msg("size=32M"),
            "size=32 MiB is below the minimum of 64 MiB"
        );
        assert_eq!(
            msg("size=1000000"),
            "size=1000000 bytes is not a multiple of 1 MiB"
        );
        assert_eq!(
            msg("hotplug_size=64M"),
            "hotplug_size=64 MiB is not a multiple of the guest's memory block size (128 MiB)"
        );
        assert_eq!(
            msg("hotplug_slots=2"),
            "hotplug_slots=2 needs a non-zero hotplug_size"
        );
        assert_eq!(
            msg("hotplug_size=1G,hotplug_slots=99"),
            "hotplug_slots=99 is out of range (expected 1 to 64)"
        );
    }
}
