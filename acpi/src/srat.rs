//! The SRAT, built when the machine has a hotplug memory region: one proximity domain
//! holding every possible CPU, the boot RAM, and the hotplug region marked hotpluggable.
//!
//! Linux uses the hotpluggable range to size its memory map (`max_possible_pfn`) at boot,
//! so that memory added later is addressable; QEMU builds an SRAT for the same reason
//! whenever memory hotplug is enabled.

use crate::machine::{MachineDescription, MemoryRange};
use crate::madt::FIRST_X2APIC_ID;
use crate::sdt::{self, Put};

/// SRAT revision (ACPI 3.0+ layout).
const SRAT_REVISION: u8 = 3;
/// The only proximity domain.
const DOMAIN: u32 = 0;

const TYPE_PROCESSOR_AFFINITY: u8 = 0;
const TYPE_MEMORY_AFFINITY: u8 = 1;
const TYPE_X2APIC_AFFINITY: u8 = 2;

/// Affinity flag: the entry is in use. Set for every possible CPU, present or not.
const AFFINITY_ENABLED: u32 = 1 << 0;
/// Memory affinity flag: the range may be hot-added or removed.
const MEMORY_HOTPLUGGABLE: u32 = 1 << 1;

fn memory_affinity(b: &mut Vec<u8>, range: &MemoryRange, flags: u32) {
    b.u8(TYPE_MEMORY_AFFINITY)
        .u8(40)
        .u32(DOMAIN)
        .u16(0)
        .u64(range.base)
        .u64(range.size)
        .u32(0)
        .u32(flags)
        .u64(0);
}

fn processor_affinity(b: &mut Vec<u8>, cpu: u32) {
    match u8::try_from(cpu) {
        Ok(id) if cpu < FIRST_X2APIC_ID => {
            let [d0, d1, d2, d3] = DOMAIN.to_le_bytes();
            b.u8(TYPE_PROCESSOR_AFFINITY)
                .u8(16)
                .u8(d0)
                .u8(id)
                .u32(AFFINITY_ENABLED)
                .u8(0) // local SAPIC EID
                .u8(d1)
                .u8(d2)
                .u8(d3)
                .u32(0); // clock domain
        }
        _ => {
            b.u8(TYPE_X2APIC_AFFINITY)
                .u8(24)
                .u16(0)
                .u32(DOMAIN)
                .u32(cpu)
                .u32(AFFINITY_ENABLED)
                .u32(0) // clock domain
                .u32(0);
        }
    }
}

/// The SRAT for `desc` (already validated), or `None` without a hotplug region.
pub(crate) fn build(desc: &MachineDescription) -> Option<Vec<u8>> {
    let hotplug = desc.hotplug_memory.as_ref()?;
    let mut b = Vec::with_capacity(12 + 24 * desc.max_cpus as usize + 40 * (desc.ram.len() + 1));
    // Reserved: 1 for backward compatibility, then 8 reserved bytes.
    b.u32(1).u64(0);
    for cpu in 0..desc.max_cpus {
        processor_affinity(&mut b, cpu);
    }
    for range in &desc.ram {
        memory_affinity(&mut b, range, AFFINITY_ENABLED);
    }
    memory_affinity(&mut b, hotplug, AFFINITY_ENABLED | MEMORY_HOTPLUGGABLE);
    Some(sdt::table(*b"SRAT", SRAT_REVISION, &b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{desc_with_hotplug_memory, le32, le64, sum};

    #[test]
    fn no_srat_without_hotplug_memory() {
        assert!(build(&crate::tests::desc(2, 8)).is_none());
    }

    #[test]
    fn cpus_ram_and_hotpluggable_region() {
        let d = desc_with_hotplug_memory(2, 300);
        let s = build(&d).unwrap();
        assert_eq!(&s[0..4], b"SRAT");
        assert_eq!(sum(&s), 0);
        let mut at = 48;
        let (mut cpus, mut mem) = (Vec::new(), Vec::new());
        while at < s.len() {
            let e = &s[at..at + s[at + 1] as usize];
            match e[0] {
                TYPE_PROCESSOR_AFFINITY => cpus.push((u32::from(e[3]), le32(e, 4))),
                TYPE_X2APIC_AFFINITY => cpus.push((le32(e, 8), le32(e, 12))),
                TYPE_MEMORY_AFFINITY => mem.push((le64(e, 8), le64(e, 16), le32(e, 28))),
                t => panic!("unexpected type {t}"),
            }
            at += e.len();
        }
        assert_eq!(at, s.len());
        assert_eq!(cpus, (0..300).map(|c| (c, 1)).collect::<Vec<_>>());
        let hp = d.hotplug_memory.unwrap();
        let mut want: Vec<_> = d.ram.iter().map(|r| (r.base, r.size, 1)).collect();
        want.push((hp.base, hp.size, 3));
        assert_eq!(mem, want);
    }
}
