//! The business tier. It is stateless: every fact lives in the [`TimelineStore`]; this crate
//! checks who may do what, turns protocol requests into store operations and tells the caller
//! (the gateway) what to answer and which inbox entries to push to whom.
//!
//! It knows nothing of connections: the gateway calls [`Logic::send_batch`] and
//! [`Logic::handle`] with the authenticated [`Caller`] and gets back responses plus
//! [`Effects`] (deliveries to push, typing events to relay).

pub mod push;
use im_protocol::ids::{self, ConversationRef};
use im_protocol::pb::{self, send_req::Target};
use im_protocol::unix_time_ms as now_ms;
use im_protocol::{Body, ProstMessage as _};
mod changes;
mod errors;
pub mod fanout_budget;
mod groups;
mod pages;
mod read_fanout;
mod reads;
mod validate;

pub use errors::{
    MAX_ERROR_TEXT_BYTES, STORAGE_FAILURE_RETRY_AFTER_MS, STORAGE_FULL_RETRY_AFTER_MS,
};
use errors::{error, store_error};
pub use pages::{fit_in_bytes, sync_response};
pub use validate::{
    MAX_CLIENT_REQUEST_ID_LEN, MAX_CONVERSATION_ID_LEN, MAX_CURSOR_LEN, MAX_DELETE_SEQS,
    MAX_GROUP_NAME_LEN,
};
use validate::{check_page, check_request_fields};

use fanout_budget::FanoutBudget;
use timeline_store::{ConversationState, NewMessage, TimelineStore};

/// Limits and policies of the business tier.
#[derive(Clone, Debug)]
pub struct LogicConfig {
    /// Largest `SendReq.content`.
    pub max_message_bytes: usize,
    /// Largest group, owner included. Without read fan-out (a store that lacks it, or a
    /// threshold of 0) groups stop at [`WRITE_FANOUT_MAX_MEMBERS`] whatever this says.
    pub max_group_members: u32,
    /// Groups with more members than this switch to read fan-out (SPEC §13.12): a message is
    /// stored once, in the group's timeline, instead of once per member's inbox. They switch
    /// back when they shrink to half of it, so a group at the edge does not flip on every
    /// join and leave. 0 = never (every group in write fan-out).
    pub read_fanout_threshold: u32,
    /// How long after sending a sender may recall a message.
    pub recall_window_ms: u64,
    /// Sync page: default and maximum entries.
    pub sync_default: u32,
    /// See `sync_default`.
    pub sync_max: u32,
    /// History page: default and maximum messages.
    pub history_default: u32,
    /// See `history_default`.
    pub history_max: u32,
    /// Conversation list page: default and maximum.
    pub conversations_default: u32,
    /// See `conversations_default`.
    pub conversations_max: u32,
    /// Group member page: default and maximum.
    pub members_default: u32,
    /// See `members_default`.
    pub members_max: u32,
    /// Largest encoded size of the entries or messages of one sync or history page. Pages are
    /// cut by bytes as well as by count: 200 entries of 64 KiB would not fit in one frame, and a
    /// response that cannot be sent would leave the client retrying forever.
    pub page_bytes: usize,
    /// Storage bytes per second one sender's messages may write, counting the content once
    /// and [`fanout_budget::BYTES_PER_RECIPIENT`] per recipient (0 = unlimited). Sends above
    /// it get `RATE_LIMITED` with the wait.
    pub fanout_bytes_per_sec: u64,
    /// Burst of that budget.
    pub fanout_burst_bytes: u64,
}

/// Metric: `SYNC_REQ` pages served.
pub const SYNC_PAGES: &str = "im_sync_pages_total";
/// Metric: inbox entries served in sync pages.
pub const SYNC_ENTRIES: &str = "im_sync_entries_total";

/// Default of [`LogicConfig::max_message_bytes`].
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default of [`LogicConfig::max_group_members`].
pub const DEFAULT_MAX_GROUP_MEMBERS: u32 = 100_000;
/// Largest group when read fan-out is off: every message writes an inbox entry per member.
pub const WRITE_FANOUT_MAX_MEMBERS: u32 = 1000;
/// Default of [`LogicConfig::read_fanout_threshold`].
pub const DEFAULT_READ_FANOUT_THRESHOLD: u32 = 500;
/// Default of [`LogicConfig::recall_window_ms`], in seconds.
pub const DEFAULT_RECALL_WINDOW_SECS: u64 = 600;

/// Default of [`LogicConfig::fanout_bytes_per_sec`]: about eight messages a second to a group
/// of a thousand, hundreds a second to one person.
pub const DEFAULT_FANOUT_BYTES_PER_SEC: u64 = 1 << 20;
/// Default of [`LogicConfig::fanout_burst_bytes`].
pub const DEFAULT_FANOUT_BURST_BYTES: u64 = 4 << 20;

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_group_members: DEFAULT_MAX_GROUP_MEMBERS,
            read_fanout_threshold: DEFAULT_READ_FANOUT_THRESHOLD,
            recall_window_ms: DEFAULT_RECALL_WINDOW_SECS * 1000,
            sync_default: 200,
            sync_max: 1000,
            history_default: 50,
            history_max: 200,
            conversations_default: 100,
            conversations_max: 500,
            members_default: 500,
            members_max: 1000,
            page_bytes: im_protocol::page_budget(im_protocol::DEFAULT_MAX_BODY),
            fanout_bytes_per_sec: DEFAULT_FANOUT_BYTES_PER_SEC,
            fanout_burst_bytes: DEFAULT_FANOUT_BURST_BYTES,
        }
    }
}

pub use logic_api::{
    Caller, Delivery, Effects, InboxPosition, LogicApi, Reply, RoomChange, SendReply, SessionInfo,
    TypingRelay,
};

/// The store's deliveries as the types that cross to the gateway.
pub(crate) fn deliveries(appended: Vec<timeline_store::Delivery>) -> Vec<Delivery> {
    appended
        .into_iter()
        .map(|d| Delivery {
            user: d.user,
            entry: d.entry,
        })
        .collect()
}

/// Where the business tier reads the time: message timestamps, recall windows, the fan-out
/// budget. The system clock in a server; a simulated one in deterministic tests.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// The business tier over a store.
pub struct Logic<S> {
    store: S,
    config: LogicConfig,
    fanout: FanoutBudget,
    clock: std::sync::Arc<dyn Clock>,
}

impl<S: TimelineStore> Logic<S> {
    /// The business tier over `store`, on the system clock.
    pub fn new(store: S, config: LogicConfig) -> Logic<S> {
        Logic::with_clock(store, config, std::sync::Arc::new(SystemClock))
    }

    /// The business tier over `store`, reading the time from `clock`.
    pub fn with_clock(store: S, config: LogicConfig, clock: std::sync::Arc<dyn Clock>) -> Logic<S> {
        let fanout = FanoutBudget::new(config.fanout_bytes_per_sec, config.fanout_burst_bytes);
        Logic {
            store,
            config,
            fanout,
            clock,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &LogicConfig {
        &self.config
    }

    /// Handles consecutive `SendReq`s of one connection as one store commit, so they keep their
    /// order and share one group commit. Returns one reply per request, in order.
    pub async fn send_batch(
        &self,
        caller: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> (Vec<SendReply>, Effects) {
        let now = self.clock.now_ms();
        let mut replies: Vec<Option<Result<pb::SendAck, pb::Error>>> =
            Vec::with_capacity(requests.len());
        let mut to_commit = Vec::new();
        let mut slots = Vec::new();
        for request in requests {
            let prepared =
                self.prepare_send(caller, request, now)
                    .await
                    .and_then(|(message, inboxes)| {
                        let cost = FanoutBudget::cost(message.content.len(), inboxes);
                        match self.fanout.charge(&caller.user, cost, now) {
                            Ok(()) => Ok(message),
                            Err(wait_ms) => {
                                let mut refused = error(
                                    pb::ErrorCode::RateLimited,
                                    "this sender's messages write too much to storage; slow down",
                                );
                                refused.retry_after_ms = wait_ms;
                                Err(refused)
                            }
                        }
                    });
            match prepared {
                Ok(message) => {
                    slots.push(replies.len());
                    replies.push(None);
                    to_commit.push(message);
                }
                Err(e) => replies.push(Some(Err(e))),
            }
        }
        let mut effects = Effects::default();
        if !to_commit.is_empty() {
            let results = self.store.commit_messages(to_commit).await;
            for (slot, result) in slots.into_iter().zip(results) {
                replies[slot] = Some(match result {
                    Ok(committed) => {
                        let m = &committed.message;
                        let ack = pb::SendAck {
                            client_msg_id: m.client_msg_id.clone(),
                            conversation_id: m.conversation_id.clone(),
                            server_msg_id: m.server_msg_id,
                            conversation_seq: m.conversation_seq,
                            server_time_ms: m.server_time_ms,
                            duplicate: committed.duplicate,
                            content_rewritten: false,
                            sender_inbox_seq: committed.sender_inbox_seq,
                        };
                        if committed.read_fanout {
                            effects.group_messages.push(committed.message);
                        }
                        effects.deliveries.extend(deliveries(committed.deliveries));
                        Ok(ack)
                    }
                    Err(e) => Err(store_error(e)),
                });
            }
        }
        let replies = replies
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(error(pb::ErrorCode::Internal, "send was not answered")))
            })
            .collect();
        (replies, effects)
    }

    async fn prepare_send(
        &self,
        caller: &Caller,
        request: pb::SendReq,
        now: u64,
    ) -> Result<(NewMessage, usize), pb::Error> {
        let invalid = |m: String| error(pb::ErrorCode::InvalidArgument, m);
        if request.client_msg_id.is_empty()
            || request.client_msg_id.len() > ids::MAX_CLIENT_MSG_ID_LEN
        {
            return Err(invalid(format!(
                "client_msg_id must be 1 to {} bytes",
                ids::MAX_CLIENT_MSG_ID_LEN
            )));
        }
        if request.content.len() > self.config.max_message_bytes {
            return Err(error(
                pb::ErrorCode::MessageTooLarge,
                format!(
                    "content of {} bytes is above the limit of {} bytes",
                    request.content.len(),
                    self.config.max_message_bytes
                ),
            ));
        }
        let mut inboxes = 0;
        let (conversation_id, kind, recipients) = match request.target {
            Some(Target::ToUser(peer)) => {
                ids::validate_id(&peer, "to_user").map_err(|e| invalid(e.to_string()))?;
                let mut recipients = vec![caller.user.clone(), peer.clone()];
                recipients.sort();
                recipients.dedup();
                (
                    ids::direct_conversation_id(&caller.user, &peer),
                    pb::ConversationKind::Direct,
                    recipients,
                )
            }
            Some(Target::ToGroup(group_id)) => {
                ids::validate_id(&group_id, "to_group").map_err(|e| invalid(e.to_string()))?;
                let group = self.store.group(&group_id).await.map_err(store_error)?;
                // A store with read fan-out sends to the members at commit (SPEC §13.12): one
                // membership lookup here, instead of listing every member per message.
                let members = if self.store.supports_read_fanout() {
                    let member = self
                        .store
                        .is_member(&group_id, &caller.user)
                        .await
                        .map_err(store_error)?;
                    if member {
                        vec![caller.user.clone()]
                    } else {
                        Vec::new()
                    }
                } else {
                    self.store
                        .member_ids(&group_id)
                        .await
                        .map_err(store_error)?
                };
                if members.binary_search(&caller.user).is_err() {
                    return Err(error(
                        pb::ErrorCode::Forbidden,
                        format!("{} is not a member of group {group_id}", caller.user),
                    ));
                }
                if group.broadcast && group.owner != caller.user {
                    return Err(error(
                        pb::ErrorCode::Forbidden,
                        format!("only the owner posts in broadcast channel {group_id}"),
                    ));
                }
                if !group.read_fanout {
                    inboxes = (group.member_count as usize).max(members.len());
                }
                (
                    ids::group_conversation_id(&group_id),
                    pb::ConversationKind::Group,
                    members,
                )
            }
            None => return Err(invalid("SendReq needs to_user or to_group".into())),
        };
        // Inboxes the message will be written to: what the fan-out budget charges.
        let inboxes = inboxes.max(recipients.len());
        let message = NewMessage {
            conversation_id,
            kind,
            sender_user: caller.user.clone(),
            sender_device: caller.device.clone(),
            client_msg_id: request.client_msg_id,
            content_type: request.content_type,
            content: request.content,
            recipients,
            now_ms: now,
        };
        Ok((message, inboxes))
    }

    /// Checks that `caller` is a party to `conversation_id` and returns its parsed form.
    async fn authorize<'a>(
        &self,
        caller: &Caller,
        conversation_id: &'a str,
    ) -> Result<ConversationRef<'a>, pb::Error> {
        let conversation = ConversationRef::parse(conversation_id)
            .map_err(|e| error(pb::ErrorCode::InvalidArgument, e.to_string()))?;
        let allowed = match conversation {
            ConversationRef::Direct { low, high } => caller.user == low || caller.user == high,
            ConversationRef::Group { group_id } => self
                .store
                .is_member(group_id, &caller.user)
                .await
                .map_err(store_error)?,
        };
        if allowed {
            Ok(conversation)
        } else {
            Err(error(
                pb::ErrorCode::Forbidden,
                format!("{} is not a party to {conversation_id}", caller.user),
            ))
        }
    }

    /// Everyone who takes part in a conversation, sorted.
    async fn participants(
        &self,
        conversation: &ConversationRef<'_>,
    ) -> Result<Vec<String>, pb::Error> {
        match *conversation {
            ConversationRef::Direct { low, high } => {
                let mut users = vec![low.to_owned(), high.to_owned()];
                users.dedup();
                Ok(users)
            }
            ConversationRef::Group { group_id } => {
                self.store.member_ids(group_id).await.map_err(store_error)
            }
        }
    }

    /// Handles every request but `SendReq` (see [`Logic::send_batch`]) and the connection-level
    /// frames the gateway answers itself (handshake, ping, goodbye).
    pub async fn handle(&self, caller: &Caller, body: Body) -> (Reply, Effects) {
        let mut effects = Effects::default();
        let reply = self.dispatch(caller, body, &mut effects).await;
        (reply, effects)
    }

    async fn dispatch(&self, caller: &Caller, body: Body, effects: &mut Effects) -> Reply {
        let now = self.clock.now_ms();
        check_request_fields(&body)?;
        match body {
            Body::SendReq(request) => {
                let (mut replies, batch_effects) = self.send_batch(caller, vec![request]).await;
                *effects = batch_effects;
                let ack = replies
                    .pop()
                    .unwrap_or_else(|| Err(error(pb::ErrorCode::Internal, "no reply")))?;
                Ok(Some(Body::SendAck(ack)))
            }
            Body::DeliveryAck(ack) => {
                let head = self
                    .store
                    .inbox_head(&caller.user)
                    .await
                    .map_err(store_error)?;
                if ack.up_to_inbox_seq > head {
                    return Err(error(
                        pb::ErrorCode::InvalidArgument,
                        format!(
                            "delivery ack {} is above the inbox head {head}",
                            ack.up_to_inbox_seq
                        ),
                    ));
                }
                self.store
                    .record_delivery(&caller.user, &caller.device, ack.up_to_inbox_seq)
                    .await
                    .map_err(store_error)?;
                Ok(None)
            }
            Body::Typing(typing) => {
                let conversation = self.authorize(caller, &typing.conversation_id).await?;
                if let ConversationRef::Group { group_id } = conversation
                    && self
                        .store
                        .group(group_id)
                        .await
                        .map_err(store_error)?
                        .read_fanout
                {
                    // Not relayed in read-fan-out groups (SPEC §13.12): a hundred thousand
                    // members would each be looked up for every keystroke.
                    return Ok(None);
                }
                let recipients = self
                    .participants(&conversation)
                    .await?
                    .into_iter()
                    .filter(|u| *u != caller.user)
                    .collect();
                effects.typing = Some(TypingRelay {
                    recipients,
                    event: pb::TypingEvent {
                        conversation_id: typing.conversation_id,
                        user_id: caller.user.clone(),
                        typing: typing.typing,
                    },
                });
                Ok(None)
            }
            Body::SyncReq(request) => self
                .sync(caller, request)
                .await
                .map(|r| Some(Body::SyncResp(r))),
            body @ (Body::HistoryReq(_) | Body::ConversationsReq(_)) => {
                self.read_request(caller, body).await
            }
            body @ (Body::ReadMarkerReq(_) | Body::RecallReq(_) | Body::DeleteReq(_)) => {
                self.change_request(caller, body, now, effects).await
            }
            body @ (Body::GroupCreateReq(_)
            | Body::GroupAddMembersReq(_)
            | Body::GroupRemoveMembersReq(_)
            | Body::GroupJoinReq(_)
            | Body::GroupLeaveReq(_)
            | Body::GroupMembersReq(_)) => self.group_request(caller, body, now, effects).await,
            Body::PushTokenReq(request) => self
                .register_push_token(caller, request)
                .await
                .map(|r| Some(Body::PushTokenResp(r))),
            Body::MuteReq(request) => self
                .mute(caller, request)
                .await
                .map(|r| Some(Body::MuteResp(r))),
            other => Err(error(
                pb::ErrorCode::WrongDirection,
                format!("{:?} is not a request the logic tier handles", other.op()),
            )),
        }
    }

    /// SPEC §13.11: registers or removes the caller's device's push token.
    async fn register_push_token(
        &self,
        caller: &Caller,
        request: pb::PushTokenReq,
    ) -> Result<pb::PushTokenResp, pb::Error> {
        let key = push::registration_key(&caller.device);
        let service = pb::PushService::try_from(request.service).ok();
        let value = match (service, request.token.is_empty()) {
            (Some(pb::PushService::Unspecified), true) => None,
            (Some(pb::PushService::Unspecified) | None, _) => {
                return Err(error(
                    pb::ErrorCode::InvalidArgument,
                    "service must be APNS, FCM or WEBHOOK (UNSPECIFIED with an empty token removes)",
                ));
            }
            (Some(_), _) => {
                push::check_token(&request.token)
                    .map_err(|e| error(pb::ErrorCode::InvalidArgument, e))?;
                let preview =
                    pb::PushPreview::try_from(request.preview).unwrap_or(pb::PushPreview::None);
                Some(
                    pb::PushTokenReq {
                        preview: preview as i32,
                        ..request
                    }
                    .encode_to_vec(),
                )
            }
        };
        let registered = value.is_some();
        self.store
            .put_user_setting(&caller.user, &key, value)
            .await
            .map_err(store_error)?;
        Ok(pb::PushTokenResp { registered })
    }

    /// SPEC §13.11: mutes or unmutes a conversation's notifications for all of the user's
    /// devices.
    async fn mute(&self, caller: &Caller, request: pb::MuteReq) -> Result<pb::MuteResp, pb::Error> {
        let conversation = ConversationRef::parse(&request.conversation_id)
            .map_err(|e| error(pb::ErrorCode::InvalidArgument, e.to_string()))?;
        if let ConversationRef::Direct { low, high } = conversation
            && caller.user != low
            && caller.user != high
        {
            return Err(error(
                pb::ErrorCode::Forbidden,
                format!(
                    "{} is not a party to {}",
                    caller.user, request.conversation_id
                ),
            ));
        }
        let key = push::mute_key(&request.conversation_id);
        let value = request.muted.then(Vec::new);
        self.store
            .put_user_setting(&caller.user, &key, value)
            .await
            .map_err(store_error)?;
        Ok(pb::MuteResp {
            conversation_id: request.conversation_id,
            muted: request.muted,
        })
    }

    /// Where to notify `user` about a message in `conversation_id`: the registered devices,
    /// none when the conversation is muted (SPEC §13.11).
    pub async fn push_targets(
        &self,
        user: &str,
        conversation_id: &str,
    ) -> Result<Vec<push::Registration>, pb::Error> {
        let muted = self
            .store
            .user_settings(user, &push::mute_key(conversation_id))
            .await
            .map_err(store_error)?
            .iter()
            .any(|(key, _)| *key == push::mute_key(conversation_id));
        if muted {
            return Ok(Vec::new());
        }
        let settings = self
            .store
            .user_settings(user, push::REGISTRATION_PREFIX)
            .await
            .map_err(store_error)?;
        Ok(settings
            .into_iter()
            .filter_map(|(key, value)| push::Registration::decode(&key, &value))
            .collect())
    }

    /// Removes `device`'s registration if it still holds `token` (the push service reported
    /// it invalid; a registration made since is kept).
    pub async fn forget_push_token(
        &self,
        user: &str,
        device: &str,
        token: &str,
    ) -> Result<bool, pb::Error> {
        let key = push::registration_key(device);
        let current = self
            .store
            .user_settings(user, &key)
            .await
            .map_err(store_error)?
            .into_iter()
            .find(|(name, _)| *name == key)
            .and_then(|(name, value)| push::Registration::decode(&name, &value));
        if current.is_none_or(|r| r.token != token) {
            return Ok(false);
        }
        self.store
            .put_user_setting(user, &key, None)
            .await
            .map_err(store_error)?;
        Ok(true)
    }

    fn max_members(&self) -> u32 {
        if self.read_fanout_enabled() {
            self.config.max_group_members
        } else {
            self.config.max_group_members.min(WRITE_FANOUT_MAX_MEMBERS)
        }
    }

    async fn sync(&self, caller: &Caller, request: pb::SyncReq) -> Result<pb::SyncResp, pb::Error> {
        let limit = check_page(
            request.limit,
            self.config.sync_default,
            self.config.sync_max,
            "sync",
        )?;
        let from = request.from_seq.max(1);
        if request.to_seq != 0 && request.to_seq < from {
            return Err(error(
                pb::ErrorCode::InvalidArgument,
                "to_seq is below from_seq",
            ));
        }
        let mut page = self
            .store
            .read_inbox(&caller.user, from, request.to_seq, limit)
            .await
            .map_err(store_error)?;
        // Cutting the page only shortens it: `sync_response` derives `next_seq` and `has_more`
        // from the last entry kept.
        fit_in_bytes(&mut page.entries, self.config.page_bytes);
        let mut response = sync_response(from, request.to_seq, page);
        response.inbox_epoch = self.store.inbox_epoch();
        if !response.has_more {
            response.read_groups = self.read_group_heads(&caller.user).await?;
        }
        metrics::counter!(SYNC_PAGES).increment(1);
        metrics::counter!(SYNC_ENTRIES).increment(response.entries.len() as u64);
        Ok(response)
    }

    async fn summary(&self, state: ConversationState) -> pb::ConversationSummary {
        let title = match state.kind {
            pb::ConversationKind::Group => match self.store.group(&state.peer).await {
                Ok(group) => group.name,
                Err(_) => String::new(),
            },
            _ => String::new(),
        };
        pb::ConversationSummary {
            conversation_id: state.conversation_id,
            kind: state.kind as i32,
            peer: state.peer,
            title,
            last_message: state.last_message,
            last_seq: state.last_seq,
            read_seq: state.read_seq,
            unread_count: state.unread_count,
            peer_read_seq: state.peer_read_seq,
            updated_ms: state.updated_ms,
        }
    }
}

impl<S: TimelineStore> LogicApi for Logic<S> {
    async fn open_session(&self, caller: &Caller) -> Result<SessionInfo, pb::Error> {
        let start = self
            .store
            .session_start(&caller.user, self.read_fanout_enabled())
            .await;
        match start {
            Ok(start) => Ok(SessionInfo {
                inbox: InboxPosition {
                    head_seq: start.inbox_head,
                    epoch: self.store.inbox_epoch(),
                },
                max_message_bytes: u32::try_from(self.config.max_message_bytes).unwrap_or(u32::MAX),
                read_groups: start.read_groups,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "handshake: reading the inbox head failed");
                let mut refused = error(e.code(), "storage temporarily unavailable; retry later");
                refused.retry_after_ms = STORAGE_FAILURE_RETRY_AFTER_MS;
                Err(refused)
            }
        }
    }

    async fn send_batch(
        &self,
        caller: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> (Vec<SendReply>, Effects) {
        Logic::send_batch(self, caller, requests).await
    }

    async fn handle(&self, caller: &Caller, body: Body) -> (Reply, Effects) {
        Logic::handle(self, caller, body).await
    }
}
