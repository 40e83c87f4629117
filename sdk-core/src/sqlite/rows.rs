//! Rows to values and back: how each record is laid out in SQLite, and how SQLite's failures
//! become the store's own errors. A value that does not decode is `Corrupt`, never a panic.

use rusqlite::types::FromSql;
use rusqlite::{Connection, Row, params};

use crate::store::{
    LocalConversation, LocalMessage, LocalResult, LocalStoreError, OutboxItem, Recipient, SendState,
};

/// Inserts a full message row.
pub(super) fn insert_message(conn: &Connection, m: &LocalMessage) -> SqlResult<()> {
    let mut stmt = conn.prepare_cached(concat!(
        "INSERT INTO messages (",
        message_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    ))?;
    stmt.execute(params![
        m.local_id,
        m.conversation_id,
        m.sender,
        m.client_msg_id,
        m.seq,
        opaque_to_sql(m.server_msg_id),
        m.time_ms,
        m.content_type,
        m.content,
        encode_state(m.state),
        m.recalled,
    ])?;
    Ok(())
}

/// Reads a row selected with [`message_columns!`].
pub(super) fn read_message(row: &Row<'_>) -> SqlResult<LocalMessage> {
    Ok(LocalMessage {
        local_id: column(row, 0)?,
        conversation_id: column(row, 1)?,
        sender: column(row, 2)?,
        client_msg_id: column(row, 3)?,
        seq: column(row, 4)?,
        server_msg_id: opaque_from_sql(column(row, 5)?),
        time_ms: column(row, 6)?,
        content_type: column(row, 7)?,
        content: column(row, 8)?,
        state: decode_state(column(row, 9)?)?,
        recalled: column(row, 10)?,
    })
}

/// Reads a row selected with [`outbox_columns!`].
pub(super) fn read_outbox_item(row: &Row<'_>) -> SqlResult<OutboxItem> {
    Ok(OutboxItem {
        local_id: column(row, 0)?,
        recipient: decode_recipient(column(row, 1)?, column(row, 2)?)?,
        conversation_id: column(row, 3)?,
        client_msg_id: column(row, 4)?,
        content_type: column(row, 5)?,
        content: column(row, 6)?,
        created_ms: column(row, 7)?,
        attempts: column(row, 8)?,
        state: decode_state(column(row, 9)?)?,
    })
}

/// Reads a row selected with [`conversation_columns!`].
pub(super) fn read_conversation(row: &Row<'_>) -> SqlResult<LocalConversation> {
    let conversation_id: String = column(row, 0)?;
    // The last message is either wholly present or wholly NULL; anything in between is damage.
    let last_message = match column::<Option<String>>(row, 9)? {
        None => None,
        Some(last_conversation_id) => {
            let required = |idx: usize| -> SqlResult<rusqlite::types::Value> {
                match column::<rusqlite::types::Value>(row, idx)? {
                    rusqlite::types::Value::Null => Err(SqlFailure::corrupt(format!(
                        "conversation {conversation_id}: last message column {idx} is NULL"
                    ))),
                    value => Ok(value),
                }
            };
            for idx in 8..=18 {
                required(idx)?;
            }
            Some(LocalMessage {
                local_id: column(row, 8)?,
                conversation_id: last_conversation_id,
                sender: column(row, 10)?,
                client_msg_id: column(row, 11)?,
                seq: column(row, 12)?,
                server_msg_id: opaque_from_sql(column(row, 13)?),
                time_ms: column(row, 14)?,
                content_type: column(row, 15)?,
                content: column(row, 16)?,
                state: decode_state(column(row, 17)?)?,
                recalled: column(row, 18)?,
            })
        }
    };
    Ok(LocalConversation {
        peer: column(row, 1)?,
        title: column(row, 2)?,
        last_seq: column(row, 3)?,
        read_seq: column(row, 4)?,
        unread_count: column(row, 5)?,
        peer_read_seq: column(row, 6)?,
        updated_ms: column(row, 7)?,
        last_message,
        conversation_id,
    })
}

/// One column, with any type or range mismatch reported as corruption (the schema only ever
/// stores values that fit, so a mismatch means the file was damaged or edited).
pub(super) fn column<T: FromSql>(row: &Row<'_>, idx: usize) -> SqlResult<T> {
    row.get(idx).map_err(|e| match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => {
            let name = row.as_ref().column_name(idx).unwrap_or("?");
            SqlFailure::corrupt(format!("column {name}: {e}"))
        }
        other => SqlFailure::Sql(other),
    })
}

/// `server_msg_id` is an opaque uint64 (any value, SPEC), so it is stored bit for bit.
pub(super) fn opaque_to_sql(value: u64) -> i64 {
    value as i64
}

/// Inverse of [`opaque_to_sql`].
pub(super) fn opaque_from_sql(value: i64) -> u64 {
    value as u64
}

pub(super) fn encode_state(state: SendState) -> i64 {
    match state {
        SendState::Sending => 0,
        SendState::Sent => 1,
        SendState::Failed => 2,
    }
}

pub(super) fn decode_state(code: i64) -> SqlResult<SendState> {
    match code {
        0 => Ok(SendState::Sending),
        1 => Ok(SendState::Sent),
        2 => Ok(SendState::Failed),
        other => Err(SqlFailure::corrupt(format!("unknown send state {other}"))),
    }
}

pub(super) fn encode_recipient(recipient: &Recipient) -> (i64, &str) {
    match recipient {
        Recipient::User(user) => (0, user),
        Recipient::Group(group) => (1, group),
    }
}

pub(super) fn decode_recipient(kind: i64, id: String) -> SqlResult<Recipient> {
    match kind {
        0 => Ok(Recipient::User(id)),
        1 => Ok(Recipient::Group(id)),
        other => Err(SqlFailure::corrupt(format!(
            "unknown recipient kind {other}"
        ))),
    }
}

/// A failure inside this module: SQLite's own error, until it leaves through the public API as
/// a [`LocalStoreError`] (see [`sql`]), so no `rusqlite` type reaches the store's interface.
#[derive(Debug)]
pub(super) enum SqlFailure {
    /// SQLite failed.
    Sql(rusqlite::Error),
    /// The store's own rules failed (a corrupt value).
    Store(LocalStoreError),
}

impl SqlFailure {
    pub(super) fn corrupt(message: impl Into<String>) -> SqlFailure {
        SqlFailure::Store(LocalStoreError::Corrupt(message.into()))
    }
}

impl From<rusqlite::Error> for SqlFailure {
    fn from(e: rusqlite::Error) -> SqlFailure {
        SqlFailure::Sql(e)
    }
}

impl From<LocalStoreError> for SqlFailure {
    fn from(e: LocalStoreError) -> SqlFailure {
        SqlFailure::Store(e)
    }
}

/// The result of this module's internals.
pub(super) type SqlResult<T> = Result<T, SqlFailure>;

/// Runs one operation of the public API, turning SQLite's errors into the store's own kinds.
pub(super) fn sql<T>(operation: impl FnOnce() -> SqlResult<T>) -> LocalResult<T> {
    operation().map_err(|failure| match failure {
        SqlFailure::Store(e) => e,
        SqlFailure::Sql(e) => {
            let message = e.to_string();
            match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => LocalStoreError::DiskFull(message),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    LocalStoreError::Busy(message)
                }
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                    LocalStoreError::Corrupt(message)
                }
                _ => LocalStoreError::Database(message),
            }
        }
    })
}
