//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

pub mod postgres;
pub mod process;
pub mod redis;
