//! One suite for both local stores: every check runs against [`MemoryStore`] and against
//! [`SqliteStore::open_in_memory`], so simulations over the memory store stand for the real one.
//! A differential test then drives both with the same random operations and compares every
//! answer, and SQLite-only tests cover what only a file can show (restarts, damage).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sdk_core::memory::MemoryStore;
use sdk_core::sqlite::SqliteStore;
use sdk_core::store::{
    LocalConversation, LocalMessage, LocalResult, LocalStore, LocalStoreError, OutboxItem,
    Recipient, SendState,
};

const ME: &str = "alice";
const PEER: &str = "bob";
const DIRECT: &str = "d:alice:bob";
const GROUP: &str = "g:team";

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

/// Sends `text` from the local user into `conversation_id` the way the state machine does:
/// a fresh local id, an outbox item and its `Sending` message. Returns the local id.
fn send<S: LocalStore>(store: &mut S, conversation_id: &str, text: &str) -> LocalResult<u64> {
    let local_id = store.next_local_id()?;
    let (item, message) = outgoing(local_id, conversation_id, text);
    store.outbox_push(&item, &message)?;
    Ok(local_id)
}

fn client_msg_id(local_id: u64) -> String {
    format!("dev1-{local_id}-cafe")
}

fn outgoing(local_id: u64, conversation_id: &str, text: &str) -> (OutboxItem, LocalMessage) {
    let recipient = if conversation_id.starts_with("g:") {
        Recipient::Group(conversation_id.trim_start_matches("g:").to_owned())
    } else {
        Recipient::User(PEER.to_owned())
    };
    let item = OutboxItem {
        local_id,
        recipient,
        conversation_id: conversation_id.to_owned(),
        client_msg_id: client_msg_id(local_id),
        content_type: 1,
        content: text.as_bytes().to_vec(),
        created_ms: 1_000 + local_id,
        attempts: 0,
        state: SendState::Sending,
    };
    let message = LocalMessage {
        local_id,
        conversation_id: conversation_id.to_owned(),
        sender: ME.to_owned(),
        client_msg_id: client_msg_id(local_id),
        seq: 0,
        server_msg_id: 0,
        time_ms: 1_000 + local_id,
        content_type: 1,
        content: text.as_bytes().to_vec(),
        state: SendState::Sending,
        recalled: false,
    };
    (item, message)
}

/// A message as the inbox delivers it.
fn received(
    conversation_id: &str,
    seq: u64,
    sender: &str,
    client_msg_id: &str,
    text: &str,
) -> LocalMessage {
    LocalMessage {
        local_id: 0,
        conversation_id: conversation_id.to_owned(),
        sender: sender.to_owned(),
        client_msg_id: client_msg_id.to_owned(),
        seq,
        server_msg_id: 9_000 + seq,
        time_ms: 50_000 + seq,
        content_type: 1,
        content: text.as_bytes().to_vec(),
        state: SendState::Sent,
        recalled: false,
    }
}

fn from_peer(conversation_id: &str, seq: u64) -> LocalMessage {
    received(
        conversation_id,
        seq,
        PEER,
        &format!("bob-{seq}"),
        &format!("hello {seq}"),
    )
}

fn conversation(
    id: &str,
    updated_ms: u64,
    last_message: Option<LocalMessage>,
) -> LocalConversation {
    LocalConversation {
        conversation_id: id.to_owned(),
        peer: PEER.to_owned(),
        title: format!("title of {id}"),
        last_seq: last_message.as_ref().map_or(0, |m| m.seq),
        last_message,
        read_seq: 2,
        unread_count: 3,
        peer_read_seq: 1,
        updated_ms,
    }
}

fn seqs(messages: &[LocalMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn local_ids(items: &[OutboxItem]) -> Vec<u64> {
    items.iter().map(|i| i.local_id).collect()
}

// ---------------------------------------------------------------------------------------------
// The checks, generic over the store
// ---------------------------------------------------------------------------------------------

fn cursor_starts_at_zero_and_keeps_the_last_value_set<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    assert_eq!(store.cursor()?, 0);
    store.set_cursor(17)?;
    assert_eq!(store.cursor()?, 17);
    store.set_cursor(42)?;
    assert_eq!(store.cursor()?, 42);
    Ok(())
}

fn next_local_id_is_nonzero_and_strictly_increasing<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let mut previous = 0;
    for _ in 0..50 {
        let id = store.next_local_id()?;
        assert!(id > previous, "{id} after {previous}");
        previous = id;
    }
    Ok(())
}

fn outbox_push_adds_a_sending_message_at_the_top_of_history<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    store.put_message(&from_peer(DIRECT, 1))?;
    let local_id = store.next_local_id()?;
    let (item, mut message) = outgoing(local_id, DIRECT, "hi");
    // The store records the message as `Sending` whatever the caller filled in.
    message.state = SendState::Failed;
    store.outbox_push(&item, &message)?;

    assert_eq!(store.outbox_get(local_id)?, Some(item));
    let history = store.history(DIRECT, 0, 10)?;
    assert_eq!(history.len(), 2);
    assert_eq!(
        history[0],
        LocalMessage {
            state: SendState::Sending,
            ..message
        }
    );
    assert_eq!(history[1].seq, 1);
    Ok(())
}

fn outbox_pending_is_in_local_id_order_and_skips_failed_items<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let a = send(store, DIRECT, "a")?;
    let b = send(store, GROUP, "b")?;
    let c = send(store, DIRECT, "c")?;
    assert_eq!(local_ids(&store.outbox_pending()?), vec![a, b, c]);
    assert_eq!(
        store.outbox_pending()?[1].recipient,
        Recipient::Group("team".into())
    );

    store.outbox_update(b, 5, SendState::Failed)?;
    assert_eq!(local_ids(&store.outbox_pending()?), vec![a, c]);
    // A failed item stays in the outbox, ready for a retry.
    assert_eq!(
        store.outbox_get(b)?.map(|i| i.state),
        Some(SendState::Failed)
    );
    Ok(())
}

fn outbox_update_changes_attempts_and_state_of_item_and_message<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let id = send(store, DIRECT, "x")?;
    store.outbox_update(id, 3, SendState::Sending)?;
    let item = store.outbox_get(id)?.expect("item stays in the outbox");
    assert_eq!((item.attempts, item.state), (3, SendState::Sending));

    store.outbox_update(id, 4, SendState::Failed)?;
    let item = store
        .outbox_get(id)?
        .expect("failed item stays in the outbox");
    assert_eq!((item.attempts, item.state), (4, SendState::Failed));
    assert_eq!(store.history(DIRECT, 0, 10)?[0].state, SendState::Failed);

    // Retry: back to `Sending`, back in the pending list.
    store.outbox_update(id, 0, SendState::Sending)?;
    assert_eq!(local_ids(&store.outbox_pending()?), vec![id]);
    assert_eq!(store.history(DIRECT, 0, 10)?[0].state, SendState::Sending);

    // Unknown ids are ignored.
    store.outbox_update(9_999, 1, SendState::Failed)?;
    assert_eq!(store.outbox_get(9_999)?, None);
    Ok(())
}

fn outbox_acked_returns_the_sent_message_and_removes_it_from_pending<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let first = send(store, DIRECT, "one")?;
    let second = send(store, DIRECT, "two")?;

    let acked = store
        .outbox_acked(&client_msg_id(first), 7, 70_007, 123_456)?
        .expect("first ack");
    assert_eq!(
        acked,
        LocalMessage {
            local_id: first,
            conversation_id: DIRECT.into(),
            sender: ME.into(),
            client_msg_id: client_msg_id(first),
            seq: 7,
            server_msg_id: 70_007,
            time_ms: 123_456,
            content_type: 1,
            content: b"one".to_vec(),
            state: SendState::Sent,
            recalled: false,
        }
    );
    assert_eq!(local_ids(&store.outbox_pending()?), vec![second]);
    assert_eq!(store.outbox_get(first)?, None);
    assert_eq!(store.message(DIRECT, 7)?, Some(acked.clone()));
    // The message moved to its seq: one row, no longer among the unacked ones.
    assert_eq!(seqs(&store.history(DIRECT, 0, 10)?), vec![0, 7]);

    // The server acks again (a retransmission raced the first ack): nothing left to do.
    assert_eq!(
        store.outbox_acked(&client_msg_id(first), 7, 70_007, 123_456)?,
        None
    );
    assert_eq!(store.outbox_acked("never-sent", 8, 1, 1)?, None);
    assert_eq!(seqs(&store.history(DIRECT, 0, 10)?), vec![0, 7]);
    Ok(())
}

fn put_message_stores_once_per_conversation_and_seq<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let message = from_peer(DIRECT, 3);
    assert!(store.put_message(&message)?);
    assert!(!store.put_message(&message)?);
    // Same seq, different payload (a replay after the cursor was lost): still the first copy.
    let mut other = from_peer(DIRECT, 3);
    other.content = b"changed".to_vec();
    assert!(!store.put_message(&other)?);
    assert_eq!(store.message(DIRECT, 3)?, Some(message.clone()));
    // The same seq in another conversation is another message.
    assert!(store.put_message(&from_peer(GROUP, 3))?);
    assert_eq!(store.history(DIRECT, 0, 10)?, vec![message]);
    assert_eq!(store.message(DIRECT, 4)?, None);
    Ok(())
}

fn put_message_refuses_seq_zero<S: LocalStore>(store: &mut S) -> LocalResult<()> {
    assert!(!store.put_message(&from_peer(DIRECT, 0))?);
    assert_eq!(store.history(DIRECT, 0, 10)?, vec![]);
    assert_eq!(store.message(DIRECT, 0)?, None);
    Ok(())
}

fn own_message_seen_in_the_inbox_before_its_ack_is_stored_once<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let id = send(store, DIRECT, "mine")?;
    let inbox_copy = received(DIRECT, 5, ME, &client_msg_id(id), "mine");
    assert!(store.put_message(&inbox_copy)?);

    let history = store.history(DIRECT, 0, 10)?;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        history[0],
        LocalMessage {
            local_id: id,
            ..inbox_copy.clone()
        }
    );
    // The item stays in the outbox until the ack; a failure report no longer demotes it.
    assert_eq!(local_ids(&store.outbox_pending()?), vec![id]);
    store.outbox_update(id, 9, SendState::Failed)?;
    assert_eq!(
        store.message(DIRECT, 5)?.map(|m| m.state),
        Some(SendState::Sent)
    );

    let acked = store.outbox_acked(
        &client_msg_id(id),
        5,
        inbox_copy.server_msg_id,
        inbox_copy.time_ms,
    )?;
    assert_eq!(
        acked,
        Some(LocalMessage {
            local_id: id,
            ..inbox_copy.clone()
        })
    );
    assert_eq!(store.history(DIRECT, 0, 10)?.len(), 1);
    assert_eq!(store.outbox_get(id)?, None);
    // The copy arriving once more (history fetch) changes nothing.
    assert!(!store.put_message(&inbox_copy)?);
    assert_eq!(store.history(DIRECT, 0, 10)?.len(), 1);
    Ok(())
}

fn own_message_seen_in_the_inbox_after_its_ack_is_stored_once<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let id = send(store, DIRECT, "mine")?;
    let acked = store
        .outbox_acked(&client_msg_id(id), 5, 905, 50_005)?
        .expect("ack");
    assert!(!store.put_message(&received(DIRECT, 5, ME, &client_msg_id(id), "mine"))?);
    assert_eq!(store.history(DIRECT, 0, 10)?, vec![acked]);
    Ok(())
}

fn inbox_copy_only_matches_the_same_conversation_and_sender<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let id = send(store, DIRECT, "mine")?;
    // Same idempotency key, but someone else's message / another conversation.
    assert!(store.put_message(&received(DIRECT, 1, PEER, &client_msg_id(id), "theirs"))?);
    assert!(store.put_message(&received(GROUP, 1, ME, &client_msg_id(id), "elsewhere"))?);
    assert_eq!(seqs(&store.history(DIRECT, 0, 10)?), vec![0, 1]);
    assert_eq!(store.message(DIRECT, 1)?.map(|m| m.local_id), Some(0));
    assert_eq!(store.message(GROUP, 1)?.map(|m| m.local_id), Some(0));
    Ok(())
}

fn recall_erases_the_content_and_reports_unknown_messages<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let message = from_peer(DIRECT, 4);
    store.put_message(&message)?;
    store.put_conversation(&conversation(DIRECT, 10, Some(message.clone())))?;

    assert!(store.recall_message(DIRECT, 4)?);
    let recalled = store.message(DIRECT, 4)?.expect("recalled message stays");
    assert_eq!(
        recalled,
        LocalMessage {
            recalled: true,
            content: vec![],
            ..message
        }
    );
    // The preview does not keep the content either.
    let preview = store
        .conversation(DIRECT)?
        .and_then(|c| c.last_message)
        .expect("preview");
    assert!(preview.recalled);
    assert!(preview.content.is_empty());

    // Idempotent, and unknown messages say so.
    assert!(store.recall_message(DIRECT, 4)?);
    assert!(!store.recall_message(DIRECT, 5)?);
    assert!(!store.recall_message(GROUP, 4)?);
    Ok(())
}

fn delete_removes_only_the_named_messages<S: LocalStore>(store: &mut S) -> LocalResult<()> {
    for seq in 1..=5 {
        store.put_message(&from_peer(DIRECT, seq))?;
    }
    store.put_message(&from_peer(GROUP, 2))?;
    let unacked = send(store, DIRECT, "pending")?;

    // Seq 0 does not name a message: unacked ones are not touched.
    store.delete_messages(DIRECT, &[2, 4, 0, 99])?;
    assert_eq!(seqs(&store.history(DIRECT, 0, 10)?), vec![0, 5, 3, 1]);
    assert_eq!(store.history(DIRECT, 0, 10)?[0].local_id, unacked);
    assert_eq!(store.message(DIRECT, 2)?, None);
    assert!(store.message(GROUP, 2)?.is_some());
    // Deleting again is harmless; a deleted seq arriving again is stored again.
    store.delete_messages(DIRECT, &[2])?;
    assert!(store.put_message(&from_peer(DIRECT, 2))?);
    Ok(())
}

fn history_pages_newest_first_with_unacked_messages_on_the_first_page<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    for seq in [3, 1, 5, 2, 4, 6] {
        store.put_message(&from_peer(DIRECT, seq))?;
    }
    store.put_message(&from_peer(GROUP, 7))?;
    let older = send(store, DIRECT, "older")?;
    let group_item = send(store, GROUP, "elsewhere")?;
    let newer = send(store, DIRECT, "newer")?;

    let first = store.history(DIRECT, 0, 4)?;
    assert_eq!(
        first.iter().map(|m| m.local_id).collect::<Vec<_>>(),
        vec![newer, older, 0, 0]
    );
    assert_eq!(seqs(&first), vec![0, 0, 6, 5]);
    // Next page: below the lowest seq shown, without the unacked ones.
    assert_eq!(seqs(&store.history(DIRECT, 5, 2)?), vec![4, 3]);
    assert_eq!(seqs(&store.history(DIRECT, 3, 10)?), vec![2, 1]);
    assert_eq!(seqs(&store.history(DIRECT, 1, 10)?), Vec::<u64>::new());
    // The limit counts unacked messages too; a zero limit returns nothing.
    assert_eq!(
        store
            .history(DIRECT, 0, 1)?
            .iter()
            .map(|m| m.local_id)
            .collect::<Vec<_>>(),
        vec![newer]
    );
    assert_eq!(store.history(DIRECT, 0, 0)?, vec![]);
    // A bound above everything is the same as "from the newest" without the unacked ones.
    assert_eq!(
        seqs(&store.history(DIRECT, u64::MAX, 100)?),
        vec![6, 5, 4, 3, 2, 1]
    );
    // Other conversations stay separate.
    let group = store.history(GROUP, 0, 10)?;
    assert_eq!(
        group
            .iter()
            .map(|m| (m.local_id, m.seq))
            .collect::<Vec<_>>(),
        vec![(group_item, 0), (0, 7)]
    );
    assert_eq!(store.history("d:nobody:else", 0, 10)?, vec![]);
    Ok(())
}

fn conversations_are_listed_most_recently_updated_first<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    assert_eq!(store.conversations()?, vec![]);
    assert_eq!(store.conversation(DIRECT)?, None);

    let last = LocalMessage {
        recalled: false,
        ..from_peer(DIRECT, 9)
    };
    let direct = conversation(DIRECT, 300, Some(last));
    let group = conversation(GROUP, 100, None);
    let quiet = conversation("d:alice:carol", 200, None);
    store.put_conversation(&direct)?;
    store.put_conversation(&group)?;
    store.put_conversation(&quiet)?;
    assert_eq!(store.conversation(DIRECT)?, Some(direct.clone()));
    assert_eq!(store.conversation(GROUP)?, Some(group.clone()));
    let ids = |all: Vec<LocalConversation>| {
        all.into_iter()
            .map(|c| c.conversation_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.conversations()?),
        vec![DIRECT, "d:alice:carol", GROUP]
    );

    // Replacing moves it; ties fall back to id order.
    let group = LocalConversation {
        updated_ms: 400,
        title: "renamed".into(),
        ..group
    };
    store.put_conversation(&group)?;
    let quiet = LocalConversation {
        updated_ms: 300,
        ..quiet
    };
    store.put_conversation(&quiet)?;
    assert_eq!(
        ids(store.conversations()?),
        vec![GROUP, DIRECT, "d:alice:carol"]
    );
    assert_eq!(store.conversation(GROUP)?, Some(group));

    // A replacement can also drop the preview.
    let direct = LocalConversation {
        last_message: None,
        ..direct
    };
    store.put_conversation(&direct)?;
    assert_eq!(store.conversation(DIRECT)?, Some(direct));
    Ok(())
}

fn full_range_server_msg_ids_and_counters_round_trip<S: LocalStore>(
    store: &mut S,
) -> LocalResult<()> {
    let mut message = from_peer(DIRECT, 1);
    message.server_msg_id = u64::MAX - 1;
    message.content_type = u32::MAX;
    message.content = vec![0, 255, 0, 1];
    store.put_message(&message)?;
    assert_eq!(store.message(DIRECT, 1)?, Some(message.clone()));

    let id = send(store, DIRECT, "")?;
    let acked = store
        .outbox_acked(&client_msg_id(id), 2, u64::MAX, 7)?
        .expect("ack");
    assert_eq!(acked.server_msg_id, u64::MAX);
    assert_eq!(acked.content, Vec::<u8>::new());
    store.put_conversation(&conversation(DIRECT, 1, Some(acked.clone())))?;
    assert_eq!(
        store.conversation(DIRECT)?.and_then(|c| c.last_message),
        Some(acked)
    );
    Ok(())
}

/// Runs every check against one store type, each on a fresh store.
macro_rules! local_store_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            local_store_suite!(@checks $make;
                cursor_starts_at_zero_and_keeps_the_last_value_set,
                next_local_id_is_nonzero_and_strictly_increasing,
                outbox_push_adds_a_sending_message_at_the_top_of_history,
                outbox_pending_is_in_local_id_order_and_skips_failed_items,
                outbox_update_changes_attempts_and_state_of_item_and_message,
                outbox_acked_returns_the_sent_message_and_removes_it_from_pending,
                put_message_stores_once_per_conversation_and_seq,
                put_message_refuses_seq_zero,
                own_message_seen_in_the_inbox_before_its_ack_is_stored_once,
                own_message_seen_in_the_inbox_after_its_ack_is_stored_once,
                inbox_copy_only_matches_the_same_conversation_and_sender,
                recall_erases_the_content_and_reports_unknown_messages,
                delete_removes_only_the_named_messages,
                history_pages_newest_first_with_unacked_messages_on_the_first_page,
                conversations_are_listed_most_recently_updated_first,
                full_range_server_msg_ids_and_counters_round_trip,
            );
        }
    };
    (@checks $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() -> LocalResult<()> {
                let mut store = $make;
                super::$check(&mut store)
            }
        )*
    };
}

local_store_suite!(memory, MemoryStore::new());
local_store_suite!(sqlite, SqliteStore::open_in_memory()?);

// ---------------------------------------------------------------------------------------------
// Both stores give the same answers to the same random operations
// ---------------------------------------------------------------------------------------------

/// Applies one random operation to a store and returns everything it answered, as text.
fn random_op<S: LocalStore>(store: &mut S, op: &Op) -> String {
    let result: LocalResult<String> = (|| {
        Ok(match op {
            Op::Send(conversation_id) => {
                let id = store.next_local_id()?;
                let (item, message) = outgoing(id, conversation_id, "r");
                store.outbox_push(&item, &message)?;
                format!("sent {id}")
            }
            Op::Update(local_id, attempts, state) => {
                store.outbox_update(*local_id, *attempts, *state)?;
                "updated".into()
            }
            Op::Ack(local_id, seq) => {
                format!(
                    "{:?}",
                    store.outbox_acked(&client_msg_id(*local_id), *seq, 100 + seq, 200 + seq)?
                )
            }
            Op::Put(conversation_id, seq, own_local_id) => {
                let message = match own_local_id {
                    Some(id) => received(conversation_id, *seq, ME, &client_msg_id(*id), "r"),
                    None => from_peer(conversation_id, *seq),
                };
                format!("{}", store.put_message(&message)?)
            }
            Op::Recall(conversation_id, seq) => {
                format!("{}", store.recall_message(conversation_id, *seq)?)
            }
            Op::Delete(conversation_id, seqs) => {
                store.delete_messages(conversation_id, seqs)?;
                "deleted".into()
            }
            Op::History(conversation_id, before, limit) => {
                format!("{:?}", store.history(conversation_id, *before, *limit)?)
            }
            Op::Conversation(conversation_id, updated_ms, last_seq) => {
                let last = store.message(conversation_id, *last_seq)?;
                store.put_conversation(&conversation(conversation_id, *updated_ms, last))?;
                format!("{:?}", store.conversations()?)
            }
        })
    })();
    match result {
        Ok(answer) => format!(
            "{answer} | pending {:?}",
            store.outbox_pending().map(|p| local_ids(&p))
        ),
        Err(e) => format!("error {e}"),
    }
}

#[derive(Debug)]
enum Op {
    Send(&'static str),
    Update(u64, u32, SendState),
    Ack(u64, u64),
    Put(&'static str, u64, Option<u64>),
    Recall(&'static str, u64),
    Delete(&'static str, Vec<u64>),
    History(&'static str, u64, u32),
    Conversation(&'static str, u64, u64),
}

fn random_ops(seed: u64, count: usize) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let conversations = [DIRECT, GROUP];
    let mut ops = Vec::with_capacity(count);
    let mut sent = 0u64;
    for _ in 0..count {
        let conversation_id = conversations[rng.random_range(0..conversations.len())];
        let seq = rng.random_range(0..12);
        let some_local_id = rng.random_range(0..=sent + 1);
        let op = match rng.random_range(0..10) {
            0 | 1 => {
                sent += 1;
                Op::Send(conversation_id)
            }
            2 => {
                let state = [SendState::Sending, SendState::Failed, SendState::Sent]
                    [rng.random_range(0..3)];
                Op::Update(some_local_id, rng.random_range(0..5), state)
            }
            3 => Op::Ack(some_local_id, seq),
            4 | 5 => Op::Put(
                conversation_id,
                seq,
                rng.random_bool(0.4).then_some(some_local_id),
            ),
            6 => Op::Recall(conversation_id, seq),
            7 => Op::Delete(conversation_id, vec![seq, rng.random_range(0..12)]),
            8 => Op::History(
                conversation_id,
                rng.random_range(0..14),
                rng.random_range(0..6),
            ),
            _ => Op::Conversation(conversation_id, rng.random_range(0..5), seq),
        };
        ops.push(op);
    }
    ops
}

#[test]
fn memory_and_sqlite_answer_random_operations_identically() -> LocalResult<()> {
    for seed in 0..40 {
        let mut memory = MemoryStore::new();
        let mut sqlite = SqliteStore::open_in_memory()?;
        for (step, op) in random_ops(seed, 150).iter().enumerate() {
            let expected = random_op(&mut memory, op);
            let actual = random_op(&mut sqlite, op);
            assert_eq!(actual, expected, "seed {seed}, step {step}: {op:?}");
        }
        for conversation_id in [DIRECT, GROUP] {
            assert_eq!(
                sqlite.history(conversation_id, 0, 1000)?,
                memory.history(conversation_id, 0, 1000)?
            );
        }
        assert_eq!(sqlite.conversations()?, memory.conversations()?);
        assert_eq!(sqlite.cursor()?, memory.cursor()?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Store-specific behaviour
// ---------------------------------------------------------------------------------------------

#[test]
fn memory_store_snapshot_models_a_restart_that_keeps_the_disk() -> LocalResult<()> {
    let mut store = MemoryStore::new();
    store.set_cursor(3)?;
    let id = send(&mut store, DIRECT, "before the crash")?;
    let disk = store.clone();

    store.outbox_acked(&client_msg_id(id), 1, 1, 1)?;
    store.set_cursor(4)?;

    let mut restarted = disk;
    assert_eq!(restarted.cursor()?, 3);
    assert_eq!(local_ids(&restarted.outbox_pending()?), vec![id]);
    assert!(restarted.next_local_id()? > id);
    Ok(())
}

#[test]
fn sqlite_store_keeps_everything_across_close_and_reopen() -> LocalResult<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client.sqlite");

    let mut store = SqliteStore::open(&path)?;
    store.set_cursor(21)?;
    let first = send(&mut store, DIRECT, "first")?;
    let second = send(&mut store, GROUP, "second")?;
    let third = send(&mut store, DIRECT, "third")?;
    store.outbox_update(second, 2, SendState::Sending)?;
    store.outbox_acked(&client_msg_id(third), 8, 808, 8_080)?;
    store.put_message(&from_peer(DIRECT, 7))?;
    let conversation = conversation(DIRECT, 8_080, store.message(DIRECT, 8)?);
    store.put_conversation(&conversation)?;
    let history_before = store.history(DIRECT, 0, 10)?;
    let pending_before = store.outbox_pending()?;
    drop(store);

    let mut store = SqliteStore::open(&path)?;
    assert_eq!(store.cursor()?, 21);
    assert_eq!(local_ids(&store.outbox_pending()?), vec![first, second]);
    assert_eq!(store.outbox_pending()?, pending_before);
    assert_eq!(store.outbox_get(second)?.map(|i| i.attempts), Some(2));
    assert_eq!(store.history(DIRECT, 0, 10)?, history_before);
    assert_eq!(seqs(&history_before), vec![0, 8, 7]);
    assert_eq!(store.conversations()?, vec![conversation]);
    // Local ids keep increasing across the restart.
    assert!(store.next_local_id()? > third);
    // The pending message can still be acked after the restart.
    assert!(
        store
            .outbox_acked(&client_msg_id(first), 9, 909, 9_090)?
            .is_some()
    );
    Ok(())
}

#[test]
fn sqlite_store_file_uses_the_write_ahead_log() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client.sqlite");
    drop(SqliteStore::open(&path)?);
    let raw = rusqlite::Connection::open(&path)?;
    let mode: String = raw.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    assert_eq!(mode, "wal");
    let version: i64 = raw.pragma_query_value(None, "user_version", |row| row.get(0))?;
    assert_eq!(version, sdk_core::sqlite::SCHEMA_VERSION);
    Ok(())
}

#[test]
fn sqlite_store_reports_damaged_rows_as_corrupt() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client.sqlite");
    let mut store = SqliteStore::open(&path)?;
    store.put_message(&from_peer(DIRECT, 1))?;
    store.put_message(&from_peer(DIRECT, 2))?;
    let id = send(&mut store, DIRECT, "x")?;
    store.put_conversation(&conversation(DIRECT, 1, store.message(DIRECT, 1)?))?;
    drop(store);

    let raw = rusqlite::Connection::open(&path)?;
    raw.execute("UPDATE messages SET state = 7 WHERE seq = 1", [])?;
    raw.execute(
        "UPDATE messages SET time_ms = 'yesterday' WHERE seq = 2",
        [],
    )?;
    raw.execute("UPDATE outbox SET recipient_kind = 9", [])?;
    raw.execute("UPDATE conversations SET last_sender = NULL", [])?;
    raw.execute("INSERT INTO meta (key, value) VALUES ('cursor', -5)", [])?;
    drop(raw);

    let store = SqliteStore::open(&path)?;
    let is_corrupt = |result: LocalResult<()>| matches!(result, Err(LocalStoreError::Corrupt(_)));
    assert!(is_corrupt(store.message(DIRECT, 1).map(drop)));
    assert!(is_corrupt(store.message(DIRECT, 2).map(drop)));
    assert!(is_corrupt(store.history(DIRECT, 0, 10).map(drop)));
    assert!(is_corrupt(store.outbox_get(id).map(drop)));
    assert!(is_corrupt(store.outbox_pending().map(drop)));
    assert!(is_corrupt(store.conversation(DIRECT).map(drop)));
    assert!(is_corrupt(store.conversations().map(drop)));
    assert!(is_corrupt(store.cursor().map(drop)));
    Ok(())
}

#[test]
fn sqlite_store_refuses_a_file_from_a_newer_schema() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client.sqlite");
    drop(SqliteStore::open(&path)?);
    let raw = rusqlite::Connection::open(&path)?;
    raw.pragma_update(None, "user_version", sdk_core::sqlite::SCHEMA_VERSION + 1)?;
    drop(raw);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(LocalStoreError::Corrupt(_))
    ));
    Ok(())
}
