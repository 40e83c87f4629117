//! A 20,000-member group (SPEC §13.12) with the real server and 1,000 members online through
//! the client core, most of them in four client processes. The group starts in write fan-out,
//! crosses the read-fan-out threshold while messages flow (members added), and crosses back
//! (members removed) while messages still flow. Every online member gets every message exactly
//! once, a client process whose network drops for a while catches up, members who were never
//! online get exactly the messages since they joined on their first connect, and the server's
//! unread counts are exact.
//!
//! The client processes are this test binary started again on the `#[ignore]`d
//! `client_worker_process` with a spec in `IM_HUGE_GROUP_WORKER`; they take one command per
//! line on stdin (`offline`, `online`, `report`, `final`, `exit`) and answer on stdout with
//! lines starting `WORKER-OUT `.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use im_protocol::{Body, pb};
use sdk_core::{ConnectionState, Event, Recipient};
use serde_json::{Value, json};
use support::{Client, Server, start_client};

const MEMBERS: usize = 20_000;
/// Online members: the first `SENDERS` in this process, the rest in the worker processes.
const ONLINE: usize = 1_000;
const SENDERS: usize = 5;
const WORKERS: usize = 4;
/// The server's read-fan-out threshold: the group switches above it and back at half of it.
const THRESHOLD: usize = 2_000;
/// Members the group is created with (write fan-out).
const INITIAL: usize = 1_500;
/// Messages per sender in each of the two traffic phases, and the pause between two.
const PER_PHASE: usize = 20;
const PACE: Duration = Duration::from_millis(150);
/// Members who were never online: half added in the add that crosses the threshold (write
/// fan-out), half in the next one (read fan-out). They connect after the first phase.
const LATE_PER_CHUNK: usize = 25;
const ADD_CHUNK: usize = 1_000;

const WORKER_ENV: &str = "IM_HUGE_GROUP_WORKER";
const OUT: &str = "WORKER-OUT ";

fn user(i: usize) -> String {
    format!("u{i:05}")
}

// ---------------------------------------------------------------------------------------
// The worker process.

/// Opens TCP streams to the server until told the network is gone; then refuses to connect
/// and shuts down every stream it opened (both directions, as a dead link would).
#[derive(Default)]
struct SwitchableNetwork {
    offline: AtomicBool,
    streams: Mutex<Vec<std::net::TcpStream>>,
}

impl SwitchableNetwork {
    fn go_offline(&self) {
        self.offline.store(true, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

struct SwitchableConnector(Arc<SwitchableNetwork>);

impl sdk_core::Connector for SwitchableConnector {
    fn connect(
        &self,
        server: &sdk_core::ServerAddress,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Box<dyn sdk_core::ByteStream>>> {
        let network = self.0.clone();
        let addr = format!("{}:{}", server.host, server.port);
        Box::pin(async move {
            if network.offline.load(Ordering::SeqCst) {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            }
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let std_stream = stream.into_std()?;
            // A second handle on the same socket: shutting it down cuts this stream too.
            network
                .streams
                .lock()
                .unwrap()
                .push(std_stream.try_clone()?);
            let stream = tokio::net::TcpStream::from_std(std_stream)?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as Box<dyn sdk_core::ByteStream>)
        })
    }
}

/// What one client core saw of the group.
#[derive(Default)]
struct Received {
    /// Conversation seq -> how many times it was reported received.
    seqs: BTreeMap<u64, u32>,
    online: bool,
}

#[test]
#[ignore = "a client process of the huge-group test, started by it"]
fn client_worker_process() {
    let spec: Value =
        serde_json::from_str(&std::env::var(WORKER_ENV).expect("started by the huge-group test"))
            .expect("a JSON spec");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(worker(spec));
}

async fn worker(spec: Value) {
    let addr: std::net::SocketAddr = spec["addr"].as_str().unwrap().parse().unwrap();
    let conversation = spec["conversation"].as_str().unwrap().to_owned();
    let users: Vec<String> = spec["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    let network = Arc::new(SwitchableNetwork::default());
    let mut clients = Vec::new();
    for name in &users {
        let options = sdk_core::DriverOptions {
            connector: Arc::new(SwitchableConnector(network.clone())),
            ..sdk_core::DriverOptions::default()
        };
        let token = support::token_with(name, Some("phone"), support::now_secs() + 3600);
        let (handle, mut events) = sdk_core::driver::start(
            addr.into(),
            token,
            support::config(name, "phone"),
            sdk_core::memory::MemoryStore::new(),
            options,
            &tokio::runtime::Handle::current(),
        )
        .expect("client starts");
        let received = Arc::new(Mutex::new(Received::default()));
        let sink = received.clone();
        let conversation = conversation.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let mut seen = sink.lock().unwrap();
                match event {
                    Event::State(state) => seen.online = state == ConnectionState::Online,
                    Event::MessageReceived(m) if m.conversation_id == conversation => {
                        *seen.seqs.entry(m.seq).or_default() += 1;
                    }
                    _ => {}
                }
            }
        });
        clients.push((name.clone(), handle, received));
    }
    // Ready once every client was online.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !clients.iter().all(|(_, _, r)| r.lock().unwrap().online) {
        assert!(Instant::now() < deadline, "clients did not all come online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{OUT}{}", json!({"ready": users.len()}));

    let (lines, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = commands.recv().await {
        match command.trim() {
            "offline" => {
                network.go_offline();
                println!("{OUT}{}", json!({"offline": true}));
            }
            "online" => {
                network.offline.store(false, Ordering::SeqCst);
                println!("{OUT}{}", json!({"online": true}));
            }
            command @ ("report" | "final") => {
                let mut report = Vec::new();
                for (name, handle, received) in &clients {
                    let (seqs, duplicates, online) = {
                        let seen = received.lock().unwrap();
                        let seqs: Vec<u64> = seen.seqs.keys().copied().collect();
                        let duplicates: u32 = seen.seqs.values().map(|n| n - 1).sum();
                        (seqs, duplicates, seen.online)
                    };
                    let (unread, read_seq, last_seq) = if command == "final" {
                        let page = handle.fetch_conversations(500, "").await.expect("list");
                        let listed = page
                            .conversations
                            .iter()
                            .find(|c| c.conversation_id == conversation);
                        (
                            listed.map(|c| c.unread_count),
                            listed.map(|c| c.read_seq),
                            listed.map(|c| c.last_seq),
                        )
                    } else {
                        (None, None, None)
                    };
                    report.push(json!({
                        "user": name, "seqs": seqs, "duplicates": duplicates,
                        "online": online, "unread": unread, "read_seq": read_seq,
                        "last_seq": last_seq,
                    }));
                }
                println!("{OUT}{}", json!({ "report": report }));
            }
            "exit" => break,
            other => panic!("unknown command {other:?}"),
        }
    }
    for (_, handle, _) in &clients {
        let _ = handle.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// The test.

/// A worker process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(server: &Server, conversation: &str, users: &[String]) -> Worker {
        let spec = json!({
            "addr": server.addr.to_string(),
            "conversation": conversation,
            "users": users,
        });
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "client_worker_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(WORKER_ENV, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker process");
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Worker {
            child,
            stdin,
            stdout,
        }
    }

    /// The next answer line of the worker.
    fn answer(&mut self) -> Value {
        let mut line = String::new();
        loop {
            line.clear();
            let read = self.stdout.read_line(&mut line).expect("read the worker");
            assert!(read > 0, "the worker process ended");
            // The test harness may have printed "test name ... " on the same line.
            if let Some(at) = line.find(OUT) {
                return serde_json::from_str(line[at + OUT.len()..].trim())
                    .expect("JSON from the worker");
            }
        }
    }

    fn call(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").expect("write to the worker");
        self.stdin.flush().expect("flush");
        self.answer()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks every worker (each on its own thread) and returns their answers.
fn call_all(workers: &mut [Worker], command: &str) -> Vec<Value> {
    std::thread::scope(|scope| {
        let calls: Vec<_> = workers
            .iter_mut()
            .map(|w| scope.spawn(move || w.call(command)))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

/// Per user of the workers: the seqs received, duplicates, and (on `final`) the server's
/// unread count.
fn reports(workers: &mut [Worker], command: &str) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    for answer in call_all(workers, command) {
        for entry in answer["report"].as_array().unwrap() {
            all.insert(entry["user"].as_str().unwrap().to_owned(), entry.clone());
        }
    }
    all
}

fn seqs_of(entry: &Value) -> Vec<u64> {
    entry["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect()
}

/// The group's messages on the server: seq -> sender.
async fn timeline(owner: &mut Client, conversation: &str) -> BTreeMap<u64, String> {
    let mut messages = BTreeMap::new();
    let mut anchor = 0;
    loop {
        let Body::HistoryResp(page) = owner
            .request(pb::HistoryReq {
                conversation_id: conversation.to_owned(),
                anchor_seq: anchor,
                direction: pb::HistoryDirection::Newer as i32,
                limit: 200,
            })
            .await
        else {
            panic!("history refused");
        };
        for m in &page.messages {
            messages.insert(m.conversation_seq, m.sender_user.clone());
            anchor = anchor.max(m.conversation_seq);
        }
        if !page.has_more {
            return messages;
        }
    }
}

async fn head(owner: &mut Client, conversation: &str) -> u64 {
    let Body::HistoryResp(page) = owner
        .request(pb::HistoryReq {
            conversation_id: conversation.to_owned(),
            anchor_seq: 0,
            direction: pb::HistoryDirection::Older as i32,
            limit: 1,
        })
        .await
    else {
        panic!("history refused");
    };
    page.last_seq
}

async fn change_members(
    owner: &mut Client,
    group_id: &str,
    users: &[String],
    add: bool,
) -> pb::GroupInfo {
    let body: Body = if add {
        pb::GroupAddMembersReq {
            group_id: group_id.to_owned(),
            members: users.to_vec(),
        }
        .into()
    } else {
        pb::GroupRemoveMembersReq {
            group_id: group_id.to_owned(),
            members: users.to_vec(),
        }
        .into()
    };
    match owner.request(body).await {
        Body::GroupAddMembersResp(r) => r.group.expect("group"),
        Body::GroupRemoveMembersResp(r) => r.group.expect("group"),
        other => panic!("membership change refused: {other:?}"),
    }
}

/// Sends from each sender, paced, until `stop` is set and each sent at least `PER_PHASE`.
async fn send_phase(
    senders: &[(String, sdk_core::ClientHandle)],
    group_id: &str,
    phase: usize,
    stop: Arc<AtomicBool>,
) -> usize {
    let tasks: Vec<_> = senders
        .iter()
        .map(|(name, handle)| {
            let (name, handle, group_id) = (name.clone(), handle.clone(), group_id.to_owned());
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut m = 0;
                while m < PER_PHASE || !stop.load(Ordering::SeqCst) {
                    handle
                        .send_text(
                            Recipient::Group(group_id.clone()),
                            &format!("{name} {phase}.{m}"),
                        )
                        .await
                        .expect("queued");
                    m += 1;
                    tokio::time::sleep(PACE).await;
                }
                m
            })
        })
        .collect();
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    sent
}

/// The group's timeline once it holds `count` messages (sends queued in client outboxes are
/// still on their way when the senders stop).
async fn timeline_of(
    owner: &mut Client,
    conversation: &str,
    count: usize,
) -> BTreeMap<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = timeline(owner, conversation).await;
        if messages.len() >= count {
            assert_eq!(messages.len(), count, "more messages than were sent");
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} messages stored",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every worker user holds every seq in `expected` (a message from someone else),
/// failing on a duplicate.
fn wait_for_workers(
    workers: &mut [Worker],
    expected: &BTreeMap<String, BTreeSet<u64>>,
    within: Duration,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + within;
    loop {
        let all = reports(workers, "report");
        for (name, entry) in &all {
            assert_eq!(entry["duplicates"], 0, "{name} received a message twice");
        }
        let missing: Vec<(String, usize)> = expected
            .iter()
            .filter_map(|(name, want)| {
                let have: BTreeSet<u64> = seqs_of(&all[name]).into_iter().collect();
                let lacking = want.difference(&have).count();
                (lacking > 0).then(|| (name.clone(), lacking))
            })
            .collect();
        if missing.is_empty() {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{} clients still lack messages, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Messages of others in `timeline` (all, or those above `after`).
fn from_others(timeline: &BTreeMap<u64, String>, me: &str, after: u64) -> BTreeSet<u64> {
    timeline
        .iter()
        .filter(|(seq, sender)| **seq > after && sender.as_str() != me)
        .map(|(seq, _)| *seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_thousand_member_group_crosses_the_threshold_both_ways_without_losing_or_repeating_a_message()
 {
    let dir = tempfile::tempdir().unwrap();
    let threshold = THRESHOLD.to_string();
    let server = Server::start_process(
        dir.path(),
        &[
            "--read-fanout-threshold",
            &threshold,
            "--fanout-bytes-per-sec",
            "0",
            "--max-connections",
            "5000",
        ],
    );
    let users: Vec<String> = (0..MEMBERS).map(user).collect();

    // The group, in write fan-out: the online members and 500 more.
    let mut owner = Client::connect(&server, &users[0], "admin").await;
    let Body::GroupCreateResp(created) = owner
        .request(pb::GroupCreateReq {
            name: "everyone".into(),
            members: users[1..INITIAL].to_vec(),
            open: false,
            client_request_id: "huge".into(),
            broadcast: false,
        })
        .await
    else {
        panic!("group creation refused");
    };
    let group = created.group.expect("group");
    assert!(
        !group.read_fanout,
        "{INITIAL} members is below the threshold"
    );
    let group_id = group.group_id.clone();
    let conversation = format!("g:{group_id}");

    // 1,000 members online: the senders here, the rest in four client processes.
    let mut senders = Vec::new();
    let mut sender_events = Vec::new();
    for name in &users[..SENDERS] {
        let (handle, events) = start_client(&server, name, "phone");
        senders.push((name.clone(), handle));
        sender_events.push(events);
    }
    let sender_seen: Vec<Arc<Mutex<BTreeMap<u64, u32>>>> =
        (0..SENDERS).map(|_| Arc::default()).collect();
    for (events, seen) in sender_events.into_iter().zip(&sender_seen) {
        let (mut events, seen, conversation) = (events, seen.clone(), conversation.clone());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Event::MessageReceived(m) = event
                    && m.conversation_id == conversation
                {
                    *seen.lock().unwrap().entry(m.seq).or_default() += 1;
                }
            }
        });
    }
    let per_worker = (ONLINE - SENDERS).div_ceil(WORKERS);
    let started = Instant::now();
    let mut workers: Vec<Worker> = users[SENDERS..ONLINE]
        .chunks(per_worker)
        .map(|chunk| Worker::start(&server, &conversation, chunk))
        .collect();
    let ready: usize = tokio::task::block_in_place(|| {
        workers
            .iter_mut()
            .map(|w| w.answer()["ready"].as_u64().unwrap() as usize)
            .sum()
    });
    assert_eq!(ready, ONLINE - SENDERS);
    println!(
        "{ONLINE} members online after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Phase 1: messages flow while the group grows to 20,000 (crossing the threshold in the
    // first add) and one client process loses its network for a while.
    let stop = Arc::new(AtomicBool::new(false));
    let phase1 = {
        let (senders, group_id, stop) = (senders.clone(), group_id.clone(), stop.clone());
        tokio::spawn(async move { send_phase(&senders, &group_id, 1, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut joined_between = Vec::new();
    let mut modes = Vec::new();
    for chunk in users[INITIAL..].chunks(ADD_CHUNK) {
        let before = head(&mut owner, &conversation).await;
        let info = change_members(&mut owner, &group_id, chunk, true).await;
        let after = head(&mut owner, &conversation).await;
        joined_between.push((chunk[0].clone(), before, after));
        modes.push(info.read_fanout);
    }
    assert_eq!(
        modes.first(),
        Some(&true),
        "the first add crosses {THRESHOLD}"
    );
    assert!(
        modes.iter().all(|m| *m),
        "the group stays in read fan-out while it grows"
    );
    let info = change_members(&mut owner, &group_id, &[], true).await;
    assert_eq!(info.member_count as usize, MEMBERS);
    tokio::task::block_in_place(|| workers[WORKERS - 1].call("offline"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| workers[WORKERS - 1].call("online"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let sent1 = phase1.await.unwrap();
    let after_phase1 = timeline_of(&mut owner, &conversation, sent1).await;
    assert!(after_phase1.len() >= SENDERS * PER_PHASE);
    assert_eq!(
        after_phase1.keys().copied().collect::<Vec<u64>>(),
        (1..=after_phase1.len() as u64).collect::<Vec<u64>>()
    );
    let expected: BTreeMap<String, BTreeSet<u64>> = users[SENDERS..ONLINE]
        .iter()
        .map(|u| (u.clone(), from_others(&after_phase1, u, 0)))
        .collect();
    tokio::task::block_in_place(|| {
        wait_for_workers(&mut workers, &expected, Duration::from_secs(120))
    });
    println!(
        "phase 1: every online member has the {} messages",
        after_phase1.len()
    );

    // Members who were never online connect now: each gets exactly the messages after the
    // point it joined (for the first chunk, through the inbox until the switch and the
    // timeline after; for the second, the timeline only), and exact unread counts.
    let mut late = Vec::new();
    for (first_of_chunk, before, after) in joined_between.iter().take(2) {
        let start = users.iter().position(|u| u == first_of_chunk).unwrap();
        for name in &users[start..start + LATE_PER_CHUNK] {
            let (handle, events) = start_client(&server, name, "phone");
            late.push((name.clone(), *before, *after, handle, events));
        }
    }
    let head1 = *after_phase1.keys().last().unwrap();
    for (name, before, after, handle, events) in &mut late {
        // Where the server says this member joined: its read marker (it never read).
        let page = loop {
            match handle.fetch_conversations(100, "").await {
                Ok(page) => break page,
                // Not connected yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let summary = page
            .conversations
            .iter()
            .find(|c| c.conversation_id == conversation)
            .cloned()
            .unwrap_or_else(|| panic!("{name} does not list the group"));
        let joined_at = summary.read_seq;
        assert!(
            joined_at >= *before && joined_at <= *after,
            "{name} joined at {joined_at}, between the add's {before} and {after}"
        );
        assert_eq!(
            summary.unread_count,
            from_others(&after_phase1, name, joined_at).len() as u64,
            "{name}'s unread count"
        );
        let want: Vec<u64> = (joined_at + 1..=head1).collect();
        let mut seqs = BTreeMap::<u64, u32>::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seqs.len() < want.len() {
            let Ok(event) = tokio::time::timeout_at(deadline, events.recv()).await else {
                panic!(
                    "{name} did not catch up: has {:?}, wants {want:?}",
                    seqs.keys()
                );
            };
            if let Event::MessageReceived(m) = event.expect("client running")
                && m.conversation_id == conversation
            {
                *seqs.entry(m.seq).or_default() += 1;
            }
        }
        assert!(seqs.values().all(|n| *n == 1), "{name} got a message twice");
        let got: Vec<u64> = seqs.keys().copied().collect();
        assert_eq!(
            got, want,
            "{name} received exactly the messages since it joined"
        );
        handle.shutdown().await.expect("stops");
    }
    println!("{} members caught up on their first connect", late.len());

    // Phase 2: messages flow while the group shrinks back to the online members (crossing
    // half the threshold in the last remove).
    let stop = Arc::new(AtomicBool::new(false));
    let phase2 = {
        let (senders, group_id, stop) = (senders.clone(), group_id.clone(), stop.clone());
        tokio::spawn(async move { send_phase(&senders, &group_id, 2, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut info = None;
    for chunk in users[ONLINE..].rchunks(ADD_CHUNK) {
        info = Some(change_members(&mut owner, &group_id, chunk, false).await);
    }
    let info = info.expect("removed");
    assert_eq!(info.member_count as usize, ONLINE);
    assert!(
        !info.read_fanout,
        "back to write fan-out at half the threshold"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let sent2 = phase2.await.unwrap();

    // Everyone online has every message from others exactly once; the server's unread count
    // (nobody read anything) is the number of those messages.
    let all = timeline_of(&mut owner, &conversation, sent1 + sent2).await;
    let expected: BTreeMap<String, BTreeSet<u64>> = users[SENDERS..ONLINE]
        .iter()
        .map(|u| (u.clone(), from_others(&all, u, 0)))
        .collect();
    tokio::task::block_in_place(|| {
        wait_for_workers(&mut workers, &expected, Duration::from_secs(120))
    });
    let finals = tokio::task::block_in_place(|| reports(&mut workers, "final"));
    for (name, entry) in &finals {
        let want: Vec<u64> = expected[name].iter().copied().collect();
        assert_eq!(
            seqs_of(entry),
            want,
            "{name} received exactly the others' messages"
        );
        assert_eq!(entry["duplicates"], 0);
        assert_eq!(
            entry["unread"].as_u64(),
            Some(want.len() as u64),
            "{name}'s unread count ({entry:?} without seqs)",
            entry = json!({"read_seq": entry["read_seq"], "last_seq": entry["last_seq"]})
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for ((name, _), seen) in senders.iter().zip(&sender_seen) {
        let want = from_others(&all, name, 0);
        loop {
            let have = seen.lock().unwrap().clone();
            assert!(have.values().all(|n| *n == 1), "{name} got a message twice");
            if have.keys().copied().collect::<BTreeSet<u64>>() == want {
                break;
            }
            assert!(Instant::now() < deadline, "{name} lacks messages");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let switches: HashMap<&str, bool> = [("up", modes[0]), ("down", !info.read_fanout)].into();
    println!(
        "{} messages reached {ONLINE} online members exactly once; switches {switches:?}",
        all.len()
    );
}
