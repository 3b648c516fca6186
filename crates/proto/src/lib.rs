//! The manager link wire protocol: JSON-RPC 2.0 frames, the hello handshake and session rules.
#![forbid(unsafe_code)]
