//! plugvm's emulated platform devices.
//!
//! Every device is a `vm-device` [`DevicePio`](vm_device::DevicePio) or
//! [`DeviceMmio`](vm_device::DeviceMmio); register layouts come from [`acpi::layout`], so the
//! AML the guest runs and the decoding here cannot drift apart. Nothing here knows about the
//! API or KVM: interrupts are [`EventFd`](vmm_sys_util::eventfd::EventFd)s the VMM wires to
//! irqfds, and requests to end the VM go through [`ExitSignal`].
#![warn(missing_docs)]

pub mod exit;
pub mod ged;
mod guest_log;
pub mod hotplug_controller;
pub mod power;
pub mod pvpanic;
pub mod serial;
mod slot_registers;

pub use exit::{ExitReason, ExitSignal};
pub use ged::{Ged, GedEvent};
pub use hotplug_controller::{
    ControllerLayout, CpuHotplugController, CpuLayout, HotplugController, MemoryHotplugController,
    MemoryLayout, SlotRange, StatusWindow,
};
pub use power::AcpiPowerDevice;
pub use pvpanic::PvPanicDevice;
pub use serial::{EventFdTrigger, SerialDevice};
pub use slot_registers::{HotplugObservation, HotplugSlotState};
