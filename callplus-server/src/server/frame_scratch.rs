//! Outbound frames encoded without an allocation per frame.
//!
//! Every frame the server sends is encoded by the task that writes it: the driver for direct
//! WebSocket writes, a connection's writer otherwise, a stream's task for gRPC. Encoding each
//! into a fresh `Vec` cost an allocation and a free per frame, and a WebSocket message two (a
//! `Bytes` made from a `Vec` with spare room allocates a shared header for it); with fourteen
//! frames per call cycle, allocating and freeing was the largest single part of the worker's
//! instructions (docs/performance.md). Each thread keeps one scratch buffer instead: per
//! thread rather than per connection, so an idle connection holds none of it.

use std::cell::RefCell;

use callplus_session::OutFrame;
use callplus_session::wire::{append_server_frame, server_frame_to_vec};
use prost::bytes::{BufMut, Bytes, BytesMut};

/// What a thread's buffers start with: most frames fit many times over.
const FIRST_CAPACITY: usize = 8 * 1024;
/// A frame larger than this (a page of call records) is not kept in the buffers after it, so
/// a thread does not keep the largest frame it ever sent.
const KEPT_CAPACITY: usize = 64 * 1024;

struct Scratch {
    /// Where a frame is encoded.
    encode: Vec<u8>,
    /// Where WebSocket messages are cut from: a message's bytes are split off, and once the
    /// transport has dropped them (tungstenite copies a message into its write buffer as it
    /// is sent) their room is used again.
    messages: BytesMut,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> =
        RefCell::new(Scratch { encode: Vec::new(), messages: BytesMut::new() });
}

/// Runs `f` on this thread's frame encoded in its scratch buffer (or in a fresh one if the
/// scratch is in use further up the stack, which the server never does).
fn with_encoded<R>(frame: &OutFrame, f: impl FnOnce(&[u8], &mut BytesMut) -> R) -> R {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            let Scratch { encode, messages } = &mut *scratch;
            encode.clear();
            if encode.capacity() == 0 {
                encode.reserve(FIRST_CAPACITY);
            }
            append_server_frame(frame.seq, frame.ack, &frame.body, encode);
            let out = f(encode, messages);
            if encode.capacity() > KEPT_CAPACITY {
                *encode = Vec::new();
            }
            out
        }
        Err(_) => f(&server_frame_to_vec(frame.seq, frame.ack, &frame.body), &mut BytesMut::new()),
    })
}

/// The frame's protobuf bytes as one WebSocket message's payload.
pub(crate) fn frame_message(frame: &OutFrame) -> Bytes {
    with_encoded(frame, |encoded, messages| {
        if encoded.len() > KEPT_CAPACITY {
            return Bytes::copy_from_slice(encoded);
        }
        if messages.capacity() < encoded.len() {
            // Taken back whole when every message cut from it is gone; else a new one.
            messages.reserve(encoded.len().max(FIRST_CAPACITY));
        }
        messages.extend_from_slice(encoded);
        messages.split().freeze()
    })
}

/// Writes the frame's protobuf bytes into `dst` (gRPC's encode buffer).
pub(crate) fn put_frame(frame: &OutFrame, dst: &mut impl BufMut) {
    with_encoded(frame, |encoded, _| dst.put_slice(encoded));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use callplus_session::{EndReason, Event, ServerBody, ServerFrame};

    use super::*;

    fn frame(seq: u64, message: &str) -> OutFrame {
        let kicked = Event::Kicked { reason: EndReason::Hangup, message: message.to_owned() };
        OutFrame::from(ServerFrame { seq, ack: 3, body: ServerBody::Event(kicked) })
    }

    fn expected(frame: &OutFrame) -> Vec<u8> {
        server_frame_to_vec(frame.seq, frame.ack, &frame.body)
    }

    #[test]
    fn messages_hold_each_frames_bytes_whether_or_not_earlier_ones_are_still_held() {
        let frames: Vec<OutFrame> =
            (1..200).map(|i| frame(i, &"x".repeat(usize::try_from(i).unwrap() * 7))).collect();
        // Every other message kept: the buffer cannot be taken back while they live.
        let mut held = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let message = frame_message(f);
            assert_eq!(message.as_ref(), expected(f).as_slice(), "frame {i}");
            if i % 2 == 0 {
                held.push((i, message));
            }
        }
        for (i, message) in held {
            assert_eq!(message.as_ref(), expected(&frames[i]).as_slice(), "held frame {i}");
        }
        let big = frame(7, &"y".repeat(KEPT_CAPACITY * 2));
        assert_eq!(frame_message(&big).as_ref(), expected(&big).as_slice());
        let mut grpc = BytesMut::new();
        put_frame(&big, &mut grpc);
        put_frame(&frames[0], &mut grpc);
        assert_eq!(grpc.as_ref(), [expected(&big), expected(&frames[0])].concat().as_slice());
    }

    /// Encoding re-entered on the same thread (nothing does it today) gets a buffer of its own
    /// rather than a panic from the scratch's `RefCell`, and neither frame is garbled.
    #[test]
    fn a_frame_encoded_while_the_scratch_is_in_use_gets_a_buffer_of_its_own() {
        let outer = frame(1, "outer");
        let inner = frame(2, "inner");
        let (outer_bytes, inner_message, inner_grpc) = with_encoded(&outer, |encoded, _| {
            let mut grpc = BytesMut::new();
            put_frame(&inner, &mut grpc);
            (encoded.to_vec(), frame_message(&inner), grpc)
        });
        assert_eq!(outer_bytes, expected(&outer));
        assert_eq!(inner_message.as_ref(), expected(&inner).as_slice());
        assert_eq!(inner_grpc.as_ref(), expected(&inner).as_slice());
        // The scratch is free again afterwards.
        assert_eq!(frame_message(&inner).as_ref(), expected(&inner).as_slice());
    }

    /// Messages dropped as the transport sends them (as tungstenite does) leave their room to
    /// the next ones: each message is cut right after the one before, in one buffer, and past
    /// its end the next starts where the first one did.
    #[test]
    fn the_room_of_sent_messages_is_used_again() {
        let f = frame(1, &"z".repeat(500));
        let len = expected(&f).len();
        let first = frame_message(&f);
        let start = first.as_ptr() as usize;
        let (mut previous, mut adjacent, mut wrapped) = (start, 0, 0);
        drop(first);
        for _ in 0..(2 * FIRST_CAPACITY / len) {
            let message = frame_message(&f);
            assert_eq!(message.as_ref(), expected(&f).as_slice());
            let at = message.as_ptr() as usize;
            if at == previous + len {
                adjacent += 1;
            } else {
                assert_eq!(at, start, "a message neither follows the one before nor starts the buffer");
                wrapped += 1;
            }
            previous = at;
        }
        assert!(
            adjacent > 0 && wrapped > 0,
            "{adjacent} messages cut next to the one before, {wrapped} wrapped"
        );
    }
}
