//! Events to the app's listener: a thread per subscription takes them from the client's
//! bounded event queue and calls the listener, one at a time, in order.
//!
//! Backpressure reaches the server unchanged: while the listener is busy, the thread takes no
//! more events, the queue fills and the client stops reading from the server (it keeps its
//! heartbeats and acks going, so a slow listener causes no reconnect; see sdk-core's driver).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use futures::StreamExt as _;
use futures::channel::mpsc;
use futures::future::{self, Either};
use sdk_core::EventStream;

use crate::error::ImError;
use crate::types::ClientEvent;

/// Receives the client's events. Called on a thread of the client's (not the app's main
/// thread), one event at a time, in order; the next event waits until this returns.
#[uniffi::export(with_foreign)]
pub trait ClientListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: ClientEvent);
}

/// Where the client's event stream waits while no subscription holds it.
pub(crate) struct EventSlot {
    stream: Mutex<Option<EventStream>>,
    returned: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves the data intact (every critical section here is a take or a
    // put), so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventSlot {
    pub(crate) fn new(stream: EventStream) -> EventSlot {
        EventSlot {
            stream: Mutex::new(Some(stream)),
            returned: Condvar::new(),
        }
    }

    fn put_back(&self, stream: EventStream) {
        *lock(&self.stream) = Some(stream);
        self.returned.notify_all();
    }
}

/// A running subscription: cancel it to stop the deliveries (events then wait for the next
/// subscription). Dropping it does not cancel it: a garbage collector's timing must not decide
/// when events stop.
#[derive(uniffi::Object)]
pub struct EventSubscription {
    cancel: mpsc::UnboundedSender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
}

impl EventSubscription {
    pub(crate) fn start(
        slot: Arc<EventSlot>,
        listener: Arc<dyn ClientListener>,
    ) -> Result<Arc<EventSubscription>, ImError> {
        // A subscription cancelled from another thread returns the stream within one event.
        let mut stream = {
            let guard = lock(&slot.stream);
            let (mut guard, _) = slot
                .returned
                .wait_timeout_while(guard, Duration::from_secs(5), |stream| stream.is_none())
                .unwrap_or_else(PoisonError::into_inner);
            guard.take().ok_or_else(|| {
                ImError::invalid("the client already has a subscription: cancel it first")
            })?
        };
        let (cancel, mut cancelled) = mpsc::unbounded::<()>();
        // The thread's own sender keeps the channel open whatever becomes of the subscription
        // object, so only `cancel` ends the deliveries.
        let keep_open = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("imsdk-events".into())
            .spawn(move || {
                deliver(&mut stream, &mut cancelled, listener.as_ref());
                drop(keep_open);
                slot.put_back(stream);
            })
            .map_err(|e| ImError::Runtime {
                reason: format!("cannot start the event thread: {e}"),
            })?;
        Ok(Arc::new(EventSubscription {
            cancel,
            thread_id: thread.thread().id(),
            thread: Mutex::new(Some(thread)),
        }))
    }
}

/// Hands events to `listener` until the client stops or the subscription is cancelled.
fn deliver(
    stream: &mut EventStream,
    cancelled: &mut mpsc::UnboundedReceiver<()>,
    listener: &dyn ClientListener,
) {
    loop {
        let next = futures::executor::block_on(async {
            match future::select(Box::pin(stream.recv()), cancelled.next()).await {
                Either::Left((event, _)) => event,
                Either::Right(_) => None,
            }
        });
        let Some(event) = next else { return };
        // An exception in the app's listener must not end the deliveries.
        let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            listener.on_event(event.into());
        }));
        if delivered.is_err() {
            tracing::warn!("the app's event listener failed on an event; delivering the next");
        }
        // A cancel that arrived during the call wins over events already waiting.
        if cancelled.try_recv().is_ok() {
            return;
        }
    }
}

#[uniffi::export]
impl EventSubscription {
    /// Stops the deliveries after the event being delivered, if any. Safe to call twice, and
    /// from inside the listener.
    pub fn cancel(&self) {
        let _ = self.cancel.unbounded_send(());
        // Wait for the thread to hand the stream back, so a new subscription can start at
        // once; from the listener itself (the thread) that would wait forever.
        if std::thread::current().id() != self.thread_id
            && let Some(thread) = lock(&self.thread).take()
        {
            let _ = thread.join();
        }
    }

    /// Whether the deliveries have stopped (cancelled, or the client stopped).
    pub fn is_finished(&self) -> bool {
        lock(&self.thread)
            .as_ref()
            .is_none_or(|thread| thread.is_finished())
    }
}
