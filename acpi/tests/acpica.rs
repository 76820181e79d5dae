//! The tables checked by ACPICA, the reference implementation Linux's ACPI code comes from:
//! `iasl -d` disassembles every table and `iasl` recompiles the result (both without errors
//! or warnings), the DSDT's register fields as iasl reads them are compared with
//! `acpi::layout`, and `acpiexec` runs the CPU hotplug methods (the memory hotplug methods
//! in `acpica_memory.rs`).
//!
//! Needs `iasl` and `acpiexec` (Debian `acpica-tools`). Without them the tests print
//! SKIPPED and pass, unless `PLUGVM_REQUIRE_ACPICA=1` is set.

mod common;

use std::collections::HashMap;
use std::path::Path;

use acpi::layout::{cpu_hotplug, ged, hotplug_registers, memory_hotplug, status_page};
use acpi::{build_tables, AcpiTables, MAX_CPUS, MAX_HOTPLUG_SLOTS};
use common::{
    acpiexec, compile_helper, compile_summary, desc, have, notifies, returned_integer, run, workdir,
};

/// The configurations checked: (boot CPUs, max CPUs, hotplug memory slots; 0 = no hotplug
/// memory region).
const CONFIGS: &[(u32, u32, u32)] = &[
    (1, 1, 0),
    (2, 8, 0),
    (4, 64, 0),
    (2, 8, 1),
    (2, 8, 8),
    (2, 300, 64),
    (1, MAX_CPUS, MAX_HOTPLUG_SLOTS),
];

/// Disassembles and recompiles every table but the RSDP; returns the DSDT source.
fn disassemble_all(dir: &Path, tables: &AcpiTables) -> String {
    for t in tables.tables.iter().filter(|t| t.name != "RSDP") {
        let dat = format!("{}.dat", t.name);
        let (out, text) = run(dir, "iasl", &["-d", &dat]);
        assert!(out.status.success(), "iasl -d {dat} failed:\n{text}");
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("error") && !lower.contains("warning"),
            "iasl -d {dat}:\n{text}"
        );
        let dsl = std::fs::read_to_string(dir.join(format!("{}.dsl", t.name))).unwrap();
        for marker in ["****", "Unknown", "Invalid", "UnknownObj", "External ("] {
            assert!(
                !dsl.contains(marker),
                "{dat}: {marker:?} in disassembly:\n{dsl}"
            );
        }

        let dsl_name = format!("{}.dsl", t.name);
        let out_prefix = format!("re_{}", t.name);
        let (_, text) = run(dir, "iasl", &["-p", &out_prefix, &dsl_name]);
        let summary = compile_summary(&text);
        assert_eq!(
            summary,
            Some((0, 0, 0)),
            "recompiling {dsl_name}: errors, warnings, remarks:\n{text}"
        );
    }
    std::fs::read_to_string(dir.join("DSDT.dsl")).unwrap()
}

/// The RSDP: iasl cannot disassemble a lone RSDP file, so compile one with our field
/// values and compare, checksums included (iasl computes them).
fn check_rsdp(dir: &Path, tables: &AcpiTables) {
    let ours = &tables.tables[0].bytes;
    let xsdt = u64::from_le_bytes(ours[24..32].try_into().unwrap());
    let src = format!(
        "[0008] Signature : \"RSD PTR \"\n\
         [0001] Checksum : 00\n\
         [0006] Oem ID : \"PLUGVM\"\n\
         [0001] Revision : 02\n\
         [0004] RSDT Address : 00000000\n\
         [0004] Length : 00000024\n\
         [0008] XSDT Address : {xsdt:016X}\n\
         [0001] Extended Checksum : 00\n\
         [0003] Reserved : 000000\n"
    );
    std::fs::write(dir.join("rsdp.asl"), src).unwrap();
    let (_, text) = run(dir, "iasl", &["rsdp.asl"]);
    assert_eq!(
        compile_summary(&text).map(|s| (s.0, s.1)),
        Some((0, 0)),
        "{text}"
    );
    let theirs = std::fs::read(dir.join("rsdp.aml")).unwrap();
    assert_eq!(&theirs, ours, "RSDP differs from iasl's");
}

/// Bit offsets of the named units in the `Field (region, ...)` blocks of `dsl`.
fn field_bits(dsl: &str, region: &str) -> HashMap<String, (u64, u64)> {
    let mut units = HashMap::new();
    let mut lines = dsl.lines();
    let opener = format!("Field ({region},");
    while let Some(line) = lines.next() {
        if !line.trim_start().starts_with(&opener) {
            continue;
        }
        let mut bit = 0u64;
        for line in lines.by_ref() {
            let l = line.trim().trim_end_matches(',').trim();
            if l == "{" || l.is_empty() {
                continue;
            }
            if l == "}" {
                break;
            }
            if let Some(off) = l.strip_prefix("Offset (0x") {
                bit = 8 * u64::from_str_radix(off.trim_end_matches(')'), 16).unwrap();
            } else if let Some((name, width)) = l.split_once(',') {
                let width: u64 = width.trim().parse().unwrap();
                if !name.trim().is_empty() {
                    units.insert(name.trim().to_string(), (bit, width));
                }
                bit += width;
            } else {
                panic!("unexpected field line {l:?}");
            }
        }
    }
    units
}

fn region_line(base: u64, size: u64, name: &str) -> String {
    format!(
        "OperationRegion ({name}, SystemMemory, 0x{base:08X}, {})",
        iasl_const(size)
    )
}

/// How iasl prints an integer constant: as wide as the AML constant that holds it.
fn iasl_const(v: u64) -> String {
    match v {
        0..=0xff => format!("0x{v:02X}"),
        0x100..=0xffff => format!("0x{v:04X}"),
        0x1_0000..=0xffff_ffff => format!("0x{v:08X}"),
        _ => format!("0x{v:016X}"),
    }
}

/// One controller's register block and status page window, as iasl decodes them, are the
/// ones in `acpi::layout`: `names` are its (ack insert, ack remove, eject, _OST, event word)
/// fields, `entries` the window's per-device fields with their byte offsets and widths.
fn check_controller(
    dsl: &str,
    (region, mmio_base): (&str, u64),
    (window_region, window, window_size): (&str, u64, u64),
    names: [&str; 5],
    entries: &[(String, u64, u64)],
) {
    use hotplug_registers as r;
    assert!(
        dsl.contains(&region_line(mmio_base, r::MMIO_SIZE, region)),
        "{region}"
    );
    let regs = field_bits(dsl, region);
    let want = [
        (names[0], r::ACK_INSERT * 8, 32),
        (names[1], r::ACK_REMOVE * 8, 32),
        (names[2], r::EJECT * 8, 32),
        (names[3], r::OST * 8, 64),
    ];
    assert_eq!(regs.len(), want.len(), "{regs:?}");
    for (name, at, width) in want {
        assert_eq!(regs.get(name), Some(&(at, width)), "{name}");
    }
    assert!(
        dsl.contains(&region_line(window, window_size, window_region)),
        "{window_region}"
    );
    let page = field_bits(dsl, window_region);
    assert_eq!(page.len(), entries.len() + 1, "{window_region}");
    assert_eq!(page.get(names[4]), Some(&(status_page::EVENT * 8, 32)));
    for (name, at, bytes) in entries {
        assert_eq!(page.get(name), Some(&(at * 8, bytes * 8)), "{name}");
    }
    assert!(dsl.contains(&format!("Local0 != 0x{:08X}", status_page::NO_EVENT)));
}

/// The DSDT's register fields, as iasl decodes them, are the ones in `acpi::layout`.
fn check_layout(dsl: &str, max_cpus: u32, slots: u32) {
    let sta: Vec<(String, u64, u64)> = (0..max_cpus)
        .map(|c| (format!("S{c:03X}"), cpu_hotplug::STA + u64::from(c), 1))
        .collect();
    check_controller(
        dsl,
        ("PRST", cpu_hotplug::MMIO_BASE),
        ("CPGE", cpu_hotplug::WINDOW, cpu_hotplug::WINDOW_SIZE),
        ["CAKI", "CAKR", "CEJR", "COSR", "CEVT"],
        &sta,
    );
    // The GED reads only its window of the status page, and always runs the CPU scan.
    assert!(dsl.contains(&region_line(ged::WINDOW, ged::WINDOW_SIZE, "GDPG")));
    let ged_fields = field_bits(dsl, "GDPG");
    assert_eq!(ged_fields.len(), 1, "{ged_fields:?}");
    assert_eq!(
        ged_fields.get("PBPC"),
        Some(&(ged::POWER_BUTTON_PRESSES * 8, 32))
    );
    let evt = "Method (_EVT, 1, Serialized)  // _EVT: Event\n            {\n                \\_SB.CPUS.CSCN ()";
    assert!(
        dsl.contains(evt),
        "GED _EVT does not start with the CPU scan"
    );
    assert!(dsl.contains(&format!("0x{:08X},", ged::IRQ)));
    check_power_button(dsl);
    check_memory_layout(dsl, slots);
}

/// One PNP0C0C power button, notified (0x80: pressed) by the GED's `_EVT` when the press
/// counter in the status page differs from the one it saw last.
fn check_power_button(dsl: &str) {
    assert_eq!(
        dsl.matches("Name (_HID, EisaId (\"PNP0C0C\")").count(),
        1,
        "PNP0C0C devices"
    );
    assert!(dsl.contains("Device (PWRB)"));
    let notify = "If ((Local0 != PBSN))\n                {\n                    PBSN = Local0\n                    Notify (\\_SB.PWRB, 0x80)";
    assert!(dsl.contains(notify), "GED _EVT does not notify PWRB");
}

/// The memory hotplug controller's region and fields, as iasl decodes them, are the ones in
/// `acpi::layout::memory_hotplug`; the `_CRS` template fields are its min/max/length.
fn check_memory_layout(dsl: &str, slots: u32) {
    use memory_hotplug as m;
    let region = region_line(m::MMIO_BASE, hotplug_registers::MMIO_SIZE, "MHPR");
    let scan = "\\_SB.CPUS.CSCN ()\n                \\_SB.MHPC.MSCN ()";
    if slots == 0 {
        assert!(!dsl.contains(&region) && !dsl.contains("MPGE") && !dsl.contains("MSCN"));
        assert!(!dsl.contains(&format!("0x{:08X},", m::MMIO_BASE)), "MBRD");
        return;
    }
    // MBRD reserves the block.
    assert!(dsl.contains(&format!("0x{:08X},         // Address Base", m::MMIO_BASE)));
    let mut entries = Vec::new();
    for slot in 1..=slots {
        let at = m::slot_entry(slot).unwrap();
        entries.push((format!("B{slot:03X}"), at + m::SLOT_BASE, 8));
        entries.push((format!("L{slot:03X}"), at + m::SLOT_LENGTH, 8));
        entries.push((format!("P{slot:03X}"), at + m::SLOT_PROXIMITY, 4));
        entries.push((format!("S{slot:03X}"), at + m::SLOT_STA, 1));
    }
    check_controller(
        dsl,
        ("MHPR", m::MMIO_BASE),
        ("MPGE", m::WINDOW, m::WINDOW_SIZE),
        ["MAKI", "MAKR", "MEJR", "MOSR", "MEVT"],
        &entries,
    );
    assert!(dsl.contains(scan), "GED _EVT does not call MSCN");
    // iasl names the template's fields by the descriptor fields they cover.
    assert!(dsl.contains(
        "QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite,"
    ));
    for (field, tag) in [("MMIN", "_MIN"), ("MMAX", "_MAX"), ("MLEN", "_LEN")] {
        let create = format!("CreateQWordField (MR64, \\_SB.MHPC._Y00.{tag}, {field})");
        assert!(dsl.contains(&create), "{create}");
    }
    assert_eq!(
        dsl.matches("Name (_HID, EisaId (\"PNP0C80\")").count(),
        slots as usize
    );
    // The last slot's device exists, the one past it does not.
    assert!(dsl.contains(&format!("Device (M{slots:03X})")));
    assert!(!dsl.contains(&format!("Device (M{:03X})", slots + 1)));
}

#[test]
fn iasl_accepts_every_table() {
    if !have("iasl") {
        return;
    }
    for &(boot, max, slots) in CONFIGS {
        let d = desc(boot, max, slots);
        let tables = build_tables(&d).unwrap();
        let dir = workdir(&format!("iasl-{boot}-{max}-{slots}"));
        tables.write_to_dir(&dir).unwrap();
        let dsl = disassemble_all(&dir, &tables);
        check_rsdp(&dir, &tables);
        check_layout(&dsl, max, slots);
        assert_eq!(dsl.matches("\"ACPI0007\"").count(), max as usize);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Test methods loaded beside the DSDT: acpiexec backs SystemMemory regions with plain
/// memory, so these play the VMM by writing the status page before a scan, and read back
/// what the AML wrote to the registers.
fn helper_asl() -> String {
    let insert = status_page::EVENT_INSERT;
    let remove = status_page::EVENT_REMOVE;
    let present = status_page::STA_PRESENT;
    format!(
        r#"
DefinitionBlock ("", "SSDT", 2, "PLUGVM", "HPTEST", 1)
{{
    External (\_SB.CPUS.CEVT, FieldUnitObj)
    External (\_SB.CPUS.S005, FieldUnitObj)
    External (\_SB.CPUS.CAKI, FieldUnitObj)
    External (\_SB.CPUS.CAKR, FieldUnitObj)
    External (\_SB.CPUS.CEJR, FieldUnitObj)
    External (\_SB.CPUS.COSR, FieldUnitObj)
    External (\_SB.CPUS.CSCN, MethodObj)
    External (\_SB.GED.PBPC, FieldUnitObj)
    External (\_SB.GED._EVT, MethodObj)
    Method (TINS, 1, NotSerialized)
    {{
        \_SB.CPUS.CEVT = (Arg0 | {insert})
        \_SB.CPUS.CSCN ()
    }}
    Method (TRMV, 1, NotSerialized)
    {{
        \_SB.CPUS.CEVT = (Arg0 | {remove})
        \_SB.CPUS.CSCN ()
    }}
    Method (TEVT, 1, NotSerialized)
    {{
        \_SB.CPUS.CEVT = Arg0
        \_SB.CPUS.CSCN ()
    }}
    Method (TGED, 2, NotSerialized)
    {{
        \_SB.GED.PBPC = Arg0
        \_SB.CPUS.CEVT = Arg1
        \_SB.GED._EVT (0x05)
    }}
    Method (TPEN, 0, NotSerialized)
    {{
        \_SB.CPUS.S005 = {present}
    }}
    Method (TOST, 0, NotSerialized)
    {{
        Return (\_SB.CPUS.COSR)
    }}
    Method (TEJR, 0, NotSerialized)
    {{
        Return (\_SB.CPUS.CEJR)
    }}
    Method (TAKI, 0, NotSerialized)
    {{
        Return (\_SB.CPUS.CAKI)
    }}
    Method (TAKR, 0, NotSerialized)
    {{
        Return (\_SB.CPUS.CAKR)
    }}
}}
"#
    )
}

#[test]
fn acpiexec_runs_the_hotplug_methods() {
    if !have("iasl") || !have("acpiexec") {
        return;
    }
    // Not the largest configuration: every scan there sends 1024 notifications, one
    // acpiexec thread each (see common::acpiexec).
    for &(boot, max, slots) in CONFIGS.iter().filter(|c| c.1 >= 8 && c.1 <= 300) {
        let tables = build_tables(&desc(boot, max, slots)).unwrap();
        let dir = workdir(&format!("exec-{boot}-{max}-{slots}"));
        tables.write_to_dir(&dir).unwrap();
        compile_helper(&dir, "helper", &helper_asl());

        let last = max - 1;
        let last_name = format!("C{last:03X}");
        let bound = 2 * max as usize;
        let cpu4 = status_page::EVENT_INSERT | 4;
        let none = status_page::NO_EVENT;
        let cmds = [
            format!("\\_SB.CPUS.{last_name}._STA"), // 0: the page reads 0: absent
            "TPEN".to_string(),                     // 1: the VMM marks CPU 5 present
            "\\_SB.CPUS.C005._STA".to_string(),     // 2: now present
            "\\_SB.CPUS.C005._MAT".to_string(),     // 3
            format!("\\_SB.CPUS.{last_name}._MAT"), // 4
            "\\_SB.CPUS.COST 3 0x103 0x84".to_string(), // 5
            "TOST".to_string(),                     // 6: one 64-bit value
            "\\_SB.CPUS.C003._EJ0 0".to_string(),   // 7
            "TEJR".to_string(),                     // 8: the eject names CPU 3
            "TINS 3".to_string(),                   // 9: insert on CPU 3
            "TAKI".to_string(),                     // 10: acknowledged CPU 3
            format!("TRMV {last}"),                 // 11: remove on the last CPU
            "TAKR".to_string(),                     // 12: acknowledged the last CPU
            "TEVT 0xFFFFFFFF".to_string(),          // 13: NO_EVENT: nothing
            "TEVT 2".to_string(),                   // 14: no flag pending: break
            format!("TGED 0 {cpu4}"),               // 15: a CPU event -> the scan finds it
            format!("TGED 0 {none}"),               // 16: nothing pending: no CPU notify
            format!("TGED 1 {none}"),               // 17: the power button alone
            format!("TGED 2 {cpu4}"),               // 18: both, in one _EVT
            format!("TGED 2 {none}"),               // 19: the same press count: no notify
        ];
        let cmd_refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        let out = acpiexec(&dir, &["DSDT.dat", "helper.aml"], &cmd_refs);

        assert_eq!(returned_integer(&out[0]), 0);
        assert_eq!(
            returned_integer(&out[2]),
            u64::from(status_page::STA_PRESENT)
        );
        assert!(out[3].contains("00 08 05 05 01 00 00 00"), "{}", out[3]);
        if last >= 255 {
            let id = last.to_le_bytes();
            let want = format!(
                "09 10 00 00 {:02X} {:02X} 00 00 01 00 00 00 {:02X} {:02X} 00 00",
                id[0], id[1], id[0], id[1]
            );
            assert!(out[4].contains(&want), "{}", out[4]);
        }
        assert_eq!(returned_integer(&out[6]), 3 | 0x103 << 16 | 0x84 << 32);
        assert_eq!(returned_integer(&out[8]), 3);
        // acpiexec's memory is not the VMM: the event word never clears, so the scan runs to
        // its bound, acknowledging each time.
        assert_eq!(notifies(&out[9]), vec![("C003".to_string(), 1); bound]);
        assert_eq!(returned_integer(&out[10]), 3);
        assert_eq!(notifies(&out[11]), vec![(last_name.clone(), 3); bound]);
        assert_eq!(returned_integer(&out[12]), u64::from(last));
        assert_eq!(notifies(&out[13]), vec![]);
        assert_eq!(notifies(&out[14]), vec![]);
        assert_eq!(notifies(&out[15]), vec![("C004".to_string(), 1); bound]);
        assert!(notifies(&out[16]).iter().all(|(d, _)| !d.starts_with('C')));
        let pressed = ("PWRB".to_string(), 0x80);
        assert_eq!(notifies(&out[17]), vec![pressed.clone()]);
        let mut both = vec![("C004".to_string(), 1); bound];
        both.push(pressed);
        assert_eq!(notifies(&out[18]), both);
        assert!(notifies(&out[19]).iter().all(|(d, _)| d != "PWRB"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Calls `CTFY (uid, 1)` for every uid below `Arg0` (`TCPU`) and `MTFY (uid, 3)` likewise
/// (`TMEM`), in one evaluation each (acpiexec takes at most 1,023 characters of commands).
const NOTIFY_ALL_ASL: &str = r#"DefinitionBlock ("", "SSDT", 2, "PLUGVM", "NOTIFY", 1)
{
    External (\_SB.CPUS.CTFY, MethodObj)
    External (\_SB.MHPC.MTFY, MethodObj)
    Method (TCPU, 1, Serialized)
    {
        Local0 = Zero
        While ((Local0 < Arg0))
        {
            \_SB.CPUS.CTFY (Local0, One)
            Local0++
        }
    }
    Method (TMEM, 1, Serialized)
    {
        Local0 = Zero
        While ((Local0 < Arg0))
        {
            \_SB.MHPC.MTFY (Local0, 0x03)
            Local0++
        }
    }
}
"#;

/// `CTFY` and `MTFY` notify exactly the device with the UID they are given, for every UID
/// (their bodies are a tree of comparisons: a wrong pivot would send some UIDs to a
/// neighbour or nowhere), and nothing for a UID no device has.
#[test]
fn notify_dispatch_reaches_every_device() {
    if !have("iasl") || !have("acpiexec") {
        return;
    }
    for &(boot, max, slots) in &[(1, 1, 1), (2, 8, 8), (2, 300, 64)] {
        let tables = build_tables(&desc(boot, max, slots)).unwrap();
        let dir = workdir(&format!("notify-{boot}-{max}-{slots}"));
        tables.write_to_dir(&dir).unwrap();
        compile_helper(&dir, "notify", NOTIFY_ALL_ASL);
        // One UID past the last device of each kind (and memory's unused UID 0).
        let cpus = format!("TCPU {}", max + 1);
        let memory = format!("TMEM {}", slots + 2);
        let out = acpiexec(&dir, &["DSDT.dat", "notify.aml"], &[&cpus, &memory]);
        let want: Vec<(String, u32)> = (0..max).map(|uid| (format!("C{uid:03X}"), 1)).collect();
        assert_eq!(notifies(&out[0]), want, "CTFY with {max} CPUs");
        let want: Vec<(String, u32)> = (1..=slots).map(|uid| (format!("M{uid:03X}"), 3)).collect();
        assert_eq!(notifies(&out[1]), want, "MTFY with {slots} slots");
        if max == 300 {
            // The root of the tree splits the 300 CPUs at UID 150, not a chain of 300 `If`s.
            let dsl = disassemble_all(&dir, &tables);
            assert!(
                dsl.contains("If ((Arg0 < 0x96))"),
                "no dispatch tree in\n{dsl}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
