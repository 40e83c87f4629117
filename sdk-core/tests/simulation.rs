//! Deterministic simulation of the client core (`sdk_core::Client`) against the real server run
//! sans IO, over a faulty simulated network. See `tests/sim/mod.rs` for what is simulated.
//!
//! - `SIM_SEEDS=<n>`: how many seeds the randomized test runs (default [`DEFAULT_SEEDS`]).
//! - `SIM_SEED=<n>`: run exactly that seed; with `SIM_TRACE=1` every step is printed.
//! - `SIM_SEED_BASE=<n>`: first seed of the range (default 0), to explore other seeds.

mod sim;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use im_protocol::{Body, pb};
use sdk_core::{Action, ConnectionState, LocalStore as _, Recipient};

use sim::script::{Scripted, message_entry, sync_resp};
use sim::{Faults, Stats, Trace, World, random_run, trace_from_env};

/// Seeds per run of the randomized test when `SIM_SEEDS` is not set; sized so the test takes
/// well under a minute in a debug build on a 2-core machine.
const DEFAULT_SEEDS: u64 = 1500;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay it with: SIM_SEED={seed} cargo test -p sdk-core --test simulation -- --nocapture \
         (add SIM_TRACE=1 for a step trace)"
    )
}

/// Runs one seed, turning a panic inside the machine or the harness into an error.
fn run_seed(seed: u64, trace: Trace) -> Result<Stats, String> {
    match catch_unwind(AssertUnwindSafe(|| random_run(seed, trace))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("panicked: {message}"))
        }
    }
}

#[test]
fn simulated_runs_deliver_every_message_exactly_once_in_order() {
    if let Some(seed) = env_u64("SIM_SEED") {
        match run_seed(seed, trace_from_env()) {
            Ok(stats) => println!("seed {seed} passed: {stats:?}"),
            Err(e) => panic!("seed {seed} failed: {e}\n{}", replay_hint(seed)),
        }
        return;
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("SIM_SEED_BASE").unwrap_or(0);
    // The wall clock only measures the test; no simulated decision reads it.
    let started = Instant::now();
    let mut total = Stats::default();
    for seed in first..first + count {
        match run_seed(seed, Trace::Off) {
            Ok(stats) => total.add(&stats),
            Err(e) => {
                println!("seed {seed} failed; {}", replay_hint(seed));
                panic!("seed {seed} failed: {e}\n{}", replay_hint(seed));
            }
        }
    }
    println!(
        "{count} seeds ({first}..{}) passed in {:.1?}: {} sends, {} connects, {} half-dead links, {} cuts, \
         {} app restarts, {} server restarts, {} failed-then-retried, {} frames, {} steps, longest settle {:?}",
        first + count,
        started.elapsed(),
        total.sends,
        total.connects,
        total.dropped_links,
        total.cuts,
        total.app_restarts,
        total.server_restarts,
        total.failed_then_retried,
        total.frames,
        total.steps,
        total.quiet_time,
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let seed = 42;
    let first = random_run(seed, Trace::Hash).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let second = random_run(seed, Trace::Hash).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(first.steps > 100, "a trivial run proves nothing: {first:?}");
    assert_eq!(first.hash, second.hash, "two runs of seed {seed} diverged");
    assert_eq!(first.steps, second.steps);
}

#[test]
fn a_push_arriving_during_sync_does_not_move_the_cursor_past_missing_entries() {
    let conversation = "d:alice:bob";
    let mut s = Scripted::new("bob", "bob-phone", 1);
    let sent = s.handshake(3);
    let Some((sync_id, Body::SyncReq(request))) = sent.first().cloned() else {
        panic!("expected a sync first: {sent:?}")
    };
    assert_eq!((request.from_seq, request.to_seq), (1, 0));

    // Entry 4 is committed and pushed while the sync for 1..=3 is still on its way.
    s.push(vec![message_entry(4, conversation, 4, "alice")]);
    assert_eq!(
        s.client.cursor(),
        0,
        "a push during a sync must not be applied"
    );
    assert_eq!(s.client.store().message(conversation, 4).unwrap(), None);
    assert_eq!(s.client.store().cursor().unwrap(), 0);

    // The sync read the inbox before entry 4 existed.
    let entries = (1..=3)
        .map(|seq| message_entry(seq, conversation, seq, "alice"))
        .collect();
    s.reply(sync_id, sync_resp(entries, 3, false));
    assert_eq!(s.client.cursor(), 4);
    assert_eq!(s.client.state(), ConnectionState::Online);
    let history = s.client.store().history(conversation, 0, 100).unwrap();
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4, 3, 2, 1]
    );
    let acks: Vec<u64> = s
        .sent()
        .into_iter()
        .filter_map(|(_, body)| match body {
            Body::DeliveryAck(ack) => Some(ack.up_to_inbox_seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        acks.last(),
        Some(&4),
        "the delivery ack covers exactly what was applied"
    );
}

#[test]
fn a_gap_in_pushes_is_filled_by_a_bounded_sync() {
    let conversation = "d:alice:bob";
    let mut s = Scripted::new("bob", "bob-phone", 2);
    let sent = s.handshake(1);
    let Some((sync_id, Body::SyncReq(_))) = sent.first().cloned() else {
        panic!("expected a sync first: {sent:?}")
    };
    s.reply(
        sync_id,
        sync_resp(vec![message_entry(1, conversation, 1, "alice")], 1, false),
    );
    assert_eq!(s.client.state(), ConnectionState::Online);
    s.sent();

    s.push(vec![message_entry(2, conversation, 2, "alice")]);
    assert_eq!(s.client.cursor(), 2);
    assert!(
        s.sent()
            .iter()
            .all(|(_, body)| !matches!(body, Body::SyncReq(_))),
        "no gap, no sync"
    );

    // Entries 3 and 4 are lost on the way; 5 arrives.
    s.push(vec![message_entry(5, conversation, 5, "alice")]);
    assert_eq!(s.client.cursor(), 2, "the cursor waits below the gap");
    let syncs: Vec<(u32, pb::SyncReq)> = s
        .sent()
        .into_iter()
        .filter_map(|(rid, body)| match body {
            Body::SyncReq(r) => Some((rid, r)),
            _ => None,
        })
        .collect();
    let [(gap_id, gap)] = syncs.as_slice() else {
        panic!("expected one gap sync, got {syncs:?}")
    };
    assert_eq!(
        (gap.from_seq, gap.to_seq),
        (3, 4),
        "the gap fill asks for exactly the missing seqs"
    );

    // 6 arrives while the gap fill is outstanding: buffered, not applied.
    s.push(vec![message_entry(6, conversation, 6, "alice")]);
    assert_eq!(s.client.cursor(), 2);
    let entries = (3..=4)
        .map(|seq| message_entry(seq, conversation, seq, "alice"))
        .collect();
    s.reply(*gap_id, sync_resp(entries, 6, false));
    assert_eq!(s.client.cursor(), 6);
    let history = s.client.store().history(conversation, 0, 100).unwrap();
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![6, 5, 4, 3, 2, 1]
    );
    assert!(
        s.sent()
            .iter()
            .all(|(_, body)| !matches!(body, Body::SyncReq(_))),
        "no further sync once the gap is filled"
    );
}

fn settled_world(seed: u64, users: usize, devices: usize) -> World {
    let mut world = World::new(seed, users, devices, Faults::none(), trace_from_env());
    world.start_all();
    assert!(
        world
            .run_until_true(Duration::from_secs(60), World::settled)
            .unwrap(),
        "did not settle:\n{}",
        world.dump()
    );
    world
}

#[test]
fn outbox_survives_an_app_restart_and_is_sent_once() {
    let mut world = settled_world(7, 2, 1);
    let alice = 0;

    // Alice's acks are lost: the server stores her three messages, she never hears back.
    world.cut(alice, 4);
    for _ in 0..3 {
        world.send_now(alice, Recipient::User("u1".into())).unwrap();
    }
    world.run_until(world.now + Duration::from_secs(2)).unwrap();
    assert_eq!(world.server.stats.committed, 3);
    assert_eq!(
        world.devices[alice].store().outbox_pending().unwrap().len(),
        3,
        "no ack arrived"
    );

    // The app dies; it restarts over the same disk and resends: the server answers duplicates.
    world.app_crash(alice, Duration::from_secs(1));
    let limit = world.now + Duration::from_secs(60);
    assert!(
        world.run_until_true(limit, World::settled).unwrap(),
        "did not settle:\n{}",
        world.dump()
    );
    assert_eq!(
        world.server.stats.committed, 3,
        "a resend must not store a message twice"
    );
    // Each message left the outbox either through a duplicate ack of its resend or through its
    // own inbox copy arriving first (a push may overtake the handshake answer): never twice.
    assert!(
        world.server.stats.duplicate_sends <= 3,
        "at most one resend per message"
    );
    assert!(
        world.devices[alice]
            .store()
            .outbox_pending()
            .unwrap()
            .is_empty(),
        "the outbox drained"
    );

    // A message written while the server is down and the app dies before any connection: it
    // exists only in the outbox on disk.
    world.server_crash(Duration::from_secs(20), 0.0);
    world.run_until(world.now + Duration::from_secs(1)).unwrap();
    let group = Recipient::Group(world.server.group_id().to_owned());
    world.send_now(alice, group).unwrap();
    world.app_crash(alice, Duration::from_secs(2));
    let limit = world.now + Duration::from_secs(120);
    assert!(
        world.run_until_true(limit, World::settled).unwrap(),
        "did not settle:\n{}",
        world.dump()
    );
    assert_eq!(world.server.stats.committed, 4);
    world.check_final().unwrap();
}

#[test]
fn a_half_dead_link_is_detected_by_heartbeat_and_reconnected() {
    let mut world = settled_world(11, 2, 1);
    let alice = 0;
    let connects = world.devices[alice].connects;
    let cut_at = world.now;
    world.cut(alice, 3);
    // Bob writes to Alice; the push goes into the dead link.
    world.send_now(1, Recipient::User("u0".into())).unwrap();

    let limit = cut_at + Duration::from_secs(120);
    assert!(
        world
            .run_until_true(limit, |w| w.devices[alice].connects > connects)
            .unwrap()
    );
    let detected_after = world.now - cut_at;
    // Nothing was sent for at most one heartbeat interval (30 s); the ping then has 10 s.
    assert!(
        detected_after <= Duration::from_secs(41),
        "the dead link was noticed only after {detected_after:?}"
    );
    assert!(
        world.run_until_true(limit, World::settled).unwrap(),
        "did not settle:\n{}",
        world.dump()
    );
    world.check_final().unwrap();
}

#[test]
fn reconnect_delays_are_jittered_and_bounded() {
    let base = Duration::from_millis(500);
    let cap = Duration::from_secs(30);
    let attempts = 12;
    let mut delays: Vec<Vec<Duration>> = vec![Vec::new(); attempts];
    for seed in 0..40 {
        let mut s = Scripted::new("alice", "alice-phone", seed);
        for (n, seen) in delays.iter_mut().enumerate() {
            // The connect is refused.
            s.client.on_disconnected(s.at());
            assert_eq!(s.client.state(), ConnectionState::WaitingToReconnect);
            let delay = s.fire_next_timeout();
            assert_eq!(s.actions(), vec![Action::Connect]);
            let bound = base.saturating_mul(1 << n).min(cap);
            assert!(
                delay <= bound,
                "seed {seed}: attempt {n} waited {delay:?}, above {bound:?}"
            );
            seen.push(delay);
        }
        // A connection that dies within a heartbeat interval does not reset the backoff.
        s.handshake(0);
        s.advance(Duration::from_secs(5));
        s.client.on_disconnected(s.at());
        let bound = base.saturating_mul(1 << attempts).min(cap);
        assert!(s.fire_next_timeout() <= bound);
        assert_eq!(s.actions(), vec![Action::Connect]);
        // One that stayed authenticated for a heartbeat interval does.
        s.handshake(0);
        s.advance(Duration::from_secs(31));
        s.client.on_disconnected(s.at());
        let delay = s.fire_next_timeout();
        assert!(
            delay <= base,
            "seed {seed}: after a healthy connection the delay is {delay:?}"
        );
    }
    for (n, seen) in delays.iter().enumerate() {
        let bound = base.saturating_mul(1 << n).min(cap);
        let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
        assert!(
            distinct.len() > seen.len() / 2,
            "attempt {n}: delays are not jittered: {seen:?}"
        );
        // Full jitter: uniform over [0, bound], so the mean sits near the middle.
        let mean = seen.iter().sum::<Duration>() / seen.len() as u32;
        assert!(
            mean > bound / 4 && mean < bound * 3 / 4,
            "attempt {n}: mean delay {mean:?} is not spread over [0, {bound:?}]"
        );
    }
}

#[test]
fn a_server_restart_loses_nothing_and_every_device_comes_back() {
    let mut world = settled_world(13, 3, 2);
    for device in 0..world.devices.len() {
        let group = Recipient::Group(world.server.group_id().to_owned());
        world.send_now(device, group).unwrap();
    }
    // Half the connections learn of the restart only through their heartbeats.
    world.server_crash(Duration::from_secs(15), 0.5);
    for device in 0..world.devices.len() {
        world
            .send_now(
                device,
                Recipient::User(format!("u{}", (device / 2 + 1) % 3)),
            )
            .unwrap();
    }
    let limit = world.now + Duration::from_secs(300);
    assert!(
        world.run_until_true(limit, World::settled).unwrap(),
        "did not settle:\n{}",
        world.dump()
    );
    world.check_final().unwrap();
}

#[test]
fn an_intentional_disconnect_says_goodbye_before_closing() {
    let mut s = Scripted::new("alice", "alice-phone", 3);
    let sent = s.handshake(0);
    let Some((sync_id, Body::SyncReq(_))) = sent.first().cloned() else {
        panic!("expected a sync first: {sent:?}")
    };
    s.reply(sync_id, sync_resp(Vec::new(), 0, false));
    s.sent();
    s.client.disconnect();
    // The driver handles the actions first and flushes the queued frames before closing.
    assert_eq!(s.actions(), vec![Action::Disconnect]);
    let sent = s.sent();
    assert!(
        matches!(sent.as_slice(), [(_, Body::Goodbye(_))]),
        "a client closing on purpose sends GOODBYE first (§5), it sent {sent:?}"
    );
    assert_eq!(s.client.state(), ConnectionState::Offline);
}

#[test]
fn moving_to_a_better_route_says_goodbye_and_connects_again_at_once() {
    let mut s = Scripted::new("alice", "alice-phone", 3);
    let sent = s.handshake(0);
    let Some((sync_id, Body::SyncReq(_))) = sent.first().cloned() else {
        panic!("expected a sync first: {sent:?}")
    };
    s.reply(sync_id, sync_resp(Vec::new(), 0, false));
    // Online, the client refreshes its conversation list once; the move waits for the answer.
    let Some((refresh_id, Body::ConversationsReq(_))) = s.sent().first().cloned() else {
        panic!("expected the conversation list refresh")
    };
    let now = s.at();
    assert!(!s.client.move_connection(now), "the refresh is awaited");
    s.reply(refresh_id, pb::ConversationsResp::default());
    assert_eq!(s.client.state(), ConnectionState::Online);

    assert!(s.client.move_connection(now));
    // Close this connection with a goodbye, then open the next one without a backoff.
    assert_eq!(s.actions(), vec![Action::Disconnect, Action::Connect]);
    let sent = s.sent();
    assert!(
        matches!(sent.as_slice(), [(_, Body::Goodbye(_))]),
        "the old connection gets a goodbye, it got {sent:?}"
    );
    assert_eq!(s.client.state(), ConnectionState::Connecting);
}

#[test]
fn a_session_does_not_move_while_the_app_awaits_an_answer() {
    let mut s = Scripted::new("alice", "alice-phone", 3);
    let sent = s.handshake(0);
    let Some((sync_id, Body::SyncReq(_))) = sent.first().cloned() else {
        panic!("expected a sync first: {sent:?}")
    };
    s.reply(sync_id, sync_resp(Vec::new(), 0, false));
    s.sent();
    let now = s.at();
    s.client.request(
        sdk_core::Request::Conversations {
            limit: 0,
            cursor: String::new(),
        },
        now,
    );
    s.sent();
    assert!(
        !s.client.move_connection(now),
        "moving would fail the request with ConnectionLost"
    );
    assert!(s.actions().is_empty());
}

#[test]
fn a_server_restored_from_an_empty_backup_is_detected_and_every_device_resyncs() {
    let mut world = settled_world(17, 3, 2);
    for device in 0..world.devices.len() {
        let group = Recipient::Group(world.server.group_id().to_owned());
        world.send_now(device, group).unwrap();
    }
    let limit = world.now + Duration::from_secs(60);
    assert!(
        world.run_until_true(limit, World::settled).unwrap(),
        "{}",
        world.dump()
    );
    let cursors: Vec<u64> = world
        .devices
        .iter()
        .map(|d| d.client.as_ref().unwrap().cursor())
        .collect();
    assert!(
        cursors.iter().all(|&c| c >= 6),
        "every device saw the group's messages: {cursors:?}"
    );

    // The new server numbers its inboxes from 1 again: a client waiting for seqs above its
    // old cursor would never see these.
    world.server_restore_empty(Duration::from_secs(5));
    world.run_until(world.now + Duration::from_secs(6)).unwrap();
    world.send_now(0, Recipient::User("u1".into())).unwrap();
    let limit = world.now + Duration::from_secs(120);
    assert!(
        world.run_until_true(limit, World::settled).unwrap(),
        "did not settle after the restore:\n{}",
        world.dump()
    );
    // Every device holds exactly what the new server has, nothing from before.
    world.check_final().unwrap();
    for d in &world.devices {
        let conversations = d.store().conversations().unwrap();
        assert!(
            conversations.iter().all(|c| c.conversation_id != "g:team"),
            "{} still lists the old server's group conversation",
            d.name
        );
    }
}
