//! The MADT (revision 5): local APICs for every possible CPU, the IOAPIC, the PIT
//! interrupt source override and the LINT1 NMI.
//!
//! acpi_tables' MADT type writes revision 1 with no x2APIC, override or NMI structures,
//! so the table is built here. With revision >= 5 Linux 6.1 counts a CPU that is not
//! enabled as hotpluggable only if its Online Capable flag is set
//! (`smpboot: Allowing M CPUs, M-N hotplug CPUs`).

use crate::layout;
use crate::machine::MachineDescription;
use crate::sdt::{self, Put};

/// MADT revision (ACPI 6.3+: the Online Capable flag exists).
pub(crate) const MADT_REVISION: u8 = 5;
/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel irqchip does), which
/// the OS must mask when it uses the APICs.
pub(crate) const PCAT_COMPAT: u32 = 1 << 0;

/// Local APIC flag: the processor is usable now.
pub(crate) const LAPIC_ENABLED: u32 = 1 << 0;
/// Local APIC flag: the processor can be enabled at run time (hotplug). Must be clear
/// when [`LAPIC_ENABLED`] is set.
pub(crate) const LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;

pub(crate) const TYPE_LOCAL_APIC: u8 = 0;
pub(crate) const TYPE_IO_APIC: u8 = 1;
pub(crate) const TYPE_INTERRUPT_OVERRIDE: u8 = 2;
pub(crate) const TYPE_LOCAL_APIC_NMI: u8 = 4;
pub(crate) const TYPE_LOCAL_X2APIC: u8 = 9;
pub(crate) const TYPE_LOCAL_X2APIC_NMI: u8 = 10;

/// First APIC id that needs an x2APIC structure: xAPIC ids are 8 bits and 0xff is the
/// broadcast id, also used as the "all processors" UID in the NMI structure.
pub(crate) const FIRST_X2APIC_ID: u32 = 0xff;

/// ISA IRQ of the PIT.
const PIT_IRQ: u8 = 0;
/// GSI the PIT is wired to: KVM's default routing sends IRQ0 to IOAPIC pin 2, as on PCs.
pub(crate) const PIT_GSI: u32 = 2;
/// The local APIC input the NMI is connected to.
const NMI_LINT: u8 = 1;
/// Override/NMI flags: polarity and trigger conform to the bus (ISA: edge, active high).
const MPS_INTI_CONFORMS: u16 = 0;

/// The processor structure for `cpu` (UID = APIC id = index) with `flags`: type 0 for
/// xAPIC ids, type 9 (x2APIC) from [`FIRST_X2APIC_ID`]. Also used for `_MAT`.
pub(crate) fn processor_entry(cpu: u32, flags: u32) -> Vec<u8> {
    let mut e = Vec::with_capacity(16);
    match u8::try_from(cpu) {
        Ok(id) if cpu < FIRST_X2APIC_ID => {
            e.u8(TYPE_LOCAL_APIC).u8(8).u8(id).u8(id).u32(flags);
        }
        _ => {
            e.u8(TYPE_LOCAL_X2APIC)
                .u8(16)
                .u16(0)
                .u32(cpu)
                .u32(flags)
                .u32(cpu);
        }
    }
    e
}

/// Flags of `cpu`'s MADT entry: boot CPUs enabled, the others online capable.
pub(crate) fn processor_flags(desc: &MachineDescription, cpu: u32) -> u32 {
    if cpu < desc.boot_cpus {
        LAPIC_ENABLED
    } else {
        LAPIC_ONLINE_CAPABLE
    }
}

/// Builds the MADT for `desc` (already validated).
pub(crate) fn build(desc: &MachineDescription) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 16 * desc.max_cpus as usize + 64);
    b.u32(layout::LAPIC_ADDR).u32(PCAT_COMPAT);
    for cpu in 0..desc.max_cpus {
        b.extend_from_slice(&processor_entry(cpu, processor_flags(desc, cpu)));
    }
    // IOAPIC id 0, GSIs from 0.
    b.u8(TYPE_IO_APIC)
        .u8(12)
        .u8(0)
        .u8(0)
        .u32(layout::IOAPIC_ADDR)
        .u32(0);
    // Bus 0 (ISA), IRQ0 -> GSI 2.
    b.u8(TYPE_INTERRUPT_OVERRIDE)
        .u8(10)
        .u8(0)
        .u8(PIT_IRQ)
        .u32(PIT_GSI)
        .u16(MPS_INTI_CONFORMS);
    // LINT1 is the NMI input of every processor (UID 0xff = all).
    b.u8(TYPE_LOCAL_APIC_NMI)
        .u8(6)
        .u8(0xff)
        .u16(MPS_INTI_CONFORMS)
        .u8(NMI_LINT);
    if desc.max_cpus > FIRST_X2APIC_ID {
        // The xAPIC NMI structure only reaches UIDs up to 254; x2APIC processors need
        // their own (UID 0xffffffff = all).
        b.u8(TYPE_LOCAL_X2APIC_NMI)
            .u8(12)
            .u16(MPS_INTI_CONFORMS)
            .u32(u32::MAX)
            .u8(NMI_LINT)
            .u8(0)
            .u16(0);
    }
    sdt::table(*b"APIC", MADT_REVISION, &b)
}

/// One decoded MADT structure, for tests.
#[cfg(test)]
pub(crate) fn structures(madt: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 44;
    while at < madt.len() {
        let len = madt[at + 1] as usize;
        assert!(len >= 2, "structure at {at} has length {len}");
        out.push(&madt[at..at + len]);
        at += len;
    }
    assert_eq!(at, madt.len(), "structures overrun the table");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{desc, le16, le32, sum};

    /// (uid, apic id, flags) of every processor structure.
    fn processors(madt: &[u8]) -> Vec<(u32, u32, u32)> {
        structures(madt)
            .into_iter()
            .filter_map(|s| match s[0] {
                TYPE_LOCAL_APIC => Some((u32::from(s[2]), u32::from(s[3]), le32(s, 4))),
                TYPE_LOCAL_X2APIC => Some((le32(s, 12), le32(s, 4), le32(s, 8))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_processor_entry_per_possible_cpu() {
        for (boot, max) in [(1, 1), (2, 8), (4, 64), (1, 300)] {
            let m = build(&desc(boot, max));
            assert_eq!(sum(&m), 0);
            assert_eq!(&m[0..4], b"APIC");
            assert_eq!(m[8], MADT_REVISION);
            assert_eq!(le32(&m, 36), layout::LAPIC_ADDR);
            assert_eq!(le32(&m, 40), PCAT_COMPAT);
            let procs = processors(&m);
            assert_eq!(procs.len(), max as usize);
            for (i, (uid, id, flags)) in procs.into_iter().enumerate() {
                let i = i as u32;
                assert_eq!((uid, id), (i, i));
                let want = if i < boot {
                    LAPIC_ENABLED
                } else {
                    LAPIC_ONLINE_CAPABLE
                };
                assert_eq!(flags, want, "cpu {i}");
            }
        }
    }

    #[test]
    fn x2apic_entries_from_id_255() {
        let m = build(&desc(1, 300));
        let s = structures(&m);
        assert_eq!(s[254][0], TYPE_LOCAL_APIC);
        assert_eq!(s[255][0], TYPE_LOCAL_X2APIC);
        assert_eq!(s[255].len(), 16);
        let x2nmi: Vec<_> = s.iter().filter(|s| s[0] == TYPE_LOCAL_X2APIC_NMI).collect();
        assert_eq!(x2nmi.len(), 1);
        assert_eq!(le32(x2nmi[0], 4), u32::MAX);
        assert_eq!(x2nmi[0][8], 1, "LINT1");
        // No x2APIC structures at all below 255 CPUs.
        let small = build(&desc(4, 64));
        assert!(structures(&small)
            .iter()
            .all(|s| s[0] != TYPE_LOCAL_X2APIC && s[0] != TYPE_LOCAL_X2APIC_NMI));
    }

    #[test]
    fn ioapic_override_and_nmi() {
        let m = build(&desc(2, 8));
        let s = structures(&m);
        let io: Vec<_> = s.iter().filter(|s| s[0] == TYPE_IO_APIC).collect();
        assert_eq!(io.len(), 1);
        assert_eq!(
            (io[0][2], le32(io[0], 4), le32(io[0], 8)),
            (0, layout::IOAPIC_ADDR, 0)
        );
        let iso: Vec<_> = s
            .iter()
            .filter(|s| s[0] == TYPE_INTERRUPT_OVERRIDE)
            .collect();
        assert_eq!(iso.len(), 1);
        assert_eq!(iso[0].len(), 10);
        assert_eq!(
            (iso[0][2], iso[0][3], le32(iso[0], 4)),
            (0, 0, 2),
            "ISA IRQ0 -> GSI 2"
        );
        assert_eq!(le16(iso[0], 8), 0);
        let nmi: Vec<_> = s.iter().filter(|s| s[0] == TYPE_LOCAL_APIC_NMI).collect();
        assert_eq!(nmi.len(), 1);
        assert_eq!((nmi[0][2], le16(nmi[0], 3), nmi[0][5]), (0xff, 0, 1));
    }

    #[test]
    fn mat_entries_are_enabled_processor_structures() {
        assert_eq!(processor_entry(3, LAPIC_ENABLED), [0, 8, 3, 3, 1, 0, 0, 0]);
        assert_eq!(
            processor_entry(256, LAPIC_ENABLED),
            [9, 16, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
        );
    }
}
