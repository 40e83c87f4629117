//! Until the server lands, the gateway binary prints the protocol's frame-type table, so the
//! README's run command shows what the wire protocol consists of.

fn main() {
    println!(
        "IM wire protocol: wire version {}, revision {}; frames are a 12-byte big-endian header + protobuf body.",
        im_protocol::WIRE_VERSION,
        im_protocol::PROTOCOL_REVISION
    );
    println!("{:<32} {:>4}  {:<24} direction", "op", "num", "body");
    for info in im_protocol::OP_TABLE {
        println!(
            "{:<32} {:>4}  {:<24} {:?}",
            info.proto_name, info.number, info.body, info.direction
        );
    }
    println!(
        "See protocol-spec/SPEC.md for the rules and protocol-spec/vectors/frames.json for golden frames."
    );
}
