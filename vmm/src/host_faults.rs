//! Host-side fault injection for tests: the host calls a hotplug makes (mapping memory, KVM's
//! memory-slot and vCPU calls, starting a vCPU thread) can be made to fail, so that tests show
//! what a transaction does when the host, not the guest, fails it.
//!
//! A plan is a list of calls, each failing once, the first time it is made after the VM starts
//! (`--inject-fault CALL`, repeatable, hidden from `--help`: it exists for tests). Without one,
//! every check is a lock of an empty list.

use std::io;
use std::sync::Mutex;

/// A host call a hotplug makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostCall {
    /// Mapping a memory slot's backing (`mmap`).
    Mmap,
    /// Registering a memory slot with KVM (`KVM_SET_USER_MEMORY_REGION`).
    KvmMemorySlotAdd,
    /// Deleting a memory slot from KVM (`KVM_SET_USER_MEMORY_REGION`, size 0).
    KvmMemorySlotDelete,
    /// Creating a vCPU (`KVM_CREATE_VCPU`) for a CPU that has no spare.
    KvmCreateVcpu,
    /// Starting a vCPU's thread.
    VcpuThreadSpawn,
}

impl HostCall {
    /// The name used on the command line and in errors.
    pub fn name(self) -> &'static str {
        match self {
            HostCall::Mmap => "mmap",
            HostCall::KvmMemorySlotAdd => "kvm-memory-slot-add",
            HostCall::KvmMemorySlotDelete => "kvm-memory-slot-delete",
            HostCall::KvmCreateVcpu => "kvm-create-vcpu",
            HostCall::VcpuThreadSpawn => "vcpu-thread-spawn",
        }
    }
}

/// The calls still to fail.
#[derive(Debug, Default)]
pub struct HostFaults {
    pending: Mutex<Vec<HostCall>>,
}

impl HostFaults {
    /// A plan failing each of `calls` once (a call listed twice fails twice).
    pub fn new(calls: &[HostCall]) -> Self {
        HostFaults {
            pending: Mutex::new(calls.to_vec()),
        }
    }

    /// Before making `call`: an error if the plan says it fails now (that entry is used up).
    pub fn check(&self, call: HostCall) -> io::Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.iter().position(|&c| c == call) {
            Some(i) => {
                pending.remove(i);
                tracing::warn!(call = call.name(), "injected host fault");
                Err(io::Error::other(format!("injected fault: {}", call.name())))
            }
            None => Ok(()),
        }
    }

    /// Calls the plan has not failed yet.
    pub fn pending(&self) -> Vec<HostCall> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_planned_call_fails_once_in_turn() {
        let faults = HostFaults::new(&[HostCall::Mmap, HostCall::Mmap, HostCall::KvmCreateVcpu]);
        assert!(faults.check(HostCall::KvmMemorySlotAdd).is_ok());
        let e = faults.check(HostCall::Mmap).unwrap_err();
        assert_eq!(e.to_string(), "injected fault: mmap");
        assert!(faults.check(HostCall::Mmap).is_err());
        assert!(faults.check(HostCall::Mmap).is_ok());
        assert_eq!(faults.pending(), [HostCall::KvmCreateVcpu]);
        assert!(HostFaults::default()
            .check(HostCall::VcpuThreadSpawn)
            .is_ok());
    }
}
