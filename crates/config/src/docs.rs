//! The configuration reference, generated from the schema table.
//!
//! `docs/configuration.md` is exactly [`render_markdown`]'s output, checked by a test, so the
//! reference cannot drift from what the loader accepts. Prose that does not come from the table
//! lives in `src/doc/*.md` next to this module.

use crate::model::Role;
use crate::schema::{role_keys, DefaultValue, KeyDef, KEYS, SECTIONS};

const INTRO: &str = include_str!("doc/intro.md");
const RULES: &str = include_str!("doc/rules.md");

/// The configuration reference in Markdown (the content of `docs/configuration.md`).
pub fn render_markdown() -> String {
    let mut out = String::from(INTRO);
    out.push_str("\n## Keys\n");
    for (section, about) in SECTIONS {
        out.push_str(&format!("\n### [{section}]\n\n{about}\n\n"));
        out.push_str("| key | env | default | meaning |\n|---|---|---|---|\n");
        for def in KEYS.iter().filter(|d| d.section == *section) {
            out.push_str(&row(def));
        }
    }
    out.push('\n');
    out.push_str(RULES);
    out
}

/// The key settings of a daemon role as `autogate help <role>` lists them: one line per key of
/// [`crate::schema::ROLE_KEYS`] with its environment variable, file key and default, from the
/// schema table. Empty for a role without such a list.
pub fn role_settings(role: Role) -> String {
    let rows: Vec<[String; 3]> = role_keys(role)
        .map(|def| {
            let default = match def.default {
                DefaultValue::Value(v) => v.to_string(),
                DefaultValue::Derived(text) => text.replace('`', ""),
                DefaultValue::None => "unset".to_string(),
            };
            [
                def.env_name(),
                format!("[{}] {}", def.section, def.key),
                default,
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
    let (env, key) = (width(0), width(1));
    let mut out = String::from(
        "Key settings (environment variable, the same key in the config file, default):\n",
    );
    for [var, name, default] in &rows {
        out.push_str(&format!("  {var:<env$}  {name:<key$}  {default}\n"));
    }
    out
}

fn row(def: &KeyDef) -> String {
    let default = match def.default {
        // An older-name key takes its default from the `[connect]` key it sets.
        DefaultValue::None if def.alias_of.is_some() => "as `[connect]`".to_string(),
        DefaultValue::None => "—".to_string(),
        DefaultValue::Value(v) => format!("`{v}`"),
        DefaultValue::Derived(text) => text.to_string(),
    };
    let mut meaning = String::new();
    if let Some(target) = def.alias_of {
        if target == "hosts" {
            meaning.push_str("older name, sets `connect.hosts`: ");
        } else {
            meaning.push_str(&format!("older name of `connect.{target}`: "));
        }
    }
    meaning.push_str(def.doc);
    meaning.push_str(&format!(" *({})*", def.kind.describe()));
    if def.secret {
        meaning.push_str(" **Secret**: never shown.");
    }
    if def.compat {
        meaning.push_str(&format!(
            " *Compatibility: accepted, no effect; a node started with it set logs a warning naming it. Instead: {}.*",
            def.instead
        ));
    }
    format!(
        "| `{}` | `{}` | {} | {} |\n",
        def.key,
        def.env_name(),
        default,
        meaning.replace('|', "\\|")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{find, ROLE_KEYS};

    #[test]
    fn every_role_key_is_in_the_schema() {
        for (role, ids) in ROLE_KEYS {
            for id in *ids {
                let (section, key) = id.split_once('.').unwrap_or_default();
                assert!(find(section, key).is_some(), "{role:?}: no key {id}");
            }
        }
    }

    #[test]
    fn role_settings_name_variable_key_and_default() {
        let text = role_settings(Role::Server);
        let port = text
            .lines()
            .find(|l| l.contains("GATEWAY_SERVER_PORT"))
            .unwrap_or_default();
        assert!(
            port.contains(" [server] port ") && port.trim_end().ends_with("50051"),
            "{text}"
        );
        for role in [Role::Server, Role::Runner, Role::Manager] {
            let text = role_settings(role);
            assert!(text.lines().count() > 5, "{role:?}: {text}");
            // Help is wrapped to the terminal: keep the rows within 90 columns.
            for line in text.lines() {
                assert!(line.len() <= 90, "{role:?}: {line}");
            }
        }
        assert_eq!(role_settings(Role::Client), "");
    }
}
