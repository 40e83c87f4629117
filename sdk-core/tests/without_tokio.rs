//! An app that does not run tokio: the client runs on a runtime of its own, the app drives the
//! handle's futures with any executor and reads events on a plain thread.

use std::time::Duration;

use futures::executor::block_on;
use sdk_core::driver::{self, DriverOptions};
use sdk_core::memory::MemoryStore;
use sdk_core::{ClientConfig, ConnectionState, Event, Recipient, SendState};

/// Runs `body` on a thread and fails the test if it does not finish in time (a blocking call
/// that never returns would otherwise hang the test run).
fn within(limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        body();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(limit)
        .expect("the scenario finished (a panic above says why if not)");
}

#[test]
fn an_app_without_tokio_queues_a_message_while_the_server_is_unreachable() {
    within(Duration::from_secs(30), || {
        // A port nobody listens on: the client keeps trying, the message waits in the outbox.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let (handle, mut events) = driver::start_with_own_runtime(
            closed.into(),
            "token".into(),
            ClientConfig::new("alice", "phone"),
            MemoryStore::new(),
            DriverOptions::default(),
        )
        .expect("the client starts");

        let sent = block_on(handle.send_text(Recipient::User("bob".into()), "hello"))
            .expect("queued locally");
        assert_eq!(sent.state, SendState::Sending);
        let added = std::iter::from_fn(|| events.blocking_recv())
            .find_map(|event| match event {
                Event::MessageAdded(message) => Some(message),
                _ => None,
            })
            .expect("the message's event");
        assert_eq!(added.local_id, sent.local_id);
        let (state, _) = block_on(handle.state()).expect("the client answers");
        assert!(
            matches!(
                state,
                ConnectionState::Connecting | ConnectionState::WaitingToReconnect
            ),
            "{state:?}"
        );

        block_on(handle.shutdown()).expect("the client stops");
        // Its runtime stopped with it: the event stream ends.
        while events.blocking_recv().is_some() {}
    });
}
