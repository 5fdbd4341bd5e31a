//! A transport's inbound side written as one poll function, and what each needs around it.
//!
//! Both transports read their device the same way: cut the bytes the socket or HTTP/2 stream
//! delivers into messages, decode each as a `ClientFrame`, and stop for good after the first
//! `Closed` or `Broken`. A transport writes only the cutting ([`PollFrames`]); [`Frames`] adds
//! the rest, for the connection task (its `next`) and for the driver, which polls the same
//! value as a stream once the Hello is authenticated.

use std::pin::Pin;
use std::task::{Context, Poll};

use callplus_proto::v1 as pb;
use callplus_session::{ClientFrame, Code, Error};
use futures_util::Stream;
use prost::Message as _;
use prost::bytes::BytesMut;

use super::connection::{Inbound, InboundFrames};
use super::driver_reads::FrameStream;

/// A transport's inbound side: the next frame, or the end.
pub(crate) trait PollFrames: Send + Unpin + 'static {
    /// The next frame, `Closed` or `Broken`, once ready. Not called again after an end.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Inbound>;
}

/// A transport's frames, ending after the first `Closed` or `Broken`.
pub(crate) struct Frames<T> {
    inner: T,
    ended: bool,
}

impl<T: PollFrames> Frames<T> {
    /// The frames `inner` reads.
    pub(crate) fn new(inner: T) -> Frames<T> {
        Frames { inner, ended: false }
    }

    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        if self.ended {
            return Poll::Ready(Inbound::Closed);
        }
        let inbound = futures_util::ready!(self.inner.poll_frame(cx));
        self.ended = !matches!(inbound, Inbound::Frame(_) | Inbound::Invalid(_));
        Poll::Ready(inbound)
    }
}

impl<T: PollFrames> Stream for Frames<T> {
    type Item = Inbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        this.poll_inbound(cx).map(Some)
    }
}

impl<T: PollFrames> InboundFrames for Frames<T> {
    fn into_frames(self) -> FrameStream {
        Box::pin(self)
    }

    async fn next(&mut self) -> Inbound {
        std::future::poll_fn(|cx| self.poll_inbound(cx)).await
    }
}

/// A message larger than this, once taken from a read buffer, takes the buffer's memory with
/// it: see [`release_after`].
const KEPT_READ_BYTES: usize = 8 * 1024;

/// Call after splitting a message of `taken` bytes off the front of `buffer`.
///
/// The message and what is left of the buffer share one allocation, and once the message is
/// dropped the buffer reuses all of it: a connection would keep the room of the largest
/// message it ever received. After a large message the rest (the start of the next frame, if
/// any) is copied into a buffer of its own, so the large allocation goes with the message.
pub(crate) fn release_after(buffer: &mut BytesMut, taken: usize) {
    if taken > KEPT_READ_BYTES {
        *buffer = BytesMut::from(&buffer[..]);
    }
}

/// A message's bytes as the `ClientFrame` they must be; `what` names the message for the
/// device ("a binary message", "a gRPC message").
pub(crate) fn decode_client_frame(message: &[u8], what: &str) -> Inbound {
    match pb::ClientFrame::decode(message) {
        Ok(frame) => match ClientFrame::try_from(frame) {
            Ok(frame) => Inbound::Frame(Box::new(frame)),
            Err(invalid) => Inbound::Invalid(invalid),
        },
        Err(e) => {
            Inbound::Broken(Some(Error::new(Code::FrameInvalid, format!("{what} is not a ClientFrame: {e}"))))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::VecDeque;

    use futures_util::StreamExt;

    use super::*;

    /// Hands out what it was given, then counts the polls it should never get.
    struct Scripted {
        script: VecDeque<Inbound>,
        polls_after_the_end: usize,
    }

    impl PollFrames for Scripted {
        fn poll_frame(&mut self, _cx: &mut Context<'_>) -> Poll<Inbound> {
            match self.script.pop_front() {
                Some(inbound) => Poll::Ready(inbound),
                None => {
                    self.polls_after_the_end += 1;
                    Poll::Pending
                }
            }
        }
    }

    fn frame(request_id: u64) -> Inbound {
        let body = Some(pb::client_frame::Body::Ping(pb::Ping {}));
        decode_client_frame(
            &pb::ClientFrame { request_id, body, ..Default::default() }.encode_to_vec(),
            "a message",
        )
    }

    /// A protobuf frame that is not a valid `ClientFrame` (here: no body).
    fn invalid(request_id: u64) -> Inbound {
        decode_client_frame(
            &pb::ClientFrame { request_id, ..Default::default() }.encode_to_vec(),
            "a message",
        )
    }

    #[tokio::test]
    async fn the_frames_end_at_the_first_end_and_the_transport_is_not_read_past_it() {
        let error = Error::new(Code::FrameInvalid, "cut");
        let script = VecDeque::from([frame(1), invalid(5), frame(6), Inbound::Broken(Some(error)), frame(2)]);
        let mut frames = Frames::new(Scripted { script, polls_after_the_end: 0 });
        assert!(matches!(InboundFrames::next(&mut frames).await, Inbound::Frame(f) if f.request_id == 1));
        // An invalid frame is answered, not an end: the frames go on after it.
        assert!(matches!(
            InboundFrames::next(&mut frames).await,
            Inbound::Invalid(e) if e.request_id == 5 && e.error.code == Code::FrameInvalid
        ));
        assert!(matches!(InboundFrames::next(&mut frames).await, Inbound::Frame(f) if f.request_id == 6));
        assert!(
            matches!(StreamExt::next(&mut frames).await, Some(Inbound::Broken(Some(e))) if e.message == "cut")
        );
        assert!(StreamExt::next(&mut frames).await.is_none(), "the stream ends after Broken");
        assert!(matches!(InboundFrames::next(&mut frames).await, Inbound::Closed));
        assert_eq!(frames.inner.polls_after_the_end, 0);
        assert_eq!(frames.inner.script.len(), 1, "the frame after the end is never read");
    }

    /// After a large message the buffer's later growth starts from its own small allocation;
    /// after a small one it keeps reusing the shared one.
    #[test]
    fn a_large_message_takes_the_buffers_memory_with_it() {
        for (size, kept) in [(100_000usize, false), (1_000, true)] {
            let mut buffer = BytesMut::new();
            buffer.extend_from_slice(&vec![1; size]);
            buffer.extend_from_slice(b"next");
            let message = buffer.split_to(size);
            release_after(&mut buffer, size);
            drop(message);
            assert_eq!(&buffer[..], b"next");
            buffer.reserve(64);
            assert_eq!(
                buffer.capacity() >= size,
                kept,
                "after a message of {size} bytes: {}",
                buffer.capacity()
            );
        }
    }

    #[test]
    fn undecodable_bytes_are_frame_invalid_and_say_what_they_were() {
        let Inbound::Broken(Some(error)) = decode_client_frame(&[0xff; 8], "a binary message") else {
            panic!("broken with a reason")
        };
        assert_eq!(error.code, Code::FrameInvalid);
        assert!(error.message.starts_with("a binary message is not a ClientFrame"), "{}", error.message);
    }
}
