//! Local stand-ins for the push services: real hyper servers on 127.0.0.1:0 that record every
//! request and answer what the test's handler says.

#![allow(dead_code)] // each test file uses part of this

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use im_push::{Notification, Platform, PushToken};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shows the crate's logs when a test fails.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("im_push=debug")
        .with_test_writer()
        .try_init();
}

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub version: hyper::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// What the mock answers a request with: a status and a body.
pub type Handler = Arc<dyn Fn(&Recorded) -> (StatusCode, String) + Send + Sync>;

/// Which protocol the mock speaks.
#[derive(Clone, Copy)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge, as the APNs mock needs.
    H2c,
}

/// A running mock; stops when dropped.
pub struct MockServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl MockServer {
    pub async fn start(protocol: Protocol, handler: Handler) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (recorded, accepted, stopped) = (requests.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stopped.cancelled() => return,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (handler, recorded) = (handler.clone(), recorded.clone());
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (handler, recorded) = (handler.clone(), recorded.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|body| body.to_bytes())
                            .unwrap_or_default();
                        let request = Recorded {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        };
                        let (status, answer) = handler(&request);
                        recorded.lock().unwrap().push(request);
                        let mut response = Response::new(Full::new(Bytes::from(answer)));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = TokioIo::new(stream);
                tokio::spawn(async move {
                    let _ = match protocol {
                        Protocol::Http1 => {
                            http1::Builder::new().serve_connection(io, service).await
                        }
                        Protocol::H2c => {
                            http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        }
                    };
                });
            }
        });
        MockServer {
            addr,
            requests,
            connections,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Decodes one base64url JWT part as JSON.
pub fn jwt_part(part: &str) -> serde_json::Value {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// Splits a JWT into (signing input, header, claims, signature bytes).
pub fn split_jwt(jwt: &str) -> (String, serde_json::Value, serde_json::Value, Vec<u8>) {
    let (input, signature) = jwt.rsplit_once('.').expect("three parts");
    let (header, claims) = input.split_once('.').expect("three parts");
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url");
    (
        input.to_owned(),
        jwt_part(header),
        jwt_part(claims),
        signature,
    )
}

/// A text message for `user` from alice.
pub fn text_message(user: &str, seq: u64, text: &str) -> Notification {
    Notification {
        user: user.into(),
        conversation_id: "dm:alice:bob".into(),
        sender_user: "alice".into(),
        sender_name: Some("Alice".into()),
        content_type: 0,
        content: text.as_bytes().to_vec(),
        server_msg_id: 1000 + seq,
        conversation_seq: seq,
        unread: None,
    }
}

pub fn token(platform: Platform, token: &str, device: &str) -> PushToken {
    PushToken {
        platform,
        token: token.into(),
        device: device.into(),
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
