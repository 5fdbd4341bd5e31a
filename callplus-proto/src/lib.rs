//! The callplus signalling schema.
//!
//! The protocol is defined in `proto/callplus/v1/*.proto` (documented there, field by field) and
//! compiled at build time with `protox`, so no `protoc` is needed. Messages are plain `prost`
//! types; the tonic service and client stubs are behind the `grpc` feature so the sans-IO core
//! can use the messages without an async runtime.
//!
//! ```
//! use callplus_proto::v1::{ClientFrame, client_frame::Body, Ping};
//! use prost::Message;
//!
//! let frame = ClientFrame { seq: 0, ack: 3, request_id: 0, body: Some(Body::Ping(Ping {})) };
//! let bytes = frame.encode_to_vec();
//! assert_eq!(ClientFrame::decode(bytes.as_slice()).ok(), Some(frame));
//! ```

#[cfg(feature = "grpc")]
pub mod codec;

/// Version 1 of the protocol (`package callplus.v1`).
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/callplus.v1.rs"));
}

pub use prost;
