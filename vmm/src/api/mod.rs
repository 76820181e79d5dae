//! The VMM's control API: HTTP/1.1 and JSON over a Unix socket.
//!
//! The conventions follow Cloud Hypervisor's (`GET /api/v1/vmm.ping`,
//! `PUT /api/v1/vm.resize`, ...). [`start`] binds the socket and spawns the
//! server thread; every connection is served on its own short-lived thread,
//! so a hotplug request that waits for the guest never delays a ping.
//!
//! Requests that need the VMM travel as [`ApiMessage`]s over an
//! [`mpsc`] channel. After each send the server writes 1 to the `wake`
//! [`EventFd`], so the event loop can poll that fd and drain the channel. Each message's
//! [`Responder`] holds the client's socket: the loop's answer goes straight to the client,
//! without waking the connection's thread first (see `responder.rs`).
//!
//! ```no_run
//! use std::sync::mpsc;
//! use vmm::api::{self, ApiRequest, ApiResponse};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (to_vmm, from_api) = mpsc::channel();
//! let wake = EventFd::new(EFD_NONBLOCK)?;
//! let server = api::start("/run/plugvm.sock".as_ref(), to_vmm, wake.try_clone()?)?;
//! // In the event loop, when `wake` is readable:
//! let _ = wake.read();
//! while let Ok(message) = from_api.try_recv() {
//!     let response = match message.request {
//!         ApiRequest::VmInfo => ApiResponse::ok(serde_json::json!({"state": "running"})),
//!         other => ApiResponse::not_implemented(&other),
//!     };
//!     // The client may have gone away: a failed send is not an error.
//!     let _ = message.respond.send(response);
//! }
//! server.shutdown();
//! # Ok(())
//! # }
//! ```

mod bodies;
mod connection;
pub(crate) mod encode;
mod error;
mod event_stream;
pub(crate) mod http;
mod responder;
pub(crate) mod routing;
mod server;
mod socket;
mod socket_lock;
mod vm_create;

#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod socket_tests;
#[cfg(test)]
pub(crate) mod test_util;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

// The wire types live with the client, so that both ends share one definition.
pub use error::RequestError;
pub use plugvm_remote::wire::{
    AddMemoryBody, AddVcpuBody, RemoveMemoryBody, RemoveVcpuBody, ResizeBody, API_PREFIX,
    METRICS_PATH,
};
pub use responder::Responder;
pub use server::ApiServerHandle;

/// Largest request body the server reads, in bytes; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A request that the server forwards to the VMM.
///
/// `wait` is false when the client asked `?wait=false`: the VMM should then
/// answer as soon as the operation has started instead of when the guest
/// has acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `PUT /api/v1/vm.shutdown`: stop the VM; the VMM stays, and `vm.boot` boots the same
    /// configuration again.
    Shutdown,
    /// `PUT /api/v1/vmm.shutdown`: stop the VM, if it runs, and end the VMM.
    VmmShutdown,
    /// `PUT /api/v1/vm.create`: record the VM's configuration (Cloud Hypervisor's `VmConfig`,
    /// already checked against what plugvm implements).
    Create(Box<crate::config::VmConfig>),
    /// `PUT /api/v1/vm.boot`: build and boot the created VM.
    Boot,
    /// `PUT /api/v1/vm.delete`: stop the VM, if it runs, and forget its configuration.
    Delete,
    /// `GET /api/v1/vm.counters`: hotplug counters per device.
    Counters,
    /// `PUT /api/v1/vm.power-button`: press the ACPI power button.
    PowerButton,
    /// `GET /api/v1/vm.info`: describe the VM.
    VmInfo,
    /// `PUT /api/v1/vm.pause`: every vCPU leaves `KVM_RUN` until `vm.resume`.
    Pause,
    /// `PUT /api/v1/vm.resume`: paused vCPUs run again.
    Resume,
    /// `PUT /api/v1/vm.add-vcpu`: plug one vCPU, the lowest free id if `id` is `None`.
    AddVcpu {
        /// The vCPU to plug, if the client chose one.
        id: Option<u32>,
        /// Whether to answer only once the guest has acknowledged.
        wait: bool,
    },
    /// `PUT /api/v1/vm.remove-vcpu`: unplug one vCPU.
    RemoveVcpu {
        /// The vCPU to unplug.
        id: u32,
        /// Whether to answer only once the guest has acknowledged.
        wait: bool,
    },
    /// `PUT /api/v1/vm.resize`: reach a vCPU count and/or a RAM size.
    Resize {
        /// Wanted number of vCPUs.
        desired_vcpus: Option<u32>,
        /// Wanted RAM size in bytes.
        desired_ram: Option<u64>,
        /// Keep what succeeded instead of rolling everything back on failure.
        best_effort: bool,
        /// Whether to answer only once the guest has acknowledged.
        wait: bool,
    },
    /// `PUT /api/v1/vm.add-memory`: plug a memory region of `size` bytes.
    AddMemory {
        /// Size of the region in bytes.
        size: u64,
        /// Whether to answer only once the guest has acknowledged.
        wait: bool,
    },
    /// `PUT /api/v1/vm.remove-memory`: unplug the memory region in `slot`.
    RemoveMemory {
        /// The memory slot to unplug.
        slot: u32,
        /// Whether to answer only once the guest has acknowledged.
        wait: bool,
    },
    /// `GET /api/v1/hotplug/transactions`: list hotplug transactions.
    Transactions,
    /// `GET /api/v1/hotplug/transactions/{id}`: one hotplug transaction.
    Transaction(u64),
    /// `GET /metrics` (at the socket's root, Prometheus' default path): the VMM's metrics in
    /// Prometheus' text format ([`crate::metrics`]).
    Metrics,
}

impl ApiRequest {
    /// The endpoint name, as in `vm.resize`, used in messages.
    pub fn endpoint(&self) -> &'static str {
        match self {
            ApiRequest::Shutdown => "vm.shutdown",
            ApiRequest::VmmShutdown => "vmm.shutdown",
            ApiRequest::Create(_) => "vm.create",
            ApiRequest::Boot => "vm.boot",
            ApiRequest::Delete => "vm.delete",
            ApiRequest::Counters => "vm.counters",
            ApiRequest::PowerButton => "vm.power-button",
            ApiRequest::VmInfo => "vm.info",
            ApiRequest::Pause => "vm.pause",
            ApiRequest::Resume => "vm.resume",
            ApiRequest::AddVcpu { .. } => "vm.add-vcpu",
            ApiRequest::RemoveVcpu { .. } => "vm.remove-vcpu",
            ApiRequest::Resize { .. } => "vm.resize",
            ApiRequest::AddMemory { .. } => "vm.add-memory",
            ApiRequest::RemoveMemory { .. } => "vm.remove-memory",
            ApiRequest::Transactions => "hotplug/transactions",
            ApiRequest::Transaction(_) => "hotplug/transactions/{id}",
            ApiRequest::Metrics => "metrics",
        }
    }
}

/// The VMM's answer: an HTTP status code and a JSON body, or a text body of its own content
/// type (`GET /metrics`).
///
/// A `Value::Null` body is sent as an empty body (use it with 204).
/// Error bodies should be `{"error": "<one sentence>"}`: see [`ApiResponse::error`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// HTTP status code, 200..=599.
    pub status: u16,
    /// JSON body; `Value::Null` for none. Ignored when `text` is set.
    pub body: Value,
    /// A body that is not JSON; see [`ApiResponse::text`].
    pub text: Option<TextBody>,
}

/// A non-JSON body and its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBody {
    /// The `Content-Type` header's value, e.g. `text/plain; version=0.0.4`.
    pub content_type: &'static str,
    /// The body, sent as it is (UTF-8).
    pub text: String,
}

impl ApiResponse {
    /// 200 with `body`.
    pub fn ok(body: Value) -> Self {
        ApiResponse {
            status: 200,
            body,
            text: None,
        }
    }

    /// 204 with no body.
    pub fn no_content() -> Self {
        ApiResponse {
            status: 204,
            body: Value::Null,
            text: None,
        }
    }

    /// `status` with the body `{"error": message}`; only [`RequestError`] picks the status.
    fn error(status: u16, message: impl Into<String>) -> Self {
        ApiResponse {
            status,
            body: json!({ "error": message.into() }),
            text: None,
        }
    }

    /// `status` with `value` as its JSON body, serialized once, straight to the bytes that go
    /// on the wire: no [`Value`] tree is built and written out again. For the answers on the
    /// hotplug path (the transaction record), where the tree cost a few hundred microseconds
    /// of the event loop's time per answer in the nested test bed. The body reads back with
    /// [`ApiResponse::json`].
    pub fn json_of<T: serde::Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            // Escaped to ASCII as every JSON body is (see `encode.rs`).
            Ok(bytes) => match String::from_utf8(encode::ascii_json(bytes)) {
                Ok(text) => ApiResponse {
                    status,
                    body: Value::Null,
                    text: Some(TextBody {
                        content_type: http::JSON,
                        text,
                    }),
                },
                Err(e) => RequestError::HostFailure(format!("The answer is not text: {e}.")).into(),
            },
            Err(e) => {
                RequestError::HostFailure(format!("The answer could not be encoded: {e}.")).into()
            }
        }
    }

    /// The JSON body, however it is carried: `body`, or a JSON text of [`ApiResponse::json_of`]
    /// parsed back (`Value::Null` for none or a body that is not JSON).
    pub fn json(&self) -> Value {
        match &self.text {
            Some(text) if text.content_type == http::JSON => {
                serde_json::from_str(&text.text).unwrap_or(Value::Null)
            }
            Some(_) => Value::Null,
            None => self.body.clone(),
        }
    }

    /// `status` with `text` as the body, of `content_type`.
    pub fn text(status: u16, content_type: &'static str, text: impl Into<String>) -> Self {
        ApiResponse {
            status,
            body: Value::Null,
            text: Some(TextBody {
                content_type,
                text: text.into(),
            }),
        }
    }

    /// 501 naming the endpoint of `request`.
    pub fn not_implemented(request: &ApiRequest) -> Self {
        RequestError::NotImplemented(format!("{} is not implemented yet.", request.endpoint()))
            .into()
    }
}

/// A request for the VMM and where to answer it.
///
/// [`Responder::send`] answers it; dropping `respond` unanswered makes the client get 503.
#[derive(Debug)]
pub struct ApiMessage {
    /// What the client asked for.
    pub request: ApiRequest,
    /// Where to send the answer.
    pub respond: Responder,
}

/// Tunables of the API server; [`ApiConfig::default`] suits production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// How long to wait for the VMM's answer before replying 503.
    /// Keep it above the longest guest wait of a hotplug request.
    pub vmm_timeout: Duration,
    /// How long a client may take to send one whole request (or to start
    /// the next one on a kept-alive connection) before it is dropped.
    pub request_timeout: Duration,
    /// How many connections are open at once. At the limit a new connection takes the place
    /// of the one that has waited longest for its next request (a kept-alive or silent one);
    /// only when every connection has a request in progress or streams events does it get
    /// 503. At most half of them (at least one) may be event streams.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            vmm_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
            max_connections: 32,
        }
    }
}

/// Errors of [`start`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another live server is listening on the path, or holds its lock file (`PATH.lock`).
    #[error("API socket {0} is in use by a running server")]
    InUse(PathBuf),
    /// The lock file beside the socket (`PATH.lock`) could not be created or locked.
    #[error("cannot lock API socket: {path}: {source}")]
    Lock {
        /// The lock file's path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Something other than a socket exists at the path.
    #[error("API socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Inspecting the existing path failed.
    #[error("cannot inspect API socket path {path}: {source}")]
    Inspect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Binding, securing or publishing the socket failed.
    #[error("cannot bind API socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Setting up the server's event polling failed.
    #[error("cannot set up the API server's polling: {0}")]
    Poll(io::Error),
    /// The server thread could not be spawned.
    #[error("cannot spawn the API server thread: {0}")]
    Spawn(io::Error),
}

/// Binds the API socket at `path` (mode 0600) and spawns the server thread.
///
/// Refuses a path on which a live server listens, or whose lock file `PATH.lock` another
/// server holds ([`ApiError::InUse`]), and a path holding anything but a socket
/// ([`ApiError::NotASocket`]); a stale socket file is replaced. The lock file (mode 0600) is
/// held while the server runs and removed with the socket. Uses [`ApiConfig::default`].
pub fn start(
    path: &Path,
    to_vmm: mpsc::Sender<ApiMessage>,
    wake: EventFd,
) -> Result<ApiServerHandle, ApiError> {
    start_with_config(path, to_vmm, wake, ApiConfig::default())
}

/// [`start`] with explicit tunables.
pub fn start_with_config(
    path: &Path,
    to_vmm: mpsc::Sender<ApiMessage>,
    wake: EventFd,
    config: ApiConfig,
) -> Result<ApiServerHandle, ApiError> {
    server::start(path, to_vmm, wake, config)
}

/// The body of `GET /api/v1/vmm.ping`, answered by the server itself.
pub fn ping_body() -> Value {
    json!({
        "build_version": option_env!("PLUGVM_BUILD_VERSION").unwrap_or(env!("CARGO_PKG_VERSION")),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "features": [],
    })
}
