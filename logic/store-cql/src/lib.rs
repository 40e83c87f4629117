//! A [`TimelineStore`] over ScyllaDB or Apache Cassandra (CQL): the storage of the scaled-out
//! shape, where several stateless logic nodes share one store.
//!
//! CQL has no transaction across partitions, yet the store must hand out contiguous inbox and
//! conversation seqs that are never reused, survive a node that stops mid-operation, and turn
//! a retried operation into the same result rather than a second copy. `DESIGN.md` (beside this
//! crate's `Cargo.toml`) says how: every seq is claimed by a lightweight transaction on one
//! small "gate" partition that records, in the same transaction, what the seq holds; everything
//! else is a copy or a derivation of what the gates hold, written so that repeating it is
//! harmless. Every mutation can therefore be retried, by any node, with the same ids.
//!
//! The store passes the backend-independent conformance suite of `timeline-store`
//! (`tests/conformance.rs`, against a real Cassandra node that `scripts/cassandra.sh` starts).

mod change;
mod entry;
mod gate;
mod group;
mod read;
mod schema;
mod send;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use im_protocol::pb;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::CqlValue;
use timeline_store::{
    CommittedMessage, ConversationState, Delivery, GroupChange, HistoryPage, InboxPage,
    InboxRetention, NewGroup, NewMessage, StoreError, StoreResult, TimelineStore,
};

use crate::schema::Statements;

/// Inbox epochs are below 2^53, so that JavaScript clients hold them exactly.
const EPOCH_LIMIT: u64 = 1 << 53;

/// Inbox appends one operation keeps in flight at once (a group's fan-out).
pub(crate) const FANOUT_CONCURRENCY: usize = 64;

/// Server msg ids a node reserves at once (one transaction per block; a node that stops leaves
/// the rest of its block unused, never reused).
const ID_BLOCK: i64 = 256;

/// How to reach the cluster and lay out the data.
#[derive(Clone, Debug)]
pub struct CqlOptions {
    /// Contact points, `host:port` (the driver discovers the rest of the cluster).
    pub nodes: Vec<String>,
    /// The keyspace (created if missing): letters, digits and underscores.
    pub keyspace: String,
    /// The keyspace's replication, a CQL map literal, used only when creating it. For a real
    /// cluster: `{'class': 'NetworkTopologyStrategy', 'dc1': 3}` (see DESIGN.md).
    pub replication: String,
    /// Inbox retention (as the embedded store's).
    pub retention: InboxRetention,
    /// Deadline of one request to the cluster.
    pub request_timeout: Duration,
}

impl CqlOptions {
    /// One node, replication factor 1: tests and a single-machine trial.
    pub fn single_node(node: impl Into<String>, keyspace: impl Into<String>) -> CqlOptions {
        CqlOptions {
            nodes: vec![node.into()],
            keyspace: keyspace.into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            retention: InboxRetention::UNLIMITED,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The CQL store. Cheap to clone: clones share the session.
#[derive(Clone)]
pub struct CqlStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlStore")
            .field("keyspace", &self.inner.keyspace)
            .field("inbox_epoch", &self.inner.epoch)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    session: Session,
    st: Statements,
    keyspace: String,
    epoch: u64,
    retention: InboxRetention,
    /// The next server msg id of this node's block, and the end of the block.
    ids: tokio::sync::Mutex<(i64, i64)>,
    /// Last known inbox heads: the first guess of an append's transaction (a wrong guess costs
    /// one more round trip, never a wrong seq). Bounded: cleared when it grows too big.
    heads: Mutex<HashMap<String, u64>>,
    /// Test builds only: where the next send stops, between its conversation seq and its
    /// fan-out, until released.
    #[cfg(feature = "testing")]
    pause: Mutex<Option<testing::SendPause>>,
    /// Last known conversation heads and last message times, the same way.
    conv_heads: Mutex<HashMap<String, (u64, u64)>>,
}

impl CqlStore {
    /// Connects, creates the keyspace and tables if missing, and prepares the statements.
    pub async fn connect(options: CqlOptions) -> StoreResult<CqlStore> {
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(options.request_timeout))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&options.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot reach the CQL cluster: {e}")))?;
        schema::ensure(&session, &options.keyspace, &options.replication).await?;
        let st = Statements::prepare(&session, &options.keyspace).await?;
        let mut inner = Inner {
            session,
            st,
            keyspace: options.keyspace,
            epoch: 0,
            retention: options.retention,
            ids: tokio::sync::Mutex::new((0, 0)),
            heads: Mutex::new(HashMap::new()),
            conv_heads: Mutex::new(HashMap::new()),
            #[cfg(feature = "testing")]
            pause: Mutex::new(None),
        };
        inner.epoch = inner.load_epoch().await?;
        Ok(CqlStore {
            inner: Arc::new(inner),
        })
    }

    /// The keyspace this store uses.
    pub fn keyspace(&self) -> &str {
        &self.inner.keyspace
    }

    /// The inbox retention the store enforces.
    pub fn inbox_retention(&self) -> InboxRetention {
        self.inner.retention
    }

    /// Test builds only: the next send through this handle stops after it has its conversation
    /// seq and before its fan-out (a logic node paused mid-send), until the returned pause is
    /// released.
    #[cfg(feature = "testing")]
    pub fn pause_next_send(&self) -> testing::SendPauseHandle {
        let (pause, handle) = testing::SendPause::new();
        if let Ok(mut slot) = self.inner.pause.lock() {
            *slot = Some(pause);
        }
        handle
    }
}

impl Inner {
    /// The keyspace's inbox epoch: the first node to start picks it, at random.
    async fn load_epoch(&self) -> StoreResult<u64> {
        let candidate = rand::random_range(1..EPOCH_LIMIT) as i64;
        let outcome = lwt(self
            .session
            .execute_unpaged(&self.st.meta_insert, ("inbox_epoch", candidate))
            .await
            .map_err(backend)?)?;
        if outcome.applied {
            return Ok(candidate as u64);
        }
        let value = outcome
            .value("value")
            .and_then(as_i64)
            .ok_or_else(|| StoreError::Backend("the stored inbox epoch is unreadable".into()))?;
        Ok(value as u64)
    }

    /// Adds `count` to counter `name` (starting at 1) and returns the first value reserved.
    async fn reserve(&self, name: &str, count: i64) -> StoreResult<i64> {
        for _ in 0..100 {
            let current = self
                .session
                .execute_unpaged(&self.st.meta_get, (name,))
                .await
                .map_err(backend)?
                .into_rows_result()
                .map_err(backend)?
                .maybe_first_row::<(Option<i64>,)>()
                .map_err(backend)?
                .and_then(|(value,)| value);
            let Some(current) = current else {
                // The first use: create the counter (whoever wins, the loop reads it).
                self.session
                    .execute_unpaged(&self.st.meta_insert, (name, 1_i64))
                    .await
                    .map_err(backend)?;
                continue;
            };
            let outcome = lwt(self
                .session
                .execute_unpaged(&self.st.meta_cas, (current + count, name, current))
                .await
                .map_err(backend)?)?;
            if outcome.applied {
                return Ok(current);
            }
        }
        Err(StoreError::Unavailable(format!(
            "too much contention on counter {name}"
        )))
    }

    /// A server msg id, unique across the cluster and never reused.
    async fn next_server_msg_id(&self) -> StoreResult<u64> {
        let mut block = self.ids.lock().await;
        if block.0 >= block.1 {
            let first = self.reserve("server_msg_id", ID_BLOCK).await?;
            *block = (first, first + ID_BLOCK);
        }
        let id = block.0;
        block.0 += 1;
        Ok(id as u64)
    }
}

/// The outcome of a lightweight transaction: applied or not, and the current values the
/// cluster returned when it was not.
pub(crate) struct Lwt {
    pub applied: bool,
    pub rows: Vec<HashMap<String, CqlValue>>,
}

impl Lwt {
    /// A column of the first returned row that has it set.
    pub fn value(&self, column: &str) -> Option<&CqlValue> {
        self.rows.iter().find_map(|row| row.get(column))
    }
}

/// Reads the outcome of a conditional statement or batch.
pub(crate) fn lwt(result: QueryResult) -> StoreResult<Lwt> {
    let rows = result.into_rows_result().map_err(backend)?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let mut applied = false;
    let mut out = Vec::new();
    for row in rows.rows::<scylla::value::Row>().map_err(backend)? {
        let row = row.map_err(backend)?;
        let mut values = HashMap::new();
        for (name, value) in names.iter().zip(row.columns) {
            if let Some(value) = value {
                if name == "[applied]" {
                    applied = matches!(value, CqlValue::Boolean(true));
                } else {
                    values.insert(name.clone(), value);
                }
            }
        }
        out.push(values);
    }
    Ok(Lwt { applied, rows: out })
}

/// A bigint or int column's value.
pub(crate) fn as_i64(value: &CqlValue) -> Option<i64> {
    match value {
        CqlValue::BigInt(v) => Some(*v),
        CqlValue::Int(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// A driver or cluster failure. Timeouts and unreachable replicas are `Unavailable` (the
/// outcome of a write may be unknown: every write here may be repeated); anything else is a
/// backend failure.
pub(crate) fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("CQL: {error}"))
}

/// A seq or count as CQL's bigint.
pub(crate) fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A CQL bigint as a seq (negative values, which the store never writes, read as 0).
pub(crate) fn unbig(value: Option<i64>) -> u64 {
    value.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

/// The bucket (partition) of a seq in `inbox` and `messages`.
pub(crate) fn bucket(seq: u64) -> i64 {
    big(seq / schema::BUCKET)
}

impl TimelineStore for CqlStore {
    async fn commit_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<StoreResult<CommittedMessage>> {
        self.inner.commit_messages(messages).await
    }

    async fn mark_read(
        &self,
        user: &str,
        conversation_id: &str,
        read_seq: u64,
        receipt_to: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<(ConversationState, Vec<Delivery>)> {
        self.inner
            .mark_read(user, conversation_id, read_seq, receipt_to, now_ms)
            .await
    }

    async fn recall(
        &self,
        conversation_id: &str,
        seq: u64,
        by_user: &str,
        recipients: &[String],
        window_ms: u64,
        now_ms: u64,
    ) -> StoreResult<(pb::RecallEvent, Vec<Delivery>)> {
        self.inner
            .recall(conversation_id, seq, by_user, recipients, window_ms, now_ms)
            .await
    }

    async fn read_inbox(
        &self,
        user: &str,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> StoreResult<InboxPage> {
        self.inner.read_inbox(user, from_seq, to_seq, limit).await
    }

    async fn read_history(
        &self,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        self.inner
            .read_history(None, conversation_id, anchor_seq, direction, limit)
            .await
    }

    async fn read_history_as(
        &self,
        viewer: &str,
        conversation_id: &str,
        anchor_seq: u64,
        direction: pb::HistoryDirection,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        self.inner
            .read_history(Some(viewer), conversation_id, anchor_seq, direction, limit)
            .await
    }

    async fn delete_messages(
        &self,
        user: &str,
        conversation_id: &str,
        seqs: &[u64],
        now_ms: u64,
    ) -> StoreResult<(u64, Vec<Delivery>)> {
        self.inner
            .delete_messages(user, conversation_id, seqs, now_ms)
            .await
    }

    async fn conversations(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<ConversationState>, String)> {
        self.inner.conversations(user, limit, cursor).await
    }

    async fn conversation(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> StoreResult<Option<ConversationState>> {
        self.inner.conversation(user, conversation_id).await
    }

    async fn sweep_inbox_retention(&self, now_ms: u64) -> StoreResult<u64> {
        self.inner.sweep_inbox_retention(now_ms).await
    }

    async fn inbox_head(&self, user: &str) -> StoreResult<u64> {
        timeline_store::limits::check_part("id", user)?;
        Ok(self.inner.inbox_statics(user).await?.0)
    }

    fn inbox_epoch(&self) -> u64 {
        self.inner.epoch
    }

    async fn record_delivery(&self, user: &str, device: &str, seq: u64) -> StoreResult<()> {
        self.inner.record_delivery(user, device, seq).await
    }

    async fn delivery_cursor(&self, user: &str, device: &str) -> StoreResult<u64> {
        self.inner.delivery_cursor(user, device).await
    }

    async fn put_user_setting(
        &self,
        user: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> StoreResult<()> {
        self.inner.put_user_setting(user, key, value).await
    }

    async fn user_settings(&self, user: &str, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.inner.user_settings(user, prefix).await
    }

    async fn create_group(&self, group: NewGroup) -> StoreResult<GroupChange> {
        self.inner.create_group(group).await
    }

    async fn add_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.inner
            .add_members(group_id, actor, members, max_members, now_ms)
            .await
    }

    async fn remove_members(
        &self,
        group_id: &str,
        actor: &str,
        members: &[String],
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.inner
            .remove_members(group_id, actor, members, now_ms)
            .await
    }

    async fn join_group(
        &self,
        group_id: &str,
        user: &str,
        max_members: u32,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.inner
            .join_group(group_id, user, max_members, now_ms)
            .await
    }

    async fn leave_group(
        &self,
        group_id: &str,
        user: &str,
        now_ms: u64,
    ) -> StoreResult<GroupChange> {
        self.inner.leave_group(group_id, user, now_ms).await
    }

    async fn group(&self, group_id: &str) -> StoreResult<pb::GroupInfo> {
        self.inner.group(group_id).await
    }

    async fn group_members(
        &self,
        group_id: &str,
        limit: u32,
        cursor: &str,
    ) -> StoreResult<(Vec<pb::GroupMember>, String)> {
        self.inner.group_members(group_id, limit, cursor).await
    }

    async fn is_member(&self, group_id: &str, user: &str) -> StoreResult<bool> {
        self.inner.is_member(group_id, user).await
    }

    async fn member_ids(&self, group_id: &str) -> StoreResult<Vec<String>> {
        self.inner.member_ids(group_id).await
    }

    // Read fan-out (SPEC §13.12) is not built for this store yet: its sends run as several
    // repeatable steps, and checking the group's mode atomically with them needs a design of
    // its own. The logic tier keeps every group in write fan-out on it (and so caps groups at
    // the write fan-out size).
    fn supports_read_fanout(&self) -> bool {
        false
    }

    async fn set_group_fanout(
        &self,
        _group_id: &str,
        _read_fanout: bool,
        _now_ms: u64,
    ) -> StoreResult<GroupChange> {
        Err(StoreError::Unavailable(
            "read fan-out is not supported by the CQL store".to_owned(),
        ))
    }

    async fn read_fanout_groups(&self, user: &str) -> StoreResult<Vec<String>> {
        timeline_store::limits::check_id(user, "user id")?;
        Ok(Vec::new())
    }
}
