//! What the API server and its clients must agree on: the path prefix, the request bodies
//! and the reason phrases of the status codes.
//!
//! Defined once, here, because the VMM's server deserializes the same structs the client
//! serializes: a field renamed on one side cannot drift from the other.

use serde::{Deserialize, Serialize};

/// The path prefix shared by every endpoint but [`METRICS_PATH`].
pub const API_PREFIX: &str = "/api/v1";

/// Where the VMM serves its Prometheus metrics: at the socket's root, outside [`API_PREFIX`],
/// on Prometheus' default metrics path.
pub const METRICS_PATH: &str = "/metrics";

/// The error of the 503 that refuses a connection because every one the server allows has a
/// request in progress or streams events: the one 503 that a client may simply send again
/// (no request was taken), and that `plugvm-remote` retries.
pub const TOO_MANY_CONNECTIONS: &str = "Too many open API connections; retry later.";

/// Body of `PUT /api/v1/vm.resize`: at least one of the two targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    /// Wanted number of vCPUs (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u32>,
    /// Wanted RAM size in bytes (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
    /// Keep what succeeded instead of rolling everything back on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_effort: Option<bool>,
    /// Cloud Hypervisor's balloon target. Its clients always send the field (`null` when
    /// unused); plugvm has no balloon, so only `null` or absent is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
}

/// Body of `PUT /api/v1/vm.add-vcpu`; the body may also be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddVcpuBody {
    /// The vCPU to plug; the VMM picks the lowest free one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

/// Body of `PUT /api/v1/vm.remove-vcpu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveVcpuBody {
    /// The vCPU to unplug.
    pub id: u32,
}

/// Body of `PUT /api/v1/vm.add-memory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemoryBody {
    /// Size of the region in bytes (at least 1).
    pub size: u64,
}

/// Body of `PUT /api/v1/vm.remove-memory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveMemoryBody {
    /// The memory slot to unplug.
    pub slot: u32,
}

impl ResizeBody {
    /// Checks what serde cannot: one target at least, none of them zero.
    /// The error is one sentence for the client.
    pub fn validate(&self) -> Result<(), String> {
        if self.desired_balloon.is_some() {
            return Err(
                "vm.resize: desired_balloon is not supported (plugvm has no balloon device); send null or leave it out."
                    .to_string(),
            );
        }
        if self.desired_vcpus.is_none() && self.desired_ram.is_none() {
            return Err("vm.resize needs desired_vcpus, desired_ram or both.".to_string());
        }
        if self.desired_vcpus == Some(0) {
            return Err("vm.resize: desired_vcpus must be at least 1.".to_string());
        }
        if self.desired_ram == Some(0) {
            return Err("vm.resize: desired_ram must be at least 1 byte.".to_string());
        }
        Ok(())
    }
}

impl AddMemoryBody {
    /// Rejects a zero size; the error is one sentence for the client.
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("vm.add-memory: size must be at least 1 byte.".to_string());
        }
        Ok(())
    }
}

/// The reason phrase of the status codes the server sends ("Unknown" for others).
///
/// The server writes it in its status lines; the client prints it when an error
/// response carries no message of its own.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_serialize_only_what_is_set() {
        let add = serde_json::to_string(&AddVcpuBody::default()).unwrap();
        assert_eq!(add, "{}");
        let resize = ResizeBody {
            desired_ram: Some(1 << 30),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&resize).unwrap(),
            r#"{"desired_ram":1073741824}"#
        );
    }

    #[test]
    fn validation_refuses_zeros_and_empty_resizes() {
        assert!(ResizeBody::default().validate().is_err());
        let zero_ram = ResizeBody {
            desired_ram: Some(0),
            ..Default::default()
        };
        assert_eq!(
            zero_ram.validate().unwrap_err(),
            "vm.resize: desired_ram must be at least 1 byte."
        );
        assert!(AddMemoryBody { size: 0 }.validate().is_err());
        assert!(AddMemoryBody { size: 1 }.validate().is_ok());
    }

    #[test]
    fn unknown_statuses_have_a_phrase_too() {
        assert_eq!(reason(409), "Conflict");
        assert_eq!(reason(599), "Unknown");
    }
}
