//! The machine description the tables are built from, and its validation.

use crate::layout;
use crate::Error;

/// Most possible CPUs the tables can describe.
///
/// The limit is the table area: every possible CPU costs a MADT entry, a processor device
/// and a `Notify` branch in the DSDT, and an SRAT entry, and all tables must fit between
/// [`layout::RSDP_ADDR`] and [`layout::ACPI_TABLES_END`] (checked by a test with a hotplug
/// memory region, the largest configuration). Processor device names (`C000`..`CFFF`)
/// would allow 4096.
pub const MAX_CPUS: u32 = 512;

/// Most hotplug memory slots the tables can describe (`MachineDescription::hotplug_slots`).
///
/// Every slot costs a `PNP0C80` device (about 110 bytes of DSDT) and a `Notify` branch;
/// 64 slots with [`MAX_CPUS`] CPUs still fit the table area (checked by a test). Slot
/// device names (`M001`..`MFFF`) would allow 4095.
pub const MAX_HOTPLUG_SLOTS: u32 = 64;

/// A range of guest physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl MemoryRange {
    /// First address past the range, or `None` if it wraps the address space.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }

    fn overlaps(&self, base: u64, end: u64) -> bool {
        // Only called on validated (non-wrapping) ranges.
        self.base < end && base < self.base + self.size
    }
}

/// Plain description of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineDescription {
    /// CPUs `0..boot_cpus` are present at boot (APIC id = ACPI UID = index).
    pub boot_cpus: u32,
    /// Processor objects and MADT entries are generated for CPUs `0..max_cpus`.
    pub max_cpus: u32,
    /// Boot RAM ranges (described in the SRAT when there is a hotplug region).
    pub ram: Vec<MemoryRange>,
    /// Region reserved for hotplugged memory: published as hotpluggable in the SRAT so
    /// that Linux sizes its memory map for it.
    pub hotplug_memory: Option<MemoryRange>,
    /// Number of hotplug memory slots, UIDs `1..=hotplug_slots`: one `PNP0C80` memory device
    /// each, whose range the memory hotplug controller reports at run time. 0 without a
    /// hotplug region, `1..=`[`MAX_HOTPLUG_SLOTS`] with one.
    pub hotplug_slots: u32,
}

impl MachineDescription {
    /// Checks that the description is consistent; [`crate::build_tables`] calls it first.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |msg: String| Err(Error::InvalidDescription(msg));
        if self.boot_cpus == 0 {
            return invalid("boot_cpus must be at least 1".into());
        }
        if self.boot_cpus > self.max_cpus {
            return invalid(format!(
                "boot_cpus {} exceeds max_cpus {}",
                self.boot_cpus, self.max_cpus
            ));
        }
        if self.max_cpus > MAX_CPUS {
            return Err(Error::TooManyCpus {
                max_cpus: self.max_cpus,
                limit: MAX_CPUS,
            });
        }
        match (&self.hotplug_memory, self.hotplug_slots) {
            (None, 0) => {}
            (None, n) => return invalid(format!("{n} hotplug slots without a hotplug region")),
            (Some(_), 0) => return invalid("hotplug region without hotplug slots".into()),
            (Some(_), n) if n > MAX_HOTPLUG_SLOTS => {
                return invalid(format!(
                    "{n} hotplug slots requested, at most {MAX_HOTPLUG_SLOTS} are supported"
                ))
            }
            (Some(_), _) => {}
        }
        if self.ram.is_empty() {
            return invalid("no boot RAM".into());
        }
        let mut checked: Vec<MemoryRange> = Vec::with_capacity(self.ram.len() + 1);
        let all = self
            .ram
            .iter()
            .map(|r| ("RAM", r))
            .chain(self.hotplug_memory.iter().map(|r| ("hotplug memory", r)));
        for (what, range) in all {
            let Some(end) = range.end().filter(|_| range.size > 0) else {
                return invalid(format!("{what} range {range:x?} is empty or wraps"));
            };
            if range.overlaps(layout::MMIO_HOLE_START, layout::MMIO_HOLE_END) {
                return invalid(format!("{what} range {range:x?} overlaps the MMIO hole"));
            }
            if let Some(other) = checked.iter().find(|o| o.overlaps(range.base, end)) {
                return invalid(format!("{what} range {range:x?} overlaps {other:x?}"));
            }
            checked.push(*range);
        }
        Ok(())
    }

    /// CPUs that are possible but not present at boot.
    pub fn hotplug_cpus(&self) -> u32 {
        self.max_cpus.saturating_sub(self.boot_cpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(boot: u32, max: u32) -> MachineDescription {
        MachineDescription {
            boot_cpus: boot,
            max_cpus: max,
            ram: vec![MemoryRange {
                base: 0,
                size: 1 << 30,
            }],
            hotplug_memory: None,
            hotplug_slots: 0,
        }
    }

    fn is_invalid(d: &MachineDescription) -> bool {
        matches!(d.validate(), Err(Error::InvalidDescription(_)))
    }

    #[test]
    fn accepts_sane_descriptions() {
        assert_eq!(desc(1, 1).validate(), Ok(()));
        assert_eq!(desc(4, 64).validate(), Ok(()));
        assert_eq!(desc(1, MAX_CPUS).validate(), Ok(()));
        let mut d = desc(2, 8);
        d.ram.push(MemoryRange {
            base: layout::MMIO_HOLE_END,
            size: 1 << 30,
        });
        d.hotplug_memory = Some(MemoryRange {
            base: layout::MMIO_HOLE_END + (1 << 30),
            size: 4 << 30,
        });
        d.hotplug_slots = 8;
        assert_eq!(d.validate(), Ok(()));
        d.hotplug_slots = MAX_HOTPLUG_SLOTS;
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.hotplug_cpus(), 6);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(is_invalid(&desc(0, 4)));
        assert!(is_invalid(&desc(5, 4)));
        assert_eq!(
            desc(1, MAX_CPUS + 1).validate(),
            Err(Error::TooManyCpus {
                max_cpus: MAX_CPUS + 1,
                limit: MAX_CPUS
            })
        );
    }

    #[test]
    fn rejects_bad_memory() {
        let mut d = desc(1, 1);
        d.ram.clear();
        assert!(is_invalid(&d), "no RAM");

        let mut d = desc(1, 1);
        d.ram[0].size = 0;
        assert!(is_invalid(&d), "empty range");

        let mut d = desc(1, 1);
        d.ram[0] = MemoryRange {
            base: u64::MAX - 10,
            size: 100,
        };
        assert!(is_invalid(&d), "wrapping range");

        let mut d = desc(1, 1);
        d.ram[0].size = layout::MMIO_HOLE_START + 1;
        assert!(is_invalid(&d), "RAM in the MMIO hole");

        let mut d = desc(1, 1);
        d.ram.push(MemoryRange {
            base: 1 << 29,
            size: 1 << 20,
        });
        assert!(is_invalid(&d), "overlapping RAM");

        let mut d = desc(1, 1);
        d.hotplug_memory = Some(MemoryRange {
            base: 1 << 29,
            size: 1 << 30,
        });
        d.hotplug_slots = 1;
        assert!(is_invalid(&d), "hotplug region over RAM");

        let mut d = desc(1, 1);
        d.hotplug_memory = Some(MemoryRange {
            base: layout::MMIO_HOLE_START - (1 << 20),
            size: 2 << 20,
        });
        d.hotplug_slots = 1;
        assert!(is_invalid(&d), "hotplug region in the MMIO hole");
    }

    #[test]
    fn slots_iff_hotplug_region() {
        let region = MemoryRange {
            base: layout::MMIO_HOLE_END,
            size: 1 << 30,
        };
        let mut d = desc(1, 1);
        d.hotplug_slots = 1;
        assert!(is_invalid(&d), "slots without a region");
        d.hotplug_memory = Some(region);
        assert_eq!(d.validate(), Ok(()));
        d.hotplug_slots = 0;
        assert!(is_invalid(&d), "region without slots");
        d.hotplug_slots = MAX_HOTPLUG_SLOTS + 1;
        assert!(is_invalid(&d), "too many slots");
    }
}
