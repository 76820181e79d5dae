//! Shared test helpers and whole-table-set tests.

use crate::*;

pub(crate) fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub(crate) fn desc(boot_cpus: u32, max_cpus: u32) -> MachineDescription {
    MachineDescription {
        boot_cpus,
        max_cpus,
        ram: vec![MemoryRange {
            base: 0,
            size: 1 << 30,
        }],
        hotplug_memory: None,
        hotplug_slots: 0,
    }
}

pub(crate) fn desc_with_hotplug_memory(boot_cpus: u32, max_cpus: u32) -> MachineDescription {
    MachineDescription {
        boot_cpus,
        max_cpus,
        ram: vec![
            MemoryRange {
                base: 0,
                size: layout::MMIO_HOLE_START,
            },
            MemoryRange {
                base: layout::MMIO_HOLE_END,
                size: 1 << 30,
            },
        ],
        hotplug_memory: Some(MemoryRange {
            base: layout::MMIO_HOLE_END + (1 << 30),
            size: 8 << 30,
        }),
        hotplug_slots: 8,
    }
}

/// Number of non-overlapping occurrences of `needle` in `hay`.
pub(crate) fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn check_set(t: &AcpiTables, d: &MachineDescription) {
    assert_eq!(t.rsdp_address, layout::RSDP_ADDR);
    let names: Vec<&str> = t.tables.iter().map(|t| t.name.as_str()).collect();
    let mut want = vec!["RSDP", "XSDT", "FACP", "APIC", "DSDT"];
    if d.hotplug_memory.is_some() {
        want.push("SRAT");
    }
    assert_eq!(names, want);

    // Ascending, aligned, non-overlapping, inside the table area; checksums right.
    let mut end = layout::RSDP_ADDR;
    for tab in &t.tables {
        assert!(tab.address >= end, "{} overlaps", tab.name);
        assert_eq!(tab.address % 16, 0, "{} alignment", tab.name);
        end = tab.address + tab.bytes.len() as u64;
        assert!(end <= layout::ACPI_TABLES_END);
        assert_eq!(sum(&tab.bytes), 0, "{} checksum", tab.name);
        if tab.name != "RSDP" {
            assert_eq!(&tab.bytes[0..4], tab.name.as_bytes());
            assert_eq!(
                le32(&tab.bytes, 4) as usize,
                tab.bytes.len(),
                "{} length",
                tab.name
            );
        }
    }
    assert_eq!(t.end_address(), end);

    // Pointers: RSDP -> XSDT -> (FADT, MADT, SRAT); FADT -> DSDT.
    let addr = |n: &str| t.table(n).unwrap().address;
    let rsdp = &t.table("RSDP").unwrap().bytes;
    assert_eq!(sum(&rsdp[..20]), 0);
    assert_eq!(le64(rsdp, 24), addr("XSDT"));
    let xsdt = &t.table("XSDT").unwrap().bytes;
    let listed: Vec<u64> = (36..xsdt.len()).step_by(8).map(|o| le64(xsdt, o)).collect();
    let mut want_listed = vec![addr("FACP"), addr("APIC")];
    if d.hotplug_memory.is_some() {
        want_listed.push(addr("SRAT"));
    }
    assert_eq!(listed, want_listed);
    let fadt = &t.table("FACP").unwrap().bytes;
    assert_eq!(le64(fadt, fadt::offsets::X_DSDT), addr("DSDT"));

    // One processor device per possible CPU.
    let dsdt = &t.table("DSDT").unwrap().bytes;
    assert_eq!(count(dsdt, b"ACPI0007\0"), d.max_cpus as usize);
    for cpu in 0..d.max_cpus {
        let name = dsdt::cpu_device_name(cpu).unwrap();
        // "Device (Cxxx)" opens with ExtOp 0x82, a package length, then the name.
        let opened = dsdt
            .windows(8)
            .any(|w| w[0] == 0x5b && w[1] == 0x82 && &w[4..8] == name.as_bytes());
        assert!(opened, "no Device ({name})");
    }

    // One memory device per hotplug slot, and the memory scan wired to the GED, only with
    // hotplug slots. EISAID("PNP0C80") is DWordConst 0x800cd041.
    assert_eq!(
        count(dsdt, &[0x0c, 0x41, 0xd0, 0x0c, 0x80]),
        d.hotplug_slots as usize
    );
    for slot in 1..=d.hotplug_slots {
        let name = dsdt::slot_device_name(slot).unwrap();
        let opened = dsdt
            .windows(8)
            .any(|w| w[0] == 0x5b && w[1] == 0x82 && &w[4..8] == name.as_bytes());
        assert!(opened, "no Device ({name})");
    }
    assert_eq!(count(dsdt, b"MHPCMSCN") > 0, d.hotplug_slots > 0);

    // One power button, EISAID("PNP0C0C") = DWordConst 0x0c0cd041.
    assert_eq!(count(dsdt, &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]), 1);
}

#[test]
fn builds_consistent_table_sets() {
    for (boot, max) in [(1, 1), (2, 8), (4, 64), (1, 300)] {
        let d = desc(boot, max);
        check_set(&build_tables(&d).unwrap(), &d);
    }
    for slots in [1, 8, MAX_HOTPLUG_SLOTS] {
        let mut d = desc_with_hotplug_memory(2, 8);
        d.hotplug_slots = slots;
        check_set(&build_tables(&d).unwrap(), &d);
    }
}

#[test]
fn largest_configuration_fits() {
    let mut d = desc_with_hotplug_memory(1, MAX_CPUS);
    d.hotplug_slots = MAX_HOTPLUG_SLOTS;
    let t = build_tables(&d).unwrap();
    check_set(&t, &d);
    eprintln!(
        "{MAX_CPUS} CPUs, {MAX_HOTPLUG_SLOTS} slots: {} bytes of {}",
        t.end_address() - layout::RSDP_ADDR,
        layout::ACPI_TABLES_END - layout::RSDP_ADDR
    );
}

#[test]
fn invalid_descriptions_error_out() {
    assert!(matches!(
        build_tables(&desc(0, 1)),
        Err(Error::InvalidDescription(_))
    ));
    assert!(matches!(
        build_tables(&desc(1, MAX_CPUS + 1)),
        Err(Error::TooManyCpus { .. })
    ));
    let mut d = desc(1, 1);
    d.hotplug_slots = 1;
    assert!(matches!(
        build_tables(&d),
        Err(Error::InvalidDescription(_))
    ));
    let mut d = desc_with_hotplug_memory(1, 1);
    d.hotplug_slots = MAX_HOTPLUG_SLOTS + 1;
    assert!(matches!(
        build_tables(&d),
        Err(Error::InvalidDescription(_))
    ));
}

#[test]
fn write_to_dir_dumps_every_table() {
    let dir = std::env::temp_dir().join(format!("plugvm-acpi-dump-{}", std::process::id()));
    let t = build_tables(&desc(2, 8)).unwrap();
    t.write_to_dir(&dir).unwrap();
    for tab in &t.tables {
        let written = std::fs::read(dir.join(format!("{}.dat", tab.name))).unwrap();
        assert_eq!(written, tab.bytes);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
