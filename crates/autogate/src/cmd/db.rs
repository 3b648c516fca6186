//! `autogate db export|import`: every resource as the family's kebab-case YAML file (secrets
//! sealed; `--format json` for JSON, `--file` to write it to a file), and the same file (YAML or
//! JSON) read back all-or-nothing, each item reported as `Add`, `Unchanged` (exists with the same
//! content: not a conflict, nothing to write), `Conflict` (exists with other content; skipped
//! without `--force`) or `Replacement` (exists with other content; overwritten with `--force`).
//! `--validate` checks the file alone (shape, required fields, duplicates) and touches no store.
//! A file that cannot be imported changes nothing and exits 64 naming the item and field.

use std::io::Write;
use std::path::{Path, PathBuf};

use autogate_automation::api_types::{ImportReport, Imported};
use autogate_automation::Features;
use autogate_resources::ImportMode;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use super::backend::{self, Backend};
use super::resource::print_json;
use super::term::{self, out, outln};
use crate::cli::Global;
use crate::exit::{Failure, FAILURE, USAGE};

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub command: DbCommand,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Print every resource as the import file (secrets stay sealed).
    Export {
        /// `yaml` (the default) or `json`: the same keys either way; both import back.
        #[arg(short = 'f', long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
        /// Write the file here (mode 0600) instead of standard output.
        #[arg(long = "file", visible_alias = "output", value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Import a YAML or JSON file: all of it, or nothing.
    Import {
        /// The file (as written by `db export`).
        file: PathBuf,
        /// Only check the file itself (shape, required fields, duplicates); read and write no store.
        #[arg(long, conflicts_with_all = ["check", "force"])]
        validate: bool,
        /// Dry run: list what would happen, write nothing.
        #[arg(long)]
        check: bool,
        /// Overwrite resources that exist already (never deletes any).
        #[arg(long)]
        force: bool,
    },
}

/// The export's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

pub fn run(global: &Global, args: DbArgs) -> Result<(), Failure> {
    match args.command {
        DbCommand::Export { format, file } => export(global, format, file.as_deref()),
        DbCommand::Import {
            file,
            validate: true,
            ..
        } => validate(global, &file),
        DbCommand::Import {
            file, check, force, ..
        } => import(global, &file, ImportMode { check, force }),
    }
}

fn export(global: &Global, format: Format, output: Option<&Path>) -> Result<(), Failure> {
    let config = backend::load(global)?;
    let rt = super::runtime()?;
    let yaml = rt.block_on(async {
        let b = Backend::open(&config, global).await?;
        match (&b, format) {
            (_, Format::Yaml) => b.export().await,
            (Backend::Local(a), Format::Json) => a.export_json().await.map_err(backend::failure),
            (Backend::Remote(c), Format::Json) => {
                c.call_text(Method::GET, "/api/v1/db/export?format=json", None)
                    .await
            }
        }
    })?;
    match output {
        None => term::emit(&yaml),
        Some(path) => {
            write_private(path, yaml.as_bytes()).map_err(|e| {
                Failure::new(FAILURE, format!("cannot write {}: {e}", path.display()))
            })?;
            if global.raw {
                print_json(&json!({ "output": path.display().to_string() }));
            } else {
                outln!("Successfully exported to {}", path.display());
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory (mode 0600, synced,
/// renamed over the target): a reader never sees half a file, and the sealed secrets in it are
/// not readable by others.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `db import FILE --validate`: the file alone. In local mode no store is opened (nothing is
/// created either); a core node checks it with its own `[features]` flags.
fn validate(global: &Global, file: &Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(USAGE, format!("import file {}: {e}", file.display())))?;
    let config = backend::load(global)?;
    let named = |f: Failure| {
        Failure::new(
            f.code,
            format!("import file {}: {}", file.display(), f.message),
        )
    };
    let report = if backend::is_local(&config) {
        autogate_automation::validate_import(&text, Features::from_config(&config))
            .map(ImportReport::from)
            .map_err(backend::failure)
            .map_err(named)?
    } else {
        let rt = super::runtime()?;
        rt.block_on(async {
            let Backend::Remote(c) = Backend::open(&config, global).await? else {
                return Err(Failure::new(FAILURE, "expected a core node"));
            };
            let text = c
                .call_text(Method::POST, "/api/v1/db/import?validate=true", Some(text))
                .await?;
            serde_json::from_str::<ImportReport>(&text).map_err(backend::unexpected)
        })
        .map_err(named)?
    };
    if global.raw {
        print_json(&json!(report));
        return Ok(());
    }
    out!("{}", validate_text(&report));
    Ok(())
}

/// `Valid  <kind>  <name>` per item, then one summary line.
fn validate_text(report: &ImportReport) -> String {
    let rows: Vec<Vec<String>> = report
        .items
        .iter()
        .map(|i| vec!["Valid".to_owned(), i.kind.clone(), i.name.clone()])
        .collect();
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&term::table(&[], &rows));
    }
    out.push_str(&format!(
        "Valid: {} resources, every required field present; nothing was read or written (references are resolved on import; --check shows what it would do).\n",
        report.items.len()
    ));
    out
}

fn import(global: &Global, file: &Path, mode: ImportMode) -> Result<(), Failure> {
    let yaml = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(USAGE, format!("import file {}: {e}", file.display())))?;
    let config = backend::load(global)?;
    let rt = super::runtime()?;
    let report = rt
        .block_on(async {
            let b = Backend::open(&config, global).await?;
            let spinner = match b {
                Backend::Local(_) => Some(term::Spinner::start(format!(
                    "importing {}",
                    file.display()
                ))),
                Backend::Remote(_) => None,
            };
            let out = b.import(yaml, mode).await;
            if let Some(s) = spinner {
                s.finish().await;
            }
            out
        })
        .map_err(|f| {
            Failure::new(
                f.code,
                format!("import file {}: {}", file.display(), f.message),
            )
        })?;
    if global.raw {
        print_json(&json!(report));
        return Ok(());
    }
    out!("{}", report_text(&report, mode));
    Ok(())
}

/// `Add  <kind>  <name>` per item, then one summary line.
fn report_text(report: &ImportReport, mode: ImportMode) -> String {
    let items = &report.items;
    let label = |o: Imported| match o {
        Imported::Add => "Add",
        Imported::Unchanged => "Unchanged",
        Imported::Conflict => "Conflict",
        Imported::Replacement => "Replacement",
        Imported::Valid => "Valid",
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| vec![label(i.outcome).to_owned(), i.kind.clone(), i.name.clone()])
        .collect();
    let count = |o: Imported| items.iter().filter(|i| i.outcome == o).count();
    let (add, unchanged, conflict, replace) = (
        count(Imported::Add),
        count(Imported::Unchanged),
        count(Imported::Conflict),
        count(Imported::Replacement),
    );
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&term::table(&[], &rows));
    }
    // --force is mentioned only when there is something it would replace.
    let summary = if mode.check {
        format!(
            "Check only, nothing written: {add} to add, {replace} to replace, {unchanged} unchanged, {conflict} conflicting (skipped without --force)."
        )
    } else if report.written {
        let skipped = if conflict > 0 {
            format!(", {conflict} conflicting skipped (use --force to replace them)")
        } else {
            String::new()
        };
        format!("Imported: {add} added, {replace} replaced, {unchanged} unchanged{skipped}.")
    } else if items.is_empty() {
        "Nothing to import: the file lists no resources.".to_owned()
    } else if conflict == 0 {
        format!("Nothing written: all {unchanged} resources are already as in the file.")
    } else {
        format!(
            "Nothing written: {conflict} resources exist with other content (use --force to replace them), {unchanged} unchanged."
        )
    };
    out.push_str(&summary);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines() {
        let r: ImportReport = serde_json::from_value(json!({"items": [
            {"kind": "repository", "name": "r", "outcome": "add"},
            {"kind": "service", "name": "s", "outcome": "conflict"},
            {"kind": "registry", "name": "default-pypi", "outcome": "unchanged"}
        ], "written": true}))
        .unwrap();
        let t = report_text(
            &r,
            ImportMode {
                check: false,
                force: false,
            },
        );
        let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["Add", "repository", "r"], "{t}");
        assert_eq!(rows[1], ["Conflict", "service", "s"], "{t}");
        assert_eq!(rows[2], ["Unchanged", "registry", "default-pypi"], "{t}");
        assert!(
            t.contains("1 added, 0 replaced, 1 unchanged, 1 conflicting skipped (use --force"),
            "{t}"
        );
        // Nothing differs: no --force advice.
        let r: ImportReport = serde_json::from_value(json!({"items": [
            {"kind": "registry", "name": "default-pypi", "outcome": "unchanged"}
        ], "written": false}))
        .unwrap();
        let t = report_text(&r, ImportMode::default());
        assert!(
            t.ends_with("Nothing written: all 1 resources are already as in the file.\n"),
            "{t}"
        );
        assert!(!t.contains("--force"), "{t}");
    }
}
