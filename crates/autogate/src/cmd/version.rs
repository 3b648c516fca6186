//! `autogate version [--show-config]`: the version line in the family's shape
//! (`<label>: <version>`) and, on request, every configuration value with its source.

use autogate_runtime::VERSION;
use serde_json::json;

use super::term::outln;
use crate::cli::Global;
use crate::exit::Failure;

pub fn run(global: &Global, show_config: bool) -> Result<(), Failure> {
    if !show_config {
        if global.raw {
            outln!("{}", json!({ "version": VERSION }));
        } else {
            outln!("autogate: {VERSION}");
        }
        return Ok(());
    }
    let config = super::load_config(global, None)?;
    let entries = config.entries();
    if global.raw {
        let out = json!({
            "version": VERSION,
            "config_file": config.file().map(|p| p.display().to_string()),
            "entries": entries,
        });
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    outln!("autogate: {VERSION}");
    match config.file() {
        Some(p) => outln!("config file: {}", p.display()),
        None => outln!("config file: none (defaults and environment)"),
    }
    let width = entries
        .iter()
        .map(|e| e.section.len() + e.key.len() + 1)
        .max()
        .unwrap_or(0);
    let mut section = String::new();
    for e in &entries {
        if e.section != section {
            section.clone_from(&e.section);
            outln!("\n[{section}]");
        }
        let name = format!("{}.{}", e.section, e.key);
        let value = if e.value.is_empty() { "-" } else { &e.value };
        outln!("  {name:<width$}  {value}  ({})", e.source);
    }
    Ok(())
}
