//! The callplus network layer.

pub mod cli;
pub mod client;
pub mod server;
pub mod storage;
pub mod token;

/// An error and its sources on one line (`outer: inner: root`): transport errors (tonic,
/// hyper, rustls) keep the useful part, such as "invalid peer certificate", in a source.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
