//! The connection rules of SPEC §2.1, §3.4 and §5, as a client author reads them: every frame
//! costs a rate-limit token, nothing but a handshake is accepted before authentication, a
//! frame-level violation is answered under request id 0, a handshake that does not decode may
//! be retried, and the closing error frame reaches the client even when more bytes follow the
//! frame that broke the stream.

mod support;

use std::time::Duration;

use bytes::{BufMut as _, BytesMut};
use futures::StreamExt as _;
use im_protocol::frame::FrameHeader;
use im_protocol::{Body, Flags, Frame, FrameCodec, pb};
use support::*;
use tokio::io::AsyncWriteExt as _;

use tokio_util::codec::{Encoder as _, FramedRead};

fn encode(frames: &[Frame]) -> BytesMut {
    let mut codec = FrameCodec::default();
    let mut out = BytesMut::new();
    for frame in frames {
        codec.encode(frame.clone(), &mut out).expect("encodable");
    }
    out
}

fn raw_frame(op: u16, flags: u8, request_id: u32, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    FrameHeader {
        body_len: body.len() as u32,
        version: 1,
        flags,
        op,
        request_id,
    }
    .write(&mut out);
    out.put_slice(body);
    out
}

fn handshake(server: &Server, user: &str, device: &str) -> Frame {
    Frame::new(
        1,
        pb::HandshakeReq {
            token: server.token(user, device),
            device_id: device.into(),
            protocol_version: 1,
            ..Default::default()
        },
    )
}

/// What the server sent until it closed: frames in order, and whether the connection ended
/// with a reset instead of an orderly close.
struct Transcript {
    frames: Vec<Frame>,
    reset: bool,
}

impl Transcript {
    fn errors(&self) -> Vec<(u32, pb::ErrorCode)> {
        self.frames
            .iter()
            .filter_map(|f| match f.decode_body() {
                Ok(Body::Error(e)) => {
                    Some((f.request_id, pb::ErrorCode::try_from(e.code).unwrap()))
                }
                _ => None,
            })
            .collect()
    }
}

/// Reads frames until the server closes (or `limit` frames arrived).
async fn read_until_close(stream: RawStream, limit: usize) -> Transcript {
    let mut framed = FramedRead::new(stream, FrameCodec::default());
    let mut frames = Vec::new();
    while frames.len() < limit {
        match tokio::time::timeout(WAIT, framed.next()).await {
            Err(_) => panic!("the server neither answered nor closed within {WAIT:?}"),
            Ok(None) => {
                return Transcript {
                    frames,
                    reset: false,
                };
            }
            Ok(Some(Ok(frame))) => frames.push(frame),
            Ok(Some(Err(_))) => {
                return Transcript {
                    frames,
                    reset: true,
                };
            }
        }
    }
    Transcript {
        frames,
        reset: false,
    }
}

#[tokio::test]
async fn pings_unknown_ops_and_handshakes_are_rate_limited_like_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--rate-limit", "20"]);
    let kinds: [(&str, BytesMut); 2] = [
        ("PING", encode(&[Frame::new(2, pb::Ping::default())])),
        ("unknown op 999", raw_frame(999, 0, 2, &[])),
    ];
    for (name, one) in kinds {
        let mut stream = server.connect_raw().await;
        let mut burst = encode(&[handshake(&server, "alice", name.split(' ').next().unwrap())]);
        for _ in 0..1_000 {
            burst.extend_from_slice(&one);
        }
        stream.write_all(&burst).await.unwrap();
        let transcript = read_until_close(stream, 1_001).await;
        let limited = transcript
            .errors()
            .iter()
            .filter(|(_, code)| *code == pb::ErrorCode::RateLimited)
            .count();
        // Burst 40 plus 20/s while the burst is read: far fewer than 1,000 may pass.
        assert!(
            limited >= 900,
            "{name}: only {limited} of 1,000 pipelined frames were rate limited"
        );
    }

    // Before authentication too: handshakes that fail without closing cost tokens.
    let mut stream = server.connect_raw().await;
    let mut burst = BytesMut::new();
    for _ in 0..1_000 {
        burst.extend_from_slice(&raw_frame(pb::Op::HandshakeReq as u16, 0, 1, &[0xff, 0xff]));
    }
    stream.write_all(&burst).await.unwrap();
    let transcript = read_until_close(stream, 1_000).await;
    let errors = transcript.errors();
    let limited = errors
        .iter()
        .filter(|(_, code)| *code == pb::ErrorCode::RateLimited)
        .count();
    assert!(
        limited >= 900,
        "only {limited} of 1,000 handshakes were rate limited: {:?}",
        &errors[..errors.len().min(5)]
    );
}

#[tokio::test]
async fn an_unknown_op_as_the_first_frame_is_not_authenticated_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut stream = server.connect_raw().await;
    let mut bytes = raw_frame(999, 0, 5, &[]);
    // A handshake right behind it must not be processed: the connection is closing.
    bytes.extend_from_slice(&encode(&[handshake(&server, "alice", "phone")]));
    stream.write_all(&bytes).await.unwrap();
    let transcript = read_until_close(stream, 10).await;
    assert_eq!(
        transcript.errors(),
        vec![(5, pb::ErrorCode::NotAuthenticated)]
    );
    assert_eq!(
        transcript.frames.len(),
        1,
        "the handshake after it was answered"
    );
}

#[tokio::test]
async fn a_client_frame_with_the_push_flag_is_a_bad_frame_under_request_id_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    alice
        .raw(&raw_frame(
            pb::Op::SyncReq as u16,
            Flags::PUSH.bits(),
            9,
            &[],
        ))
        .await;
    let mut errors = Vec::new();
    while let Some(frame) = alice.next_frame().await {
        if let Ok(Body::Error(e)) = frame.decode_body() {
            errors.push((frame.request_id, pb::ErrorCode::try_from(e.code).unwrap()));
        }
    }
    assert_eq!(errors, vec![(0, pb::ErrorCode::BadFrame)]);
}

#[tokio::test]
async fn a_handshake_whose_body_does_not_decode_may_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut stream = server.connect_raw().await;
    stream
        .write_all(&raw_frame(pb::Op::HandshakeReq as u16, 0, 1, &[0x0a, 0xff]))
        .await
        .unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::default());
    let first = tokio::time::timeout(WAIT, framed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first.decode_body().unwrap() {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::BadBody as i32),
        other => panic!("{other:?}"),
    }
    let mut corrected = handshake(&server, "alice", "phone");
    corrected.request_id = 2;
    futures::SinkExt::send(&mut framed, corrected)
        .await
        .unwrap();
    let second = tokio::time::timeout(WAIT, framed.next())
        .await
        .unwrap()
        .expect("the connection stayed open")
        .unwrap();
    assert!(
        matches!(second.decode_body().unwrap(), Body::HandshakeResp(_)),
        "{second:?}"
    );
}

/// Bytes after the broken header, as a client that streams would have in flight: the server
/// never reads them.
const TRAILING_GARBAGE: usize = 256 * 1024;

async fn valid_then_broken(
    server: &Server,
    valid: Frame,
    broken_header: FrameHeader,
) -> Transcript {
    let mut stream = server.connect_raw().await;
    let mut bytes = encode(&[handshake(server, "alice", "phone"), valid]);
    broken_header.write(&mut bytes);
    bytes.extend_from_slice(&vec![0x5a; TRAILING_GARBAGE]);
    // The server may stop reading before all of it arrives; that is fine.
    let _ = stream.write_all(&bytes).await;
    // Read late, as a busy client would: the server has closed by then.
    tokio::time::sleep(Duration::from_millis(500)).await;
    read_until_close(stream, 10).await
}

#[tokio::test]
async fn a_broken_frame_behind_a_valid_one_still_gets_its_error_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let version_2 = FrameHeader {
        body_len: 4,
        version: 2,
        flags: 0,
        op: pb::Op::SyncReq as u16,
        request_id: 3,
    };
    let huge = FrameHeader {
        body_len: u32::MAX,
        version: 1,
        flags: 0,
        op: pb::Op::SyncReq as u16,
        request_id: 3,
    };
    let sync = Frame::new(2, pb::SyncReq::default());
    let send = Frame::new(
        2,
        pb::SendReq {
            target: Some(to_user("bob")),
            client_msg_id: "m1".into(),
            content: "hi".into(),
            ..Default::default()
        },
    );
    for (valid, broken, expected) in [
        (sync.clone(), version_2, pb::ErrorCode::UnsupportedVersion),
        (sync, huge, pb::ErrorCode::FrameTooLarge),
        // Sends are batched: the broken frame is found while the batch is gathered.
        (send.clone(), version_2, pb::ErrorCode::UnsupportedVersion),
        (send, huge, pb::ErrorCode::FrameTooLarge),
    ] {
        let op = valid.op;
        let transcript = valid_then_broken(&server, valid, broken).await;
        let answered = transcript.frames.iter().any(|f| f.request_id == 2);
        assert!(answered, "op {op}: the valid frame got no answer");
        assert!(
            !transcript.reset,
            "op {op}: the server reset the connection"
        );
        assert_eq!(
            transcript.errors().last(),
            Some(&(0, expected)),
            "op {op}: no closing error frame"
        );
    }
}
