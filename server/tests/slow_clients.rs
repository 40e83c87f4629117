//! Clients that stop reading their socket, against the real server process: they must cost a
//! bounded amount of server memory, be closed for real within the stated time, and not slow
//! down anybody else.
//!
//! Two kinds, 50 of each, as an attacker would run them: one pipelines `HISTORY_REQ`s for
//! half-megabyte pages and never reads the answers; the other is a member of a busy group and
//! never reads the pushes.

mod support;

use std::time::{Duration, Instant};

use futures::SinkExt as _;
use im_protocol::pb;
use im_protocol::{Frame, FrameCodec};
use support::{Client, Server, messages, to_user};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{Encoder as _, Framed};

const SLOW_CLIENTS: usize = 50;
/// The server's settings under test (documented defaults are 1 MiB and 15 s).
const QUEUE_BYTES: usize = 256 * 1024;
const SLOW_TIMEOUT_SECS: u64 = 2;
/// Slow-client timeout, plus the 2 s a closing connection gives its writer, plus scheduling
/// slack on a loaded 2-core machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(SLOW_TIMEOUT_SECS + 2 + 6);

fn start_server(dir: &std::path::Path) -> Server {
    Server::start_process(
        dir,
        &[
            "--outbound-queue-bytes",
            &QUEUE_BYTES.to_string(),
            "--slow-client-timeout-secs",
            &SLOW_TIMEOUT_SECS.to_string(),
        ],
    )
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// Sockets the server process holds open (listener and client connections).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Connects with a small receive buffer (so the server's data piles up on its side, as with a
/// phone that stopped reading) and authenticates; returns the raw socket, which the caller
/// never reads again.
async fn connect_non_reader(server: &Server, user: &str, device: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let mut framed = Framed::new(stream, FrameCodec::default());
    let hello = pb::HandshakeReq {
        token: server.token(user, device),
        device_id: device.into(),
        protocol_version: 1,
        ..Default::default()
    };
    framed.send(Frame::new(1, hello)).await.expect("handshake");
    let answer = tokio::time::timeout(support::WAIT, futures::StreamExt::next(&mut framed))
        .await
        .expect("handshake answer in time")
        .expect("open")
        .expect("decodable");
    assert!(matches!(
        answer.decode_body(),
        Ok(im_protocol::Body::HandshakeResp(_))
    ));
    framed.into_inner()
}

/// Whether the server closed `stream` within `within`, judged from the client's socket state
/// in the kernel (`/proc/net/tcp`): reading the socket to find out would make the client a
/// fast one, and a reset connection still offers the bytes it had received.
async fn closed_by_server(stream: &TcpStream, within: Duration) -> bool {
    let port = stream.local_addr().expect("local addr").port();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if !is_established(port) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the IPv4 TCP socket bound to local `port` is still ESTABLISHED (state 01).
fn is_established(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "01"
    })
}

/// A pair of ordinary users chatting while the slow clients misbehave: every message must be
/// acknowledged and pushed to the peer.
async fn healthy_chat(server: &Server, rounds: u32) -> Duration {
    let mut carol = Client::connect(server, "carol", "phone").await;
    let mut dave = Client::connect(server, "dave", "phone").await;
    let started = Instant::now();
    for i in 0..rounds {
        let ack = carol
            .send_text(to_user("dave"), &format!("c{i}"), "hello")
            .await;
        assert!(ack.is_ok(), "{ack:?}");
        let pushed = dave.pushed_entries(1).await;
        assert_eq!(messages(&pushed).len(), 1);
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_never_read_their_answers_are_closed_and_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let pid = server.pid();

    // Each slow user has a conversation whose history page is about half a megabyte.
    let big = "x".repeat(60_000);
    for u in 0..SLOW_CLIENTS {
        let user = format!("slow{u}");
        let mut client = Client::connect(&server, &user, "setup").await;
        for i in 0..9 {
            let ack = client
                .send_text(to_user(&user), &format!("big{i}"), &big)
                .await;
            assert!(ack.is_ok(), "{ack:?}");
        }
        // Read the pages once, so the store's block cache holds them before the baseline:
        // what is measured below is the connections' memory, not the cache warming up.
        let page = client
            .request(pb::HistoryReq {
                conversation_id: format!("d:{user}:{user}"),
                ..Default::default()
            })
            .await;
        assert!(
            matches!(page, im_protocol::Body::HistoryResp(_)),
            "{page:?}"
        );
    }
    let sockets_before = open_sockets(pid);
    let rss_before = rss_mib(pid);

    let mut attackers = Vec::new();
    for u in 0..SLOW_CLIENTS {
        let user = format!("slow{u}");
        let mut stream = connect_non_reader(&server, &user, "phone").await;
        attackers.push(tokio::spawn(async move {
            // Pipeline history requests and never read: the writes block once the server
            // stops reading this connection, and fail once it closes it.
            let mut codec = FrameCodec::default();
            let mut buf = bytes::BytesMut::new();
            let conversation = format!("d:{user}:{user}");
            let started = Instant::now();
            for id in 2..2_000u32 {
                buf.clear();
                let request = pb::HistoryReq {
                    conversation_id: conversation.clone(),
                    ..Default::default()
                };
                codec.encode(Frame::new(id, request), &mut buf).unwrap();
                if stream.write_all(&buf).await.is_err() {
                    return (started.elapsed(), true);
                }
            }
            // Every request was written: the server kept reading. It must still close us.
            (
                started.elapsed(),
                closed_by_server(&stream, CLOSED_WITHIN).await,
            )
        }));
    }

    let mut peak = rss_mib(pid);
    let chat_time = {
        let chat = healthy_chat(&server, 30);
        tokio::pin!(chat);
        loop {
            tokio::select! {
                elapsed = &mut chat => break elapsed,
                _ = tokio::time::sleep(Duration::from_millis(100)) => peak = peak.max(rss_mib(pid)),
            }
        }
    };
    for attacker in attackers {
        let (elapsed, closed) = tokio::time::timeout(CLOSED_WITHIN * 2, attacker)
            .await
            .expect("the server closed the slow client within the stated time")
            .unwrap();
        peak = peak.max(rss_mib(pid));
        assert!(closed, "a slow client was not closed ({elapsed:?})");
    }
    settle_sockets(pid, sockets_before).await;
    let rss_after = settled_rss(pid, rss_before + 32.0).await;
    eprintln!(
        "history flood: RSS {rss_before:.0} MiB before, peak {peak:.0} MiB, {rss_after:.0} MiB after; healthy chat of 30 rounds took {chat_time:?}"
    );
    // Per slow connection: the queue bound, one frame being written and one being read.
    let bound = rss_before
        + 64.0
        + SLOW_CLIENTS as f64 * (QUEUE_BYTES as f64 + 2.0 * 1048576.0) / 1048576.0;
    assert!(
        peak < bound,
        "peak RSS {peak:.0} MiB above the bound {bound:.0} MiB"
    );
    assert!(
        rss_after < rss_before + 32.0,
        "memory did not come back: {rss_after:.0} MiB after, {rss_before:.0} MiB before"
    );
}

/// The server's RSS once it fell below `target`, or after a few seconds (the server returns
/// freed memory to the OS every 2 s).
async fn settled_rss(pid: u32, target: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let rss = rss_mib(pid);
        if rss < target || Instant::now() >= deadline {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the server holds no more sockets than `expected` (the slow ones are gone).
async fn settle_sockets(pid: u32, expected: usize) {
    let deadline = Instant::now() + CLOSED_WITHIN;
    loop {
        let now = open_sockets(pid);
        if now <= expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server still holds {now} sockets, {expected} expected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_that_never_read_their_pushes_are_closed_and_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Fifty devices of one user: the pushes to them are many, the messages stored few, so
    // the server's memory measured here is the connections' (a group of fifty members would
    // measure mostly the store's write buffers).
    let server = Server::start_process(
        dir.path(),
        &[
            "--outbound-queue-bytes",
            &QUEUE_BYTES.to_string(),
            "--slow-client-timeout-secs",
            &SLOW_TIMEOUT_SECS.to_string(),
            "--max-connections-per-user",
            "64",
        ],
    );
    let pid = server.pid();
    let mut owner = Client::connect(&server, "owner", "phone").await;
    let sockets_before = open_sockets(pid);
    let rss_before = rss_mib(pid);
    let mut deaf = Vec::new();
    for device in 0..SLOW_CLIENTS {
        deaf.push(connect_non_reader(&server, "deaf", &format!("tablet{device}")).await);
    }

    // Enough pushes to fill every device's queue several times over (through the kernel's
    // socket buffer and the queue bound).
    let text = "y".repeat(30_000);
    let started = Instant::now();
    let mut peak = rss_mib(pid);
    for i in 0..60 {
        let ack = owner
            .send_text(to_user("deaf"), &format!("m{i}"), &text)
            .await;
        assert!(ack.is_ok(), "{ack:?}");
        peak = peak.max(rss_mib(pid));
    }
    let chat_time = healthy_chat(&server, 30).await;
    for stream in &deaf {
        let remaining = CLOSED_WITHIN.saturating_sub(started.elapsed()) + Duration::from_secs(1);
        assert!(
            closed_by_server(stream, remaining).await,
            "a device that never reads was still connected {:?} after the pushes began",
            started.elapsed()
        );
        peak = peak.max(rss_mib(pid));
    }
    // Two sockets more than before: carol's and dave's, still open.
    settle_sockets(pid, sockets_before + 2).await;
    let rss_after = settled_rss(pid, rss_before + 32.0).await;
    eprintln!(
        "push flood: RSS {rss_before:.0} MiB before, peak {peak:.0} MiB, {rss_after:.0} MiB after; healthy chat took {chat_time:?}"
    );
    // Pushes may fill a queue to four times its bound.
    let bound = rss_before
        + 64.0
        + SLOW_CLIENTS as f64 * (4.0 * QUEUE_BYTES as f64 + 1048576.0) / 1048576.0;
    assert!(
        peak < bound,
        "peak RSS {peak:.0} MiB above the bound {bound:.0} MiB"
    );
    assert!(
        rss_after < rss_before + 32.0,
        "memory did not come back: {rss_after:.0} MiB after, {rss_before:.0} MiB before"
    );
    // The sender was never slowed into a close: it still gets answers.
    let ack = owner
        .send_text(to_user("deaf"), "after", "still here")
        .await;
    assert!(ack.is_ok(), "{ack:?}");
}

#[tokio::test]
async fn a_user_cannot_open_more_connections_than_the_limit_but_a_device_can_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(dir.path(), &["--max-connections-per-user", "3"]);
    let mut held = Vec::new();
    for device in ["d1", "d2", "d3"] {
        held.push(Client::connect(&server, "mallory", device).await);
    }
    let refused = Client::try_connect(&server, &server.token("mallory", "d4"), "d4")
        .await
        .err()
        .expect("a fourth device is refused");
    assert_eq!(refused.code, pb::ErrorCode::TooManyConnections as i32);
    assert!(refused.retryable);
    // The same device reconnecting replaces its old connection instead of being refused.
    let again = Client::connect(&server, "mallory", "d2").await;
    assert_eq!(again.hello.device_id, "d2");
    // Other users are not limited by mallory's connections.
    let _bob = Client::connect(&server, "bob", "phone").await;
}
