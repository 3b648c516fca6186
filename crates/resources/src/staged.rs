//! Writes too large for one store transaction (a big import on etcd, whose `--max-txn-ops`
//! defaults to 128 operations and `--max-request-bytes` to 1.5 MiB), still all-or-nothing.
//!
//! The records are first *staged* in chunks under `/autogate/<cluster_id>/import-data/<id>/`,
//! where no reader looks. One small transaction then *commits* them: it checks that no resource
//! changed since they were planned (the generation key) and writes the marker
//! `/autogate/<cluster_id>/resources-import` naming the import. From that revision on, every
//! read of the resources ([`Resources::snapshot`], `get`, `list`, `names`) lays the staged
//! records over the live ones, in the same read transaction, so readers see the whole import at
//! once. The staged records are then *rolled forward* into their real keys in chunks (the merged
//! view does not change while this happens), and a last transaction removes the marker and the
//! staging. A crash before the commit leaves only staging nobody reads (removed by the next
//! large import, or the next open of the resources, once the importer's lease has ended); a
//! crash after it leaves the marker, so readers still see everything and the next write of any
//! node rolls the import forward before it writes anything itself.
//!
//! Every transaction of this module carries the [`crate::TxnGuard`], so a deposed leader can
//! stage nothing and commit nothing. Staging transactions also require the importer's owner key
//! (bound to a lease kept alive between chunks): once it is gone, the import is abandoned and its
//! staging may be removed by others, so it must not be committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use autogate_store::{cluster_prefix, Compare, CompareOp, StoreError, Txn, TxnOp, TxnOpResponse};

use crate::store::{Pending, ResourceError, Resources, Snapshot, MAX_ATTEMPTS};

/// Life of the importer's owner key: how long after a crash its staging may be removed.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// One write of a staged plan: the key relative to the resources prefix (`<kind>/<name>`) and
/// the record.
pub(crate) type StagedWrite = (String, Vec<u8>);

impl Resources {
    /// The marker of a committed, not yet rolled forward import (its value: the import's id).
    pub(crate) fn import_marker_key(&self) -> String {
        format!("{}resources-import", cluster_prefix(self.cluster_id()))
    }

    /// Where import `id` stages its records.
    pub(crate) fn staged_prefix(&self, id: &str) -> String {
        format!("{}import-data/{id}/", cluster_prefix(self.cluster_id()))
    }

    fn jobs_prefix(&self) -> String {
        format!("{}import-jobs/", cluster_prefix(self.cluster_id()))
    }

    fn owners_prefix(&self) -> String {
        format!("{}import-owners/", cluster_prefix(self.cluster_id()))
    }

    /// Splits `ops` into transactions within this store's limits (count and bytes).
    fn chunks(&self, ops: Vec<(TxnOp, usize)>) -> Vec<Vec<TxnOp>> {
        let (max_ops, max_bytes) = self.txn_limits();
        let ranges = autogate_store::txn_batches(&ops, max_ops, max_bytes, |(_, size)| *size);
        let mut ops = ops.into_iter().map(|(op, _)| op);
        ranges
            .into_iter()
            .map(|r| ops.by_ref().take(r.len()).collect())
            .collect()
    }

    /// Stages the writes `plan` decides, commits them in one transaction, and rolls them
    /// forward (see the module documentation). `plan` may run more than once: when other
    /// writes land meanwhile it decides again on a new snapshot, and only the difference is
    /// staged again.
    pub(crate) async fn write_staged<T>(
        &self,
        mut plan: impl FnMut(&Snapshot) -> Result<(Vec<StagedWrite>, T), ResourceError>,
    ) -> Result<T, ResourceError> {
        self.remove_abandoned_imports().await?;
        let lease = self.store().grant(LEASE_TTL).await?;
        let id = format!("{:016x}", rand::random::<u64>());
        let owner = format!("{}{id}", self.owners_prefix());
        let job = format!("{}{id}", self.jobs_prefix());
        let start = self.guarded(
            Txn::new()
                .when([
                    Compare::missing(owner.clone()),
                    Compare::missing(job.clone()),
                ])
                .and_then([
                    TxnOp::put_with_lease(owner.clone(), Vec::new(), lease),
                    TxnOp::put(job.clone(), Vec::new()),
                ]),
        );
        let resp = match self.store().txn(start).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.store().revoke(lease).await;
                return Err(e.into());
            }
        };
        if !resp.succeeded {
            let _ = self.store().revoke(lease).await;
            return Err(ResourceError::Fenced);
        }
        let mut importer = Importer {
            resources: self,
            id: id.clone(),
            owner,
            owner_revision: resp.revision,
            job: job.clone(),
            lease,
            renewed: Instant::now(),
        };
        let outcome = importer.stage_and_commit(&mut plan).await;
        match outcome {
            Ok((out, pending)) => {
                if let Some(pending) = pending {
                    // Committed: the import has happened, and readers see all of it. Copying it
                    // into place is housekeeping: a failure here (this node fenced, the store
                    // gone) is finished by the next write of any node, so it is not reported
                    // as a failed import (a retry would only find everything unchanged).
                    let _ = self.roll_forward(&pending).await;
                    let _ = self.store().revoke(lease).await;
                } else {
                    importer.abandon().await;
                }
                Ok(out)
            }
            Err(e) => {
                importer.abandon().await;
                Err(e)
            }
        }
    }

    /// Copies a committed import's staged records into their keys, then removes the marker and
    /// the staging. Safe to run from several processes at once: every transaction requires the
    /// marker as it was read, so once one finishes, the others' late chunks change nothing.
    pub(crate) async fn roll_forward(&self, pending: &Pending) -> Result<(), ResourceError> {
        let marker = self.import_marker_key();
        let staged = self.staged_prefix(&pending.id);
        let resp = self
            .store()
            .txn(Txn::new().and_then([
                TxnOp::get(marker.clone()),
                TxnOp::get_prefix(staged.clone()),
            ]))
            .await?;
        let mut responses = resp.responses.into_iter();
        let current = match responses.next() {
            Some(TxnOpResponse::Get(kvs)) => kvs.first().map(|kv| kv.mod_revision),
            _ => None,
        };
        if current != Some(pending.mod_revision) {
            return Ok(());
        }
        let kvs = match responses.next() {
            Some(TxnOpResponse::Get(kvs)) => kvs,
            _ => Vec::new(),
        };
        let prefix = self.prefix();
        let ops = kvs
            .into_iter()
            .filter_map(|kv| {
                let rel = kv.key.strip_prefix(&staged)?.to_owned();
                let size = kv.value.len() + rel.len();
                Some((TxnOp::put(format!("{prefix}{rel}"), kv.value), size))
            })
            .collect();
        let still = Compare::mod_revision(marker.clone(), CompareOp::Equal, pending.mod_revision);
        for chunk in self.chunks(ops) {
            let txn = self.guarded(Txn::new().when([still.clone()]).and_then(chunk));
            if !self.store().txn(txn).await?.succeeded {
                return self.roll_forward_refused(pending).await;
            }
        }
        let finish = self.guarded(Txn::new().when([still]).and_then([
            TxnOp::delete(marker),
            TxnOp::delete_prefix(staged),
            TxnOp::put(self.generation_key(), Vec::new()),
        ]));
        if self.store().txn(finish).await?.succeeded {
            Ok(())
        } else {
            self.roll_forward_refused(pending).await
        }
    }

    /// A roll-forward transaction failed: finished by someone else (fine), or fenced.
    async fn roll_forward_refused(&self, pending: &Pending) -> Result<(), ResourceError> {
        let current = self.store().get(&self.import_marker_key()).await?;
        match current {
            Some(kv) if kv.mod_revision == pending.mod_revision => Err(if self.is_guarded() {
                ResourceError::Fenced
            } else {
                ResourceError::Contended {
                    attempts: MAX_ATTEMPTS,
                }
            }),
            _ => Ok(()),
        }
    }

    /// Removes the staging of imports whose importer is gone (crashed or killed before its
    /// commit): nobody reads it, it only takes space.
    pub(crate) async fn remove_abandoned_imports(&self) -> Result<(), ResourceError> {
        let (jobs, owners) = (self.jobs_prefix(), self.owners_prefix());
        let resp = self
            .store()
            .txn(Txn::new().and_then([
                TxnOp::get_prefix(jobs.clone()),
                TxnOp::get_prefix(owners.clone()),
            ]))
            .await?;
        let mut responses = resp.responses.into_iter();
        let (Some(TxnOpResponse::Get(job_kvs)), Some(TxnOpResponse::Get(owner_kvs))) =
            (responses.next(), responses.next())
        else {
            return Ok(());
        };
        for kv in job_kvs {
            let Some(id) = kv.key.strip_prefix(&jobs) else {
                continue;
            };
            let owner = format!("{owners}{id}");
            if owner_kvs.iter().any(|o| o.key == owner) {
                continue;
            }
            // Only while the owner is still gone: an importer whose lease lives owns it.
            let txn = self.guarded(
                Txn::new()
                    .when([
                        Compare::create_revision(
                            kv.key.clone(),
                            CompareOp::Equal,
                            kv.create_revision,
                        ),
                        Compare::missing(owner),
                    ])
                    .and_then([
                        TxnOp::delete(kv.key.clone()),
                        TxnOp::delete_prefix(self.staged_prefix(id)),
                    ]),
            );
            self.store().txn(txn).await?;
        }
        Ok(())
    }
}

/// One import in progress: its id, owner key and lease.
struct Importer<'a> {
    resources: &'a Resources,
    id: String,
    owner: String,
    /// Create revision of the owner key: the staging is ours only while it is unchanged.
    owner_revision: i64,
    job: String,
    lease: i64,
    renewed: Instant,
}

impl Importer<'_> {
    fn ours(&self) -> Compare {
        Compare::create_revision(self.owner.clone(), CompareOp::Equal, self.owner_revision)
    }

    /// Keeps the owner key alive between chunks.
    async fn renew(&mut self) -> Result<(), ResourceError> {
        if self.renewed.elapsed() >= LEASE_TTL / 3 {
            self.resources
                .store()
                .keep_alive(self.lease)
                .await
                .map_err(|e| match e {
                    StoreError::LeaseNotFound(_) => lease_lost(),
                    e => e.into(),
                })?;
            self.renewed = Instant::now();
        }
        Ok(())
    }

    /// A staging or commit transaction failed while the generation did not explain it.
    async fn refused(&self) -> ResourceError {
        match self.resources.store().get(&self.owner).await {
            Ok(Some(kv)) if kv.create_revision == self.owner_revision => {
                if self.resources.is_guarded() {
                    ResourceError::Fenced
                } else {
                    ResourceError::Contended {
                        attempts: MAX_ATTEMPTS,
                    }
                }
            }
            Ok(_) => lease_lost(),
            Err(e) => e.into(),
        }
    }

    async fn stage_and_commit<T>(
        &mut self,
        plan: &mut impl FnMut(&Snapshot) -> Result<(Vec<StagedWrite>, T), ResourceError>,
    ) -> Result<(T, Option<Pending>), ResourceError> {
        let r = self.resources;
        let staged_prefix = r.staged_prefix(&self.id);
        let mut staged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for _ in 0..MAX_ATTEMPTS {
            let snap = r.snapshot().await?;
            if let Some(p) = &snap.pending {
                r.roll_forward(p).await?;
                continue;
            }
            let (writes, out) = plan(&snap)?;
            let want: BTreeMap<String, Vec<u8>> = writes.into_iter().collect();
            if want.is_empty() {
                return Ok((out, None));
            }
            let mut ops: Vec<(TxnOp, usize)> = Vec::new();
            for (rel, value) in &want {
                if staged.get(rel) != Some(value) {
                    let size = value.len() + rel.len();
                    ops.push((
                        TxnOp::put(format!("{staged_prefix}{rel}"), value.clone()),
                        size,
                    ));
                }
            }
            for rel in staged.keys().filter(|k| !want.contains_key(*k)) {
                ops.push((TxnOp::delete(format!("{staged_prefix}{rel}")), rel.len()));
            }
            for chunk in r.chunks(ops) {
                self.renew().await?;
                let txn = r.guarded(Txn::new().when([self.ours()]).and_then(chunk));
                if !r.store().txn(txn).await?.succeeded {
                    return Err(self.refused().await);
                }
            }
            staged = want;
            self.renew().await?;
            let marker = r.import_marker_key();
            let commit = r.guarded(
                Txn::new()
                    .when([
                        Compare::mod_revision(
                            r.generation_key(),
                            CompareOp::Equal,
                            snap.generation,
                        ),
                        self.ours(),
                        Compare::missing(marker.clone()),
                    ])
                    .and_then([
                        TxnOp::put(marker, self.id.as_bytes().to_vec()),
                        TxnOp::delete(self.job.clone()),
                        TxnOp::put(r.generation_key(), Vec::new()),
                    ]),
            );
            let resp = r.store().txn(commit).await?;
            if resp.succeeded {
                return Ok((
                    out,
                    Some(Pending {
                        id: self.id.clone(),
                        mod_revision: resp.revision,
                    }),
                ));
            }
            // Other writes landed since the snapshot: decide again. Anything else is final.
            let now = r.snapshot().await?;
            if now.generation == snap.generation && now.pending.is_none() {
                return Err(self.refused().await);
            }
        }
        Err(ResourceError::Contended {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Removes this import's staging and owner (best effort: what remains is removed later by
    /// [`Resources::remove_abandoned_imports`]).
    async fn abandon(&self) {
        let r = self.resources;
        let txn = r.guarded(Txn::new().when([self.ours()]).and_then([
            TxnOp::delete(self.job.clone()),
            TxnOp::delete_prefix(r.staged_prefix(&self.id)),
        ]));
        let _ = r.store().txn(txn).await;
        let _ = r.store().revoke(self.lease).await;
    }
}

fn lease_lost() -> ResourceError {
    ResourceError::Store(StoreError::Unavailable(
        "the import lost its lease in the store (the store was unreachable for too long); nothing was imported, retry"
            .into(),
    ))
}
