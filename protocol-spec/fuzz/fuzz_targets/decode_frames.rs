//! Feeds arbitrary bytes to the frame decoder, split at a point the input chooses, with and
//! without compression accepted, then decodes every frame's body as its typed message.
//! The decoder must never panic, and never hand out a body above the limit.
#![no_main]

use bytes::BytesMut;
use im_protocol::FrameCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let mut codec = FrameCodec::new(LIMIT);
    codec.accept_compressed(control & 1 == 1);
    let split = (usize::from(control >> 1) * 7).min(rest.len());
    let mut buf = BytesMut::new();
    for piece in [&rest[..split], &rest[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() <= LIMIT);
                    let _ = frame.decode_body();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
