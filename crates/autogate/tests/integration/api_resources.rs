//! The operator API end to end on a real `autogate server` (local store): resource CRUD with
//! its error statuses, a secret that never comes back nor reaches the log, a run of an
//! executable service with valid and invalid inputs, import/export, and the OpenAPI document
//! walked against the running router.

use autogate_testkit::auth::{admin_key, request, with_admin_password};
use autogate_testkit::{free_port, Autogate, Process};
use serde_json::{json, Value};

use crate::support::call;

const SECRET_VALUE: &str = "s3cr3t-value-that-must-not-leak";

struct Node {
    proc: Process,
    addr: String,
    key: String,
}

impl Node {
    fn start() -> Node {
        let port = free_port();
        let cmd = Autogate::new(["server"])
            .name("core")
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env("GATEWAY_LOG_LEVEL", "DEBUG");
        let key_file = cmd.home().join("secrets.key");
        std::fs::write(&key_file, "0123456789abcdef0123456789abcdef\n").expect("key file");
        let cmd = with_admin_password(cmd).env(
            "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
            key_file.display().to_string(),
        );
        let proc = cmd.spawn();
        let key = admin_key(port);
        Node {
            proc,
            addr: format!("127.0.0.1:{port}"),
            key,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.addr, &self.key, method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.proc.dump()))
    }
}

#[test]
fn resources_round_trip_with_conflicts_and_missing_references() {
    let n = Node::start();
    let schema = json!({
        "$id": "root", "type": "object",
        "properties": { "msg": { "type": "string" } },
        "required": ["msg"], "additionalProperties": false
    });
    let (s, v) = n.call(
        "POST",
        "/api/v1/decorators",
        Some(json!({"name": "greet", "schema": schema})),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "greet");
    let (s, v) = n.call(
        "POST",
        "/api/v1/decorators",
        Some(json!({"name": "greet", "schema": schema})),
    );
    assert_eq!(s, 409, "duplicate: {v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("greet"),
        "{v}"
    );

    // A service naming an executable object that does not exist: 422 naming it.
    let service = json!({
        "name": "echo", "type": "executable", "executable-object": "echo-bin",
        "decorator": "greet"
    });
    let (s, v) = n.call("POST", "/api/v1/services", Some(service.clone()));
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("echo-bin"),
        "the message names the missing resource: {v}"
    );
    let (s, v) = n.call(
        "POST",
        "/api/v1/executable-objects",
        Some(json!({"name": "echo-bin", "exec-command": "/bin/echo"})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = n.call("POST", "/api/v1/services", Some(service));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["type"], "executable");

    let (s, v) = n.call("GET", "/api/v1/services", None);
    assert_eq!(s, 200);
    let names: Vec<&str> = v["services"]
        .as_array()
        .expect("{\"services\": [...]}")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["echo"], "{v}");
    let (s, v) = n.call("GET", "/api/v1/services/echo", None);
    assert_eq!((s, &v["decorator"]), (200, &json!("greet")), "{v}");
    let (s, v) = n.call("GET", "/api/v1/services/nope", None);
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("nope"),
        "{v}"
    );

    // Still named by the service: refused.
    let (s, v) = n.call("DELETE", "/api/v1/decorators/greet", None);
    assert_eq!(s, 409, "{v}");
    // Body that is not JSON at all: 400; JSON of the wrong shape: 422.
    let (s, v) = request(
        &n.addr,
        "POST",
        "/api/v1/repositories",
        Some(&n.key),
        Some(("application/json", b"{not json")),
    )
    .expect("request");
    assert_eq!(s, 400, "{v}");
    let (s, v) = n.call("POST", "/api/v1/repositories", Some(json!({"name": 5})));
    assert_eq!(s, 422, "{v}");

    // A secret: its value is sealed, never returned, never logged.
    let (s, v) = n.call(
        "POST",
        "/api/v1/secrets",
        Some(json!({"name": "token", "value": SECRET_VALUE})),
    );
    assert_eq!(s, 201, "{v}");
    assert!(!v.to_string().contains(SECRET_VALUE), "{v}");
    let (s, v) = n.call("GET", "/api/v1/secrets", None);
    assert_eq!(s, 200);
    assert_eq!(v["secrets"][0]["name"], "token", "{v}");
    assert!(!v.to_string().contains(SECRET_VALUE), "{v}");

    // Export, then import the same file: every item is unchanged, nothing is written.
    let (s, yaml) =
        request(&n.addr, "GET", "/api/v1/db/export", Some(&n.key), None).expect("export");
    assert_eq!(s, 200, "{yaml}");
    assert!(yaml.contains("echo-bin"), "{yaml}");
    assert!(!yaml.contains(SECRET_VALUE), "{yaml}");
    let import = |query: &str, yaml: &str| -> Value {
        let (s, report) = request(
            &n.addr,
            "POST",
            &format!("/api/v1/db/import?{query}"),
            Some(&n.key),
            Some(("application/yaml", yaml.as_bytes())),
        )
        .expect("import");
        assert_eq!(s, 200, "{report}");
        serde_json::from_str(&report).expect("json")
    };
    let outcome = |report: &Value, name: &str| -> String {
        report["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|i| i["name"] == name)
            .and_then(|i| i["outcome"].as_str())
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .to_owned()
    };
    for query in ["check=true", "force=true"] {
        let report = import(query, &yaml);
        assert_eq!(report["written"], false, "{report}");
        let items = report["items"].as_array().expect("items");
        assert!(
            items.iter().all(|i| i["outcome"] == "unchanged"),
            "{report}"
        );
        assert!(items
            .iter()
            .any(|i| i["kind"] == "service" && i["name"] == "echo"));
    }
    // One item with other content: a conflict unless forced, then the only replacement.
    assert!(yaml.contains("exec-command: /bin/echo"), "{yaml}");
    let changed = yaml.replace("exec-command: /bin/echo", "exec-command: /bin/printf");
    let report = import("check=true", &changed);
    assert_eq!(outcome(&report, "echo-bin"), "conflict", "{report}");
    assert_eq!(outcome(&report, "echo"), "unchanged", "{report}");
    let report = import("force=true", &changed);
    assert_eq!(report["written"], true, "{report}");
    assert_eq!(outcome(&report, "echo-bin"), "replacement", "{report}");
    assert_eq!(outcome(&report, "greet"), "unchanged", "{report}");

    let (s, _) = n.call("DELETE", "/api/v1/services/echo", None);
    assert_eq!(s, 204);
    let (s, v) = n.call("DELETE", "/api/v1/decorators/greet", None);
    assert_eq!(s, 204, "{v}");
    let (s, _) = n.call("GET", "/api/v1/services/echo", None);
    assert_eq!(s, 404);

    let logs = n.proc.logs();
    assert!(!logs.contains(SECRET_VALUE), "secret in the log:\n{logs}");
    assert!(!logs.contains(&n.key), "API key in the log:\n{logs}");
}

#[test]
fn runs_an_executable_service_and_reports_invalid_inputs() {
    let n = Node::start();
    let schema = json!({
        "$id": "root", "type": "object",
        "properties": { "msg": { "type": "string" }, "count": { "type": "integer" } },
        "required": ["msg"], "additionalProperties": false
    });
    for (path, body) in [
        (
            "/api/v1/decorators",
            json!({"name": "greet", "schema": schema}),
        ),
        (
            "/api/v1/executable-objects",
            json!({"name": "echo-bin", "exec-command": "/bin/echo"}),
        ),
        (
            "/api/v1/services",
            json!({"name": "echo", "type": "executable", "executable-object": "echo-bin", "decorator": "greet"}),
        ),
    ] {
        let (s, v) = n.call("POST", path, Some(body));
        assert_eq!(s, 201, "{path}: {v}");
    }
    let (s, v) = n.call("GET", "/api/v1/services/echo/inputs", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["decorator"], "greet", "{v}");
    assert_eq!(v["schema"]["required"], json!(["msg"]), "{v}");

    let (s, v) = n.call(
        "POST",
        "/api/v1/services/echo/run",
        Some(json!({"inputs": {"msg": "hello"}, "set": ["count=3"]})),
    );
    assert_eq!(s, 200, "{v}\n{}", n.proc.dump());
    assert_eq!(v["status"], "completed", "{v}");
    let r = &v["result"];
    assert_eq!(r["return_code"], 0, "{v}");
    let stdout = r["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.contains("hello") && stdout.contains('3'),
        "stdout: {stdout:?}"
    );
    for field in ["start_time", "end_time", "elapsed_time"] {
        assert!(r[field].is_string(), "{field}: {v}");
    }
    assert_eq!(r["timed_out"], false);

    // Inputs the decorator refuses: nothing runs, 422 with the violations.
    let (s, v) = n.call(
        "POST",
        "/api/v1/services/echo/run",
        Some(json!({"inputs": {"msg": 5}})),
    );
    assert_eq!(s, 422, "{v}");
    let violations = v["detail"]["violations"].as_array().expect("violations");
    assert!(violations.iter().any(|x| x["pointer"] == "/msg"), "{v}");
    // A field the run body does not know.
    let (s, v) = n.call(
        "POST",
        "/api/v1/services/echo/run",
        Some(json!({"input": {"msg": "x"}})),
    );
    assert_eq!(s, 422, "{v}");
    let (s, v) = n.call("POST", "/api/v1/services/nope/run", Some(json!({})));
    assert_eq!(s, 404, "{v}");
}

/// Every operation of the served OpenAPI document reaches a handler of the running node (no
/// "no such route", no 405), and every route of the node is in the document (the unit test of
/// the server crate checks the table against the router; this checks the served artefacts).
#[test]
fn the_served_openapi_document_matches_the_routes() {
    let n = Node::start();
    let (s, doc) = request(&n.addr, "GET", "/api/v1/openapi.json", None, None).expect("get");
    assert_eq!(s, 200, "openapi.json is open: {doc}");
    let doc: Value = serde_json::from_str(&doc).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("operations") {
            if path.ends_with("/logout") {
                // With a key of its own: logging out revokes the key it is called with.
                let port = n.addr.rsplit(':').next().and_then(|p| p.parse().ok());
                let own = admin_key(port.expect("port"));
                let (status, v) = call(&n.addr, &own, "POST", path, None).expect("logout");
                assert!(
                    (200..300).contains(&status),
                    "{method} {path}: {status} {v}"
                );
                operations += 1;
                continue;
            }
            let concrete = path.replace("{name}", "no-such-thing");
            let body = (method != "get" && method != "delete").then(|| json!({}));
            let (status, v) = n.call(&method.to_ascii_uppercase(), &concrete, body);
            assert_ne!(status, 405, "{method} {path}: {v}");
            assert!(
                !v.to_string().contains("no such route"),
                "{method} {path}: {v}"
            );
            assert!(op["responses"].is_object(), "{method} {path}");
            operations += 1;
        }
    }
    // 11 user and node routes, 6 resource kinds × 4, 3 cluster views, 8 for services, db, HA.
    assert!(operations >= 46, "{operations} operations");
    let (status, v) = n.call("GET", "/api/v1/cluster/health", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cluster_id"], "cluster_1", "{v}");
    assert_eq!(v["store"]["status"], "healthy", "{v}");
    let (status, v) = n.call("GET", "/api/v1/runners", None);
    assert_eq!((status, &v["runners"]), (200, &json!([])), "{v}");
    let (status, v) = n.call("GET", "/api/v1/not-a-route", None);
    assert_eq!(status, 404);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no such route"),
        "{v}"
    );
}
