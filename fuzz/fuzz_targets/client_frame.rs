//! Bytes → protobuf `ClientFrame` → domain `ClientFrame` (what the server does with every frame
//! a device sends). Never panics; a frame that converts survives a round trip unchanged.
#![no_main]

use callplus_proto::prost::Message as _;
use callplus_proto::v1 as pb;
use callplus_session::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = pb::ClientFrame::decode(data) else { return };
    match ClientFrame::try_from(wire) {
        Ok(frame) => {
            let again = ClientFrame::try_from(pb::ClientFrame::from(&frame));
            assert_eq!(again.as_ref(), Ok(&frame), "a converted frame must convert back unchanged");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
