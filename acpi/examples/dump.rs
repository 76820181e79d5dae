//! Writes the ACPI tables of a machine to a directory, one `NAME.dat` per table, for
//! `iasl -d` or `acpiexec`.
//!
//! `cargo run -p acpi --example dump -- BOOT_CPUS MAX_CPUS DIR [HOTPLUG_MEMORY_MIB [HOTPLUG_SLOTS]]`
//!
//! With hotplug memory and no slot count, the machine gets 8 hotplug slots.

use std::path::PathBuf;
use std::process::ExitCode;

use acpi::{build_tables, layout, MachineDescription, MemoryRange};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(boot), Some(max), Some(dir)) = (
        args.first().and_then(|a| a.parse().ok()),
        args.get(1).and_then(|a| a.parse().ok()),
        args.get(2).map(PathBuf::from),
    ) else {
        eprintln!("usage: dump BOOT_CPUS MAX_CPUS DIR [HOTPLUG_MEMORY_MIB [HOTPLUG_SLOTS]]");
        return ExitCode::FAILURE;
    };
    let hotplug_mib: Option<u64> = args.get(3).and_then(|a| a.parse().ok());
    let slots: u32 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(8);
    let desc = MachineDescription {
        boot_cpus: boot,
        max_cpus: max,
        ram: vec![MemoryRange {
            base: 0,
            size: 1 << 30,
        }],
        hotplug_memory: hotplug_mib.map(|mib| MemoryRange {
            base: layout::MMIO_HOLE_END,
            size: mib << 20,
        }),
        hotplug_slots: if hotplug_mib.is_some() { slots } else { 0 },
    };
    let tables = match build_tables(&desc) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = tables.write_to_dir(&dir) {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for t in &tables.tables {
        println!("{} {:#x} {} bytes", t.name, t.address, t.bytes.len());
    }
    ExitCode::SUCCESS
}
