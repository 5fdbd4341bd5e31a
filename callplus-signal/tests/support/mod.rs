//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

pub mod cluster;
#[cfg(feature = "media")]
pub mod media;
pub mod postgres;
pub mod process;
pub mod redis;
