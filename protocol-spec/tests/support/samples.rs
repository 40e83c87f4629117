//! Sample frames, one or more per frame type, from which `vectors/frames.json` was written.
//! The golden test does not regenerate the file from these: it checks the committed bytes, so an
//! encoding change shows up as a failure instead of silently rewriting the vectors.

use im_protocol::pb::{self, send_req::Target};
use im_protocol::{Body, Flags, Frame};

/// A named sample frame.
pub struct Sample {
    pub name: &'static str,
    pub frame: Frame,
    /// Compress the body when writing the vector (checked by decoding only).
    pub compressed: bool,
}

fn sample(name: &'static str, request_id: u32, body: impl Into<Body>) -> Sample {
    Sample {
        name,
        frame: Frame::new(request_id, body),
        compressed: false,
    }
}

fn push(name: &'static str, body: impl Into<Body>) -> Sample {
    Sample {
        name,
        frame: Frame::push(body),
        compressed: false,
    }
}

fn text_message(seq: u64, client_msg_id: &str, text: &str) -> pb::Message {
    pb::Message {
        conversation_id: "d:alice:bob".into(),
        kind: pb::ConversationKind::Direct as i32,
        sender_user: "alice".into(),
        sender_device: "phone".into(),
        server_msg_id: 1_000_000 + seq,
        conversation_seq: seq,
        server_time_ms: 1_763_900_000_000 + seq,
        client_msg_id: client_msg_id.into(),
        content_type: 0,
        content: text.as_bytes().to_vec(),
        recalled: false,
        recalled_ms: 0,
    }
}

fn group_info() -> pb::GroupInfo {
    pb::GroupInfo {
        group_id: "team-rust".into(),
        name: "Rust team".into(),
        owner: "alice".into(),
        member_count: 3,
        open: false,
        created_ms: 1_763_900_000_000,
        read_fanout: false,
        broadcast: false,
    }
}

pub fn samples() -> Vec<Sample> {
    let mut out = vec![
        sample(
            "handshake_req",
            1,
            pb::HandshakeReq {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln".into(),
                device_id: "phone".into(),
                platform: pb::Platform::Ios as i32,
                client_version: "ios-sdk/1.0.0".into(),
                protocol_version: 1,
                last_inbox_seq: 41,
                accept_compression: vec![pb::Compression::Zstd as i32],
                app_state: pb::AppState::Foreground as i32,
            },
        ),
        sample(
            "handshake_resp",
            1,
            pb::HandshakeResp {
                user_id: "alice".into(),
                device_id: "phone".into(),
                protocol_version: 1,
                server_time_ms: 1_763_900_000_000,
                heartbeat_interval_ms: 30_000,
                idle_timeout_ms: 90_000,
                max_frame_bytes: 1 << 20,
                max_message_bytes: 64 << 10,
                inbox_head_seq: 42,
                session_id: "s-7f3a".into(),
                compression: pb::Compression::Zstd as i32,
                compression_threshold_bytes: 8192,
                inbox_epoch: 4_503_599_627_370_001,
            },
        ),
        sample(
            "ping",
            7,
            pb::Ping {
                client_time_ms: 1_700_000_000_000,
            },
        ),
        sample("ping_empty_body", 8, pb::Ping::default()),
        sample(
            "pong",
            7,
            pb::Pong {
                client_time_ms: 1_700_000_000_000,
                server_time_ms: 1_700_000_000_003,
                inbox_head_seq: 42,
                inbox_epoch: 4_503_599_627_370_001,
            },
        ),
        sample(
            "error_rate_limited",
            9,
            pb::Error {
                code: pb::ErrorCode::RateLimited as i32,
                message: "too many frames".into(),
                retryable: true,
                retry_after_ms: 250,
                app_reason: 0,
            },
        ),
        sample(
            "error_rejected_by_policy",
            12,
            pb::Error {
                code: pb::ErrorCode::Rejected as i32,
                message: "rejected by policy".into(),
                retryable: false,
                retry_after_ms: 0,
                app_reason: 1001,
            },
        ),
        sample(
            "push_token_register",
            13,
            pb::PushTokenReq {
                service: pb::PushService::Apns as i32,
                token: "a1b2c3d4".into(),
                preview: pb::PushPreview::Sender as i32,
            },
        ),
        sample(
            "push_token_registered",
            13,
            pb::PushTokenResp { registered: true },
        ),
        sample(
            "mute_conversation",
            14,
            pb::MuteReq {
                conversation_id: "g:grp-1".into(),
                muted: true,
            },
        ),
        sample(
            "conversation_muted",
            14,
            pb::MuteResp {
                conversation_id: "g:grp-1".into(),
                muted: true,
            },
        ),
        sample(
            "error_connection_level",
            0,
            pb::Error {
                code: pb::ErrorCode::FrameTooLarge as i32,
                message: "frame body of 2000000 bytes exceeds the limit of 1048576 bytes".into(),
                retryable: false,
                retry_after_ms: 0,
                app_reason: 0,
            },
        ),
        push(
            "kick",
            pb::Kick {
                reason: pb::KickReason::LoggedInElsewhere as i32,
                message: "device phone logged in on another connection".into(),
                redirect_addr: String::new(),
                retry_after_ms: 0,
            },
        ),
        sample("goodbye", 10, pb::Goodbye { logout: true }),
        sample(
            "send_req_direct",
            11,
            pb::SendReq {
                target: Some(Target::ToUser("bob".into())),
                client_msg_id: "c-0001".into(),
                content_type: 0,
                content: b"hello bob".to_vec(),
            },
        ),
        sample(
            "send_req_group",
            12,
            pb::SendReq {
                target: Some(Target::ToGroup("team-rust".into())),
                client_msg_id: "c-0002".into(),
                content_type: 0,
                content: "hello team \u{1F980}".as_bytes().to_vec(),
            },
        ),
        sample(
            "send_ack",
            11,
            pb::SendAck {
                client_msg_id: "c-0001".into(),
                conversation_id: "d:alice:bob".into(),
                server_msg_id: 1_000_001,
                conversation_seq: 1,
                server_time_ms: 1_763_900_000_001,
                duplicate: false,
                sender_inbox_seq: 42,
                content_rewritten: false,
            },
        ),
        push(
            "push_message",
            pb::Push {
                entries: vec![pb::InboxEntry {
                    inbox_seq: 17,
                    body: Some(pb::inbox_entry::Body::Message(text_message(
                        1,
                        "c-0001",
                        "hello bob",
                    ))),
                }],
            },
        ),
        push(
            "push_events",
            pb::Push {
                entries: vec![
                    pb::InboxEntry {
                        inbox_seq: 18,
                        body: Some(pb::inbox_entry::Body::Recall(pb::RecallEvent {
                            conversation_id: "d:alice:bob".into(),
                            conversation_seq: 1,
                            server_msg_id: 1_000_001,
                            by_user: "alice".into(),
                            server_time_ms: 1_763_900_060_000,
                        })),
                    },
                    pb::InboxEntry {
                        inbox_seq: 19,
                        body: Some(pb::inbox_entry::Body::ReadReceipt(pb::ReadReceipt {
                            conversation_id: "d:alice:bob".into(),
                            reader_user: "bob".into(),
                            read_seq: 1,
                            server_time_ms: 1_763_900_070_000,
                        })),
                    },
                    pb::InboxEntry {
                        inbox_seq: 20,
                        body: Some(pb::inbox_entry::Body::ReadMarker(pb::ReadMarkerSync {
                            conversation_id: "d:alice:bob".into(),
                            read_seq: 1,
                            unread_count: 0,
                        })),
                    },
                    pb::InboxEntry {
                        inbox_seq: 21,
                        body: Some(pb::inbox_entry::Body::GroupEvent(pb::GroupEvent {
                            group_id: "team-rust".into(),
                            kind: pb::GroupEventKind::MembersAdded as i32,
                            actor_user: "alice".into(),
                            members: vec!["carol".into()],
                            group_name: "Rust team".into(),
                            server_time_ms: 1_763_900_080_000,
                            read_fanout: false,
                            conversation_seq: 0,
                        })),
                    },
                    pb::InboxEntry {
                        inbox_seq: 22,
                        body: Some(pb::inbox_entry::Body::Delete(pb::DeleteEvent {
                            conversation_id: "d:alice:bob".into(),
                            conversation_seqs: vec![1, 2],
                        })),
                    },
                ],
            },
        ),
        sample(
            "delivery_ack",
            13,
            pb::DeliveryAck {
                up_to_inbox_seq: 22,
            },
        ),
        sample(
            "typing",
            14,
            pb::Typing {
                conversation_id: "d:alice:bob".into(),
                typing: true,
            },
        ),
        push(
            "typing_event",
            pb::TypingEvent {
                conversation_id: "d:alice:bob".into(),
                user_id: "alice".into(),
                typing: true,
            },
        ),
        push(
            "group_push",
            pb::GroupPush {
                messages: vec![pb::Message {
                    conversation_id: "g:town-hall".into(),
                    kind: pb::ConversationKind::Group as i32,
                    sender_user: "alice".into(),
                    sender_device: "alice-phone".into(),
                    server_msg_id: 9001,
                    conversation_seq: 42,
                    server_time_ms: 1_763_900_090_000,
                    client_msg_id: "c-0042".into(),
                    content_type: 0,
                    content: b"hello, everyone".to_vec(),
                    recalled: false,
                    recalled_ms: 0,
                }],
            },
        ),
        push(
            "push_fanout_changed",
            pb::Push {
                entries: vec![pb::InboxEntry {
                    inbox_seq: 23,
                    body: Some(pb::inbox_entry::Body::GroupEvent(pb::GroupEvent {
                        group_id: "town-hall".into(),
                        kind: pb::GroupEventKind::FanoutChanged as i32,
                        actor_user: String::new(),
                        members: vec!["alice".into(), "bob".into()],
                        group_name: "Town hall".into(),
                        server_time_ms: 1_763_900_085_000,
                        read_fanout: true,
                        conversation_seq: 41,
                    })),
                }],
            },
        ),
        sample(
            "sync_resp_read_groups",
            16,
            pb::SyncResp {
                entries: vec![],
                head_seq: 23,
                has_more: false,
                next_seq: 24,
                missing: vec![],
                inbox_epoch: 4_503_599_627_370_001,
                read_groups: vec![pb::ReadGroupHead {
                    conversation_id: "g:town-hall".into(),
                    last_seq: 42,
                    read_seq: 40,
                }],
            },
        ),
        sample(
            "sync_req",
            15,
            pb::SyncReq {
                from_seq: 17,
                limit: 200,
                to_seq: 0,
            },
        ),
        sample(
            "sync_resp",
            15,
            pb::SyncResp {
                entries: vec![
                    pb::InboxEntry {
                        inbox_seq: 17,
                        body: Some(pb::inbox_entry::Body::Message(text_message(
                            1,
                            "c-0001",
                            "hello bob",
                        ))),
                    },
                    pb::InboxEntry {
                        inbox_seq: 18,
                        body: Some(pb::inbox_entry::Body::Message(text_message(
                            2,
                            "c-0002",
                            "are you there?",
                        ))),
                    },
                ],
                head_seq: 18,
                has_more: false,
                next_seq: 19,
                missing: vec![pb::SeqRange {
                    from_seq: 19,
                    to_seq: 25,
                    reason: pb::SeqRangeReason::NotYet as i32,
                }],
                inbox_epoch: 4_503_599_627_370_001,
                read_groups: vec![],
            },
        ),
        sample(
            "history_req",
            16,
            pb::HistoryReq {
                conversation_id: "d:alice:bob".into(),
                anchor_seq: 0,
                direction: pb::HistoryDirection::Older as i32,
                limit: 50,
            },
        ),
        sample(
            "history_resp",
            16,
            pb::HistoryResp {
                conversation_id: "d:alice:bob".into(),
                messages: vec![
                    text_message(2, "c-0002", "are you there?"),
                    text_message(1, "c-0001", "hello bob"),
                ],
                has_more: false,
                last_seq: 2,
            },
        ),
        sample(
            "conversations_req",
            17,
            pb::ConversationsReq {
                limit: 100,
                cursor: String::new(),
            },
        ),
        sample(
            "conversations_resp",
            17,
            pb::ConversationsResp {
                conversations: vec![pb::ConversationSummary {
                    conversation_id: "d:alice:bob".into(),
                    kind: pb::ConversationKind::Direct as i32,
                    peer: "bob".into(),
                    title: String::new(),
                    last_message: Some(text_message(2, "c-0002", "are you there?")),
                    last_seq: 2,
                    read_seq: 0,
                    unread_count: 2,
                    peer_read_seq: 2,
                    updated_ms: 1_763_900_000_002,
                }],
                next_cursor: String::new(),
            },
        ),
        sample(
            "read_marker_req",
            18,
            pb::ReadMarkerReq {
                conversation_id: "d:alice:bob".into(),
                read_seq: 2,
            },
        ),
        sample(
            "read_marker_resp",
            18,
            pb::ReadMarkerResp {
                conversation_id: "d:alice:bob".into(),
                read_seq: 2,
                unread_count: 0,
            },
        ),
        sample(
            "recall_req",
            19,
            pb::RecallReq {
                conversation_id: "d:alice:bob".into(),
                conversation_seq: 1,
            },
        ),
        sample(
            "recall_resp",
            19,
            pb::RecallResp {
                event: Some(pb::RecallEvent {
                    conversation_id: "d:alice:bob".into(),
                    conversation_seq: 1,
                    server_msg_id: 1_000_001,
                    by_user: "alice".into(),
                    server_time_ms: 1_763_900_060_000,
                }),
            },
        ),
        sample(
            "delete_req",
            20,
            pb::DeleteReq {
                conversation_id: "d:alice:bob".into(),
                conversation_seqs: vec![1, 2],
            },
        ),
        sample("delete_resp", 20, pb::DeleteResp { deleted: 2 }),
        sample(
            "group_create_req",
            21,
            pb::GroupCreateReq {
                name: "Rust team".into(),
                members: vec!["bob".into(), "carol".into()],
                open: false,
                client_request_id: "g-req-1".into(),
                broadcast: false,
            },
        ),
        sample(
            "group_create_req_broadcast",
            21,
            pb::GroupCreateReq {
                name: "Release notes".into(),
                members: vec!["bob".into()],
                open: true,
                client_request_id: String::new(),
                broadcast: true,
            },
        ),
        sample(
            "group_create_resp_broadcast",
            21,
            pb::GroupCreateResp {
                group: Some(pb::GroupInfo {
                    group_id: "grp-7".into(),
                    name: "Release notes".into(),
                    owner: "alice".into(),
                    member_count: 2,
                    open: true,
                    created_ms: 1_763_900_000_000,
                    read_fanout: true,
                    broadcast: true,
                }),
            },
        ),
        sample(
            "group_create_resp",
            21,
            pb::GroupCreateResp {
                group: Some(group_info()),
            },
        ),
        sample(
            "group_add_members_req",
            22,
            pb::GroupAddMembersReq {
                group_id: "team-rust".into(),
                members: vec!["dave".into()],
            },
        ),
        sample(
            "group_add_members_resp",
            22,
            pb::GroupAddMembersResp {
                group: Some(group_info()),
                added: vec!["dave".into()],
            },
        ),
        sample(
            "group_remove_members_req",
            23,
            pb::GroupRemoveMembersReq {
                group_id: "team-rust".into(),
                members: vec!["dave".into()],
            },
        ),
        sample(
            "group_remove_members_resp",
            23,
            pb::GroupRemoveMembersResp {
                group: Some(group_info()),
                removed: vec!["dave".into()],
            },
        ),
        sample(
            "group_join_req",
            24,
            pb::GroupJoinReq {
                group_id: "team-rust".into(),
            },
        ),
        sample(
            "group_join_resp",
            24,
            pb::GroupJoinResp {
                group: Some(group_info()),
            },
        ),
        sample(
            "group_leave_req",
            25,
            pb::GroupLeaveReq {
                group_id: "team-rust".into(),
            },
        ),
        sample(
            "group_leave_resp",
            25,
            pb::GroupLeaveResp {
                group_id: "team-rust".into(),
            },
        ),
        sample(
            "group_members_req",
            26,
            pb::GroupMembersReq {
                group_id: "team-rust".into(),
                limit: 500,
                cursor: String::new(),
            },
        ),
        sample(
            "group_members_resp",
            26,
            pb::GroupMembersResp {
                group: Some(group_info()),
                members: vec![
                    pb::GroupMember {
                        user_id: "alice".into(),
                        role: pb::GroupRole::Owner as i32,
                        joined_ms: 1_763_900_000_000,
                    },
                    pb::GroupMember {
                        user_id: "bob".into(),
                        role: pb::GroupRole::Member as i32,
                        joined_ms: 1_763_900_000_000,
                    },
                ],
                next_cursor: String::new(),
            },
        ),
    ];

    // A sync page large enough to be compressed, as servers send big pages.
    let entries = (1..=40)
        .map(|seq| pb::InboxEntry {
            inbox_seq: seq,
            body: Some(pb::inbox_entry::Body::Message(text_message(
                seq,
                &format!("c-{seq:04}"),
                "the same words compress well",
            ))),
        })
        .collect();
    let mut compressed = sample(
        "sync_resp_zstd_compressed",
        27,
        pb::SyncResp {
            entries,
            head_seq: 40,
            has_more: false,
            next_seq: 41,
            missing: vec![],
            inbox_epoch: 4_503_599_627_370_001,
            read_groups: vec![],
        },
    );
    compressed.compressed = true;
    out.push(compressed);

    // Keep the PUSH flag only where the frame really is a push.
    for s in &mut out {
        debug_assert!(
            s.frame.request_id != 0
                || s.frame.flags.contains(Flags::PUSH)
                || s.name == "error_connection_level"
        );
    }
    out
}
