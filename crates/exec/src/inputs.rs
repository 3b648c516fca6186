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
//!
//! Inputs come from whoever may run a service (an operator, the manager), not from the
//! service's author, so nothing here lets them become code or options: keys are names
//! ([`key_violations`]: identifiers, and no reserved Ansible name for playbooks), a value never
//! stands alone as an option of an executable ([`ArgFormat::render`]), and values reach Ansible
//! as data it never templates ([`ansible_vars_file`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ExecError;

/// Run inputs: one JSON object.
pub type Inputs = Map<String, Value>;

/// The default `--arg-format` of executable services: one word per input, so that a value is
/// always attached to its option and never read as an option of its own.
pub const DEFAULT_ARG_FORMAT: &str = "--{{.Key}}={{.Value}}";

/// The longest input key accepted.
pub const MAX_KEY_LEN: usize = 128;

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

    /// The names of the top-level properties the decorator declares.
    pub fn property_names(&self) -> Vec<String> {
        self.schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
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

/// Variable names Ansible gives a meaning of its own (its playbook keywords, which
/// `ansible.vars.reserved` refuses as variables, and the special variables of its documentation):
/// an input of such a name would change how or where a play runs, or what it believes about
/// its inventory. Every `ansible_*` name is refused as well (connection, become, interpreter and
/// fact variables all live there).
pub const ANSIBLE_RESERVED_NAMES: &[&str] = &[
    // Playbook keywords (ansible-core `_RESERVED_NAMES`).
    "action",
    "always",
    "any_errors_fatal",
    "args",
    "async",
    "async_val",
    "become",
    "become_exe",
    "become_flags",
    "become_method",
    "become_user",
    "block",
    "changed_when",
    "check_mode",
    "collections",
    "connection",
    "debugger",
    "delay",
    "delegate_facts",
    "delegate_to",
    "diff",
    "environment",
    "fact_path",
    "failed_when",
    "force_handlers",
    "gather_facts",
    "gather_subset",
    "gather_timeout",
    "handlers",
    "hosts",
    "ignore_errors",
    "ignore_unreachable",
    "local_action",
    "loop",
    "loop_control",
    "loop_with",
    "max_fail_percentage",
    "module_defaults",
    "name",
    "no_log",
    "notify",
    "order",
    "poll",
    "port",
    "post_tasks",
    "pre_tasks",
    "register",
    "remote_user",
    "rescue",
    "retries",
    "roles",
    "run_once",
    "serial",
    "strategy",
    "tags",
    "tasks",
    "throttle",
    "timeout",
    "until",
    "vars",
    "vars_files",
    "vars_prompt",
    "when",
    "with_",
    // Special (magic) variables without the `ansible_` prefix.
    "group_names",
    "groups",
    "hostvars",
    "inventory_dir",
    "inventory_file",
    "inventory_hostname",
    "inventory_hostname_short",
    "omit",
    "play_hosts",
    "playbook_dir",
    "role_name",
    "role_names",
    "role_path",
];

/// Every input key that may not be used, with its pointer; empty when all are fine.
///
/// Every service type: a key is 1 to [`MAX_KEY_LEN`] characters of letters, digits, `_` and
/// `-`, not starting with `-` (a key becomes an option name or a variable name, never an option
/// or an expression of its own). Ansible playbooks: a key is an identifier
/// (`[A-Za-z_][A-Za-z0-9_]*`) and not a reserved name ([`ANSIBLE_RESERVED_NAMES`], `ansible_*`).
pub fn key_violations(ansible: bool, inputs: &Inputs) -> Vec<Violation> {
    let mut out = Vec::new();
    for (k, _) in sorted(inputs) {
        let pointer = format!("/{}", escape_pointer(k));
        let shown: String = k.chars().take(MAX_KEY_LEN).collect();
        let mut bad = |message: String| {
            out.push(Violation {
                pointer: pointer.clone(),
                message,
            })
        };
        if k.is_empty() || k.chars().count() > MAX_KEY_LEN {
            bad(format!(
                "input name must be 1 to {MAX_KEY_LEN} characters long"
            ));
            continue;
        }
        if ansible {
            let mut chars = k.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bad(format!(
                    "input name {shown:?} is not an identifier ([A-Za-z_][A-Za-z0-9_]*), which \
                     an Ansible variable name must be"
                ));
            } else if k.to_ascii_lowercase().starts_with("ansible_") {
                bad(format!(
                    "input name {shown:?} is reserved: ansible_* variables configure Ansible \
                     itself (connection, become, facts), so a run's inputs may not set them"
                ));
            } else if ANSIBLE_RESERVED_NAMES.contains(&k.as_str()) {
                bad(format!(
                    "input name {shown:?} is reserved by Ansible (a playbook keyword or special \
                     variable), so a run's inputs may not set it"
                ));
            }
        } else if k.starts_with('-')
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bad(format!(
                "input name {shown:?} may hold only letters, digits, '_' and '-', and may not \
                 start with '-'"
            ));
        }
    }
    out
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
///
/// As the family does, every property the decorator declares is passed, `--k=` (an empty
/// string) when the run does not set it — scripts written for it read a missing input as `""`.
/// Two exceptions: a declared boolean that is unset is omitted, as when false (an explicit
/// `--k=` would break the `store_true` option that the bare `--k` form implies), and a property
/// name that could not be an input name (see [`key_violations`]) is never turned into an option.
pub fn python_args(decorator: Option<&Decorator>, inputs: &Inputs) -> Vec<String> {
    let mut all = inputs.clone();
    if let Some(d) = decorator {
        for name in d.property_names() {
            if all.contains_key(&name) || d.is_boolean(&name) {
                continue;
            }
            let mut one = Inputs::new();
            one.insert(name.clone(), Value::String(String::new()));
            if key_violations(false, &one).is_empty() {
                all.extend(one);
            }
        }
    }
    let mut args = Vec::new();
    for (k, v) in sorted(&all) {
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
    ///
    /// A word that *begins* with an input's value is refused when that value starts with `-`
    /// (a JSON number excepted: `-1` is data): the program would read the value as an option
    /// of its own (`--output=/tmp/x`), whatever the decorator allowed. Every such input is
    /// reported with its pointer, as [`ExecError::InvalidInputs`]; nothing has run.
    pub fn render(&self, inputs: &Inputs) -> Result<Vec<String>, ExecError> {
        let mut out = Vec::new();
        let mut violations = Vec::new();
        for (k, v) in sorted(inputs) {
            let text = value_text(v);
            let option_like = text.starts_with('-') && !v.is_number();
            let mut refused = false;
            for w in &self.words {
                if option_like && matches!(w.first(), Some(Piece::Value)) && !refused {
                    refused = true;
                    violations.push(Violation {
                        pointer: format!("/{}", escape_pointer(k)),
                        message: format!(
                            "the value starts with '-' and the service's arg-format passes it \
                             as an argument of its own ({}), where the program would take it \
                             for an option; give a value without the leading '-', or an \
                             arg-format that attaches it to its option such as {DEFAULT_ARG_FORMAT}",
                            self.word_template(w)
                        ),
                    });
                }
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
        if violations.is_empty() {
            Ok(out)
        } else {
            Err(ExecError::InvalidInputs { violations })
        }
    }

    /// One word of the template as written, for messages.
    fn word_template(&self, w: &[Piece]) -> String {
        w.iter()
            .map(|p| match p {
                Piece::Lit(l) => l.clone(),
                Piece::Key => "{{.Key}}".to_owned(),
                Piece::Value => "{{.Value}}".to_owned(),
            })
            .collect()
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

/// ansible-playbook extra vars as the YAML text of a vars file (passed as
/// `--extra-vars @file`): the service's `extra_vars` overlaid with the run inputs; `None` when
/// there are none.
///
/// Ansible templates every string of its extra vars when a play reads it, so an input
/// `{{ lookup('pipe','id') }}` would run a command on this node. Every string of an input —
/// nested ones and mapping keys too — is therefore tagged `!unsafe`, which Ansible keeps as
/// data and never templates. The service's own `extra_vars` are written untagged: they are the
/// service author's, who writes the playbook as well, and may template on purpose.
pub fn ansible_vars_file(
    service_extra_vars: &[String],
    inputs: &Inputs,
) -> Result<Option<String>, ExecError> {
    let mut vars: std::collections::BTreeMap<String, (bool, Value)> =
        parse_kv_or_json("extra_vars", service_extra_vars)?
            .into_iter()
            .map(|(k, v)| (k, (false, v)))
            .collect();
    for (k, v) in inputs {
        vars.insert(k.clone(), (true, v.clone()));
    }
    if vars.is_empty() {
        return Ok(None);
    }
    let mut out = String::from("# run inputs are tagged !unsafe: Ansible never templates them\n");
    for (k, (unsafe_, v)) in &vars {
        yaml_string(k, false, &mut out);
        out.push_str(": ");
        yaml_value(v, *unsafe_, &mut out);
        out.push('\n');
    }
    Ok(Some(out))
}

/// A JSON value as YAML flow text; strings (and mapping keys) tagged `!unsafe` when `unsafe_`.
fn yaml_value(v: &Value, unsafe_: bool, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // YAML 1.1 (PyYAML) reads `1e300` or `1.5e300` as strings: the tag keeps floats floats.
        Value::Number(n) if n.is_f64() => {
            out.push_str("!!float \"");
            out.push_str(&n.to_string());
            out.push('"');
        }
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => yaml_string(s, unsafe_, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                yaml_value(item, unsafe_, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                yaml_string(k, unsafe_, out);
                out.push_str(": ");
                yaml_value(item, unsafe_, out);
            }
            out.push('}');
        }
    }
}

/// A double-quoted YAML scalar. Only printable ASCII is written as it is; everything else is
/// an escape, so no character can end the scalar early or be refused by the YAML reader
/// (which rejects some non-printable characters outright).
fn yaml_string(s: &str, unsafe_: bool, out: &mut String) {
    use std::fmt::Write as _;
    if unsafe_ {
        out.push_str("!unsafe ");
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08X}", u32::from(c));
            }
        }
    }
    out.push('"');
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
        // Every declared property is passed, `""` when unset (the family's rule); an unset
        // boolean is omitted, as when false.
        assert_eq!(
            python_args(Some(&d), &i),
            [
                "--device=r1",
                "--dry_run",
                "--mode=",
                "--opts=",
                "--port=22",
                "--ratio=",
                "--tags="
            ]
        );
        let i = parse_set_args(Some(&d), &["dry_run=false", "tags=[\"a\"]"]).unwrap();
        assert_eq!(
            python_args(Some(&d), &i),
            [
                "--device=",
                "--mode=",
                "--opts=",
                "--port=",
                "--ratio=",
                "--tags=[\"a\"]"
            ]
        );
        // A property name that could not be an input name never becomes an option.
        let odd = Decorator::new(
            json!({"type": "object", "properties": {"-x": {}, "a b": {}, "ok": {}}}),
        )
        .unwrap();
        assert_eq!(python_args(Some(&odd), &Inputs::new()), ["--ok="]);
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
            f.render(&i).unwrap(),
            ["--device=10.0.0.1; rm -rf / $(x)", "--port=22"]
        );
        let f = ArgFormat::parse("--{{.Key}} {{.Value}}").unwrap();
        assert_eq!(
            f.render(&i).unwrap(),
            ["--device", "10.0.0.1; rm -rf / $(x)", "--port", "22"]
        );
        let f = ArgFormat::parse("{{ .Key }}={{.Value}}").unwrap();
        assert_eq!(
            f.render(&i).unwrap(),
            ["device=10.0.0.1; rm -rf / $(x)", "port=22"]
        );
        assert!(ArgFormat::parse("--{{.Nope}}").is_err());
        assert!(ArgFormat::parse("--{{.Key").is_err());
        assert!(ArgFormat::parse("   ").is_err());
    }

    #[test]
    fn a_value_never_stands_alone_as_an_option() {
        let mut i = Inputs::new();
        i.insert("host".into(), json!("--output=/tmp/x"));
        i.insert("count".into(), json!(-3));
        i.insert("name".into(), json!("r1"));
        // The default attaches the value to its option: harmless.
        let f = ArgFormat::parse(DEFAULT_ARG_FORMAT).unwrap();
        assert_eq!(
            f.render(&i).unwrap(),
            ["--count=-3", "--host=--output=/tmp/x", "--name=r1"]
        );
        // A format that makes the value a word of its own refuses it, naming the input; a
        // negative number stays data.
        for t in ["--{{.Key}} {{.Value}}", "{{.Value}}", "{{.Value}}.txt"] {
            let f = ArgFormat::parse(t).unwrap();
            let ExecError::InvalidInputs { violations } = f.render(&i).unwrap_err() else {
                panic!("{t}: not InvalidInputs")
            };
            assert_eq!(violations.len(), 1, "{t}: {violations:?}");
            assert_eq!(violations[0].pointer, "/host");
            assert!(violations[0].message.contains("option"), "{violations:?}");
        }
    }

    #[test]
    fn input_names_are_names() {
        let mut i = Inputs::new();
        for k in [
            "device",
            "dry-run",
            "x_1",
            "-rf",
            "a=b",
            "a b",
            "",
            &"k".repeat(129),
        ] {
            i.insert(k.into(), json!(1));
        }
        let bad: Vec<String> = key_violations(false, &i)
            .into_iter()
            .map(|v| v.pointer)
            .collect();
        assert_eq!(bad.len(), 5, "{bad:?}");
        for p in ["/-rf", "/a=b", "/a b", "/"] {
            assert!(bad.contains(&p.to_owned()), "{p} in {bad:?}");
        }
        assert!(!bad.contains(&"/dry-run".to_owned()));

        let mut i = Inputs::new();
        for k in [
            "device",
            "_x",
            "dry-run",
            "ansible_connection",
            "ANSIBLE_become",
            "hostvars",
            "environment",
            "vars",
            "omit",
            "1x",
        ] {
            i.insert(k.into(), json!("v"));
        }
        let bad: Vec<String> = key_violations(true, &i)
            .into_iter()
            .map(|v| v.pointer)
            .collect();
        assert_eq!(
            bad,
            [
                "/1x",
                "/ANSIBLE_become",
                "/ansible_connection",
                "/dry-run",
                "/environment",
                "/hostvars",
                "/omit",
                "/vars"
            ]
        );
    }

    #[test]
    fn ansible_vars_are_unsafe_data() {
        let mut i = Inputs::new();
        i.insert("who".into(), json!("{{ lookup('pipe','id') }}"));
        i.insert("n".into(), json!(2));
        i.insert("f".into(), json!(0.5));
        i.insert(
            "nested".into(),
            json!({"{{k}}": ["{% x %}", true, null], "q": "a\"b\\c\u{7f}\u{e9}\u{1F600}\n"}),
        );
        let y = ansible_vars_file(&["site=lab".into(), "{\"c\":[1]}".into()], &i)
            .unwrap()
            .unwrap();
        let body: Vec<&str> = y.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                r#""c": [1]"#,
                r#""f": !!float "0.5""#,
                r#""n": 2"#,
                r#""nested": {!unsafe "q": !unsafe "a\"b\\c\u007F\u00E9\U0001F600\u000A", !unsafe "{{k}}": [!unsafe "{% x %}", true, null]}"#,
                r#""site": "lab""#,
                r#""who": !unsafe "{{ lookup('pipe','id') }}""#,
            ]
        );
        assert_eq!(ansible_vars_file(&[], &Inputs::new()).unwrap(), None);
        assert!(ansible_vars_file(&["nokv".into()], &i).is_err());
    }

    #[test]
    fn tofu_rendering() {
        let mut i = Inputs::new();
        i.insert("b".into(), json!(2));
        i.insert("a".into(), json!("x y"));
        assert_eq!(
            tofu_var_args(&["region=eu".into()], &i),
            ["-var", "region=eu", "-var", "a=x y", "-var", "b=2"]
        );
    }
}
