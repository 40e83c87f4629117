//! A connection's bounded outbound queue.
//!
//! Written for idle connections as much as busy ones: an empty queue holds no buffer (a tokio
//! mpsc channel allocates a block of 32 slots per channel up front, about 2 KB, which was a
//! large part of an idle connection's memory). Many producers (pushes from other connections'
//! tasks, the connection's own responses), one consumer (the connection's writer).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::hub::Outbound;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its capacity: the consumer is too slow.
    Full,
    /// The connection is closing.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outbound>,
    closed: bool,
}

/// The queue. Share it in an `Arc`.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the consumer (a stored permit covers a push between its check and its wait).
    readable: Notify,
    /// Wakes producers waiting for room.
    writable: Notify,
}

impl Outbox {
    /// An empty queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            capacity,
            readable: Notify::new(),
            writable: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a single push or swap), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` unless the queue is full or closed; never waits.
    pub fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(PushError::Closed);
            }
            if state.items.len() >= self.capacity {
                return Err(PushError::Full);
            }
            state.items.push_back(item);
        }
        self.readable.notify_one();
        Ok(())
    }

    /// Queues `item`, waiting for room (backpressure on the connection's own reader: it stops
    /// reading requests while its answers cannot be written).
    pub async fn push(&self, item: Outbound) -> Result<(), PushError> {
        let mut item = Some(item);
        loop {
            let room = self.writable.notified();
            tokio::pin!(room);
            // Register before checking, so a drain in between is not missed.
            room.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(PushError::Closed);
                }
                if state.items.len() < self.capacity {
                    state.items.push_back(item.take().expect("pushed once"));
                    drop(state);
                    self.readable.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Moves everything queued into `into` (waiting while the queue is empty). Returns false
    /// once the queue is closed and drained.
    pub async fn pop_all(&self, into: &mut VecDeque<Outbound>) -> bool {
        loop {
            {
                let mut state = self.lock();
                if !state.items.is_empty() {
                    std::mem::swap(&mut state.items, into);
                    drop(state);
                    self.writable.notify_waiters();
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            self.readable.notified().await;
        }
    }

    /// Refuses further items; the consumer still drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_one();
        self.writable.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::{Frame, pb};

    fn item() -> Outbound {
        Outbound::Frame(Frame::new(1, pb::Ping::default()))
    }

    #[tokio::test]
    async fn a_full_queue_refuses_try_push_and_drains_in_order() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.try_push(item()), Ok(()));
        assert_eq!(outbox.try_push(Outbound::Compress(7)), Ok(()));
        assert_eq!(outbox.try_push(item()), Err(PushError::Full));
        let mut drained = VecDeque::new();
        assert!(outbox.pop_all(&mut drained).await);
        assert!(matches!(drained.get(1), Some(Outbound::Compress(7))));
        outbox.close();
        assert_eq!(outbox.try_push(item()), Err(PushError::Closed));
        drained.clear();
        assert!(!outbox.pop_all(&mut drained).await);
    }

    #[tokio::test]
    async fn a_waiting_producer_resumes_when_the_consumer_drains() {
        let outbox = std::sync::Arc::new(Outbox::new(1));
        outbox.try_push(item()).unwrap();
        let producer = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push(Outbound::Compress(1)).await })
        };
        tokio::task::yield_now().await;
        let mut drained = VecDeque::new();
        assert!(outbox.pop_all(&mut drained).await);
        assert_eq!(producer.await.unwrap(), Ok(()));
        drained.clear();
        assert!(outbox.pop_all(&mut drained).await);
        assert!(matches!(drained.front(), Some(Outbound::Compress(1))));
    }
}
