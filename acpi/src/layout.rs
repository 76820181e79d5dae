//! The guest-visible platform layout: where every device and table lives, and the register
//! blocks that both the emulated devices (`devices` crate) and their AML (this crate) use.
//!
//! One register contract, written once: the device decodes exactly these offsets and bits,
//! and the AML fields are generated from them.

/// Guest physical address of the RSDP; the other tables follow it. Linux finds it both
/// through `boot_params.acpi_rsdp_addr` and by scanning the BIOS area 0xE0000-0xFFFFF.
pub const RSDP_ADDR: u64 = 0x000e_0000;
/// First address past the area the ACPI tables may occupy (the hotplug status page follows).
pub const ACPI_TABLES_END: u64 = status_page::ADDR;

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

/// Generic Event Device (ACPI0013): one edge-triggered interrupt and nothing to read. Its
/// `_EVT` runs every hotplug scan (each reads its own event word in the [`status_page`] and
/// returns at once when nothing is pending) and compares the power button's press counter,
/// also in the status page, with the last one it saw. So an event costs the guest no VM exit
/// here, and an interrupt that arrives while `_EVT` runs is never lost: `_EVT` runs again and
/// the scans find what is pending. A hardware-reduced platform has no fixed power button, so
/// the power button is signalled here too.
pub mod ged {
    /// GSI of the GED interrupt (edge-triggered, active high).
    pub const IRQ: u32 = 5;
    /// Guest physical address of the GED's window in the status page.
    pub const WINDOW: u64 = super::status_page::ADDR + 0x300;
    /// Size of the window.
    pub const WINDOW_SIZE: u64 = 0x100;
    /// Window offset of the power button's press counter (32 bits, wrapping): `_EVT`
    /// notifies the power button when it differs from the value it saw last.
    pub const POWER_BUTTON_PRESSES: u64 = 0x00;
}

/// What the guest-to-VMM registers of both hotplug controllers have in common: four write-only
/// registers, each naming the device it acts on, so there is no selector and no state shared
/// between accesses (the AML needs no lock, and two vCPUs cannot mix up each other's device).
/// The VMM-to-guest half (which devices are present, which have an event pending) is not in
/// registers at all but in the [`status_page`], which the AML reads without a VM exit.
///
/// | offset | width | access | meaning |
/// |---|---|---|---|
/// | 0x00 | 32 | W | acknowledge the insert event of device UID (the value written) |
/// | 0x04 | 32 | W | acknowledge the remove event of device UID |
/// | 0x08 | 32 | W | eject device UID (`_EJ0`) |
/// | 0x10 | 64 | W | `_OST`: bits 0-15 UID, 16-31 source event, 32-63 status code |
///
/// Reads return zero. A hot-add of one device costs the guest two VM exits (acknowledge,
/// `_OST`); a removal four (acknowledge, `_OST` "in progress", `_EJ0`, `_OST`). The `_OST`
/// register takes one 8-byte write only, as a 64-bit OSPM makes it (plugvm boots x86_64
/// kernels); a 32-bit ACPICA would split it into two 4-byte writes, which are refused.
pub mod hotplug_registers {
    /// Size of each controller's register block.
    pub const MMIO_SIZE: u64 = 0x18;
    /// Offset of the 32-bit acknowledge-insert register.
    pub const ACK_INSERT: u64 = 0x00;
    /// Offset of the 32-bit acknowledge-remove register.
    pub const ACK_REMOVE: u64 = 0x04;
    /// Offset of the 32-bit eject register.
    pub const EJECT: u64 = 0x08;
    /// Offset of the 64-bit `_OST` register.
    pub const OST: u64 = 0x10;
    /// Shift of the source event in the `_OST` register (the UID is below it).
    pub const OST_EVENT_SHIFT: u32 = 16;
    /// Shift of the status code in the `_OST` register.
    pub const OST_STATUS_SHIFT: u32 = 32;
    /// Mask of a UID in the `_OST` register and in an event word; also of the source event
    /// (`_OST` source events are defined up to 0xFFFF, the rest is reserved).
    pub const UID_MASK: u32 = 0xffff;
}

/// The hotplug status page: one page of guest RAM (in the BIOS area, which the E820 map never
/// gives the guest as RAM) that the VMM keeps up to date and the AML reads as plain memory.
/// Everything the guest's hotplug methods read (`_STA`, a memory slot's range and proximity,
/// the next pending event) costs no VM exit; only what the guest tells the VMM does
/// ([`hotplug_registers`]). The VMM writes a device's entry before raising the GED interrupt
/// and, for the guest's own writes, before the write's VM exit returns, so the guest never
/// reads a state older than its own last write. The guest can write the page too; the VMM
/// never reads it back, so that hurts only the guest's own view.
///
/// Each hotplug controller has a window (an event word at its start, then per-device
/// entries), and so has the GED (the power button's press counter).
pub mod status_page {
    /// Guest physical address of the page (the ACPI tables end below it).
    pub const ADDR: u64 = 0x000f_e000;
    /// Size of the page.
    pub const SIZE: u64 = 0x1000;
    /// Event word: a device with an event pending (its UID in bits 0-15, and
    /// [`EVENT_INSERT`] or [`EVENT_REMOVE`]), or [`NO_EVENT`]. The VMM picks the devices in
    /// turn (cyclically after the last one acknowledged), so none is starved.
    pub const EVENT: u64 = 0x00;
    /// Event word bit: the device has an insert pending.
    pub const EVENT_INSERT: u32 = 1 << 16;
    /// Event word bit: the device has a remove pending.
    pub const EVENT_REMOVE: u32 = 1 << 17;
    /// Event word when no device has an event pending.
    pub const NO_EVENT: u32 = 0xffff_ffff;
    /// A device's `_STA` byte when it is present: present, enabled, shown, functioning.
    pub const STA_PRESENT: u8 = 0x0f;
    /// A device's `_STA` byte when it is absent.
    pub const STA_ABSENT: u8 = 0x00;
}

/// CPU hotplug controller: the [`hotplug_registers`] at [`cpu_hotplug::MMIO_BASE`] and a
/// window of the [`status_page`]. A CPU's UID is its ACPI UID = APIC id = vCPU index.
///
/// | window offset | width | meaning |
/// |---|---|---|
/// | 0x00 | 32 | event word ([`status_page::EVENT`]) |
/// | 0x10 + UID | 8 | the CPU's `_STA` |
pub mod cpu_hotplug {
    /// MMIO base of the register block.
    pub const MMIO_BASE: u64 = 0xfe00_1000;
    /// Guest physical address of the controller's window in the status page.
    pub const WINDOW: u64 = super::status_page::ADDR;
    /// Size of the window (room for `crate::MAX_CPUS` `_STA` bytes; the GED's window
    /// follows).
    pub const WINDOW_SIZE: u64 = 0x300;
    /// Window offset of the first CPU's `_STA` byte.
    pub const STA: u64 = 0x10;
}

/// Memory hotplug controller: the [`hotplug_registers`] at [`memory_hotplug::MMIO_BASE`]
/// and a window of the [`status_page`]. A slot's UID is its slot id, 1..=slots (slot 0 is
/// boot memory and has no device); its entry is at `SLOTS + (UID - 1) * SLOT_STRIDE`.
///
/// | entry offset | width | meaning |
/// |---|---|---|
/// | 0x00 | 64 | base address |
/// | 0x08 | 64 | length (0: the slot is empty) |
/// | 0x10 | 32 | proximity domain |
/// | 0x14 | 8 | the slot's `_STA` |
pub mod memory_hotplug {
    /// MMIO base of the register block.
    pub const MMIO_BASE: u64 = 0xfe00_2000;
    /// Guest physical address of the controller's window in the status page.
    pub const WINDOW: u64 = super::status_page::ADDR + 0x400;
    /// Size of the window (room for `crate::MAX_HOTPLUG_SLOTS` entries).
    pub const WINDOW_SIZE: u64 = 0xc00;
    /// Window offset of slot 1's entry.
    pub const SLOTS: u64 = 0x10;
    /// Size of one slot's entry.
    pub const SLOT_STRIDE: u64 = 0x20;
    /// Entry offset of the base address.
    pub const SLOT_BASE: u64 = 0x00;
    /// Entry offset of the length.
    pub const SLOT_LENGTH: u64 = 0x08;
    /// Entry offset of the proximity domain.
    pub const SLOT_PROXIMITY: u64 = 0x10;
    /// Entry offset of the `_STA` byte.
    pub const SLOT_STA: u64 = 0x14;

    /// Window offset of the entry of slot `uid` (1-based; `None` for 0).
    pub const fn slot_entry(uid: u32) -> Option<u64> {
        match uid.checked_sub(1) {
            Some(i) => Some(SLOTS + i as u64 * SLOT_STRIDE),
            None => None,
        }
    }
}
