//! ACPI tables and AML for plugvm: pure functions from a [`MachineDescription`] to bytes.

pub mod layout;
