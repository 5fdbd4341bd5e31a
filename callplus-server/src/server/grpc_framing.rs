//! gRPC's message framing over HTTP/2 (the "Length-Prefixed-Message" of the gRPC HTTP/2
//! protocol), without I/O: a flag byte, a four-byte big-endian length, the message.
//!
//! The signalling stream is the device port's only gRPC method, and it neither compresses nor
//! needs anything else of a general gRPC server; tonic's layers around it (its decoder's state
//! machine, its encoder's body, the codec's buffers) cost the signalling thread a part of each
//! call cycle (docs/performance.md, "The server frames gRPC messages itself"). So the stream's
//! messages are cut and written here, and hyper carries them.

use callplus_session::{Code, Error};
use prost::bytes::{Buf as _, BufMut as _, BytesMut};

use super::inbound_frames::release_after;

/// The bytes before each message: the compressed flag and the length.
const PREFIX: usize = 5;

/// Cuts a request body's bytes into messages.
///
/// Append what the body delivers to [`buffer`](Self::buffer), then take messages with
/// [`next_message`](Self::next_message) until it returns `Ok(None)`. An `Err` is final.
#[derive(Debug)]
pub(crate) struct MessageReader {
    buffer: BytesMut,
    max_message: usize,
}

impl MessageReader {
    /// A reader that refuses messages over `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> MessageReader {
        MessageReader { buffer: BytesMut::new(), max_message }
    }

    /// Where the body's bytes go.
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Whether part of a message is waiting for the rest.
    pub(crate) fn is_mid_message(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// The next whole message, or `Ok(None)` when the buffer holds none.
    ///
    /// # Errors
    /// `MESSAGE_TOO_LARGE` for a message over the limit (as soon as its length is read),
    /// `FRAME_INVALID` for a compressed message (no compression is ever negotiated).
    pub(crate) fn next_message(&mut self) -> Result<Option<BytesMut>, Error> {
        let Some(prefix) = self.buffer.get(..PREFIX) else { return Ok(None) };
        if prefix[0] != 0 {
            return Err(Error::new(
                Code::FrameInvalid,
                "a compressed gRPC message, and no compression was negotiated",
            ));
        }
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length > self.max_message {
            return Err(Error::new(
                Code::MessageTooLarge,
                format!("a gRPC message of {length} bytes; the limit is {}", self.max_message),
            ));
        }
        if self.buffer.len() < PREFIX + length {
            self.buffer.reserve(PREFIX + length - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(PREFIX);
        let message = self.buffer.split_to(length);
        release_after(&mut self.buffer, length);
        Ok(Some(message))
    }
}

/// Appends one uncompressed message that `encode` writes into `out`, behind its prefix.
pub(crate) fn append_message(out: &mut BytesMut, encode: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_bytes(0, PREFIX);
    encode(out);
    let length = out.len() - start - PREFIX;
    // A server frame is far below 4 GiB (it is bounded by the frame limits of the switchboard).
    let length = u32::try_from(length).unwrap_or(u32::MAX);
    out[start + 1..start + PREFIX].copy_from_slice(&length.to_be_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        append_message(&mut out, |out| out.extend_from_slice(payload));
        out.to_vec()
    }

    #[test]
    fn a_message_is_its_length_then_its_bytes() {
        assert_eq!(message(b"abc"), [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(message(b""), [0, 0, 0, 0, 0]);
        assert_eq!(message(&[7; 300])[..5], [0, 0, 0, 1, 44]);
    }

    #[test]
    fn messages_are_cut_whatever_the_chunks() {
        let mut wire = message(b"first");
        wire.extend(message(b""));
        wire.extend(message(&[9; 1000]));
        let mut reader = MessageReader::new(4096);
        let mut got = Vec::new();
        for byte in wire {
            reader.buffer().extend_from_slice(&[byte]);
            while let Some(message) = reader.next_message().unwrap() {
                got.push(message.to_vec());
            }
        }
        assert_eq!(got, [b"first".to_vec(), Vec::new(), vec![9; 1000]]);
        assert!(!reader.is_mid_message());
    }

    #[test]
    fn an_oversized_message_is_refused_from_its_prefix() {
        let mut reader = MessageReader::new(100);
        reader.buffer().extend_from_slice(&[0, 0, 0, 0, 101]);
        assert_eq!(reader.next_message().unwrap_err().code, Code::MessageTooLarge);
        let mut reader = MessageReader::new(100);
        reader.buffer().extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(reader.next_message().unwrap_err().code, Code::MessageTooLarge);
    }

    /// A connection does not keep the room of the largest message it ever received.
    #[test]
    fn the_room_of_a_large_message_is_given_back_once_it_is_taken() {
        let mut reader = MessageReader::new(1 << 20);
        reader.buffer().extend_from_slice(&message(&[5; 100_000]));
        assert_eq!(reader.next_message().unwrap().map(|m| m.len()), Some(100_000));
        reader.buffer().reserve(512);
        assert!(reader.buffer().capacity() <= 8 * 1024, "{} bytes kept", reader.buffer().capacity());
        reader.buffer().extend_from_slice(&message(b"next"));
        assert_eq!(reader.next_message().unwrap().as_deref(), Some(&b"next"[..]));
    }

    #[test]
    fn a_compressed_message_is_refused() {
        let mut reader = MessageReader::new(100);
        reader.buffer().extend_from_slice(&[1, 0, 0, 0, 1, 0]);
        assert_eq!(reader.next_message().unwrap_err().code, Code::FrameInvalid);
    }

    #[test]
    fn a_part_of_a_message_waits_for_the_rest() {
        let mut reader = MessageReader::new(100);
        reader.buffer().extend_from_slice(&message(b"whole")[..7]);
        assert_eq!(reader.next_message().unwrap(), None);
        assert!(reader.is_mid_message());
    }

    proptest! {
        /// Messages written by `append_message` come back whole, in order, whatever sizes the
        /// body's chunks have.
        #[test]
        fn written_messages_read_back(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            chunk in 1usize..97,
        ) {
            let mut wire = BytesMut::new();
            for m in &messages {
                append_message(&mut wire, |out| out.extend_from_slice(m));
            }
            let mut reader = MessageReader::new(300);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                reader.buffer().extend_from_slice(piece);
                while let Some(message) = reader.next_message().unwrap() {
                    got.push(message.to_vec());
                }
            }
            prop_assert_eq!(got, messages);
        }
    }
}
