//! Exit codes, in the sysexits tradition so scripts can tell a usage mistake from an outage:
//! 0 success, 1 failure, 64 bad usage or configuration, 69 a service we depend on is
//! unavailable, 74 an I/O error, 130 forced exit on a second signal.

use std::fmt;

pub const USAGE: u8 = 64;
pub const FAILURE: u8 = 1;

/// An error at the binary edge: the message a user can act on, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: impl TryInto<u8>, message: impl fmt::Display) -> Self {
        Failure {
            code: code.try_into().unwrap_or(FAILURE),
            message: message.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(FAILURE, format!("{e:#}"))
    }
}

impl From<autogate_config::ConfigError> for Failure {
    fn from(e: autogate_config::ConfigError) -> Self {
        Failure::new(e.exit_code(), e)
    }
}
