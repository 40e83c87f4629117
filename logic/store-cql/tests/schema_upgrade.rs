//! A keyspace created by an older build: the columns added since are added when a store starts
//! on it, and its data stays readable.

mod support;

use scylla::client::session_builder::SessionBuilder;
use store_cql::{CqlOptions, CqlStore};
use timeline_store::{NewGroup, TimelineStore};

const T0: u64 = 1_700_000_000_000;

fn group(owner: &str, broadcast: bool) -> NewGroup {
    NewGroup {
        name: "news".into(),
        owner: owner.into(),
        members: vec!["amy".into()],
        open: false,
        client_request_id: String::new(),
        max_members: 10,
        read_fanout: false,
        broadcast,
        now_ms: T0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_without_the_broadcast_column_gets_it_at_start() {
    let Some(node) = support::cassandra() else {
        return;
    };
    let keyspace = support::fresh_keyspace("upgrade");
    let options = CqlOptions::single_node(&node, keyspace.clone());
    let store = CqlStore::connect(options.clone()).await.expect("connects");
    let before = store
        .create_group(group("olga", false))
        .await
        .expect("create");
    drop(store);

    // What a keyspace made before broadcast channels looks like.
    let session = SessionBuilder::new()
        .known_node(&node)
        .build()
        .await
        .expect("session");
    session
        .query_unpaged(format!("ALTER TABLE {keyspace}.groups DROP broadcast"), &[])
        .await
        .expect("drop the column");
    session.await_schema_agreement().await.expect("agreement");

    let store = CqlStore::connect(options)
        .await
        .expect("connects to the old keyspace");
    let old = store
        .group(&before.group.group_id)
        .await
        .expect("the old group reads");
    assert!(!old.broadcast);
    assert_eq!(old.member_count, 2);
    let channel = store
        .create_group(group("olga", true))
        .await
        .expect("create");
    assert!(
        store
            .group(&channel.group.group_id)
            .await
            .expect("the channel reads")
            .broadcast
    );
}
