//! Bytes → protobuf `ServerFrame` → domain `ServerFrame` (what a client does with every frame
//! the server sends). Never panics; a frame that converts survives a round trip unchanged, and
//! the server's direct encoder writes for it the bytes prost writes.
#![no_main]

use callplus_proto::prost::Message as _;
use callplus_proto::v1 as pb;
use callplus_session::UserId;
use callplus_session::wire::{server_frame_from_wire, server_frame_to_vec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = pb::ServerFrame::decode(data) else { return };
    let Ok(me) = UserId::new("alice") else { return };
    match server_frame_from_wire(wire, &me) {
        Ok(frame) => {
            let wire = pb::ServerFrame::from(&frame);
            let direct = server_frame_to_vec(frame.seq, frame.ack, &frame.body);
            assert_eq!(direct, wire.encode_to_vec(), "the direct encoder must write prost's bytes");
            let again = server_frame_from_wire(wire, &me);
            assert_eq!(again.as_ref(), Ok(&frame), "a converted frame must convert back unchanged");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
