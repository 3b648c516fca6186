//! JSON-RPC 2.0 frames as they travel over the manager link (one text WebSocket frame = one
//! JSON-RPC object), with a decoder that classifies every bad input as the JSON-RPC error the
//! peer should get back.
//!
//! The decoder works on a parsed `serde_json::Value` rather than on derived structs so that it
//! can tell "not JSON" (−32700) from "JSON but not a valid request" (−32600) and still recover the
//! `id` of a malformed request to answer it. Batches (JSON arrays) are refused: neither side of
//! the link sends them, and accepting them would multiply the work one frame can cause.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Standard JSON-RPC error code: the frame is not valid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Standard JSON-RPC error code: valid JSON, but not a valid JSON-RPC object.
pub const INVALID_REQUEST: i64 = -32600;
/// Standard JSON-RPC error code: the method does not exist.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Standard JSON-RPC error code: the params do not fit the method.
pub const INVALID_PARAMS: i64 = -32602;
/// Standard JSON-RPC error code: the callee failed.
pub const INTERNAL_ERROR: i64 = -32603;
/// autogate: the manager refused a `hello` by the session rules (term, one session per cluster).
pub const SESSION_REFUSED: i64 = -32001;
/// autogate: the peer is not allowed (unknown certificate, cluster disabled, read-only cluster,
/// a service type disabled on the gateway).
pub const NOT_ALLOWED: i64 = -32002;
/// autogate: the callee cannot do it now (not connected, busy, store unavailable, fenced).
pub const UNAVAILABLE: i64 = -32003;
/// autogate: no result within the deadline (the run was cancelled).
pub const TIMED_OUT: i64 = -32004;
/// autogate (`service.run`): the service could not be run (checkout, missing binary, venv,
/// configuration); nothing ran or it could not start.
pub const RUN_FAILED: i64 = -32010;
/// autogate (`service.run`): no such service on the gateway.
pub const SERVICE_NOT_FOUND: i64 = -32011;

/// Longest `status` member read from a response (the family's values are short words).
const MAX_STATUS_LEN: usize = 32;

/// The WebSocket close code for a frame larger than the limit ("message too big").
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Default largest frame either side accepts: service results carry stdout/stderr.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The `"jsonrpc": "2.0"` member: a unit type so a wrong version cannot be built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Version;

impl Version {
    /// The only version spoken.
    pub const TEXT: &'static str = "2.0";
}

/// A request id: a string or an integer (fractional numbers are refused, as JSON-RPC advises).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    /// A numeric id.
    Number(i64),
    /// A string id.
    String(String),
}

impl Id {
    fn to_value(&self) -> Value {
        match self {
            Id::Number(n) => Value::from(*n),
            Id::String(s) => Value::from(s.as_str()),
        }
    }

    fn from_value(v: &Value) -> Option<Id> {
        match v {
            Value::Number(n) => n.as_i64().map(Id::Number),
            Value::String(s) => Some(Id::String(s.clone())),
            _ => None,
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<i64> for Id {
    fn from(n: i64) -> Self {
        Id::Number(n)
    }
}

impl From<i32> for Id {
    fn from(n: i32) -> Self {
        Id::Number(i64::from(n))
    }
}

impl From<u32> for Id {
    fn from(n: u32) -> Self {
        Id::Number(i64::from(n))
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::String(s.to_owned())
    }
}

impl From<String> for Id {
    fn from(s: String) -> Self {
        Id::String(s)
    }
}

/// A call that expects a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Always "2.0".
    pub jsonrpc: Version,
    /// Echoed in the response.
    pub id: Id,
    /// Method name (see [`crate::method`]).
    pub method: String,
    /// Parameters: an object or an array when present.
    pub params: Option<Value>,
}

impl Request {
    /// A request with the given id, method and params.
    pub fn new(id: impl Into<Id>, method: impl Into<String>, params: Option<Value>) -> Self {
        Request {
            jsonrpc: Version,
            id: id.into(),
            method: method.into(),
            params,
        }
    }

    /// Deserializes the params into `T` (absent params read as `{}`), or the −32602 error to
    /// answer with.
    pub fn parse_params<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        parse_params(self.params.as_ref())
    }
}

/// A call that expects no response (no `id`).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Always "2.0".
    pub jsonrpc: Version,
    /// Method name (see [`crate::method`]).
    pub method: String,
    /// Parameters: an object or an array when present.
    pub params: Option<Value>,
}

impl Notification {
    /// A notification with the given method and params.
    pub fn new(method: impl Into<String>, params: Option<Value>) -> Self {
        Notification {
            jsonrpc: Version,
            method: method.into(),
            params,
        }
    }

    /// Deserializes the params into `T` (absent params read as `{}`).
    pub fn parse_params<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        parse_params(self.params.as_ref())
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Always "2.0".
    pub jsonrpc: Version,
    /// The id of the request answered; `None` (JSON `null`) when it could not be read.
    pub id: Option<Id>,
    /// `Ok(result)` or `Err(error)`: exactly one of the two members is sent.
    pub outcome: Result<Value, RpcError>,
    /// The product family's extra `status` member (`"completed"`, `"error"`, `"success"`),
    /// sent next to `result`/`error` by the answers that carry one (`service.run`).
    pub status: Option<String>,
}

impl Response {
    /// A successful response.
    pub fn success(id: Id, result: Value) -> Self {
        Response {
            jsonrpc: Version,
            id: Some(id),
            outcome: Ok(result),
            status: None,
        }
    }

    /// An error response (`id` is `None` when the request's id could not be read).
    pub fn error(id: Option<Id>, error: RpcError) -> Self {
        Response {
            jsonrpc: Version,
            id,
            outcome: Err(error),
            status: None,
        }
    }

    /// The same response with the family's `status` member.
    pub fn with_status(mut self, status: impl Into<String>) -> Self {
        self.status = Some(status.into());
        self
    }

    /// Deserializes a successful result into `T`; an error response yields its error, a result
    /// of the wrong shape an [`INVALID_PARAMS`]-coded error describing it.
    pub fn parse_result<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        match &self.outcome {
            Ok(v) => serde_json::from_value(v.clone())
                .map_err(|e| RpcError::new(INVALID_PARAMS, format!("unexpected result: {e}"))),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A JSON-RPC error object `{code, message, data?}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// Error code: the standard ones are the constants of this module.
    pub code: i64,
    /// A sentence for humans.
    pub message: String,
    /// Optional details.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with a code and message, no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error with `data` attached.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// −32700 with the parser's explanation.
    pub fn parse_error(detail: impl fmt::Display) -> Self {
        RpcError::new(PARSE_ERROR, format!("parse error: {detail}"))
    }

    /// −32600 with the reason.
    pub fn invalid_request(reason: impl fmt::Display) -> Self {
        RpcError::new(INVALID_REQUEST, format!("invalid request: {reason}"))
    }

    /// −32601 naming the method.
    pub fn method_not_found(method: &str) -> Self {
        RpcError::new(METHOD_NOT_FOUND, format!("method not found: {method}"))
    }

    /// −32602 with the reason.
    pub fn invalid_params(reason: impl fmt::Display) -> Self {
        RpcError::new(INVALID_PARAMS, format!("invalid params: {reason}"))
    }

    /// −32603 with the reason.
    pub fn internal(reason: impl fmt::Display) -> Self {
        RpcError::new(INTERNAL_ERROR, format!("internal error: {reason}"))
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), Value::from(self.code));
        m.insert("message".into(), Value::from(self.message.as_str()));
        if let Some(data) = &self.data {
            m.insert("data".into(), data.clone());
        }
        Value::Object(m)
    }
}

/// Any frame of the link.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A call expecting a response.
    Request(Request),
    /// A call expecting none.
    Notification(Notification),
    /// The answer to a request.
    Response(Response),
}

impl From<Request> for Frame {
    fn from(r: Request) -> Self {
        Frame::Request(r)
    }
}

impl From<Notification> for Frame {
    fn from(n: Notification) -> Self {
        Frame::Notification(n)
    }
}

impl From<Response> for Frame {
    fn from(r: Response) -> Self {
        Frame::Response(r)
    }
}

impl Frame {
    /// The frame as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("jsonrpc".into(), Value::from(Version::TEXT));
        match self {
            Frame::Request(r) => {
                m.insert("id".into(), r.id.to_value());
                m.insert("method".into(), Value::from(r.method.as_str()));
                if let Some(p) = &r.params {
                    m.insert("params".into(), p.clone());
                }
            }
            Frame::Notification(n) => {
                m.insert("method".into(), Value::from(n.method.as_str()));
                if let Some(p) = &n.params {
                    m.insert("params".into(), p.clone());
                }
            }
            Frame::Response(r) => {
                m.insert("id".into(), r.id.as_ref().map_or(Value::Null, Id::to_value));
                if let Some(status) = &r.status {
                    m.insert("status".into(), Value::from(status.as_str()));
                }
                match &r.outcome {
                    Ok(v) => m.insert("result".into(), v.clone()),
                    Err(e) => m.insert("error".into(), e.to_value()),
                };
            }
        }
        Value::Object(m)
    }
}

/// Encodes a frame as the text of one WebSocket message. Cannot fail: the value is built
/// from owned JSON with string keys.
pub fn encode(frame: &Frame) -> String {
    frame.to_value().to_string()
}

/// Why a frame could not be decoded, with the JSON-RPC code it maps to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than the limit: not parsed at all. Close the WebSocket with
    /// [`CLOSE_MESSAGE_TOO_BIG`] (1009) rather than answering.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON (−32700).
    #[error("parse error: {0}")]
    Parse(String),
    /// JSON, but not a valid request or notification (−32600). `id` is the request's id when
    /// it could be read, so the error response can carry it.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// The id found in the frame, if any.
        id: Option<Id>,
        /// What is wrong.
        reason: String,
    },
    /// A frame with `result` or `error` that is malformed. It must not be answered (answering
    /// responses could loop): log it, or close the link.
    #[error("invalid response: {reason}")]
    InvalidResponse {
        /// What is wrong.
        reason: String,
    },
}

impl DecodeError {
    /// The JSON-RPC error code this maps to (`None` for [`DecodeError::TooLarge`]).
    pub fn code(&self) -> Option<i64> {
        match self {
            DecodeError::TooLarge { .. } => None,
            DecodeError::Parse(_) => Some(PARSE_ERROR),
            DecodeError::InvalidRequest { .. } | DecodeError::InvalidResponse { .. } => {
                Some(INVALID_REQUEST)
            }
        }
    }

    /// The WebSocket close code the caller should use instead of answering, if any.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            DecodeError::TooLarge { .. } => Some(CLOSE_MESSAGE_TOO_BIG),
            _ => None,
        }
    }

    /// The error response to send back, if one should be sent (parse errors and invalid
    /// requests; not oversized frames nor malformed responses).
    pub fn to_response(&self) -> Option<Response> {
        match self {
            DecodeError::Parse(detail) => {
                Some(Response::error(None, RpcError::parse_error(detail)))
            }
            DecodeError::InvalidRequest { id, reason } => Some(Response::error(
                id.clone(),
                RpcError::invalid_request(reason),
            )),
            DecodeError::TooLarge { .. } | DecodeError::InvalidResponse { .. } => None,
        }
    }
}

/// Decodes one text frame of at most `max_len` bytes. Never panics, whatever the input.
pub fn decode(text: &str, max_len: usize) -> Result<Frame, DecodeError> {
    if text.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            max: max_len,
        });
    }
    // serde_json limits nesting depth (128), so hostile nesting is an error, not a stack
    // overflow.
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Parse(e.to_string()))?;
    let obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Err(invalid(None, "batch requests are not supported"));
        }
        other => {
            return Err(invalid(
                None,
                format!("expected a JSON object, got {}", kind(&other)),
            ));
        }
    };

    let is_response = obj.contains_key("result") || obj.contains_key("error");
    if is_response && !obj.contains_key("method") {
        return decode_response(obj);
    }

    // Read the id first so every later error can be answered with it.
    let id = match obj.get("id") {
        None => None,
        Some(v) => match Id::from_value(v) {
            Some(id) => Some(id),
            None => {
                return Err(invalid(
                    None,
                    format!("\"id\" must be a string or an integer, got {}", kind(v)),
                ));
            }
        },
    };
    check_version(&obj).map_err(|reason| invalid(id.clone(), reason))?;
    if is_response {
        return Err(invalid(
            id,
            "a frame cannot carry both \"method\" and \"result\"/\"error\"",
        ));
    }
    let method = match obj.get("method") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => return Err(invalid(id, "\"method\" must not be empty")),
        Some(other) => {
            return Err(invalid(
                id,
                format!("\"method\" must be a string, got {}", kind(other)),
            ));
        }
        None => return Err(invalid(id, "missing \"method\"")),
    };
    let params = match obj.get("params") {
        None => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p.clone()),
        Some(other) => {
            return Err(invalid(
                id,
                format!(
                    "\"params\" must be an object or an array, got {}",
                    kind(other)
                ),
            ));
        }
    };
    Ok(match id {
        Some(id) => Frame::Request(Request {
            jsonrpc: Version,
            id,
            method,
            params,
        }),
        None => Frame::Notification(Notification {
            jsonrpc: Version,
            method,
            params,
        }),
    })
}

fn decode_response(obj: Map<String, Value>) -> Result<Frame, DecodeError> {
    let bad = |reason: String| DecodeError::InvalidResponse { reason };
    check_version(&obj).map_err(bad)?;
    let id = match obj.get("id") {
        None => return Err(bad("missing \"id\"".into())),
        Some(Value::Null) => None,
        Some(v) => Some(Id::from_value(v).ok_or_else(|| {
            bad(format!(
                "\"id\" must be a string, an integer or null, got {}",
                kind(v)
            ))
        })?),
    };
    let outcome = match (obj.get("result"), obj.get("error")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "a response cannot carry both \"result\" and \"error\"".into()
            ))
        }
        (Some(result), None) => {
            if id.is_none() {
                return Err(bad("a successful response needs an \"id\"".into()));
            }
            Ok(result.clone())
        }
        (None, Some(error)) => Err(decode_error_object(error).map_err(bad)?),
        (None, None) => return Err(bad("missing \"result\" or \"error\"".into())),
    };
    // `status` is informative (the outcome already says success or error): a value that is
    // not a short string is dropped rather than failing the whole response.
    let status = match obj.get("status") {
        Some(Value::String(s)) if s.len() <= MAX_STATUS_LEN => Some(s.clone()),
        _ => None,
    };
    Ok(Frame::Response(Response {
        jsonrpc: Version,
        id,
        outcome,
        status,
    }))
}

fn decode_error_object(v: &Value) -> Result<RpcError, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("\"error\" must be an object, got {}", kind(v)))?;
    let code = match obj.get("code") {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("\"error.code\" must be an integer, got {n}"))?,
        Some(other) => {
            return Err(format!(
                "\"error.code\" must be an integer, got {}",
                kind(other)
            ))
        }
        None => return Err("missing \"error.code\"".into()),
    };
    let message = match obj.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(format!(
                "\"error.message\" must be a string, got {}",
                kind(other)
            ))
        }
        None => return Err("missing \"error.message\"".into()),
    };
    Ok(RpcError {
        code,
        message,
        data: obj.get("data").cloned(),
    })
}

fn check_version(obj: &Map<String, Value>) -> Result<(), String> {
    match obj.get("jsonrpc") {
        Some(Value::String(v)) if v == Version::TEXT => Ok(()),
        Some(Value::String(v)) => Err(format!(
            "\"jsonrpc\" must be \"2.0\", got {:?}",
            v.chars().take(20).collect::<String>()
        )),
        Some(other) => Err(format!("\"jsonrpc\" must be \"2.0\", got {}", kind(other))),
        None => Err("missing \"jsonrpc\": \"2.0\"".into()),
    }
}

fn invalid(id: Option<Id>, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidRequest {
        id,
        reason: reason.into(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Deserializes method params into `T`; absent params read as `{}` so methods whose params
/// are all optional accept a bare call. Errors are the −32602 to answer with.
pub fn parse_params<T: DeserializeOwned>(params: Option<&Value>) -> Result<T, RpcError> {
    let value = params.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    serde_json::from_value(value).map_err(RpcError::invalid_params)
}
