//! Every golden frame in `vectors/frames.json` decodes to its stated fields and JSON body, and
//! its fields and body encode back to the same bytes; every frame type has at least one vector.

#[allow(dead_code)]
#[path = "support/reflect.rs"]
mod reflect;

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use im_protocol::{Flags, Frame, FrameCodec, OP_TABLE, OpInfo};
use tokio_util::codec::{Decoder as _, Encoder as _};

struct Vector {
    name: String,
    op: u16,
    flags: u8,
    request_id: u32,
    body_message: String,
    body: serde_json::Value,
    decode_only: bool,
    wire: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("../vectors/frames.json");
    let doc: serde_json::Value = serde_json::from_str(text).expect("frames.json is JSON");
    assert_eq!(doc["wire_version"], im_protocol::WIRE_VERSION);
    doc["vectors"]
        .as_array()
        .expect("vectors array")
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().unwrap().to_owned(),
            op: v["op"].as_u64().unwrap() as u16,
            flags: v["flags"].as_u64().unwrap() as u8,
            request_id: v["request_id"].as_u64().unwrap() as u32,
            body_message: v["body_message"].as_str().unwrap().to_owned(),
            body: v["body"].clone(),
            decode_only: v["decode_only"].as_bool().unwrap(),
            wire: hex::decode(v["hex"].as_str().unwrap()).expect("hex"),
        })
        .collect()
}

fn codec_for(v: &Vector) -> FrameCodec {
    let mut codec = FrameCodec::default();
    codec.accept_compressed(true);
    if v.decode_only {
        codec.compress_above(Some(0));
    }
    codec
}

#[test]
fn every_frame_type_has_a_golden_vector() {
    let covered: BTreeSet<u16> = vectors().iter().map(|v| v.op).collect();
    let missing: Vec<&str> = OP_TABLE
        .iter()
        .filter(|info| !covered.contains(&(info.number as u16)))
        .map(|info| info.proto_name)
        .collect();
    assert!(
        missing.is_empty(),
        "frame types without a vector: {missing:?}"
    );
    assert!(
        vectors().iter().any(|v| v.decode_only),
        "a compressed vector exists"
    );
}

#[test]
fn golden_bytes_decode_to_the_stated_frame_and_json_body() {
    let pool = reflect::pool();
    for v in vectors() {
        let mut buf = BytesMut::from(&v.wire[..]);
        let frame = codec_for(&v)
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name))
            .unwrap_or_else(|| panic!("{}: incomplete", v.name));
        assert!(buf.is_empty(), "{}: trailing bytes", v.name);
        assert_eq!(frame.op, v.op, "{}", v.name);
        assert_eq!(frame.request_id, v.request_id, "{}", v.name);
        assert_eq!(
            frame.flags.bits(),
            v.flags & !Flags::COMPRESSED.bits(),
            "{}",
            v.name
        );
        assert_eq!(
            v.flags & Flags::COMPRESSED.bits() != 0,
            v.decode_only,
            "{}",
            v.name
        );

        let info = OpInfo::of(frame.op).unwrap();
        assert_eq!(format!("im.v1.{}", info.body), v.body_message, "{}", v.name);
        assert_eq!(
            reflect::body_to_json(&pool, &v.body_message, &frame.body),
            v.body,
            "{}",
            v.name
        );

        // The typed decoder agrees, and re-encodes the body byte for byte.
        let typed = frame
            .decode_body()
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(typed.op() as u16, v.op, "{}", v.name);
        assert_eq!(typed.encode_to_vec(), frame.body.to_vec(), "{}", v.name);
    }
}

#[test]
fn golden_json_and_fields_encode_to_the_golden_bytes() {
    let pool = reflect::pool();
    for v in vectors().into_iter().filter(|v| !v.decode_only) {
        let body = reflect::json_to_body(&pool, &v.body_message, &v.body);
        let frame = Frame {
            op: v.op,
            flags: Flags::from_bits(v.flags).expect("defined flags"),
            request_id: v.request_id,
            body: Bytes::from(body),
        };
        let mut wire = BytesMut::new();
        codec_for(&v).encode(&frame, &mut wire).unwrap();
        assert_eq!(hex::encode(&wire), hex::encode(&v.wire), "{}", v.name);
    }
}

#[test]
fn compressed_vector_is_smaller_than_its_body() {
    for v in vectors().into_iter().filter(|v| v.decode_only) {
        let mut buf = BytesMut::from(&v.wire[..]);
        let frame = codec_for(&v).decode(&mut buf).unwrap().unwrap();
        assert!(
            v.wire.len() < frame.body.len(),
            "{}: compression did not pay",
            v.name
        );
    }
}
