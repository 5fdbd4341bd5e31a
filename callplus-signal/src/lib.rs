//! The callplus network layer: the `callplus` command's subcommands ([`cli`]), and, re-exported
//! under their usual paths, the server ([`server`], [`storage`], [`token`] from
//! `callplus-server`) and the async client ([`client`], from `callplus-client`).
//!
//! Apps link only the client side (`callplus-client`, or `callplus-ffi` from C); the server
//! crate and the command line stay out of them.

pub mod cli;

pub use callplus_client as client;
pub use callplus_server::{cluster, relay, server, storage, token};
