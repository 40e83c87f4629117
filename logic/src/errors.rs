//! How failures reach clients: one place maps store errors to protocol error codes, with
//! bounded texts and retry hints.

use im_protocol::{ErrorCodeExt as _, pb};
use timeline_store::StoreError;

/// Longest error text sent to a client: texts may quote a piece of the request (an id, a
/// cursor) and must not echo back whatever size the client sent.
pub const MAX_ERROR_TEXT_BYTES: usize = 160;

pub(crate) fn error(code: pb::ErrorCode, message: impl Into<String>) -> pb::Error {
    let mut message = message.into();
    if message.len() > MAX_ERROR_TEXT_BYTES {
        let mut end = MAX_ERROR_TEXT_BYTES - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    code.to_error(message)
}

/// How long a client should wait before retrying a write refused for a full disk: freeing
/// space is an operator's job, not a matter of milliseconds.
pub const STORAGE_FULL_RETRY_AFTER_MS: u32 = 5_000;
/// How long a client should wait before retrying after another storage failure.
pub const STORAGE_FAILURE_RETRY_AFTER_MS: u32 = 1_000;

pub(crate) fn store_error(e: StoreError) -> pb::Error {
    let with_retry = |mut error: pb::Error, ms: u32| {
        error.retry_after_ms = ms;
        error
    };
    match e {
        StoreError::Full => with_retry(
            error(
                pb::ErrorCode::Unavailable,
                "the server's storage is full; retry later",
            ),
            STORAGE_FULL_RETRY_AFTER_MS,
        ),
        // Engine details are for the operator's log, not for clients.
        StoreError::Backend(detail) | StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "storage failure answered as UNAVAILABLE");
            with_retry(
                error(
                    pb::ErrorCode::Unavailable,
                    "storage temporarily unavailable; retry later",
                ),
                STORAGE_FAILURE_RETRY_AFTER_MS,
            )
        }
        e => error(e.code(), e.to_string()),
    }
}
