//! The client's local store: messages, conversations, the inbox cursor and the outbox.
//!
//! The state machine calls it synchronously (local disk is fast and SQLite is synchronous); the
//! network never waits on it. Two implementations: [`crate::sqlite::SqliteStore`] (default,
//! survives app restarts) and [`crate::memory::MemoryStore`] (tests, ephemeral sessions).
//!
//! Invariant the state machine relies on: `set_cursor(n)` is only called after every inbox
//! entry up to `n` has been applied through the other methods, so a crash between the two loses
//! nothing (the entries are pulled again and applying them is idempotent).

/// The delivery state of a message the user sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SendState {
    /// In the outbox, not yet acknowledged by the server.
    Sending,
    /// Stored by the server (acked, or seen in the inbox).
    Sent,
    /// Gave up after the attempt limit or a non-retryable error; the app may retry it.
    Failed,
}

/// A message as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMessage {
    /// Client-side id: the outbox id for own messages, `0` for messages received from others.
    pub local_id: u64,
    /// Canonical conversation id (`d:a:b` / `g:group`).
    pub conversation_id: String,
    /// Sender user id.
    pub sender: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Conversation seq; `0` until the server assigned one.
    pub seq: u64,
    /// Server message id; `0` until known.
    pub server_msg_id: u64,
    /// Server time (Unix ms), or the local creation time until acked.
    pub time_ms: u64,
    /// App-defined content type.
    pub content_type: u32,
    /// Content (empty once recalled).
    pub content: Vec<u8>,
    /// Own messages: delivery state; received messages: always `Sent`.
    pub state: SendState,
    /// Recalled by its sender.
    pub recalled: bool,
}

/// Where an outgoing message goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// A user.
    User(String),
    /// A group.
    Group(String),
}

/// A message waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxItem {
    /// Client-side id, increasing in creation order.
    pub local_id: u64,
    /// Target.
    pub recipient: Recipient,
    /// Canonical conversation id of the target.
    pub conversation_id: String,
    /// Idempotency key, reused by every retransmission.
    pub client_msg_id: String,
    /// Content type.
    pub content_type: u32,
    /// Content.
    pub content: Vec<u8>,
    /// Local creation time (Unix ms).
    pub created_ms: u64,
    /// Transmissions so far.
    pub attempts: u32,
    /// `Sending` while in the outbox; `Failed` items stay until retried or dropped.
    pub state: SendState,
}

/// A conversation as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LocalConversation {
    /// Canonical conversation id.
    pub conversation_id: String,
    /// The other user (direct) or the group id.
    pub peer: String,
    /// Group title, if known.
    pub title: String,
    /// Highest conversation seq seen.
    pub last_seq: u64,
    /// The newest message, if any.
    pub last_message: Option<LocalMessage>,
    /// The user's read marker.
    pub read_seq: u64,
    /// Messages from others above `read_seq` (as last known from the server or counted locally).
    pub unread_count: u64,
    /// Direct only: the peer's read marker.
    pub peer_read_seq: u64,
    /// Last change (Unix ms).
    pub updated_ms: u64,
}

/// Why the local store failed: the kind of failure, with the engine's own words for logs.
/// Implementations map their engine's errors onto these kinds (SQLite's in `sqlite.rs`), so the
/// interface does not depend on any storage engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocalStoreError {
    /// The storage engine failed: an I/O error, a file that cannot be opened or written, a
    /// statement that failed.
    #[error("local database error: {0}")]
    Database(String),
    /// The disk is full: nothing more can be stored until space is freed.
    #[error("local database is out of disk space: {0}")]
    DiskFull(String),
    /// Another connection (an app extension, a second process) held the database for longer
    /// than the store waits.
    #[error("local database is busy: {0}")]
    Busy(String),
    /// A stored value could not be read back, or the file is damaged, not a database, or of a
    /// newer schema.
    #[error("corrupt local record: {0}")]
    Corrupt(String),
}

/// Result alias.
pub type LocalResult<T> = Result<T, LocalStoreError>;

/// The local store interface.
pub trait LocalStore: Send + 'static {
    /// The highest inbox seq fully applied (0 = nothing yet).
    fn cursor(&self) -> LocalResult<u64>;
    /// Persists the cursor (see the module's invariant).
    fn set_cursor(&mut self, seq: u64) -> LocalResult<()>;

    /// The inbox epoch the cursor belongs to (0 = none known yet; SPEC §10.8).
    fn inbox_epoch(&self) -> LocalResult<u64>;
    /// Records the epoch of a server whose numbering the local state already follows (a first
    /// connection, or an older store that kept none).
    fn set_inbox_epoch(&mut self, epoch: u64) -> LocalResult<()>;
    /// The server's inbox is not the one the local state was built from (restored from an
    /// older backup, recreated empty): forgets everything learned from it (every message with
    /// a seq, every conversation, the cursor) and records `epoch`, in one step. The outbox and
    /// own messages not yet acknowledged stay: they are sent to the new server.
    fn reset_inbox(&mut self, epoch: u64) -> LocalResult<()>;

    /// The next local id to hand out (ids increase across restarts).
    fn next_local_id(&mut self) -> LocalResult<u64>;

    /// Adds an item to the outbox and its message (state `Sending`) to the conversation.
    fn outbox_push(&mut self, item: &OutboxItem, message: &LocalMessage) -> LocalResult<()>;
    /// Outbox items in `Sending` state, in `local_id` order (the order to (re)transmit).
    fn outbox_pending(&self) -> LocalResult<Vec<OutboxItem>>;
    /// One outbox item, any state.
    fn outbox_get(&self, local_id: u64) -> LocalResult<Option<OutboxItem>>;
    /// Updates an outbox item's attempts and state (and its message's state).
    fn outbox_update(&mut self, local_id: u64, attempts: u32, state: SendState) -> LocalResult<()>;
    /// The server stored the message: removes it from the outbox and gives its message the
    /// server's seq, id and time (state `Sent`). Returns the updated message, or `None` if no
    /// outbox item has this client msg id (already acked).
    fn outbox_acked(
        &mut self,
        client_msg_id: &str,
        seq: u64,
        server_msg_id: u64,
        time_ms: u64,
    ) -> LocalResult<Option<LocalMessage>>;

    /// Stores a message received from the server (inbox or history). Idempotent: returns false
    /// when a message with the same conversation and seq is already stored.
    fn put_message(&mut self, message: &LocalMessage) -> LocalResult<bool>;
    /// Marks a message recalled and erases its content; returns false when it is not stored.
    fn recall_message(&mut self, conversation_id: &str, seq: u64) -> LocalResult<bool>;
    /// Removes messages locally (delete for me).
    fn delete_messages(&mut self, conversation_id: &str, seqs: &[u64]) -> LocalResult<()>;
    /// Messages of a conversation with seq below `before_seq` (0 = from the newest), newest
    /// first, at most `limit`; unacked own messages (seq 0) are included only when
    /// `before_seq` is 0, before the others.
    fn history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> LocalResult<Vec<LocalMessage>>;
    /// One message by conversation and seq.
    fn message(&self, conversation_id: &str, seq: u64) -> LocalResult<Option<LocalMessage>>;

    /// A conversation, if known.
    fn conversation(&self, conversation_id: &str) -> LocalResult<Option<LocalConversation>>;
    /// Inserts or replaces a conversation.
    fn put_conversation(&mut self, conversation: &LocalConversation) -> LocalResult<()>;
    /// All conversations, most recently updated first.
    fn conversations(&self) -> LocalResult<Vec<LocalConversation>>;

    /// The read-fan-out groups this device follows by conversation seq (SPEC §13.12), with
    /// the seq up to which it has their messages. [`LocalStore::reset_inbox`] forgets them.
    fn read_group_positions(&self) -> LocalResult<Vec<(String, u64)>>;
    /// Records where the device stands in a read-fan-out group (`None`: it no longer follows
    /// the group that way).
    fn set_read_group_position(
        &mut self,
        conversation_id: &str,
        position: Option<u64>,
    ) -> LocalResult<()>;
}
