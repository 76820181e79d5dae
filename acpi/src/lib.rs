//! ACPI tables and AML for plugvm: pure functions from a [`MachineDescription`] to bytes.
//!
//! [`build_tables`] lays the tables out from [`layout::RSDP_ADDR`] upward:
//! RSDP, XSDT, FADT (hardware-reduced), MADT, DSDT and, when the machine has a hotplug
//! memory region, SRAT. The VMM copies every [`AcpiTable`] to its `address` in guest memory
//! and points `boot_params.acpi_rsdp_addr` at [`AcpiTables::rsdp_address`].
//!
//! The DSDT describes the CPU hotplug controller, the memory hotplug controller (when there
//! are hotplug memory slots) and the Generic Event Device from the register constants in
//! [`layout`], the same ones the emulated devices decode.
//!
//! ```
//! use acpi::{build_tables, MachineDescription, MemoryRange};
//!
//! let desc = MachineDescription {
//!     boot_cpus: 2,
//!     max_cpus: 8,
//!     ram: vec![MemoryRange { base: 0, size: 512 << 20 }],
//!     hotplug_memory: None,
//!     hotplug_slots: 0,
//! };
//! let tables = build_tables(&desc).unwrap();
//! assert_eq!(tables.rsdp_address, acpi::layout::RSDP_ADDR);
//! assert_eq!(tables.tables[0].name, "RSDP");
//! ```

#![warn(missing_docs)]

mod aml_ext;
mod dsdt;
mod fadt;
pub mod layout;
mod machine;
mod madt;
mod rsdp;
mod sdt;
mod srat;

use std::path::Path;

pub use machine::{MachineDescription, MemoryRange, MAX_CPUS, MAX_HOTPLUG_SLOTS};

/// Why the tables could not be built.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// More possible CPUs than the ACPI namespace and table area can describe.
    #[error("{max_cpus} possible CPUs requested, at most {limit} are supported")]
    TooManyCpus {
        /// The requested `max_cpus`.
        max_cpus: u32,
        /// [`MAX_CPUS`].
        limit: u32,
    },
    /// The tables do not fit below [`layout::ACPI_TABLES_END`].
    #[error("ACPI tables need {size} bytes, only {limit} fit")]
    TablesTooLarge {
        /// Bytes needed from [`layout::RSDP_ADDR`].
        size: u64,
        /// Bytes available.
        limit: u64,
    },
    /// The machine description is inconsistent (no boot CPU, overlapping RAM, ...).
    #[error("invalid machine description: {0}")]
    InvalidDescription(String),
    /// The register layout in [`layout`] cannot be expressed as AML fields (overlap,
    /// out-of-block offset); a programming error caught before the guest sees it.
    #[error("register layout cannot be described in AML: {0}")]
    InvalidLayout(String),
    /// An AML name is not a valid 4-character name segment.
    #[error("invalid AML name {0:?}")]
    InvalidName(String),
}

/// One table, ready to be copied to guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTable {
    /// The table signature ("RSDP", "XSDT", "FACP", "APIC", "DSDT", "SRAT"); also the
    /// name of its dump file.
    pub name: String,
    /// Guest physical address of the first byte.
    pub address: u64,
    /// The table, checksums included.
    pub bytes: Vec<u8>,
}

/// All tables of a machine, RSDP first, in ascending address order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Guest physical address of the RSDP (for `boot_params.acpi_rsdp_addr`).
    pub rsdp_address: u64,
    /// The tables, the RSDP included as a table named "RSDP".
    pub tables: Vec<AcpiTable>,
}

impl AcpiTables {
    /// Writes every table to `dir/NAME.dat` (the format `iasl -d` and `acpidump -b` use).
    pub fn write_to_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for table in &self.tables {
            std::fs::write(dir.join(format!("{}.dat", table.name)), &table.bytes)?;
        }
        Ok(())
    }

    /// The table with signature `name`, if built.
    pub fn table(&self, name: &str) -> Option<&AcpiTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// First address past the last table.
    pub fn end_address(&self) -> u64 {
        self.tables
            .iter()
            .map(|t| t.address + t.bytes.len() as u64)
            .max()
            .unwrap_or(self.rsdp_address)
    }
}

/// Alignment of every table. The RSDP needs 16 (Linux scans the BIOS area on 16-byte
/// boundaries); the others need 8 for their 64-bit fields, 16 keeps dumps readable.
const TABLE_ALIGN: u64 = 16;

/// Builds all ACPI tables for `desc`, laid out from [`layout::RSDP_ADDR`].
pub fn build_tables(desc: &MachineDescription) -> Result<AcpiTables, Error> {
    desc.validate()?;

    // The address-independent tables first: their sizes decide where everything goes.
    let dsdt = dsdt::build(desc)?;
    let madt = madt::build(desc);
    let srat = srat::build(desc);

    let mut next = layout::RSDP_ADDR;
    let mut place = |len: usize| {
        let addr = next;
        next = align_up(addr + len as u64, TABLE_ALIGN);
        addr
    };
    let rsdp_addr = place(rsdp::RSDP_LEN);
    let xsdt_entries = if srat.is_some() { 3 } else { 2 };
    let xsdt_addr = place(rsdp::xsdt_len(xsdt_entries));
    let fadt_addr = place(fadt::FADT_LEN);
    let madt_addr = place(madt.len());
    let dsdt_addr = place(dsdt.len());
    let srat_addr = srat.as_ref().map(|s| place(s.len()));
    let end = next;

    let limit = layout::ACPI_TABLES_END - layout::RSDP_ADDR;
    let size = end - layout::RSDP_ADDR;
    if size > limit {
        return Err(Error::TablesTooLarge { size, limit });
    }

    let fadt = fadt::build(dsdt_addr);
    let mut xsdt_tables = vec![fadt_addr, madt_addr];
    xsdt_tables.extend(srat_addr);
    let xsdt = rsdp::build_xsdt(&xsdt_tables);
    let rsdp = rsdp::build_rsdp(xsdt_addr);

    let mut tables = vec![
        table("RSDP", rsdp_addr, rsdp),
        table("XSDT", xsdt_addr, xsdt),
        table("FACP", fadt_addr, fadt),
        table("APIC", madt_addr, madt),
        table("DSDT", dsdt_addr, dsdt),
    ];
    if let (Some(addr), Some(bytes)) = (srat_addr, srat) {
        tables.push(table("SRAT", addr, bytes));
    }
    Ok(AcpiTables {
        rsdp_address: rsdp_addr,
        tables,
    })
}

fn table(name: &str, address: u64, bytes: Vec<u8>) -> AcpiTable {
    AcpiTable {
        name: name.to_string(),
        address,
        bytes,
    }
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

#[cfg(test)]
pub(crate) mod tests;
