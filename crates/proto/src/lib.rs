//! The manager link wire protocol: JSON-RPC 2.0 frames, the hello handshake and the session
//! rules the manager applies.
//!
//! Everything here is pure (no I/O, no clock reads, no randomness): the gateway and the manager
//! feed it text and events and act on what it returns, which keeps the rules testable event by
//! event.
//!
//! On the wire: one WebSocket text frame holds one JSON-RPC 2.0 object (batches are refused).
//! A receiver calls [`decode`] with its frame limit ([`DEFAULT_MAX_FRAME_LEN`]); on error it
//! closes with [`DecodeError::close_code`] when there is one (1009 for oversized frames),
//! otherwise sends [`DecodeError::to_response`] when there is one (−32700 / −32600), otherwise
//! (a malformed response) only logs. Unknown methods are answered with
//! [`RpcError::method_not_found`], bad params with [`RpcError::invalid_params`]. The gateway's
//! first frame is the [`method::HELLO`] request ([`Hello`]); the manager decides with
//! [`SessionTable::on_hello`] and answers [`HelloAccepted`] or an error with code
//! [`SESSION_REFUSED`] (session rules) or [`NOT_ALLOWED`] (certificate / cluster state) whose
//! message is the reason. Service runs and the service catalog are in [`ServiceRun`],
//! [`run_completed`] / [`run_failed`] (the family's `status` member) and [`ServicesUpdate`].
//!
//! Modules: `jsonrpc` (frames, decoding with limits, error codes), `hello` (method names, the
//! handshake, node membership), `services` (`service.run` and the catalog), `session` (the
//! manager's session rules as a pure state machine).
#![forbid(unsafe_code)]

mod hello;
mod jsonrpc;
mod services;
mod session;

pub use hello::{
    method, shown_name, to_value, Departed, Hello, HelloAccepted, NodeInfo, NodesUpdate, Role,
    ASSUMED_PEER_FRAME_LEN, MAX_ID_LEN, MAX_NAME_LEN,
};
pub use jsonrpc::{
    decode, encode, parse_params, DecodeError, Frame, Id, Notification, Request, Response,
    RpcError, Version, CLOSE_MESSAGE_TOO_BIG, DEFAULT_MAX_FRAME_LEN, INTERNAL_ERROR,
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_ALLOWED, PARSE_ERROR, RUN_FAILED,
    SERVICE_NOT_FOUND, SESSION_REFUSED, TIMED_OUT, UNAVAILABLE,
};
pub use services::{
    run_completed, run_failed, violations_data, ServiceEntry, ServiceRun, ServicesUpdate,
    MAX_SERVICES, MAX_SERVICE_NAME_LEN, MAX_TAGS, STATUS_COMPLETED, STATUS_ERROR,
};
pub use session::{
    ClosedSession, ConnId, HelloDecision, LiveSession, SessionTable, TermReset, MAX_TERM,
};
