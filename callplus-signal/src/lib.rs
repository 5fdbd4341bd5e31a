//! The callplus network layer.

pub mod storage;
pub mod token;
