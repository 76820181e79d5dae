//! The `vm.info` document, in Cloud Hypervisor's `VmInfo` shape: `config`, `state` and
//! `memory_actual_size` as its clients (ch-remote, Kata Containers' generated client) decode
//! them, plus plugvm's own details under `plugvm`, which those clients ignore.
//!
//! `config` describes what the guest has now: `cpus.boot_vcpus` counts the vCPUs present and
//! `memory.size` the RAM present, as Cloud Hypervisor's own answer does after a resize.

use hotplug::{DeviceId, Machine, MemoryPlacement, Presence};
use serde_json::{json, Value};

use crate::config::{SerialConfig, VmConfig};

/// The VM's state, spelled as Cloud Hypervisor's `VmState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Configured by `vm.create`, not booted (or shut down).
    Created,
    /// Booted.
    Running,
    /// Booted, every vCPU paused (`vm.pause`).
    Paused,
}

impl VmState {
    /// Cloud Hypervisor's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
        }
    }
}

/// What is present in the guest now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Present {
    /// vCPUs present.
    pub vcpus: u32,
    /// RAM present, in bytes (boot RAM plus plugged slots).
    pub ram: u64,
}

/// What `vm.info` says of the hotpluggable devices, read from the engine's machine alone: the
/// one authority on device state. The vCPU threads and the memory backing are reported beside
/// it as the host's details, never as what is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// Each possible vCPU's state, by id.
    pub cpus: Vec<&'static str>,
    /// Each hotplug slot's state and place in the hotplug region, slot 1 first.
    pub slots: Vec<(&'static str, Option<MemoryPlacement>)>,
    /// What is present: every device that is not absent (a device being added or removed
    /// counts, as the guest may already or still use it).
    pub present: Present,
}

impl DeviceView {
    /// The view of `machine`.
    pub fn of(machine: &Machine) -> Self {
        let config = machine.config();
        let cpus: Vec<&'static str> = (0..config.max_cpus)
            .map(|id| presence_name(machine.presence(DeviceId::cpu(id))))
            .collect();
        let slots: Vec<(&'static str, Option<MemoryPlacement>)> = machine
            .slots()
            .map(|(_, s)| (presence_name(Some(s.presence)), s.placement))
            .collect();
        let vcpus = cpus.iter().filter(|s| **s != ABSENT).count();
        let plugged: u64 = slots
            .iter()
            .filter(|(state, _)| *state != ABSENT)
            .filter_map(|(_, placement)| placement.map(|p| p.size))
            .sum();
        DeviceView {
            present: Present {
                vcpus: u32::try_from(vcpus).unwrap_or(u32::MAX),
                ram: config.boot_memory.saturating_add(plugged),
            },
            cpus,
            slots,
        }
    }
}

const ABSENT: &str = "absent";

/// A device's state as `vm.info` spells it.
fn presence_name(presence: Option<Presence>) -> &'static str {
    match presence {
        Some(Presence::Present) => "present",
        Some(Presence::Adding(_)) => "adding",
        Some(Presence::Removing(_)) => "removing",
        Some(Presence::Absent) | None => ABSENT,
    }
}

/// Cloud Hypervisor's `ConsoleConfig` for the serial port.
fn serial(config: &SerialConfig) -> Value {
    match config {
        SerialConfig::Stdio => json!({ "mode": "Tty" }),
        SerialConfig::Null => json!({ "mode": "Null" }),
        SerialConfig::File(path) => json!({ "mode": "File", "file": path }),
        SerialConfig::Socket(path) => json!({ "mode": "Socket", "socket": path }),
    }
}

/// Cloud Hypervisor's `VmConfig` for `config` with `present` devices.
pub fn ch_config(config: &VmConfig, present: Present) -> Value {
    let mut payload = serde_json::Map::new();
    if let Some(p) = &config.payload {
        payload.insert("kernel".into(), json!(p.kernel));
        if let Some(initramfs) = &p.initramfs {
            payload.insert("initramfs".into(), json!(initramfs));
        }
        payload.insert("cmdline".into(), json!(p.cmdline));
    }
    let mut memory = json!({
        "size": present.ram,
        "mergeable": false,
        "shared": false,
        "hugepages": config.memory.hugepages,
        "prefault": false,
        "thp": config.memory.thp,
    });
    if config.memory.hotplug_size > 0 {
        memory["hotplug_method"] = json!("Acpi");
        memory["hotplug_size"] = json!(config.memory.hotplug_size);
    }
    json!({
        "cpus": { "boot_vcpus": present.vcpus, "max_vcpus": config.cpus.max },
        "memory": memory,
        "payload": payload,
        "serial": serial(&config.serial),
        "console": { "mode": "Off" },
        "iommu": false,
        "pvpanic": true,
        "watchdog": false,
    })
}

/// The whole `vm.info` document.
pub fn document(config: &VmConfig, state: VmState, present: Present, plugvm: Value) -> Value {
    json!({
        "config": ch_config(config, present),
        "state": state.as_str(),
        "memory_actual_size": present.ram,
        "plugvm": plugvm,
    })
}

/// `vm.info` of a VM created and not booted: what it will have at boot.
pub fn created(config: &VmConfig) -> Value {
    let present = Present {
        vcpus: config.cpus.boot,
        ram: config.memory.size,
    };
    document(
        config,
        VmState::Created,
        present,
        json!({ "guest_eject": config.guest_eject }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpusConfig, MemoryConfig, PayloadConfig};

    fn config() -> VmConfig {
        VmConfig {
            cpus: CpusConfig { boot: 1, max: 4 },
            memory: MemoryConfig::parse("size=512M,hotplug_size=1G").unwrap(),
            payload: Some(PayloadConfig {
                kernel: "/k".into(),
                initramfs: None,
                cmdline: "console=ttyS0".into(),
            }),
            serial: SerialConfig::Stdio,
            ..Default::default()
        }
    }

    #[test]
    fn created_has_cloud_hypervisors_required_fields_and_spellings() {
        let info = created(&config());
        assert_eq!(info["state"], "Created");
        assert_eq!(info["memory_actual_size"], 512 << 20);
        assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1);
        assert_eq!(info["config"]["cpus"]["max_vcpus"], 4);
        assert_eq!(info["config"]["memory"]["size"], 512 << 20);
        assert_eq!(info["config"]["memory"]["hotplug_size"], 1u64 << 30);
        assert_eq!(info["config"]["memory"]["hotplug_method"], "Acpi");
        assert_eq!(info["config"]["payload"]["kernel"], "/k");
        assert_eq!(info["config"]["serial"]["mode"], "Tty");
        assert_eq!(info["config"]["console"]["mode"], "Off");
    }

    #[test]
    fn serial_modes_use_cloud_hypervisors_names() {
        let mut c = config();
        for (serial, mode) in [
            (SerialConfig::Null, "Null"),
            (SerialConfig::File("/f".into()), "File"),
            (SerialConfig::Socket("/s".into()), "Socket"),
        ] {
            c.serial = serial;
            assert_eq!(created(&c)["config"]["serial"]["mode"], mode);
        }
    }
}
