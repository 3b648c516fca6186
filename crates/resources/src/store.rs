//! The resources in the cluster store.
//!
//! Layout: one JSON document per resource at `/autogate/<cluster_id>/resources/<kind>/<name>`
//! (`<kind>` as [`Kind::as_str`]), plus a generation key `/autogate/<cluster_id>/resources-generation`
//! that every write of this module rewrites.
//!
//! Every write is one store transaction, so nothing is ever half-written; a write too large for
//! one transaction (an import of hundreds of resources on etcd) is staged and committed by one
//! small transaction instead, which readers see all at once ([`crate::staged`]): every read here
//! lays a committed import's staged records over the live ones. Reference integrity
//! (a service never names a missing repository; a secret still named by a service cannot be
//! deleted) needs more than per-key compares — a delete and a concurrent create of a referrer touch
//! different keys — so each write reads a consistent snapshot (one read-only transaction), decides,
//! and commits only if the generation key has not moved since; otherwise it re-reads and decides
//! again (a few attempts, then [`ResourceError::Contended`]). Writes of resources are therefore
//! serialized per cluster, which is cheap at the rate people edit automation resources.
//!
//! A [`TxnGuard`] (set with [`Resources::with_txn_guard`]) wraps every write transaction; the HA
//! layer uses it to add a compare on its leadership key so a deposed leader cannot write. A write
//! that fails while the generation is unchanged was refused by the guard: [`ResourceError::Fenced`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use autogate_store::{
    cluster_prefix, Compare, CompareOp, Store, StoreError, Txn, TxnOp, TxnOpResponse,
};
use time::OffsetDateTime;

use crate::crypto::{KeyFile, SecretError};
use crate::model::{
    CredentialError, Decorator, ExecutableObject, Kind, ModelError, Registry, Repository, Resource,
    Secret, Service,
};

/// Wraps every write transaction (adds fencing compares).
pub type TxnGuard = Arc<dyn Fn(Txn) -> Txn + Send + Sync>;

/// How many times a write re-reads and retries when other writes moved the generation.
pub(crate) const MAX_ATTEMPTS: usize = 8;

/// Most writes one etcd transaction carries here: etcd refuses more than 128 operations per
/// transaction by default (`--max-txn-ops`, which also counts the compares), and a write adds
/// the generation key, a compare per record and the guard's compares.
const ETCD_TXN_WRITES: usize = 64;

/// Most bytes of records one etcd transaction carries here.
const ETCD_TXN_BYTES: usize = autogate_store::TXN_BYTES;

/// Why a resource operation failed, shaped by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The definition is wrong: fix it (the message names the field).
    #[error("invalid {kind} {name}: {source}")]
    Invalid {
        kind: Kind,
        name: String,
        #[source]
        source: ModelError,
    },
    /// Create of a name that is taken: pick another or delete the existing one.
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: Kind, name: String },
    #[error("{kind} {name} does not exist")]
    NotFound { kind: Kind, name: String },
    /// The resource names another one that does not exist: create that first.
    #[error("{kind} {name}: {field} names {target_kind} {target}, which does not exist")]
    MissingReference {
        kind: Kind,
        name: String,
        field: String,
        target_kind: Kind,
        target: String,
    },
    /// Delete of a resource others still name: change or delete those first.
    #[error("{kind} {name} is still used by {}", .users.join(", "))]
    InUse {
        kind: Kind,
        name: String,
        /// `"<kind> <name>"` of each user, sorted.
        users: Vec<String>,
    },
    /// A stored document cannot be read back (written by something else, or damaged).
    #[error("stored {kind} {name} is unreadable: {reason}")]
    Corrupt {
        kind: Kind,
        name: String,
        reason: String,
    },
    /// A record could not be encoded (JSON for the store, YAML for an export).
    #[error("encoding resources failed: {0}")]
    Encode(String),
    /// Other writers kept changing resources; retry later.
    #[error("resources kept changing concurrently; gave up after {attempts} attempts")]
    Contended { attempts: usize },
    /// A secret must be opened for this run but the node has no key file.
    #[error("secret {secret} cannot be opened: no secrets key file is configured")]
    KeyRequired { secret: String },
    /// The transaction guard refused the write (this node is no longer the leader).
    #[error("write refused: this node no longer holds the right to write (fenced)")]
    Fenced,
    /// A secret needed for a run cannot be opened.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The store failed; retry later.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CredentialError> for ResourceError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::MissingSecret(name) => ResourceError::NotFound {
                kind: Kind::Secret,
                name,
            },
            CredentialError::Secret(s) => ResourceError::Secret(s),
        }
    }
}

/// A consistent read of every resource of the cluster.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    /// Mod revision of the generation key (0 when never written).
    pub generation: i64,
    /// Raw JSON per (kind, name).
    pub items: BTreeMap<(Kind, String), Vec<u8>>,
    /// Whether the built-in registries were ever created in this cluster.
    pub seeded: bool,
    /// A committed import not yet rolled forward (its records are in `items` already).
    pub pending: Option<Pending>,
}

/// A committed import whose records are still staged (see [`crate::staged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub id: String,
    /// Mod revision of the marker naming it.
    pub mod_revision: i64,
}

impl Snapshot {
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        self.items.contains_key(&(kind, name.to_owned()))
    }

    pub fn get<R: Resource>(&self, name: &str) -> Result<Option<R>, ResourceError> {
        self.items
            .get(&(R::KIND, name.to_owned()))
            .map(|raw| decode::<R>(name, raw))
            .transpose()
    }

    pub fn all<R: Resource>(&self) -> Result<Vec<R>, ResourceError> {
        self.items
            .range((R::KIND, String::new())..)
            .take_while(|((k, _), _)| *k == R::KIND)
            .map(|((_, name), raw)| decode::<R>(name, raw))
            .collect()
    }

    /// `"<kind> <name>"` of every stored resource naming (kind, name), except those in `skip`.
    pub fn users_of(
        &self,
        kind: Kind,
        name: &str,
        skip: &dyn Fn(Kind, &str) -> bool,
    ) -> Result<Vec<String>, ResourceError> {
        let mut users = Vec::new();
        for ((k, n), raw) in &self.items {
            if skip(*k, n) {
                continue;
            }
            if references_of(*k, n, raw)?
                .iter()
                .any(|(rk, rn, _)| *rk == kind && rn == name)
            {
                users.push(format!("{k} {n}"));
            }
        }
        users.sort();
        users.dedup();
        Ok(users)
    }
}

fn decode<R: Resource>(name: &str, raw: &[u8]) -> Result<R, ResourceError> {
    serde_json::from_slice(raw).map_err(|e| ResourceError::Corrupt {
        kind: R::KIND,
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// The references of a stored document of any kind.
pub(crate) fn references_of(
    kind: Kind,
    name: &str,
    raw: &[u8],
) -> Result<Vec<(Kind, String, String)>, ResourceError> {
    fn go<R: Resource>(
        name: &str,
        raw: &[u8],
    ) -> Result<Vec<(Kind, String, String)>, ResourceError> {
        Ok(decode::<R>(name, raw)?.references())
    }
    match kind {
        Kind::Decorator => go::<Decorator>(name, raw),
        Kind::Repository => go::<Repository>(name, raw),
        Kind::Service => go::<Service>(name, raw),
        Kind::Secret => go::<Secret>(name, raw),
        Kind::ExecutableObject => go::<ExecutableObject>(name, raw),
        Kind::Registry => go::<Registry>(name, raw),
    }
}

/// One planned write: conditions beyond the generation, and the operations.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub compares: Vec<Compare>,
    pub ops: Vec<TxnOp>,
}

/// The resources of one cluster.
#[derive(Clone)]
pub struct Resources {
    store: Arc<dyn Store>,
    cluster_id: String,
    guard: Option<TxnGuard>,
    /// Most writes and record bytes one transaction carries on this store; larger writes (an
    /// import) are staged (see [`crate::staged`]).
    txn_limits: (usize, usize),
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resources")
            .field("backend", &self.store.backend())
            .field("cluster_id", &self.cluster_id)
            .field("guarded", &self.guard.is_some())
            .finish()
    }
}

pub(crate) fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    // Whole microseconds keep the RFC 3339 text short and stable across round trips.
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

impl Resources {
    pub fn new(store: Arc<dyn Store>, cluster_id: impl Into<String>) -> Self {
        // The embedded stores take any transaction: one is enough for every write there.
        let txn_limits = if store.backend() == "etcd" {
            (ETCD_TXN_WRITES, ETCD_TXN_BYTES)
        } else {
            (usize::MAX, usize::MAX)
        };
        Self {
            store,
            cluster_id: cluster_id.into(),
            guard: None,
            txn_limits,
        }
    }

    /// Caps the writes and record bytes of one transaction (the store's defaults otherwise:
    /// within etcd's, unbounded on the embedded stores). Larger imports are staged and committed
    /// all at once all the same.
    pub fn with_txn_limits(mut self, writes: usize, bytes: usize) -> Self {
        self.txn_limits = (writes.max(1), bytes.max(1));
        self
    }

    /// (writes, bytes) one transaction may carry.
    pub(crate) fn txn_limits(&self) -> (usize, usize) {
        self.txn_limits
    }

    /// Wraps every write transaction with `guard` (e.g. a compare on the leader key).
    pub fn with_txn_guard(mut self, guard: TxnGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Whether writes are wrapped by a guard (a failed compare may then be the guard's).
    pub(crate) fn is_guarded(&self) -> bool {
        self.guard.is_some()
    }

    /// `txn` wrapped by the guard, if any (writes outside the resources, e.g. known hosts).
    pub(crate) fn guarded(&self, txn: Txn) -> Txn {
        match &self.guard {
            Some(guard) => guard(txn),
            None => txn,
        }
    }

    /// The store backend's name (`memory`, `local`, `etcd`).
    /// The store itself (for views that read other parts of the cluster's keys).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// `/autogate/<cluster_id>/resources/`.
    pub fn prefix(&self) -> String {
        format!("{}resources/", cluster_prefix(&self.cluster_id))
    }

    /// The store key of one resource.
    pub fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}{}/{}", self.prefix(), kind.as_str(), name)
    }

    /// The key every write rewrites: watch it to learn that resources changed.
    pub fn generation_key(&self) -> String {
        format!("{}resources-generation", cluster_prefix(&self.cluster_id))
    }

    fn seeded_key(&self) -> String {
        format!("{}resources-seeded", cluster_prefix(&self.cluster_id))
    }

    /// Creates the built-in registries ([`Registry::builtins`]) the first time it runs in a
    /// cluster; later calls do nothing, so a deleted built-in stays deleted. Existing resources of
    /// the same names are left alone. Returns the names created.
    pub async fn ensure_builtins(&self) -> Result<Vec<String>, ResourceError> {
        // Every node and local CLI passes here when it opens the resources: the moment to drop
        // the staging of imports whose importer died before committing.
        self.remove_abandoned_imports().await?;
        let marker = self.seeded_key();
        self.write(|snap| {
            if snap.seeded {
                return Ok((None, Vec::new()));
            }
            let at = now();
            let mut plan = Plan {
                compares: vec![Compare::missing(marker.clone())],
                ops: vec![TxnOp::put(marker.clone(), b"1".to_vec())],
            };
            let mut created = Vec::new();
            for mut registry in Registry::builtins() {
                if snap.contains(Kind::Registry, registry.name()) {
                    continue;
                }
                registry.meta.created = Some(at);
                registry.meta.updated = Some(at);
                let key = self.key(Kind::Registry, registry.name());
                plan.compares.push(Compare::missing(key.clone()));
                plan.ops.push(TxnOp::put(key, Self::encode(&registry)?));
                created.push(registry.meta.name);
            }
            Ok((Some(plan), created))
        })
        .await
    }

    /// Reads `main` in one transaction with the import marker; while an import is committed but
    /// not rolled forward, reads again with `staged(id)` in the same transaction, so the staged
    /// records come from the same revision. Returns `main`'s responses and, with an import
    /// pending, the import and `staged`'s responses.
    async fn read_overlaid(
        &self,
        main: Vec<TxnOp>,
        staged: impl Fn(&str) -> Vec<TxnOp>,
    ) -> Result<(Vec<TxnOpResponse>, Option<(Pending, Vec<TxnOpResponse>)>), ResourceError> {
        let marker = self.import_marker_key();
        let mut pending: Option<String> = None;
        for _ in 0..MAX_ATTEMPTS {
            let mut ops = vec![TxnOp::get(marker.clone())];
            ops.extend(main.iter().cloned());
            let extra = pending.as_deref().map(&staged).unwrap_or_default();
            let n_extra = extra.len();
            ops.extend(extra);
            let mut responses = self.store.txn(Txn::new().and_then(ops)).await?.responses;
            let found = match responses.first() {
                Some(TxnOpResponse::Get(kvs)) => kvs.first().map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.mod_revision,
                    )
                }),
                _ => None,
            };
            let extra_responses = responses.split_off(responses.len().saturating_sub(n_extra));
            let main_responses = responses.into_iter().skip(1).collect();
            match (found, &pending) {
                (None, _) => return Ok((main_responses, None)),
                (Some((id, rev)), Some(p)) if &id == p => {
                    let pending = Pending {
                        id,
                        mod_revision: rev,
                    };
                    return Ok((main_responses, Some((pending, extra_responses))));
                }
                (Some((id, _)), _) => pending = Some(id),
            }
        }
        Err(ResourceError::Contended {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Every resource of the cluster at one revision (a committed import included).
    pub(crate) async fn snapshot(&self) -> Result<Snapshot, ResourceError> {
        let prefix = self.prefix();
        let (main, overlay) = self
            .read_overlaid(
                vec![
                    TxnOp::get(self.generation_key()),
                    TxnOp::get_prefix(prefix.clone()),
                    TxnOp::get(self.seeded_key()),
                ],
                |id| vec![TxnOp::get_prefix(self.staged_prefix(id))],
            )
            .await?;
        let mut snap = Snapshot::default();
        let mut responses = main.into_iter();
        if let Some(TxnOpResponse::Get(kvs)) = responses.next() {
            snap.generation = kvs.first().map(|kv| kv.mod_revision).unwrap_or(0);
        }
        let mut add = |rest: &str, value: Vec<u8>| {
            let Some((kind, name)) = rest.split_once('/') else {
                return;
            };
            if let Some(kind) = Kind::ALL.iter().find(|k| k.as_str() == kind) {
                snap.items.insert((*kind, name.to_owned()), value);
            }
        };
        if let Some(TxnOpResponse::Get(kvs)) = responses.next() {
            for kv in kvs {
                if let Some(rest) = kv.key.strip_prefix(&prefix) {
                    add(rest, kv.value);
                }
            }
        }
        let mut pending = None;
        if let Some((p, staged)) = overlay {
            let staged_prefix = self.staged_prefix(&p.id);
            for r in staged {
                if let TxnOpResponse::Get(kvs) = r {
                    for kv in kvs {
                        if let Some(rest) = kv.key.strip_prefix(&staged_prefix) {
                            add(rest, kv.value);
                        }
                    }
                }
            }
            pending = Some(p);
        }
        snap.pending = pending;
        if let Some(TxnOpResponse::Get(kvs)) = responses.next() {
            snap.seeded = !kvs.is_empty();
        }
        Ok(snap)
    }

    /// The records under `rel` (`<kind>/` or `<kind>/<name>`), with a committed import laid over
    /// them: (name, record), sorted by name.
    async fn read_records(
        &self,
        kind: Kind,
        name: Option<&str>,
    ) -> Result<Vec<(String, Vec<u8>)>, ResourceError> {
        let rel = match name {
            Some(n) => format!("{}/{n}", kind.as_str()),
            None => format!("{}/", kind.as_str()),
        };
        let op = |full: String| match name {
            Some(_) => TxnOp::get(full),
            None => TxnOp::get_prefix(full),
        };
        let live = format!("{}{rel}", self.prefix());
        let (main, overlay) = self
            .read_overlaid(vec![op(live)], |id| {
                vec![op(format!("{}{rel}", self.staged_prefix(id)))]
            })
            .await?;
        let kind_prefix = format!("{}/", kind.as_str());
        let mut out = BTreeMap::new();
        let mut add = |base: &str, responses: Vec<TxnOpResponse>| {
            for r in responses {
                if let TxnOpResponse::Get(kvs) = r {
                    for kv in kvs {
                        if let Some(n) = kv
                            .key
                            .strip_prefix(base)
                            .and_then(|rest| rest.strip_prefix(&kind_prefix))
                        {
                            out.insert(n.to_owned(), kv.value);
                        }
                    }
                }
            }
        };
        add(&self.prefix(), main);
        if let Some((p, staged)) = overlay {
            add(&self.staged_prefix(&p.id), staged);
        }
        Ok(out.into_iter().collect())
    }

    /// Reads a snapshot, lets `plan` decide, commits if nothing moved; retries otherwise.
    /// `plan` returning no [`Plan`] means "nothing to write": its value is returned at once.
    pub(crate) async fn write<T>(
        &self,
        mut plan: impl FnMut(&Snapshot) -> Result<(Option<Plan>, T), ResourceError>,
    ) -> Result<T, ResourceError> {
        let mut last_generation = None;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            if let Some(pending) = &snap.pending {
                // A committed import is still being copied into place: finish it first, or
                // this write could be overwritten by its late chunks.
                self.roll_forward(pending).await?;
                last_generation = None;
                continue;
            }
            if last_generation == Some(snap.generation) && self.guard.is_some() {
                return Err(ResourceError::Fenced);
            }
            last_generation = Some(snap.generation);
            let (p, out) = plan(&snap)?;
            let Some(p) = p else {
                return Ok(out);
            };
            let gen_key = self.generation_key();
            let mut txn = Txn::new()
                .when([Compare::mod_revision(
                    gen_key.clone(),
                    CompareOp::Equal,
                    snap.generation,
                )])
                .when(p.compares)
                .and_then(p.ops)
                .and_then([TxnOp::put(gen_key, Vec::new())]);
            if let Some(guard) = &self.guard {
                txn = guard(txn);
            }
            if self.store.txn(txn).await?.succeeded {
                return Ok(out);
            }
        }
        Err(ResourceError::Contended {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Checks that every resource `r` names is accepted by `exists`.
    pub(crate) fn check_references<R: Resource>(
        r: &R,
        exists: &dyn Fn(Kind, &str) -> bool,
    ) -> Result<(), ResourceError> {
        for (target_kind, target, field) in r.references() {
            if !exists(target_kind, &target) {
                return Err(ResourceError::MissingReference {
                    kind: R::KIND,
                    name: r.name().to_owned(),
                    field,
                    target_kind,
                    target,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn validate<R: Resource>(r: &R) -> Result<(), ResourceError> {
        r.validate().map_err(|source| ResourceError::Invalid {
            kind: R::KIND,
            name: r.name().to_owned(),
            source,
        })
    }

    pub(crate) fn encode<R: Resource>(r: &R) -> Result<Vec<u8>, ResourceError> {
        serde_json::to_vec(r)
            .map_err(|e| ResourceError::Encode(format!("{} {}: {e}", R::KIND, r.name())))
    }

    /// Creates a resource; the store sets `created`/`updated`. Fails if the name is taken or a
    /// resource it names is missing. Returns the record as stored.
    pub async fn create<R: Resource>(&self, mut resource: R) -> Result<R, ResourceError> {
        Self::validate(&resource)?;
        let at = now();
        resource.meta_mut().created = Some(at);
        resource.meta_mut().updated = Some(at);
        let key = self.key(R::KIND, resource.name());
        let value = Self::encode(&resource)?;
        self.write(|snap| {
            if snap.contains(R::KIND, resource.name()) {
                return Err(ResourceError::AlreadyExists {
                    kind: R::KIND,
                    name: resource.name().to_owned(),
                });
            }
            Self::check_references(&resource, &|k, n| snap.contains(k, n))?;
            Ok((
                Some(Plan {
                    compares: vec![Compare::missing(key.clone())],
                    ops: vec![TxnOp::put(key.clone(), value.clone())],
                }),
                (),
            ))
        })
        .await?;
        Ok(resource)
    }

    /// Replaces an existing resource (keeping its `created`), with the same checks as create.
    pub async fn update<R: Resource>(&self, resource: R) -> Result<R, ResourceError> {
        Self::validate(&resource)?;
        let key = self.key(R::KIND, resource.name());
        self.write(|snap| {
            let Some(old) = snap.get::<R>(resource.name())? else {
                return Err(ResourceError::NotFound {
                    kind: R::KIND,
                    name: resource.name().to_owned(),
                });
            };
            Self::check_references(&resource, &|k, n| snap.contains(k, n))?;
            let mut next = resource.clone();
            next.meta_mut().created = old.meta().created;
            next.meta_mut().updated = Some(now());
            Ok((
                Some(Plan {
                    compares: vec![Compare::exists(key.clone())],
                    ops: vec![TxnOp::put(key.clone(), Self::encode(&next)?)],
                }),
                next,
            ))
        })
        .await
    }

    /// One resource, `None` if it does not exist.
    pub async fn get<R: Resource>(&self, name: &str) -> Result<Option<R>, ResourceError> {
        match self
            .read_records(R::KIND, Some(name))
            .await?
            .into_iter()
            .next()
        {
            Some((n, raw)) => decode::<R>(&n, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Every resource of one kind, sorted by name.
    pub async fn list<R: Resource>(&self) -> Result<Vec<R>, ResourceError> {
        self.read_records(R::KIND, None)
            .await?
            .iter()
            .map(|(name, raw)| decode::<R>(name, raw))
            .collect()
    }

    /// Names of every resource of `kind`, sorted.
    pub async fn names(&self, kind: Kind) -> Result<Vec<String>, ResourceError> {
        Ok(self
            .read_records(kind, None)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Deletes a resource; refused while other resources (services, repositories or registries
    /// naming a secret, …) still name it.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), ResourceError> {
        let key = self.key(kind, name);
        self.write(|snap| {
            if !snap.contains(kind, name) {
                return Err(ResourceError::NotFound {
                    kind,
                    name: name.to_owned(),
                });
            }
            let users = snap.users_of(kind, name, &|_, _| false)?;
            if !users.is_empty() {
                return Err(ResourceError::InUse {
                    kind,
                    name: name.to_owned(),
                    users,
                });
            }
            Ok((
                Some(Plan {
                    compares: vec![Compare::exists(key.clone())],
                    ops: vec![TxnOp::delete(key.clone())],
                }),
                (),
            ))
        })
        .await
    }

    /// Checks that every secret opens with `key` (after a key file change or an import from
    /// another cluster); returns the names of those that do not.
    pub async fn unreadable_secrets(&self, key: &KeyFile) -> Result<Vec<String>, ResourceError> {
        Ok(self
            .list::<Secret>()
            .await?
            .into_iter()
            .filter(|s| s.decrypt(key).is_err())
            .map(|s| s.meta.name)
            .collect())
    }

    /// Everything a run of service `name` needs, read from one snapshot: the engine's service
    /// (repository with decrypted credentials, decorator, executable-object) and the decrypted
    /// environment secrets (target variable → value). `key` is only needed when the service
    /// or its repository names a secret ([`ResourceError::KeyRequired`] otherwise).
    pub async fn resolve_service(
        &self,
        name: &str,
        key: Option<&KeyFile>,
    ) -> Result<(autogate_exec::Service, autogate_exec::Secrets), ResourceError> {
        let snap = self.snapshot().await?;
        let service = snap
            .get::<Service>(name)?
            .ok_or_else(|| ResourceError::NotFound {
                kind: Kind::Service,
                name: name.to_owned(),
            })?;
        let secrets: Vec<Secret> = snap.all()?;
        let lookup = |n: &str| secrets.iter().find(|s| s.name() == n);
        let need = |kind: Kind, n: &str| ResourceError::MissingReference {
            kind: Kind::Service,
            name: name.to_owned(),
            field: kind.as_str().to_owned(),
            target_kind: kind,
            target: n.to_owned(),
        };
        let repository = match &service.repository {
            Some(n) => {
                let repo = snap
                    .get::<Repository>(n)?
                    .ok_or_else(|| need(Kind::Repository, n))?;
                let creds = match (key, repo.references().first()) {
                    (Some(key), _) => repo.credentials(key, lookup)?,
                    (None, None) => None,
                    (None, Some((_, secret, _))) => {
                        return Err(ResourceError::KeyRequired {
                            secret: secret.clone(),
                        })
                    }
                };
                Some((repo, creds))
            }
            None => None,
        };
        let decorator = match &service.decorator {
            Some(n) => Some(
                snap.get::<Decorator>(n)?
                    .ok_or_else(|| need(Kind::Decorator, n))?,
            ),
            None => None,
        };
        let executable = match &service.executable_object {
            Some(n) => Some(
                snap.get::<ExecutableObject>(n)?
                    .ok_or_else(|| need(Kind::ExecutableObject, n))?,
            ),
            None => None,
        };
        let exec = service
            .to_exec(
                repository.as_ref().map(|(r, c)| (r, c.clone())),
                decorator.as_ref(),
                executable.as_ref(),
            )
            .map_err(|source| ResourceError::Invalid {
                kind: Kind::Service,
                name: name.to_owned(),
                source,
            })?;
        let mut exec = exec;
        if service.service_type == autogate_exec::ServiceType::PythonScript {
            exec.pip_index = pip_index(&snap, &service, key, &lookup)?;
        }
        if service.service_type == autogate_exec::ServiceType::AnsiblePlaybook {
            // A playbook's requirements.yml installs from a Galaxy registry and its
            // requirements.txt from a pypi one: the registry the service names serves its own
            // kind, the defaults the other.
            use crate::model::RegistryType;
            let registries: Vec<Registry> = snap.all()?;
            if let Some(name) = &service.registry {
                if !registries.iter().any(|r| &r.meta.name == name) {
                    return Err(ResourceError::MissingReference {
                        kind: Kind::Service,
                        name: service.meta.name.clone(),
                        field: "registry".into(),
                        target_kind: Kind::Registry,
                        target: name.clone(),
                    });
                }
            }
            let mut for_pip = service.clone();
            if Registry::chosen(&registries, &service, RegistryType::Pypi)
                .is_none_or(|r| Some(&r.meta.name) != service.registry.as_ref())
            {
                for_pip.registry = None;
            }
            exec.pip_index = pip_index(&snap, &for_pip, key, &lookup)?;
            if let Some(r) = Registry::chosen(&registries, &service, RegistryType::AnsibleGalaxy) {
                exec.galaxy_server =
                    Some(r.to_galaxy(|secret| registry_secret(r, secret, key, &lookup))?);
            }
        }
        let mut env = autogate_exec::Secrets::new();
        for r in &service.secrets {
            let secret = lookup(&r.name).ok_or_else(|| need(Kind::Secret, &r.name))?;
            let key = key.ok_or_else(|| ResourceError::KeyRequired {
                secret: r.name.clone(),
            })?;
            env.insert(r.target.clone(), secret.decrypt(key)?.expose().to_owned());
        }
        Ok((exec, env))
    }
}

/// The package index of a python-script's venv: the registry the service names, else the
/// default `pypi` registry when it is not the untouched public index (then pip's own
/// configuration — `pip.conf`, `PIP_INDEX_URL` of the node — stays in charge).
fn pip_index<'a>(
    snap: &Snapshot,
    service: &Service,
    key: Option<&KeyFile>,
    lookup: &impl Fn(&str) -> Option<&'a Secret>,
) -> Result<Option<autogate_exec::PipIndex>, ResourceError> {
    use crate::model::RegistryType;
    let registries: Vec<Registry> = snap.all()?;
    let chosen = match &service.registry {
        Some(name) => Some(
            registries
                .iter()
                .find(|r| &r.meta.name == name)
                .ok_or_else(|| ResourceError::MissingReference {
                    kind: Kind::Service,
                    name: service.meta.name.clone(),
                    field: "registry".into(),
                    target_kind: Kind::Registry,
                    target: name.clone(),
                })?,
        ),
        None => registries.iter().find(|r| {
            r.registry_type == RegistryType::Pypi
                && r.default
                && !Registry::builtins().iter().any(|b| {
                    b.url == r.url
                        && r.username.is_none()
                        && r.password_name.is_none()
                        && r.token_name.is_none()
                        && !r.insecure
                })
        }),
    };
    let Some(registry) = chosen else {
        return Ok(None);
    };
    if registry.registry_type != RegistryType::Pypi {
        return Err(ResourceError::Invalid {
            kind: Kind::Service,
            name: service.meta.name.clone(),
            source: ModelError::new(
                "registry",
                format!(
                    "{} is an ansible-galaxy registry; python-script services need a pypi one",
                    registry.meta.name
                ),
            ),
        });
    }
    let open = |secret: &str| registry_secret(registry, secret, key, lookup);
    let userinfo = match (
        &registry.username,
        &registry.password_name,
        &registry.token_name,
    ) {
        (_, _, Some(token)) => Some(format!("__token__:{}", pct(&open(token)?))),
        (Some(user), Some(pw), None) => Some(format!("{}:{}", pct(user), pct(&open(pw)?))),
        (Some(user), None, None) => Some(pct(user)),
        _ => None,
    };
    let url = match (userinfo, registry.url.split_once("://")) {
        (Some(ui), Some((scheme, rest))) => format!("{scheme}://{ui}@{rest}"),
        _ => registry.url.clone(),
    };
    Ok(Some(autogate_exec::PipIndex {
        url,
        trusted_host: registry.insecure,
    }))
}

/// The clear text of the secret `secret` a registry names (its password or token).
fn registry_secret<'a>(
    registry: &Registry,
    secret: &str,
    key: Option<&KeyFile>,
    lookup: &impl Fn(&str) -> Option<&'a Secret>,
) -> Result<String, ResourceError> {
    let s = lookup(secret).ok_or_else(|| ResourceError::MissingReference {
        kind: Kind::Registry,
        name: registry.meta.name.clone(),
        field: "secret".into(),
        target_kind: Kind::Secret,
        target: secret.to_owned(),
    })?;
    let key = key.ok_or_else(|| ResourceError::KeyRequired {
        secret: secret.to_owned(),
    })?;
    Ok(s.decrypt(key)?.expose().to_owned())
}

/// Percent-encodes what cannot stand in a URL's user-info.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
