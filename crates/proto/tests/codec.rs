//! Frame encoding/decoding and the hello messages, as the gateway and the manager use them.

use autogate_proto::*;
use serde_json::{json, Value};

const MAX: usize = 1024;

fn invalid_reason(text: &str) -> (Option<Id>, String) {
    match decode(text, MAX) {
        Err(DecodeError::InvalidRequest { id, reason }) => (id, reason),
        other => panic!("expected invalid request for {text}, got {other:?}"),
    }
}

#[test]
fn requests_notifications_and_responses_round_trip() {
    let frames: Vec<Frame> = vec![
        Request::new(1, method::PING, None).into(),
        Request::new("abc", method::SERVICE_RUN, Some(json!({"name": "x"}))).into(),
        Request::new(-5, "m", Some(json!([1, 2]))).into(),
        Notification::new(method::NODES_UPDATE, Some(json!({"nodes": []}))).into(),
        Response::success(Id::from(7), json!({"ok": true})).into(),
        Response::success(Id::from("s"), Value::Null).into(),
        Response::error(Some(Id::from(3)), RpcError::method_not_found("nope")).into(),
        Response::error(None, RpcError::parse_error("x").with_data(json!({"at": 1}))).into(),
    ];
    for frame in frames {
        let text = encode(&frame);
        assert_eq!(decode(&text, MAX).unwrap(), frame, "{text}");
    }
}

#[test]
fn encoding_matches_the_wire_format() {
    let text = encode(&Request::new(1, "ping", None).into());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v, json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}));
    let text = encode(&Response::error(None, RpcError::new(-32001, "no")).into());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": "no"}})
    );
}

#[test]
fn oversized_frames_are_not_parsed() {
    let text = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"{}\"}}", "a".repeat(MAX));
    let err = decode(&text, MAX).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { max: MAX, .. }));
    assert_eq!(err.close_code(), Some(CLOSE_MESSAGE_TOO_BIG));
    assert_eq!(err.code(), None);
    assert!(err.to_response().is_none());
    // Exactly at the limit is fine.
    let ok = r#"{"jsonrpc":"2.0","method":"ping"}"#;
    assert!(decode(ok, ok.len()).is_ok());
}

#[test]
fn parse_errors_are_minus_32700_with_null_id() {
    for text in [
        "",
        "{",
        "not json",
        "{\"a\":}",
        "\u{0}",
        "[1,2",
        "{\"jsonrpc\":\"2.0\"} x",
    ] {
        let err = decode(text, MAX).unwrap_err();
        assert!(matches!(err, DecodeError::Parse(_)), "{text:?}: {err:?}");
        assert_eq!(err.code(), Some(PARSE_ERROR));
        let resp = err.to_response().unwrap();
        assert_eq!(resp.id, None);
        assert_eq!(resp.outcome.unwrap_err().code, PARSE_ERROR);
    }
    // Hostile nesting is a parse error, not a stack overflow.
    let deep = "[".repeat(100_000);
    assert!(matches!(
        decode(&deep, usize::MAX).unwrap_err(),
        DecodeError::Parse(_)
    ));
}

#[test]
fn invalid_requests_are_minus_32600_and_keep_the_id() {
    let (id, reason) = invalid_reason(r#"{"jsonrpc":"1.0","id":4,"method":"ping"}"#);
    assert_eq!(id, Some(Id::Number(4)));
    assert!(reason.contains("2.0"), "{reason}");
    let (_, reason) = invalid_reason(r#"{"id":4,"method":"ping"}"#);
    assert!(reason.contains("missing \"jsonrpc\""), "{reason}");
    let (id, reason) = invalid_reason(r#"{"jsonrpc":"2.0","id":"x","method":5}"#);
    assert_eq!(id, Some(Id::String("x".into())));
    assert!(reason.contains("\"method\" must be a string"), "{reason}");
    let (_, reason) = invalid_reason(r#"{"jsonrpc":"2.0","id":1}"#);
    assert!(reason.contains("missing \"method\""), "{reason}");
    let (_, reason) = invalid_reason(r#"{"jsonrpc":"2.0","id":1,"method":""}"#);
    assert!(reason.contains("empty"), "{reason}");
    let (_, reason) = invalid_reason(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":3}"#);
    assert!(
        reason.contains("\"params\" must be an object or an array"),
        "{reason}"
    );
    let (id, reason) = invalid_reason(r#"{"jsonrpc":"2.0","id":1.5,"method":"m"}"#);
    assert_eq!(id, None);
    assert!(reason.contains("\"id\""), "{reason}");
    let (_, reason) = invalid_reason(r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#);
    assert!(reason.contains("\"id\""), "{reason}");
    let (_, reason) = invalid_reason(r#"[{"jsonrpc":"2.0","method":"m"}]"#);
    assert!(reason.contains("batch"), "{reason}");
    let (_, reason) = invalid_reason("42");
    assert!(reason.contains("expected a JSON object"), "{reason}");
    let (id, reason) = invalid_reason(r#"{"jsonrpc":"2.0","id":2,"method":"m","result":1}"#);
    assert_eq!(id, Some(Id::Number(2)));
    assert!(reason.contains("both"), "{reason}");

    let err = decode(r#"{"jsonrpc":"2.0","id":9,"method":7}"#, MAX).unwrap_err();
    assert_eq!(err.code(), Some(INVALID_REQUEST));
    let resp = err.to_response().unwrap();
    assert_eq!(resp.id, Some(Id::Number(9)));
    assert_eq!(resp.outcome.unwrap_err().code, INVALID_REQUEST);
}

#[test]
fn malformed_responses_are_reported_but_never_answered() {
    for text in [
        r#"{"jsonrpc":"2.0","result":1}"#,
        r#"{"jsonrpc":"2.0","id":null,"result":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#,
        r#"{"jsonrpc":"2.0","id":1,"error":{"message":"m"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"m"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":1}}"#,
        r#"{"jsonrpc":"2.0","id":[],"result":1}"#,
        r#"{"id":1,"result":1}"#,
    ] {
        let err = decode(text, MAX).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidResponse { .. }),
            "{text}: {err:?}"
        );
        assert!(err.to_response().is_none());
    }
    // An error response with a null id is valid (answer to an unreadable request).
    let frame = decode(
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#,
        MAX,
    )
    .unwrap();
    assert!(matches!(frame, Frame::Response(Response { id: None, .. })));
}

#[test]
fn error_helpers_carry_the_standard_codes() {
    assert_eq!(RpcError::method_not_found("x").code, METHOD_NOT_FOUND);
    assert!(RpcError::method_not_found("x.y").message.contains("x.y"));
    assert_eq!(RpcError::invalid_params("bad").code, INVALID_PARAMS);
    assert_eq!(RpcError::internal("bad").code, INTERNAL_ERROR);
    assert_eq!(RpcError::invalid_request("bad").code, INVALID_REQUEST);
}

fn sample_hello() -> Hello {
    Hello {
        cluster_id: "cluster_1".into(),
        node_id: "host_0190".into(),
        term: Some(42),
        version: "0.1.0".into(),
        nodes: vec![
            NodeInfo {
                node_id: "host_0190".into(),
                name: Some("core-1".into()),
                role: Role::Active,
                is_primary: true,
                address: Some("10.0.0.1:50051".into()),
                manager_reachable: Some(true),
                running: None,
                capacity: None,
            },
            NodeInfo {
                node_id: "runner_1".into(),
                name: None,
                role: Role::Runner,
                is_primary: false,
                address: None,
                manager_reachable: None,
                running: Some(1),
                capacity: Some(4),
            },
        ],
        distributed_execution: false,
        departed: Vec::new(),
        run_dedup: true,
    }
}

#[test]
fn hello_travels_as_the_first_request() {
    let hello = sample_hello();
    let text = encode(&hello.to_request(1).into());
    let Frame::Request(req) = decode(&text, MAX).unwrap() else {
        panic!("not a request: {text}");
    };
    assert_eq!(req.method, method::HELLO);
    let v = req.params.clone().unwrap();
    assert_eq!(v["nodes"][0]["role"], "active");
    assert_eq!(v["nodes"][1]["role"], "runner");
    assert!(v["nodes"][1].get("address").is_none());
    assert_eq!(Hello::from_params(req.params.as_ref()).unwrap(), hello);
    assert_eq!(req.parse_params::<Hello>().unwrap(), hello);

    // HA off: term is null and must be sent as null.
    let mut no_ha = sample_hello();
    no_ha.term = None;
    let v = to_value(&no_ha);
    assert_eq!(v["term"], Value::Null);
    assert_eq!(Hello::from_params(Some(&v)).unwrap().term, None);
}

#[test]
fn hello_params_are_validated_as_invalid_params() {
    let err = Hello::from_params(None).unwrap_err();
    assert_eq!(err.code, INVALID_PARAMS);
    assert!(err.message.contains("cluster_id"), "{}", err.message);
    let mut v = to_value(&sample_hello());
    v["cluster_id"] = json!("");
    assert!(Hello::from_params(Some(&v))
        .unwrap_err()
        .message
        .contains("cluster_id must not be empty"));
    let mut v = to_value(&sample_hello());
    v["node_id"] = json!("a\nb");
    assert!(Hello::from_params(Some(&v))
        .unwrap_err()
        .message
        .contains("control"));
    let mut v = to_value(&sample_hello());
    v["term"] = json!(-1);
    assert_eq!(
        Hello::from_params(Some(&v)).unwrap_err().code,
        INVALID_PARAMS
    );
    let mut v = to_value(&sample_hello());
    v["nodes"][0]["role"] = json!("leader");
    assert!(Hello::from_params(Some(&v))
        .unwrap_err()
        .message
        .contains("leader"));
    // Unknown fields are ignored for forward compatibility; nodes default to empty.
    let v = json!({"cluster_id": "c", "node_id": "n", "term": null, "version": "9", "extra": 1});
    assert!(Hello::from_params(Some(&v)).unwrap().nodes.is_empty());
}

#[test]
fn hello_answers_and_nodes_update() {
    let ok = Response::success(Id::from(1), to_value(&HelloAccepted::new("s-1")));
    let text = encode(&ok.into());
    let Frame::Response(resp) = decode(&text, MAX).unwrap() else {
        panic!("not a response");
    };
    let accepted: HelloAccepted = resp.parse_result().unwrap();
    assert!(accepted.accepted);
    assert_eq!(accepted.session_id, "s-1");

    let refused = Response::error(
        Some(Id::from(1)),
        RpcError::new(
            SESSION_REFUSED,
            "term 5 is not newer than the current term 7 held by node X",
        ),
    );
    let err = refused.parse_result::<HelloAccepted>().unwrap_err();
    assert_eq!(err.code, SESSION_REFUSED);

    let update = NodesUpdate {
        nodes: sample_hello().nodes,
        departed: Vec::new(),
    };
    let text = encode(&update.to_notification().into());
    let Frame::Notification(n) = decode(&text, MAX).unwrap() else {
        panic!("not a notification");
    };
    assert_eq!(n.method, method::NODES_UPDATE);
    assert_eq!(n.parse_params::<NodesUpdate>().unwrap(), update);
}
