//! A connection's writer task: drains the connection's bounded outbound queue into its byte
//! stream, coalescing whatever is queued into one write, and gives up on a peer that stops
//! reading.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use im_protocol::pb::ErrorCode;
use im_protocol::{Frame, FrameCodec};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio_util::codec::Encoder as _;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbound, Outbox};
use crate::transport::ByteStream;

/// Bytes the writer gathers before one write.
const WRITE_COALESCE_BYTES: usize = 64 * 1024;

/// How the writer task ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The queue was closed and everything in it was written.
    Drained,
    /// The peer stopped taking bytes for longer than the stall timeout, the socket failed, or
    /// the connection killed the writer: unsent data was discarded.
    Abandoned,
}

/// Encodes queued frames and writes them, several per syscall when they are queued together.
///
/// A write that makes no progress for `stall_timeout` means the peer stopped reading: the
/// writer then gives up, marks the connection closed and resets the socket (linger 0), so the
/// kernel does not keep trying to deliver megabytes to a peer that will not read them. `kill`
/// does the same on the connection's request (it is ending and will not wait any longer).
pub(crate) async fn writer<S: ByteStream>(
    mut socket: S::WriteHalf,
    outbox: Arc<Outbox>,
    max_body: usize,
    stall_timeout: Duration,
    close: CancellationToken,
    kill: CancellationToken,
) -> WriterEnd {
    let mut codec = FrameCodec::new(max_body);
    let mut buf = BytesMut::new();
    let mut batch = std::collections::VecDeque::new();
    let end = loop {
        let more = tokio::select! {
            biased;
            _ = kill.cancelled() => break WriterEnd::Abandoned,
            more = outbox.pop_some(&mut batch, WRITE_COALESCE_BYTES) => more,
        };
        if !more {
            break WriterEnd::Drained;
        }
        for item in batch.drain(..) {
            match item {
                Outbound::Frame(frame) => {
                    if let Err(e) = codec.encode(&frame, &mut buf) {
                        tracing::warn!(error = %e, op = frame.op, "dropping an unencodable frame");
                        // A request must still get an answer, or its client waits until it
                        // gives up on the whole connection.
                        if !frame.is_push() && frame.request_id != 0 {
                            let error = Frame::error(
                                frame.request_id,
                                ErrorCode::Internal,
                                "response not sendable",
                            );
                            let _ = codec.encode(&error, &mut buf);
                        }
                    }
                }
                Outbound::Compress(threshold) => codec.compress_above(Some(threshold)),
            }
        }
        // Boxed: the write timer is needed only while writing, not in every idle writer.
        if !Box::pin(write_with_progress(&mut socket, &buf, stall_timeout, &kill)).await {
            break WriterEnd::Abandoned;
        }
        buf.clear();
        if outbox.queued_bytes() == 0 {
            // Nothing more to write: an idle connection keeps no buffer (the queue gives its
            // own slots back when it empties). A busy one keeps them, up to a burst's size.
            buf = BytesMut::new();
            batch = std::collections::VecDeque::new();
        } else if buf.capacity() > WRITE_COALESCE_BYTES {
            buf = BytesMut::new();
        }
    };
    match end {
        WriterEnd::Drained => {
            let _ = socket.shutdown().await;
        }
        WriterEnd::Abandoned => {
            outbox.close_and_discard();
            close.cancel();
            S::abandon(&mut socket);
        }
    }
    end
}

/// Writes all of `buf`, giving up (false) when the socket fails, when one write call makes no
/// progress for `stall_timeout`, or when `kill` is cancelled.
async fn write_with_progress(
    socket: &mut (impl AsyncWrite + Unpin),
    mut buf: &[u8],
    stall_timeout: Duration,
    kill: &CancellationToken,
) -> bool {
    use tokio::io::AsyncWriteExt as _;
    while !buf.is_empty() {
        let written = tokio::select! {
            biased;
            _ = kill.cancelled() => return false,
            written = tokio::time::timeout(stall_timeout, socket.write(buf)) => written,
        };
        match written {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => buf = &buf[n..],
            Err(_elapsed) => {
                tracing::info!(
                    unsent = buf.len(),
                    "peer read nothing for {stall_timeout:?}: closing the slow connection"
                );
                return false;
            }
        }
    }
    true
}
