//! The one error type of the bindings: a typed exception in each language (`ImException` in
//! Kotlin, `ImError` in Swift and Python), whose variants say what failed.

use sdk_core::{DriverError, RequestError};

/// Why a call failed.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ImError {
    /// The server refused the request (SPEC §14).
    #[error("{name} ({code}): {message}")]
    Server {
        /// The stable numeric error code, e.g. 402 (`FORBIDDEN`).
        code: u32,
        /// The code's name, e.g. `FORBIDDEN` (`UNKNOWN` for a code newer than this library).
        name: String,
        /// English text for logs; never parse it.
        message: String,
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
    #[error("unexpected answer from the server: {message}")]
    UnexpectedResponse {
        /// What came.
        message: String,
    },
    /// The local database failed (disk full, damaged file, no permission).
    #[error("local store: {message}")]
    Store {
        /// What failed.
        message: String,
    },
    /// An argument the app passed is not valid (an address, a certificate, a directory).
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// Which and why.
        message: String,
    },
    /// The client was shut down.
    #[error("the client has shut down")]
    Closed,
    /// The client could not start (its thread or runtime).
    #[error("cannot start the client: {message}")]
    Runtime {
        /// Why.
        message: String,
    },
}

impl ImError {
    pub(crate) fn invalid(message: impl Into<String>) -> ImError {
        ImError::InvalidArgument {
            message: message.into(),
        }
    }
}

impl From<DriverError> for ImError {
    fn from(error: DriverError) -> ImError {
        match error {
            DriverError::Closed => ImError::Closed,
            DriverError::Store(error) => ImError::Store {
                message: error.to_string(),
            },
            DriverError::Runtime(message) => ImError::Runtime { message },
            DriverError::Request(RequestError::Server(error)) => ImError::Server {
                code: error.code,
                name: error.name().to_owned(),
                message: error.message,
                retryable: error.retryable,
                retry_after_ms: error.retry_after_ms,
            },
            DriverError::Request(RequestError::NotConnected) => ImError::NotConnected,
            DriverError::Request(RequestError::ConnectionLost) => ImError::ConnectionLost,
            DriverError::Request(RequestError::UnexpectedResponse(message)) => {
                ImError::UnexpectedResponse { message }
            }
        }
    }
}
