//! A connection's bounded outbound queue.
//!
//! Bounded in bytes as well as in items: one history or sync page can be half a megabyte, so a
//! count of frames says nothing about memory (1,024 queued pages held 520 MiB for one client
//! that stopped reading). Pushes (`try_push`) may fill it further than answers (`push`): a
//! sender's burst of large messages reaches a reader that is keeping up, while its own answers
//! stop a connection's requests being read early. What happens when it is full is the caller's
//! decision: a push that finds it full closes the connection (the device resyncs on
//! reconnect), the connection's own reader waits for room, a bounded time.
//!
//! Written for idle connections as much as busy ones: an empty queue holds no buffer (a tokio
//! mpsc channel allocates a block of 32 slots per channel up front, about 2 KB, which was a
//! large part of an idle connection's memory). Many producers (pushes from other connections'
//! tasks, the connection's own responses), one consumer (the connection's writer).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use im_protocol::Frame;

/// What the connection's writer task sends.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to encode and send.
    Frame(Frame),
    /// Compress bodies of at least this many bytes from now on (after the handshake).
    Compress(usize),
}

impl Outbound {
    /// What the item counts for against the outbound queue's byte bound: the frame as it
    /// will be written (before compression, which only makes it smaller).
    pub fn queued_bytes(&self) -> usize {
        match self {
            Outbound::Frame(frame) => im_protocol::HEADER_LEN + frame.body.len(),
            Outbound::Compress(_) => 0,
        }
    }
}

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
    /// While the connection's handshake is not answered: pushes queued meanwhile, which go
    /// out after the answer (SPEC §7: the `HandshakeResp` is the first frame a client gets).
    held: Option<VecDeque<Outbound>>,
    /// Sum of [`Outbound::queued_bytes`] over `items` and `held`.
    bytes: usize,
    closed: bool,
}

/// The queue. Share it in an `Arc`.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    max_items: usize,
    max_bytes: usize,
    max_push_bytes: usize,
    /// Wakes the consumer (a stored permit covers a push between its check and its wait).
    readable: Notify,
    /// Wakes producers waiting for room.
    writable: Notify,
}

impl State {
    /// Whether `size` more bytes fit. An empty queue takes one item of any size, so a frame
    /// larger than the byte bound (a page near the frame limit) can still be sent.
    fn has_room(&self, size: usize, max_items: usize, max_bytes: usize) -> bool {
        let held = self.held.as_ref().map_or(0, VecDeque::len);
        (self.items.is_empty() && held == 0)
            || (self.items.len() + held < max_items && self.bytes + size <= max_bytes)
    }
}

impl Outbox {
    /// An empty queue holding at most `max_items` items and `max_bytes` bytes of frames for
    /// [`Outbox::push`], and `max_push_bytes` (at least `max_bytes`) for [`Outbox::try_push`].
    pub fn new(max_items: usize, max_bytes: usize, max_push_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            max_items: max_items.max(1),
            max_bytes,
            max_push_bytes: max_push_bytes.max(max_bytes),
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
            let size = item.queued_bytes();
            if !state.has_room(size, self.max_items, self.max_push_bytes) {
                return Err(PushError::Full);
            }
            state.bytes += size;
            if let Some(held) = state.held.as_mut() {
                held.push_back(item);
                return Ok(());
            }
            state.items.push_back(item);
        }
        self.readable.notify_one();
        Ok(())
    }

    /// From now on, items given to [`Outbox::try_push`] (pushes from other connections) wait
    /// until [`Outbox::release_held`]; the connection's own answers ([`Outbox::push`]) go out
    /// as before. Set while a handshake is answered: a push of an entry committed meanwhile
    /// follows the handshake's answer instead of overtaking it.
    pub fn hold(&self) {
        let mut state = self.lock();
        if state.held.is_none() {
            state.held = Some(VecDeque::new());
        }
    }

    /// Queues what [`Outbox::hold`] held, after everything queued so far.
    pub fn release_held(&self) {
        let released = {
            let mut state = self.lock();
            match state.held.take() {
                Some(held) if !held.is_empty() => {
                    state.items.extend(held);
                    true
                }
                _ => false,
            }
        };
        if released {
            self.readable.notify_one();
        }
    }

    /// Queues `item`, waiting for room (backpressure on the connection's own reader: it stops
    /// reading requests while its answers cannot be written). Callers bound the wait.
    pub async fn push(&self, item: Outbound) -> Result<(), PushError> {
        let size = item.queued_bytes();
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
                if state.has_room(size, self.max_items, self.max_bytes) {
                    state.bytes += size;
                    state.items.push_back(item.take().expect("pushed once"));
                    drop(state);
                    self.readable.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Moves queued items into `into`, in order, until they add up to at least `max_bytes`
    /// (always at least one), waiting while the queue is empty. Taking a bounded amount keeps
    /// the writer's encoded buffer bounded too. Returns false once the queue is closed and
    /// drained.
    pub async fn pop_some(&self, into: &mut VecDeque<Outbound>, max_bytes: usize) -> bool {
        loop {
            {
                let mut state = self.lock();
                if !state.items.is_empty() {
                    let mut taken = 0;
                    while taken < max_bytes.max(1)
                        && let Some(item) = state.items.pop_front()
                    {
                        taken += item.queued_bytes().max(1);
                        state.bytes -= item.queued_bytes();
                        into.push_back(item);
                    }
                    if state.items.is_empty() {
                        // An idle connection holds no slots (a heap profile of 15,000 idle
                        // connections found 160 bytes each here); a busy one allocates them
                        // again once per write, which costs nothing next to the write.
                        state.items = VecDeque::new();
                    }
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

    /// Bytes of frames queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Refuses further items; the consumer still drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_one();
        self.writable.notify_waiters();
    }

    /// Refuses further items and drops what is queued: the connection is being killed and
    /// nothing more will be written, so the memory goes back now.
    pub fn close_and_discard(&self) {
        let dropped = {
            let mut state = self.lock();
            state.closed = true;
            state.bytes = 0;
            state.held = None;
            std::mem::take(&mut state.items)
        };
        drop(dropped);
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

    /// A frame whose body is `bytes` long.
    fn sized(bytes: usize) -> Outbound {
        Outbound::Frame(Frame {
            op: pb::Op::Pong as u16,
            flags: im_protocol::Flags::empty(),
            request_id: 1,
            body: vec![0; bytes].into(),
        })
    }

    #[tokio::test]
    async fn a_full_queue_refuses_try_push_and_drains_in_order() {
        let outbox = Outbox::new(2, 1 << 20, 1 << 20);
        assert_eq!(outbox.try_push(item()), Ok(()));
        assert_eq!(outbox.try_push(Outbound::Compress(7)), Ok(()));
        assert_eq!(outbox.try_push(item()), Err(PushError::Full));
        let mut drained = VecDeque::new();
        assert!(outbox.pop_some(&mut drained, usize::MAX).await);
        assert!(matches!(drained.get(1), Some(Outbound::Compress(7))));
        outbox.close();
        assert_eq!(outbox.try_push(item()), Err(PushError::Closed));
        drained.clear();
        assert!(!outbox.pop_some(&mut drained, usize::MAX).await);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_but_always_takes_one_frame() {
        let outbox = Outbox::new(1024, 100_000, 100_000);
        // One frame larger than the bound still goes into an empty queue...
        assert_eq!(outbox.try_push(sized(300_000)), Ok(()));
        // ...but nothing after it until it is drained.
        assert_eq!(outbox.try_push(sized(10)), Err(PushError::Full));
        let mut drained = VecDeque::new();
        assert!(outbox.pop_some(&mut drained, 1).await);
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(outbox.try_push(sized(60_000)), Ok(()));
        assert_eq!(outbox.try_push(sized(30_000)), Ok(()));
        assert_eq!(outbox.try_push(sized(30_000)), Err(PushError::Full));
        // A bounded pop takes frames until it has its fill, and leaves the rest queued.
        drained.clear();
        assert!(outbox.pop_some(&mut drained, 1000).await);
        assert_eq!(drained.len(), 1);
        assert!(outbox.queued_bytes() >= 30_000);
        outbox.close_and_discard();
        assert_eq!(outbox.queued_bytes(), 0);
        drained.clear();
        assert!(!outbox.pop_some(&mut drained, 1000).await);
    }

    #[tokio::test]
    async fn pushes_may_fill_the_queue_further_than_answers() {
        let outbox = std::sync::Arc::new(Outbox::new(1024, 100_000, 300_000));
        assert_eq!(outbox.try_push(sized(90_000)), Ok(()));
        assert_eq!(outbox.try_push(sized(90_000)), Ok(()));
        assert_eq!(outbox.try_push(sized(90_000)), Ok(()));
        assert_eq!(outbox.try_push(sized(90_000)), Err(PushError::Full));
        // An answer waits until the queue is back under the smaller bound.
        let answer =
            tokio::time::timeout(std::time::Duration::from_millis(20), outbox.push(sized(10)))
                .await;
        assert!(
            answer.is_err(),
            "an answer was queued above the answer bound"
        );
    }

    #[tokio::test]
    async fn a_waiting_producer_resumes_when_the_consumer_drains() {
        let outbox = std::sync::Arc::new(Outbox::new(1, 1 << 20, 1 << 20));
        outbox.try_push(item()).unwrap();
        let producer = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push(Outbound::Compress(1)).await })
        };
        tokio::task::yield_now().await;
        let mut drained = VecDeque::new();
        assert!(outbox.pop_some(&mut drained, usize::MAX).await);
        assert_eq!(producer.await.unwrap(), Ok(()));
        drained.clear();
        assert!(outbox.pop_some(&mut drained, usize::MAX).await);
        assert!(matches!(drained.front(), Some(Outbound::Compress(1))));
    }

    #[tokio::test]
    async fn pushes_held_during_a_handshake_follow_its_answer() {
        let outbox = Outbox::new(8, 1 << 20, 1 << 20);
        outbox.hold();
        let push = |id| Outbound::Frame(Frame::new(id, pb::Ping::default()));
        outbox.try_push(push(7)).expect("held");
        outbox.try_push(push(8)).expect("held");
        outbox.push(push(1)).await.expect("the answer");
        outbox.release_held();
        let mut out = VecDeque::new();
        assert!(outbox.pop_some(&mut out, usize::MAX).await);
        let order: Vec<u32> = out
            .iter()
            .map(|item| match item {
                Outbound::Frame(frame) => frame.request_id,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            vec![1, 7, 8],
            "the answer first, then the pushes in order"
        );
        outbox.try_push(push(9)).expect("no longer held");
        assert!(outbox.pop_some(&mut out, usize::MAX).await);
    }
}
