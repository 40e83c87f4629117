//! Two gateways in one process over one logic tier: a send accepted on one gateway reaches the
//! recipient's devices on the other through the push router, as it will between the gateway
//! processes of a cluster.

mod support;

use std::sync::Arc;

use gateway::auth::TokenKey;
use gateway::hub::Hub;
use gateway::router::HubGroup;
use gateway::server::{Gateway, GatewayConfig, Shared};
use gateway::transport::memory::{self, MemoryDialer};
use im_protocol::Body;
use im_protocol::pb;
use logic::{Logic, LogicConfig};
use store_embedded::EmbeddedStore;
use support::*;
use tokio_util::sync::CancellationToken;

struct TwoGateways {
    a: MemoryDialer,
    b: MemoryDialer,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TwoGateways {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start_two_gateways() -> TwoGateways {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), Default::default()).unwrap();
    let logic = Arc::new(Logic::new(store, LogicConfig::default()));
    let (hub_a, hub_b) = (Hub::new(), Hub::new());
    let stop = CancellationToken::new();
    let mut dialers = Vec::new();
    for (local, other) in [(&hub_a, &hub_b), (&hub_b, &hub_a)] {
        let gateway = Gateway::new(Shared {
            logic: logic.clone(),
            hub: local.clone(),
            router: Arc::new(HubGroup::new(local.clone(), vec![other.clone()])),
            tokens: TokenKey::new(SECRET),
            config: GatewayConfig::default(),
        });
        let (acceptor, dialer) = memory::listener();
        let serving = stop.clone();
        tokio::spawn(async move { gateway.serve(acceptor, serving).await });
        dialers.push(dialer);
    }
    let b = dialers.pop().unwrap();
    let a = dialers.pop().unwrap();
    TwoGateways {
        a,
        b,
        stop,
        _dir: dir,
    }
}

async fn connect(dialer: &MemoryDialer, user: &str, device: &str) -> Client {
    let stream = Box::new(dialer.dial().await.expect("gateway listening"));
    let token = token_with(user, Some(device), now_secs() + 3600);
    Client::try_handshake(stream, &token, device)
        .await
        .expect("handshake")
}

#[tokio::test]
async fn a_send_accepted_on_gateway_a_reaches_a_device_on_gateway_b() {
    let gateways = start_two_gateways();
    let mut alice = connect(&gateways.a, "alice", "phone").await;
    let mut alice_laptop = connect(&gateways.b, "alice", "laptop").await;
    let mut bob = connect(&gateways.b, "bob", "phone").await;

    let ack = alice
        .send_text(to_user("bob"), "m1", "hello across")
        .await
        .expect("acked");
    let entries = bob.pushed_entries(1).await;
    assert_eq!(text(&messages(&entries)[0]), "hello across");
    assert_eq!(messages(&entries)[0].server_msg_id, ack.server_msg_id);
    let own = alice_laptop.pushed_entries(1).await;
    assert_eq!(
        own[0].inbox_seq, ack.sender_inbox_seq,
        "the sender's other device"
    );

    // Gateway B follows bob's head from the pushes it relayed: its pong knows the new entry.
    let Body::Pong(pong) = bob.request(pb::Ping::default()).await else {
        panic!("no pong")
    };
    assert_eq!(pong.inbox_head_seq, entries[0].inbox_seq);
}

#[tokio::test]
async fn typing_and_read_receipts_cross_gateways_too() {
    let gateways = start_two_gateways();
    let mut alice = connect(&gateways.a, "alice", "phone").await;
    let mut bob = connect(&gateways.b, "bob", "phone").await;
    let ack = alice
        .send_text(to_user("bob"), "m1", "hi")
        .await
        .expect("acked");
    bob.pushed_entries(1).await;

    bob.send_only(pb::Typing {
        conversation_id: ack.conversation_id.clone(),
        typing: true,
    })
    .await;
    let Body::TypingEvent(typing) = alice.next_push().await else {
        panic!("no typing event")
    };
    assert_eq!((typing.user_id.as_str(), typing.typing), ("bob", true));

    bob.request(pb::ReadMarkerReq {
        conversation_id: ack.conversation_id.clone(),
        read_seq: ack.conversation_seq,
    })
    .await;
    let receipts = alice.pushed_entries(1).await;
    assert!(
        matches!(
            &receipts[0].body,
            Some(pb::inbox_entry::Body::ReadReceipt(r)) if r.reader_user == "bob"
        ),
        "{receipts:?}"
    );
}
