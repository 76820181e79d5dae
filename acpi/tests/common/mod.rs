//! Helpers shared by the ACPICA tests: running iasl/acpiexec and reading their output.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use acpi::layout;
use acpi::{MachineDescription, MemoryRange};

/// A machine with `boot`/`max` CPUs, 3 GiB + 1 GiB of boot RAM and, when `slots` > 0, a
/// 16 GiB hotplug region with `slots` slots.
pub fn desc(boot: u32, max: u32, slots: u32) -> MachineDescription {
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
        hotplug_memory: (slots > 0).then_some(MemoryRange {
            base: layout::MMIO_HOLE_END + (1 << 30),
            size: 16 << 30,
        }),
        hotplug_slots: slots,
    }
}

/// Whether `tool` runs; `false` means skip (or panic when ACPICA is required).
pub fn have(tool: &str) -> bool {
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
pub fn workdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plugvm-acpica-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn run(dir: &Path, tool: &str, args: &[&str]) -> (Output, String) {
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
pub fn compile_summary(text: &str) -> Option<(u32, u32, u32)> {
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

/// Name of the method [`compile_helper`] adds to every helper SSDT: `Sleep (WAIT_MS)`.
pub const WAIT_METHOD: &str = "\\TWAI";
/// The wait method, added to every helper SSDT by [`compile_helper`].
const WAIT_ASL: &str = "    Method (TWAI, 0, NotSerialized) { Sleep (100) }\n";

/// acpiexec's debug level: ACPI_LV_INFO (0x4) | ACPI_LV_TABLES (0x2000).
const DEBUG_LEVEL: &str = "0x2004";

/// The output of each `execute` command of one acpiexec run, in order.
///
/// acpiexec delivers every `Notify` to its handler on a thread of its own, so the
/// handler's "Received a System Notify" line can come after the next command started, or
/// never when acpiexec exits first (both seen under load). [`notifies`] therefore reads
/// the interpreter's own "Dispatching Notify" debug line (ACPI_LV_INFO), printed
/// synchronously when the `Notify` opcode runs; ACPI_LV_TABLES keeps the buffer dumps. The run ends with
/// [`WAIT_METHOD`] to let the handler threads finish, and allocation tracking is off
/// (`-dt`): it reports the notify objects still held by late threads as leaks.
pub fn acpiexec(dir: &Path, tables: &[&str], commands: &[&str]) -> Vec<String> {
    let batch = commands
        .iter()
        .chain(&[WAIT_METHOD])
        .map(|c| format!("execute {c}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut args = vec!["-dt", "-x", DEBUG_LEVEL, "-b", &batch];
    args.extend_from_slice(tables);
    let (out, text) = run(dir, "acpiexec", &args);
    assert!(out.status.success(), "acpiexec failed:\n{text}");
    for bad in ["ACPI Error", "ACPI Warning", "ACPI Exception", "AE_"] {
        assert!(!text.contains(bad), "{bad} from acpiexec:\n{text}");
    }
    let mut sections: Vec<String> = text
        .split("Evaluating \\")
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(sections.len(), commands.len() + 1, "{text}");
    sections.pop();
    sections
}

pub fn returned_integer(section: &str) -> u64 {
    let v = section
        .split("[Integer] = ")
        .nth(1)
        .unwrap_or_else(|| panic!("no integer in {section}"));
    u64::from_str_radix(v.split_whitespace().next().unwrap(), 16).unwrap()
}

/// (device, value) of every `Notify` the interpreter dispatched in `section`.
pub fn notifies(section: &str) -> Vec<(String, u32)> {
    const MARK: &str = "Dispatching Notify on [";
    section
        .lines()
        .filter_map(|l| l.split_once(MARK).map(|(_, rest)| rest))
        .map(|rest| {
            let (dev, rest) = rest.split_once(']').unwrap();
            let val = rest.split("Value 0x").nth(1).unwrap();
            let val = u32::from_str_radix(val.split_whitespace().next().unwrap(), 16).unwrap();
            (dev.to_string(), val)
        })
        .collect()
}

/// The bytes of the buffer `section` returned (acpiexec's hex dump: `Length NN =` then
/// `OFFS: XX XX ...  // text` rows, the first on the same line for short buffers).
pub fn returned_buffer(section: &str) -> Vec<u8> {
    let (head, dump) = section
        .split_once("[Buffer] Length ")
        .and_then(|(_, rest)| rest.split_once(" ="))
        .unwrap_or_else(|| panic!("no buffer in {section}"));
    let len = usize::from_str_radix(head.trim(), 16).unwrap();
    let bytes: Vec<u8> = dump
        .lines()
        .filter_map(|l| {
            let (offset, rest) = l.trim().split_once(": ")?;
            u32::from_str_radix(offset, 16).ok()?;
            Some(rest.split("//").next().unwrap_or("").to_string())
        })
        .flat_map(|hex| {
            hex.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect::<Vec<_>>()
        })
        .take(len)
        .collect();
    assert_eq!(bytes.len(), len, "{section}");
    bytes
}

/// Compiles the helper SSDT `asl`, with [`WAIT_METHOD`] added, as `dir/NAME.asl` with iasl
/// (0 errors, 0 warnings) into `NAME.aml`.
pub fn compile_helper(dir: &Path, name: &str, asl: &str) {
    let file = format!("{name}.asl");
    let end = asl.rfind('}').expect("a DefinitionBlock");
    let asl = format!("{}{WAIT_ASL}{}", &asl[..end], &asl[end..]);
    std::fs::write(dir.join(&file), asl).unwrap();
    let (_, text) = run(dir, "iasl", &[&file]);
    assert_eq!(
        compile_summary(&text).map(|s| (s.0, s.1)),
        Some((0, 0)),
        "{text}"
    );
}
