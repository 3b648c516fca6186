//! The manager link wire protocol: JSON-RPC 2.0 frames, the hello handshake and the session
//! rules the manager applies.
//!
//! Everything here is pure (no I/O, no clock reads, no randomness): the gateway and the manager
//! feed it text and events and act on what it returns, which keeps the rules testable event by
//! event.
#![forbid(unsafe_code)]

mod hello;
mod jsonrpc;
mod session;

pub use hello::{method, to_value, Hello, HelloAccepted, NodeInfo, NodesUpdate, Role, MAX_ID_LEN};
pub use jsonrpc::{
    decode, encode, parse_params, DecodeError, Frame, Id, Notification, Request, Response,
    RpcError, Version, CLOSE_MESSAGE_TOO_BIG, DEFAULT_MAX_FRAME_LEN, INTERNAL_ERROR,
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_ALLOWED, PARSE_ERROR, SESSION_REFUSED,
};
pub use session::{ClosedSession, ConnId, HelloDecision, LiveSession, SessionTable};
