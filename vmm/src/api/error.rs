//! Every error the API answers, named by its cause, and the one place that gives each cause
//! its HTTP status ([`RequestError::status`]).
//!
//! The connection threads (a request that cannot be read or routed), the VMM without a VM
//! (`control.rs`), the running VM's request handler and the hotplug service all answer with
//! an [`RequestError`]; none of them picks a status. The statuses a route can answer are declared
//! per route (`routing.rs`) and checked against the OpenAPI document by a unit test.

use hotplug::FailureReason;

use super::ApiResponse;

/// Why the API did not do what was asked. The message is one sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    // The request as sent.
    /// The request line, a header, the query or the body is not what the API accepts.
    #[error("{0}")]
    MalformedRequest(String),
    /// The request line and headers exceed the server's limit.
    #[error("{0}")]
    HeadTooLarge(String),
    /// The declared body exceeds the server's limit.
    #[error("{0}")]
    BodyTooLarge(String),
    /// The request did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// An HTTP version other than 1.0 and 1.1.
    #[error("{0}")]
    UnsupportedHttpVersion(String),
    /// A transfer coding the server does not implement.
    #[error("{0}")]
    UnsupportedTransferCoding(String),
    /// An `Expect` other than `100-continue`.
    #[error("{0}")]
    UnsupportedExpectation(String),
    /// No endpoint at the path.
    #[error("{0}")]
    NoSuchEndpoint(String),
    /// The endpoint exists but not for this method; `allow` lists the methods it takes.
    #[error("{message}")]
    MethodNotAllowed {
        /// The sentence for the client.
        message: String,
        /// The `Allow` header's value.
        allow: String,
    },

    // The VM's state.
    /// No VM is created.
    #[error("{0}")]
    NoVm(String),
    /// The VM is not in a state for the request (not booted, already booted, paused, ...).
    #[error("{0}")]
    WrongVmState(String),
    /// The VM's configuration is invalid (or its files are gone).
    #[error("{0}")]
    InvalidVmConfig(String),

    // Hotplug.
    /// The hotplug engine refused to begin the request.
    #[error("{0}")]
    HotplugRefused(#[from] hotplug::Error),
    /// A transaction waits for the guest, so the request must wait for it to end.
    #[error("{0}")]
    TransactionWaiting(String),
    /// A transaction ended without committing, for `reason` (`None`: no device said why).
    #[error("{message}")]
    HotplugFailed {
        /// Why the first failing device did not commit.
        reason: Option<FailureReason>,
        /// The sentence for the client.
        message: String,
    },
    /// No transaction with that id in the journal.
    #[error("{0}")]
    NoSuchTransaction(String),

    // The VMM.
    /// Something on the host failed (a KVM call, a lock, a thread).
    #[error("{0}")]
    HostFailure(String),
    /// The VMM cannot take the request now (ending, busy with connections, not answering).
    #[error("{0}")]
    VmmUnavailable(String),
    /// The VMM does not implement the request.
    #[error("{0}")]
    NotImplemented(String),
}

impl RequestError {
    /// The HTTP status that tells the client this cause.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::MalformedRequest(_) | RequestError::InvalidVmConfig(_) => 400,
            RequestError::NoSuchEndpoint(_)
            | RequestError::NoVm(_)
            | RequestError::NoSuchTransaction(_) => 404,
            RequestError::MethodNotAllowed { .. } => 405,
            RequestError::RequestTimeout(_) => 408,
            RequestError::WrongVmState(_) => 409,
            RequestError::BodyTooLarge(_) => 413,
            RequestError::UnsupportedExpectation(_) => 417,
            // Cloud Hypervisor's answer to a resize while a change is pending, and the one
            // Kata Containers' client sees as "busy".
            RequestError::TransactionWaiting(_) => 429,
            RequestError::HotplugRefused(e) => match e {
                hotplug::Error::Conflict { .. } => 429,
                hotplug::Error::Invalid(_) => 422,
                hotplug::Error::RegisterInFlight { .. } => 500,
            },
            RequestError::HotplugFailed { reason, .. } => match reason {
                Some(reason) => failure_status(reason),
                None => 500,
            },
            RequestError::HeadTooLarge(_) => 431,
            RequestError::HostFailure(_) => 500,
            RequestError::NotImplemented(_) | RequestError::UnsupportedTransferCoding(_) => 501,
            RequestError::VmmUnavailable(_) => 503,
            RequestError::UnsupportedHttpVersion(_) => 505,
        }
    }

    /// The `Allow` header's value, for [`RequestError::MethodNotAllowed`].
    pub fn allow(&self) -> Option<&str> {
        match self {
            RequestError::MethodNotAllowed { allow, .. } => Some(allow),
            _ => None,
        }
    }
}

/// The status that tells the caller why a device did not commit: the caller's request was
/// wrong (422), the guest said no (502) or never answered (504), the host failed (500), or
/// the batch gave up on the device for another's failure (409).
fn failure_status(reason: &FailureReason) -> u16 {
    match reason {
        FailureReason::Invalid { .. }
        | FailureReason::Vetoed { .. }
        | FailureReason::GuestEjectDenied => 422,
        FailureReason::GuestRefused { .. } | FailureReason::GuestEjectedDuringAdd => 502,
        FailureReason::Timeout { .. } => 504,
        FailureReason::PrepareFailed { .. } | FailureReason::PublishFailed { .. } => 500,
        FailureReason::BatchAborted { .. } => 409,
    }
}

impl From<RequestError> for ApiResponse {
    fn from(e: RequestError) -> Self {
        ApiResponse::error(e.status(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_an_error_status_and_client_faults_are_4xx() {
        let client = [
            RequestError::MalformedRequest("x".into()),
            RequestError::HeadTooLarge("x".into()),
            RequestError::BodyTooLarge("x".into()),
            RequestError::RequestTimeout("x".into()),
            RequestError::UnsupportedExpectation("x".into()),
            RequestError::NoSuchEndpoint("x".into()),
            RequestError::MethodNotAllowed {
                message: "x".into(),
                allow: "GET".into(),
            },
            RequestError::NoVm("x".into()),
            RequestError::WrongVmState("x".into()),
            RequestError::InvalidVmConfig("x".into()),
            RequestError::TransactionWaiting("x".into()),
            RequestError::HotplugRefused(hotplug::Error::Invalid(
                hotplug::ValidationError::CpuZeroRemoval,
            )),
            RequestError::NoSuchTransaction("x".into()),
        ];
        for e in &client {
            assert!((400..500).contains(&e.status()), "{e:?}");
        }
        for e in [
            RequestError::HostFailure("x".into()),
            RequestError::VmmUnavailable("x".into()),
            RequestError::NotImplemented("x".into()),
            RequestError::UnsupportedTransferCoding("x".into()),
            RequestError::UnsupportedHttpVersion("x".into()),
        ] {
            assert!((500..600).contains(&e.status()), "{e:?}");
        }
    }

    #[test]
    fn a_failed_transaction_answers_by_its_reason() {
        let failed = |reason| RequestError::HotplugFailed {
            reason,
            message: "tx-1 cpu 1: why".into(),
        };
        assert_eq!(failed(Some(FailureReason::GuestEjectDenied)).status(), 422);
        assert_eq!(
            failed(Some(FailureReason::GuestEjectedDuringAdd)).status(),
            502
        );
        assert_eq!(failed(None).status(), 500);
        let response = ApiResponse::from(failed(None));
        assert_eq!(response.status, 500);
        assert_eq!(response.body["error"], "tx-1 cpu 1: why");
    }

    #[test]
    fn only_method_not_allowed_carries_an_allow_header() {
        let e = RequestError::MethodNotAllowed {
            message: "no".into(),
            allow: "GET, PUT".into(),
        };
        assert_eq!(e.allow(), Some("GET, PUT"));
        assert_eq!(RequestError::NoVm("x".into()).allow(), None);
    }
}
