//! The logic node's side: accepts gateway connections and answers their calls with any
//! [`LogicApi`].

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt as _};
use im_protocol::{ErrorCodeExt as _, pb};
use logic_api::{Caller, LogicApi};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::wire::{
    Call, ClientBody, Effects as WireEffects, Empty, MAX_FRAME_BYTES, Outcome, RpcRequest,
    RpcResponse, SendOutcome, SendReplies, SendReply, caller_of,
};

/// Calls one gateway connection may have in flight: past it the node stops reading that
/// connection (the gateway's own bound is lower; this one guards against a misbehaving peer).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// The deadline of a call that names none.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// The codec of both directions.
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// Serves `logic` to the gateways that connect to `listener` until `shutdown` is cancelled;
/// then stops accepting (the listener is closed at once, so new connections are refused),
/// answers the calls in flight, and returns once every connection has closed. While a
/// connection drains it still answers pings (the node is alive) and answers new calls
/// `not_taken`, which sends them to another node at once.
pub async fn serve<L: LogicApi>(
    listener: TcpListener,
    logic: Arc<L>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or a connection reset before accept: keep serving.
                tracing::warn!(%error, "logic node accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tracing::debug!(%peer, "gateway connected");
        connections.spawn(
            connection(stream, logic.clone(), shutdown.clone())
                .instrument(tracing::debug_span!("gateway", %peer)),
        );
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn connection<L: LogicApi>(stream: TcpStream, logic: Arc<L>, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, codec());
    let mut sink = FramedWrite::new(write, codec());
    let (answers, mut to_write) = mpsc::channel::<RpcResponse>(1024);
    let writer = tokio::spawn(async move {
        while let Some(response) = to_write.recv().await {
            if sink
                .feed(bytes::Bytes::from(response.encode_to_vec()))
                .await
                .is_err()
            {
                return;
            }
            // Write out whatever queued meanwhile in one flush.
            while let Ok(response) = to_write.try_recv() {
                if sink
                    .feed(bytes::Bytes::from(response.encode_to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if SinkExt::<bytes::Bytes>::flush(&mut sink).await.is_err() {
                return;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let calls = TaskTracker::new();
    let mut draining = false;
    loop {
        let frame = tokio::select! {
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                calls.close();
                continue;
            }
            () = calls.wait(), if draining => break,
            frame = frames.next() => frame,
        };
        let request = match frame {
            None => break,
            Some(Err(error)) => {
                tracing::warn!(%error, "gateway connection broken or oversized frame; closing it");
                break;
            }
            Some(Ok(bytes)) => match RpcRequest::decode(bytes.freeze()) {
                Ok(request) => request,
                Err(error) => {
                    tracing::warn!(%error, "a gateway sent a frame that is not a request; closing it");
                    break;
                }
            },
        };
        let immediate = match request.call {
            // Answered ahead of every call in progress: the node is alive, however busy.
            Some(Call::Ping(_)) => Some(Outcome::Pong(Empty {})),
            // Shutting down: not run here, so the gateway takes it elsewhere at once.
            Some(_) if draining => Some(Outcome::NotTaken(Empty {})),
            _ => None,
        };
        if let Some(outcome) = immediate {
            let answer = RpcResponse {
                id: request.id,
                outcome: Some(outcome),
                effects: None,
            };
            if answers.send(answer).await.is_err() {
                break;
            }
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (logic, answers) = (logic.clone(), answers.clone());
        calls.spawn(async move {
            let deadline = match request.deadline_ms {
                0 => DEFAULT_DEADLINE,
                ms => Duration::from_millis(u64::from(ms)),
            };
            let id = request.id;
            // Past its deadline nobody waits for the answer: the gateway has retried elsewhere
            // or answered the client. Dropping the call here is safe (every step of a
            // mutation can be repeated) and frees the node.
            if let Ok(response) = tokio::time::timeout(deadline, answer(&*logic, request)).await {
                let _ = answers.send(response).await;
            } else {
                tracing::debug!(id, "call dropped past its deadline");
            }
            drop(permit);
        });
    }
    // Closed or broken: the calls in flight still finish (their effects are stored), and their
    // answers are written if the connection still takes them.
    calls.close();
    calls.wait().await;
    drop(answers);
    let _ = writer.await;
}

/// Runs one call.
async fn answer<L: LogicApi>(logic: &L, request: RpcRequest) -> RpcResponse {
    let caller: Caller = caller_of(&request);
    let id = request.id;
    let (outcome, effects) = match request.call {
        Some(Call::Ping(_)) => (Outcome::Pong(Empty {}), None),
        None => (
            Outcome::Refused(pb::ErrorCode::BadBody.to_error("a call with nothing asked")),
            None,
        ),
        Some(Call::OpenSession(_)) => match logic.open_session(&caller).await {
            Ok(info) => (Outcome::Session(info.into()), None),
            Err(error) => (Outcome::Refused(error), None),
        },
        Some(Call::SendBatch(batch)) => {
            let (replies, effects) = logic.send_batch(&caller, batch.requests).await;
            let replies = replies
                .into_iter()
                .map(|reply| SendReply {
                    outcome: Some(match reply {
                        Ok(ack) => SendOutcome::Ack(ack),
                        Err(error) => SendOutcome::Error(error),
                    }),
                })
                .collect();
            (
                Outcome::Sends(SendReplies { replies }),
                Some(WireEffects::from(effects)),
            )
        }
        Some(Call::Handle(body)) => match body.decode() {
            Err(error) => (Outcome::Refused(error), None),
            Ok(body) => {
                let (reply, effects) = logic.handle(&caller, body).await;
                let outcome = match reply {
                    Ok(Some(body)) => Outcome::Body(ClientBody::of(&body)),
                    Ok(None) => Outcome::None(Empty {}),
                    Err(error) => Outcome::Refused(error),
                };
                (outcome, Some(WireEffects::from(effects)))
            }
        },
    };
    RpcResponse {
        id,
        outcome: Some(outcome),
        effects,
    }
}
