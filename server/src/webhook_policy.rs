//! The app's server as the message policy and presence listener: signed HTTP callbacks
//! (`im-webhooks`) before each send, after each stored message and group change, and when
//! devices connect and disconnect.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use gateway::router::{Origin, PushRouter};
use im_protocol::pb;
use im_webhooks::{AfterEvent, BeforeSend, BeforeSendDecision, Webhooks};
use logic_api::{Caller, Delivery};

use crate::hooks::{BoxFuture, GroupChange, MessagePolicy, Verdict};

/// The message policy that asks the app's server.
pub struct WebhookPolicy {
    hooks: Webhooks,
}

impl WebhookPolicy {
    /// Calls through `hooks`.
    pub fn new(hooks: Webhooks) -> WebhookPolicy {
        WebhookPolicy { hooks }
    }
}

impl MessagePolicy for WebhookPolicy {
    fn before_send<'a>(
        &'a self,
        caller: &'a Caller,
        conversation_id: &'a str,
        request: &'a pb::SendReq,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let (to_user, to_group) = match &request.target {
                Some(pb::send_req::Target::ToUser(user)) => (Some(user.clone()), None),
                Some(pb::send_req::Target::ToGroup(group)) => (None, Some(group.clone())),
                None => (None, None),
            };
            let event = BeforeSend {
                sender_user: caller.user.clone(),
                sender_device: caller.device.clone(),
                conversation_id: conversation_id.to_owned(),
                to_user,
                to_group,
                client_msg_id: request.client_msg_id.clone(),
                content_type: request.content_type,
                content: request.content.clone(),
            };
            match self.hooks.before_send(&event).await {
                BeforeSendDecision::Allow => Verdict::Allow,
                BeforeSendDecision::Reject { reason, message } => {
                    Verdict::Reject { reason, message }
                }
                BeforeSendDecision::Rewrite {
                    content,
                    content_type,
                } => Verdict::Rewrite {
                    content,
                    content_type,
                },
                BeforeSendDecision::Unavailable => Verdict::Unavailable,
            }
        })
    }

    fn after_send(&self, caller: &Caller, request: &pb::SendReq, ack: &pb::SendAck) {
        self.hooks.after(AfterEvent::MessageSent {
            conversation_id: ack.conversation_id.clone(),
            server_msg_id: ack.server_msg_id,
            conversation_seq: ack.conversation_seq,
            sender_user: caller.user.clone(),
            sender_device: caller.device.clone(),
            client_msg_id: ack.client_msg_id.clone(),
            content_type: request.content_type,
            content: request.content.clone(),
            server_time_ms: ack.server_time_ms,
        });
    }

    fn after_group_change(&self, change: GroupChange) {
        use im_webhooks::GroupChange as Kind;
        let kind = match change.change {
            "created" => Kind::Created,
            "members_added" => Kind::MembersAdded,
            "members_removed" => Kind::MembersRemoved,
            "member_joined" => Kind::MemberJoined,
            "member_left" => Kind::MemberLeft,
            _ => Kind::Updated,
        };
        self.hooks.after(AfterEvent::GroupChanged {
            group_id: change.group_id,
            change: kind,
            actor: change.actor,
            members: change.members,
        });
    }
}

/// A push router that also tells the app's server when devices connect and disconnect here.
pub struct PresenceHooks {
    inner: Arc<dyn PushRouter>,
    hooks: Webhooks,
}

impl PresenceHooks {
    /// `inner`, reporting to `hooks`.
    pub fn new(inner: Arc<dyn PushRouter>, hooks: Webhooks) -> PresenceHooks {
        PresenceHooks { inner, hooks }
    }
}

impl PushRouter for PresenceHooks {
    fn deliver(&self, deliveries: Vec<Delivery>, origin: Option<Origin<'_>>) {
        self.inner.deliver(deliveries, origin);
    }

    fn relay_typing(&self, recipients: &[String], event: &pb::TypingEvent) {
        self.inner.relay_typing(recipients, event);
    }

    fn connected<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.inner.connected(user, device).await;
            self.hooks.after(AfterEvent::UserOnline {
                user: user.to_owned(),
                device: device.to_owned(),
            });
        })
    }

    fn disconnected(&self, user: &str, device: &str) {
        self.inner.disconnected(user, device);
        self.hooks.after(AfterEvent::UserOffline {
            user: user.to_owned(),
            device: device.to_owned(),
        });
    }
}
