//! Writes `vectors/frames.json` from the sample frames in `tests/support/samples.rs`.
//! Run only when a new frame type or sample is added: `cargo run -p im-protocol --example
//! write_vectors`; then review the diff, since the golden test checks the committed bytes.

#[path = "../tests/support/reflect.rs"]
mod reflect;
#[path = "../tests/support/samples.rs"]
mod samples;

use bytes::BytesMut;
use im_protocol::{FrameCodec, OpInfo};
use tokio_util::codec::Encoder as _;

fn main() {
    let pool = reflect::pool();
    let mut vectors = Vec::new();
    for sample in samples::samples() {
        let info = OpInfo::of(sample.frame.op).expect("sample op is in the table");
        let mut codec = FrameCodec::default();
        if sample.compressed {
            codec.compress_above(Some(0));
        }
        let mut wire = BytesMut::new();
        codec
            .encode(&sample.frame, &mut wire)
            .expect("sample encodes");
        let full_name = format!("im.v1.{}", info.body);
        vectors.push(serde_json::json!({
            "name": sample.name,
            "op": info.number,
            "op_name": info.proto_name,
            "flags": wire[5],
            "request_id": sample.frame.request_id,
            "body_message": full_name,
            "body": reflect::body_to_json(&pool, &full_name, &sample.frame.body),
            "decode_only": sample.compressed,
            "hex": hex::encode(&wire),
        }));
    }
    let doc = serde_json::json!({
        "about": "Golden frames of the IM wire protocol (see SPEC.md, 'Golden vectors'). Decode each hex to the frame fields and the proto3 JSON body; encode the body JSON and header fields back to the same hex (except decode_only vectors, whose compressed bytes depend on the compressor).",
        "wire_version": im_protocol::WIRE_VERSION,
        "protocol_revision": im_protocol::PROTOCOL_REVISION,
        "vectors": vectors,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/frames.json");
    let text = serde_json::to_string_pretty(&doc).expect("serializes") + "\n";
    std::fs::write(path, text).expect("writes vectors/frames.json");
    eprintln!("wrote {path}");
}
