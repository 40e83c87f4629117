//! The gateway against a fake logic tier, over in-memory streams: what the gateway does by
//! itself (handshake, registration, pushes, pongs, refusals) needs no store and no socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use gateway::auth::{Claims, TokenKey};
use gateway::hub::Hub;
use gateway::server::{Gateway, GatewayConfig, Shared};
use gateway::transport::memory::{self, MemoryDialer};
use im_protocol::pb::{self, send_req::Target};
use im_protocol::{Body, ErrorCodeExt as _, Frame, FrameCodec};
use logic_api::{
    Caller, Delivery, Effects, InboxPosition, LogicApi, Reply, SendReply, SessionInfo,
};
use tokio::io::DuplexStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "fake-logic-test-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(5);

/// Direct messages only: each send appends one entry to the sender's and the peer's inbox.
/// Users named `down` cannot open sessions (their storage is "unavailable").
#[derive(Default)]
struct FakeLogic {
    heads: Mutex<HashMap<String, u64>>,
    sessions_opened: AtomicUsize,
}

impl FakeLogic {
    fn append(&self, user: &str, message: &pb::Message) -> Delivery {
        let mut heads = self.heads.lock().unwrap();
        let head = heads.entry(user.to_owned()).or_default();
        *head += 1;
        Delivery {
            user: user.to_owned(),
            entry: pb::InboxEntry {
                inbox_seq: *head,
                body: Some(pb::inbox_entry::Body::Message(message.clone())),
            },
        }
    }
}

impl LogicApi for FakeLogic {
    async fn open_session(&self, caller: &Caller) -> Result<SessionInfo, pb::Error> {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
        if caller.user == "down" {
            let mut error = pb::ErrorCode::Unavailable.to_error("storage is down");
            error.retry_after_ms = 1234;
            return Err(error);
        }
        let head = self
            .heads
            .lock()
            .unwrap()
            .get(&caller.user)
            .copied()
            .unwrap_or(0);
        Ok(SessionInfo {
            inbox: InboxPosition {
                head_seq: head,
                epoch: 42,
            },
            max_message_bytes: 777,
            read_groups: Vec::new(),
        })
    }

    async fn send_batch(
        &self,
        caller: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> (Vec<SendReply>, Effects) {
        let mut replies = Vec::new();
        let mut effects = Effects::default();
        for request in requests {
            let Some(Target::ToUser(peer)) = request.target else {
                replies.push(Err(pb::ErrorCode::InvalidArgument.to_error("direct only")));
                continue;
            };
            let message = pb::Message {
                client_msg_id: request.client_msg_id.clone(),
                sender_user: caller.user.clone(),
                content: request.content,
                ..Default::default()
            };
            let own = self.append(&caller.user, &message);
            let theirs = self.append(&peer, &message);
            replies.push(Ok(pb::SendAck {
                client_msg_id: request.client_msg_id,
                sender_inbox_seq: own.entry.inbox_seq,
                ..Default::default()
            }));
            effects.deliveries.extend([own, theirs]);
        }
        (replies, effects)
    }

    async fn handle(&self, _caller: &Caller, body: Body) -> (Reply, Effects) {
        let refused = pb::ErrorCode::Forbidden.to_error(format!("{:?}", body.op()));
        (Err(refused), Effects::default())
    }
}

struct Fixture {
    logic: Arc<FakeLogic>,
    dialer: MemoryDialer,
    stop: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start() -> Fixture {
    let logic = Arc::new(FakeLogic::default());
    let hub = Hub::new();
    let gateway = Gateway::new(Shared {
        logic: logic.clone(),
        router: hub.clone(),
        hub,
        tokens: TokenKey::new(SECRET),
        config: GatewayConfig::default(),
    });
    let (acceptor, dialer) = memory::listener();
    let stop = CancellationToken::new();
    let serving = stop.clone();
    tokio::spawn(async move {
        gateway.serve(acceptor, serving).await;
        gateway.drain().await;
    });
    Fixture {
        logic,
        dialer,
        stop,
    }
}

struct Conn {
    framed: Framed<DuplexStream, FrameCodec>,
    next_id: u32,
}

impl Conn {
    async fn open(fixture: &Fixture, user: &str, device: &str) -> (Conn, Body) {
        let stream = fixture.dialer.dial().await.expect("gateway is listening");
        let mut conn = Conn {
            framed: Framed::new(stream, FrameCodec::default()),
            next_id: 1,
        };
        let token = TokenKey::new(SECRET).sign(&Claims {
            sub: user.into(),
            dev: Some(device.into()),
            plt: None,
            exp: im_protocol::unix_time_ms() / 1000 + 3600,
            iat: None,
        });
        let hello = pb::HandshakeReq {
            token,
            device_id: device.into(),
            protocol_version: 1,
            ..Default::default()
        };
        let answer = conn.request(hello).await;
        (conn, answer)
    }

    async fn request(&mut self, body: impl Into<Body>) -> Body {
        let id = self.next_id;
        self.next_id += 1;
        self.framed.send(Frame::new(id, body)).await.expect("send");
        loop {
            let frame = self.next().await.expect("an answer before the close");
            if !frame.is_push() && frame.request_id == id {
                return frame.decode_body().expect("known body");
            }
        }
    }

    async fn next(&mut self) -> Option<Frame> {
        match tokio::time::timeout(WAIT, self.framed.next()).await {
            Ok(Some(frame)) => Some(frame.expect("decodable")),
            Ok(None) => None,
            Err(_) => panic!("nothing from the gateway within {WAIT:?}"),
        }
    }

    async fn next_push(&mut self) -> pb::Push {
        loop {
            let frame = self.next().await.expect("a push before the close");
            if let Ok(Body::Push(push)) = frame.decode_body() {
                return push;
            }
        }
    }
}

fn send(to: &str, id: &str) -> pb::SendReq {
    pb::SendReq {
        client_msg_id: id.into(),
        target: Some(Target::ToUser(to.into())),
        content: b"hello".to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_handshake_answer_carries_what_the_logic_tier_said_about_the_session() {
    let fixture = start();
    let (_alice, answer) = Conn::open(&fixture, "alice", "phone").await;
    let Body::HandshakeResp(hello) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(
        (hello.user_id.as_str(), hello.device_id.as_str()),
        ("alice", "phone")
    );
    assert_eq!((hello.inbox_head_seq, hello.inbox_epoch), (0, 42));
    assert_eq!(hello.max_message_bytes, 777);
    assert_eq!(fixture.logic.sessions_opened.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_send_is_acked_to_its_connection_and_pushed_to_every_other_device_concerned() {
    let fixture = start();
    let (mut alice_phone, _) = Conn::open(&fixture, "alice", "phone").await;
    let (mut alice_laptop, _) = Conn::open(&fixture, "alice", "laptop").await;
    let (mut bob, _) = Conn::open(&fixture, "bob", "phone").await;

    let ack = alice_phone.request(send("bob", "m1")).await;
    let Body::SendAck(ack) = ack else {
        panic!("{ack:?}")
    };
    assert_eq!(ack.sender_inbox_seq, 1);

    let to_bob = bob.next_push().await;
    assert_eq!(to_bob.entries.len(), 1);
    assert_eq!(to_bob.entries[0].inbox_seq, 1);
    let to_laptop = alice_laptop.next_push().await;
    assert_eq!(to_laptop.entries[0].inbox_seq, 1);

    // The sending connection got its entry through the ack: no push precedes the pong.
    alice_phone
        .framed
        .send(Frame::new(99, pb::Ping::default()))
        .await
        .unwrap();
    let next = alice_phone.next().await.expect("the pong");
    assert!(!next.is_push(), "the sender was pushed its own message");
    assert!(matches!(next.decode_body(), Ok(Body::Pong(_))), "{next:?}");
}

#[tokio::test]
async fn pongs_report_the_inbox_head_without_asking_the_logic_tier() {
    let fixture = start();
    let (mut alice, _) = Conn::open(&fixture, "alice", "phone").await;
    let (mut bob, _) = Conn::open(&fixture, "bob", "phone").await;
    for i in 0..3 {
        alice.request(send("bob", &format!("m{i}"))).await;
    }
    for _ in 0..3 {
        bob.next_push().await;
    }
    let opened = fixture.logic.sessions_opened.load(Ordering::Relaxed);
    let Body::Pong(pong) = bob.request(pb::Ping { client_time_ms: 5 }).await else {
        panic!("no pong")
    };
    assert_eq!((pong.inbox_head_seq, pong.inbox_epoch), (3, 42));
    assert_eq!(pong.client_time_ms, 5);
    let Body::Pong(pong) = alice.request(pb::Ping::default()).await else {
        panic!("no pong")
    };
    assert_eq!(pong.inbox_head_seq, 3, "the sender's own entries count too");
    assert_eq!(
        fixture.logic.sessions_opened.load(Ordering::Relaxed),
        opened,
        "a ping is answered by the gateway alone"
    );
}

#[tokio::test]
async fn a_session_the_logic_tier_refuses_gets_its_error_and_retry_hint_then_closes() {
    let fixture = start();
    let (mut down, answer) = Conn::open(&fixture, "down", "phone").await;
    let Body::Error(error) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(error.code, pb::ErrorCode::Unavailable as i32);
    assert_eq!(error.retry_after_ms, 1234);
    assert!(down.next().await.is_none(), "the connection closes");
}

#[tokio::test]
async fn requests_reach_the_logic_tier_and_its_errors_reach_the_client() {
    let fixture = start();
    let (mut alice, _) = Conn::open(&fixture, "alice", "phone").await;
    let answer = alice.request(pb::ConversationsReq::default()).await;
    let Body::Error(error) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(error.code, pb::ErrorCode::Forbidden as i32);
}
