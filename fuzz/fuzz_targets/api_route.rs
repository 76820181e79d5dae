//! Requests that get past HTTP: every endpoint with made-up queries and JSON-ish bodies,
//! Cloud Hypervisor's `vm.create` among them.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "get", ""];
const PATHS: &[&str] = &[
    "/api/v1/vmm.ping",
    "/api/v1/vmm.shutdown",
    "/api/v1/vm.create",
    "/api/v1/vm.boot",
    "/api/v1/vm.shutdown",
    "/api/v1/vm.delete",
    "/api/v1/vm.info",
    "/api/v1/vm.counters",
    "/api/v1/vm.pause",
    "/api/v1/vm.resume",
    "/api/v1/vm.power-button",
    "/api/v1/vm.add-vcpu",
    "/api/v1/vm.remove-vcpu",
    "/api/v1/vm.resize",
    "/api/v1/vm.add-memory",
    "/api/v1/vm.remove-memory",
    "/api/v1/events",
    "/api/v1/hotplug/transactions",
    "/api/v1/hotplug/transactions/",
    "/metrics",
    "/",
];

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    method: u8,
    path: u8,
    suffix: &'a str,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let method = METHODS[usize::from(input.method) % METHODS.len()];
    let target = format!(
        "{}{}",
        PATHS[usize::from(input.path) % PATHS.len()],
        input.suffix
    );
    vmm::fuzzing::route_request(method, &target, input.body);
});
