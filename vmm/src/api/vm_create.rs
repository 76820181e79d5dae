//! `vm.create`'s body: Cloud Hypervisor's `VmConfig`, read strictly.
//!
//! plugvm implements the payload, `cpus` (boot and max vCPUs), `memory` (boot RAM and an ACPI
//! hotplug region) and the serial port. Every other field of Cloud Hypervisor's schema is
//! accepted only when absent, `null`, or equal to Cloud Hypervisor's own default (its
//! clients send some defaults explicitly); anything else is refused, naming the field, so
//! that nothing a client asked for is silently dropped. Unknown fields are refused too.
//!
//! The numbers then go through the command line's own parsers ([`CpusConfig::parse`],
//! [`MemoryConfig::parse`], the command-line check), so that both launches share one
//! validation; the host checks follow in [`VmConfig::validate`].

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::config::{self, CpusConfig, MemoryConfig, PayloadConfig, SerialConfig, VmConfig};

/// A field plugvm does not implement, with Cloud Hypervisor's default for it (`Null` when
/// its default is absence), and the one other value that describes what plugvm does anyway
/// (so that `vm.info`'s `config` can be sent back to `vm.create`).
struct Unsupported {
    name: &'static str,
    default: fn() -> Value,
    also: Option<fn() -> Value>,
}

const fn field(name: &'static str, default: fn() -> Value) -> Unsupported {
    Unsupported {
        name,
        default,
        also: None,
    }
}

/// A field whose default Cloud Hypervisor and plugvm's own behaviour differ on: both values
/// are accepted, and `vm.info` reports `what_plugvm_does`.
const fn either(
    name: &'static str,
    default: fn() -> Value,
    what_plugvm_does: fn() -> Value,
) -> Unsupported {
    Unsupported {
        name,
        default,
        also: Some(what_plugvm_does),
    }
}

fn truthy() -> Value {
    json!(true)
}

fn null() -> Value {
    Value::Null
}

fn falsy() -> Value {
    json!(false)
}

/// Top-level `VmConfig` fields other than those plugvm implements.
static TOP_LEVEL: &[Unsupported] = &[
    field("rate_limit_groups", null),
    field("disks", null),
    field("net", null),
    field(
        "rng",
        || json!({ "src": "/dev/urandom", "iommu": false, "pci_segment": 0 }),
    ),
    field("balloon", null),
    field("generic_vhost_user", null),
    field("fs", null),
    field("pmem", null),
    field("debug_console", || json!({ "mode": "Off", "iobase": 233 })),
    field("devices", null),
    field("user_devices", null),
    field("vdpa", null),
    field("vsock", null),
    // plugvm always has a pvpanic device.
    either("pvpanic", falsy, truthy),
    field("iommu", falsy),
    field("numa", null),
    field("watchdog", falsy),
    field("rtc", null),
    field("pci_segments", null),
    field("platform", null),
    field("tpm", null),
    field("preserved_fds", null),
    field("landlock_enable", falsy),
    field("landlock_rules", null),
];

/// `cpus` fields other than `boot_vcpus`, `max_vcpus` and `topology`.
static CPUS: &[Unsupported] = &[
    field("kvm_hyperv", falsy),
    field("max_phys_bits", || json!(46)),
    field("affinity", null),
    field("features", || json!({ "amx": false })),
    field("nested", || json!(true)),
    field("core_scheduling", || json!("Vm")),
    field("profile", || json!("Host")),
];

/// `memory` fields other than `size`, `hotplug_size` and `hotplug_method`.
static MEMORY: &[Unsupported] = &[
    field("hotplugged_size", null),
    field("mergeable", falsy),
    field("shared", falsy),
    field("hugepage_size", null),
    field("prefault", falsy),
    field("reserve", falsy),
    field("zones", null),
];

/// `payload` fields other than `kernel`, `initramfs` and `cmdline`.
static PAYLOAD: &[Unsupported] = &[
    field("firmware", null),
    field("igvm", null),
    field("host_data", null),
];

/// Whether `value` is `null` or matches `default`: for objects, every non-null member
/// matches the default's member of the same name.
fn is_default(value: &Value, default: &Value) -> bool {
    match (value, default) {
        (Value::Null, _) => true,
        (Value::Object(given), Value::Object(default)) => given
            .iter()
            .all(|(k, v)| v.is_null() || default.get(k).is_some_and(|d| is_default(v, d))),
        (v, d) => v == d,
    }
}

/// Checks the members of `object` (at `path`): `known` are read by the caller, `unsupported`
/// must keep their defaults, anything else is unknown.
fn check_members(
    path: &str,
    object: &Map<String, Value>,
    known: &[&str],
    unsupported: &[Unsupported],
) -> Result<(), String> {
    for (name, value) in object {
        if known.contains(&name.as_str()) {
            continue;
        }
        let at = format!("{path}{name}");
        match unsupported.iter().find(|u| u.name == name) {
            Some(u) if is_default(value, &(u.default)()) => {}
            Some(u) if u.also.is_some_and(|also| is_default(value, &also())) => {}
            Some(_) => {
                return Err(format!(
                    "vm.create: {at} is not supported by plugvm (only absent, null or Cloud Hypervisor's default is accepted)."
                ))
            }
            None => return Err(format!("vm.create: unknown field {at}.")),
        }
    }
    Ok(())
}

fn object<'a>(path: &str, value: &'a Value) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("vm.create: {path} must be a JSON object."))
}

fn unsigned(path: &str, object: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            format!("vm.create: {path}{name} must be a non-negative integer, got {v}.")
        }),
    }
}

fn text<'a>(
    path: &str,
    object: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(format!(
            "vm.create: {path}{name} must be a string, got {v}."
        )),
    }
}

fn cpus(value: Option<&Value>) -> Result<CpusConfig, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(CpusConfig { boot: 1, max: 1 });
    };
    let cpus = object("cpus", value)?;
    check_members(
        "cpus.",
        cpus,
        &["boot_vcpus", "max_vcpus", "topology"],
        CPUS,
    )?;
    if let Some(topology) = cpus.get("topology").filter(|t| !t.is_null()) {
        topology_is_flat(topology)?;
    }
    let boot = unsigned("cpus.", cpus, "boot_vcpus")?.unwrap_or(1);
    let max = unsigned("cpus.", cpus, "max_vcpus")?.unwrap_or(boot);
    CpusConfig::parse(&format!("boot={boot},max={max}"))
        .map_err(|e| format!("vm.create: cpus: {e}."))
}

/// plugvm's vCPUs are single-threaded cores of one die in one package (what Kata Containers
/// asks for, with `cores_per_die` = max vCPUs); any other topology is refused.
fn topology_is_flat(topology: &Value) -> Result<(), String> {
    let topology = object("cpus.topology", topology)?;
    check_members(
        "cpus.topology.",
        topology,
        &[
            "threads_per_core",
            "cores_per_die",
            "dies_per_package",
            "packages",
        ],
        &[],
    )?;
    for name in ["threads_per_core", "dies_per_package", "packages"] {
        match unsigned("cpus.topology.", topology, name)? {
            None | Some(1) => {}
            Some(n) => {
                return Err(format!(
                    "vm.create: cpus.topology.{name} {n} is not supported; plugvm's vCPUs are single-threaded cores of one die in one package (1)."
                ))
            }
        }
    }
    Ok(())
}

fn memory(value: Option<&Value>) -> Result<MemoryConfig, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return MemoryConfig::parse("").map_err(|e| format!("vm.create: memory: {e}."));
    };
    let memory = object("memory", value)?;
    check_members(
        "memory.",
        memory,
        &["size", "hotplug_size", "hotplug_method", "thp", "hugepages"],
        MEMORY,
    )?;
    match text("memory.", memory, "hotplug_method")? {
        None | Some("Acpi") => {}
        Some(other) => {
            return Err(format!(
                "vm.create: memory.hotplug_method {other:?} is not supported; plugvm hotplugs memory through ACPI (\"Acpi\")."
            ))
        }
    }
    let mut spec = Vec::new();
    if let Some(size) = unsigned("memory.", memory, "size")? {
        spec.push(format!("size={size}"));
    }
    if let Some(hotplug) = unsigned("memory.", memory, "hotplug_size")?.filter(|h| *h > 0) {
        spec.push(format!("hotplug_size={hotplug}"));
    }
    for name in ["thp", "hugepages"] {
        match memory.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(on)) => spec.push(format!("{name}={on}")),
            Some(v) => {
                return Err(format!(
                    "vm.create: memory.{name} must be true or false, got {v}."
                ))
            }
        }
    }
    MemoryConfig::parse(&spec.join(",")).map_err(|e| format!("vm.create: memory: {e}."))
}

fn payload(value: Option<&Value>) -> Result<PayloadConfig, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Err("vm.create: payload.kernel is required.".to_string());
    };
    let payload = object("payload", value)?;
    check_members(
        "payload.",
        payload,
        &["kernel", "initramfs", "cmdline"],
        PAYLOAD,
    )?;
    let kernel = text("payload.", payload, "kernel")?
        .ok_or("vm.create: payload.kernel is required (plugvm boots a kernel, not firmware).")?;
    let initramfs = text("payload.", payload, "initramfs")?.map(PathBuf::from);
    let cmdline = text("payload.", payload, "cmdline")?
        .unwrap_or(config::DEFAULT_CMDLINE)
        .to_string();
    config::check_cmdline(&cmdline).map_err(|e| {
        let e = e.to_string();
        format!(
            "vm.create: payload.cmdline: {}.",
            e.trim_start_matches("plugvm: --cmdline: ")
        )
    })?;
    Ok(PayloadConfig {
        kernel: PathBuf::from(kernel),
        initramfs,
        cmdline,
    })
}

/// `serial` (or `console`, at `path`) as a `ConsoleConfig`: its mode and its path.
fn console_mode<'a>(path: &str, value: &'a Value) -> Result<(&'a str, Option<&'a str>), String> {
    let console = object(path, value)?;
    let at = format!("{path}.");
    check_members(
        &at,
        console,
        &["mode", "file", "socket"],
        &[
            field("iommu", falsy),
            field("id", null),
            field("pci_segment", || json!(0)),
            field("pci_device_id", null),
        ],
    )?;
    let mode =
        text(&at, console, "mode")?.ok_or_else(|| format!("vm.create: {at}mode is required."))?;
    let file = text(&at, console, "file")?;
    let socket = text(&at, console, "socket")?;
    Ok((mode, file.or(socket)))
}

fn serial(value: Option<&Value>) -> Result<SerialConfig, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        // Cloud Hypervisor's default serial port is Null.
        return Ok(SerialConfig::Null);
    };
    let (mode, path) = console_mode("serial", value)?;
    let console = object("serial", value)?;
    let need = |key: &str| -> Result<PathBuf, String> {
        text("serial.", console, key)?
            .map(PathBuf::from)
            .ok_or_else(|| format!("vm.create: serial.mode {mode} needs serial.{key}."))
    };
    let config =
        match mode {
            "Tty" => SerialConfig::Stdio,
            "Null" | "Off" => SerialConfig::Null,
            "File" => SerialConfig::File(need("file")?),
            "Socket" => {
                let socket = need("socket")?;
                config::check_socket_path(&socket)
                    .map_err(|e| format!("vm.create: serial.socket: {e}."))?;
                SerialConfig::Socket(socket)
            }
            "Pty" => return Err(
                "vm.create: serial.mode Pty is not supported; use Tty, File, Socket, Null or Off."
                    .to_string(),
            ),
            other => return Err(format!("vm.create: unknown serial.mode {other:?}.")),
        };
    if path.is_some() && !matches!(mode, "File" | "Socket") {
        return Err(format!(
            "vm.create: serial.mode {mode} takes no file or socket."
        ));
    }
    Ok(config)
}

/// plugvm has no virtio console: `console` may only be off, or Cloud Hypervisor's default
/// (`Tty`, which clients send without meaning to ask for a second console).
fn console(value: Option<&Value>) -> Result<(), String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    match console_mode("console", value)? {
        ("Off" | "Null", None) | ("Tty", None) => Ok(()),
        (mode, _) => Err(format!(
            "vm.create: console.mode {mode} is not supported (plugvm has no virtio console; use serial, and console Off)."
        )),
    }
}

/// The top-level field names the body may have (for the OpenAPI check).
pub(crate) fn field_names() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = vec!["cpus", "memory", "payload", "serial", "console"];
        names.extend(TOP_LEVEL.iter().map(|u| u.name));
        names
    })
}

/// Reads Cloud Hypervisor's `VmConfig` JSON into plugvm's [`VmConfig`]; the error is one
/// sentence naming the field. The API socket, the guest-eject policy and the kernel cache are
/// the VMM's, not the body's: the caller sets them.
pub(crate) fn parse(body: &[u8]) -> Result<VmConfig, String> {
    let value: Value = super::bodies::parse("vm.create", body)?;
    let top = object("the body", &value)?;
    check_members(
        "",
        top,
        &["cpus", "memory", "payload", "serial", "console"],
        TOP_LEVEL,
    )?;
    let config = VmConfig {
        cpus: cpus(top.get("cpus"))?,
        memory: memory(top.get("memory"))?,
        payload: Some(payload(top.get("payload"))?),
        serial: serial(top.get("serial"))?,
        api_socket: None,
        guest_eject: hotplug::GuestEjectPolicy::default(),
        event_monitor: None,
        kernel_cache: crate::config::KernelCacheConfig::Default,
        inject_faults: Vec::new(),
    };
    console(top.get("console"))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: Value) -> Result<VmConfig, String> {
        parse(body.to_string().as_bytes())
    }

    fn minimal() -> Value {
        json!({
            "cpus": {"boot_vcpus": 1, "max_vcpus": 4},
            "memory": {"size": 536870912u64, "hotplug_size": 1073741824u64, "hotplug_method": "Acpi"},
            "payload": {"kernel": "/k", "initramfs": "/i", "cmdline": "console=ttyS0"},
            "serial": {"mode": "Tty"},
            "console": {"mode": "Off"}
        })
    }

    #[test]
    fn reads_what_plugvm_implements() {
        let c = create(minimal()).unwrap();
        assert_eq!(c.cpus, CpusConfig { boot: 1, max: 4 });
        assert_eq!(c.memory.size, 512 << 20);
        assert_eq!(c.memory.hotplug_size, 1 << 30);
        assert_eq!(
            c.memory.hotplug_slots,
            MemoryConfig::parse("hotplug_size=1G")
                .unwrap()
                .hotplug_slots
        );
        let p = c.payload.unwrap();
        assert_eq!(p.kernel, PathBuf::from("/k"));
        assert_eq!(p.initramfs, Some(PathBuf::from("/i")));
        assert_eq!(c.serial, SerialConfig::Stdio);
    }

    #[test]
    fn cloud_hypervisor_defaults_and_nulls_are_accepted() {
        let mut body = minimal();
        body["rng"] = json!({"src": "/dev/urandom"});
        body["disks"] = Value::Null;
        body["pvpanic"] = json!(false);
        body["cpus"]["kvm_hyperv"] = json!(false);
        body["memory"]["thp"] = json!(true);
        body["memory"]["shared"] = json!(false);
        body["console"] = json!({"mode": "Tty"});
        body["debug_console"] = json!({"mode": "Off", "iobase": 233});
        body["serial"]["iommu"] = json!(false);
        body["cpus"]["topology"] = json!({"cores_per_die": 4, "dies_per_package": 1, "packages": 1, "threads_per_core": 1});
        assert!(create(body).is_ok());
    }

    #[test]
    fn memory_backing_is_read() {
        let c = create(minimal()).unwrap();
        assert!(c.memory.thp && !c.memory.hugepages, "{:?}", c.memory);
        let mut body = minimal();
        body["memory"]["thp"] = json!(false);
        body["memory"]["hugepages"] = json!(true);
        let c = create(body).unwrap();
        assert!(!c.memory.thp && c.memory.hugepages, "{:?}", c.memory);
        let mut body = minimal();
        body["memory"]["thp"] = json!("yes");
        assert_eq!(
            create(body).unwrap_err(),
            "vm.create: memory.thp must be true or false, got \"yes\"."
        );
    }

    #[test]
    fn unsupported_unknown_and_contradictory_fields_are_named() {
        let cases = [
            ("disks", json!([{"path": "/d"}]), "disks is not supported"),
            ("net", json!([{}]), "net is not supported"),
            ("bogus", json!(1), "unknown field bogus"),
        ];
        for (name, value, want) in cases {
            let mut body = minimal();
            body[name] = value;
            let e = create(body).unwrap_err();
            assert!(e.contains(want), "{name}: {e}");
        }
        let mut body = minimal();
        body["cpus"]["topology"] = json!({"threads_per_core": 2});
        assert!(create(body).unwrap_err().contains("threads_per_core"));
        let mut body = minimal();
        body["serial"]["iommu"] = json!(true);
        assert!(create(body).unwrap_err().contains("serial.iommu"));
        let mut body = minimal();
        body["memory"]["hotplug_method"] = json!("VirtioMem");
        assert!(create(body).unwrap_err().contains("hotplug_method"));
        let mut body = minimal();
        body["memory"]["shared"] = json!(true);
        assert!(create(body).unwrap_err().contains("memory.shared"));
        let mut body = minimal();
        body["cpus"]["boot_vcpus"] = json!(5);
        assert!(create(body).unwrap_err().contains("cpus"));
        let mut body = minimal();
        body["cpus"]["bogus"] = json!(1);
        assert!(create(body)
            .unwrap_err()
            .contains("unknown field cpus.bogus"));
        let mut body = minimal();
        body["cpus"]["boot_vcpus"] = json!(0);
        assert!(create(body).is_err());
        let mut body = minimal();
        body["memory"]["size"] = json!(1000);
        assert!(create(body).unwrap_err().contains("memory"));
        let mut body = minimal();
        body["payload"] = json!({"firmware": "/fw"});
        assert!(create(body).unwrap_err().contains("payload.firmware"));
        let mut body = minimal();
        body["payload"]["cmdline"] = json!("a\nb");
        assert!(create(body).unwrap_err().contains("cmdline"));
        let mut body = minimal();
        body["serial"] = json!({"mode": "Pty"});
        assert!(create(body).unwrap_err().contains("Pty"));
        let mut body = minimal();
        body["serial"] = json!({"mode": "File"});
        assert!(create(body).unwrap_err().contains("serial.file"));
        let mut body = minimal();
        body["console"] = json!({"mode": "Socket", "socket": "/s"});
        assert!(create(body).unwrap_err().contains("console"));
        assert!(parse(b"{not json").unwrap_err().contains("vm.create"));
        assert!(parse(b"").is_err());
    }

    #[test]
    fn vm_infos_config_goes_back_to_vm_create() {
        let config = create(minimal()).unwrap();
        let info = crate::info::created(&config);
        let again = create(info["config"].clone()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn serial_modes_map_to_plugvms() {
        for (serial, want) in [
            (json!({"mode": "Null"}), SerialConfig::Null),
            (json!({"mode": "Off"}), SerialConfig::Null),
            (
                json!({"mode": "File", "file": "/f"}),
                SerialConfig::File("/f".into()),
            ),
            (
                json!({"mode": "Socket", "socket": "/s"}),
                SerialConfig::Socket("/s".into()),
            ),
            (Value::Null, SerialConfig::Null),
        ] {
            let mut body = minimal();
            body["serial"] = serial;
            assert_eq!(create(body).unwrap().serial, want);
        }
    }
}
