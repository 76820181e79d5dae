//! Keeps `resources/openapi.yaml` and the code in step: the routes, their bodies, queries
//! and statuses, and the shapes of the documents the VMM answers with.
//!
//! No YAML crate is needed: the document follows a fixed indentation, which a line scanner
//! reads. Under `paths`: paths at 2, methods (or a path's own `servers:`, for a path outside
//! the API prefix) at 4, an operation's keys (`requestBody`, `responses`) at 6, its response
//! statuses (`'200':`, `default:`) at 8. Under
//! `components`: names (schemas, responses, parameters) at 4, a schema's `properties:` and
//! `required:` at 6 and its property names at 8. Nested objects are schemas of their own,
//! reached by `$ref`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::channel;
use std::time::Duration;

use hotplug::{DeviceId, GuestEvent, Request};
use serde_json::{json, Value};

use super::routing::{Route, ROUTES, TRANSPORT_STATUSES};
use super::{vm_create, ApiResponse, API_PREFIX};
use crate::counters::DeviceCounters;
use crate::hotplug_service::{test_service, GuestObservation, HotplugService};

/// The answer every operation gives for the statuses it does not list.
const TRANSPORT_RESPONSE: &str = "#/components/responses/TransportError";

#[derive(Debug, Default)]
struct Operation {
    schema: Option<String>,
    body_required: Option<bool>,
    wait: bool,
    /// The numeric keys under `responses:`.
    statuses: BTreeSet<u16>,
    /// Where `default:` points, if the operation has one.
    default: Option<String>,
}

#[derive(Debug, Default)]
struct Document {
    server_url: Option<String>,
    /// Path -> the `url` of its own `servers:` (a path outside the API prefix).
    path_servers: BTreeMap<String, String>,
    operations: BTreeMap<(String, String), Operation>,
    /// Schema name -> its property names.
    properties: BTreeMap<String, BTreeSet<String>>,
    /// Schema name -> its `required` list.
    required: BTreeMap<String, BTreeSet<String>>,
    /// Every component defined, as a `$ref` names it (`#/components/schemas/VmInfo`).
    components: BTreeSet<String>,
    /// Every `$ref` target.
    refs: BTreeSet<String>,
    /// Response component name -> its text (the lines below its name, joined).
    responses: BTreeMap<String, String>,
}

/// `[a, b]` -> {"a", "b"}.
fn flow_list(text: &str) -> BTreeSet<String> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn scan(text: &str) -> Document {
    let mut doc = Document::default();
    let (mut section, mut sub) = ("", "");
    let mut path = String::new();
    let mut key: Option<(String, String)> = None;
    let (mut in_body, mut in_responses, mut in_props) = (false, false, false);
    let mut in_path_servers = false;
    let mut name = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(target) = trimmed
            .trim_start_matches("- ")
            .strip_prefix("$ref: '")
            .and_then(|t| t.strip_suffix('\''))
        {
            doc.refs.insert(target.to_string());
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            section = trimmed;
            continue;
        }
        match section {
            "servers:" => {
                if let Some(url) = trimmed.strip_prefix("- url:") {
                    doc.server_url = Some(url.trim().to_string());
                }
            }
            "paths:" => match indent {
                2 => {
                    path = trimmed.trim_end_matches(':').to_string();
                    in_path_servers = false;
                }
                4 if trimmed == "servers:" => {
                    in_path_servers = true;
                    key = None;
                }
                _ if in_path_servers && indent > 4 => {
                    if let Some(url) = trimmed.strip_prefix("- url:") {
                        doc.path_servers
                            .insert(path.clone(), url.trim().to_string());
                    }
                }
                4 => {
                    in_path_servers = false;
                    let method = trimmed.trim_end_matches(':').to_ascii_uppercase();
                    let k = (method, path.clone());
                    doc.operations.insert(k.clone(), Operation::default());
                    key = Some(k);
                    in_body = false;
                    in_responses = false;
                }
                _ => {
                    let Some(op) = key.as_ref().and_then(|k| doc.operations.get_mut(k)) else {
                        continue;
                    };
                    if indent == 6 {
                        in_body = trimmed == "requestBody:";
                        in_responses = trimmed == "responses:";
                    }
                    if trimmed == "- $ref: '#/components/parameters/Wait'" {
                        op.wait = true;
                    }
                    if in_body && indent == 8 {
                        if let Some(v) = trimmed.strip_prefix("required:") {
                            op.body_required = Some(v.trim() == "true");
                        }
                    }
                    if in_responses && indent == 8 {
                        let status = trimmed.trim_end_matches(':').trim_matches('\'');
                        match status.parse::<u16>() {
                            Ok(code) => {
                                op.statuses.insert(code);
                            }
                            Err(_) if status == "default" => op.default = Some(String::new()),
                            Err(_) => panic!("{path}: unexpected response key {trimmed:?}"),
                        }
                    }
                    if in_responses && indent == 10 {
                        if let (Some(default), Some(target)) = (
                            op.default.as_mut().filter(|d| d.is_empty()),
                            trimmed.strip_prefix("$ref: '"),
                        ) {
                            *default = target.trim_end_matches('\'').to_string();
                        }
                    }
                    if let Some(name) = trimmed.strip_prefix("$ref: '#/components/schemas/") {
                        if in_body {
                            op.schema = Some(name.trim_end_matches('\'').to_string());
                        }
                    }
                }
            },
            "components:" => match indent {
                2 => sub = trimmed.trim_end_matches(':'),
                4 => {
                    name = trimmed.trim_end_matches(':').to_string();
                    doc.components.insert(format!("#/components/{sub}/{name}"));
                    if sub == "schemas" {
                        doc.properties.insert(name.clone(), BTreeSet::new());
                    }
                    in_props = false;
                }
                _ if sub == "responses" => {
                    let text = doc.responses.entry(name.clone()).or_default();
                    text.push_str(trimmed);
                    text.push(' ');
                }
                6 if sub == "schemas" => {
                    in_props = trimmed == "properties:";
                    if let Some(list) = trimmed.strip_prefix("required:") {
                        doc.required.insert(name.clone(), flow_list(list));
                    }
                }
                8 if sub == "schemas" && in_props => {
                    if let Some(props) = doc.properties.get_mut(&name) {
                        props.insert(trimmed.trim_end_matches(':').to_string());
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    doc
}

fn document() -> Document {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    scan(&text)
}

/// The member names of a JSON object.
fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

/// The properties of schema `name`.
fn properties<'a>(doc: &'a Document, name: &str) -> &'a BTreeSet<String> {
    doc.properties
        .get(name)
        .unwrap_or_else(|| panic!("no schema {name}"))
}

/// `value` has exactly the properties of schema `name`.
fn assert_shape(doc: &Document, name: &str, value: &Value) {
    assert_eq!(
        properties(doc, name),
        &keys(value),
        "schema {name} (left) and the VMM's document (right) differ: {value}"
    );
}

/// `value` has only properties of schema `name`, and every one it requires.
fn assert_within(doc: &Document, name: &str, value: &Value) {
    let documented = properties(doc, name);
    let found = keys(value);
    assert!(
        found.is_subset(documented),
        "{name} does not document {:?}",
        found.difference(documented).collect::<Vec<_>>()
    );
    let required = doc.required.get(name).cloned().unwrap_or_default();
    assert!(
        required.is_subset(&found),
        "{name} requires {:?}, absent from {value}",
        required.difference(&found).collect::<Vec<_>>()
    );
}

/// The documented operation of `route`, with its (method, path) key.
fn operation<'a>(doc: &'a Document, route: &Route) -> ((String, String), &'a Operation) {
    let key = (route.method.as_str().to_string(), route.path.to_string());
    let Some(op) = doc.operations.get(&key) else {
        panic!("{key:?} is not documented");
    };
    (key, op)
}

#[test]
fn api_openapi_lists_the_same_routes() {
    let doc = document();
    let server = doc.server_url.as_deref().unwrap_or_default();
    assert!(server.ends_with(API_PREFIX), "server url {server:?}");
    // A route at the socket's root documents the server without the prefix as its own.
    let root = server.strip_suffix(API_PREFIX).unwrap_or_default();
    for route in ROUTES {
        let own = doc.path_servers.get(route.path).map(String::as_str);
        let want = route.root.then_some(root);
        assert_eq!(own, want, "{}: the path's own servers url", route.path);
    }
    assert!(
        doc.path_servers
            .keys()
            .all(|p| ROUTES.iter().any(|r| r.path == p)),
        "{:?}",
        doc.path_servers
    );
    let documented: BTreeSet<_> = doc.operations.keys().cloned().collect();
    let served: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "openapi.yaml (left) and ROUTES (right) differ"
    );
}

#[test]
fn api_openapi_bodies_and_queries_match_the_code() {
    let doc = document();
    for route in ROUTES {
        let (key, op) = operation(&doc, route);
        assert_eq!(op.wait, route.wait, "{key:?}: ?wait parameter");
        match route.body {
            None => assert!(
                op.schema.is_none(),
                "{key:?} documents a body it does not take"
            ),
            Some(body) => {
                assert_eq!(
                    op.schema.as_deref(),
                    Some(body.name),
                    "{key:?}: body schema"
                );
                assert_eq!(
                    op.body_required,
                    Some(body.required),
                    "{key:?}: requestBody.required"
                );
                let documented = doc.properties.get(body.name).cloned().unwrap_or_default();
                let served: BTreeSet<String> =
                    (body.fields)().iter().map(|f| f.to_string()).collect();
                assert_eq!(documented, served, "{}: properties", body.name);
            }
        }
    }
}

#[test]
fn api_openapi_statuses_match_the_routes() {
    let doc = document();
    for route in ROUTES {
        let (key, op) = operation(&doc, route);
        let served: BTreeSet<u16> = route.statuses.iter().copied().collect();
        assert_eq!(
            served.len(),
            route.statuses.len(),
            "{key:?}: repeated status"
        );
        assert_eq!(
            op.statuses, served,
            "{key:?}: documented statuses (left) and Route::statuses (right) differ"
        );
        assert_eq!(
            op.default.as_deref(),
            Some(TRANSPORT_RESPONSE),
            "{key:?}: the default response"
        );
    }
    let name = TRANSPORT_RESPONSE.rsplit('/').next().unwrap_or_default();
    let text = doc.responses.get(name).cloned().unwrap_or_default();
    let named: BTreeSet<u16> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    for status in TRANSPORT_STATUSES {
        assert!(named.contains(status), "{name} does not explain {status}");
    }
}

#[test]
fn api_openapi_references_resolve() {
    let doc = document();
    let dangling: Vec<_> = doc.refs.difference(&doc.components).collect();
    assert!(dangling.is_empty(), "undefined $ref targets: {dangling:?}");
    for (name, required) in &doc.required {
        let props = properties(&doc, name);
        assert!(
            required.is_subset(props),
            "{name} requires {:?}, which it does not define",
            required.difference(props).collect::<Vec<_>>()
        );
    }
}

/// A `vm.create` body with every part plugvm implements.
fn sample_config() -> crate::config::VmConfig {
    let body = json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 4},
        "memory": {"size": 536870912u64, "hotplug_size": 1073741824u64, "hotplug_method": "Acpi"},
        "payload": {"kernel": "/k", "initramfs": "/i", "cmdline": "console=ttyS0"},
        "serial": {"mode": "File", "file": "/tmp/serial"},
        "console": {"mode": "Off"}
    });
    vm_create::parse(body.to_string().as_bytes()).expect("the sample vm.create body")
}

#[test]
fn api_openapi_vm_info_matches_the_document() {
    let doc = document();
    let info = crate::info::created(&sample_config());
    // The running VM's document (RequestHandler::info) has the same members: both are
    // built by info::document.
    assert_shape(&doc, "VmInfo", &info);
    let config = &info["config"];
    assert_shape(&doc, "VmInfoConfig", config);
    assert_shape(&doc, "VmInfoCpus", &config["cpus"]);
    assert_shape(&doc, "VmInfoMemory", &config["memory"]);
    assert_within(&doc, "PayloadConfig", &config["payload"]);
    assert_within(&doc, "ConsoleConfig", &config["serial"]);
    assert_within(&doc, "ConsoleConfig", &config["console"]);
    assert_within(&doc, "PlugvmInfo", &info["plugvm"]);
    assert!(
        config["payload"].get("initramfs").is_some() && config["serial"].get("file").is_some(),
        "the sample exercises the optional members: {config}"
    );
}

/// Starts `request` and returns the answer it has after one step of the service.
fn ask(service: &mut HotplugService, request: Request, wait: bool) -> Option<ApiResponse> {
    let (respond, answer) = channel();
    service.request(request, wait, respond);
    service.step();
    answer.try_recv().ok()
}

#[test]
fn api_openapi_hotplug_answers_match_the_document() {
    let doc = document();
    let (mut s, guest, clock) = test_service();
    // Removing vCPU 1, which the guest ejects as Linux does: committed, with guest events.
    let (respond, answer) = channel();
    s.request(Request::RemoveCpu { id: 1 }, true, respond);
    let cpu1 = DeviceId::cpu(1);
    for event in [
        GuestEvent::ost(3, 0x84),
        GuestEvent::Eject,
        GuestEvent::ost(3, 0),
    ] {
        guest.send(GuestObservation::new(cpu1, event));
    }
    s.step();
    let done = answer.try_recv().expect("the removal's answer");
    assert_eq!(done.status, 200, "{:?}", done);
    assert_shape(&doc, "TransactionResponse", &done.json());
    assert_shape(&doc, "TransactionRecord", &done.json()["transaction"]);
    // Adding it back while the guest stays silent: 504, with the record.
    let (respond, answer) = channel();
    s.request(Request::AddCpu { id: None }, true, respond);
    clock.advance(s.time_to_deadline().expect("a deadline") + Duration::from_millis(1));
    s.step();
    let failed = answer.try_recv().expect("the timeout's answer");
    assert_eq!(failed.status, 504, "{}", failed.body);
    assert_shape(&doc, "ErrorResponse", &failed.body);
    // ?wait=false: 202 at once.
    let started = ask(&mut s, Request::AddCpu { id: None }, false).expect("a 202");
    assert_eq!(started.status, 202, "{}", started.body);
    assert_shape(&doc, "TransactionStarted", &started.body);
    assert_shape(&doc, "TransactionRecord", &started.body["transaction"]);
    // A request on the device in flight: 429, a plain error.
    let busy = ask(&mut s, Request::RemoveCpu { id: 1 }, true).expect("a 429");
    assert_eq!(busy.status, 429, "{}", busy.body);
    assert_within(&doc, "ErrorResponse", &busy.body);
    let list = s.transactions().body;
    assert_shape(&doc, "TransactionList", &list);
    for record in list["transactions"].as_array().expect("an array") {
        assert_shape(&doc, "TransactionRecord", record);
    }
    let id = started.body["id"].as_u64().expect("an id");
    assert_shape(&doc, "TransactionResponse", &s.transaction(id).body);
    assert_within(&doc, "ErrorResponse", &s.transaction(u64::MAX).body);
    // Counters: the devices' and the controllers' (as RequestHandler::counters adds them).
    let accesses: DeviceCounters = [("register_accesses", 1)].into();
    let counters = s.counters().to_json(&[
        ("cpu_hotplug_controller", accesses.clone()),
        ("memory_hotplug_controller", accesses),
    ]);
    let devices = counters.as_object().expect("an object");
    assert!(devices.contains_key("cpu1"), "{counters}");
    for (device, values) in devices {
        assert_within(&doc, "DeviceCounters", values);
        assert!(
            values
                .as_object()
                .is_some_and(|v| v.values().all(Value::is_u64)),
            "{device}: {values}"
        );
    }
}

/// Why a plain (unquoted) YAML scalar would not read as the text it shows, if it would not.
fn plain_scalar_problem(value: &str) -> Option<&'static str> {
    if value.starts_with(['\'', '"']) {
        return None;
    }
    if let Some(items) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        return items
            .split(',')
            .find_map(|i| plain_scalar_problem(i.trim()));
    }
    if value.starts_with(['{', '&', '*', '!', '|', '>', '%', '@', '`', ']', '}']) {
        return Some("starts with a YAML indicator; quote it");
    }
    if value.contains(": ") || value.contains(" #") || value.ends_with(':') {
        return Some("holds `: ` or ` #`; quote it");
    }
    // YAML 1.1 readers take these for booleans or null; only the 1.2 spellings are kept.
    let word = value.to_ascii_lowercase();
    let special = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
    ];
    if special.contains(&word.as_str()) && !["true", "false", "null"].contains(&value) {
        return Some("reads as a boolean or null; quote it");
    }
    None
}

#[test]
fn api_openapi_plain_scalars_read_as_written() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut block: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let indent = line.len() - line.trim_start().len();
        if block.is_some_and(|b| indent > b) || trimmed.is_empty() {
            continue;
        }
        block = None;
        if trimmed.starts_with('#') {
            continue;
        }
        let item = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let value = match item.split_once(": ") {
            Some((_, value)) => value.trim(),
            None if item.ends_with(':') => continue,
            None => item,
        };
        if [">-", ">", "|", "|-"].contains(&value) {
            block = Some(indent);
            continue;
        }
        if let Some(problem) = plain_scalar_problem(value) {
            panic!("openapi.yaml line {}: {value:?} {problem}", n + 1);
        }
    }
    assert_eq!(
        plain_scalar_problem("[Off, Tty]"),
        plain_scalar_problem("Off")
    );
    assert!(plain_scalar_problem("Always {\"mode\": \"Off\"}.").is_some());
    assert!(plain_scalar_problem("[false, null]").is_none());
}

#[test]
fn api_openapi_scanner_reads_the_layout() {
    let doc = scan(
        "paths:\n  /r:\n    servers:\n      - url: http://localhost\n        description: x\n    get:\n      responses:\n        '200':\n          description: x\n  /a:\n    put:\n      parameters:\n        - $ref: '#/components/parameters/Wait'\n      requestBody:\n        required: true\n        content:\n          application/json:\n            schema:\n              $ref: '#/components/schemas/A'\n      responses:\n        '200':\n          $ref: '#/components/schemas/B'\n        '409':\n          description: x\n        default:\n          $ref: '#/components/responses/E'\ncomponents:\n  responses:\n    E:\n      description: >-\n        400 or\n        503\n  schemas:\n    A:\n      required: [x]\n      properties:\n        x:\n          type: integer\n",
    );
    assert_eq!(doc.operations.len(), 2, "{:?}", doc.operations.keys());
    assert_eq!(doc.path_servers["/r"], "http://localhost");
    assert!(!doc.path_servers.contains_key("/a"));
    let root = &doc.operations[&("GET".to_string(), "/r".to_string())];
    assert_eq!(root.statuses, BTreeSet::from([200]));
    let op = &doc.operations[&("PUT".to_string(), "/a".to_string())];
    assert_eq!(
        (op.schema.as_deref(), op.body_required, op.wait),
        (Some("A"), Some(true), true)
    );
    assert_eq!(op.statuses, BTreeSet::from([200, 409]));
    assert_eq!(op.default.as_deref(), Some("#/components/responses/E"));
    assert_eq!(doc.properties["A"], BTreeSet::from(["x".to_string()]));
    assert_eq!(doc.required["A"], BTreeSet::from(["x".to_string()]));
    assert!(doc.responses["E"].contains("400 or 503"));
    assert!(doc.components.contains("#/components/schemas/A"));
    assert!(doc.refs.contains("#/components/schemas/B"));
}
