//! Engine configuration: deadlines per operation kind, the guest-eject policy, the journal size.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ops::OpKind;

/// How long the guest has to give its verdict, per operation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    /// vCPU add (Linux answers `_OST(1,0)` in tens of milliseconds).
    pub add_cpu: Duration,
    /// vCPU remove (includes the guest offlining the vCPU).
    pub remove_cpu: Duration,
    /// Memory add.
    pub add_memory: Duration,
    /// Memory remove (offlining memory means migrating pages: slow).
    pub remove_memory: Duration,
}

impl Deadlines {
    /// The deadline of one kind.
    pub fn for_kind(&self, kind: OpKind) -> Duration {
        match kind {
            OpKind::AddCpu => self.add_cpu,
            OpKind::RemoveCpu => self.remove_cpu,
            OpKind::AddMemory => self.add_memory,
            OpKind::RemoveMemory => self.remove_memory,
        }
    }
}

impl Default for Deadlines {
    /// 5 s add vCPU, 10 s remove vCPU, 10 s add memory, 30 s remove memory.
    fn default() -> Self {
        Deadlines {
            add_cpu: Duration::from_secs(5),
            remove_cpu: Duration::from_secs(10),
            add_memory: Duration::from_secs(10),
            remove_memory: Duration::from_secs(30),
        }
    }
}

/// What to do when the guest ejects a device by itself (`_OST` source 0x103, or `_EJ0`
/// without a removal in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestEjectPolicy {
    /// The eject becomes a removal transaction that commits on `_EJ0`.
    Allow,
    /// The eject is refused: the device stays (the default: the host owns the VM's shape).
    #[default]
    Deny,
}

/// Engine configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Verdict deadlines.
    pub deadlines: Deadlines,
    /// Guest-initiated ejects.
    pub guest_eject: GuestEjectPolicy,
    /// Finished host-initiated transactions kept in the journal. Guest-initiated ones have
    /// their own, smaller quota on top ([`MAX_GUEST_RECORDS`](crate::MAX_GUEST_RECORDS)), so
    /// that a guest cannot evict the host's records.
    pub journal_capacity: usize,
}

impl Default for EngineConfig {
    /// Default deadlines, `deny`, 256 host journal records (plus 32 guest ones).
    fn default() -> Self {
        EngineConfig {
            deadlines: Deadlines::default(),
            guest_eject: GuestEjectPolicy::Deny,
            journal_capacity: 256,
        }
    }
}
