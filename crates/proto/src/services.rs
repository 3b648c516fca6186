//! The service messages of the manager link: the `service.run` request and its replies in the
//! product family's shape, and the service catalog the gateway sends in `services.update`
//! notifications and `services.list` answers.
//!
//! A run reply carries the family's extra `status` member next to the JSON-RPC outcome:
//! `"completed"` with the run's result (a non-zero exit is still completed: the program ran),
//! or `"error"` with an error whose `data` is the message (or, for inputs that fail the
//! decorator, `{"message", "violations"}`). The catalog is always complete (not a delta); the
//! manager checks it against [`ServicesUpdate::validate`] before keeping it, because it comes
//! from the network and ends up in the manager's store and pages.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::hello::{method, to_value};
use crate::jsonrpc::{Id, Notification, Request, Response, RpcError};

/// `status` of a reply to `service.run` whose program ran (whatever its exit code).
pub const STATUS_COMPLETED: &str = "completed";
/// `status` of a reply to `service.run` that could not run the service.
pub const STATUS_ERROR: &str = "error";

/// Most services one catalog may describe.
pub const MAX_SERVICES: usize = 10_000;
/// Longest service name, type, decorator or repository name accepted in a catalog.
pub const MAX_SERVICE_NAME_LEN: usize = 256;
/// Most tags per service.
pub const MAX_TAGS: usize = 64;

/// Params of `service.run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRun {
    /// The service's name (`service` is accepted as well).
    #[serde(alias = "service")]
    pub name: String,
    /// The run's inputs, validated by the service's decorator on the gateway (`params` is
    /// accepted as well, the name earlier managers used).
    #[serde(default, alias = "params")]
    pub inputs: Map<String, Value>,
    /// `key=value` strings as the CLI's `--set` takes them, converted by the gateway to the
    /// types the decorator declares and laid over `inputs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// When given, the service must be of this type (`executable`, `python-script`, …).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    /// opentofu-plan: `apply` (default) or `destroy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// opentofu-plan: the state to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// How long the caller waits; the gateway cancels the run when it is over, so nothing keeps
    /// running for a caller that gave up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The manager's id of the run, also the request's JSON-RPC id: the same run sent again
    /// (after a fail-over, or a manager restart) carries the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl ServiceRun {
    /// A run of `name` with `inputs`.
    pub fn new(name: impl Into<String>, inputs: Map<String, Value>) -> Self {
        ServiceRun {
            name: name.into(),
            inputs,
            set: Vec::new(),
            service_type: None,
            action: None,
            state: None,
            timeout_ms: None,
            run_id: None,
        }
    }

    /// Reads and checks the params; the error is the −32602 to answer with.
    pub fn from_params(params: Option<&Value>) -> Result<ServiceRun, RpcError> {
        let run: ServiceRun = crate::jsonrpc::parse_params(params)?;
        check_name("name", &run.name).map_err(RpcError::invalid_params)?;
        if let Some(id) = &run.run_id {
            check_run_id(id).map_err(RpcError::invalid_params)?;
        }
        Ok(run)
    }

    /// The `service.run` request carrying these params.
    pub fn to_request(&self, id: impl Into<Id>) -> Request {
        Request::new(id, method::SERVICE_RUN, Some(to_value(self)))
    }
}

/// A run id is a UUID in its hyphenated form (what the manager mints): it becomes part of store
/// keys and job ids on the gateway, so nothing else — no slash, no dots, no length of its own —
/// gets that far.
pub fn check_run_id(id: &str) -> Result<(), String> {
    let ok = id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "run_id: must be a UUID (8-4-4-4-12 hexadecimal digits), got {} bytes",
            id.len()
        ))
    }
}

/// The reply to a `service.run` whose program ran: `status: completed` and the run's result.
pub fn run_completed(id: Id, result: Value) -> Response {
    Response::success(id, result).with_status(STATUS_COMPLETED)
}

/// The reply to a `service.run` that could not run: `status: error`. When `error` has no
/// `data`, its message becomes the data, as the family's readers expect `error.data`.
pub fn run_failed(id: Id, mut error: RpcError) -> Response {
    if error.data.is_none() {
        error.data = Some(Value::from(error.message.as_str()));
    }
    Response::error(Some(id), error).with_status(STATUS_ERROR)
}

/// `data` of a run refused for invalid inputs: the message and every violation.
pub fn violations_data(message: &str, violations: Value) -> Value {
    json!({ "message": message, "violations": violations })
}

/// One service as the gateway describes it to the manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Unique within the cluster.
    pub name: String,
    /// `executable`, `python-script`, `ansible-playbook` or `opentofu-plan`.
    #[serde(rename = "type")]
    pub service_type: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The repository the code comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Directory inside the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// The decorator's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decorator: Option<String>,
    /// The decorator's JSON Schema: what inputs a run takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// Params of `services.update` and the result of `services.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesUpdate {
    /// Every service of the cluster, sorted by name.
    pub services: Vec<ServiceEntry>,
    /// Set when the catalog was cut to fit the manager's frame limit; `total` says how many
    /// services the cluster has.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Number of services of the cluster when `truncated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
}

impl ServicesUpdate {
    /// The notification carrying these params.
    pub fn to_notification(&self) -> Notification {
        Notification::new(method::SERVICES_UPDATE, Some(to_value(self)))
    }

    /// Checks what a peer sent: at most [`MAX_SERVICES`] services, names non-empty, short,
    /// printable and unique, short types and labels. The error names the entry at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.services.len() > MAX_SERVICES {
            return Err(format!(
                "{} services (at most {MAX_SERVICES})",
                self.services.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |field: &str| format!("services[{i}].{field}");
            check_name(&at("name"), &s.name)?;
            check_name(&at("type"), &s.service_type)?;
            for (field, v) in [
                ("repository", &s.repository),
                ("working_directory", &s.working_directory),
                ("decorator", &s.decorator),
            ] {
                if let Some(v) = v {
                    if v.len() > 4 * MAX_SERVICE_NAME_LEN {
                        return Err(format!("{} is too long", at(field)));
                    }
                }
            }
            if s.tags.len() > MAX_TAGS {
                return Err(format!("{} has more than {MAX_TAGS} tags", at("tags")));
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("{}: duplicate name {:?}", at("name"), s.name));
            }
        }
        Ok(())
    }
}

fn check_name(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > MAX_SERVICE_NAME_LEN {
        return Err(format!(
            "{field} is longer than {MAX_SERVICE_NAME_LEN} bytes"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, Frame};

    #[test]
    fn a_run_id_is_a_uuid_and_nothing_else() {
        let ok = json!({"name": "svc", "run_id": "01a245e9-5815-7013-9e52-3584f78096ea"});
        assert!(ServiceRun::from_params(Some(&ok)).is_ok());
        for bad in [
            "",
            "../../etc/passwd",
            "01a245e9/5815-7013-9e52-3584f78096ea",
            "--flag=01a245e9-5815-7013-9e52-3584f78",
            "{{.Value}}-5815-7013-9e52-3584f78096ea",
            "01a245e9-5815-7013-9e52-3584f78096ea0",
            &"a".repeat(100_000),
        ] {
            let p = json!({"name": "svc", "run_id": bad});
            let err = ServiceRun::from_params(Some(&p)).unwrap_err();
            assert_eq!(err.code, crate::INVALID_PARAMS, "{bad}");
            assert!(err.message.contains("run_id: must be a UUID"), "{err}");
            assert!(
                err.message.len() < 200,
                "the message does not echo the value"
            );
        }
    }

    #[test]
    fn run_params_accept_the_older_spellings() {
        let p = json!({"service": "svc", "params": {"a": 1}, "type": "executable"});
        let run = ServiceRun::from_params(Some(&p)).unwrap();
        assert_eq!(run.name, "svc");
        assert_eq!(run.inputs["a"], 1);
        assert_eq!(run.service_type.as_deref(), Some("executable"));
        let err = ServiceRun::from_params(Some(&json!({"inputs": {}}))).unwrap_err();
        assert_eq!(err.code, crate::INVALID_PARAMS);
        let err = ServiceRun::from_params(Some(&json!({"name": " "}))).unwrap_err();
        assert!(err.message.contains("name must not be empty"), "{err}");
        // The request carries `name` and `inputs`.
        let req = ServiceRun::new("x", Map::new()).to_request(3);
        assert_eq!(
            Frame::Request(req).to_value(),
            json!({"jsonrpc": "2.0", "id": 3, "method": "service.run",
                   "params": {"name": "x", "inputs": {}}})
        );
    }

    #[test]
    fn replies_carry_the_family_status_and_survive_a_round_trip() {
        let ok = run_completed(Id::Number(4), json!({"return_code": 2}));
        let text = encode(&Frame::Response(ok.clone()));
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"jsonrpc": "2.0", "id": 4, "status": "completed", "result": {"return_code": 2}})
        );
        assert_eq!(decode(&text, 1 << 20).unwrap(), Frame::Response(ok));

        let failed = run_failed(Id::Number(5), RpcError::new(crate::RUN_FAILED, "no git"));
        let v = Frame::Response(failed).to_value();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": 5, "status": "error",
                   "error": {"code": -32010, "message": "no git", "data": "no git"}})
        );
        // A status that is not a short string is dropped, the response still decodes.
        let odd = r#"{"jsonrpc":"2.0","id":1,"status":{"x":1},"result":{}}"#;
        let Frame::Response(r) = decode(odd, 1 << 20).unwrap() else {
            panic!("a response")
        };
        assert_eq!(r.status, None);
    }

    #[test]
    fn catalogs_are_checked_entry_by_entry() {
        let entry = |name: &str| ServiceEntry {
            name: name.into(),
            service_type: "executable".into(),
            description: String::new(),
            tags: vec![],
            repository: None,
            working_directory: None,
            decorator: None,
            schema: None,
            created: None,
            updated: None,
        };
        let ok = ServicesUpdate {
            services: vec![entry("a"), entry("b")],
            truncated: false,
            total: None,
        };
        ok.validate().unwrap();
        let n = ok.to_notification();
        assert_eq!(n.method, "services.update");
        assert_eq!(
            n.parse_params::<ServicesUpdate>().unwrap(),
            ok,
            "round trip"
        );
        let dup = ServicesUpdate {
            services: vec![entry("a"), entry("a")],
            ..ok.clone()
        };
        assert_eq!(
            dup.validate().unwrap_err(),
            "services[1].name: duplicate name \"a\""
        );
        let bad = ServicesUpdate {
            services: vec![entry("a"), entry("x\ny")],
            ..ok.clone()
        };
        assert!(bad.validate().unwrap_err().starts_with("services[1].name"));
        let long = ServicesUpdate {
            services: vec![entry(&"n".repeat(MAX_SERVICE_NAME_LEN + 1))],
            ..ok
        };
        assert!(long.validate().is_err());
    }
}
