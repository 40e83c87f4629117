//! Error-code properties that are fixed per code, kept in one place.

use crate::pb::{self, ErrorCode};

/// Properties of [`ErrorCode`] that SPEC.md's error table states (a test checks they agree).
pub trait ErrorCodeExt {
    /// Whether the same request may succeed later without change.
    fn retryable(self) -> bool;
    /// Whether the sender of this error closes the connection right after it.
    fn closes_connection(self) -> bool;
    /// Builds the `Error` body for this code.
    fn to_error(self, message: impl Into<String>) -> pb::Error;
}

impl ErrorCodeExt for ErrorCode {
    fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::HandshakeTimeout
                | ErrorCode::RateLimited
                | ErrorCode::TooManyConnections
                | ErrorCode::Internal
                | ErrorCode::Unavailable
                | ErrorCode::ShuttingDown
        )
    }

    fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::BadFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnsupportedVersion
                | ErrorCode::NotAuthenticated
                | ErrorCode::HandshakeTimeout
                | ErrorCode::UnsupportedCompression
                | ErrorCode::WrongDirection
                | ErrorCode::TokenMissing
                | ErrorCode::TokenInvalid
                | ErrorCode::TokenExpired
                | ErrorCode::DeviceMismatch
                | ErrorCode::TooManyConnections
                | ErrorCode::ShuttingDown
        )
    }

    fn to_error(self, message: impl Into<String>) -> pb::Error {
        pb::Error {
            code: self as i32,
            message: message.into(),
            retryable: self.retryable(),
            retry_after_ms: 0,
            app_reason: 0,
        }
    }
}
