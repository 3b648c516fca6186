//! `autogate version [--show-config]`: the version line in the family's shape
//! (`<label>: <version>`) and, on request, every configuration value with its source.
//!
//! `--show-config` is most needed when the configuration does not load, so it then still shows
//! every key with what was read for it, each problem beside the key it concerns (problems of the
//! file or of an unknown name above the keys), and exits like any command refused for its
//! configuration (64).

use autogate_config::{Entry, Inspection, LoadOptions};
use autogate_runtime::VERSION;
use serde_json::{json, Value};

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
    let inspection = autogate_config::inspect(&LoadOptions::from_process(global.config.clone()));
    if global.raw {
        outln!("{}", raw(&inspection));
    } else {
        outln!("{}", text(&inspection).trim_end());
    }
    match inspection.problems.first() {
        None => Ok(()),
        Some(first) => {
            let all: Vec<String> = inspection
                .problems
                .iter()
                .map(|p| p.error.to_string())
                .collect();
            Err(Failure::new(first.error.exit_code(), all.join("\nerror: ")))
        }
    }
}

/// `--raw`: the entries with a `problems` list on each entry that has one, and every problem
/// with the keys it concerns.
fn raw(inspection: &Inspection) -> String {
    let entries: Vec<Value> = inspection
        .entries
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            let problems: Vec<String> = inspection
                .problems_of(e)
                .map(|p| p.error.to_string())
                .collect();
            if let (Value::Object(map), false) = (&mut v, problems.is_empty()) {
                map.insert("problems".to_owned(), json!(problems));
            }
            v
        })
        .collect();
    let problems: Vec<Value> = inspection
        .problems
        .iter()
        .map(|p| json!({ "message": p.error.to_string(), "keys": p.keys }))
        .collect();
    let out = json!({
        "version": VERSION,
        "config_file": inspection.file.as_ref().map(|p| p.display().to_string()),
        "entries": entries,
        "problems": problems,
    });
    serde_json::to_string_pretty(&out).unwrap_or_default()
}

/// The listing: a section per `[section]`, one `name  value  (source)` line per key; a key with
/// a problem is marked `!` and followed by the problem.
fn text(inspection: &Inspection) -> String {
    let mut out = format!("autogate: {VERSION}\n");
    match &inspection.file {
        Some(p) => out.push_str(&format!("config file: {}\n", p.display())),
        None => out.push_str("config file: none (defaults and environment)\n"),
    }
    if !inspection.problems.is_empty() {
        out.push_str(&format!(
            "\nthe configuration is not valid ({} problem(s), marked with ! below)\n",
            inspection.problems.len()
        ));
        for p in inspection.general_problems() {
            out.push_str(&format!("! {}\n", p.error));
        }
    }
    let width = inspection
        .entries
        .iter()
        .map(|e| e.section.len() + e.key.len() + 1)
        .max()
        .unwrap_or(0);
    let mut section = String::new();
    for e in &inspection.entries {
        if e.section != section {
            section.clone_from(&e.section);
            out.push_str(&format!("\n[{section}]\n"));
        }
        let problems: Vec<_> = inspection.problems_of(e).collect();
        let mark = if problems.is_empty() { ' ' } else { '!' };
        out.push_str(&format!("{mark} {}\n", line(e, width)));
        for p in problems {
            out.push_str(&format!("    error: {}\n", p.error));
        }
    }
    out
}

fn line(e: &Entry, width: usize) -> String {
    let name = format!("{}.{}", e.section, e.key);
    let value = if e.value.is_empty() { "-" } else { &e.value };
    format!("{name:<width$}  {value}  ({})", e.source)
}
