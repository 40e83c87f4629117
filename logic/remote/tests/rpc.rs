//! The logic API over real sockets on 127.0.0.1: a gateway's `RemoteLogic` against logic nodes
//! served by `serve` (the real logic tier over the in-memory store), a node that never answers
//! (as a paused one), and nodes that refuse or hold calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use im_protocol::{Body, ErrorCodeExt as _, pb};
use logic::{Logic, LogicConfig};
use logic_api::{Caller, Effects, LogicApi, Reply, SendReply, SessionInfo};
use logic_remote::policy::node_order;
use logic_remote::wire::{Call, RpcRequest};
use logic_remote::{RemoteLogic, RemoteOptions, serve};
use prost::Message as _;
use store_memory::MemoryStore;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A logic node serving the real logic tier over a memory store; returns its address.
async fn logic_node(store: MemoryStore) -> (String, CancellationToken) {
    node_with(Arc::new(Logic::new(store, LogicConfig::default()))).await
}

async fn node_with<L: LogicApi>(logic: Arc<L>) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, logic, shutdown.clone()));
    (address, shutdown)
}

/// A node that accepts and reads but never answers; hands back every request it read.
async fn silent_node() -> (String, tokio::sync::mpsc::UnboundedReceiver<RpcRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (heard, requests) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heard = heard.clone();
            tokio::spawn(async move {
                loop {
                    let mut length = [0u8; 4];
                    if stream.read_exact(&mut length).await.is_err() {
                        return;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if let Ok(request) = RpcRequest::decode(body.as_slice()) {
                        let _ = heard.send(request);
                    }
                }
            });
        }
    });
    (address, requests)
}

fn options(nodes: Vec<String>) -> RemoteOptions {
    RemoteOptions {
        attempt_timeout: Duration::from_millis(300),
        call_budget: Duration::from_secs(3),
        ping_every: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        ..RemoteOptions::new(nodes)
    }
}

/// A user whose calls go to `nodes[first]` first.
fn user_routed_to(nodes: &[String], first: usize) -> Caller {
    nth_user_routed_to(nodes, first, 0)
}

/// The `n`th user (from 0) whose calls go to `nodes[first]` first.
fn nth_user_routed_to(nodes: &[String], first: usize, n: usize) -> Caller {
    let user = (0..)
        .map(|i| format!("user{i}"))
        .filter(|user| node_order(user, nodes)[0] == first)
        .nth(n)
        .expect("some user");
    Caller {
        user,
        device: "phone".into(),
    }
}

fn send(to: &str, client_msg_id: &str) -> pb::SendReq {
    pb::SendReq {
        client_msg_id: client_msg_id.into(),
        target: Some(pb::send_req::Target::ToUser(to.into())),
        content_type: 1,
        content: b"hi".to_vec(),
    }
}

#[tokio::test]
async fn sends_and_requests_reach_the_logic_tier_and_bring_their_effects_back() {
    let store = MemoryStore::new(7);
    let (node, _stop) = logic_node(store.clone()).await;
    let remote = RemoteLogic::new(options(vec![node]));
    let alice = Caller {
        user: "alice".into(),
        device: "phone".into(),
    };
    let session = remote.open_session(&alice).await.expect("session");
    assert_eq!(session.inbox.epoch, 7);
    let (replies, effects) = remote.send_batch(&alice, vec![send("bob", "m1")]).await;
    let ack = replies[0].as_ref().expect("acknowledged");
    assert_eq!(ack.conversation_seq, 1);
    let users: Vec<&str> = effects.deliveries.iter().map(|d| d.user.as_str()).collect();
    assert_eq!(users, vec!["alice", "bob"], "both inboxes to push");
    let (reply, _) = remote
        .handle(
            &alice,
            Body::HistoryReq(pb::HistoryReq {
                conversation_id: "d:alice:bob".into(),
                limit: 10,
                ..Default::default()
            }),
        )
        .await;
    match reply {
        Ok(Some(Body::HistoryResp(history))) => assert_eq!(history.messages.len(), 1),
        other => panic!("expected a history page, got {other:?}"),
    }
    let (refused, _) = remote
        .handle(
            &alice,
            Body::RecallReq(pb::RecallReq {
                conversation_id: "d:alice:bob".into(),
                conversation_seq: 99,
            }),
        )
        .await;
    assert_eq!(
        refused.expect_err("no such message").code,
        pb::ErrorCode::NotFound as i32
    );
}

#[tokio::test]
async fn a_call_past_its_deadline_is_repeated_on_the_other_node_with_the_same_ids() {
    let store = MemoryStore::new(1);
    let (silent, mut heard) = silent_node().await;
    let (live, _stop) = logic_node(store.clone()).await;
    let nodes = vec![silent, live];
    let remote = RemoteLogic::new(options(nodes.clone()));
    let caller = user_routed_to(&nodes, 0);

    let (replies, _) = remote.send_batch(&caller, vec![send("bob", "once")]).await;
    let ack = replies[0].as_ref().expect("answered by the other node");
    assert_eq!(ack.conversation_seq, 1);

    let first_attempt = heard
        .recv()
        .await
        .expect("the silent node got the call first");
    match first_attempt.call {
        Some(Call::SendBatch(batch)) => assert_eq!(batch.requests[0].client_msg_id, "once"),
        other => panic!("expected the send, got {other:?}"),
    }
    // The client resends after an unknown outcome: the logic tier answers the same ack.
    let (again, _) = remote.send_batch(&caller, vec![send("bob", "once")]).await;
    let again = again[0].as_ref().expect("acknowledged");
    assert!(again.duplicate);
    assert_eq!(
        (again.server_msg_id, again.conversation_seq),
        (ack.server_msg_id, ack.conversation_seq)
    );
    let conversation = im_protocol::ids::direct_conversation_id(&caller.user, "bob");
    let history = timeline_store::TimelineStore::read_history(
        &store,
        &conversation,
        0,
        pb::HistoryDirection::Newer,
        10,
    )
    .await
    .expect("history");
    assert_eq!(history.messages.len(), 1, "stored once");
}

#[tokio::test]
async fn a_call_that_is_not_safe_to_repeat_answers_unavailable_after_an_unknown_outcome() {
    let (silent, mut heard) = silent_node().await;
    let (live, _stop) = logic_node(MemoryStore::new(1)).await;
    let nodes = vec![silent, live];
    let remote = RemoteLogic::new(options(nodes.clone()));
    let caller = user_routed_to(&nodes, 0);
    let (reply, _) = remote
        .handle(
            &caller,
            Body::GroupLeaveReq(pb::GroupLeaveReq {
                group_id: "grp-1".into(),
            }),
        )
        .await;
    let error = reply.expect_err("not repeated elsewhere");
    assert_eq!(error.code, pb::ErrorCode::Unavailable as i32);
    assert!(error.retryable);
    assert!(
        heard.recv().await.is_some(),
        "it went to the silent node only"
    );
}

/// Refuses everything and counts the calls.
#[derive(Default)]
struct Refusing {
    calls: AtomicUsize,
}

impl LogicApi for Refusing {
    async fn open_session(&self, _: &Caller) -> Result<SessionInfo, pb::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(pb::ErrorCode::Forbidden.to_error("no"))
    }

    async fn send_batch(
        &self,
        _: &Caller,
        requests: Vec<pb::SendReq>,
    ) -> (Vec<SendReply>, Effects) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let refusal = pb::ErrorCode::Forbidden.to_error("no");
        (
            requests.iter().map(|_| Err(refusal.clone())).collect(),
            Effects::default(),
        )
    }

    async fn handle(&self, _: &Caller, _: Body) -> (Reply, Effects) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (
            Err(pb::ErrorCode::Forbidden.to_error("no")),
            Effects::default(),
        )
    }
}

#[tokio::test]
async fn a_refused_call_is_not_retried() {
    let (first, second) = (Arc::new(Refusing::default()), Arc::new(Refusing::default()));
    let (a, _stop_a) = node_with(first.clone()).await;
    let (b, _stop_b) = node_with(second.clone()).await;
    let nodes = vec![a, b];
    let remote = RemoteLogic::new(options(nodes.clone()));
    let caller = user_routed_to(&nodes, 0);
    let (replies, _) = remote.send_batch(&caller, vec![send("bob", "m")]).await;
    assert_eq!(
        replies[0].as_ref().expect_err("refused").code,
        pb::ErrorCode::Forbidden as i32
    );
    assert_eq!(first.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        second.calls.load(Ordering::SeqCst),
        0,
        "a refusal is an answer"
    );
}

/// Holds every call until released; records the most calls it held at once.
#[derive(Default)]
struct Holding {
    now: AtomicUsize,
    most: AtomicUsize,
    release: tokio::sync::Notify,
}

impl LogicApi for Holding {
    async fn open_session(&self, _: &Caller) -> Result<SessionInfo, pb::Error> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.release.notified().await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(SessionInfo {
            inbox: logic_api::InboxPosition::UNKNOWN,
            max_message_bytes: 1,
            read_groups: Vec::new(),
        })
    }

    async fn send_batch(&self, _: &Caller, _: Vec<pb::SendReq>) -> (Vec<SendReply>, Effects) {
        (Vec::new(), Effects::default())
    }

    async fn handle(&self, _: &Caller, _: Body) -> (Reply, Effects) {
        (Ok(None), Effects::default())
    }
}

#[tokio::test]
async fn calls_beyond_the_in_flight_bound_wait_for_a_slot() {
    let holding = Arc::new(Holding::default());
    let (node, _stop) = node_with(holding.clone()).await;
    let remote = Arc::new(RemoteLogic::new(RemoteOptions {
        max_in_flight: 2,
        attempt_timeout: Duration::from_secs(10),
        call_budget: Duration::from_secs(20),
        ..RemoteOptions::new(vec![node])
    }));
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let remote = remote.clone();
            tokio::spawn(async move {
                let caller = Caller {
                    user: format!("u{i}"),
                    device: "d".into(),
                };
                remote.open_session(&caller).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        holding.now.load(Ordering::SeqCst),
        2,
        "two in flight, three waiting"
    );
    for _ in 0..20 {
        holding.release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for call in calls {
        call.await.expect("ran").expect("answered");
    }
    assert_eq!(holding.most.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_garbage_frame_closes_only_its_own_connection() {
    let (node, _stop) = logic_node(MemoryStore::new(3)).await;
    let mut garbage = tokio::net::TcpStream::connect(&node)
        .await
        .expect("connect");
    garbage
        .write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the node closed the garbage connection"
    );
    let mut oversized = tokio::net::TcpStream::connect(&node)
        .await
        .expect("connect");
    oversized
        .write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .expect("write");
    let closed =
        tokio::time::timeout(Duration::from_secs(5), oversized.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "a length past the largest frame closes the connection too"
    );
    let remote = RemoteLogic::new(options(vec![node]));
    let caller = Caller {
        user: "carol".into(),
        device: "d".into(),
    };
    assert_eq!(
        remote
            .open_session(&caller)
            .await
            .expect("still serving")
            .inbox
            .epoch,
        3
    );
}

#[tokio::test]
async fn a_frozen_node_is_found_out_by_its_pings_long_before_the_call_deadline() {
    let store = MemoryStore::new(1);
    let (silent, _heard) = silent_node().await;
    let (live, _stop) = logic_node(store.clone()).await;
    let nodes = vec![silent, live];
    let remote = RemoteLogic::new(RemoteOptions {
        attempt_timeout: Duration::from_secs(60),
        call_budget: Duration::from_secs(120),
        ping_every: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        ..RemoteOptions::new(nodes.clone())
    });
    let caller = user_routed_to(&nodes, 0);
    let started = std::time::Instant::now();
    let (replies, _) = remote.send_batch(&caller, vec![send("bob", "m")]).await;
    replies[0].as_ref().expect("answered by the other node");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed over after the missed pings ({:?}), not after the 60 s deadline",
        started.elapsed()
    );
}

/// Answers every session open after a delay.
struct Slow {
    calls: AtomicUsize,
    delay: Duration,
}

impl LogicApi for Slow {
    async fn open_session(&self, _: &Caller) -> Result<SessionInfo, pb::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Ok(SessionInfo {
            inbox: logic_api::InboxPosition::UNKNOWN,
            max_message_bytes: 1,
            read_groups: Vec::new(),
        })
    }

    async fn send_batch(&self, _: &Caller, _: Vec<pb::SendReq>) -> (Vec<SendReply>, Effects) {
        (Vec::new(), Effects::default())
    }

    async fn handle(&self, _: &Caller, _: Body) -> (Reply, Effects) {
        (Ok(None), Effects::default())
    }
}

#[tokio::test]
async fn a_busy_node_that_answers_pings_is_waited_for_not_abandoned() {
    let slow = Arc::new(Slow {
        calls: AtomicUsize::new(0),
        delay: Duration::from_secs(2),
    });
    let other = Arc::new(Refusing::default());
    let (a, _stop_a) = node_with(slow.clone()).await;
    let (b, _stop_b) = node_with(other.clone()).await;
    let nodes = vec![a, b];
    let remote = RemoteLogic::new(RemoteOptions {
        attempt_timeout: Duration::from_secs(10),
        call_budget: Duration::from_secs(30),
        ping_every: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        ..RemoteOptions::new(nodes.clone())
    });
    let caller = user_routed_to(&nodes, 0);
    remote
        .open_session(&caller)
        .await
        .expect("the slow node answered");
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        other.calls.load(Ordering::SeqCst),
        0,
        "nothing moved to the other node"
    );
}

#[tokio::test]
async fn a_node_that_went_away_answers_unavailable_at_once_and_is_reconnected_when_it_is_back() {
    let store = MemoryStore::new(5);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let served = tokio::spawn(serve(
        listener,
        Arc::new(Logic::new(store.clone(), LogicConfig::default())),
        stop.clone(),
    ));
    let remote = RemoteLogic::new(options(vec![address.to_string()]));
    let alice = Caller {
        user: "alice".into(),
        device: "phone".into(),
    };
    remote.open_session(&alice).await.expect("served");

    stop.cancel();
    served.await.expect("ran").expect("stopped cleanly");
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let error = remote
            .open_session(&alice)
            .await
            .expect_err("nobody is serving");
        assert_eq!(error.code, pb::ErrorCode::Unavailable as i32);
        assert!(error.retryable, "the client is told to come back");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "calls to a node that is down fail fast ({:?})",
        started.elapsed()
    );

    // Back on the same address: found again within the reconnect backoff.
    let listener = TcpListener::bind(address).await.expect("bind again");
    let _served = tokio::spawn(serve(
        listener,
        Arc::new(Logic::new(store, LogicConfig::default())),
        CancellationToken::new(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match remote.open_session(&alice).await {
            Ok(session) => {
                assert_eq!(session.inbox.epoch, 5);
                break;
            }
            Err(error) => {
                assert!(error.retryable, "{error:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "not reconnected: {error:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_node_shutting_down_finishes_its_calls_in_flight_and_new_calls_go_elsewhere_at_once() {
    let holding = Arc::new(Holding::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let draining = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let served = tokio::spawn(serve(listener, holding.clone(), stop.clone()));
    let (other, _stop_other) = logic_node(MemoryStore::new(9)).await;
    let nodes = vec![draining.to_string(), other];
    let remote = Arc::new(RemoteLogic::new(RemoteOptions {
        attempt_timeout: Duration::from_secs(10),
        call_budget: Duration::from_secs(20),
        ping_every: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        ..RemoteOptions::new(nodes.clone())
    }));
    let held = tokio::spawn({
        let (remote, caller) = (remote.clone(), nth_user_routed_to(&nodes, 0, 0));
        async move { remote.open_session(&caller).await }
    });
    while holding.now.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let session = remote
        .open_session(&nth_user_routed_to(&nodes, 0, 1))
        .await
        .expect("answered by the other node");
    assert_eq!(session.inbox.epoch, 9, "the other node answered");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "sent on at once, not after a deadline ({:?})",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(draining).await.is_err(),
        "no new connection is accepted"
    );

    // The call in flight outlives several ping timeouts: the draining node still answers
    // pings, so the call is waited for, not moved.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!served.is_finished(), "still draining");
    holding.release.notify_waiters();
    let session = held
        .await
        .expect("ran")
        .expect("the call in flight was answered");
    assert_eq!(
        session.inbox.epoch, 0,
        "answered by the draining node, not repeated on the other"
    );
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the node stopped once its calls were answered")
        .expect("ran")
        .expect("stopped cleanly");
}
