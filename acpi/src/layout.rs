//! The guest-visible platform layout: where every device and table lives, and the register
//! blocks that both the emulated devices (`devices` crate) and their AML (this crate) use.
//!
//! One register contract, written once: the device decodes exactly these offsets and bits,
//! and the AML fields are generated from them.

/// Guest physical address of the RSDP; the other tables follow it. Linux finds it both
/// through `boot_params.acpi_rsdp_addr` and by scanning the BIOS area 0xE0000-0xFFFFF.
pub const RSDP_ADDR: u64 = 0x000e_0000;
/// First address past the area the ACPI tables may occupy.
pub const ACPI_TABLES_END: u64 = 0x0010_0000;

/// IOAPIC MMIO base (KVM's in-kernel IOAPIC).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Number of IOAPIC pins (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u32 = 24;

/// Start of the 32-bit MMIO hole: RAM never lies between this address and 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// The 16550 serial port (COM1).
pub mod serial {
    /// I/O port base.
    pub const PORT: u16 = 0x3f8;
    /// Number of I/O ports.
    pub const PORT_LEN: u16 = 8;
    /// ISA IRQ / GSI.
    pub const IRQ: u32 = 4;
}

/// Hardware-reduced ACPI power management: sleep control/status and reset registers
/// (FADT `SLEEP_CONTROL_REG`, `SLEEP_STATUS_REG`, `RESET_REG`), all 8-bit I/O ports.
pub mod power {
    /// Sleep control register port: the guest writes `SLP_TYP << 2 | SLP_EN` here.
    pub const SLEEP_CONTROL_PORT: u16 = 0x600;
    /// Sleep status register port (reads 0: wake status is never set).
    pub const SLEEP_STATUS_PORT: u16 = 0x601;
    /// Reset register port.
    pub const RESET_PORT: u16 = 0x602;
    /// Number of ports, starting at [`SLEEP_CONTROL_PORT`].
    pub const PORT_LEN: u16 = 3;
    /// Value the guest writes to the reset register to reset the machine.
    pub const RESET_VALUE: u8 = 0x01;
    /// `SLP_EN`: bit 5 of the sleep control register.
    pub const SLP_EN: u8 = 1 << 5;
    /// Shift of the 3-bit `SLP_TYP` field in the sleep control register.
    pub const SLP_TYP_SHIFT: u8 = 2;
    /// Mask of `SLP_TYP` after shifting.
    pub const SLP_TYP_MASK: u8 = 0x7;
    /// `SLP_TYP` value of S5 (soft off), published as `\_S5_`.
    pub const S5_SLP_TYP: u8 = 5;
}

/// QEMU's pvpanic ISA device (`QEMU0001`): the guest writes here when it panics.
pub mod pvpanic {
    /// I/O port.
    pub const PORT: u16 = 0x505;
    /// Bit the guest writes when it panicked.
    pub const PANICKED: u8 = 1 << 0;
    /// Bit the guest writes when a crash dump is being taken.
    pub const CRASH_LOADED: u8 = 1 << 1;
}

/// Generic Event Device (ACPI0013): one 32-bit event register, cleared on read, and one
/// edge-triggered interrupt. A hardware-reduced platform has no fixed power button, so the
/// power button is signalled here too.
pub mod ged {
    /// MMIO base.
    pub const MMIO_BASE: u64 = 0xfe00_0000;
    /// Size of the register block.
    pub const MMIO_SIZE: u64 = 0x4;
    /// Offset of the 32-bit event register (read clears it).
    pub const EVENT: u64 = 0x0;
    /// Event bit: a CPU hotplug event is pending, run the CPU scan.
    pub const EVENT_CPU: u32 = 1 << 0;
    /// Event bit: a memory hotplug event is pending, run the memory scan.
    pub const EVENT_MEMORY: u32 = 1 << 1;
    /// Event bit: the power button was pressed, notify the power button device.
    pub const EVENT_POWER_BUTTON: u32 = 1 << 2;
    /// GSI of the GED interrupt (edge-triggered, active high).
    pub const IRQ: u32 = 5;
}

/// CPU hotplug controller: selects a CPU by its ACPI UID (= APIC id = vCPU index) and
/// reports/acknowledges its hotplug state.
///
/// | offset | width | access | meaning |
/// |---|---|---|---|
/// | 0x00 | 32 | RW | selector: the UID of the CPU the other registers refer to |
/// | 0x04 | 8 | R | status: bit 0 enabled, bit 1 insert pending, bit 2 remove pending |
/// | 0x04 | 8 | W | bit 1: acknowledge insert, bit 2: acknowledge remove, bit 3: eject (`_EJ0`) |
/// | 0x08 | 32 | W | `_OST` source event for the selected CPU |
/// | 0x0c | 32 | W | `_OST` status for the selected CPU: writing it records (event, status) |
/// | 0x10 | 32 | R | next event: selects the next CPU (from the selector, cyclic) with an insert or remove pending and returns its UID, or [`cpu_hotplug::NO_EVENT`] |
pub mod cpu_hotplug {
    /// MMIO base.
    pub const MMIO_BASE: u64 = 0xfe00_1000;
    /// Size of the register block.
    pub const MMIO_SIZE: u64 = 0x14;
    /// Offset of the 32-bit selector register.
    pub const SELECTOR: u64 = 0x00;
    /// Offset of the 8-bit status/command register.
    pub const STATUS: u64 = 0x04;
    /// Offset of the 32-bit `_OST` source event register.
    pub const OST_EVENT: u64 = 0x08;
    /// Offset of the 32-bit `_OST` status register.
    pub const OST_STATUS: u64 = 0x0c;
    /// Offset of the 32-bit next-event register.
    pub const NEXT_EVENT: u64 = 0x10;
    /// Status bit: the CPU is present (enabled).
    pub const STATUS_ENABLED: u8 = 1 << 0;
    /// Status bit: an insert is pending (read); acknowledge it (write 1).
    pub const STATUS_INSERTING: u8 = 1 << 1;
    /// Status bit: a remove is pending (read); acknowledge it (write 1).
    pub const STATUS_REMOVING: u8 = 1 << 2;
    /// Status bit (write only): eject the selected CPU.
    pub const STATUS_EJECT: u8 = 1 << 3;
    /// Value of the next-event register when no CPU has an event pending.
    pub const NO_EVENT: u32 = 0xffff_ffff;
}

/// Memory hotplug controller: selects a hotplug memory slot by its ACPI UID (the slot id,
/// 1..=slots; slot 0 is boot memory and has no device) and reports its range and state.
///
/// | offset | width | access | meaning |
/// |---|---|---|---|
/// | 0x00 | 32 | RW | selector: the UID of the slot the other registers refer to |
/// | 0x04 | 32 | R | base address, low half |
/// | 0x08 | 32 | R | base address, high half |
/// | 0x0c | 32 | R | length, low half |
/// | 0x10 | 32 | R | length, high half |
/// | 0x14 | 32 | R | proximity domain |
/// | 0x18 | 8 | R | status: bit 0 enabled, bit 1 insert pending, bit 2 remove pending |
/// | 0x18 | 8 | W | bit 1: acknowledge insert, bit 2: acknowledge remove, bit 3: eject (`_EJ0`) |
/// | 0x1c | 32 | W | `_OST` source event for the selected slot |
/// | 0x20 | 32 | W | `_OST` status for the selected slot: writing it records (event, status) |
/// | 0x24 | 32 | R | next event: selects the next slot (from the selector, cyclic) with an insert or remove pending and returns its UID, or [`memory_hotplug::NO_EVENT`] |
pub mod memory_hotplug {
    /// MMIO base.
    pub const MMIO_BASE: u64 = 0xfe00_2000;
    /// Size of the register block.
    pub const MMIO_SIZE: u64 = 0x28;
    /// Offset of the 32-bit selector register.
    pub const SELECTOR: u64 = 0x00;
    /// Offset of the low half of the slot's base address.
    pub const BASE_LOW: u64 = 0x04;
    /// Offset of the high half of the slot's base address.
    pub const BASE_HIGH: u64 = 0x08;
    /// Offset of the low half of the slot's length.
    pub const LENGTH_LOW: u64 = 0x0c;
    /// Offset of the high half of the slot's length.
    pub const LENGTH_HIGH: u64 = 0x10;
    /// Offset of the proximity domain.
    pub const PROXIMITY: u64 = 0x14;
    /// Offset of the 8-bit status/command register.
    pub const STATUS: u64 = 0x18;
    /// Offset of the 32-bit `_OST` source event register.
    pub const OST_EVENT: u64 = 0x1c;
    /// Offset of the 32-bit `_OST` status register.
    pub const OST_STATUS: u64 = 0x20;
    /// Offset of the 32-bit next-event register.
    pub const NEXT_EVENT: u64 = 0x24;
    /// Status bit: the slot holds memory (enabled).
    pub const STATUS_ENABLED: u8 = 1 << 0;
    /// Status bit: an insert is pending (read); acknowledge it (write 1).
    pub const STATUS_INSERTING: u8 = 1 << 1;
    /// Status bit: a remove is pending (read); acknowledge it (write 1).
    pub const STATUS_REMOVING: u8 = 1 << 2;
    /// Status bit (write only): eject the selected slot.
    pub const STATUS_EJECT: u8 = 1 << 3;
    /// Value of the next-event register when no slot has an event pending.
    pub const NO_EVENT: u32 = 0xffff_ffff;
}
