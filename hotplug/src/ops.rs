//! What can be asked: requests from the API, and the per-device operations a transaction
//! carries to its participants.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceId, MemoryPlacement};

/// A transaction's id: unique for the engine's lifetime, increasing from 1.
///
/// Serialized as a number; displayed as `tx-42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxId(pub u64);

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tx-{}", self.0)
    }
}

/// A hotplug request, as the API (or the guest, for ejects) makes it.
///
/// Serialized as `{"kind": "add_cpu", "id": null}`, `{"kind": "resize", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Add a vCPU: the given id, or the lowest free one.
    AddCpu {
        /// The vCPU id to add; `None` picks the lowest absent id.
        id: Option<u32>,
    },
    /// Remove a vCPU.
    RemoveCpu {
        /// The vCPU id to remove (never 0).
        id: u32,
    },
    /// Add memory: the engine picks the first free slot and the first gap of the hotplug
    /// region that fits.
    AddMemory {
        /// Size in bytes, a non-zero multiple of the block size.
        size: u64,
    },
    /// Remove the memory of a slot.
    RemoveMemory {
        /// The slot (never 0, the boot memory).
        slot: u32,
    },
    /// Resize the VM to a number of vCPUs and/or a total amount of RAM, as one batch.
    Resize {
        /// Desired number of present vCPUs.
        vcpus: Option<u32>,
        /// Desired total RAM in bytes (boot memory included).
        memory: Option<u64>,
        /// Keep the devices that succeeded when others fail (default: all-or-nothing).
        #[serde(default)]
        best_effort: bool,
    },
}

impl Request {
    /// How the batch behaves when one of its devices fails.
    pub fn mode(&self) -> BatchMode {
        match self {
            Request::Resize {
                best_effort: true, ..
            } => BatchMode::BestEffort,
            _ => BatchMode::AllOrNothing,
        }
    }
}

/// How a batch treats a failing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    /// If any device fails, every device of the batch is rolled back.
    AllOrNothing,
    /// Devices that succeed are kept; failing ones are rolled back alone.
    BestEffort,
}

/// The kind of a per-device operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Plug a vCPU.
    AddCpu,
    /// Unplug a vCPU.
    RemoveCpu,
    /// Plug a memory slot.
    AddMemory,
    /// Unplug a memory slot.
    RemoveMemory,
}

impl OpKind {
    /// Add or remove.
    pub fn direction(&self) -> Direction {
        match self {
            OpKind::AddCpu | OpKind::AddMemory => Direction::Add,
            OpKind::RemoveCpu | OpKind::RemoveMemory => Direction::Remove,
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::AddCpu => "add cpu",
            OpKind::RemoveCpu => "remove cpu",
            OpKind::AddMemory => "add memory",
            OpKind::RemoveMemory => "remove memory",
        })
    }
}

/// Add or remove: participants register one set of order numbers per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Hot-add.
    Add,
    /// Hot-remove.
    Remove,
}

/// Who started a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The VMM's API (the host, in the firmware's seat).
    Host,
    /// The guest (an OSPM-initiated eject, `_OST` source 0x103 or a spontaneous `_EJ0`).
    /// A participant's `publish` need not notify the guest: it asked.
    Guest,
}

/// One device's part of a transaction: what every participant is called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceOp {
    /// The transaction.
    pub tx: TxId,
    /// What happens to the device.
    pub kind: OpKind,
    /// The device.
    pub device: DeviceId,
    /// For memory operations: the slot's place in the hotplug region.
    pub memory: Option<MemoryPlacement>,
    /// Who asked.
    pub origin: Origin,
}

impl DeviceOp {
    /// Add or remove.
    pub fn direction(&self) -> Direction {
        self.kind.direction()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_round_trip_and_mode() {
        let r: Request =
            serde_json::from_str(r#"{"kind":"resize","vcpus":4,"memory":null}"#).unwrap();
        assert_eq!(
            r,
            Request::Resize {
                vcpus: Some(4),
                memory: None,
                best_effort: false
            }
        );
        assert_eq!(r.mode(), BatchMode::AllOrNothing);
        let be = Request::Resize {
            vcpus: None,
            memory: Some(1),
            best_effort: true,
        };
        assert_eq!(be.mode(), BatchMode::BestEffort);
        assert_eq!(
            serde_json::to_string(&Request::AddCpu { id: None }).unwrap(),
            r#"{"kind":"add_cpu","id":null}"#
        );
        assert_eq!(OpKind::RemoveMemory.direction(), Direction::Remove);
        assert_eq!(OpKind::AddCpu.to_string(), "add cpu");
    }
}
