//! The memory hotplug AML executed by `acpiexec`: `_STA`, `_CRS` (also decoded by ACPICA's
//! resource manager, which Linux's `acpi_walk_resources` uses), `_PXM`, `_OST`, `_EJ0`,
//! `MSCN` and the GED's `_EVT`, with a helper SSDT that plays the VMM by writing the status
//! page and reads back the registers (acpiexec backs SystemMemory regions with plain memory).
//!
//! Needs `iasl` and `acpiexec` (Debian `acpica-tools`); skipped without them unless
//! `PLUGVM_REQUIRE_ACPICA=1` is set.

mod common;

use acpi::build_tables;
use acpi::layout::status_page;
use common::{
    acpiexec, compile_helper, desc, have, notifies, returned_buffer, returned_integer, run, workdir,
};

/// Slot counts executed (the largest with few CPUs: the CPU test covers CPUs).
const SLOTS: &[u32] = &[1, 8, 64];

/// The helper SSDT for a machine with `slots` slots: it plays the VMM by writing the status
/// page (slot 1's and the last slot's entries, the event word) and reads back what the AML
/// wrote to the registers.
fn helper_asl(slots: u32) -> String {
    let insert = status_page::EVENT_INSERT;
    let remove = status_page::EVENT_REMOVE;
    let present = status_page::STA_PRESENT;
    let last = format!("{slots:03X}");
    let mut externals = std::collections::BTreeSet::new();
    for name in [
        "MEVT", "MAKI", "MAKR", "MEJR", "MOSR", "B001", "L001", "P001", "S001",
    ] {
        externals.insert(name.to_string());
    }
    for prefix in ['B', 'L', 'S'] {
        externals.insert(format!("{prefix}{last}"));
    }
    let externals: String = externals
        .iter()
        .map(|n| format!("    External (\\_SB.MHPC.{n}, FieldUnitObj)\n"))
        .collect();
    format!(
        r#"
DefinitionBlock ("", "SSDT", 2, "PLUGVM", "MEMTEST", 1)
{{
{externals}    External (\_SB.MHPC.MSCN, MethodObj)
    External (\_SB.GED._EVT, MethodObj)
    Method (TRNG, 2, NotSerialized)
    {{
        \_SB.MHPC.B{last} = Arg0
        \_SB.MHPC.L{last} = Arg1
        \_SB.MHPC.S{last} = {present}
    }}
    Method (TRN1, 2, NotSerialized)
    {{
        \_SB.MHPC.B001 = Arg0
        \_SB.MHPC.L001 = Arg1
        \_SB.MHPC.S001 = {present}
    }}
    Method (TPXM, 1, NotSerialized)
    {{
        \_SB.MHPC.P001 = Arg0
    }}
    Method (TOST, 0, NotSerialized)
    {{
        Return (\_SB.MHPC.MOSR)
    }}
    Method (TEJR, 0, NotSerialized)
    {{
        Return (\_SB.MHPC.MEJR)
    }}
    Method (TINS, 1, NotSerialized)
    {{
        \_SB.MHPC.MEVT = (Arg0 | {insert})
        \_SB.MHPC.MSCN ()
    }}
    Method (TRMV, 1, NotSerialized)
    {{
        \_SB.MHPC.MEVT = (Arg0 | {remove})
        \_SB.MHPC.MSCN ()
    }}
    Method (TEVT, 1, NotSerialized)
    {{
        \_SB.MHPC.MEVT = Arg0
        \_SB.MHPC.MSCN ()
    }}
    Method (TGED, 1, NotSerialized)
    {{
        \_SB.MHPC.MEVT = Arg0
        \_SB.GED._EVT (0x05)
    }}
}}
"#
    )
}

/// (min, max, length) of the QWordMemory descriptor `_CRS` returned.
fn crs_range(section: &str) -> (u64, u64, u64) {
    let b = returned_buffer(section);
    assert_eq!(b.len(), 48, "{b:x?}");
    assert_eq!(&b[..6], &[0x8a, 0x2b, 0x00, 0x00, 0x0d, 0x03], "{b:x?}");
    assert_eq!(&b[46..], &[0x79, 0x00], "end tag");
    let q = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    (q(14), q(22), q(38))
}

#[test]
fn acpiexec_runs_the_memory_hotplug_methods() {
    if !have("iasl") || !have("acpiexec") {
        return;
    }
    for &slots in SLOTS {
        let tables = build_tables(&desc(2, 8, slots)).unwrap();
        let dir = workdir(&format!("memexec-{slots}"));
        tables.write_to_dir(&dir).unwrap();
        compile_helper(&dir, "memhelper", &helper_asl(slots));

        let last = format!("M{slots:03X}");
        let bound = 2 * slots as usize;
        let cmds = [
            format!("\\_SB.MHPC.{last}._STA"),  // 0: the page reads 0: absent
            "\\_SB.MHPC.M001._CRS".to_string(), // 1: empty slot: min = max = 0
            "TRNG 0x140000000 0x40000000".to_string(), // 2: 1 GiB at 5 GiB, present
            format!("\\_SB.MHPC.{last}._STA"),  // 3: present
            format!("\\_SB.MHPC.{last}._CRS"),  // 4
            "TRN1 0x200000000 0x100000000".to_string(), // 5: 4 GiB at 8 GiB
            "\\_SB.MHPC.M001._CRS".to_string(), // 6
            "TPXM 3".to_string(),               // 7
            "\\_SB.MHPC.M001._PXM".to_string(), // 8
            format!("\\_SB.MHPC.{last}._OST 3 0x84 (00)"), // 9: eject in progress
            "TOST".to_string(),                 // 10: one 64-bit value
            "\\_SB.MHPC.M001._EJ0 1".to_string(), // 11
            "TEJR".to_string(),                 // 12: the eject names slot 1
            "TEVT 0xFFFFFFFF".to_string(),      // 13: NO_EVENT: nothing
            "TEVT 1".to_string(),               // 14: no flag pending: break
            "TGED 0xFFFFFFFF".to_string(),      // 15: GED, nothing pending: no notify
            "TINS 1".to_string(),               // 16: insert on slot 1
            format!("TRMV {slots}"),            // 17: remove on the last slot
            "TGED 0x10001".to_string(),         // 18: GED, an insert pending -> the scan
            "TGED 0x10001".to_string(),         // 19: again (both scans run every time)
        ];
        let cmd_refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        let out = acpiexec(&dir, &["DSDT.dat", "memhelper.aml"], &cmd_refs);

        assert_eq!(returned_integer(&out[0]), 0);
        assert_eq!(crs_range(&out[1]), (0, 0, 0));
        assert_eq!(
            returned_integer(&out[3]),
            u64::from(status_page::STA_PRESENT)
        );
        assert_eq!(crs_range(&out[4]), (5 << 30, (6 << 30) - 1, 1 << 30));
        assert_eq!(crs_range(&out[6]), (8 << 30, (12 << 30) - 1, 4 << 30));
        assert_eq!(returned_integer(&out[8]), 3);
        assert_eq!(
            returned_integer(&out[10]),
            u64::from(slots) | 3 << 16 | 0x84 << 32
        );
        assert_eq!(returned_integer(&out[12]), 1);
        for quiet in [13, 14, 15] {
            assert_eq!(notifies(&out[quiet]), vec![], "command {quiet}");
        }
        // acpiexec's memory is not the VMM: the event word never clears, so the scan runs to
        // its bound.
        let m001_insert = vec![("M001".to_string(), 1); bound];
        assert_eq!(notifies(&out[16]), m001_insert);
        assert_eq!(notifies(&out[17]), vec![(last.clone(), 3); bound]);
        assert_eq!(notifies(&out[18]), m001_insert);
        // The CPU scan finds an all-zero event word (UID 0, no flag) and stops.
        assert_eq!(notifies(&out[19]), m001_insert);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `_CRS` as Linux sees it: ACPICA's resource manager (`acpi_walk_resources` in Linux,
/// acpiexec's `resources` command here) decodes one 64-bit memory range consumed by the
/// device, which is what `acpi_memory_get_resource` takes.
#[test]
fn acpica_decodes_crs_as_a_memory_range() {
    if !have("iasl") || !have("acpiexec") {
        return;
    }
    let tables = build_tables(&desc(1, 1, 8)).unwrap();
    let dir = workdir("memres");
    tables.write_to_dir(&dir).unwrap();
    compile_helper(&dir, "memhelper", &helper_asl(8));
    let batch = "execute TRNG 0x140000000 0x100000000; resources \\_SB.MHPC.M008";
    let (out, text) = run(
        &dir,
        "acpiexec",
        &["-b", batch, "DSDT.dat", "memhelper.aml"],
    );
    assert!(out.status.success(), "{text}");
    let decoded = text
        .split("[00] 64-Bit QWORD Address Space Resource")
        .nth(1)
        .unwrap_or_else(|| panic!("no QWORD resource:\n{text}"));
    let decoded = decoded.split("[01] EndTag Resource").next().unwrap();
    let field = |name: &str| -> String {
        let line = decoded
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name}:\n{decoded}"));
        line.split(" : ").nth(1).unwrap().trim().to_string()
    };
    assert_eq!(field("Resource Type"), "Memory Range");
    assert_eq!(field("Consumer/Producer"), "ResourceConsumer");
    assert_eq!(field("Write Protect"), "ReadWrite");
    assert_eq!(field("Caching"), "Cacheable");
    assert_eq!(field("Range Type"), "AddressRangeMemory");
    assert_eq!(field("Address Minimum"), "0000000140000000");
    assert_eq!(field("Address Maximum"), "000000023FFFFFFF");
    assert_eq!(field("Address Length"), "0000000100000000");
    assert!(text.contains("[01] EndTag Resource"), "{text}");
    // The only complaint: acpiexec's `resources` also tries _SRS, which we do not have.
    for bad in ["ACPI Error", "ACPI Warning", "ACPI Exception"] {
        assert!(!text.contains(bad), "{bad}:\n{text}");
    }
    let ae: Vec<&str> = text.lines().filter(|l| l.contains("AE_")).collect();
    assert_eq!(
        ae,
        vec!["AcpiSetCurrentResources failed: AE_NOT_FOUND"],
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
