//! The backend-independent conformance suite, run against the in-memory store exactly as the
//! embedded store runs it: one test per check, each on fresh stores.

use store_memory::MemoryStore;
use timeline_store::InboxRetention;
use timeline_store::conformance::{self, StoreFactory};

/// Hands out fresh stores, each with its own inbox epoch, as separately created stores on disk
/// would have.
struct Stores {
    next_epoch: u64,
}

impl Stores {
    fn new() -> Stores {
        Stores { next_epoch: 1 }
    }
}

impl StoreFactory for Stores {
    type Store = MemoryStore;

    fn open_fresh(&mut self) -> impl Future<Output = MemoryStore> + Send {
        self.open_with_retention(InboxRetention::UNLIMITED)
    }

    fn open_with_retention(
        &mut self,
        retention: InboxRetention,
    ) -> impl Future<Output = MemoryStore> + Send {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        async move { MemoryStore::with_retention(epoch, retention) }
    }

    /// A restart of a memory store keeps it as it is: everything a call acknowledged is
    /// already in the state, and the store holds nothing else that a restart would lose.
    async fn reopen(&mut self, store: MemoryStore) -> MemoryStore {
        store
    }
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            conformance::$check(&mut Stores::new()).await;
        }
    )*};
}

timeline_store::for_each_check!(conformance_tests);
