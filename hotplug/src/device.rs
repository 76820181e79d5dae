//! Device identities: which vCPU or memory slot a hotplug operation targets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A vCPU's id: its ACPI UID, APIC id and KVM vCPU index (plugvm keeps the three equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CpuId(pub u32);

/// A memory slot number. Slot 0 is the boot memory (never removable); slots
/// `1..=memory_slots` are the hotplug slots inside the hotplug region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SlotId(pub u32);

impl SlotId {
    /// The slot that describes the boot memory.
    pub const BOOT: SlotId = SlotId(0);
}

/// A hotpluggable device.
///
/// Serialized as `{"cpu": 3}` or `{"memory_slot": 1}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceId {
    /// A vCPU.
    Cpu(CpuId),
    /// A memory slot (a DIMM-like range of the hotplug region).
    MemorySlot(SlotId),
}

impl DeviceId {
    /// Shorthand for `DeviceId::Cpu(CpuId(id))`.
    pub fn cpu(id: u32) -> Self {
        DeviceId::Cpu(CpuId(id))
    }

    /// Shorthand for `DeviceId::MemorySlot(SlotId(slot))`.
    pub fn memory_slot(slot: u32) -> Self {
        DeviceId::MemorySlot(SlotId(slot))
    }

    /// Whether the device is a vCPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, DeviceId::Cpu(_))
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu {}", self.0)
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory slot {}", self.0)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Cpu(c) => c.fmt(f),
            DeviceId::MemorySlot(s) => s.fmt(f),
        }
    }
}

/// Where a memory slot lives inside the hotplug region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlacement {
    /// Offset of the slot from the start of the hotplug region, in bytes.
    pub offset: u64,
    /// Size of the slot in bytes (a multiple of the block size).
    pub size: u64,
}

impl MemoryPlacement {
    /// First offset past the slot.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_json_shape_and_display() {
        let cpu = serde_json::to_string(&DeviceId::cpu(3)).unwrap();
        assert_eq!(cpu, r#"{"cpu":3}"#);
        let mem = serde_json::to_string(&DeviceId::memory_slot(1)).unwrap();
        assert_eq!(mem, r#"{"memory_slot":1}"#);
        assert_eq!(DeviceId::cpu(3).to_string(), "cpu 3");
        assert_eq!(DeviceId::memory_slot(1).to_string(), "memory slot 1");
        assert!(DeviceId::cpu(0) < DeviceId::memory_slot(0));
    }
}
