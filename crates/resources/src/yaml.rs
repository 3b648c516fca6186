//! The product family's import/export file: YAML with kebab-case keys and one list per kind
//! (`decorators`, `repositories`, `services`, `secrets`, `executable-objects`, `registries`).
//!
//! Secrets travel sealed (`value: v2:…`): an export can be imported by any cluster sharing the
//! key file, and the file never carries plaintext.
//!
//! Import is all-or-nothing. The whole file is parsed and every item validated first (names,
//! per-type fields, decorator schemas, sealed-value format, duplicates, and every reference resolved
//! against the file or the store); only then is everything written in one store transaction,
//! guarded like every other resource write. Each item is reported as
//! [`ImportOutcome::Add`], [`ImportOutcome::Unchanged`] (exists with the same content; the store's
//! timestamps do not count, so an export imported back, or the built-in registries every node
//! creates, change nothing), [`ImportOutcome::Conflict`] (exists with other content; left alone)
//! or [`ImportOutcome::Replacement`] (exists with other content; overwritten because of `force`).
//! With `check`, the report is produced and nothing is written.
//!
//! A file of any size imports on etcd, whose transactions hold at most 128 operations by default
//! (`--max-txn-ops`): a plan too large for one transaction is staged in chunks and committed by
//! one small transaction, visible to every reader at once, and nothing of it is visible when the
//! importer fails or dies before that commit ([`crate::staged`]). The embedded stores take it in
//! one transaction.
//!
//! The file may also be JSON (`db export --format json`): the same keys, read by the same parser
//! (JSON is YAML). [`Document::validate_file`] checks a file alone — shape, required fields,
//! per-item rules, duplicates — without any store (`db import --validate`). Errors name the item
//! (`service backup-config: services[0].runtime: unknown field …`) and the field.

use std::collections::BTreeSet;

use autogate_store::{Compare, TxnOp};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::crypto::KeyFile;
use crate::model::{
    Decorator, ExecutableObject, Kind, Registry, Repository, Resource, Secret, Service,
};
use crate::staged::StagedWrite;
use crate::store::{now, Plan, ResourceError, Resources, Snapshot};

/// The file's shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Document {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decorators: Vec<Decorator>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<Repository>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executable_objects: Vec<ExecutableObject>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<Registry>,
}

/// How to import.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportMode {
    /// Report only; write nothing.
    pub check: bool,
    /// Overwrite resources that already exist (otherwise they are left alone).
    pub force: bool,
}

/// What happens (or would happen) to one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    /// New; created.
    Add,
    /// Exists with the same content (times aside); nothing to write, with or without `force`.
    Unchanged,
    /// Exists with other content; skipped (no `force`).
    Conflict,
    /// Exists; overwritten (`force`), keeping its creation time.
    Replacement,
    /// Valid on its own ([`Document::validate_file`]); the store was not consulted.
    Valid,
}

/// One item of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportItem {
    pub kind: Kind,
    pub name: String,
    pub outcome: ImportOutcome,
}

/// The result of an import: every item in file order (by kind), and whether anything was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub items: Vec<ImportItem>,
    /// False in check mode and when every item was unchanged or a conflict.
    pub written: bool,
}

/// Why an import changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not YAML, or not the expected shape (unknown key, wrong type); the message has the position.
    #[error("import file is not a valid resource file: {0}")]
    Parse(String),
    /// The same resource appears twice in the file.
    #[error("import file lists {kind} {name} more than once")]
    Duplicate { kind: Kind, name: String },
    /// An item is invalid or names something that exists neither in the file nor in the store,
    /// or the store failed.
    #[error(transparent)]
    Resource(#[from] ResourceError),
}

impl Document {
    /// Parses a file without touching any store.
    pub fn parse(yaml: &str) -> Result<Self, ImportError> {
        if yaml.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_norway::from_str(yaml).map_err(|e| ImportError::Parse(name_item(yaml, e.to_string())))
    }

    /// Checks a file on its own, as `db import --validate` does: its shape (unknown keys refused
    /// with their path), every item's required fields and rules, duplicates. References are not
    /// resolved (they may name resources of the store the file is meant for), and nothing is
    /// read or written. Returns every item as [`ImportOutcome::Valid`], in file order.
    pub fn validate_file(yaml: &str) -> Result<ImportReport, ImportError> {
        let doc = Self::parse(yaml)?;
        doc.names()?;
        doc.validate()?;
        let mut report = ImportReport::default();
        let mut add = |kind: Kind, name: &str| {
            report.items.push(ImportItem {
                kind,
                name: name.to_owned(),
                outcome: ImportOutcome::Valid,
            })
        };
        doc.decorators
            .iter()
            .for_each(|r| add(Kind::Decorator, r.name()));
        doc.repositories
            .iter()
            .for_each(|r| add(Kind::Repository, r.name()));
        doc.services
            .iter()
            .for_each(|r| add(Kind::Service, r.name()));
        doc.secrets.iter().for_each(|r| add(Kind::Secret, r.name()));
        doc.executable_objects
            .iter()
            .for_each(|r| add(Kind::ExecutableObject, r.name()));
        doc.registries
            .iter()
            .for_each(|r| add(Kind::Registry, r.name()));
        Ok(report)
    }

    /// Every (kind, name) in the file, refusing duplicates.
    fn names(&self) -> Result<BTreeSet<(Kind, String)>, ImportError> {
        let mut seen = BTreeSet::new();
        let mut add = |kind: Kind, name: &str| {
            if seen.insert((kind, name.to_owned())) {
                Ok(())
            } else {
                Err(ImportError::Duplicate {
                    kind,
                    name: name.to_owned(),
                })
            }
        };
        self.decorators
            .iter()
            .try_for_each(|r| add(Kind::Decorator, r.name()))?;
        self.repositories
            .iter()
            .try_for_each(|r| add(Kind::Repository, r.name()))?;
        self.services
            .iter()
            .try_for_each(|r| add(Kind::Service, r.name()))?;
        self.secrets
            .iter()
            .try_for_each(|r| add(Kind::Secret, r.name()))?;
        self.executable_objects
            .iter()
            .try_for_each(|r| add(Kind::ExecutableObject, r.name()))?;
        self.registries
            .iter()
            .try_for_each(|r| add(Kind::Registry, r.name()))?;
        Ok(seen)
    }

    fn validate(&self) -> Result<(), ResourceError> {
        self.decorators.iter().try_for_each(Resources::validate)?;
        self.repositories.iter().try_for_each(Resources::validate)?;
        self.services.iter().try_for_each(Resources::validate)?;
        self.secrets.iter().try_for_each(Resources::validate)?;
        self.executable_objects
            .iter()
            .try_for_each(Resources::validate)?;
        self.registries.iter().try_for_each(Resources::validate)?;
        Ok(())
    }
}

/// Whether two records say the same thing. The store's timestamps do not count: an export
/// carries the source's, and the built-in registries are created at each node's first start.
fn same_content<R: Resource>(a: &R, b: &R) -> bool {
    let content = |r: &R| {
        let mut r = r.clone();
        r.meta_mut().created = None;
        r.meta_mut().updated = None;
        serde_json::to_value(r).ok()
    };
    matches!((content(a), content(b)), (Some(x), Some(y)) if x == y)
}

/// Adds the item's kind and name to a parse error that names it by position
/// (`services[3].runtime: unknown field …` → `service edge-backup: services[3].runtime: …`).
fn name_item(text: &str, message: String) -> String {
    let lists = [
        ("decorators", Kind::Decorator),
        ("repositories", Kind::Repository),
        ("services", Kind::Service),
        ("secrets", Kind::Secret),
        ("executable-objects", Kind::ExecutableObject),
        ("registries", Kind::Registry),
    ];
    let Some((list, kind, rest)) = lists
        .iter()
        .find_map(|(l, k)| message.strip_prefix(l).map(|rest| (*l, *k, rest)))
    else {
        return message;
    };
    let Some(index) = rest
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(i, _)| i.parse::<usize>().ok())
    else {
        return message;
    };
    let Ok(value) = serde_norway::from_str::<serde_norway::Value>(text) else {
        return message;
    };
    match value
        .get(list)
        .and_then(|l| l.get(index))
        .and_then(|item| item.get("name"))
        .and_then(|n| n.as_str())
    {
        Some(name) => format!("{kind} {name}: {message}"),
        None => message,
    }
}

/// One write an import decided: the record's key relative to the resources prefix
/// (`<kind>/<name>`), its JSON, and the condition it was decided on.
struct Write {
    rel: String,
    value: Vec<u8>,
    compare: Compare,
}

/// Decides the outcome of one item and adds its write to `writes`.
#[allow(clippy::too_many_arguments)]
fn plan_item<R: Resource>(
    resources: &Resources,
    snap: &Snapshot,
    in_file: &BTreeSet<(Kind, String)>,
    mode: ImportMode,
    at: OffsetDateTime,
    item: &R,
    writes: &mut Vec<Write>,
    report: &mut ImportReport,
) -> Result<(), ResourceError> {
    Resources::check_references(item, &|k, n| {
        snap.contains(k, n) || in_file.contains(&(k, n.to_owned()))
    })?;
    let key = resources.key(R::KIND, item.name());
    let rel = format!("{}/{}", R::KIND.as_str(), item.name());
    let mut record = item.clone();
    let outcome = match snap.get::<R>(item.name())? {
        None => {
            record.meta_mut().created = Some(at);
            record.meta_mut().updated = Some(at);
            writes.push(Write {
                rel,
                value: Resources::encode(&record)?,
                compare: Compare::missing(key),
            });
            ImportOutcome::Add
        }
        Some(old) if same_content(&old, item) => ImportOutcome::Unchanged,
        Some(_) if !mode.force => ImportOutcome::Conflict,
        Some(old) => {
            record.meta_mut().created = old.meta().created;
            record.meta_mut().updated = Some(at);
            writes.push(Write {
                rel,
                value: Resources::encode(&record)?,
                compare: Compare::exists(key),
            });
            ImportOutcome::Replacement
        }
    };
    report.items.push(ImportItem {
        kind: R::KIND,
        name: item.name().to_owned(),
        outcome,
    });
    Ok(())
}

impl Resources {
    /// Every resource of the cluster as an import file (YAML).
    pub async fn export(&self) -> Result<String, ResourceError> {
        serde_norway::to_string(&self.export_document().await?)
            .map_err(|e| ResourceError::Encode(e.to_string()))
    }

    /// Every resource of the cluster as an import file in JSON (the same keys as the YAML).
    pub async fn export_json(&self) -> Result<String, ResourceError> {
        let mut text = serde_json::to_string_pretty(&self.export_document().await?)
            .map_err(|e| ResourceError::Encode(e.to_string()))?;
        text.push('\n');
        Ok(text)
    }

    /// Every resource of the cluster, read at one revision.
    pub async fn export_document(&self) -> Result<Document, ResourceError> {
        let snap = self.snapshot().await?;
        Ok(Document {
            decorators: snap.all()?,
            repositories: snap.all()?,
            services: snap.all()?,
            secrets: snap.all()?,
            executable_objects: snap.all()?,
            registries: snap.all()?,
        })
    }

    /// Imports a file all-or-nothing (see the module documentation).
    pub async fn import(&self, yaml: &str, mode: ImportMode) -> Result<ImportReport, ImportError> {
        self.import_inner(yaml, mode, None).await
    }

    /// [`import`](Self::import), also refusing the whole file if one of its secrets does not open
    /// with `key` (a file exported by a cluster with another key file).
    pub async fn import_with_key(
        &self,
        yaml: &str,
        mode: ImportMode,
        key: &KeyFile,
    ) -> Result<ImportReport, ImportError> {
        self.import_inner(yaml, mode, Some(key)).await
    }

    async fn import_inner(
        &self,
        yaml: &str,
        mode: ImportMode,
        key: Option<&KeyFile>,
    ) -> Result<ImportReport, ImportError> {
        let doc = Document::parse(yaml)?;
        let in_file = doc.names()?;
        doc.validate()?;
        if let Some(key) = key {
            for secret in &doc.secrets {
                secret
                    .decrypt(key)
                    .map_err(|e| ImportError::Resource(ResourceError::Secret(e)))?;
            }
        }
        // One time for every record, also when a retry decides again: a record staged on the
        // first attempt is then the same bytes and is not staged twice.
        let at = now();
        let decide = |snap: &Snapshot| -> Result<(Vec<Write>, ImportReport), ResourceError> {
            let mut writes = Vec::new();
            let mut report = ImportReport::default();
            macro_rules! each {
                ($list:expr) => {
                    for item in &$list {
                        plan_item(
                            self,
                            snap,
                            &in_file,
                            mode,
                            at,
                            item,
                            &mut writes,
                            &mut report,
                        )?;
                    }
                };
            }
            each!(doc.decorators);
            each!(doc.repositories);
            each!(doc.services);
            each!(doc.secrets);
            each!(doc.executable_objects);
            each!(doc.registries);
            report.written = !mode.check && !writes.is_empty();
            Ok((writes, report))
        };
        let (max_writes, max_bytes) = self.txn_limits();
        let prefix = self.prefix();
        // `None`: the writes do not fit one transaction.
        let single = self
            .write(|snap| {
                let (writes, report) = decide(snap)?;
                if !report.written {
                    return Ok((None, Some(report)));
                }
                let bytes: usize = writes.iter().map(|w| w.value.len() + w.rel.len()).sum();
                if writes.len() > max_writes || bytes > max_bytes {
                    return Ok((None, None));
                }
                let mut plan = Plan::default();
                for w in writes {
                    plan.compares.push(w.compare);
                    plan.ops
                        .push(TxnOp::put(format!("{prefix}{}", w.rel), w.value));
                }
                Ok((Some(plan), Some(report)))
            })
            .await?;
        if let Some(report) = single {
            return Ok(report);
        }
        let report = self
            .write_staged(|snap| {
                let (writes, report) = decide(snap)?;
                let staged: Vec<StagedWrite> = if report.written {
                    writes.into_iter().map(|w| (w.rel, w.value)).collect()
                } else {
                    Vec::new()
                };
                Ok((staged, report))
            })
            .await?;
        Ok(report)
    }
}
