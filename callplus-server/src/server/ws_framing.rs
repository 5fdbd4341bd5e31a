//! WebSocket framing (RFC 6455) on the server's side of a connection, without I/O.
//!
//! The device port used a general WebSocket stack (axum's socket over tokio-tungstenite) whose
//! layers — a split lock, a waker proxy per poll, a message type converted twice, a copy into
//! its own write buffer — cost the signalling thread about a tenth of its instructions per call
//! cycle (docs/performance.md, "The server frames WebSocket messages itself"). The server's use
//! is narrow: one binary message per protobuf frame each way, no extensions. So this module
//! does only that. tungstenite's frame header codec ([`FrameHeader`]) parses the client's
//! headers; a server's header (final, unmasked, one of three length forms) is written here:
//!
//! - [`MessageReader`] takes the bytes a socket delivered and yields whole messages: it
//!   unmasks, reassembles fragments, and refuses what a server must refuse (unmasked client
//!   frames, reserved bits, unknown opcodes, fragmented or oversized control frames,
//!   continuations out of place) and messages over the size limit, as soon as their header is
//!   read;
//! - [`append_binary`] and the other `append_` functions append one unmasked server frame to an
//!   output buffer, where a connection's frames of one drain wait for a single write.

use std::io::Cursor;

use callplus_session::{Code, Error};
use prost::bytes::{Buf as _, Bytes, BytesMut};

use super::inbound_frames::release_after;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// The most a control frame (close, ping, pong) may carry (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// The status code of a normal closure, sent in the server's Close frame.
pub(crate) const CLOSE_NORMAL: u16 = 1000;

/// What a client sent, once a whole message or control frame has arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WsEvent {
    /// A whole binary message, unmasked.
    Binary(BytesMut),
    /// A text message (its content is not kept: the protocol does not accept text).
    Text,
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Bytes),
    /// The client closes the connection.
    Close,
}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Fragments {
    text: bool,
    payload: BytesMut,
}

/// Turns the bytes read from a client into [`WsEvent`]s.
///
/// Read into [`buffer`](Self::buffer), then take events with [`next_event`](Self::next_event)
/// until it returns `Ok(None)`. An `Err` is final: the connection cannot be read past it.
#[derive(Debug)]
pub(crate) struct MessageReader {
    /// Bytes read and not yet taken as frames.
    buffer: BytesMut,
    /// The message whose first fragment arrived and whose last has not.
    fragments: Option<Fragments>,
    /// The largest message accepted, fragments together.
    max_message: usize,
    /// How many more bytes the frame at the front of `buffer` needs, once its header is read.
    wanted: usize,
}

impl MessageReader {
    /// A reader that refuses messages over `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> MessageReader {
        MessageReader { buffer: BytesMut::new(), fragments: None, max_message, wanted: 0 }
    }

    /// Where the socket's bytes go.
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// How many more bytes the frame begun in the buffer still needs (0 when unknown): a read
    /// can ask for that much at once.
    pub(crate) fn wanted(&self) -> usize {
        self.wanted
    }

    /// The next message or control frame, or `Ok(None)` when the buffer holds no whole frame.
    ///
    /// # Errors
    /// `MESSAGE_TOO_LARGE` for a message over the limit, `FRAME_INVALID` for anything RFC 6455
    /// does not allow a client to send.
    pub(crate) fn next_event(&mut self) -> Result<Option<WsEvent>, Error> {
        loop {
            let mut cursor = Cursor::new(&self.buffer[..]);
            let Some((header, length)) = FrameHeader::parse(&mut cursor).map_err(protocol_error)? else {
                self.wanted = 0;
                return Ok(None);
            };
            // A parsed header is 2 to 14 bytes.
            let header_len = cursor.position() as usize;
            let length = self.check(&header, length)?;
            let available = self.buffer.len() - header_len;
            if available < length {
                self.wanted = length - available;
                self.buffer.reserve(self.wanted);
                return Ok(None);
            }
            self.wanted = 0;
            self.buffer.advance(header_len);
            let mut payload = self.buffer.split_to(length);
            release_after(&mut self.buffer, length);
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            if let Some(event) = self.take(&header, payload)? {
                return Ok(Some(event));
            }
        }
    }

    /// Refuses a frame a server must not accept; returns its payload's length.
    fn check(&self, header: &FrameHeader, length: u64) -> Result<usize, Error> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(invalid("a reserved bit is set, and no extension was negotiated"));
        }
        if header.mask.is_none() {
            return Err(invalid("a client's frames must be masked"));
        }
        match header.opcode {
            OpCode::Control(_) => {
                if !header.is_final {
                    return Err(invalid("a control frame must not be fragmented"));
                }
                if length > MAX_CONTROL_PAYLOAD {
                    return Err(invalid("a control frame carries at most 125 bytes"));
                }
            }
            OpCode::Data(Data::Continue) if self.fragments.is_none() => {
                return Err(invalid("a continuation frame with no message to continue"));
            }
            OpCode::Data(Data::Text | Data::Binary) if self.fragments.is_some() => {
                return Err(invalid("a new message began before the last one was finished"));
            }
            OpCode::Data(_) => {}
        }
        let so_far = self.fragments.as_ref().map_or(0, |f| f.payload.len());
        let total = u64::try_from(so_far).map_err(|_| too_large(length))?.saturating_add(length);
        if total > u64::try_from(self.max_message).unwrap_or(u64::MAX) {
            return Err(too_large(total));
        }
        usize::try_from(length).map_err(|_| too_large(length))
    }

    /// Takes a checked, unmasked frame: an event if it completes one.
    fn take(&mut self, header: &FrameHeader, payload: BytesMut) -> Result<Option<WsEvent>, Error> {
        let event = match header.opcode {
            OpCode::Control(Control::Close) => WsEvent::Close,
            OpCode::Control(Control::Ping) => WsEvent::Ping(payload.freeze()),
            OpCode::Control(Control::Pong) => return Ok(None),
            OpCode::Control(Control::Reserved(op)) | OpCode::Data(Data::Reserved(op)) => {
                return Err(invalid(&format!("unknown opcode {op}")));
            }
            OpCode::Data(data) => {
                let fragments = match (data, self.fragments.take()) {
                    (Data::Continue, Some(mut fragments)) => {
                        fragments.payload.extend_from_slice(&payload);
                        fragments
                    }
                    (Data::Text, None) => Fragments { text: true, payload },
                    (Data::Binary, None) => Fragments { text: false, payload },
                    _ => return Err(invalid("a continuation frame out of place")),
                };
                if !header.is_final {
                    self.fragments = Some(fragments);
                    return Ok(None);
                }
                if fragments.text { WsEvent::Text } else { WsEvent::Binary(fragments.payload) }
            }
        };
        Ok(Some(event))
    }
}

/// The first header byte of a final frame with `opcode` (no reserved bits).
fn first_byte(opcode: OpCode) -> u8 {
    0x80 | u8::from(opcode)
}

/// Appends one unmasked, final server frame to `out`.
pub(crate) fn append_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let len = payload.len();
    out.reserve(10 + len);
    out.push(first_byte(opcode));
    match u16::try_from(len) {
        Ok(short) if short < 126 => out.push(short as u8),
        Ok(medium) => {
            out.push(126);
            out.extend_from_slice(&medium.to_be_bytes());
        }
        Err(_) => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a binary message.
pub(crate) fn append_binary(out: &mut Vec<u8>, payload: &[u8]) {
    append_frame(out, OpCode::Data(Data::Binary), payload);
}

/// Appends the answer to a ping.
pub(crate) fn append_pong(out: &mut Vec<u8>, payload: &[u8]) {
    append_frame(out, OpCode::Control(Control::Pong), payload);
}

/// Appends a Close frame with `code` and no reason.
pub(crate) fn append_close(out: &mut Vec<u8>, code: u16) {
    append_frame(out, OpCode::Control(Control::Close), &code.to_be_bytes());
}

/// XORs a client frame's payload with its mask (RFC 6455, 5.3), eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so of 4: the mask starts over.
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

fn invalid(message: &str) -> Error {
    Error::new(Code::FrameInvalid, format!("WebSocket protocol error: {message}"))
}

fn protocol_error(error: tokio_tungstenite::tungstenite::Error) -> Error {
    invalid(&error.to_string())
}

fn too_large(length: u64) -> Error {
    Error::new(Code::MessageTooLarge, format!("a WebSocket message of {length} bytes is over the limit"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client's frame: header, mask, masked payload.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65_536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn reader_with(bytes: &[u8]) -> MessageReader {
        let mut reader = MessageReader::new(1024);
        reader.buffer().extend_from_slice(bytes);
        reader
    }

    fn error_of(bytes: &[u8]) -> Error {
        reader_with(bytes).next_event().expect_err("refused")
    }

    #[test]
    fn a_masked_binary_message_is_unmasked() {
        let payload: Vec<u8> = (0..=200).collect();
        let mut reader = reader_with(&client_frame(true, 2, &payload));
        assert_eq!(reader.next_event().unwrap(), Some(WsEvent::Binary(BytesMut::from(&payload[..]))));
        assert_eq!(reader.next_event().unwrap(), None);
    }

    #[test]
    fn a_frame_split_across_reads_waits_for_its_last_byte() {
        let frame = client_frame(true, 2, b"hello, switchboard");
        let mut reader = MessageReader::new(1024);
        for (i, byte) in frame.iter().enumerate() {
            assert_eq!(reader.next_event().unwrap(), None, "incomplete after {i} bytes");
            reader.buffer().extend_from_slice(&[*byte]);
        }
        assert_eq!(
            reader.next_event().unwrap(),
            Some(WsEvent::Binary(BytesMut::from(&b"hello, switchboard"[..])))
        );
    }

    #[test]
    fn the_bytes_a_frame_still_needs_are_known_once_its_header_is_read() {
        let frame = client_frame(true, 2, &[7; 300]);
        let mut reader = reader_with(&frame[..10]);
        assert_eq!(reader.next_event().unwrap(), None);
        assert_eq!(reader.wanted(), frame.len() - 10);
    }

    #[test]
    fn fragments_are_reassembled_and_pings_between_them_are_answered() {
        let mut bytes = client_frame(false, 2, b"one ");
        bytes.extend(client_frame(true, 9, b"are you there"));
        bytes.extend(client_frame(false, 0, b"two "));
        bytes.extend(client_frame(true, 10, b"unsolicited pong"));
        bytes.extend(client_frame(true, 0, b"three"));
        let mut reader = reader_with(&bytes);
        assert_eq!(reader.next_event().unwrap(), Some(WsEvent::Ping(Bytes::from_static(b"are you there"))));
        assert_eq!(
            reader.next_event().unwrap(),
            Some(WsEvent::Binary(BytesMut::from(&b"one two three"[..])))
        );
        assert_eq!(reader.next_event().unwrap(), None);
    }

    #[test]
    fn text_and_close_are_reported() {
        let mut bytes = client_frame(true, 1, "héllo".as_bytes());
        bytes.extend(client_frame(true, 8, &CLOSE_NORMAL.to_be_bytes()));
        let mut reader = reader_with(&bytes);
        assert_eq!(reader.next_event().unwrap(), Some(WsEvent::Text));
        assert_eq!(reader.next_event().unwrap(), Some(WsEvent::Close));
    }

    /// A connection does not keep the room of the largest message it ever received.
    #[test]
    fn the_room_of_a_large_message_is_given_back_once_it_is_taken() {
        let mut reader = MessageReader::new(1 << 20);
        reader.buffer().extend_from_slice(&client_frame(true, 2, &[5; 100_000]));
        assert!(matches!(reader.next_event().unwrap(), Some(WsEvent::Binary(m)) if m.len() == 100_000));
        reader.buffer().reserve(512);
        assert!(reader.buffer().capacity() <= 8 * 1024, "{} bytes kept", reader.buffer().capacity());
        reader.buffer().extend_from_slice(&client_frame(true, 2, b"next"));
        assert_eq!(reader.next_event().unwrap(), Some(WsEvent::Binary(BytesMut::from(&b"next"[..]))));
    }

    #[test]
    fn an_unmasked_client_frame_is_refused() {
        let error = error_of(&[0x82, 0x02, 0x08, 0x01]);
        assert_eq!(error.code, Code::FrameInvalid);
        assert!(error.message.contains("masked"), "{}", error.message);
    }

    #[test]
    fn reserved_bits_and_opcodes_are_refused() {
        let mut rsv = client_frame(true, 2, b"x");
        rsv[0] |= 0x40;
        assert_eq!(error_of(&rsv).code, Code::FrameInvalid);
        assert_eq!(error_of(&client_frame(true, 3, b"x")).code, Code::FrameInvalid);
        assert_eq!(error_of(&client_frame(true, 0xb, b"x")).code, Code::FrameInvalid);
    }

    #[test]
    fn control_frames_must_be_short_and_whole() {
        assert_eq!(error_of(&client_frame(false, 9, b"x")).code, Code::FrameInvalid);
        assert_eq!(error_of(&client_frame(true, 9, &[0; 126])).code, Code::FrameInvalid);
    }

    #[test]
    fn continuations_out_of_place_are_refused() {
        assert_eq!(error_of(&client_frame(true, 0, b"x")).code, Code::FrameInvalid);
        let mut bytes = client_frame(false, 2, b"x");
        bytes.extend(client_frame(true, 2, b"y"));
        let error = error_of(&bytes);
        assert_eq!(error.code, Code::FrameInvalid);
        assert!(error.message.contains("before the last one was finished"), "{}", error.message);
    }

    #[test]
    fn an_oversized_message_is_refused_from_its_header() {
        // Only the header: the 2,000 bytes it announces never arrive.
        let frame = client_frame(true, 2, &[0; 2000]);
        let error = error_of(&frame[..8]);
        assert_eq!(error.code, Code::MessageTooLarge);
        // Fragments count together.
        let mut bytes = client_frame(false, 2, &[0; 600]);
        bytes.extend(&client_frame(true, 0, &[0; 600])[..8]);
        assert_eq!(error_of(&bytes).code, Code::MessageTooLarge);
        // A 64-bit length with its top bit set.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(error_of(&huge).code, Code::MessageTooLarge);
    }

    #[test]
    fn server_frames_are_unmasked_with_the_shortest_length() {
        for (len, header) in [(0usize, 2usize), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            append_binary(&mut out, &vec![9; len]);
            assert_eq!(out.len(), header + len, "payload of {len}");
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0, "unmasked");
            let (parsed, length) = FrameHeader::parse(&mut Cursor::new(&out)).unwrap().unwrap();
            assert_eq!(length, len as u64);
            assert!(parsed.is_final && parsed.mask.is_none());
        }
        let mut out = Vec::new();
        append_close(&mut out, CLOSE_NORMAL);
        append_pong(&mut out, b"p");
        assert_eq!(out, [0x88, 2, 0x03, 0xe8, 0x8a, 1, b'p']);
    }

    proptest! {
        /// Whatever a client splits a message into and however the bytes arrive, the reader
        /// yields the message whole, and nothing else.
        #[test]
        fn any_fragmentation_and_any_read_sizes_give_the_message_back(
            message in proptest::collection::vec(any::<u8>(), 0..700),
            cuts in proptest::collection::vec(0usize..700, 0..5),
            reads in proptest::collection::vec(1usize..64, 1..20),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < message.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut bounds = vec![0];
            bounds.extend(cuts);
            bounds.push(message.len());
            let mut wire = Vec::new();
            for (i, pair) in bounds.windows(2).enumerate() {
                let opcode = if i == 0 { 2 } else { 0 };
                wire.extend(client_frame(pair[1] == message.len(), opcode, &message[pair[0]..pair[1]]));
            }
            let mut reader = MessageReader::new(1024);
            let mut events = Vec::new();
            let mut at = 0;
            for read in reads.iter().cycle() {
                if at == wire.len() {
                    break;
                }
                let end = (at + read).min(wire.len());
                reader.buffer().extend_from_slice(&wire[at..end]);
                at = end;
                while let Some(event) = reader.next_event().unwrap() {
                    events.push(event);
                }
            }
            prop_assert_eq!(events, vec![WsEvent::Binary(BytesMut::from(&message[..]))]);
        }

        /// Whatever bytes arrive, the reader yields events or one error, never panics, and
        /// never yields a message over the limit.
        #[test]
        fn arbitrary_bytes_give_events_or_an_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            read in 1usize..300,
        ) {
            let mut reader = MessageReader::new(1024);
            'feed: for chunk in bytes.chunks(read) {
                reader.buffer().extend_from_slice(chunk);
                loop {
                    match reader.next_event() {
                        Ok(Some(WsEvent::Binary(message))) => prop_assert!(message.len() <= 1024),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(error) => {
                            prop_assert!(matches!(error.code, Code::FrameInvalid | Code::MessageTooLarge));
                            break 'feed;
                        }
                    }
                }
            }
        }

        #[test]
        fn unmasking_undoes_masking(payload in proptest::collection::vec(any::<u8>(), 0..100), mask: [u8; 4]) {
            let mut masked: Vec<u8> = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            unmask(&mut masked, mask);
            prop_assert_eq!(masked, payload);
        }
    }
}
