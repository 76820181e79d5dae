//! The memory hotplug AML executed by `acpiexec`: `_STA`, `_CRS` (also decoded by ACPICA's
//! resource manager, which Linux's `acpi_walk_resources` uses), `_PXM`, `_OST`, `_EJ0`,
//! `MSCN` and the GED's `_EVT`, with a helper SSDT that plays the device by writing the
//! registers (acpiexec backs SystemMemory regions with plain memory).
//!
//! Needs `iasl` and `acpiexec` (Debian `acpica-tools`); skipped without them unless
//! `PLUGVM_REQUIRE_ACPICA=1` is set.

mod common;

use acpi::build_tables;
use common::{
    acpiexec, compile_helper, desc, have, notifies, returned_buffer, returned_integer, run, workdir,
};

/// Slot counts executed (the largest with few CPUs: the CPU test covers CPUs).
const SLOTS: &[u32] = &[1, 8, 64];

const HELPER_ASL: &str = r#"
DefinitionBlock ("", "SSDT", 2, "PLUGVM", "MEMTEST", 1)
{
    External (\_SB.MHPC.MSEL, FieldUnitObj)
    External (\_SB.MHPC.MBAL, FieldUnitObj)
    External (\_SB.MHPC.MBAH, FieldUnitObj)
    External (\_SB.MHPC.MLNL, FieldUnitObj)
    External (\_SB.MHPC.MLNH, FieldUnitObj)
    External (\_SB.MHPC.MPXM, FieldUnitObj)
    External (\_SB.MHPC.MPEN, FieldUnitObj)
    External (\_SB.MHPC.MINS, FieldUnitObj)
    External (\_SB.MHPC.MRMV, FieldUnitObj)
    External (\_SB.MHPC.MOEV, FieldUnitObj)
    External (\_SB.MHPC.MOSS, FieldUnitObj)
    External (\_SB.MHPC.MNXT, FieldUnitObj)
    External (\_SB.MHPC.MSCN, MethodObj)
    External (\_SB.GED.GDAT, FieldUnitObj)
    External (\_SB.GED._EVT, MethodObj)
    Method (TRNG, 4, NotSerialized)
    {
        \_SB.MHPC.MBAL = Arg0
        \_SB.MHPC.MBAH = Arg1
        \_SB.MHPC.MLNL = Arg2
        \_SB.MHPC.MLNH = Arg3
        \_SB.MHPC.MPEN = One
    }
    Method (TPXM, 1, NotSerialized)
    {
        \_SB.MHPC.MPXM = Arg0
    }
    Method (TSEL, 0, NotSerialized)
    {
        Return (\_SB.MHPC.MSEL)
    }
    Method (TOST, 0, NotSerialized)
    {
        Return (((\_SB.MHPC.MOEV << 0x10) | \_SB.MHPC.MOSS))
    }
    Method (TINS, 1, NotSerialized)
    {
        \_SB.MHPC.MNXT = Arg0
        \_SB.MHPC.MINS = One
        \_SB.MHPC.MSCN ()
    }
    Method (TRMV, 1, NotSerialized)
    {
        \_SB.MHPC.MNXT = Arg0
        \_SB.MHPC.MRMV = One
        \_SB.MHPC.MSCN ()
    }
    Method (TNON, 1, NotSerialized)
    {
        \_SB.MHPC.MNXT = Arg0
        \_SB.MHPC.MPEN = Zero
        \_SB.MHPC.MSCN ()
    }
    Method (TGED, 2, NotSerialized)
    {
        \_SB.GED.GDAT = Arg0
        \_SB.MHPC.MNXT = Arg1
        \_SB.MHPC.MINS = One
        \_SB.GED._EVT (0x05)
    }
}
"#;

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
        compile_helper(&dir, "memhelper", HELPER_ASL);

        let last = format!("M{slots:03X}");
        let bound = 2 * slots as usize;
        let cmds = [
            format!("\\_SB.MHPC.{last}._STA"),  // 0: memory reads 0: absent
            "TSEL".to_string(),                 // 1: _STA selected the slot
            "\\_SB.MHPC.M001._CRS".to_string(), // 2: empty slot: min = max = 0
            "TRNG 0x40000000 1 0x40000000 0".to_string(), // 3: 1 GiB at 5 GiB, enabled
            format!("\\_SB.MHPC.{last}._STA"),  // 4: present
            format!("\\_SB.MHPC.{last}._CRS"),  // 5
            "TSEL".to_string(),                 // 6: _CRS selected the slot
            "TRNG 0 2 0 1".to_string(),         // 7: 4 GiB at 8 GiB (high halves)
            "\\_SB.MHPC.M001._CRS".to_string(), // 8
            "TPXM 3".to_string(),               // 9
            "\\_SB.MHPC.M001._PXM".to_string(), // 10
            format!("\\_SB.MHPC.{last}._OST 3 0x84 (00)"), // 11: eject in progress
            "TOST".to_string(),                 // 12
            "TSEL".to_string(),                 // 13: _OST selected the slot
            "\\_SB.MHPC.M001._EJ0 1".to_string(), // 14
            "\\_SB.MHPC.M001._STA".to_string(), // 15: eject wrote zeros over MPEN
            "TINS 0xFFFFFFFF".to_string(),      // 16: NO_EVENT: nothing
            "TNON 1".to_string(),               // 17: no flag pending: break
            "TGED 1 1".to_string(),             // 18: CPU bit only: no memory scan
            "TINS 1".to_string(),               // 19: insert on slot 1
            format!("TRMV {slots}"),            // 20: remove on the last slot
            "TGED 2 1".to_string(),             // 21: memory bit -> scan
            "TGED 3 1".to_string(),             // 22: both bits -> both scans
        ];
        let cmd_refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        let out = acpiexec(&dir, &["DSDT.dat", "memhelper.aml"], &cmd_refs);

        assert_eq!(returned_integer(&out[0]), 0);
        assert_eq!(returned_integer(&out[1]), u64::from(slots));
        assert_eq!(crs_range(&out[2]), (0, 0, 0));
        assert_eq!(returned_integer(&out[4]), 0xf);
        assert_eq!(crs_range(&out[5]), (5 << 30, (6 << 30) - 1, 1 << 30));
        assert_eq!(returned_integer(&out[6]), u64::from(slots));
        assert_eq!(crs_range(&out[8]), (8 << 30, (12 << 30) - 1, 4 << 30));
        assert_eq!(returned_integer(&out[10]), 3);
        assert_eq!(returned_integer(&out[12]), (3 << 16) | 0x84);
        assert_eq!(returned_integer(&out[13]), u64::from(slots));
        assert_eq!(returned_integer(&out[15]), 0);
        for quiet in [16, 17, 18] {
            assert_eq!(notifies(&out[quiet]), vec![], "command {quiet}");
        }
        // acpiexec's memory never clears the flag, so the scan runs to its bound.
        let m001_insert = vec![("M001".to_string(), 1); bound];
        assert_eq!(notifies(&out[19]), m001_insert);
        assert_eq!(notifies(&out[20]), vec![(last.clone(), 3); bound]);
        assert_eq!(notifies(&out[21]), m001_insert);
        // The CPU scan of command 22 finds the CPU registers all zero and stops at once.
        assert_eq!(notifies(&out[22]), m001_insert);
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
    compile_helper(&dir, "memhelper", HELPER_ASL);
    let batch = "execute TRNG 0x40000000 1 0 1; resources \\_SB.MHPC.M008";
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
