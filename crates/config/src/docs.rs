//! The configuration reference, generated from the schema table.
//!
//! `docs/configuration.md` is exactly [`render_markdown`]'s output, checked by a test, so the
//! reference cannot drift from what the loader accepts. Prose that does not come from the table
//! lives in `src/doc/*.md` next to this module.

use crate::schema::{DefaultValue, KeyDef, KEYS, SECTIONS};

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
        meaning.push_str(" *Compatibility: accepted, no effect yet.*");
    }
    format!(
        "| `{}` | `{}` | {} | {} |\n",
        def.key,
        def.env_name(),
        default,
        meaning.replace('|', "\\|")
    )
}
