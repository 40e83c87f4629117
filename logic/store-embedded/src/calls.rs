//! How a call reaches the engine: a mutation through the writer's queue, to be answered once
//! its group commit is durable; a read on tokio's blocking pool, against one snapshot.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use timeline_store::{StoreError, StoreResult};
use tokio::sync::oneshot;

use crate::EmbeddedStore;
use crate::read::Reader;
use crate::writer::{DrainFailure, Finish, Job, WriteCtx};

impl EmbeddedStore {
    /// Queues a mutation and waits for its durable result. `failed` builds the answer when the
    /// store is closed or the group commit the mutation belongs to did not commit. `run` may
    /// run more than once (see [`Job`]), so it takes its inputs by reference or clones them.
    pub(crate) async fn mutate<T: Send + 'static>(
        &self,
        run: impl Fn(&mut WriteCtx<'_>) -> T + Send + 'static,
        failed: impl Fn(StoreError) -> T + Send + Sync + 'static,
    ) -> T {
        if let Some(refusal) = self.write_refusal() {
            return failed(refusal);
        }
        let queue = match self.inner.queue.read() {
            Ok(queue) => queue.clone(),
            Err(_) => None,
        };
        let Some(queue) = queue else {
            return failed(if self.inner.closed.load(Ordering::Acquire) {
                StoreError::Closed
            } else {
                StoreError::Unavailable("the store is reopening".into())
            });
        };
        let (reply, answer) = oneshot::channel();
        // Shared with every run of the job: an answer dropped unused (its drain was run again)
        // must not drop the channel.
        let reply = Arc::new(std::sync::Mutex::new(Some(reply)));
        // The writer thread runs the job inside the request's span, so the request's trail
        // continues into the store.
        let span = tracing::Span::current();
        let job: Job = Box::new(move |ctx: &mut WriteCtx<'_>| {
            let _entered = span.enter();
            let result = run(ctx);
            tracing::trace!("store operation staged in the group commit");
            let reply = Arc::clone(&reply);
            let span = span.clone();
            let finish: Finish = Box::new(move |outcome: Result<(), DrainFailure>| {
                let _entered = span.enter();
                match &outcome {
                    Ok(()) => tracing::debug!("stored durably"),
                    Err(failure) => tracing::debug!(reason = %failure.reason, "not stored"),
                }
                let sender = reply.lock().ok().and_then(|mut slot| slot.take());
                if let Some(sender) = sender {
                    let _ = sender.send(outcome.map(|()| result));
                }
            });
            finish
        });
        if queue.send(job).await.is_err() {
            return failed(StoreError::Closed);
        }
        match answer.await {
            Ok(Ok(result)) => result,
            Ok(Err(failure)) if failure.invalid_argument => {
                failed(StoreError::InvalidArgument(failure.reason))
            }
            Ok(Err(failure)) => {
                // A failed commit may mean a full disk: measure now rather than at the next tick.
                self.inner.measure_free_space();
                if self.inner.low_on_space() {
                    failed(StoreError::Full)
                } else {
                    failed(StoreError::Backend(failure.reason))
                }
            }
            // The job panicked inside the writer and was dropped with its answer channel; the
            // group commit it was part of ran again without it.
            Err(_) => failed(StoreError::Backend(
                "the store writer failed while running this operation".to_owned(),
            )),
        }
    }

    /// Why a mutation cannot be tried now, if it cannot: the disk is (nearly) full, or the
    /// database refuses writes until it is reopened.
    fn write_refusal(&self) -> Option<StoreError> {
        if self.inner.low_on_space() {
            return Some(StoreError::Full);
        }
        if self.inner.broken.load(Ordering::Acquire) {
            return Some(StoreError::Unavailable(
                "the store is recovering from a failed write".into(),
            ));
        }
        None
    }

    /// Runs a read on the blocking pool against a fresh snapshot.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let engine = self.inner.engine.read().ok().and_then(|e| e.clone());
        let Some(engine) = engine else {
            return Err(StoreError::Unavailable("the store is reopening".into()));
        };
        tokio::task::spawn_blocking(move || {
            let reader = Reader {
                snapshot: engine.db.read_tx(),
                ks: &engine.ks,
            };
            f(&reader)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}
