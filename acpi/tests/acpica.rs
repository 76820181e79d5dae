//! The tables checked by ACPICA, the reference implementation Linux's ACPI code comes from:
//! `iasl -d` disassembles every table and `iasl` recompiles the result (both without errors
//! or warnings), the DSDT's register fields as iasl reads them are compared with
//! `acpi::layout`, and `acpiexec` runs the hotplug methods.
//!
//! Needs `iasl` and `acpiexec` (Debian `acpica-tools`). Without them the tests print
//! SKIPPED and pass, unless `PLUGVM_REQUIRE_ACPICA=1` is set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use acpi::layout::{self, cpu_hotplug, ged};
use acpi::{build_tables, AcpiTables, MachineDescription, MemoryRange};

/// The configurations checked: (boot CPUs, max CPUs, hotplug memory).
const CONFIGS: &[(u32, u32, bool)] = &[
    (1, 1, false),
    (2, 8, false),
    (4, 64, false),
    (2, 8, true),
    (2, 300, true),
];

fn desc(boot: u32, max: u32, hotplug: bool) -> MachineDescription {
    MachineDescription {
        boot_cpus: boot,
        max_cpus: max,
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
        hotplug_memory: hotplug.then_some(MemoryRange {
            base: layout::MMIO_HOLE_END + (1 << 30),
            size: 16 << 30,
        }),
    }
}

/// Whether `tool` runs; `false` means skip (or panic when ACPICA is required).
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("-v").output().is_ok();
    if !found {
        if std::env::var("PLUGVM_REQUIRE_ACPICA").as_deref() == Ok("1") {
            panic!("{tool} not found (install acpica-tools)");
        }
        eprintln!("SKIPPED: {tool} not found (install acpica-tools)");
    }
    found
}

/// A fresh directory for one configuration.
fn workdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plugvm-acpica-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(dir: &Path, tool: &str, args: &[&str]) -> (Output, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// "Compilation successful. 0 Errors, 0 Warnings, 0 Remarks" -> (errors, warnings, remarks).
fn compile_summary(text: &str) -> Option<(u32, u32, u32)> {
    let line = text.lines().find(|l| l.contains(" Errors, "))?;
    let num = |word: &str| -> Option<u32> {
        let before = line.split(word).next()?;
        before
            .split([' ', ',', '.'])
            .rfind(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    Some((num(" Errors")?, num(" Warnings")?, num(" Remarks")?))
}

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
    format!("OperationRegion ({name}, SystemMemory, 0x{base:08X}, 0x{size:02X})")
}

/// The DSDT's register fields, as iasl decodes them, are the ones in `acpi::layout`.
fn check_layout(dsl: &str) {
    assert!(dsl.contains(&region_line(
        cpu_hotplug::MMIO_BASE,
        cpu_hotplug::MMIO_SIZE,
        "PRST"
    )));
    assert!(dsl.contains(&region_line(ged::MMIO_BASE, ged::MMIO_SIZE, "GDST")));
    let bit = |mask: u8| u64::from(mask.trailing_zeros());
    let cpu = field_bits(dsl, "PRST");
    let want = [
        ("CSEL", cpu_hotplug::SELECTOR * 8, 32),
        ("OEVT", cpu_hotplug::OST_EVENT * 8, 32),
        ("OSTS", cpu_hotplug::OST_STATUS * 8, 32),
        ("CNXT", cpu_hotplug::NEXT_EVENT * 8, 32),
        (
            "CPEN",
            cpu_hotplug::STATUS * 8 + bit(cpu_hotplug::STATUS_ENABLED),
            1,
        ),
        (
            "CINS",
            cpu_hotplug::STATUS * 8 + bit(cpu_hotplug::STATUS_INSERTING),
            1,
        ),
        (
            "CRMV",
            cpu_hotplug::STATUS * 8 + bit(cpu_hotplug::STATUS_REMOVING),
            1,
        ),
        (
            "CEJF",
            cpu_hotplug::STATUS * 8 + bit(cpu_hotplug::STATUS_EJECT),
            1,
        ),
    ];
    assert_eq!(cpu.len(), want.len(), "{cpu:?}");
    for (name, at, width) in want {
        assert_eq!(cpu.get(name), Some(&(at, width)), "{name}");
    }
    let ged_fields = field_bits(dsl, "GDST");
    assert_eq!(ged_fields.get("GDAT"), Some(&(ged::EVENT * 8, 32)));
    assert!(dsl.contains(&format!("Local0 != 0x{:08X}", cpu_hotplug::NO_EVENT)));
    assert!(dsl.contains(&format!("If ((Local0 & {}))", aml_int(ged::EVENT_CPU))));
    assert!(dsl.contains(&format!("0x{:08X},", ged::IRQ)));
}

/// How iasl prints a small integer constant.
fn aml_int(v: u32) -> String {
    match v {
        0 => "Zero".into(),
        1 => "One".into(),
        v => format!("0x{v:02X}"),
    }
}

#[test]
fn iasl_accepts_every_table() {
    if !have("iasl") {
        return;
    }
    for &(boot, max, hotplug) in CONFIGS {
        let d = desc(boot, max, hotplug);
        let tables = build_tables(&d).unwrap();
        let dir = workdir(&format!("iasl-{boot}-{max}-{hotplug}"));
        tables.write_to_dir(&dir).unwrap();
        let dsl = disassemble_all(&dir, &tables);
        check_rsdp(&dir, &tables);
        check_layout(&dsl);
        assert_eq!(dsl.matches("\"ACPI0007\"").count(), max as usize);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Test methods loaded beside the DSDT: acpiexec backs SystemMemory regions with plain
/// memory, so these play the device by writing the registers before a scan.
const HELPER_ASL: &str = r#"
DefinitionBlock ("", "SSDT", 2, "PLUGVM", "HPTEST", 1)
{
    External (\_SB.CPUS.CNXT, FieldUnitObj)
    External (\_SB.CPUS.CPEN, FieldUnitObj)
    External (\_SB.CPUS.CINS, FieldUnitObj)
    External (\_SB.CPUS.CRMV, FieldUnitObj)
    External (\_SB.CPUS.CSEL, FieldUnitObj)
    External (\_SB.CPUS.OEVT, FieldUnitObj)
    External (\_SB.CPUS.OSTS, FieldUnitObj)
    External (\_SB.CPUS.CSCN, MethodObj)
    External (\_SB.GED.GDAT, FieldUnitObj)
    External (\_SB.GED._EVT, MethodObj)
    Method (TINS, 1, NotSerialized)
    {
        \_SB.CPUS.CNXT = Arg0
        \_SB.CPUS.CINS = One
        \_SB.CPUS.CSCN ()
    }
    Method (TRMV, 1, NotSerialized)
    {
        \_SB.CPUS.CNXT = Arg0
        \_SB.CPUS.CRMV = One
        \_SB.CPUS.CSCN ()
    }
    Method (TNON, 1, NotSerialized)
    {
        \_SB.CPUS.CNXT = Arg0
        \_SB.CPUS.CPEN = Zero
        \_SB.CPUS.CSCN ()
    }
    Method (TGED, 2, NotSerialized)
    {
        \_SB.GED.GDAT = Arg0
        \_SB.CPUS.CNXT = Arg1
        \_SB.CPUS.CINS = One
        \_SB.GED._EVT (0x05)
    }
    Method (TPEN, 0, NotSerialized)
    {
        \_SB.CPUS.CPEN = One
    }
    Method (TSEL, 0, NotSerialized)
    {
        Return (\_SB.CPUS.CSEL)
    }
    Method (TOST, 0, NotSerialized)
    {
        Return (((\_SB.CPUS.OEVT << 0x10) | \_SB.CPUS.OSTS))
    }
}
"#;

/// The output of each `execute` command of one acpiexec run, in order.
fn acpiexec(dir: &Path, tables: &[&str], commands: &[&str]) -> Vec<String> {
    let batch = commands
        .iter()
        .map(|c| format!("execute {c}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut args = vec!["-b", &batch];
    args.extend_from_slice(tables);
    let (out, text) = run(dir, "acpiexec", &args);
    assert!(out.status.success(), "acpiexec failed:\n{text}");
    for bad in ["ACPI Error", "ACPI Warning", "ACPI Exception", "AE_"] {
        assert!(!text.contains(bad), "{bad} from acpiexec:\n{text}");
    }
    let sections: Vec<String> = text
        .split("Evaluating \\")
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(sections.len(), commands.len(), "{text}");
    sections
}

fn returned_integer(section: &str) -> u64 {
    let v = section
        .split("[Integer] = ")
        .nth(1)
        .unwrap_or_else(|| panic!("no integer in {section}"));
    u64::from_str_radix(v.split_whitespace().next().unwrap(), 16).unwrap()
}

/// (device, value) of every Notify in `section`.
fn notifies(section: &str) -> Vec<(String, u32)> {
    section
        .lines()
        .filter(|l| l.contains("Notify on ["))
        .map(|l| {
            let dev = l.split('[').nth(1).unwrap().split(']').next().unwrap();
            let val = l.split("Value 0x").nth(1).unwrap();
            let val = u32::from_str_radix(val.split_whitespace().next().unwrap(), 16).unwrap();
            (dev.to_string(), val)
        })
        .collect()
}

#[test]
fn acpiexec_runs_the_hotplug_methods() {
    if !have("iasl") || !have("acpiexec") {
        return;
    }
    for &(boot, max, hotplug) in CONFIGS.iter().filter(|c| c.1 >= 8) {
        let tables = build_tables(&desc(boot, max, hotplug)).unwrap();
        let dir = workdir(&format!("exec-{boot}-{max}-{hotplug}"));
        tables.write_to_dir(&dir).unwrap();
        std::fs::write(dir.join("helper.asl"), HELPER_ASL).unwrap();
        let (_, text) = run(&dir, "iasl", &["helper.asl"]);
        assert_eq!(
            compile_summary(&text).map(|s| (s.0, s.1)),
            Some((0, 0)),
            "{text}"
        );

        let last = max - 1;
        let last_name = format!("C{last:03X}");
        let bound = 2 * max as usize;
        let cmds = [
            format!("\\_SB.CPUS.{last_name}._STA"), // 0: memory reads 0: absent
            "TSEL".to_string(),                     // 1: _STA selected the CPU
            "TPEN".to_string(),                     // 2
            "\\_SB.CPUS.C005._STA".to_string(),     // 3: now present
            "\\_SB.CPUS.C005._MAT".to_string(),     // 4
            format!("\\_SB.CPUS.{last_name}._MAT"), // 5
            "\\_SB.CPUS.COST 3 0x103 0x84".to_string(), // 6
            "TOST".to_string(),                     // 7
            "\\_SB.CPUS.C003._EJ0 0".to_string(),   // 8
            "\\_SB.CPUS.C005._STA".to_string(),     // 9: eject wrote zeros over CPEN
            "TINS 3".to_string(),                   // 10: insert on CPU 3
            format!("TRMV {last}"),                 // 11: remove on the last CPU
            "TINS 0xFFFFFFFF".to_string(),          // 12: NO_EVENT: nothing
            "TNON 2".to_string(),                   // 13: no flag pending: break
            "TGED 1 4".to_string(),                 // 14: GED CPU bit -> scan
            "TGED 2 4".to_string(),                 // 15: other bit: no CPU scan
        ];
        let cmd_refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        let out = acpiexec(&dir, &["DSDT.dat", "helper.aml"], &cmd_refs);

        assert_eq!(returned_integer(&out[0]), 0);
        assert_eq!(returned_integer(&out[1]), u64::from(last));
        assert_eq!(returned_integer(&out[3]), 0xf);
        assert!(out[4].contains("00 08 05 05 01 00 00 00"), "{}", out[4]);
        if last >= 255 {
            let id = last.to_le_bytes();
            let want = format!(
                "09 10 00 00 {:02X} {:02X} 00 00 01 00 00 00 {:02X} {:02X} 00 00",
                id[0], id[1], id[0], id[1]
            );
            assert!(out[5].contains(&want), "{}", out[5]);
        }
        assert_eq!(returned_integer(&out[7]), (0x103 << 16) | 0x84);
        // Writing the eject bit wrote zeros to the other status bits (WriteAsZeros), so
        // it cannot acknowledge or change anything else; acpiexec's plain memory shows it.
        assert_eq!(returned_integer(&out[9]), 0);
        // acpiexec's memory never clears the flag, so the scan runs to its bound.
        assert_eq!(notifies(&out[10]), vec![("C003".to_string(), 1); bound]);
        assert_eq!(notifies(&out[11]), vec![(last_name.clone(), 3); bound]);
        assert_eq!(notifies(&out[12]), vec![]);
        assert_eq!(notifies(&out[13]), vec![]);
        assert_eq!(notifies(&out[14]), vec![("C004".to_string(), 1); bound]);
        assert_eq!(notifies(&out[15]), vec![]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
