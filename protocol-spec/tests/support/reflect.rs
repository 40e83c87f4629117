//! proto3 canonical JSON for frame bodies, through prost-reflect and the crate's descriptor set.
//! This is what another implementation would compare against: the JSON mapping is standard.

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

pub fn pool() -> DescriptorPool {
    DescriptorPool::decode(im_protocol::FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

/// Renders protobuf `bytes` of message `full_name` (e.g. "im.v1.Ping") as proto3 JSON.
pub fn body_to_json(pool: &DescriptorPool, full_name: &str, bytes: &[u8]) -> serde_json::Value {
    let desc = pool.get_message_by_name(full_name).expect("message exists");
    let message = DynamicMessage::decode(desc, bytes).expect("body decodes dynamically");
    let options = SerializeOptions::new().stringify_64_bit_integers(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("serializes to JSON")
}

/// Encodes proto3 JSON `value` as message `full_name`.
#[allow(dead_code)]
pub fn json_to_body(pool: &DescriptorPool, full_name: &str, value: &serde_json::Value) -> Vec<u8> {
    let desc = pool.get_message_by_name(full_name).expect("message exists");
    let message = DynamicMessage::deserialize(desc, value).expect("JSON matches the message");
    message.encode_to_vec()
}
