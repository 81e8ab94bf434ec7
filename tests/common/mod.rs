//! Helpers shared by the integration tests: real servers, peers and processes on
//! 127.0.0.1, each cleaned up by a Drop guard.
#![allow(dead_code)]

pub mod bae;
pub mod chaos;
pub mod hostile;
pub mod proxy;
pub mod s3;
pub mod swarm;
