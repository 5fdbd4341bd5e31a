//! Outbound frames encoded without an allocation per frame.
//!
//! Every frame the server sends is encoded by the task that writes it: the driver for direct
//! WebSocket writes, a connection's writer otherwise, a stream's task for gRPC. Encoding each
//! into a fresh `Vec` cost an allocation and a free per frame; with fourteen frames per call
//! cycle, allocating and freeing was the largest single part of the worker's instructions
//! (docs/performance.md). Each thread keeps one scratch buffer instead: per thread rather than
//! per connection, so an idle connection holds none of it. From there a frame's bytes are
//! copied once, into the transport's own buffer (gRPC's encode buffer, a WebSocket's write
//! buffer behind the frame's header).
//!
//! The thread also keeps the participants of the last call snapshot it encoded
//! ([`SnapshotCache`]): the frames of one change of a call share its snapshot, and a call
//! cycle's six frames that carry one need three encodings of its participants rather than six.

use std::cell::RefCell;

use callplus_session::OutFrame;
use callplus_session::wire::{SnapshotCache, append_server_frame_with, server_frame_to_vec};
use prost::bytes::BufMut;

use super::ws_framing;

/// What a thread's buffer starts with: most frames fit many times over.
const FIRST_CAPACITY: usize = 8 * 1024;
/// A frame larger than this (a page of call records) is not kept in the buffer after it, so
/// a thread does not keep the largest frame it ever sent.
const KEPT_CAPACITY: usize = 64 * 1024;

/// A thread's encoding state.
struct Scratch {
    /// Where a frame is encoded.
    encode: Vec<u8>,
    /// The participants of the last shared snapshot encoded.
    snapshots: SnapshotCache,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> =
        RefCell::new(Scratch { encode: Vec::new(), snapshots: SnapshotCache::default() });
}

/// Runs `f` on this thread's frame encoded in its scratch buffer (or in a fresh one if the
/// scratch is in use further up the stack, which the server never does).
fn with_encoded<R>(frame: &OutFrame, f: impl FnOnce(&[u8]) -> R) -> R {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            let Scratch { encode, snapshots } = &mut *scratch;
            encode.clear();
            if encode.capacity() == 0 {
                encode.reserve(FIRST_CAPACITY);
            }
            append_server_frame_with(frame.seq, frame.ack, &frame.body, encode, snapshots);
            let out = f(encode);
            if encode.capacity() > KEPT_CAPACITY {
                *encode = Vec::new();
            }
            out
        }
        Err(_) => f(&server_frame_to_vec(frame.seq, frame.ack, &frame.body)),
    })
}

/// Appends the frame to `out` (a WebSocket's write buffer) as one binary message.
pub(crate) fn append_ws_message(frame: &OutFrame, out: &mut Vec<u8>) {
    with_encoded(frame, |encoded| ws_framing::append_binary(out, encoded));
}

/// Writes the frame's protobuf bytes into `dst` (gRPC's encode buffer).
pub(crate) fn put_frame(frame: &OutFrame, dst: &mut impl BufMut) {
    with_encoded(frame, |encoded| dst.put_slice(encoded));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use callplus_session::{EndReason, Event, ServerBody, ServerFrame};
    use prost::bytes::BytesMut;

    use super::*;

    fn frame(seq: u64, message: &str) -> OutFrame {
        let kicked = Event::Kicked { reason: EndReason::Hangup, message: message.to_owned() };
        OutFrame::from(ServerFrame { seq, ack: 3, body: ServerBody::Event(kicked) })
    }

    fn expected(frame: &OutFrame) -> Vec<u8> {
        server_frame_to_vec(frame.seq, frame.ack, &frame.body)
    }

    fn ws_message(frame: &OutFrame) -> Vec<u8> {
        let mut out = Vec::new();
        ws_framing::append_binary(&mut out, &expected(frame));
        out
    }

    #[test]
    fn each_transport_gets_each_frames_bytes_small_or_large() {
        let frames: Vec<OutFrame> =
            (1..200).map(|i| frame(i, &"x".repeat(usize::try_from(i).unwrap() * 7))).collect();
        let big = frame(7, &"y".repeat(KEPT_CAPACITY * 2));
        let mut ws = Vec::new();
        let mut grpc = BytesMut::new();
        let mut expected_ws = Vec::new();
        let mut expected_grpc = Vec::new();
        for f in frames.iter().chain([&big, &frames[0]]) {
            append_ws_message(f, &mut ws);
            put_frame(f, &mut grpc);
            expected_ws.extend(ws_message(f));
            expected_grpc.extend(expected(f));
        }
        assert_eq!(ws, expected_ws);
        assert_eq!(grpc.as_ref(), expected_grpc.as_slice());
        let kept = SCRATCH.with(|scratch| scratch.borrow().encode.capacity());
        assert!(kept <= KEPT_CAPACITY, "the scratch keeps {kept} bytes after a large frame");
    }

    /// Encoding re-entered on the same thread (nothing does it today) gets a buffer of its own
    /// rather than a panic from the scratch's `RefCell`, and neither frame is garbled.
    #[test]
    fn a_frame_encoded_while_the_scratch_is_in_use_gets_a_buffer_of_its_own() {
        let outer = frame(1, "outer");
        let inner = frame(2, "inner");
        let (outer_bytes, inner_ws, inner_grpc) = with_encoded(&outer, |encoded| {
            let mut grpc = BytesMut::new();
            put_frame(&inner, &mut grpc);
            let mut ws = Vec::new();
            append_ws_message(&inner, &mut ws);
            (encoded.to_vec(), ws, grpc)
        });
        assert_eq!(outer_bytes, expected(&outer));
        assert_eq!(inner_ws, ws_message(&inner));
        assert_eq!(inner_grpc.as_ref(), expected(&inner).as_slice());
        // The scratch is free again afterwards.
        let mut again = Vec::new();
        append_ws_message(&inner, &mut again);
        assert_eq!(again, ws_message(&inner));
    }
}
