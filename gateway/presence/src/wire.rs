//! What gateways send each other over Redis pub/sub.

use im_protocol::pb;

/// One message on a gateway's channel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GatewayMessage {
    /// What it carries.
    #[prost(oneof = "Carried", tags = "1, 2, 3")]
    pub carried: Option<Carried>,
}

/// The kinds of gateway messages.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Carried {
    /// Inbox entries for users connected to the receiving gateway, in commit order.
    #[prost(message, tag = "1")]
    Deliveries(Deliveries),
    /// A typing event to relay.
    #[prost(message, tag = "2")]
    Typing(Typing),
    /// A device logged in on another gateway: close its connections here.
    #[prost(message, tag = "3")]
    Kick(Kick),
}

/// Inbox entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Deliveries {
    /// One per entry.
    #[prost(message, repeated, tag = "1")]
    pub deliveries: Vec<Delivery>,
}

/// One inbox entry of one user.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Delivery {
    /// Whose inbox.
    #[prost(string, tag = "1")]
    pub user: String,
    /// The entry.
    #[prost(message, optional, tag = "2")]
    pub entry: Option<pb::InboxEntry>,
}

/// A typing event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Typing {
    /// Who gets it.
    #[prost(string, repeated, tag = "1")]
    pub recipients: Vec<String>,
    /// The event.
    #[prost(message, optional, tag = "2")]
    pub event: Option<pb::TypingEvent>,
}

/// Close a device's connections.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Kick {
    /// The user.
    #[prost(string, tag = "1")]
    pub user: String,
    /// The device that logged in elsewhere (empty with an operator's kick: every device).
    #[prost(string, tag = "2")]
    pub device: String,
    /// The `KickReason` to send; 0 (unset): the device logged in elsewhere.
    #[prost(int32, tag = "3")]
    pub reason: i32,
}
