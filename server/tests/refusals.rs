//! Bad input gets a clear error frame and the connection closes; nothing else is affected.

mod support;

use bytes::BytesMut;
use futures::{SinkExt as _, StreamExt as _};
use im_protocol::frame::FrameHeader;
use im_protocol::{Body, Frame, FrameCodec, pb};
use support::*;
use tokio::io::AsyncWriteExt as _;

use tokio_util::codec::Framed;

async fn refused(server: &Server, token: &str, device: &str) -> pb::ErrorCode {
    match Client::try_connect(server, token, device).await {
        Ok(_) => panic!("handshake accepted"),
        Err(e) => pb::ErrorCode::try_from(e.code).unwrap(),
    }
}

/// Reads until the server closes, returning the error it sent (if any).
async fn error_then_close(stream: RawStream) -> Option<pb::Error> {
    let mut framed = Framed::new(stream, FrameCodec::default());
    let mut error = None;
    loop {
        match tokio::time::timeout(WAIT, framed.next())
            .await
            .expect("server closes in time")
        {
            Some(Ok(frame)) => {
                if let Ok(Body::Error(e)) = frame.decode_body() {
                    error = Some(e);
                }
            }
            Some(Err(_)) | None => return error,
        }
    }
}

#[tokio::test]
async fn forged_expired_missing_and_mismatched_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let forged = gateway::auth::TokenKey::new("not-the-secret").sign(&gateway::auth::Claims {
        sub: "alice".into(),
        dev: None,
        plt: None,
        exp: now_secs() + 60,
        iat: None,
    });
    assert_eq!(
        refused(&server, &forged, "phone").await,
        pb::ErrorCode::TokenInvalid
    );
    assert_eq!(
        refused(&server, &token_with("alice", None, now_secs() - 1), "phone").await,
        pb::ErrorCode::TokenExpired
    );
    assert_eq!(
        refused(&server, "", "phone").await,
        pb::ErrorCode::TokenMissing
    );
    assert_eq!(
        refused(&server, "garbage", "phone").await,
        pb::ErrorCode::TokenInvalid
    );
    assert_eq!(
        refused(&server, &server.token("alice", "phone"), "laptop").await,
        pb::ErrorCode::DeviceMismatch
    );
    // The server is still fine.
    Client::connect(&server, "alice", "phone").await;
}

#[tokio::test]
async fn requests_before_authentication_are_refused_and_the_connection_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let stream = server.connect_raw().await;
    let mut framed = Framed::new(stream, FrameCodec::default());
    framed
        .send(Frame::new(1, pb::SyncReq::default()))
        .await
        .unwrap();
    let error = error_then_close(framed.into_inner())
        .await
        .expect("an error frame");
    assert_eq!(error.code, pb::ErrorCode::NotAuthenticated as i32);
}

#[tokio::test]
async fn garbage_bytes_get_an_error_and_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut bystander = Client::connect(&server, "bob", "phone").await;

    // A frame header of an unknown layout version (frames start with 0x00, §1.2).
    let mut stream = server.connect_raw().await;
    stream
        .write_all(b"\x00\x00\x00\x00\x09\x00\x00\x03\x00\x00\x00\x01")
        .await
        .unwrap();
    let error = error_then_close(stream).await.expect("an error frame");
    assert_eq!(error.code, pb::ErrorCode::UnsupportedVersion as i32);

    // A header announcing a huge body is refused without the server waiting for the body.
    let mut stream = server.connect_raw().await;
    let mut header = BytesMut::new();
    FrameHeader {
        body_len: 512 * 1024 * 1024,
        version: 1,
        flags: 0,
        op: 1,
        request_id: 1,
    }
    .write(&mut header);
    stream.write_all(&header).await.unwrap();
    let error = error_then_close(stream).await.expect("an error frame");
    assert_eq!(error.code, pb::ErrorCode::FrameTooLarge as i32);

    // A reserved flag bit.
    let mut stream = server.connect_raw().await;
    let mut header = BytesMut::new();
    FrameHeader {
        body_len: 0,
        version: 1,
        flags: 0x80,
        op: 1,
        request_id: 1,
    }
    .write(&mut header);
    stream.write_all(&header).await.unwrap();
    assert_eq!(
        error_then_close(stream).await.unwrap().code,
        pb::ErrorCode::BadFrame as i32
    );

    // After authentication: a body that is not protobuf is a request error, not a close.
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut raw = BytesMut::new();
    FrameHeader {
        body_len: 3,
        version: 1,
        flags: 0,
        op: pb::Op::SyncReq as u16,
        request_id: 77,
    }
    .write(&mut raw);
    raw.extend_from_slice(&[0xff, 0xff, 0xff]);
    alice.raw(&raw).await;
    match alice.response(77).await {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::BadBody as i32),
        other => panic!("{other:?}"),
    }
    // An unknown op likewise.
    let mut raw = BytesMut::new();
    FrameHeader {
        body_len: 0,
        version: 1,
        flags: 0,
        op: 4242,
        request_id: 78,
    }
    .write(&mut raw);
    alice.raw(&raw).await;
    match alice.response(78).await {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::UnknownOp as i32),
        other => panic!("{other:?}"),
    }
    // A server-only op from a client is a violation: error, then close.
    alice.send_only(pb::Push::default()).await;
    loop {
        match alice.next_frame().await {
            None => break,
            Some(frame) => {
                if let Ok(Body::Error(e)) = frame.decode_body() {
                    assert_eq!(e.code, pb::ErrorCode::WrongDirection as i32);
                }
            }
        }
    }
    // None of it touched the bystander.
    let ack = bystander
        .send_text(to_user("carol"), "ok", "still here")
        .await
        .unwrap();
    assert_eq!(ack.conversation_seq, 1);
}

#[tokio::test]
async fn oversized_messages_and_pages_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-message-bytes", "1000"]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let big = "x".repeat(1001);
    let error = alice
        .send_text(to_user("bob"), "big", &big)
        .await
        .unwrap_err();
    assert_eq!(error.code, pb::ErrorCode::MessageTooLarge as i32);
    match alice
        .request(pb::SyncReq {
            from_seq: 1,
            limit: 100_000,
            to_seq: 0,
        })
        .await
    {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::PageTooLarge as i32),
        other => panic!("{other:?}"),
    }
    // A delivery ack for entries that do not exist yet.
    let ack = alice
        .send_only(pb::DeliveryAck {
            up_to_inbox_seq: 99,
        })
        .await;
    match alice.response(ack).await {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::InvalidArgument as i32),
        other => panic!("{other:?}"),
    }
    let error = alice
        .send_text(to_user("not a valid id"), "bad", "x")
        .await
        .unwrap_err();
    assert_eq!(error.code, pb::ErrorCode::InvalidArgument as i32);
}

#[tokio::test]
async fn a_client_that_never_authenticates_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--handshake-timeout-secs", "1"]);
    let stream = server.connect_raw().await;
    let error = error_then_close(stream).await.expect("an error frame");
    assert_eq!(error.code, pb::ErrorCode::HandshakeTimeout as i32);
}

#[tokio::test]
async fn a_rate_limited_connection_is_told_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--rate-limit", "5"]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(alice.send_only(pb::ConversationsReq::default()).await);
    }
    let mut limited = 0;
    for id in ids {
        if let Body::Error(e) = alice.response(id).await {
            assert_eq!(e.code, pb::ErrorCode::RateLimited as i32);
            assert!(e.retryable && e.retry_after_ms > 0);
            limited += 1;
        }
    }
    assert!(limited >= 15, "only {limited} of 30 were limited");
}
