//! Fault points for tests (crate feature `testing`): stop an operation where a real node could
//! be paused by the operating system, a garbage collector or a live migration, and let it go
//! on later, after other nodes have moved on.

use std::sync::Arc;

use tokio::sync::Notify;

/// The store's side of a pause.
pub(crate) struct SendPause {
    reached: Arc<Notify>,
    release: Arc<Notify>,
}

impl SendPause {
    /// A pause and the test's handle on it.
    pub(crate) fn new() -> (SendPause, SendPauseHandle) {
        let (reached, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        (
            SendPause {
                reached: reached.clone(),
                release: release.clone(),
            },
            SendPauseHandle { reached, release },
        )
    }

    /// Says the pause point is reached and waits for the release.
    pub(crate) async fn wait(self) {
        self.reached.notify_one();
        self.release.notified().await;
    }
}

/// The test's side of a pause.
pub struct SendPauseHandle {
    reached: Arc<Notify>,
    release: Arc<Notify>,
}

impl SendPauseHandle {
    /// Waits until a send stops at the pause point.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the paused send go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}
