//! Request bodies built from the flags of `create`. Flags only build the resource's JSON;
//! whether it is valid (required fields per type, references that exist, names) is decided in
//! one place, the resource model, so the CLI, the API and the import file report the same
//! problems in the same words.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::args::{
    CreateDecorator, CreateExecutableObject, CreateRegistry, CreateRepository, CreateSecret,
    MetaArgs, RegistryType, ServiceKind,
};
use crate::cmd::term;
use crate::exit::{Failure, USAGE};

fn put(m: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        m.insert(key.to_owned(), v.into());
    }
}

fn put_list(m: &mut Map<String, Value>, key: &str, v: Vec<String>) {
    if !v.is_empty() {
        m.insert(key.to_owned(), json!(v));
    }
}

fn meta_body(name: String, meta: MetaArgs) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    put(&mut m, "description", meta.description);
    put_list(&mut m, "tags", meta.tags);
    m
}

pub(super) fn repository_body(r: CreateRepository) -> Value {
    let mut m = meta_body(r.name, r.meta);
    m.insert("url".into(), json!(r.url));
    put(&mut m, "reference", r.reference);
    put(&mut m, "private-key-name", r.private_key_name);
    put(&mut m, "username", r.username);
    put(&mut m, "password-name", r.password_name);
    Value::Object(m)
}

pub(super) fn service_body(kind: ServiceKind) -> Result<Value, Failure> {
    let (name, common, service_type) = match &kind {
        ServiceKind::PythonScript { name, common, .. } => (name, common, "python-script"),
        ServiceKind::AnsiblePlaybook { name, common, .. } => (name, common, "ansible-playbook"),
        ServiceKind::OpentofuPlan { name, common, .. } => (name, common, "opentofu-plan"),
        ServiceKind::Executable { name, common, .. } => (name, common, "executable"),
    };
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("type".into(), json!(service_type));
    put(&mut m, "description", common.meta.description.clone());
    put_list(&mut m, "tags", common.meta.tags.clone());
    put(&mut m, "repository", common.repository.clone());
    put(&mut m, "working-directory", common.working_dir.clone());
    put(&mut m, "decorator", common.decorator.clone());
    if !common.env.is_empty() {
        m.insert("env".into(), json!(pairs("--env", &common.env)?));
    }
    if !common.secrets.is_empty() {
        let refs = common
            .secrets
            .iter()
            .map(|s| secret_ref(s))
            .collect::<Result<Vec<_>, _>>()?;
        m.insert("secrets".into(), Value::Array(refs));
    }
    put(&mut m, "registry", common.registry.clone());
    put(
        &mut m,
        "executable-object",
        common.executable_object.clone(),
    );
    put(&mut m, "timeout", common.timeout);
    put(&mut m, "retries", common.retries);
    if !common.runner_labels.is_empty() {
        m.insert(
            "runner-labels".into(),
            json!(pairs("--runner-label", &common.runner_labels)?),
        );
    }
    match kind {
        ServiceKind::PythonScript {
            filename, req_file, ..
        } => {
            put(&mut m, "filename", filename);
            put(&mut m, "req-file", req_file);
        }
        ServiceKind::AnsiblePlaybook {
            playbooks,
            inventory,
            extra_vars,
            extra_vars_file,
            ..
        } => {
            put_list(&mut m, "playbooks", playbooks);
            put(&mut m, "inventory", inventory);
            put_list(&mut m, "extra-vars", extra_vars);
            put(&mut m, "extra-vars-file", extra_vars_file);
        }
        ServiceKind::OpentofuPlan {
            vars,
            var_files,
            backend_config,
            ..
        } => {
            put_list(&mut m, "vars", vars);
            put_list(&mut m, "var-files", var_files);
            put_list(&mut m, "backend-config", backend_config);
        }
        ServiceKind::Executable {
            filename,
            arg_format,
            ..
        } => {
            put(&mut m, "filename", filename);
            put(&mut m, "arg-format", arg_format);
        }
    }
    Ok(Value::Object(m))
}

/// Repeated `K=V` flag values as a map (split at the first `=`; a later key wins).
fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut map = BTreeMap::new();
    for e in items {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| Failure::new(USAGE, format!("{flag} {e:?}: expected KEY=VALUE")))?;
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

/// `--secret name=<secret>,type=env,target=<VAR>`; `type` defaults to `env`.
fn secret_ref(spec: &str) -> Result<Value, Failure> {
    secret_ref_flag("--secret", spec)
}

/// A secret reference in `--secret`'s syntax given to `flag` (`run … --set-secret` too).
pub fn secret_ref_flag(flag: &str, spec: &str) -> Result<Value, Failure> {
    let bad = |why: String| {
        Failure::new(
            USAGE,
            format!("{flag} {spec:?}: {why} (expected name=<secret>,type=env,target=<VAR>)"),
        )
    };
    let mut name = None;
    let mut ty = None;
    let mut target = None;
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
        let slot = match k.trim() {
            "name" => &mut name,
            "type" => &mut ty,
            "target" => &mut target,
            other => return Err(bad(format!("unknown key {other:?}"))),
        };
        if slot.replace(v.trim().to_owned()).is_some() {
            return Err(bad(format!("{} given twice", k.trim())));
        }
    }
    let name = name.ok_or_else(|| bad("name is missing".into()))?;
    let target = target.ok_or_else(|| bad("target is missing".into()))?;
    Ok(json!({ "name": name, "type": ty.unwrap_or_else(|| "env".into()), "target": target }))
}

pub(super) fn decorator_body(d: CreateDecorator) -> Result<Value, Failure> {
    let schema = json_arg("--schema", &d.schema)?;
    let mut m = meta_body(d.name, d.meta);
    m.insert("schema".into(), schema);
    Ok(Value::Object(m))
}

/// A JSON flag value, inline or `@file`; errors name the flag (and file) and the position.
pub fn json_arg(flag: &str, raw: &str) -> Result<Value, Failure> {
    let (text, origin) = match raw.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Failure::new(USAGE, format!("{flag} @{path}: {e}")))?,
            format!("{flag} @{path}"),
        ),
        None => (raw.to_owned(), flag.to_owned()),
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::new(USAGE, format!("{origin} is not valid JSON: {e}")))
}

pub(super) fn secret_body(s: CreateSecret) -> Result<Value, Failure> {
    let value = match s.value {
        Some(v) if !s.prompt_value => v,
        _ => term::read_secret("Enter secret value: ", false)?,
    };
    let mut m = meta_body(s.name, s.meta);
    m.insert("value".into(), json!(value));
    Ok(Value::Object(m))
}

pub(super) fn exec_object_body(e: CreateExecutableObject) -> Value {
    let mut m = meta_body(e.name, e.meta);
    m.insert(
        "exec-command".into(),
        json!(e.exec_command.to_string_lossy()),
    );
    Value::Object(m)
}

pub(super) fn registry_body(r: CreateRegistry) -> Value {
    let mut m = meta_body(r.name, r.meta);
    let ty = match r.registry_type {
        RegistryType::Pypi => "pypi",
        RegistryType::AnsibleGalaxy => "ansible-galaxy",
    };
    m.insert("type".into(), json!(ty));
    m.insert("url".into(), json!(r.url));
    put(&mut m, "username", r.username);
    put(&mut m, "password-name", r.password_name);
    put(&mut m, "token-name", r.token_name);
    m.insert("default".into(), json!(r.default));
    m.insert("insecure".into(), json!(r.insecure));
    Value::Object(m)
}

/// `create user`: the name and the password typed at the prompts.
/// The body of `POST /api/v1/users`; without a role the node makes an operator.
pub(super) fn user_body(
    name: &str,
    password: &str,
    role: Option<autogate_automation::api_types::Role>,
    temporary: bool,
) -> Value {
    let mut body = json!({ "name": name, "password": password });
    if let Some(role) = role {
        body["role"] = json!(role);
    }
    // Only when asked: a node of an earlier version refuses the unknown field rather than
    // create a user whose password silently is not temporary.
    if temporary {
        body["temporary"] = json!(true);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs() {
        assert_eq!(
            secret_ref("name=tok,type=env,target=TOKEN").ok(),
            Some(json!({"name": "tok", "type": "env", "target": "TOKEN"}))
        );
        assert_eq!(
            secret_ref("name=tok,target=TOKEN").ok(),
            Some(json!({"name": "tok", "type": "env", "target": "TOKEN"}))
        );
        assert!(secret_ref("name=tok").is_err());
        assert!(secret_ref("name=tok,target=A,color=red").is_err());
        assert!(secret_ref("tok").is_err());
    }
}
