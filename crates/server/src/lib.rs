//! The core node role: operator API, manager link and (with HA) leadership.
#![forbid(unsafe_code)]
