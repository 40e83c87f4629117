//! The workloads' hot path on the wire: a send frame encoded once and patched per message, and
//! a push scanner that reads inbox seqs and content prefixes without decoding (or allocating)
//! the whole body.
//!
//! Why: a load generator that built, encoded and decoded protobuf structs per message (an
//! allocation for each id, content and string) was the ceiling of its own measurements: W1
//! against the bare relay stopped at ~390k delivered/s while the relay can move millions.

use bytes::{Buf as _, BytesMut};
use im_protocol::frame::FrameHeader;
use im_protocol::{HEADER_LEN, WIRE_VERSION, pb};

/// Width of the client message ids the template writes: 16 hex digits of the message number.
const MSG_ID_LEN: usize = 16;

/// A `SendReq` frame to one user, encoded once; [`SendTemplate::append`] copies it and patches
/// the request id, the client message id and the timestamp at the start of the content.
pub struct SendTemplate {
    frame: Vec<u8>,
    msg_id_at: usize,
    stamp_at: usize,
}

impl SendTemplate {
    /// A text-less message of `payload` bytes (at least 8, for the timestamp) to `receiver`.
    pub fn to_user(receiver: &str, content_type: u32, payload: usize) -> SendTemplate {
        assert!(payload >= 8, "the payload carries an 8-byte timestamp");
        // Fields in tag order, as prost would write them (SendReq: to_user = 1,
        // client_msg_id = 3, content_type = 4, content = 5).
        let mut body = Vec::new();
        put_bytes_field(&mut body, 1, receiver.as_bytes());
        put_bytes_field(&mut body, 3, &[b'0'; MSG_ID_LEN]);
        let msg_id_at = body.len() - MSG_ID_LEN;
        prost::encoding::encode_key(4, prost::encoding::WireType::Varint, &mut body);
        prost::encoding::encode_varint(u64::from(content_type), &mut body);
        put_bytes_field(&mut body, 5, &vec![b'x'; payload]);
        let stamp_at = body.len() - payload;

        let mut frame = BytesMut::with_capacity(HEADER_LEN + body.len());
        FrameHeader {
            body_len: body.len() as u32,
            version: WIRE_VERSION,
            flags: 0,
            op: pb::Op::SendReq as u16,
            request_id: 0,
        }
        .write(&mut frame);
        frame.extend_from_slice(&body);
        SendTemplate {
            frame: frame.to_vec(),
            msg_id_at: HEADER_LEN + msg_id_at,
            stamp_at: HEADER_LEN + stamp_at,
        }
    }

    /// Appends the frame of message number `n` (its client message id) to `out`, with
    /// `request_id` and `stamp_ns` as the first 8 content bytes (big-endian).
    pub fn append(&self, out: &mut BytesMut, request_id: u32, n: u64, stamp_ns: u64) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let frame = &mut out[start..];
        frame[8..12].copy_from_slice(&request_id.to_be_bytes());
        let id = &mut frame[self.msg_id_at..self.msg_id_at + MSG_ID_LEN];
        for (i, digit) in id.iter_mut().enumerate() {
            let nibble = (n >> (4 * (MSG_ID_LEN - 1 - i))) & 0xf;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        frame[self.stamp_at..self.stamp_at + 8].copy_from_slice(&stamp_ns.to_be_bytes());
    }

    /// Bytes per frame.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Never: a frame has a header.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
}

/// A push body that is not well-formed protobuf.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    // Most varints here (keys, lengths, small numbers) are one byte: skip prost's general
    // path for them.
    if let Some((&byte, rest)) = buf.split_first()
        && byte < 0x80
    {
        *buf = rest;
        return Ok(u64::from(byte));
    }
    prost::encoding::decode_varint(buf).map_err(|_| Malformed)
}

/// One field split off a protobuf body: a varint's number and value, a length-delimited
/// field's number and bytes, or a fixed-width field (skipped).
enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
    Other,
}

fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Field<'a>, Malformed> {
    let key = varint(buf)?;
    let number = (key >> 3) as u32;
    match key & 7 {
        0 => Ok(Field::Varint(number, varint(buf)?)),
        1 | 5 => {
            let width = if key & 7 == 1 { 8 } else { 4 };
            if buf.len() < width {
                return Err(Malformed);
            }
            buf.advance(width);
            Ok(Field::Other)
        }
        2 => {
            let len = usize::try_from(varint(buf)?).map_err(|_| Malformed)?;
            if buf.len() < len {
                return Err(Malformed);
            }
            let (bytes, rest) = buf.split_at(len);
            *buf = rest;
            Ok(Field::Bytes(number, bytes))
        }
        _ => Err(Malformed),
    }
}

/// Calls `entry(inbox_seq, content)` for each entry of a `Push` body, in order; `content` is
/// the message's content for message entries, `None` for other kinds.
pub fn scan_push(
    mut body: &[u8],
    mut entry: impl FnMut(u64, Option<&[u8]>),
) -> Result<(), Malformed> {
    while !body.is_empty() {
        let Field::Bytes(1, mut inbox_entry) = next_field(&mut body)? else {
            continue;
        };
        let (mut seq, mut content) = (0, None);
        while !inbox_entry.is_empty() {
            match next_field(&mut inbox_entry)? {
                Field::Varint(1, value) => seq = value,
                Field::Bytes(2, mut message) => {
                    content = Some(&[][..]);
                    while !message.is_empty() {
                        if let Field::Bytes(10, bytes) = next_field(&mut message)? {
                            content = Some(bytes);
                        }
                    }
                }
                _ => {}
            }
        }
        entry(seq, content);
    }
    Ok(())
}

/// The fields of a `SendReq` body, borrowed from it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SendFields<'a> {
    /// `to_user`, when the target is a user.
    pub to_user: Option<&'a [u8]>,
    /// `to_group`, when the target is a group.
    pub to_group: Option<&'a [u8]>,
    /// The sender's idempotency key.
    pub client_msg_id: &'a [u8],
    /// App-defined content type.
    pub content_type: u32,
    /// The content.
    pub content: &'a [u8],
}

/// Reads a `SendReq` body without copying any of it.
pub fn scan_send(mut body: &[u8]) -> Result<SendFields<'_>, Malformed> {
    let mut fields = SendFields::default();
    while !body.is_empty() {
        match next_field(&mut body)? {
            Field::Bytes(1, user) => fields.to_user = Some(user),
            Field::Bytes(2, group) => fields.to_group = Some(group),
            Field::Bytes(3, id) => fields.client_msg_id = id,
            Field::Varint(4, value) => fields.content_type = value as u32,
            Field::Bytes(5, content) => fields.content = content,
            _ => {}
        }
    }
    Ok(fields)
}

/// A varint, written in one copy (prost's writer checks the buffer's room once per byte).
#[inline]
fn put_varint(out: &mut impl bytes::BufMut, mut value: u64) {
    let mut bytes = [0u8; 10];
    let mut n = 0;
    while value >= 0x80 {
        bytes[n] = (value as u8) | 0x80;
        value >>= 7;
        n += 1;
    }
    bytes[n] = value as u8;
    out.put_slice(&bytes[..=n]);
}

/// A length-delimited field, left out when empty (as prost does for proto3 scalars).
fn put_bytes_field(out: &mut impl bytes::BufMut, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_varint(out, (u64::from(field) << 3) | 2);
        put_varint(out, bytes.len() as u64);
        out.put_slice(bytes);
    }
}

fn put_varint_field(out: &mut BytesMut, field: u32, value: u64) {
    if value != 0 {
        put_varint(out, u64::from(field) << 3);
        put_varint(out, value);
    }
}

/// A message as a push carries it, borrowed.
pub struct PushedMessage<'a> {
    /// The recipient's inbox seq of this entry.
    pub inbox_seq: u64,
    /// The conversation.
    pub conversation_id: &'a [u8],
    /// `pb::ConversationKind` as a number.
    pub kind: i32,
    /// The sender.
    pub sender_user: &'a [u8],
    /// Server message id.
    pub server_msg_id: u64,
    /// Server time, Unix ms.
    pub server_time_ms: u64,
    /// The sender's idempotency key.
    pub client_msg_id: &'a [u8],
    /// App-defined content type.
    pub content_type: u32,
    /// The content.
    pub content: &'a [u8],
}

fn len_field_size(field: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        prost::encoding::key_len(field) + prost::encoding::encoded_len_varint(len as u64) + len
    }
}

fn varint_field_size(field: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        prost::encoding::key_len(field) + prost::encoding::encoded_len_varint(value)
    }
}

fn message_len(message: &PushedMessage<'_>) -> (usize, usize) {
    let message_len = len_field_size(1, message.conversation_id.len())
        + varint_field_size(2, message.kind as u64)
        + len_field_size(3, message.sender_user.len())
        + varint_field_size(5, message.server_msg_id)
        + varint_field_size(7, message.server_time_ms)
        + len_field_size(8, message.client_msg_id.len())
        + varint_field_size(9, u64::from(message.content_type))
        + len_field_size(10, message.content.len());
    // The message field is written even when empty: the oneof is set.
    let entry_len = varint_field_size(1, message.inbox_seq)
        + prost::encoding::key_len(2)
        + prost::encoding::encoded_len_varint(message_len as u64)
        + message_len;
    (message_len, entry_len)
}

fn put_push_body(out: &mut BytesMut, message: &PushedMessage<'_>, lens: (usize, usize)) {
    let (message_len, entry_len) = lens;
    put_varint(out, (1 << 3) | 2);
    put_varint(out, entry_len as u64);
    put_varint_field(out, 1, message.inbox_seq);
    put_varint(out, (2 << 3) | 2);
    put_varint(out, message_len as u64);
    put_bytes_field(out, 1, message.conversation_id);
    put_varint_field(out, 2, message.kind as u64);
    put_bytes_field(out, 3, message.sender_user);
    put_varint_field(out, 5, message.server_msg_id);
    put_varint_field(out, 7, message.server_time_ms);
    put_bytes_field(out, 8, message.client_msg_id);
    put_varint_field(out, 9, u64::from(message.content_type));
    put_bytes_field(out, 10, message.content);
}

fn push_body_len(lens: (usize, usize)) -> usize {
    prost::encoding::key_len(1) + prost::encoding::encoded_len_varint(lens.1 as u64) + lens.1
}

/// The body of a `Push` of one message entry, as prost would encode it, in one allocation.
pub fn push_body(message: &PushedMessage<'_>) -> bytes::Bytes {
    let lens = message_len(message);
    let mut out = BytesMut::with_capacity(push_body_len(lens));
    put_push_body(&mut out, message, lens);
    out.freeze()
}

/// Appends a whole `Push` frame (header and body) of one message entry to `out`, with no
/// allocation beyond `out`'s own growth: the bare relay writes pushes straight into the
/// receiver's output buffer.
pub fn append_push_frame(out: &mut BytesMut, message: &PushedMessage<'_>) {
    let lens = message_len(message);
    let body_len = push_body_len(lens);
    out.reserve(HEADER_LEN + body_len);
    FrameHeader {
        body_len: body_len as u32,
        version: WIRE_VERSION,
        flags: im_protocol::Flags::PUSH.bits(),
        op: pb::Op::Push as u16,
        request_id: 0,
    }
    .write(out);
    put_push_body(out, message, lens);
}

fn send_ack_len(client_msg_id: &[u8], conversation_id: &[u8], ids: (u64, u64)) -> usize {
    len_field_size(1, client_msg_id.len())
        + len_field_size(2, conversation_id.len())
        + varint_field_size(3, ids.0)
        + varint_field_size(5, ids.1)
}

fn put_send_ack(out: &mut BytesMut, client_msg_id: &[u8], conversation_id: &[u8], ids: (u64, u64)) {
    put_bytes_field(out, 1, client_msg_id);
    put_bytes_field(out, 2, conversation_id);
    put_varint_field(out, 3, ids.0);
    put_varint_field(out, 5, ids.1);
}

/// The body of a `SendAck`, as prost would encode it.
pub fn send_ack_body(
    client_msg_id: &[u8],
    conversation_id: &[u8],
    server_msg_id: u64,
    server_time_ms: u64,
) -> bytes::Bytes {
    let ids = (server_msg_id, server_time_ms);
    let mut out = BytesMut::with_capacity(send_ack_len(client_msg_id, conversation_id, ids));
    put_send_ack(&mut out, client_msg_id, conversation_id, ids);
    out.freeze()
}

/// Appends a whole `SendAck` frame answering `request_id` to `out`.
pub fn append_send_ack_frame(
    out: &mut BytesMut,
    request_id: u32,
    client_msg_id: &[u8],
    conversation_id: &[u8],
    server_msg_id: u64,
    server_time_ms: u64,
) {
    let ids = (server_msg_id, server_time_ms);
    let body_len = send_ack_len(client_msg_id, conversation_id, ids);
    out.reserve(HEADER_LEN + body_len);
    FrameHeader {
        body_len: body_len as u32,
        version: WIRE_VERSION,
        flags: 0,
        op: pb::Op::SendAck as u16,
        request_id,
    }
    .write(out);
    put_send_ack(out, client_msg_id, conversation_id, ids);
}

/// A frame header that no peer of revision 1 may send.
#[derive(Debug, PartialEq, Eq)]
pub enum BadFrame {
    /// Not wire version 1.
    Version(u8),
    /// A body longer than the limit.
    TooLarge(u32),
    /// A flag this loop does not handle (compression or a reserved bit).
    Flags(u8),
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadFrame::Version(v) => write!(f, "wire version {v}"),
            BadFrame::TooLarge(n) => write!(f, "a {n}-byte body"),
            BadFrame::Flags(b) => write!(f, "flags {b:#04x}"),
        }
    }
}

/// Calls `frame(header, body)` for each whole frame at the start of `buf`, in place, and
/// returns how many bytes they took (the caller advances its buffer by that much; a partial
/// frame stays for the next read). Uncompressed frames only: the hot loops that use this never
/// negotiate compression.
pub fn split_frames(
    buf: &[u8],
    max_body: usize,
    mut frame: impl FnMut(&FrameHeader, &[u8]),
) -> Result<usize, BadFrame> {
    let mut at = 0;
    while let Some(header) = FrameHeader::parse(&buf[at..]) {
        if header.version != WIRE_VERSION {
            return Err(BadFrame::Version(header.version));
        }
        if header.flags & !im_protocol::Flags::PUSH.bits() != 0 {
            return Err(BadFrame::Flags(header.flags));
        }
        let body_len = header.body_len as usize;
        if body_len > max_body {
            return Err(BadFrame::TooLarge(header.body_len));
        }
        let end = at + HEADER_LEN + body_len;
        if end > buf.len() {
            break;
        }
        frame(&header, &buf[at + HEADER_LEN..end]);
        at = end;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::{Body, Frame, FrameCodec};
    use prost::Message as _;
    use tokio_util::codec::Decoder as _;

    #[test]
    fn a_patched_template_is_the_send_request_prost_would_encode() {
        let template = SendTemplate::to_user("w1-r7", 1, 100);
        let mut out = BytesMut::new();
        template.append(&mut out, 42, 0xbeef, 123_456_789);
        template.append(&mut out, 43, 0xbef0, 5);
        assert_eq!(out.len(), 2 * template.len());

        let mut codec = FrameCodec::default();
        let first = codec.decode(&mut out).unwrap().unwrap();
        assert_eq!(first.request_id, 42);
        let Ok(Body::SendReq(send)) = first.decode_body() else {
            panic!("not a SendReq");
        };
        let mut content = 123_456_789u64.to_be_bytes().to_vec();
        content.resize(100, b'x');
        assert_eq!(
            send,
            pb::SendReq {
                target: Some(pb::send_req::Target::ToUser("w1-r7".into())),
                client_msg_id: "000000000000beef".into(),
                content_type: 1,
                content,
            }
        );
        let second = codec.decode(&mut out).unwrap().unwrap();
        assert_eq!(second.request_id, 43);
        assert!(out.is_empty());
    }

    #[test]
    fn the_scanner_reads_what_prost_wrote_and_skips_what_it_does_not_need() {
        let push = pb::Push {
            entries: vec![
                pb::InboxEntry {
                    inbox_seq: 7,
                    body: Some(pb::inbox_entry::Body::Message(pb::Message {
                        conversation_id: "d:a:b".into(),
                        sender_user: "a".into(),
                        server_msg_id: 99,
                        conversation_seq: 3,
                        client_msg_id: "x".into(),
                        content: b"hello".to_vec(),
                        ..Default::default()
                    })),
                },
                pb::InboxEntry {
                    inbox_seq: 8,
                    body: Some(pb::inbox_entry::Body::Recall(pb::RecallEvent::default())),
                },
                pb::InboxEntry {
                    inbox_seq: 9,
                    body: Some(pb::inbox_entry::Body::Message(pb::Message::default())),
                },
            ],
        };
        let mut seen = Vec::new();
        scan_push(&push.encode_to_vec(), |seq, content| {
            seen.push((seq, content.map(<[u8]>::to_vec)));
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (7, Some(b"hello".to_vec())),
                (8, None),
                (9, Some(Vec::new()))
            ]
        );
    }

    #[test]
    fn a_truncated_push_is_malformed_not_a_panic() {
        let push = pb::Push {
            entries: vec![pb::InboxEntry {
                inbox_seq: 1,
                body: Some(pb::inbox_entry::Body::Message(pb::Message {
                    content: vec![1; 50],
                    ..Default::default()
                })),
            }],
        };
        let bytes = push.encode_to_vec();
        for cut in 1..bytes.len() {
            let _ = scan_push(&bytes[..cut], |_, _| {});
        }
        assert_eq!(
            scan_push(&bytes[..bytes.len() - 1], |_, _| {}),
            Err(Malformed)
        );
    }

    #[test]
    fn hand_encoded_pushes_and_acks_are_what_prost_encodes() {
        let pushed = PushedMessage {
            inbox_seq: 12,
            conversation_id: b"d:a:b",
            kind: pb::ConversationKind::Direct as i32,
            sender_user: b"a",
            server_msg_id: 77,
            server_time_ms: 1_700_000_000_000,
            client_msg_id: b"m1",
            content_type: 1,
            content: b"payload",
        };
        let expected = pb::Push {
            entries: vec![pb::InboxEntry {
                inbox_seq: 12,
                body: Some(pb::inbox_entry::Body::Message(pb::Message {
                    conversation_id: "d:a:b".into(),
                    kind: pb::ConversationKind::Direct as i32,
                    sender_user: "a".into(),
                    server_msg_id: 77,
                    server_time_ms: 1_700_000_000_000,
                    client_msg_id: "m1".into(),
                    content_type: 1,
                    content: b"payload".to_vec(),
                    ..Default::default()
                })),
            }],
        };
        assert_eq!(push_body(&pushed).as_ref(), expected.encode_to_vec());
        let ack = pb::SendAck {
            client_msg_id: "m1".into(),
            conversation_id: "d:a:b".into(),
            server_msg_id: 77,
            server_time_ms: 5,
            ..Default::default()
        };
        assert_eq!(
            send_ack_body(b"m1", b"d:a:b", 77, 5).as_ref(),
            ack.encode_to_vec()
        );

        // Whole frames appended to a buffer are what the codec writes for the same structs.
        let mut appended = BytesMut::from(&b"before"[..]);
        append_push_frame(&mut appended, &pushed);
        append_send_ack_frame(&mut appended, 9, b"m1", b"d:a:b", 77, 5);
        let mut encoded = BytesMut::from(&b"before"[..]);
        let mut codec = FrameCodec::default();
        tokio_util::codec::Encoder::encode(&mut codec, Frame::push(expected), &mut encoded)
            .expect("encode");
        tokio_util::codec::Encoder::encode(&mut codec, Frame::new(9, ack), &mut encoded)
            .expect("encode");
        assert_eq!(appended, encoded);
    }

    #[test]
    fn frames_are_split_in_place_and_a_partial_one_waits_for_more() {
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::default();
        for id in 1..=3 {
            tokio_util::codec::Encoder::encode(
                &mut codec,
                Frame::new(
                    id,
                    pb::Ping {
                        client_time_ms: u64::from(id),
                    },
                ),
                &mut buf,
            )
            .expect("encode");
        }
        let whole = buf.len();
        // Cut inside the third frame's body.
        let cut = &buf[..whole - 1];
        let mut seen = Vec::new();
        let used = split_frames(cut, 1024, |header, body| {
            seen.push((header.request_id, body.to_vec()));
        })
        .expect("well-formed");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].0, 2);
        assert_eq!(
            pb::Ping::decode(seen[1].1.as_slice())
                .expect("ping")
                .client_time_ms,
            2
        );
        assert_eq!(used, whole / 3 * 2);
        // Every prefix splits without a panic, and never past what it holds.
        for end in 0..=whole {
            let used = split_frames(&buf[..end], 1024, |_, _| {}).expect("well-formed");
            assert!(used <= end);
        }
    }

    #[test]
    fn a_frame_no_peer_may_send_is_refused() {
        let mut buf = BytesMut::new();
        tokio_util::codec::Encoder::encode(
            &mut FrameCodec::default(),
            Frame::new(1, pb::Ping { client_time_ms: 1 }),
            &mut buf,
        )
        .expect("encode");
        let mut bad_version = buf.clone();
        bad_version[4] = 9;
        assert_eq!(
            split_frames(&bad_version, 1024, |_, _| {}),
            Err(BadFrame::Version(9))
        );
        let mut compressed = buf.clone();
        compressed[5] = 0x01;
        assert_eq!(
            split_frames(&compressed, 1024, |_, _| {}),
            Err(BadFrame::Flags(1))
        );
        assert_eq!(
            split_frames(&buf, 1, |_, _| {}),
            Err(BadFrame::TooLarge((buf.len() - HEADER_LEN) as u32))
        );
    }

    #[test]
    fn a_send_request_is_read_in_place() {
        let request = pb::SendReq {
            target: Some(pb::send_req::Target::ToUser("bob".into())),
            client_msg_id: "id-1".into(),
            content_type: 3,
            content: b"hi".to_vec(),
        };
        let bytes = request.encode_to_vec();
        let fields = scan_send(&bytes).unwrap();
        assert_eq!(
            fields,
            SendFields {
                to_user: Some(b"bob"),
                to_group: None,
                client_msg_id: b"id-1",
                content_type: 3,
                content: b"hi",
            }
        );
    }
}
