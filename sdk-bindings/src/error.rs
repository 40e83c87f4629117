//! The one error type of the bindings: a typed exception in each language (`ImException` in
//! Kotlin, `ImError` in Swift and Python), whose variants say what failed.

use sdk_core::{DriverError, RequestError};

/// Why a call failed.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ImError {
    /// The server refused the request (SPEC §14).
    #[error("{name} ({code}): {reason}")]
    Server {
        /// The stable numeric error code, e.g. 402 (`FORBIDDEN`).
        code: u32,
        /// The code's name, e.g. `FORBIDDEN` (`UNKNOWN` for a code newer than this library).
        name: String,
        /// English text for logs; never parse it. (Not `message`: Kotlin exceptions have one.)
        reason: String,
        /// The same request may succeed later, unchanged.
        retryable: bool,
        /// Wait at least this long before retrying (0 = use your own backoff).
        retry_after_ms: u32,
    },
    /// Not connected: requests other than sends are not queued while offline.
    #[error("not connected to the server")]
    NotConnected,
    /// The connection was lost before the answer came; the request may or may not have taken
    /// effect.
    #[error("the connection was lost before the answer")]
    ConnectionLost,
    /// The server answered with something else than this request's answer.
    #[error("unexpected answer from the server: {reason}")]
    UnexpectedResponse {
        /// What came.
        reason: String,
    },
    /// The local database failed (disk full, damaged file, no permission).
    #[error("local store: {reason}")]
    Store {
        /// What failed.
        reason: String,
    },
    /// An argument the app passed is not valid (an address, a certificate, a directory).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Which and why.
        reason: String,
    },
    /// The client was shut down.
    #[error("the client has shut down")]
    Closed,
    /// The client could not start (its thread or runtime).
    #[error("cannot start the client: {reason}")]
    Runtime {
        /// Why.
        reason: String,
    },
}

impl ImError {
    pub(crate) fn invalid(message: impl Into<String>) -> ImError {
        ImError::InvalidArgument {
            reason: message.into(),
        }
    }
}

impl From<DriverError> for ImError {
    fn from(error: DriverError) -> ImError {
        match error {
            DriverError::Closed => ImError::Closed,
            DriverError::Store(error) => ImError::Store {
                reason: error.to_string(),
            },
            DriverError::Runtime(reason) => ImError::Runtime { reason },
            DriverError::Request(RequestError::Server(error)) => ImError::Server {
                code: error.code,
                name: error.name().to_owned(),
                reason: error.message,
                retryable: error.retryable,
                retry_after_ms: error.retry_after_ms,
            },
            DriverError::Request(RequestError::NotConnected) => ImError::NotConnected,
            DriverError::Request(RequestError::ConnectionLost) => ImError::ConnectionLost,
            DriverError::Request(RequestError::UnexpectedResponse(reason)) => {
                ImError::UnexpectedResponse { reason }
            }
        }
    }
}
