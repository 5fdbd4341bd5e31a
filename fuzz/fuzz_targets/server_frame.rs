//! Bytes → protobuf `ServerFrame` → domain `ServerFrame` (what a client does with every frame
//! the server sends). Never panics; a frame that converts survives a round trip unchanged, and
//! the server's direct encoder writes for it the bytes prost writes, with and without a
//! snapshot cache (the second encoding of the frame takes its shared snapshot's participants
//! from the cache).
#![no_main]

use callplus_proto::prost::Message as _;
use callplus_proto::v1 as pb;
use callplus_session::UserId;
use callplus_session::wire::{
    SnapshotCache, append_server_frame_with, server_frame_from_wire, server_frame_to_vec,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = pb::ServerFrame::decode(data) else { return };
    let Ok(me) = UserId::new("alice") else { return };
    match server_frame_from_wire(wire, &me) {
        Ok(frame) => {
            let wire = pb::ServerFrame::from(&frame);
            let direct = server_frame_to_vec(frame.seq, frame.ack, &frame.body);
            let expected = wire.encode_to_vec();
            assert_eq!(direct, expected, "the direct encoder must write prost's bytes");
            let mut cache = SnapshotCache::default();
            for _ in 0..2 {
                let mut cached = Vec::new();
                append_server_frame_with(frame.seq, frame.ack, &frame.body, &mut cached, &mut cache);
                assert_eq!(cached, expected, "the encoder must write prost's bytes through its cache too");
            }
            let again = server_frame_from_wire(wire, &me);
            assert_eq!(again.as_ref(), Ok(&frame), "a converted frame must convert back unchanged");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
