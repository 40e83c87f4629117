//! The default [`LocalStore`]: one SQLite file that survives app restarts.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a message is on disk once
//! [`LocalStore::outbox_push`] returns and a crash right after cannot lose it (`NORMAL` would
//! only be atomic, not durable, and the user would see a sent message vanish).
//!
//! Layout (`PRAGMA user_version` = [`SCHEMA_VERSION`], for future migrations):
//! - `meta(key, value)`: the inbox cursor and the last local id handed out;
//! - `outbox`: items by local id (the transmission order);
//! - `messages`: one row per message. Messages with a seq are unique by
//!   `(conversation_id, seq)`; own messages the server has not stored yet sit at seq 0, unique by
//!   `local_id`. The ack (or the inbox copy, whichever comes first) moves that row to its seq,
//!   so a message never has two rows;
//! - `conversations`: one row per conversation, the last message in `last_*` columns (all NULL
//!   when there is none);
//! - `read_groups`: the read-fan-out groups followed by conversation seq, with the position
//!   (added within version 1: `CREATE TABLE IF NOT EXISTS` gives older files the table).
//!
//! Seqs, local ids, times and counters must stay below 2^63 (SQLite integers are signed): a
//! larger value is refused with an error rather than stored out of order. `server_msg_id` is an
//! opaque uint64 and is stored bit for bit. Anything read back that does not fit its field
//! (wrong type, negative number, unknown enum code) is [`LocalStoreError::Corrupt`], never a
//! panic.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::store::{
    LocalConversation, LocalMessage, LocalResult, LocalStore, LocalStoreError, OutboxItem,
    SendState,
};

/// The schema this build creates and understands.
pub const SCHEMA_VERSION: i64 = 1;

/// Version 1. `IF NOT EXISTS` everywhere so opening an existing file is a no-op.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS read_groups (
    conversation_id TEXT PRIMARY KEY NOT NULL,
    position        INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS outbox (
    local_id        INTEGER PRIMARY KEY NOT NULL,
    recipient_kind  INTEGER NOT NULL,
    recipient       TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    content_type    INTEGER NOT NULL,
    content         BLOB NOT NULL,
    created_ms      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    state           INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_client_msg_id ON outbox (client_msg_id);

CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    local_id        INTEGER NOT NULL,
    sender          TEXT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    server_msg_id   INTEGER NOT NULL,
    time_ms         INTEGER NOT NULL,
    content_type    INTEGER NOT NULL,
    content         BLOB NOT NULL,
    state           INTEGER NOT NULL,
    recalled        INTEGER NOT NULL
);
-- Server messages: the key the inbox, history and recalls address them by.
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages (conversation_id, seq) WHERE seq > 0;
-- Own messages waiting for their seq: keyed by local id (the outbox key).
CREATE UNIQUE INDEX IF NOT EXISTS messages_unacked ON messages (local_id) WHERE seq = 0;
-- Own messages that already have their seq, found again by the ack.
CREATE INDEX IF NOT EXISTS messages_by_local_id ON messages (local_id, seq) WHERE local_id > 0;

CREATE TABLE IF NOT EXISTS conversations (
    conversation_id      TEXT PRIMARY KEY NOT NULL,
    peer                 TEXT NOT NULL,
    title                TEXT NOT NULL,
    last_seq             INTEGER NOT NULL,
    read_seq             INTEGER NOT NULL,
    unread_count         INTEGER NOT NULL,
    peer_read_seq        INTEGER NOT NULL,
    updated_ms           INTEGER NOT NULL,
    last_local_id        INTEGER,
    last_conversation_id TEXT,
    last_sender          TEXT,
    last_client_msg_id   TEXT,
    last_msg_seq         INTEGER,
    last_server_msg_id   INTEGER,
    last_time_ms         INTEGER,
    last_content_type    INTEGER,
    last_content         BLOB,
    last_state           INTEGER,
    last_recalled        INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated_ms DESC, conversation_id);
";

/// The `messages` columns [`read_message`] expects, in its order.
macro_rules! message_columns {
    () => {
        "local_id, conversation_id, sender, client_msg_id, seq, server_msg_id, time_ms, \
         content_type, content, state, recalled"
    };
}

/// The `outbox` columns [`read_outbox_item`] expects, in its order.
macro_rules! outbox_columns {
    () => {
        "local_id, recipient_kind, recipient, conversation_id, client_msg_id, content_type, \
         content, created_ms, attempts, state"
    };
}

/// The `conversations` columns [`read_conversation`] expects, in its order.
macro_rules! conversation_columns {
    () => {
        "conversation_id, peer, title, last_seq, read_seq, unread_count, peer_read_seq, updated_ms, \
         last_local_id, last_conversation_id, last_sender, last_client_msg_id, last_msg_seq, \
         last_server_msg_id, last_time_ms, last_content_type, last_content, last_state, last_recalled"
    };
}

/// Meta key of the inbox cursor.
const META_CURSOR: &str = "cursor";
/// `meta` key of the inbox epoch the cursor belongs to.
const META_INBOX_EPOCH: &str = "inbox_epoch";
/// Meta key of the last local id handed out.
const META_LAST_LOCAL_ID: &str = "last_local_id";

mod rows;

use rows::*;

/// A [`LocalStore`] over one SQLite connection.
pub struct SqliteStore {
    conn: Connection,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> LocalResult<SqliteStore> {
        sql(|| Self::init(Connection::open(path)?))
    }

    /// A store that lives only as long as the value (tests, ephemeral sessions).
    pub fn open_in_memory() -> LocalResult<SqliteStore> {
        sql(|| Self::init(Connection::open_in_memory()?))
    }

    fn init(mut conn: Connection) -> SqlResult<SqliteStore> {
        // Another process (an app extension) may hold the file briefly.
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            tracing::warn!(journal_mode = %mode, "SQLite refused WAL mode; the store still works, with slower commits");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Room for every statement this type prepares, so none is ever re-prepared.
        conn.set_prepared_statement_cache_capacity(64);

        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(SqlFailure::corrupt(format!(
                "database schema version {version} is newer than this build supports ({SCHEMA_VERSION})"
            )));
        }
        tx.execute_batch(SCHEMA)?;
        if version < SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(SqliteStore { conn })
    }

    /// A write transaction that takes the write lock at once, so it never fails half-way on
    /// upgrading a read lock.
    fn write(&mut self) -> SqlResult<rusqlite::Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    fn meta(&self, key: &str) -> SqlResult<Option<u64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
        let mut rows = stmt.query(params![key])?;
        match rows.next()? {
            Some(row) => Ok(Some(column(row, 0)?)),
            None => Ok(None),
        }
    }
}

impl LocalStore for SqliteStore {
    fn cursor(&self) -> LocalResult<u64> {
        sql(|| Ok(self.meta(META_CURSOR)?.unwrap_or(0)))
    }

    fn set_cursor(&mut self, seq: u64) -> LocalResult<()> {
        sql(|| {
            let mut stmt = self.conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?;
            stmt.execute(params![META_CURSOR, seq])?;
            Ok(())
        })
    }

    fn inbox_epoch(&self) -> LocalResult<u64> {
        sql(|| Ok(self.meta(META_INBOX_EPOCH)?.unwrap_or(0)))
    }

    fn set_inbox_epoch(&mut self, epoch: u64) -> LocalResult<()> {
        sql(|| {
            let mut stmt = self.conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?;
            stmt.execute(params![META_INBOX_EPOCH, epoch])?;
            Ok(())
        })
    }

    fn reset_inbox(&mut self, epoch: u64) -> LocalResult<()> {
        sql(|| {
            let tx = self.write()?;
            tx.execute("DELETE FROM messages WHERE seq > 0", [])?;
            tx.execute("DELETE FROM conversations", [])?;
            tx.execute("DELETE FROM read_groups", [])?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, 0) ON CONFLICT (key) DO UPDATE SET value = 0",
                params![META_CURSOR],
            )?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![META_INBOX_EPOCH, epoch],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn next_local_id(&mut self) -> LocalResult<u64> {
        sql(|| {
            // One statement: the increment and the read cannot be separated by a crash.
            let mut stmt = self.conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, 1) \
                 ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
            )?;
            let mut rows = stmt.query(params![META_LAST_LOCAL_ID])?;
            let row = rows.next()?.ok_or_else(|| {
                LocalStoreError::Corrupt("next local id: the upsert returned no row".into())
            })?;
            column(row, 0)
        })
    }

    fn outbox_push(&mut self, item: &OutboxItem, message: &LocalMessage) -> LocalResult<()> {
        sql(|| {
            let tx = self.write()?;
            {
                let (kind, recipient) = encode_recipient(&item.recipient);
                let mut insert = tx.prepare_cached(concat!(
                    "INSERT OR REPLACE INTO outbox (",
                    outbox_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ))?;
                insert.execute(params![
                    item.local_id,
                    kind,
                    recipient,
                    item.conversation_id,
                    item.client_msg_id,
                    item.content_type,
                    item.content,
                    item.created_ms,
                    item.attempts,
                    encode_state(item.state),
                ])?;
                // Pushing a local id again replaces its message, as it replaces the item.
                let mut delete =
                    tx.prepare_cached("DELETE FROM messages WHERE local_id = ?1 AND seq = 0")?;
                delete.execute(params![item.local_id])?;
                // The item is the source of truth for the message's identity, so the ack (which
                // finds the message through the item) can never miss it.
                let message = LocalMessage {
                    local_id: item.local_id,
                    conversation_id: item.conversation_id.clone(),
                    client_msg_id: item.client_msg_id.clone(),
                    seq: 0,
                    state: SendState::Sending,
                    ..message.clone()
                };
                insert_message(&tx, &message)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn outbox_pending(&self) -> LocalResult<Vec<OutboxItem>> {
        sql(|| {
            let mut stmt = self.conn.prepare_cached(concat!(
                "SELECT ",
                outbox_columns!(),
                " FROM outbox WHERE state = ?1 ORDER BY local_id"
            ))?;
            let mut rows = stmt.query(params![encode_state(SendState::Sending)])?;
            let mut items = Vec::new();
            while let Some(row) = rows.next()? {
                items.push(read_outbox_item(row)?);
            }
            Ok(items)
        })
    }

    fn outbox_get(&self, local_id: u64) -> LocalResult<Option<OutboxItem>> {
        sql(|| {
            let mut stmt = self.conn.prepare_cached(concat!(
                "SELECT ",
                outbox_columns!(),
                " FROM outbox WHERE local_id = ?1"
            ))?;
            let mut rows = stmt.query(params![local_id])?;
            rows.next()?.map(read_outbox_item).transpose()
        })
    }

    fn outbox_update(&mut self, local_id: u64, attempts: u32, state: SendState) -> LocalResult<()> {
        sql(|| {
            let tx = self.write()?;
            {
                let mut item = tx.prepare_cached(
                    "UPDATE outbox SET attempts = ?2, state = ?3 WHERE local_id = ?1",
                )?;
                item.execute(params![local_id, attempts, encode_state(state)])?;
                // Only a message still at seq 0: one the server already stored stays `Sent`.
                let mut message = tx.prepare_cached(
                    "UPDATE messages SET state = ?2 WHERE local_id = ?1 AND seq = 0",
                )?;
                message.execute(params![local_id, encode_state(state)])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn outbox_acked(
        &mut self,
        client_msg_id: &str,
        seq: u64,
        server_msg_id: u64,
        time_ms: u64,
    ) -> LocalResult<Option<LocalMessage>> {
        sql(|| {
            let tx = self.write()?;
            let updated = {
                let mut find = tx.prepare_cached(
                    "SELECT local_id, conversation_id FROM outbox WHERE client_msg_id = ?1 ORDER BY local_id LIMIT 1",
                )?;
                let mut rows = find.query(params![client_msg_id])?;
                let Some(row) = rows.next()? else {
                    return Ok(None);
                };
                let local_id: u64 = column(row, 0)?;
                let conversation_id: String = column(row, 1)?;
                drop(rows);

                let mut remove = tx.prepare_cached("DELETE FROM outbox WHERE local_id = ?1")?;
                remove.execute(params![local_id])?;

                let own_unacked: Option<i64> = tx
                    .prepare_cached("SELECT id FROM messages WHERE local_id = ?1 AND seq = 0")?
                    .query_row(params![local_id], |row| row.get(0))
                    .optional()?;
                let target = match own_unacked {
                    Some(own) => {
                        let copy: Option<i64> = if seq == 0 {
                            None
                        } else {
                            tx.prepare_cached(
                                "SELECT id FROM messages WHERE conversation_id = ?1 AND seq = ?2 AND seq > 0",
                            )?
                            .query_row(params![conversation_id, seq], |row| row.get(0))
                            .optional()?
                        };
                        match copy {
                            Some(copy) => {
                                // The server's copy is already stored at this seq: adopt it instead
                                // of keeping a second row for the same message.
                                tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?
                                    .execute(params![own])?;
                                tx.prepare_cached(
                                    "UPDATE messages SET local_id = ?2, server_msg_id = ?3, time_ms = ?4, state = ?5 \
                                     WHERE id = ?1",
                                )?
                                .execute(params![
                                    copy,
                                    local_id,
                                    opaque_to_sql(server_msg_id),
                                    time_ms,
                                    encode_state(SendState::Sent)
                                ])?;
                                Some(copy)
                            }
                            None => {
                                tx.prepare_cached(
                                    "UPDATE messages SET seq = ?2, server_msg_id = ?3, time_ms = ?4, state = ?5 \
                                     WHERE id = ?1",
                                )?
                                .execute(params![
                                    own,
                                    seq,
                                    opaque_to_sql(server_msg_id),
                                    time_ms,
                                    encode_state(SendState::Sent)
                                ])?;
                                Some(own)
                            }
                        }
                    }
                    None => {
                        // Already moved to its seq by `put_message` (seen in the inbox first), or
                        // deleted locally since, in which case there is nothing left to update.
                        let moved: Option<i64> = tx
                            .prepare_cached(
                                "SELECT id FROM messages WHERE local_id = ?1 AND local_id > 0 AND conversation_id = ?2 \
                                 ORDER BY seq LIMIT 1",
                            )?
                            .query_row(params![local_id, conversation_id], |row| row.get(0))
                            .optional()?;
                        if let Some(moved) = moved {
                            tx.prepare_cached(
                                "UPDATE messages SET server_msg_id = ?2, time_ms = ?3, state = ?4 WHERE id = ?1",
                            )?
                            .execute(params![moved, opaque_to_sql(server_msg_id), time_ms, encode_state(SendState::Sent)])?;
                        }
                        moved
                    }
                };
                match target {
                    Some(id) => {
                        let mut read = tx.prepare_cached(concat!(
                            "SELECT ",
                            message_columns!(),
                            " FROM messages WHERE id = ?1"
                        ))?;
                        let mut rows = read.query(params![id])?;
                        rows.next()?.map(read_message).transpose()?
                    }
                    None => None,
                }
            };
            tx.commit()?;
            Ok(updated)
        })
    }

    fn put_message(&mut self, message: &LocalMessage) -> LocalResult<bool> {
        sql(|| {
            if message.seq == 0 {
                // Every server message has a seq; seq 0 is reserved for own unacked messages.
                return Ok(false);
            }
            let tx = self.write()?;
            {
                let exists = tx
                    .prepare_cached(
                        "SELECT 1 FROM messages WHERE conversation_id = ?1 AND seq = ?2 AND seq > 0",
                    )?
                    .query_row(params![message.conversation_id, message.seq], |_| Ok(()))
                    .optional()?
                    .is_some();
                if exists {
                    return Ok(false);
                }
                // Our own message seen in the inbox (or history) before its ack: move the local row
                // to its seq rather than storing the message twice.
                let own: Option<u64> = if message.client_msg_id.is_empty() {
                    None
                } else {
                    let mut find = tx.prepare_cached(
                        "SELECT local_id FROM messages \
                         WHERE seq = 0 AND conversation_id = ?1 AND client_msg_id = ?2 AND sender = ?3 \
                         ORDER BY local_id LIMIT 1",
                    )?;
                    let mut rows = find.query(params![
                        message.conversation_id,
                        message.client_msg_id,
                        message.sender
                    ])?;
                    rows.next()?.map(|row| column(row, 0)).transpose()?
                };
                match own {
                    Some(local_id) => {
                        tx.prepare_cached("DELETE FROM messages WHERE local_id = ?1 AND seq = 0")?
                            .execute(params![local_id])?;
                        insert_message(
                            &tx,
                            &LocalMessage {
                                local_id,
                                state: SendState::Sent,
                                ..message.clone()
                            },
                        )?;
                    }
                    None => insert_message(&tx, message)?,
                }
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn recall_message(&mut self, conversation_id: &str, seq: u64) -> LocalResult<bool> {
        sql(|| {
            if seq == 0 {
                return Ok(false);
            }
            let tx = self.write()?;
            let recalled = {
                let changed = tx
                    .prepare_cached(
                        "UPDATE messages SET recalled = 1, content = X'' \
                         WHERE conversation_id = ?1 AND seq = ?2 AND seq > 0",
                    )?
                    .execute(params![conversation_id, seq])?;
                // The preview must not keep what the sender took back.
                tx.prepare_cached(
                    "UPDATE conversations SET last_recalled = 1, last_content = X'' \
                     WHERE conversation_id = ?1 AND last_msg_seq = ?2",
                )?
                .execute(params![conversation_id, seq])?;
                changed > 0
            };
            tx.commit()?;
            Ok(recalled)
        })
    }

    fn delete_messages(&mut self, conversation_id: &str, seqs: &[u64]) -> LocalResult<()> {
        sql(|| {
            let tx = self.write()?;
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM messages WHERE conversation_id = ?1 AND seq = ?2 AND seq > 0",
                )?;
                for &seq in seqs.iter().filter(|&&seq| seq != 0) {
                    delete.execute(params![conversation_id, seq])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> LocalResult<Vec<LocalMessage>> {
        sql(|| {
            let mut messages = Vec::new();
            if limit == 0 {
                return Ok(messages);
            }
            // Both reads see one snapshot even if another connection writes in between.
            let tx = self.conn.unchecked_transaction()?;
            if before_seq == 0 {
                let mut unacked = tx.prepare_cached(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE seq = 0 AND conversation_id = ?1 ORDER BY local_id DESC LIMIT ?2"
                ))?;
                let mut rows = unacked.query(params![conversation_id, limit])?;
                while let Some(row) = rows.next()? {
                    messages.push(read_message(row)?);
                }
            }
            let remaining = u64::from(limit) - messages.len() as u64;
            if remaining > 0 {
                // Stored seqs never exceed i64::MAX, so that bound stands for "no bound".
                let highest = if before_seq == 0 {
                    i64::MAX as u64
                } else {
                    (before_seq - 1).min(i64::MAX as u64)
                };
                let mut acked = tx.prepare_cached(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE conversation_id = ?1 AND seq > 0 AND seq <= ?2 ORDER BY seq DESC LIMIT ?3"
                ))?;
                let mut rows = acked.query(params![conversation_id, highest, remaining])?;
                while let Some(row) = rows.next()? {
                    messages.push(read_message(row)?);
                }
            }
            tx.finish()?;
            Ok(messages)
        })
    }

    fn message(&self, conversation_id: &str, seq: u64) -> LocalResult<Option<LocalMessage>> {
        sql(|| {
            if seq == 0 {
                return Ok(None);
            }
            let mut stmt = self.conn.prepare_cached(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation_id = ?1 AND seq = ?2 AND seq > 0"
            ))?;
            let mut rows = stmt.query(params![conversation_id, seq])?;
            rows.next()?.map(read_message).transpose()
        })
    }

    fn conversation(&self, conversation_id: &str) -> LocalResult<Option<LocalConversation>> {
        sql(|| {
            let mut stmt = self.conn.prepare_cached(concat!(
                "SELECT ",
                conversation_columns!(),
                " FROM conversations WHERE conversation_id = ?1"
            ))?;
            let mut rows = stmt.query(params![conversation_id])?;
            rows.next()?.map(read_conversation).transpose()
        })
    }

    fn put_conversation(&mut self, conversation: &LocalConversation) -> LocalResult<()> {
        sql(|| {
            let mut stmt = self.conn.prepare_cached(concat!(
                "INSERT OR REPLACE INTO conversations (",
                conversation_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
            ))?;
            let c = conversation;
            let last = c.last_message.as_ref();
            stmt.execute(params![
                c.conversation_id,
                c.peer,
                c.title,
                c.last_seq,
                c.read_seq,
                c.unread_count,
                c.peer_read_seq,
                c.updated_ms,
                last.map(|m| m.local_id),
                last.map(|m| &m.conversation_id),
                last.map(|m| &m.sender),
                last.map(|m| &m.client_msg_id),
                last.map(|m| m.seq),
                last.map(|m| opaque_to_sql(m.server_msg_id)),
                last.map(|m| m.time_ms),
                last.map(|m| m.content_type),
                last.map(|m| &m.content),
                last.map(|m| encode_state(m.state)),
                last.map(|m| m.recalled),
            ])?;
            Ok(())
        })
    }

    fn conversations(&self) -> LocalResult<Vec<LocalConversation>> {
        sql(|| {
            let mut stmt = self.conn.prepare_cached(concat!(
                "SELECT ",
                conversation_columns!(),
                " FROM conversations ORDER BY updated_ms DESC, conversation_id"
            ))?;
            let mut rows = stmt.query([])?;
            let mut conversations = Vec::new();
            while let Some(row) = rows.next()? {
                conversations.push(read_conversation(row)?);
            }
            Ok(conversations)
        })
    }

    fn read_group_positions(&self) -> LocalResult<Vec<(String, u64)>> {
        sql(|| {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT conversation_id, position FROM read_groups")?;
            let mut rows = stmt.query([])?;
            let mut positions = Vec::new();
            while let Some(row) = rows.next()? {
                positions.push((column(row, 0)?, column(row, 1)?));
            }
            Ok(positions)
        })
    }

    fn set_read_group_position(
        &mut self,
        conversation_id: &str,
        position: Option<u64>,
    ) -> LocalResult<()> {
        sql(|| {
            match position {
                Some(position) => {
                    let mut stmt = self.conn.prepare_cached(
                        "INSERT INTO read_groups (conversation_id, position) VALUES (?1, ?2) \
                         ON CONFLICT (conversation_id) DO UPDATE SET position = excluded.position",
                    )?;
                    stmt.execute(params![conversation_id, position])?;
                }
                None => {
                    let mut stmt = self
                        .conn
                        .prepare_cached("DELETE FROM read_groups WHERE conversation_id = ?1")?;
                    stmt.execute(params![conversation_id])?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_commits_with_full_sync_in_wal_mode() -> SqlResult<()> {
        let dir = tempfile::tempdir().map_err(|e| LocalStoreError::Corrupt(e.to_string()))?;
        let store = SqliteStore::open(&dir.path().join("client.sqlite"))?;
        // 2 = FULL: the WAL is synced on every commit, so a pushed outbox item survives a crash.
        let synchronous: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))?;
        assert_eq!(synchronous, 2);
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        assert_eq!(mode, "wal");
        Ok(())
    }
}
