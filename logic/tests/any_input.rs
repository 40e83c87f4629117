//! Property: whatever lengths and characters a client puts in the string fields of any request,
//! the answer is a response or a 1xx–4xx error with a short text, never a server error (5xx),
//! and never a panic.

use im_protocol::Body;
use im_protocol::pb::{self, send_req::Target};
use logic::{Caller, Logic, LogicConfig, MAX_ERROR_TEXT_BYTES};
use proptest::prelude::*;
use store_embedded::{EmbeddedOptions, EmbeddedStore};

/// Short and long, printable and not, valid ids and garbage; sizes up to past the engine's
/// 64 KiB key limit.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,40}",
        2 => "[A-Za-z0-9_.@-]{1,70}",
        1 => Just("g:grp-1".to_string()),
        1 => Just("d:alice:bob".to_string()),
        1 => Just("grp-1".to_string()),
        1 => (1usize..4).prop_map(|k| "k".repeat([0, 300, 66_000, 900_000][k])),
        1 => (1usize..3, any::<char>()).prop_map(|(k, c)| c.to_string().repeat([0, 100, 20_000][k])),
    ]
}

fn any_request() -> impl Strategy<Value = Body> {
    let s = any_string;
    prop_oneof![
        (s(), s(), any::<bool>()).prop_map(|(to, id, group)| Body::SendReq(pb::SendReq {
            target: Some(if group {
                Target::ToGroup(to)
            } else {
                Target::ToUser(to)
            }),
            client_msg_id: id,
            content_type: 0,
            content: b"x".to_vec(),
        })),
        (s(), any::<u64>()).prop_map(|(c, seq)| Body::HistoryReq(pb::HistoryReq {
            conversation_id: c,
            anchor_seq: seq,
            ..Default::default()
        })),
        s().prop_map(|c| Body::ConversationsReq(pb::ConversationsReq {
            limit: 0,
            cursor: c
        })),
        (s(), any::<u64>()).prop_map(|(c, seq)| Body::ReadMarkerReq(pb::ReadMarkerReq {
            conversation_id: c,
            read_seq: seq,
        })),
        (s(), any::<u64>()).prop_map(|(c, seq)| Body::RecallReq(pb::RecallReq {
            conversation_id: c,
            conversation_seq: seq,
        })),
        (s(), any::<u64>()).prop_map(|(c, seq)| Body::DeleteReq(pb::DeleteReq {
            conversation_id: c,
            conversation_seqs: vec![seq],
        })),
        s().prop_map(|c| Body::Typing(pb::Typing {
            conversation_id: c,
            typing: true
        })),
        (s(), prop::collection::vec(s(), 0..3), s()).prop_map(|(name, members, request)| {
            Body::GroupCreateReq(pb::GroupCreateReq {
                name,
                members,
                open: true,
                client_request_id: request,
                broadcast: false,
            })
        }),
        (s(), prop::collection::vec(s(), 0..3)).prop_map(|(g, members)| {
            Body::GroupAddMembersReq(pb::GroupAddMembersReq {
                group_id: g,
                members,
            })
        }),
        (s(), prop::collection::vec(s(), 0..3)).prop_map(|(g, members)| {
            Body::GroupRemoveMembersReq(pb::GroupRemoveMembersReq {
                group_id: g,
                members,
            })
        }),
        s().prop_map(|g| Body::GroupJoinReq(pb::GroupJoinReq { group_id: g })),
        s().prop_map(|g| Body::GroupLeaveReq(pb::GroupLeaveReq { group_id: g })),
        (s(), s()).prop_map(|(g, c)| Body::GroupMembersReq(pb::GroupMembersReq {
            group_id: g,
            limit: 0,
            cursor: c,
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_string_field_of_any_request_yields_a_server_error(
        requests in prop::collection::vec(any_request(), 1..6)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
            let logic = Logic::new(store.clone(), LogicConfig::default());
            let alice = Caller { user: "alice".into(), device: "phone".into() };
            // Something to find: a direct conversation and an open group.
            for seed in [
                Body::SendReq(pb::SendReq {
                    target: Some(Target::ToUser("bob".into())),
                    client_msg_id: "seed".into(),
                    content_type: 0,
                    content: b"hi".to_vec(),
                }),
                Body::GroupCreateReq(pb::GroupCreateReq {
                    name: "seed".into(),
                    members: vec!["bob".into()],
                    open: true,
                    client_request_id: String::new(),
                    broadcast: false,
                }),
            ] {
                let (reply, _) = logic.handle(&alice, seed).await;
                assert!(reply.is_ok(), "{reply:?}");
            }
            for request in requests {
                let shown: String = format!("{request:?}").chars().take(200).collect();
                let (reply, _) = logic.handle(&alice, request).await;
                if let Err(e) = reply {
                    assert!(e.code < 500, "{} for {shown}: {}", e.code, e.message);
                    assert!(
                        e.message.len() <= MAX_ERROR_TEXT_BYTES,
                        "{} bytes of text for {shown}",
                        e.message.len()
                    );
                }
            }
            drop(logic);
            store.close().await.unwrap();
        });
    }
}
