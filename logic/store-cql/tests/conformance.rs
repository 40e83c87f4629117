//! The backend-independent conformance suite, run against the CQL store on a real Cassandra
//! node: one test per check, each store in a keyspace of its own.

mod support;

use store_cql::{CqlOptions, CqlStore};
use timeline_store::InboxRetention;
use timeline_store::conformance::{self, StoreFactory};

/// Opens stores in fresh keyspaces on the test node.
struct Stores {
    node: String,
    retention: Vec<(String, InboxRetention)>,
}

impl Stores {
    async fn open(&mut self, keyspace: String, retention: InboxRetention) -> CqlStore {
        let mut options = CqlOptions::single_node(self.node.clone(), keyspace.clone());
        options.retention = retention;
        let store = CqlStore::connect(options)
            .await
            .unwrap_or_else(|e| panic!("cannot open keyspace {keyspace}: {e}"));
        self.retention.push((keyspace, retention));
        store
    }
}

impl StoreFactory for Stores {
    type Store = CqlStore;

    async fn open_fresh(&mut self) -> CqlStore {
        self.open_with_retention(InboxRetention::UNLIMITED).await
    }

    async fn open_with_retention(&mut self, retention: InboxRetention) -> CqlStore {
        self.open(support::fresh_keyspace("conformance"), retention)
            .await
    }

    /// A new session on the same keyspace: what a logic node that restarts opens.
    async fn reopen(&mut self, store: CqlStore) -> CqlStore {
        let keyspace = store.keyspace().to_owned();
        let retention = store.inbox_retention();
        drop(store);
        self.open(keyspace, retention).await
    }
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let Some(node) = support::cassandra() else { return };
            conformance::$check(&mut Stores { node, retention: Vec::new() }).await;
        }
    )*};
}

timeline_store::for_each_check!(conformance_tests);
