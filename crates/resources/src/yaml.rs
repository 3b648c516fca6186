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
//! One transaction means one size limit: etcd refuses transactions of more than 128 operations by
//! default (`--max-txn-ops`), so on etcd a file writing more than [`ETCD_MAX_WRITES`] resources is
//! refused as a whole ([`ResourceError::TooManyWrites`]) — split it, or raise etcd's limit. The embedded
//! stores have no such limit.

use std::collections::BTreeSet;

use autogate_store::{Compare, TxnOp};
use serde::{Deserialize, Serialize};

use crate::crypto::KeyFile;
use crate::model::{
    Decorator, ExecutableObject, Kind, Registry, Repository, Resource, Secret, Service,
};
use crate::store::{now, Plan, ResourceError, Resources, Snapshot};

/// Largest number of resources one import writes on etcd (its default 128 operations per
/// transaction, minus the generation key).
pub const ETCD_MAX_WRITES: usize = 127;

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
        serde_norway::from_str(yaml).map_err(|e| ImportError::Parse(e.to_string()))
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

/// Decides the outcome of one item and adds its write to `plan`.
fn plan_item<R: Resource>(
    resources: &Resources,
    snap: &Snapshot,
    in_file: &BTreeSet<(Kind, String)>,
    mode: ImportMode,
    item: &R,
    plan: &mut Plan,
    report: &mut ImportReport,
) -> Result<(), ResourceError> {
    Resources::check_references(item, &|k, n| {
        snap.contains(k, n) || in_file.contains(&(k, n.to_owned()))
    })?;
    let key = resources.key(R::KIND, item.name());
    let at = now();
    let mut record = item.clone();
    let outcome = match snap.get::<R>(item.name())? {
        None => {
            record.meta_mut().created = Some(at);
            record.meta_mut().updated = Some(at);
            plan.compares.push(Compare::missing(key.clone()));
            plan.ops.push(TxnOp::put(key, Resources::encode(&record)?));
            ImportOutcome::Add
        }
        Some(old) if same_content(&old, item) => ImportOutcome::Unchanged,
        Some(_) if !mode.force => ImportOutcome::Conflict,
        Some(old) => {
            record.meta_mut().created = old.meta().created;
            record.meta_mut().updated = Some(at);
            plan.compares.push(Compare::exists(key.clone()));
            plan.ops.push(TxnOp::put(key, Resources::encode(&record)?));
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
    /// Every resource of the cluster as an import file.
    pub async fn export(&self) -> Result<String, ResourceError> {
        let snap = self.snapshot().await?;
        let doc = Document {
            decorators: snap.all()?,
            repositories: snap.all()?,
            services: snap.all()?,
            secrets: snap.all()?,
            executable_objects: snap.all()?,
            registries: snap.all()?,
        };
        serde_norway::to_string(&doc).map_err(|e| ResourceError::Encode(e.to_string()))
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
        let max = (self.backend() == "etcd").then_some(ETCD_MAX_WRITES);
        let report = self
            .write(|snap| {
                let mut plan = Plan::default();
                let mut report = ImportReport::default();
                macro_rules! each {
                    ($list:expr) => {
                        for item in &$list {
                            plan_item(self, snap, &in_file, mode, item, &mut plan, &mut report)?;
                        }
                    };
                }
                each!(doc.decorators);
                each!(doc.repositories);
                each!(doc.services);
                each!(doc.secrets);
                each!(doc.executable_objects);
                each!(doc.registries);
                if let Some(max) = max {
                    if plan.ops.len() > max {
                        return Err(ResourceError::TooManyWrites {
                            items: plan.ops.len(),
                            max,
                        });
                    }
                }
                report.written = !mode.check && !plan.ops.is_empty();
                let plan = report.written.then_some(plan);
                Ok((plan, report))
            })
            .await?;
        Ok(report)
    }
}
