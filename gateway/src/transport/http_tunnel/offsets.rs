//! The tunnel's byte accounting, sans IO: which upstream bytes are new, and which downstream
//! bytes a poll gets. Both directions count bytes from the tunnel's start, so a request that was
//! lost (or answered without the client seeing it) is simply repeated with the same offset.

use bytes::{Buf as _, Bytes, BytesMut};

/// An offset the other side cannot be at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// Bytes before this offset never arrived (or, downstream, were never sent): the request
    /// skipped some. The answer names the offset to continue from.
    #[error("offset past {expected}")]
    Ahead {
        /// Where the sender must continue.
        expected: u64,
    },
    /// Downstream: these bytes were acknowledged by an earlier poll and are gone.
    #[error("offset before {kept_from}, already acknowledged")]
    Behind {
        /// The oldest offset still kept.
        kept_from: u64,
    },
}

/// Upstream (client to server): how many bytes of the client's stream the server has taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpCursor {
    received: u64,
}

impl UpCursor {
    /// Bytes taken so far: the offset the next upload must start at (or before).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// An upload of `len` bytes at `offset`: how many of its leading bytes were taken before
    /// (a repeated upload overlaps what arrived). The caller then hands the rest on and calls
    /// [`UpCursor::advance`] with what it managed to hand on.
    pub fn already_taken(&self, offset: u64, len: usize) -> Result<usize, OffsetError> {
        if offset > self.received {
            return Err(OffsetError::Ahead {
                expected: self.received,
            });
        }
        Ok((self.received - offset).min(len as u64) as usize)
    }

    /// `n` more bytes were handed on.
    pub fn advance(&mut self, n: usize) {
        self.received += n as u64;
    }
}

/// What a downstream poll gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Bytes starting at the polled offset.
    Data(Bytes),
    /// Nothing yet: wait for more.
    Wait,
    /// The session ended and the client has every byte of it.
    Ended,
}

/// Downstream (server to client): the bytes sent but not yet acknowledged, kept so a lost poll
/// answer can be sent again. Bounded: the producer stops reading the session while it is full,
/// which backs up into the gateway's outbound queue and, if the client never catches up, its
/// slow-client rule.
#[derive(Debug)]
pub struct DownBuffer {
    /// Offset of `kept[0]`: everything before was acknowledged.
    start: u64,
    kept: BytesMut,
    capacity: usize,
    ended: bool,
}

impl DownBuffer {
    /// Keeps at most `capacity` unacknowledged bytes.
    pub fn new(capacity: usize) -> DownBuffer {
        DownBuffer {
            start: 0,
            kept: BytesMut::new(),
            capacity,
            ended: false,
        }
    }

    /// Bytes that may still be added.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.kept.len())
    }

    /// Adds bytes the session wrote. The caller keeps to [`DownBuffer::room`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
    }

    /// The session closed: once the client has everything, polls answer [`Poll::Ended`].
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Whether the session closed and every byte was acknowledged.
    pub fn finished(&self) -> bool {
        self.ended && self.kept.is_empty()
    }

    /// One past the last byte written.
    pub fn end_offset(&self) -> u64 {
        self.start + self.kept.len() as u64
    }

    /// A poll from a client holding every byte before `offset`: acknowledges those, then
    /// returns at most `max` bytes from `offset` on.
    pub fn poll(&mut self, offset: u64, max: usize) -> Result<Poll, OffsetError> {
        if offset < self.start {
            return Err(OffsetError::Behind {
                kept_from: self.start,
            });
        }
        if offset > self.end_offset() {
            return Err(OffsetError::Ahead {
                expected: self.end_offset(),
            });
        }
        self.kept.advance((offset - self.start) as usize);
        self.start = offset;
        if self.kept.is_empty() {
            return Ok(if self.ended { Poll::Ended } else { Poll::Wait });
        }
        let n = self.kept.len().min(max);
        Ok(Poll::Data(Bytes::copy_from_slice(&self.kept[..n])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_upload_is_taken_only_once() {
        let mut up = UpCursor::default();
        assert_eq!(up.already_taken(0, 10), Ok(0));
        up.advance(10);
        // The answer to the first upload was lost; the client sends the same bytes again plus
        // five new ones.
        assert_eq!(up.already_taken(0, 15), Ok(10));
        up.advance(5);
        assert_eq!(up.received(), 15);
        // An exact repeat adds nothing.
        assert_eq!(up.already_taken(5, 10), Ok(10));
    }

    #[test]
    fn an_upload_that_skips_bytes_is_refused_with_the_offset_to_continue_from() {
        let mut up = UpCursor::default();
        up.advance(7);
        assert_eq!(
            up.already_taken(8, 3),
            Err(OffsetError::Ahead { expected: 7 })
        );
    }

    #[test]
    fn a_poll_acknowledges_what_came_before_and_a_lost_answer_is_sent_again() {
        let mut down = DownBuffer::new(100);
        assert_eq!(down.poll(0, 64), Ok(Poll::Wait));
        down.push(b"hello world");
        assert_eq!(
            down.poll(0, 5),
            Ok(Poll::Data(Bytes::from_static(b"hello")))
        );
        // That answer never arrived: the client polls from 0 again and gets the same bytes.
        assert_eq!(
            down.poll(0, 5),
            Ok(Poll::Data(Bytes::from_static(b"hello")))
        );
        // Now it has them.
        assert_eq!(
            down.poll(5, 64),
            Ok(Poll::Data(Bytes::from_static(b" world")))
        );
        assert_eq!(down.room(), 100 - 6);
        assert_eq!(down.poll(0, 64), Err(OffsetError::Behind { kept_from: 5 }));
        assert_eq!(down.poll(12, 64), Err(OffsetError::Ahead { expected: 11 }));
        assert_eq!(down.poll(11, 64), Ok(Poll::Wait));
        assert_eq!(down.room(), 100);
    }

    #[test]
    fn the_end_is_reported_only_after_the_last_byte_is_acknowledged() {
        let mut down = DownBuffer::new(100);
        down.push(b"bye");
        down.end();
        assert!(!down.finished());
        assert_eq!(down.poll(0, 64), Ok(Poll::Data(Bytes::from_static(b"bye"))));
        assert_eq!(down.poll(3, 64), Ok(Poll::Ended));
        assert!(down.finished());
    }
}
