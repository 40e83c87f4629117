//! Property: the in-memory store answers every call exactly as the embedded store does, for
//! random sequences of calls of every kind (ids valid, unknown, malformed and far too long;
//! times moving forward by random steps; retention by count and age). The conformance suite
//! says what a store must do; this checks that the two stores also agree wherever the suite
//! is silent, which is what lets a simulation on the memory store stand for a server on disk.

use im_protocol::pb;
use proptest::prelude::*;
use store_embedded::{EmbeddedOptions, EmbeddedStore};
use store_memory::MemoryStore;
use timeline_store::{InboxRetention, NewGroup, NewMessage, TimelineStore};

/// Users: mostly a few valid ones (so that calls meet each other's data), sometimes an id the
/// stores refuse or only a key-length check catches.
fn user() -> impl Strategy<Value = String> {
    prop_oneof![
        // Two users most of the time, so that calls keep meeting the same conversations.
        20 => prop::sample::select(vec!["alice", "bob"]).prop_map(str::to_owned),
        4 => Just("carol".to_owned()),
        1 => prop::sample::select(vec!["", "no:colons", "x y"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![70, 1_100, 2_100, 70_000]).prop_map(|n| "u".repeat(n)),
    ]
}

/// A viewer of `read_history_as`: any user but the 70,000-byte one. The embedded store does
/// not check the viewer's length and hands it to its engine inside a range key, which panics
/// beyond 64 KiB (the read answers `Backend`); the logic tier only ever passes the
/// authenticated caller, so no client can reach that. Below the engine's limit both stores
/// answer alike.
fn viewer() -> impl Strategy<Value = String> {
    user().prop_filter("a viewer the engine can take", |u| u.len() < 60_000)
}

fn group_id() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => prop::sample::select(vec!["grp-1", "grp-2"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["", "grp-99", "g:grp-1"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![1_100, 2_100, 70_000]).prop_map(|n| "g".repeat(n)),
    ]
}

fn conversation() -> impl Strategy<Value = String> {
    prop_oneof![
        // Mostly one conversation, so that sends, reads, recalls and deletes meet in it.
        8 => Just("d:alice:bob".to_owned()),
        4 => (user(), user()).prop_map(|(a, b)| im_protocol::ids::direct_conversation_id(&a, &b)),
        4 => group_id().prop_map(|g| im_protocol::ids::group_conversation_id(&g)),
        1 => prop::sample::select(vec!["", "d:bob:alice", "x:y"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![1_100, 2_100]).prop_map(|n| format!("d:a:{}", "b".repeat(n))),
    ]
}

fn users() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(user(), 0..4)
}

fn cursor() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        2 => user(),
        1 => prop::sample::select(vec![
            "zz",
            "+000000000000000d:alice:bob",
            "fffffe7961d5ffffd:alice:bob",
            "ffffffffffffffffg:grp-1",
        ])
        .prop_map(str::to_owned),
        1 => Just("c".repeat(1_100)),
    ]
}

/// A message; its recipients are the conversation's users, or for a group any users (the
/// store does not check membership: the logic tier does).
fn message() -> impl Strategy<Value = NewMessage> {
    (
        user(),
        conversation(),
        users(),
        prop::sample::select(vec!["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", ""]),
        prop::sample::select(vec!["hi", "ho"]),
    )
        .prop_map(|(sender, conversation_id, others, id, content)| {
            let mut recipients = match im_protocol::ids::ConversationRef::parse(&conversation_id) {
                Ok(im_protocol::ids::ConversationRef::Direct { low, high }) => {
                    vec![low.to_owned(), high.to_owned()]
                }
                _ => others,
            };
            recipients.sort();
            recipients.dedup();
            NewMessage {
                kind: if conversation_id.starts_with("g:") {
                    pb::ConversationKind::Group
                } else {
                    pb::ConversationKind::Direct
                },
                conversation_id,
                sender_user: sender.clone(),
                sender_device: format!("{sender}-phone"),
                client_msg_id: id.to_owned(),
                content_type: 0,
                content: content.as_bytes().to_vec(),
                recipients,
                now_ms: 0,
            }
        })
}

fn direction() -> impl Strategy<Value = pb::HistoryDirection> {
    prop::sample::select(vec![
        pb::HistoryDirection::Older,
        pb::HistoryDirection::Newer,
    ])
}

/// One call of the store interface; times come from the sequence's clock.
#[derive(Clone, Debug)]
enum Call {
    Commit(Vec<NewMessage>),
    MarkRead(String, String, u64, Option<String>),
    Recall(String, u64, String, Vec<String>, u64),
    Delete(String, String, Vec<u64>),
    ReadInbox(String, u64, u64, u32),
    History(Option<String>, String, u64, pb::HistoryDirection, u32),
    Conversations(String, u32, String),
    Conversation(String, String),
    Sweep,
    InboxHead(String),
    RecordDelivery(String, String, u64),
    DeliveryCursor(String, String),
    CreateGroup(String, Vec<String>, bool, String, u32),
    AddMembers(String, String, Vec<String>, u32),
    RemoveMembers(String, String, Vec<String>),
    Join(String, String, u32),
    Leave(String, String),
    Group(String),
    GroupMembers(String, u32, String),
    IsMember(String, String),
    MemberIds(String),
    SetFanout(String, bool),
    ReadFanoutGroups(String),
}

fn call() -> impl Strategy<Value = Call> {
    let seq = || prop_oneof![8 => 1u64..5, 1 => Just(0u64), 1 => 5u64..12];
    prop_oneof![
        10 => prop::collection::vec(message(), 1..4).prop_map(Call::Commit),
        4 => (user(), conversation(), seq(), prop::option::of(user()))
            .prop_map(|(u, c, s, r)| Call::MarkRead(u, c, s, r)),
        4 => (conversation(), seq(), user(), users(), prop::sample::select(vec![0u64, 60_000, 1 << 40]))
            .prop_map(|(c, s, u, r, w)| Call::Recall(c, s, u, r, w)),
        2 => (user(), conversation(), prop::collection::vec(seq(), 0..4))
            .prop_map(|(u, c, s)| Call::Delete(u, c, s)),
        3 => (user(), seq(), seq(), 0u32..5).prop_map(|(u, f, t, l)| Call::ReadInbox(u, f, t, l)),
        2 => (prop::option::of(viewer()), conversation(), seq(), direction(), 0u32..5)
            .prop_map(|(v, c, a, d, l)| Call::History(v, c, a, d, l)),
        2 => (user(), 0u32..4, cursor()).prop_map(|(u, l, c)| Call::Conversations(u, l, c)),
        1 => (user(), conversation()).prop_map(|(u, c)| Call::Conversation(u, c)),
        1 => Just(Call::Sweep),
        1 => user().prop_map(Call::InboxHead),
        1 => (user(), user(), seq()).prop_map(|(u, d, s)| Call::RecordDelivery(u, d, s)),
        1 => (user(), user()).prop_map(|(u, d)| Call::DeliveryCursor(u, d)),
        3 => (user(), users(), any::<bool>(), prop::sample::select(vec!["", "r1", "r2"]), 1u32..6)
            .prop_map(|(o, m, open, r, max)| Call::CreateGroup(o, m, open, r.to_owned(), max)),
        2 => (group_id(), user(), users(), 1u32..6)
            .prop_map(|(g, a, m, max)| Call::AddMembers(g, a, m, max)),
        2 => (group_id(), user(), users()).prop_map(|(g, a, m)| Call::RemoveMembers(g, a, m)),
        2 => (group_id(), user(), 1u32..6).prop_map(|(g, u, max)| Call::Join(g, u, max)),
        2 => (group_id(), user()).prop_map(|(g, u)| Call::Leave(g, u)),
        1 => group_id().prop_map(Call::Group),
        1 => (group_id(), 0u32..4, cursor()).prop_map(|(g, l, c)| Call::GroupMembers(g, l, c)),
        1 => (group_id(), user()).prop_map(|(g, u)| Call::IsMember(g, u)),
        1 => group_id().prop_map(Call::MemberIds),
        2 => (group_id(), any::<bool>()).prop_map(|(g, r)| Call::SetFanout(g, r)),
        1 => user().prop_map(Call::ReadFanoutGroups),
    ]
}

/// Makes `call` at time `now` and prints what the store answered (errors included, with
/// their texts).
async fn answer<S: TimelineStore>(store: &S, call: &Call, now: u64) -> String {
    match call.clone() {
        Call::Commit(mut messages) => {
            for message in &mut messages {
                message.now_ms = now;
            }
            format!("{:?}", store.commit_messages(messages).await)
        }
        Call::MarkRead(u, c, s, r) => {
            format!("{:?}", store.mark_read(&u, &c, s, r.as_deref(), now).await)
        }
        Call::Recall(c, s, u, r, w) => format!("{:?}", store.recall(&c, s, &u, &r, w, now).await),
        Call::Delete(u, c, s) => format!("{:?}", store.delete_messages(&u, &c, &s, now).await),
        Call::ReadInbox(u, f, t, l) => format!("{:?}", store.read_inbox(&u, f, t, l).await),
        Call::History(None, c, a, d, l) => format!("{:?}", store.read_history(&c, a, d, l).await),
        Call::History(Some(v), c, a, d, l) => {
            format!("{:?}", store.read_history_as(&v, &c, a, d, l).await)
        }
        Call::Conversations(u, l, c) => format!("{:?}", store.conversations(&u, l, &c).await),
        Call::Conversation(u, c) => format!("{:?}", store.conversation(&u, &c).await),
        Call::Sweep => format!("{:?}", store.sweep_inbox_retention(now).await),
        Call::InboxHead(u) => format!("{:?}", store.inbox_head(&u).await),
        Call::RecordDelivery(u, d, s) => format!("{:?}", store.record_delivery(&u, &d, s).await),
        Call::DeliveryCursor(u, d) => format!("{:?}", store.delivery_cursor(&u, &d).await),
        Call::CreateGroup(owner, members, open, client_request_id, max_members) => {
            let group = NewGroup {
                name: "g".into(),
                owner,
                members,
                open,
                client_request_id,
                max_members,
                read_fanout: false,
                broadcast: false,
                now_ms: now,
            };
            format!("{:?}", store.create_group(group).await)
        }
        Call::AddMembers(g, a, m, max) => {
            format!("{:?}", store.add_members(&g, &a, &m, max, now).await)
        }
        Call::RemoveMembers(g, a, m) => {
            format!("{:?}", store.remove_members(&g, &a, &m, now).await)
        }
        Call::Join(g, u, max) => format!("{:?}", store.join_group(&g, &u, max, now).await),
        Call::Leave(g, u) => format!("{:?}", store.leave_group(&g, &u, now).await),
        Call::Group(g) => format!("{:?}", store.group(&g).await),
        Call::GroupMembers(g, l, c) => format!("{:?}", store.group_members(&g, l, &c).await),
        Call::IsMember(g, u) => format!("{:?}", store.is_member(&g, &u).await),
        Call::MemberIds(g) => format!("{:?}", store.member_ids(&g).await),
        Call::SetFanout(g, read) => format!("{:?}", store.set_group_fanout(&g, read, now).await),
        Call::ReadFanoutGroups(u) => format!("{:?}", store.read_fanout_groups(&u).await),
    }
}

fn retention() -> impl Strategy<Value = InboxRetention> {
    (
        prop::sample::select(vec![0u64, 3, 6]),
        prop::sample::select(vec![0u64, 40_000]),
    )
        .prop_map(|(max_entries, max_age_ms)| InboxRetention {
            max_entries,
            max_age_ms,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_memory_store_answers_every_call_as_the_embedded_store_does(
        retention in retention(),
        calls in prop::collection::vec((call(), 0u64..30_000), 1..100),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let options = EmbeddedOptions {
                inbox_retention: retention,
                cache_bytes: 8 << 20,
                worker_threads: 1,
                ..EmbeddedOptions::default()
            };
            let disk = EmbeddedStore::open(dir.path(), options).expect("open the embedded store");
            let memory = MemoryStore::with_retention(1, retention);
            let mut now = 1_700_000_000_000;
            for (index, (call, step)) in calls.iter().enumerate() {
                now += step;
                let expected = answer(&disk, call, now).await;
                let got = answer(&memory, call, now).await;
                prop_assert_eq!(
                    got, expected,
                    "call {} of {}: {:?}", index, calls.len(), call
                );
            }
            disk.close().await.expect("close the embedded store");
            Ok(())
        })?;
    }
}
