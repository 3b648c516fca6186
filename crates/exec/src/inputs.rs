//! Run inputs: decorator validation, `--set k=v` coercion, and rendering inputs into the
//! arguments each service type expects.
//!
//! Inputs are a JSON object. From the CLI they arrive as `--set k=v` strings and are coerced to
//! the type the decorator declares for `k`, so that `--set port=22` satisfies
//! `{"type":"integer"}`; from the manager they arrive typed already. Validation reports every
//! violation with its JSON pointer, because an operator fixing a form wants all of them at once.
//!
//! Rendering order is deterministic: inputs are rendered in sorted key order (not schema
//! property order, which a schema need not define for every input).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ExecError;

/// Run inputs: one JSON object.
pub type Inputs = Map<String, Value>;

/// The default `--arg-format` of executable services.
pub const DEFAULT_ARG_FORMAT: &str = "--{{.Key}} {{.Value}}";

/// One decorator violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer of the offending input (`/port`); `""` is the whole input object.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl Violation {
    pub(crate) fn join(v: &[Violation]) -> String {
        v.iter()
            .map(|v| {
                let at = if v.pointer.is_empty() {
                    "(root)"
                } else {
                    v.pointer.as_str()
                };
                format!("{at}: {}", v.message)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A compiled decorator (JSON Schema, draft-07 or 2020-12 chosen by its `$schema`; 2020-12 when
/// absent).
pub struct Decorator {
    schema: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Decorator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decorator")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Decorator {
    /// Compiles a schema; an unusable schema is [`ExecError::InvalidDecorator`].
    pub fn new(schema: Value) -> Result<Self, ExecError> {
        let validator =
            jsonschema::validator_for(&schema).map_err(|e| ExecError::InvalidDecorator {
                reason: e.to_string(),
            })?;
        Ok(Self { schema, validator })
    }

    /// The schema as given.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The types declared for a top-level property (`type` as string or array), in order.
    pub fn property_types(&self, key: &str) -> Vec<String> {
        match self
            .schema
            .pointer(&format!("/properties/{}/type", escape_pointer(key)))
        {
            Some(Value::String(t)) => vec![t.clone()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// True when the decorator declares `key` as a boolean.
    pub fn is_boolean(&self, key: &str) -> bool {
        self.property_types(key).iter().any(|t| t == "boolean")
    }

    /// Every violation of `inputs`, each with its JSON pointer; empty when valid.
    pub fn violations(&self, inputs: &Inputs) -> Vec<Violation> {
        let instance = Value::Object(inputs.clone());
        let mut out = Vec::new();
        for e in self.validator.iter_errors(&instance) {
            let at = e.instance_path().as_str().to_owned();
            let message = e.to_string();
            match e.kind() {
                // Point at the missing or unexpected property itself, not at the object.
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    let name = property
                        .as_str()
                        .map_or_else(|| property.to_string(), str::to_owned);
                    out.push(Violation {
                        pointer: format!("{at}/{}", escape_pointer(&name)),
                        message,
                    });
                }
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for name in unexpected {
                        out.push(Violation {
                            pointer: format!("{at}/{}", escape_pointer(name)),
                            message: format!("additional property {name:?} is not allowed"),
                        });
                    }
                }
                _ => out.push(Violation {
                    pointer: at,
                    message,
                }),
            }
        }
        out
    }

    /// `Ok` when valid, else [`ExecError::InvalidInputs`] with all violations.
    pub fn validate(&self, inputs: &Inputs) -> Result<(), ExecError> {
        let violations = self.violations(inputs);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ExecError::InvalidInputs { violations })
        }
    }
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Turns CLI `--set` arguments into inputs: `k=v` (split at the first `=`) with `v` coerced to
/// the decorator's declared type for `k`; a bare `k` is `true` when the decorator says boolean
/// and the string `"true"` otherwise (the family's rule). A later `--set` of the same key wins.
///
/// A value that does not parse as its declared type stays a string, so that validation reports
/// it with its pointer rather than this function failing on the first one.
pub fn parse_set_args<S: AsRef<str>>(
    decorator: Option<&Decorator>,
    sets: &[S],
) -> Result<Inputs, ExecError> {
    let mut inputs = Inputs::new();
    let mut bad = Vec::new();
    for s in sets {
        let s = s.as_ref();
        let (key, raw) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (s.trim(), None),
        };
        if key.is_empty() {
            bad.push(Violation {
                pointer: String::new(),
                message: format!("--set {s:?} has no key"),
            });
            continue;
        }
        let types = decorator.map(|d| d.property_types(key)).unwrap_or_default();
        let value = match raw {
            None if types.iter().any(|t| t == "boolean") => Value::Bool(true),
            None => Value::String("true".to_owned()),
            Some(raw) => coerce(&types, raw),
        };
        inputs.insert(key.to_owned(), value);
    }
    if bad.is_empty() {
        Ok(inputs)
    } else {
        Err(ExecError::InvalidInputs { violations: bad })
    }
}

/// The first declared type the text parses as; otherwise the text as a string.
fn coerce(types: &[String], raw: &str) -> Value {
    for t in types {
        match t.as_str() {
            "string" => return Value::String(raw.to_owned()),
            "integer" => {
                if let Ok(i) = raw.trim().parse::<i64>() {
                    return Value::from(i);
                }
                if let Ok(u) = raw.trim().parse::<u64>() {
                    return Value::from(u);
                }
            }
            "number" => {
                if let Ok(i) = raw.trim().parse::<i64>() {
                    return Value::from(i);
                }
                if let Some(n) = raw
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    return Value::Number(n);
                }
            }
            "boolean" => match raw.trim().to_ascii_lowercase().as_str() {
                "true" => return Value::Bool(true),
                "false" => return Value::Bool(false),
                _ => {}
            },
            "array" | "object" => {
                if let Ok(v) = serde_json::from_str::<Value>(raw) {
                    if (t == "array" && v.is_array()) || (t == "object" && v.is_object()) {
                        return v;
                    }
                }
            }
            "null" if raw.trim() == "null" => return Value::Null,
            _ => {}
        }
    }
    Value::String(raw.to_owned())
}

/// An input value as program text: strings as they are, everything else as compact JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn sorted(inputs: &Inputs) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = inputs.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// python-script arguments: `--k=v`; a boolean the decorator declares boolean is a bare `--k`
/// when true and omitted when false.
pub fn python_args(decorator: Option<&Decorator>, inputs: &Inputs) -> Vec<String> {
    let mut args = Vec::new();
    for (k, v) in sorted(inputs) {
        let declared_bool = decorator.is_some_and(|d| d.is_boolean(k));
        match v {
            Value::Bool(true) if declared_bool => args.push(format!("--{k}")),
            Value::Bool(false) if declared_bool => {}
            _ => args.push(format!("--{k}={}", value_text(v))),
        }
    }
    args
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Key,
    Value,
}

/// A parsed executable `--arg-format`: a Go-template subset with `{{.Key}}` and `{{.Value}}`.
///
/// The template is split into argv words at its own whitespace *before* substitution, so a
/// value containing spaces or shell syntax stays inside one argument: nothing goes through a
/// shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgFormat {
    words: Vec<Vec<Piece>>,
}

impl ArgFormat {
    /// Parses a template; unknown actions or an unclosed `{{` are
    /// [`ExecError::InvalidService`].
    pub fn parse(template: &str) -> Result<Self, ExecError> {
        let bad = |why: String| ExecError::InvalidService {
            reason: format!("arg_format {template:?}: {why}"),
        };
        let mut words = Vec::new();
        let mut word: Vec<Piece> = Vec::new();
        let mut lit = String::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("{{") {
                let end = after
                    .find("}}")
                    .ok_or_else(|| bad("unclosed {{".to_owned()))?;
                let action = after[..end].trim();
                let piece = match action {
                    ".Key" => Piece::Key,
                    ".Value" => Piece::Value,
                    other => {
                        return Err(bad(format!(
                            "unknown action {{{{{other}}}}} (only .Key and .Value)"
                        )))
                    }
                };
                if !lit.is_empty() {
                    word.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                word.push(piece);
                rest = &after[end + 2..];
                continue;
            }
            let Some(c) = rest.chars().next() else { break };
            rest = &rest[c.len_utf8()..];
            if c.is_whitespace() {
                if !lit.is_empty() {
                    word.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            } else {
                lit.push(c);
            }
        }
        if !lit.is_empty() {
            word.push(Piece::Lit(lit));
        }
        if !word.is_empty() {
            words.push(word);
        }
        if words.is_empty() {
            return Err(bad("empty".to_owned()));
        }
        Ok(Self { words })
    }

    /// argv words for all inputs, in sorted key order.
    pub fn render(&self, inputs: &Inputs) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in sorted(inputs) {
            let text = value_text(v);
            for w in &self.words {
                let mut s = String::new();
                for p in w {
                    match p {
                        Piece::Lit(l) => s.push_str(l),
                        Piece::Key => s.push_str(k),
                        Piece::Value => s.push_str(&text),
                    }
                }
                out.push(s);
            }
        }
        out
    }
}

/// Parses `k=v` strings or JSON objects (the family's `--extra-vars k=v|JSON`) into one object.
pub fn parse_kv_or_json(field: &str, entries: &[String]) -> Result<Inputs, ExecError> {
    let mut out = Inputs::new();
    for e in entries {
        let t = e.trim();
        if t.starts_with('{') {
            match serde_json::from_str::<Value>(t) {
                Ok(Value::Object(m)) => out.extend(m),
                _ => {
                    return Err(ExecError::InvalidService {
                        reason: format!("{field} entry {e:?} is not a JSON object"),
                    })
                }
            }
        } else if let Some((k, v)) = t.split_once('=') {
            out.insert(k.trim().to_owned(), Value::String(v.to_owned()));
        } else {
            return Err(ExecError::InvalidService {
                reason: format!("{field} entry {e:?} is neither k=v nor a JSON object"),
            });
        }
    }
    Ok(out)
}

/// ansible-playbook extra vars: the service's `extra_vars` overlaid with the run inputs.
pub fn ansible_extra_vars(
    service_extra_vars: &[String],
    inputs: &Inputs,
) -> Result<String, ExecError> {
    let mut vars = parse_kv_or_json("extra_vars", service_extra_vars)?;
    for (k, v) in sorted(inputs) {
        vars.insert(k.clone(), v.clone());
    }
    // Sorted keys for a deterministic command line.
    let ordered: std::collections::BTreeMap<_, _> = vars.into_iter().collect();
    serde_json::to_string(&ordered).map_err(|e| ExecError::InvalidService {
        reason: e.to_string(),
    })
}

/// opentofu-plan `-var` arguments: the service's `k=v` vars first, then the inputs (later
/// wins in tofu).
pub fn tofu_var_args(service_vars: &[String], inputs: &Inputs) -> Vec<String> {
    let mut args = Vec::new();
    for v in service_vars {
        args.push("-var".to_owned());
        args.push(v.clone());
    }
    for (k, v) in sorted(inputs) {
        args.push("-var".to_owned());
        args.push(format!("{k}={}", value_text(v)));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deco(draft: &str) -> Decorator {
        Decorator::new(json!({
            "$schema": draft,
            "$id": "root",
            "type": "object",
            "properties": {
                "device": {"type": "string"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "ratio": {"type": "number"},
                "dry_run": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "opts": {"type": "object"},
                "mode": {"enum": ["fast", "safe"]}
            },
            "required": ["device", "port"],
            "additionalProperties": false
        }))
        .unwrap()
    }

    const DRAFTS: [&str; 2] = [
        "http://json-schema.org/draft-07/schema#",
        "https://json-schema.org/draft/2020-12/schema",
    ];

    #[test]
    fn coercion_follows_declared_types() {
        for d in DRAFTS {
            let d = deco(d);
            let i = parse_set_args(
                Some(&d),
                &[
                    "device=r1",
                    "port=22",
                    "ratio=0.5",
                    "dry_run",
                    "tags=[\"a\",\"b\"]",
                    "opts={\"x\":1}",
                    "mode=fast",
                ],
            )
            .unwrap();
            assert_eq!(
                Value::Object(i.clone()),
                json!({"device":"r1","port":22,"ratio":0.5,"dry_run":true,"tags":["a","b"],"opts":{"x":1},"mode":"fast"})
            );
            d.validate(&i).unwrap();
            let i = parse_set_args(Some(&d), &["device=r1", "port=22", "dry_run=false"]).unwrap();
            assert_eq!(i["dry_run"], json!(false));
        }
    }

    #[test]
    fn bare_set_without_boolean_schema_is_string_true() {
        let i = parse_set_args(None, &["verbose", "a=b=c"]).unwrap();
        assert_eq!(Value::Object(i), json!({"verbose":"true","a":"b=c"}));
        assert!(parse_set_args(None, &["=x"]).is_err());
    }

    #[test]
    fn every_violation_with_its_pointer() {
        for d in DRAFTS {
            let d = deco(d);
            let i = parse_set_args(
                Some(&d),
                &["port=abc", "ratio=x", "mode=slow", "bogus=1", "tags=[1]"],
            )
            .unwrap();
            let v = d.violations(&i);
            let ptrs: Vec<&str> = v.iter().map(|v| v.pointer.as_str()).collect();
            for want in ["/device", "/port", "/ratio", "/mode", "/bogus", "/tags/0"] {
                assert!(ptrs.contains(&want), "{want} missing from {v:?}");
            }
            let err = d.validate(&i).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("/port") && msg.contains("/bogus"), "{msg}");
            let i = parse_set_args(Some(&d), &["device=r1", "port=70000"]).unwrap();
            assert_eq!(d.violations(&i)[0].pointer, "/port");
        }
    }

    #[test]
    fn bad_schema_is_reported() {
        let e = Decorator::new(json!({"type": 12})).unwrap_err();
        assert!(matches!(e, ExecError::InvalidDecorator { .. }), "{e}");
    }

    #[test]
    fn python_rendering() {
        let d = deco(DRAFTS[0]);
        let i = parse_set_args(Some(&d), &["port=22", "device=r1", "dry_run"]).unwrap();
        assert_eq!(
            python_args(Some(&d), &i),
            ["--device=r1", "--dry_run", "--port=22"]
        );
        let i = parse_set_args(Some(&d), &["dry_run=false", "tags=[\"a\"]"]).unwrap();
        assert_eq!(python_args(Some(&d), &i), ["--tags=[\"a\"]"]);
        let i = parse_set_args(None, &["flag"]).unwrap();
        assert_eq!(python_args(None, &i), ["--flag=true"]);
    }

    #[test]
    fn arg_format_rendering_is_shell_free() {
        let mut i = Inputs::new();
        i.insert("port".into(), json!(22));
        i.insert("device".into(), json!("10.0.0.1; rm -rf / $(x)"));
        let f = ArgFormat::parse(DEFAULT_ARG_FORMAT).unwrap();
        assert_eq!(
            f.render(&i),
            ["--device", "10.0.0.1; rm -rf / $(x)", "--port", "22"]
        );
        let f = ArgFormat::parse("{{ .Key }}={{.Value}}").unwrap();
        assert_eq!(f.render(&i), ["device=10.0.0.1; rm -rf / $(x)", "port=22"]);
        assert!(ArgFormat::parse("--{{.Nope}}").is_err());
        assert!(ArgFormat::parse("--{{.Key").is_err());
        assert!(ArgFormat::parse("   ").is_err());
    }

    #[test]
    fn ansible_and_tofu_rendering() {
        let mut i = Inputs::new();
        i.insert("b".into(), json!(2));
        i.insert("a".into(), json!("x y"));
        let ev = ansible_extra_vars(&["a=base".into(), "{\"c\":[1]}".into()], &i).unwrap();
        assert_eq!(ev, r#"{"a":"x y","b":2,"c":[1]}"#);
        assert!(ansible_extra_vars(&["nokv".into()], &i).is_err());
        assert_eq!(
            tofu_var_args(&["region=eu".into()], &i),
            ["-var", "region=eu", "-var", "a=x y", "-var", "b=2"]
        );
    }
}
