//! The media relay: a selective forwarding unit running as its own process (`callplus sfu`),
//! driven by a signalling server over one gRPC stream (`MediaRelay.Attach`, see
//! `proto/callplus/v1/relay.proto`).
//!
//! [`node`] is the SFU process's side; the signalling server's side is the remote mode of
//! `server::media_relay`. Both hold the same media secret ([`secret`]): the SFU checks with it
//! the media tokens the switchboard signs, and the attaching server proves with it that it may
//! drive the SFU.

pub mod node;
pub mod secret;
pub(crate) mod wire;

pub use node::{SfuNode, SfuNodeError, SfuNodeOptions};
pub use secret::{MediaSecret, SecretError};

/// An SFU process for a signalling server to drive instead of its in-process SFU
/// (`callplus serve --sfu-url`).
#[derive(Debug, Clone)]
pub struct RemoteSfu {
    /// The SFU process's relay URL: `http://host:port`, or `https://host:port` when the SFU
    /// presents a certificate (`callplus sfu --tls-cert`).
    pub url: String,
    /// The media secret shared with it.
    pub secret: MediaSecret,
    /// PEM certificates trusted for an `https://` URL: the CA that signed the SFU's
    /// certificate, or that certificate itself when self-signed.
    pub tls_ca_pem: Option<Vec<u8>>,
}
