//! Why a request or a machine configuration is refused: precise errors the API maps to
//! HTTP statuses (422 for [`ValidationError`], 429 for [`PlanError::Conflict`]).

use serde::Serialize;

use crate::device::DeviceId;
use crate::ops::TxId;

/// A [`MachineConfig`](crate::MachineConfig) that cannot describe a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `boot_cpus` is 0 or above `max_cpus`.
    #[error("boot vCPUs ({boot_cpus}) must be between 1 and max vCPUs ({max_cpus})")]
    BootCpus {
        /// Configured boot vCPUs.
        boot_cpus: u32,
        /// Configured maximum.
        max_cpus: u32,
    },
    /// `block_size` is 0.
    #[error("the memory block size must not be 0")]
    BlockSize,
    /// The journal capacity is 0.
    #[error("the journal capacity must not be 0")]
    JournalCapacity,
}

/// Why a request cannot be carried out on this machine (the API answers 422 with the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValidationError {
    /// A vCPU id at or beyond the maximum.
    #[error("vCPU {id} is beyond the maximum of {max_cpus} vCPUs")]
    CpuBeyondMax {
        /// Requested id.
        id: u32,
        /// Maximum number of vCPUs.
        max_cpus: u32,
    },
    /// vCPU 0 (the bootstrap processor) cannot be removed.
    #[error("vCPU 0 cannot be removed")]
    CpuZeroRemoval,
    /// Removing a vCPU that is not present.
    #[error("vCPU {id} is not present")]
    CpuAbsent {
        /// Requested id.
        id: u32,
    },
    /// Adding a vCPU that is already present.
    #[error("vCPU {id} is already present")]
    CpuAlreadyPresent {
        /// Requested id.
        id: u32,
    },
    /// Every vCPU id is present or in flight.
    #[error("no free vCPU id: all {max_cpus} are present or being added")]
    NoFreeCpu {
        /// Maximum number of vCPUs.
        max_cpus: u32,
    },
    /// A resize to more vCPUs than the maximum.
    #[error("cannot resize to {requested} vCPUs: the maximum is {max_cpus}")]
    VcpusBeyondMax {
        /// Requested count.
        requested: u32,
        /// Maximum number of vCPUs.
        max_cpus: u32,
    },
    /// A resize to 0 vCPUs.
    #[error("cannot resize to 0 vCPUs")]
    ZeroVcpus,
    /// A resize to 0 bytes of RAM.
    #[error("cannot resize to 0 bytes of memory")]
    ZeroMemory,
    /// Adding 0 bytes.
    #[error("memory size must not be 0")]
    MemorySizeZero,
    /// A size that is not a multiple of the block size.
    #[error("memory size {size:#x} is not a multiple of the block size {block_size:#x}")]
    MemoryNotBlockAligned {
        /// Size (for a resize: the difference to the current size).
        size: u64,
        /// Block size.
        block_size: u64,
    },
    /// No gap of the hotplug region is large enough.
    #[error(
        "{size:#x} bytes do not fit in the hotplug region: largest free range is {largest_free:#x}"
    )]
    BeyondRegion {
        /// Requested size.
        size: u64,
        /// Largest contiguous free range of the hotplug region.
        largest_free: u64,
    },
    /// A resize to more RAM than boot memory plus the hotplug region.
    #[error("cannot resize to {requested:#x} bytes of memory: the maximum is {max:#x}")]
    MemoryBeyondMax {
        /// Requested total.
        requested: u64,
        /// Boot memory plus the hotplug region.
        max: u64,
    },
    /// A resize below the boot memory.
    #[error("cannot resize to {requested:#x} bytes: boot memory alone is {boot_memory:#x}")]
    MemoryBelowBoot {
        /// Requested total.
        requested: u64,
        /// Boot memory.
        boot_memory: u64,
    },
    /// Removing whole slots (most recent first) cannot reach the requested total.
    #[error(
        "cannot shrink to {requested:#x} bytes by removing whole slots: nearest is {nearest:#x}"
    )]
    MemoryShrinkNotExact {
        /// Requested total.
        requested: u64,
        /// Total after removing the slots that fit.
        nearest: u64,
    },
    /// Every hotplug slot is used or in flight.
    #[error("no free memory slot: all {slots} are used")]
    NoFreeSlot {
        /// Number of hotplug slots.
        slots: u32,
    },
    /// A slot number beyond the hotplug slots.
    #[error("memory slot {slot} does not exist: slots are 1 to {slots}")]
    UnknownSlot {
        /// Requested slot.
        slot: u32,
        /// Number of hotplug slots.
        slots: u32,
    },
    /// Removing an empty slot.
    #[error("memory slot {slot} is empty")]
    SlotEmpty {
        /// Requested slot.
        slot: u32,
    },
    /// Removing slot 0, the boot memory.
    #[error("memory slot 0 is the boot memory and cannot be removed")]
    BootMemory,
    /// A resize that names neither vCPUs nor memory.
    #[error("a resize needs a vCPU count or a memory size")]
    EmptyResize,
}

/// Why planning a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The request is invalid for this machine.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A device it needs is in flight in another transaction.
    #[error("{device} is busy: {tx} is in flight")]
    Conflict {
        /// The busy device.
        device: DeviceId,
        /// The transaction that holds it.
        tx: TxId,
    },
}
