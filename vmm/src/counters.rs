//! Hotplug counters per device, for `vm.counters`: cumulative over the VM's life, unlike the
//! journal, which keeps only the latest transactions.
//!
//! The shape is Cloud Hypervisor's (`{"device": {"counter": n}}`), so `ch-remote counters`
//! prints it as it prints Cloud Hypervisor's own.

use std::collections::BTreeMap;

use hotplug::{Completion, DeviceId, DeviceResult, GuestEventKind, TxRecord};

/// Counter name -> value, for one device.
pub type DeviceCounters = BTreeMap<&'static str, u64>;

/// Cumulative hotplug counters, keyed by device name (`cpu3`, `memory_slot2`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HotplugCounters {
    devices: BTreeMap<String, DeviceCounters>,
}

/// The counter key of a device: `cpu3`, `memory_slot2`.
pub fn device_key(device: DeviceId) -> String {
    match device {
        DeviceId::Cpu(c) => format!("cpu{}", c.0),
        DeviceId::MemorySlot(s) => format!("memory_slot{}", s.0),
    }
}

impl HotplugCounters {
    fn bump(&mut self, device: DeviceId, counter: &'static str) {
        *self
            .devices
            .entry(device_key(device))
            .or_default()
            .entry(counter)
            .or_default() += 1;
    }

    /// Counts a finished transaction: per device, the transaction, its result and the
    /// guest's `_OST` verdicts and `_EJ0`s (from `record`, the journal's copy).
    pub fn count_completion(&mut self, done: &Completion, record: Option<&TxRecord>) {
        for device in &done.outcome.devices {
            self.bump(device.device, "transactions");
            let result = match device.result {
                DeviceResult::Committed => "committed",
                DeviceResult::RolledBack { .. } => "rolled_back",
                DeviceResult::Rejected { .. } => "rejected",
            };
            self.bump(device.device, result);
        }
        for event in record
            .map(|r| r.guest_events.as_slice())
            .unwrap_or_default()
        {
            match event.event {
                GuestEventKind::Ost { ost } if ost.status.is_success() => {
                    self.bump(event.device, "ost_success")
                }
                GuestEventKind::Ost { ost } if ost.status.is_pending() => {
                    self.bump(event.device, "ost_pending")
                }
                GuestEventKind::Ost { .. } => self.bump(event.device, "ost_failure"),
                GuestEventKind::Eject => self.bump(event.device, "guest_ejects"),
                GuestEventKind::StatusRead => {}
            }
        }
    }

    /// Counts a guest-initiated eject that the policy refused.
    pub fn count_refused_eject(&mut self, device: DeviceId) {
        self.bump(device, "guest_ejects_refused");
    }

    /// The counters as `vm.counters` shows them, with `extra` entries (per controller)
    /// added.
    pub fn to_json(&self, extra: &[(&str, DeviceCounters)]) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, counters) in &self.devices {
            map.insert(name.clone(), serde_json::json!(counters));
        }
        for (name, counters) in extra {
            map.insert((*name).to_string(), serde_json::json!(counters));
        }
        serde_json::Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotplug::{DeviceOutcome, FailureReason, OpKind, TxId, TxOutcome, TxStatus};

    fn completion(device: DeviceId, result: DeviceResult) -> Completion {
        Completion {
            id: TxId(1),
            outcome: TxOutcome {
                status: TxStatus::Committed,
                devices: vec![DeviceOutcome {
                    device,
                    operation: OpKind::AddCpu,
                    result,
                    guest_touched: true,
                    step_errors: Vec::new(),
                    notes: Vec::new(),
                    dropped_notes: 0,
                }],
            },
        }
    }

    #[test]
    fn counts_accumulate_per_device_and_result() {
        let mut c = HotplugCounters::default();
        c.count_completion(&completion(DeviceId::cpu(1), DeviceResult::Committed), None);
        c.count_completion(&completion(DeviceId::cpu(1), DeviceResult::Committed), None);
        let timeout = FailureReason::Timeout {
            guest_touched: false,
            last_ost: None,
        };
        c.count_completion(
            &completion(
                DeviceId::memory_slot(2),
                DeviceResult::RolledBack { reason: timeout },
            ),
            None,
        );
        c.count_refused_eject(DeviceId::cpu(0));
        let json = c.to_json(&[("cpu_hotplug_controller", [("register_accesses", 7)].into())]);
        assert_eq!(json["cpu1"]["transactions"], 2);
        assert_eq!(json["cpu1"]["committed"], 2);
        assert_eq!(json["memory_slot2"]["rolled_back"], 1);
        assert_eq!(json["cpu0"]["guest_ejects_refused"], 1);
        assert_eq!(json["cpu_hotplug_controller"]["register_accesses"], 7);
    }
}
