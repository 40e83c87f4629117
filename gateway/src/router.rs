//! Push routing: where the effects of a request go. A request is handled by the gateway its
//! connection is on, but the users it concerns may be connected anywhere: the router takes
//! the inbox entries and typing events of one request and gets them to the gateways (and so the
//! devices) that hold those users.
//!
//! In one process the router is the local [`Hub`] itself. [`HubGroup`] routes between several
//! hubs of one process, which is what the cluster's router does between gateway processes
//! (there, through the user → gateway registry instead of asking each hub).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use im_protocol::pb;
use logic_api::Delivery;

use crate::hub::Hub;

/// A connection on this gateway that must not be pushed its user's entries: the sending
/// connection gets its own message through the `SEND_ACK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The sender.
    pub user: &'a str,
    /// The sending connection's id on this gateway's hub.
    pub conn_id: u64,
}

/// Gets effects to the devices of the users they concern, wherever those are connected.
///
/// Calls never wait for a slow device: each hub queues the pushes and closes connections whose
/// queue is full (the device resyncs from its cursor), so routing is a quick, synchronous
/// hand-off. Entries of one user keep the order they are given in (commit order).
///
/// A router must hand every entry to every gateway that holds the user, even one it expects to
/// drop: the receiving hub raises the user's inbox head from it, and pongs report that head, so
/// an entry lost between gateways would also hide itself from the client's missed-push check.
pub trait PushRouter: Send + Sync + 'static {
    /// Pushes inbox entries to the online devices of their users, except `origin`.
    fn deliver(&self, deliveries: Vec<Delivery>, origin: Option<Origin<'_>>);

    /// Relays a typing indicator to the online devices of `recipients` (best effort).
    fn relay_typing(&self, recipients: &[String], event: &pb::TypingEvent);

    /// Changes who follows which read-fan-out group (SPEC §13.12), on every gateway holding
    /// the users. A router that does not implement it (the cluster's, whose logic nodes keep
    /// every group in write fan-out) ignores it.
    fn follow(&self, _rooms: &[logic_api::RoomChange]) {}

    /// Pushes messages of read-fan-out groups to their online followers everywhere, except
    /// `except_user`'s connections.
    fn deliver_group(&self, _messages: Vec<pb::Message>, _except_user: Option<&str>) {}

    /// A device of `user` authenticated on this gateway (and is registered on its hub). The
    /// gateway opens the session (and reads the inbox head) only after this completes, so a
    /// router that tells other gateways where users are must have told them by then: an entry
    /// committed after the head was read is then routed here. In one process: nothing to do.
    fn connected<'a>(
        &'a self,
        _user: &'a str,
        _device: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(std::future::ready(()))
    }

    /// The last connection of a device of `user` on this gateway ended.
    fn disconnected(&self, _user: &str, _device: &str) {}
}

/// Where inbox entries for users with no connection anywhere go: the server's offline push
/// notifier. Called on the delivering task: it must hand the entries off, never wait.
pub trait OfflineSink: Send + Sync + std::fmt::Debug + 'static {
    /// `user` has no connection; these entries (commit order) reached their inbox.
    fn offline(&self, user: &str, entries: &[pb::InboxEntry]);
}

/// One process, one gateway: the hub holds every connection there is.
impl PushRouter for Hub {
    fn deliver(&self, deliveries: Vec<Delivery>, origin: Option<Origin<'_>>) {
        self.deliver_except(deliveries, origin.map(|o| (o.user, o.conn_id)));
    }

    fn relay_typing(&self, recipients: &[String], event: &pb::TypingEvent) {
        Hub::relay_typing(self, recipients, event);
    }

    fn follow(&self, rooms: &[logic_api::RoomChange]) {
        for room in rooms {
            Hub::follow(self, &room.user, &room.group_id, room.follows);
        }
    }

    fn deliver_group(&self, messages: Vec<pb::Message>, except_user: Option<&str>) {
        Hub::deliver_group(self, messages, except_user);
    }
}

/// The router of one gateway among several in one process: its own hub, where the origin
/// connection is, and the other gateways' hubs.
#[derive(Debug)]
pub struct HubGroup {
    local: Arc<Hub>,
    others: Vec<Arc<Hub>>,
}

impl HubGroup {
    /// The router of the gateway whose hub is `local`, reaching `others` as well.
    pub fn new(local: Arc<Hub>, others: Vec<Arc<Hub>>) -> HubGroup {
        HubGroup { local, others }
    }
}

impl PushRouter for HubGroup {
    fn deliver(&self, deliveries: Vec<Delivery>, origin: Option<Origin<'_>>) {
        for hub in &self.others {
            // Only the entries of users online there: the rest would be dropped by it anyway.
            let theirs: Vec<Delivery> = deliveries
                .iter()
                .filter(|d| hub.is_online(&d.user))
                .cloned()
                .collect();
            hub.deliver_except(theirs, None);
        }
        self.local
            .deliver_except(deliveries, origin.map(|o| (o.user, o.conn_id)));
    }

    fn relay_typing(&self, recipients: &[String], event: &pb::TypingEvent) {
        self.local.relay_typing(recipients, event);
        for hub in &self.others {
            hub.relay_typing(recipients, event);
        }
    }

    fn follow(&self, rooms: &[logic_api::RoomChange]) {
        for hub in std::iter::once(&self.local).chain(&self.others) {
            PushRouter::follow(&**hub, rooms);
        }
    }

    fn deliver_group(&self, messages: Vec<pb::Message>, except_user: Option<&str>) {
        for hub in std::iter::once(&self.local).chain(&self.others) {
            hub.deliver_group(messages.clone(), except_user);
        }
    }
}

/// Routes everything a request changed: follow lists first (so a user who just joined a
/// read-fan-out group gets its next message), then group messages, inbox entries and typing.
pub fn route_effects<R: PushRouter + ?Sized>(
    router: &R,
    effects: logic_api::Effects,
    origin: Option<Origin<'_>>,
) {
    router.follow(&effects.rooms);
    let sender = origin.map(|o| o.user);
    router.deliver_group(effects.group_messages, sender);
    router.deliver(effects.deliveries, origin);
    if let Some(typing) = effects.typing {
        router.relay_typing(&typing.recipients, &typing.event);
    }
}
