//! The app's own rules in the message path: a [`MessagePolicy`] is asked before each send
//! (allow, reject with the app's reason code, or rewrite the content) and told after each
//! stored message and group change. [`HookedLogic`] wraps the logic tier with it, so it runs
//! where the logic runs: in the one process, or on every logic node of a cluster.
//!
//! The webhook implementation ([`WebhookPolicy`]) posts signed JSON to the app's server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use im_protocol::{Body, ErrorCodeExt as _, ids, pb};
use logic_api::{Caller, Effects, LogicApi, Reply, SendReply, SessionInfo};

/// Before-send calls one connection's batch of sends may have in flight at once.
const BEFORE_SEND_CONCURRENCY: usize = 8;

/// A boxed future (the policy is a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the policy decided about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Store it as sent.
    Allow,
    /// Refuse it: the client gets `REJECTED` with `reason` as `Error.app_reason`.
    Reject {
        /// The app's reason code.
        reason: u32,
        /// Text for logs.
        message: String,
    },
    /// Store this content instead.
    Rewrite {
        /// The new content.
        content: Vec<u8>,
        /// A new content type, or the sent one.
        content_type: Option<u32>,
    },
    /// The policy could not be asked and refuses in that case: `UNAVAILABLE` (retryable).
    Unavailable,
}

/// A group change, as the policy hears about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupChange {
    /// The group.
    pub group_id: String,
    /// `created`, `members_added`, `members_removed`, `member_joined` or `member_left`.
    pub change: &'static str,
    /// Who made it.
    pub actor: String,
    /// Whom it concerns (the members a creation started with, those added or removed, the
    /// one who joined or left).
    pub members: Vec<String>,
}

/// The app's rules.
pub trait MessagePolicy: Send + Sync + 'static {
    /// Decides about one message before it is stored.
    fn before_send<'a>(
        &'a self,
        caller: &'a Caller,
        conversation_id: &'a str,
        request: &'a pb::SendReq,
    ) -> BoxFuture<'a, Verdict>;

    /// A message was stored (not called for duplicates). Must not wait.
    fn after_send(&self, caller: &Caller, request: &pb::SendReq, ack: &pb::SendAck);

    /// A group changed. Must not wait.
    fn after_group_change(&self, change: GroupChange);
}

/// The logic tier with a policy in front of its sends and behind its changes.
pub struct HookedLogic<L> {
    inner: L,
    policy: Option<Arc<dyn MessagePolicy>>,
}

impl<L> HookedLogic<L> {
    /// `inner` checked and reported by `policy`; without one, `inner` as it is.
    pub fn new(inner: L, policy: Option<Arc<dyn MessagePolicy>>) -> HookedLogic<L> {
        HookedLogic { inner, policy }
    }
}

fn conversation_of(caller: &Caller, request: &pb::SendReq) -> Option<String> {
    match request.target.as_ref()? {
        pb::send_req::Target::ToUser(user) => Some(ids::direct_conversation_id(&caller.user, user)),
        pb::send_req::Target::ToGroup(group) => Some(ids::group_conversation_id(group)),
    }
}

fn rejected(reason: u32, message: &str) -> pb::Error {
    let mut error = pb::ErrorCode::Rejected.to_error(truncate(message, 160));
    error.app_reason = reason;
    error
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl<L: LogicApi> LogicApi for HookedLogic<L> {
    fn open_session(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = Result<SessionInfo, pb::Error>> + Send {
        self.inner.open_session(caller)
    }

    async fn send_batch(
        &self,
        caller: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> (Vec<SendReply>, Effects) {
        let Some(policy) = &self.policy else {
            return self.inner.send_batch(caller, requests).await;
        };
        // Every message of the batch is checked at once; the allowed ones keep their order
        // and still share one commit.
        let conversations: Vec<Option<String>> = requests
            .iter()
            .map(|r| conversation_of(caller, r))
            .collect();
        // At most a few calls at once: a batch of 256 sends must not open 256 requests to the
        // app's server. Answers stay in the requests' order.
        let pairs: Vec<(&pb::SendReq, &Option<String>)> =
            requests.iter().zip(&conversations).collect();
        let mut verdicts: Vec<Verdict> = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(BEFORE_SEND_CONCURRENCY) {
            let asked = chunk.iter().map(|(request, conversation)| async move {
                match conversation {
                    // A send without a target: the logic tier refuses it with its own error.
                    None => Verdict::Allow,
                    Some(conversation) => policy.before_send(caller, conversation, request).await,
                }
            });
            verdicts.extend(futures::future::join_all(asked).await);
        }
        let mut replies: Vec<Option<SendReply>> = Vec::with_capacity(requests.len());
        let mut passed = Vec::new();
        let mut rewritten = Vec::new();
        for (request, verdict) in requests.into_iter().zip(verdicts) {
            match verdict {
                Verdict::Allow => {
                    replies.push(None);
                    rewritten.push(false);
                    passed.push(request);
                }
                Verdict::Rewrite {
                    content,
                    content_type,
                } => {
                    replies.push(None);
                    rewritten.push(true);
                    passed.push(pb::SendReq {
                        content,
                        content_type: content_type.unwrap_or(request.content_type),
                        ..request
                    });
                }
                Verdict::Reject { reason, message } => {
                    replies.push(Some(Err(rejected(reason, &message))));
                }
                Verdict::Unavailable => {
                    let mut error = pb::ErrorCode::Unavailable
                        .to_error("the message policy could not be consulted");
                    error.retry_after_ms = 1000;
                    replies.push(Some(Err(error)));
                }
            }
        }
        if passed.is_empty() {
            return (
                replies
                    .into_iter()
                    .map(Option::unwrap_or_default_error)
                    .collect(),
                Effects::default(),
            );
        }
        let (answers, effects) = self.inner.send_batch(caller, passed.clone()).await;
        let mut answers = answers.into_iter();
        let mut sent = passed.iter().zip(&rewritten);
        for reply in replies.iter_mut().filter(|r| r.is_none()) {
            let mut answer = answers
                .next()
                .unwrap_or_else(|| Err(pb::ErrorCode::Internal.to_error("no answer to the send")));
            if let Some((request, was_rewritten)) = sent.next()
                && let Ok(ack) = &mut answer
            {
                ack.content_rewritten = *was_rewritten;
                if !ack.duplicate {
                    policy.after_send(caller, request, ack);
                }
            }
            *reply = Some(answer);
        }
        (
            replies
                .into_iter()
                .map(Option::unwrap_or_default_error)
                .collect(),
            effects,
        )
    }

    async fn handle(&self, caller: &Caller, body: Body) -> (Reply, Effects) {
        let Some(policy) = &self.policy else {
            return self.inner.handle(caller, body).await;
        };
        let request = body.clone();
        let (reply, effects) = self.inner.handle(caller, body).await;
        if let Ok(Some(answer)) = &reply
            && let Some(change) = group_change(caller, &request, answer)
        {
            policy.after_group_change(change);
        }
        (reply, effects)
    }
}

/// `Option<SendReply>` that every slot has been filled by the time replies are returned.
trait FilledReply {
    fn unwrap_or_default_error(self) -> SendReply;
}

impl FilledReply for Option<SendReply> {
    fn unwrap_or_default_error(self) -> SendReply {
        self.unwrap_or_else(|| Err(pb::ErrorCode::Internal.to_error("no answer to the send")))
    }
}

/// The group change a successful group request made, if it was one.
fn group_change(caller: &Caller, request: &Body, answer: &Body) -> Option<GroupChange> {
    let change = |group_id: &str, change, members: Vec<String>| GroupChange {
        group_id: group_id.to_owned(),
        change,
        actor: caller.user.clone(),
        members,
    };
    match (request, answer) {
        (Body::GroupCreateReq(_), Body::GroupCreateResp(resp)) => {
            let group = resp.group.as_ref()?;
            let mut members = vec![group.owner.clone()];
            if let Body::GroupCreateReq(req) = request {
                members.extend(req.members.iter().filter(|m| **m != group.owner).cloned());
            }
            members.dedup();
            Some(change(&group.group_id, "created", members))
        }
        (Body::GroupAddMembersReq(req), Body::GroupAddMembersResp(resp))
            if !resp.added.is_empty() =>
        {
            Some(change(&req.group_id, "members_added", resp.added.clone()))
        }
        (Body::GroupRemoveMembersReq(req), Body::GroupRemoveMembersResp(resp))
            if !resp.removed.is_empty() =>
        {
            Some(change(
                &req.group_id,
                "members_removed",
                resp.removed.clone(),
            ))
        }
        (Body::GroupJoinReq(req), Body::GroupJoinResp(_)) => Some(change(
            &req.group_id,
            "member_joined",
            vec![caller.user.clone()],
        )),
        (Body::GroupLeaveReq(req), Body::GroupLeaveResp(_)) => Some(change(
            &req.group_id,
            "member_left",
            vec![caller.user.clone()],
        )),
        _ => None,
    }
}
