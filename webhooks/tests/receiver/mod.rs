//! A stand-in for the app's backend: a real HTTP/1.1 server on 127.0.0.1:0 that records every
//! request and answers according to the test's script.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("request has no {name} header"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What the receiver answers.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: Bytes::new(),
        }
    }

    pub fn json(value: serde_json::Value) -> Reply {
        Reply {
            status: 200,
            body: Bytes::from(value.to_string()),
        }
    }

    pub fn raw(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            body: body.into(),
        }
    }
}

pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Given the request's index (0-based, in arrival order) and the request, the answer.
type Script = Arc<dyn Fn(usize, Recorded) -> ReplyFuture + Send + Sync>;

pub struct Receiver {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    server: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    /// Answers every request with what `script` returns at once.
    pub async fn answering(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Receiver::scripted(move |index, _| {
            let reply = script(index);
            Box::pin(async move { reply })
        })
        .await
    }

    /// Answers every request with what the future `script` returns resolves to (which may
    /// wait: a slow or stuck app server).
    pub async fn scripted(
        script: impl Fn(usize, Recorded) -> ReplyFuture + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::serve(None, script).await
    }

    /// Like [`Receiver::scripted`], over TLS with `tls` (the URL then names `localhost`).
    pub async fn serve(
        tls: Option<tokio_rustls::TlsAcceptor>,
        script: impl Fn(usize, Recorded) -> ReplyFuture + Send + Sync + 'static,
    ) -> Receiver {
        let url_scheme_host = if tls.is_some() {
            "https://localhost"
        } else {
            "http://127.0.0.1"
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let recorded = requests.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let requests = recorded.clone();
                let script = script.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let requests = requests.clone();
                        let script = script.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let request = Recorded {
                                headers: parts.headers,
                                body,
                            };
                            let index = {
                                let mut requests = requests.lock().unwrap();
                                requests.push(request.clone());
                                requests.len() - 1
                            };
                            let reply = script(index, request).await;
                            let response = Response::builder()
                                .status(StatusCode::from_u16(reply.status).unwrap())
                                .body(Full::new(reply.body))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Receiver {
            url: format!("{url_scheme_host}:{}/im-hooks", address.port()),
            requests,
            server,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Waits until `condition` holds, checking often, for a deadline generous enough for a loaded
/// machine; panics naming `what` if it never does.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Shows the crate's logs when a test fails.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("im_webhooks=debug")
        .try_init();
}
