//! Raw bytes on an API connection: request heads, bodies, keep-alive sequences.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::serve_bytes(data);
});
