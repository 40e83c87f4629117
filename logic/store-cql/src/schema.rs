//! The keyspace's tables, and every statement the store runs, prepared once at connect.
//!
//! Creating the schema is safe at every start and on several nodes at once: every statement is
//! `IF NOT EXISTS`, and the store waits for schema agreement before preparing anything.
//!
//! Layout (DESIGN.md says why):
//! - `inbox_gate`, one partition per user: the inbox head (static), the entries claimed but not
//!   yet copied to `inbox` (static map `pending`), and one row per appended entry key (a
//!   message's server id, an event's idempotency key) naming its seq. Every append is one
//!   lightweight transaction on this partition.
//! - `inbox`, partitioned by `(user, seq / BUCKET)`: the entries, bounded per partition.
//! - `conv_gate` / `messages`: the same for conversation timelines (head, last message time,
//!   pending messages; messages bucketed by seq).
//! - `sends`: one row per `(sender, client_msg_id)`, the idempotency record of a send.
//! - `conv_states`, `own_messages`, `hidden`, `delivery_cursors`: a user's view.
//! - `groups` (one partition per group: statics for the group, a row per member),
//!   `group_requests`, `meta` (inbox epoch, id counters).

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use timeline_store::{StoreError, StoreResult};

use crate::backend;

/// Seqs per partition of `inbox` and of `messages`: a partition holds at most this many rows,
/// whatever the length of the timeline (the bucketing Discord describes for its messages).
pub(crate) const BUCKET: u64 = 1000;

/// The tables; `{ks}` is replaced by the keyspace.
const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.meta (name text PRIMARY KEY, value bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.inbox_gate (user text, key text, seq bigint, \
     head bigint static, pending map<bigint, blob> static, PRIMARY KEY (user, key)) \
     WITH gc_grace_seconds = 3600",
    "CREATE TABLE IF NOT EXISTS {ks}.inbox (user text, bucket bigint, seq bigint, entry blob, \
     appended_ms bigint, PRIMARY KEY ((user, bucket), seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.inbox_oldest (user text PRIMARY KEY, oldest bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.conv_gate (conversation_id text, server_msg_id bigint, \
     seq bigint, head bigint static, last_ms bigint static, pending map<bigint, blob> static, \
     PRIMARY KEY (conversation_id, server_msg_id)) WITH gc_grace_seconds = 3600",
    "CREATE TABLE IF NOT EXISTS {ks}.messages (conversation_id text, bucket bigint, seq bigint, \
     message blob, recalled boolean, PRIMARY KEY ((conversation_id, bucket), seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.sends (sender text, client_msg_id text, \
     conversation_id text, server_msg_id bigint, content_type bigint, content_len bigint, \
     content_digest bigint, conversation_seq bigint, sender_inbox_seq bigint, done boolean, \
     PRIMARY KEY ((sender, client_msg_id)))",
    "CREATE TABLE IF NOT EXISTS {ks}.conv_states (user text, conversation_id text, kind int, \
     peer text, read_seq bigint, read_ms bigint, joined_ms bigint, peer_read_seq bigint, \
     PRIMARY KEY (user, conversation_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.own_messages (user text, conversation_id text, seq bigint, \
     PRIMARY KEY ((user, conversation_id), seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.hidden (user text, conversation_id text, seq bigint, \
     PRIMARY KEY ((user, conversation_id), seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.delivery_cursors (user text, device text, seq bigint, \
     PRIMARY KEY (user, device))",
    "CREATE TABLE IF NOT EXISTS {ks}.user_settings (user text, name text, value blob, \
     PRIMARY KEY (user, name))",
    "CREATE TABLE IF NOT EXISTS {ks}.groups (group_id text, member text, role int, \
     joined_ms bigint, join_order bigint, name text static, owner text static, \
     open boolean static, created_ms bigint static, member_count bigint static, \
     broadcast boolean static, version bigint static, next_join_order bigint static, \
     pending map<bigint, blob> static, \
     PRIMARY KEY (group_id, member))",
    "CREATE TABLE IF NOT EXISTS {ks}.group_requests (owner text, request_id text, \
     group_id text, PRIMARY KEY ((owner, request_id)))",
];

/// Creates the keyspace (with `replication`, a CQL map literal) and the tables if missing.
pub(crate) async fn ensure(
    session: &Session,
    keyspace: &str,
    replication: &str,
) -> StoreResult<()> {
    if !keyspace
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || keyspace.is_empty()
        || keyspace.len() > 48
    {
        return Err(StoreError::InvalidArgument(format!(
            "keyspace name {keyspace:?}: 1 to 48 letters, digits or underscores"
        )));
    }
    let create = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication} \
         AND durable_writes = true"
    );
    session.query_unpaged(create, &[]).await.map_err(backend)?;
    for table in TABLES {
        session
            .query_unpaged(table.replace("{ks}", keyspace), &[])
            .await
            .map_err(backend)?;
    }
    for (table, column, kind) in ADDED_COLUMNS {
        let present = session
            .query_unpaged(
                "SELECT column_name FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
                (keyspace, *table, *column),
            )
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(String,)>()
            .map_err(backend)?
            .is_some();
        if !present {
            session
                .query_unpaged(
                    format!("ALTER TABLE {keyspace}.{table} ADD {column} {kind}"),
                    &[],
                )
                .await
                .map_err(backend)?;
        }
    }
    session.await_schema_agreement().await.map_err(backend)?;
    Ok(())
}

/// Columns added to a table after its first release, as (table, column, type): a keyspace
/// created by an older build gets them at start (`CREATE TABLE IF NOT EXISTS` leaves an
/// existing table as it is).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("groups", "broadcast", "boolean static")];

macro_rules! statements {
    ($($name:ident = $cql:literal;)*) => {
        /// Every statement of the store, prepared.
        pub(crate) struct Statements {
            $(pub(crate) $name: PreparedStatement,)*
        }

        impl Statements {
            /// Prepares them all against `keyspace`.
            pub(crate) async fn prepare(session: &Session, keyspace: &str) -> StoreResult<Statements> {
                Ok(Statements {
                    $($name: {
                        let mut statement = session
                            .prepare($cql.replace("{ks}", keyspace))
                            .await
                            .map_err(backend)?;
                        // Every statement here may be repeated: the store's writes are
                        // idempotent (see DESIGN.md), so the driver may retry them.
                        statement.set_is_idempotent(true);
                        statement
                    },)*
                })
            }
        }
    };
}

statements! {
    meta_insert = "INSERT INTO {ks}.meta (name, value) VALUES (?, ?) IF NOT EXISTS";
    meta_get = "SELECT value FROM {ks}.meta WHERE name = ?";
    meta_cas = "UPDATE {ks}.meta SET value = ? WHERE name = ? IF value = ?";

    inbox_claim_head = "UPDATE {ks}.inbox_gate SET head = ?, pending[?] = ? WHERE user = ? IF head = ?";
    inbox_claim_key = "INSERT INTO {ks}.inbox_gate (user, key, seq) VALUES (?, ?, ?) IF NOT EXISTS USING TTL 604800";
    inbox_gate_statics = "SELECT head, pending FROM {ks}.inbox_gate WHERE user = ? LIMIT 1";
    inbox_gate_key = "SELECT seq FROM {ks}.inbox_gate WHERE user = ? AND key = ?";
    inbox_pending_done = "DELETE pending[?] FROM {ks}.inbox_gate WHERE user = ?";
    inbox_claim_head_many = "UPDATE {ks}.inbox_gate SET head = ?, pending = pending + ? WHERE user = ? IF head = ?";
    inbox_pending_done_many = "UPDATE {ks}.inbox_gate SET pending = pending - ? WHERE user = ?";
    inbox_heads = "SELECT DISTINCT user, head FROM {ks}.inbox_gate";
    inbox_put = "INSERT INTO {ks}.inbox (user, bucket, seq, entry, appended_ms) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP 1";
    inbox_range = "SELECT seq, entry, appended_ms FROM {ks}.inbox WHERE user = ? AND bucket = ? AND seq >= ? AND seq <= ? LIMIT ?";
    inbox_trim = "DELETE FROM {ks}.inbox WHERE user = ? AND bucket = ? AND seq >= ? AND seq <= ?";
    oldest_get = "SELECT oldest FROM {ks}.inbox_oldest WHERE user = ?";
    oldest_put = "UPDATE {ks}.inbox_oldest USING TIMESTAMP ? SET oldest = ? WHERE user = ?";

    conv_claim_head = "UPDATE {ks}.conv_gate SET head = ?, last_ms = ?, pending[?] = ? WHERE conversation_id = ? IF head = ?";
    conv_claim_key = "INSERT INTO {ks}.conv_gate (conversation_id, server_msg_id, seq) VALUES (?, ?, ?) IF NOT EXISTS USING TTL 604800";
    conv_gate_statics = "SELECT head, last_ms, pending FROM {ks}.conv_gate WHERE conversation_id = ? LIMIT 1";
    conv_gate_summary = "SELECT head, last_ms FROM {ks}.conv_gate WHERE conversation_id = ? LIMIT 1";
    conv_pending_done = "DELETE pending[?] FROM {ks}.conv_gate WHERE conversation_id = ?";
    conv_claim_head_many = "UPDATE {ks}.conv_gate SET head = ?, last_ms = ?, pending = pending + ? WHERE conversation_id = ? IF head = ?";
    conv_pending_done_many = "UPDATE {ks}.conv_gate SET pending = pending - ? WHERE conversation_id = ?";
    message_put = "INSERT INTO {ks}.messages (conversation_id, bucket, seq, message, recalled) VALUES (?, ?, ?, ?, false) USING TIMESTAMP 1";
    message_get = "SELECT message FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq = ?";
    messages_asc = "SELECT seq, message FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq ASC LIMIT ?";
    messages_desc = "SELECT seq, message FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq DESC LIMIT ?";
    messages_in = "SELECT seq, message FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq IN ?";
    message_recall = "UPDATE {ks}.messages SET message = ?, recalled = true WHERE conversation_id = ? AND bucket = ? AND seq = ? IF recalled = false";

    send_claim = "INSERT INTO {ks}.sends (sender, client_msg_id, conversation_id, server_msg_id, content_type, content_len, content_digest) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS";
    send_done = "UPDATE {ks}.sends SET conversation_seq = ?, sender_inbox_seq = ?, done = true WHERE sender = ? AND client_msg_id = ?";

    state_touch = "UPDATE {ks}.conv_states SET kind = ?, peer = ? WHERE user = ? AND conversation_id = ?";
    state_join = "UPDATE {ks}.conv_states SET kind = ?, peer = ?, read_seq = ?, read_ms = ?, joined_ms = ?, peer_read_seq = 0 WHERE user = ? AND conversation_id = ?";
    state_drop = "DELETE FROM {ks}.conv_states WHERE user = ? AND conversation_id = ?";
    state_get = "SELECT conversation_id, kind, peer, read_seq, read_ms, joined_ms, peer_read_seq FROM {ks}.conv_states WHERE user = ? AND conversation_id = ?";
    states_of = "SELECT conversation_id, kind, peer, read_seq, read_ms, joined_ms, peer_read_seq FROM {ks}.conv_states WHERE user = ?";
    state_read_cas = "UPDATE {ks}.conv_states SET read_seq = ?, read_ms = ? WHERE user = ? AND conversation_id = ? IF read_seq = ?";
    state_peer_read_cas = "UPDATE {ks}.conv_states SET peer_read_seq = ? WHERE user = ? AND conversation_id = ? IF peer_read_seq = ?";
    own_put = "INSERT INTO {ks}.own_messages (user, conversation_id, seq) VALUES (?, ?, ?)";
    own_count = "SELECT COUNT(*) FROM {ks}.own_messages WHERE user = ? AND conversation_id = ? AND seq > ? AND seq <= ?";
    hidden_put = "INSERT INTO {ks}.hidden (user, conversation_id, seq) VALUES (?, ?, ?)";
    hidden_of = "SELECT seq FROM {ks}.hidden WHERE user = ? AND conversation_id = ?";
    cursor_put = "UPDATE {ks}.delivery_cursors USING TIMESTAMP ? SET seq = ? WHERE user = ? AND device = ?";
    cursor_get = "SELECT seq FROM {ks}.delivery_cursors WHERE user = ? AND device = ?";
    setting_put = "INSERT INTO {ks}.user_settings (user, name, value) VALUES (?, ?, ?)";
    setting_drop = "DELETE FROM {ks}.user_settings WHERE user = ? AND name = ?";
    settings_from = "SELECT name, value FROM {ks}.user_settings WHERE user = ? AND name >= ? LIMIT ?";

    group_get = "SELECT member, role, joined_ms, join_order, name, owner, open, created_ms, member_count, version, next_join_order, pending, broadcast FROM {ks}.groups WHERE group_id = ?";
    group_cas = "UPDATE {ks}.groups SET name = ?, owner = ?, open = ?, created_ms = ?, member_count = ?, version = ?, next_join_order = ?, pending[?] = ?, broadcast = ? WHERE group_id = ? IF version = ?";
    group_put_member = "INSERT INTO {ks}.groups (group_id, member, role, joined_ms, join_order) VALUES (?, ?, ?, ?, ?)";
    group_drop_member = "DELETE FROM {ks}.groups WHERE group_id = ? AND member = ?";
    group_pending_done = "DELETE pending[?] FROM {ks}.groups WHERE group_id = ?";
    group_request_claim = "INSERT INTO {ks}.group_requests (owner, request_id, group_id) VALUES (?, ?, ?) IF NOT EXISTS";
    group_request_get = "SELECT group_id FROM {ks}.group_requests WHERE owner = ? AND request_id = ?";
}
