//! A small forward HTTP proxy for the tunnel tests, standing in for a corporate proxy: it
//! relays plain requests in absolute form (`POST http://host:port/path`) to their origin and,
//! when allowed, `CONNECT`s. It counts what it relayed so a test can tell the traffic went
//! through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; stops when dropped.
pub struct HttpProxy {
    /// Where clients send their requests.
    pub addr: SocketAddr,
    /// Plain (absolute-form) requests relayed: the first of each proxy connection counts.
    pub plain_connections: Arc<AtomicUsize>,
    /// CONNECTs granted.
    pub connects: Arc<AtomicUsize>,
    relays: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpProxy {
    /// A proxy that grants `CONNECT` only when `allow_connect`.
    pub async fn start(allow_connect: bool) -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plain_connections = Arc::new(AtomicUsize::new(0));
        let connects = Arc::new(AtomicUsize::new(0));
        let (plain, granted) = (plain_connections.clone(), connects.clone());
        let relays = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = relays.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let relay =
                    tokio::spawn(serve(client, allow_connect, plain.clone(), granted.clone()));
                open.lock().unwrap().push(relay.abort_handle());
            }
        });
        HttpProxy {
            addr,
            plain_connections,
            connects,
            relays,
            task,
        }
    }

    /// Cuts every connection relayed so far, in the middle of whatever request it carried
    /// (a proxy restarting, a NAT forgetting its mappings).
    pub fn cut_all(&self) {
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    allow_connect: bool,
    plain: Arc<AtomicUsize>,
    granted: Arc<AtomicUsize>,
) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match client.read_u8().await {
            Ok(b) if head.len() < 16 * 1024 => head.push(b),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut request_line = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (
        request_line.next().unwrap_or(""),
        request_line.next().unwrap_or(""),
    );
    if method == "CONNECT" {
        if !allow_connect {
            let _ = client
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                .await;
            return;
        }
        let Ok(mut origin) = TcpStream::connect(target).await else {
            let _ = client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                .await;
            return;
        };
        granted.fetch_add(1, Ordering::SeqCst);
        let _ = client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut origin).await;
        return;
    }
    // Absolute form only: a proxy is asked for a full URL.
    let Some(authority) = target
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
    else {
        let _ = client
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    let Ok(mut origin) = TcpStream::connect(authority).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    plain.fetch_add(1, Ordering::SeqCst);
    // Relay this request as it came and everything after it on the connection (further
    // keep-alive requests go to the same origin, which is all the tests need).
    if origin.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut origin).await;
}
