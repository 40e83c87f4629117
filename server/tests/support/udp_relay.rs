//! A UDP relay standing in for a network path that may drop UDP: datagrams to [`UdpRelay::addr`]
//! go to the target and answers come back, unless the relay is blocked, when every datagram in
//! either direction vanishes (what a firewall that drops UDP does: no ICMP, no answer).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;

/// A running relay; stops when dropped.
pub struct UdpRelay {
    /// Where clients send.
    pub addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    /// Relays datagrams to `target`, starting blocked or not.
    pub async fn start(target: SocketAddr, blocked: bool) -> UdpRelay {
        let front = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind the relay"),
        );
        let addr = front.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(blocked));
        let task = tokio::spawn(relay(front, target, blocked.clone()));
        UdpRelay {
            addr,
            blocked,
            task,
        }
    }

    /// Drops (true) or passes (false) every datagram from now on.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(front: Arc<UdpSocket>, target: SocketAddr, blocked: Arc<AtomicBool>) {
    // One upstream socket per client address, so the target's answers find their way back.
    let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    // The answer carriers end with this task (a JoinSet aborts its tasks when dropped).
    let mut answers = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            return;
        };
        if blocked.load(Ordering::SeqCst) {
            continue;
        }
        let socket = match upstream.get(&client) {
            Some(socket) => socket.clone(),
            None => {
                let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
                socket.connect(target).await.expect("connect upstream");
                let (back, front, blocked) = (socket.clone(), front.clone(), blocked.clone());
                answers.spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = back.recv(&mut buf).await {
                        if !blocked.load(Ordering::SeqCst) {
                            let _ = front.send_to(&buf[..n], client).await;
                        }
                    }
                });
                upstream.insert(client, socket.clone());
                socket
            }
        };
        let _ = socket.send(&buf[..n]).await;
    }
}
