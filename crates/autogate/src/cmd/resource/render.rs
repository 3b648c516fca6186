//! What `create|get|describe|delete` print: the family's tables for `get`, its
//! `Label:  value` layouts for `describe`, and the JSON of `--raw`.

use autogate_automation::api_types::UserView;
use autogate_resources::model::Kind;
use jiff::tz::TimeZone;
use serde_json::{json, Value};

use crate::cmd::term::{self, outln};

/// A JSON document as `--raw` prints it: indented, on standard output.
pub fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// `get <resources>`: the family's columns for the kind.
pub(super) fn list_table(kind: Kind, items: &[Value]) -> String {
    let s = |v: &Value, k: &str| term::text(&v[k]);
    let (headers, rows): (&[&str], Vec<Vec<String>>) = match kind {
        Kind::Service => (
            &["NAME", "TYPE", "CREATED"],
            items
                .iter()
                .map(|v| vec![s(v, "name"), s(v, "type"), term::utc(&v["created"])])
                .collect(),
        ),
        Kind::Repository => (
            &["NAME", "URL", "REFERENCE", "CREATED"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "name"),
                        s(v, "url"),
                        or_dash(s(v, "reference")),
                        term::utc(&v["created"]),
                    ]
                })
                .collect(),
        ),
        Kind::ExecutableObject => (
            &["NAME", "EXEC COMMAND", "CREATED"],
            items
                .iter()
                .map(|v| vec![s(v, "name"), s(v, "exec-command"), term::utc(&v["created"])])
                .collect(),
        ),
        Kind::Registry => (
            &["NAME", "TYPE", "URL", "DEFAULT", "CREATED"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "name"),
                        s(v, "type"),
                        s(v, "url"),
                        s(v, "default"),
                        term::utc(&v["created"]),
                    ]
                })
                .collect(),
        ),
        Kind::Decorator | Kind::Secret => (
            &["NAME", "DESCRIPTION", "CREATED"],
            items
                .iter()
                .map(|v| vec![s(v, "name"), s(v, "description"), term::utc(&v["created"])])
                .collect(),
        ),
    };
    term::table(headers, &rows)
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

pub(super) fn describe_text(kind: Kind, v: &Value, tz: &TimeZone) -> String {
    let s = |k: &str| term::text(&v[k]);
    let time = |k: &str| match v[k].as_str() {
        Some(t) => term::show_time(t, tz),
        None => String::new(),
    };
    let mut lines: Vec<(&str, String)> = vec![("Name", s("name"))];
    let optional = |lines: &mut Vec<(&'static str, String)>, label: &'static str, k: &str| {
        let t = term::text(&v[k]);
        if !t.is_empty() {
            lines.push((label, t));
        }
    };
    match kind {
        Kind::Service => {
            // The family's lines first, in its order; then what the type adds, when set. Vars
            // and Var Files are an OpenTofu plan's, shown in the family's place for that type
            // only, and only when set: an empty line for a field the type does not have reads
            // as a setting that is missing.
            lines.push(("Repo Name", s("repository")));
            lines.push(("Working Dir", s("working-directory")));
            if v["type"].as_str() == Some("opentofu-plan") {
                optional(&mut lines, "Vars", "vars");
                optional(&mut lines, "Var Files", "var-files");
            }
            lines.push(("Decorator", s("decorator")));
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
            lines.push(("Type", s("type")));
            optional(&mut lines, "Filename", "filename");
            optional(&mut lines, "Req File", "req-file");
            optional(&mut lines, "Playbooks", "playbooks");
            optional(&mut lines, "Inventory", "inventory");
            optional(&mut lines, "Extra Vars", "extra-vars");
            optional(&mut lines, "Extra Vars File", "extra-vars-file");
            optional(&mut lines, "Backend Config", "backend-config");
            optional(&mut lines, "Arg Format", "arg-format");
            optional(&mut lines, "Executable Object", "executable-object");
            optional(&mut lines, "Registry", "registry");
            optional(&mut lines, "Env", "env");
            if let Some(refs) = v["secrets"].as_array() {
                let t: Vec<String> = refs
                    .iter()
                    .map(|r| {
                        format!(
                            "name={},type={},target={}",
                            term::text(&r["name"]),
                            term::text(&r["type"]),
                            term::text(&r["target"])
                        )
                    })
                    .collect();
                lines.push(("Secrets", t.join(", ")));
            }
            optional(&mut lines, "Timeout", "timeout");
            optional(&mut lines, "Retries", "retries");
            optional(&mut lines, "Runner Labels", "runner-labels");
        }
        Kind::Repository => {
            lines.push(("URL", s("url")));
            lines.push(("Reference", s("reference")));
            optional(&mut lines, "Private Key Name", "private-key-name");
            optional(&mut lines, "Username", "username");
            optional(&mut lines, "Password Name", "password-name");
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
        }
        Kind::Decorator => {
            // The schema last, as an indented JSON document under its label.
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
            lines.push(("Created", time("created")));
            lines.push(("Updated", time("updated")));
            lines.push(("Schema", String::new()));
            let mut out = term::block(&lines);
            let schema = serde_json::to_string_pretty(&v["schema"]).unwrap_or_default();
            for l in schema.lines() {
                out.push_str("  ");
                out.push_str(l);
                out.push('\n');
            }
            return out;
        }
        Kind::Secret => {
            // Metadata only: the value never leaves the node.
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
        }
        Kind::ExecutableObject => {
            lines.push(("Exec Command", s("exec-command")));
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
        }
        Kind::Registry => {
            lines.push(("Type", s("type")));
            lines.push(("URL", s("url")));
            lines.push(("Default", s("default")));
            lines.push(("Insecure", s("insecure")));
            optional(&mut lines, "Username", "username");
            optional(&mut lines, "Password Name", "password-name");
            optional(&mut lines, "Token Name", "token-name");
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
        }
    }
    lines.push(("Created", time("created")));
    lines.push(("Updated", time("updated")));
    term::block(&lines)
}

/// `get users`: the family's columns.
pub(super) fn user_table(users: &[UserView]) -> String {
    let utc = |t: &str| term::show_time(t, &TimeZone::UTC);
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.role.to_string(),
                utc(&u.created),
                u.last_login.as_deref().map_or_else(|| "-".to_owned(), utc),
            ]
        })
        .collect();
    term::table(&["NAME", "ROLE", "CREATED", "LAST LOGIN"], &rows)
}

/// `describe user`: times in `[terminal] timestamp_timezone`, an empty last login before the
/// first one.
pub(super) fn user_text(u: &UserView, tz: &TimeZone) -> String {
    let last_login = u.last_login.as_deref().map(|t| term::show_time(t, tz));
    let mut lines = vec![
        ("Name", u.name.clone()),
        ("Role", u.role.to_string()),
        ("Created", term::show_time(&u.created, tz)),
        ("Last Login", last_login.unwrap_or_default()),
    ];
    if u.password_change_required {
        lines.push((
            "Password",
            "temporary: to be changed at the next login".to_owned(),
        ));
    }
    term::block(&lines)
}

/// `describe service --raw` also carries the family's `metadata` object (scripts read
/// `.metadata.repository.name`), next to the resource's own fields.
pub(super) fn with_metadata(mut v: Value) -> Value {
    let repo = match v["repository"].as_str() {
        Some(r) => json!({ "name": r }),
        None => Value::Null,
    };
    let metadata = json!({
        "name": v["name"],
        "type": v["type"],
        "description": v.get("description").cloned().unwrap_or(json!("")),
        "tags": v.get("tags").cloned().unwrap_or(json!([])),
        "created": v["created"],
        "updated": v["updated"],
        "working_directory": v["working-directory"],
        "decorator": v["decorator"],
        "repository": repo,
    });
    if let Value::Object(m) = &mut v {
        m.insert("metadata".into(), metadata);
    }
    v
}
