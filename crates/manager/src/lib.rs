//! The manager role: accepts gateway clusters over mutual-TLS WebSocket and runs services on them.
#![forbid(unsafe_code)]
