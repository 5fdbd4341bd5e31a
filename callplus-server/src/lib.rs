//! The callplus signalling server: the gRPC service and its driver around the sans-IO
//! switchboard, storage (SQLite), tokens, push webhooks, the admin API and metrics.
//!
//! A device-side library has no use for any of this: apps link `callplus-client` (Rust) or
//! `callplus-ffi` (C), which carry no server code. The `callplus` binary (`callplus-signal`)
//! runs this server with `callplus serve`.
//!
//! ```no_run
//! use callplus_server::server::Server;
//! # async fn run() -> Result<(), callplus_server::server::ServerError> {
//! let server = Server::builder().listen("127.0.0.1:7700").in_memory().start().await?;
//! println!("devices connect to http://{}", server.grpc_addr());
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod relay;
pub mod server;
pub mod storage;
pub mod token;
