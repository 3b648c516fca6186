//! The store worker: executes the machine's store commands (grant, campaign, resign, revoke,
//! publish) one at a time, in the order the machine emitted them, and reports what the store
//! said as events. Only what must eventually happen is retried (a lease grant, a campaign while
//! its lease is current, a failed publish); a resignation or revocation is best effort, since the
//! lease bounds the life of everything it holds anyway.

use std::sync::Arc;
use std::time::Duration;

use autogate_store::{LeaseId, Store, StoreError, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::keys::{election_prefix, nodes_prefix, StoredRecord};
use super::options::HaOptions;
use super::{millis, Backoff, Input, StoreCmd};
use crate::machine::{Event, StoreCommand};

/// Executes store commands in the order they come until the machine loop ends.
pub(super) async fn worker(
    store: Arc<dyn Store>,
    options: Arc<HaOptions>,
    mut commands: mpsc::UnboundedReceiver<StoreCmd>,
    input: mpsc::UnboundedSender<Input>,
    lease: watch::Receiver<Option<LeaseId>>,
    origin: Instant,
    tasks: TaskTracker,
) {
    let prefix = election_prefix(&options.cluster_id);
    let record_key = format!("{}{}", nodes_prefix(&options.cluster_id), options.node_id);
    let mut healthy_since: Option<u64> = None;
    let event = |e: Event| {
        let _ = input.send(Input::Event(e));
    };
    while let Some(cmd) = commands.recv().await {
        let command = match cmd {
            StoreCmd::Do(c) => c,
            StoreCmd::Drain(done) => {
                let _ = done.send(());
                continue;
            }
        };
        match command {
            StoreCommand::GrantLease => {
                let mut backoff = Backoff::new();
                loop {
                    let sent = Instant::now();
                    match store.grant(options.lease_ttl).await {
                        Ok(id) => {
                            // Named in the state file before any key is bound to it: a
                            // successor of a crashed process finds every lease that matters.
                            if let Some(state_file) = &options.state_file {
                                state_file.record_lease(id).await;
                            }
                            event(Event::LeaseGranted {
                                lease: id,
                                sent_at: millis(origin, sent),
                            });
                            break;
                        }
                        Err(e) => {
                            tracing::debug!("lease grant failed, retrying: {e}");
                            if input.is_closed() {
                                return;
                            }
                            backoff.wait().await;
                        }
                    }
                }
            }
            StoreCommand::Campaign { lease: id, attempt } => {
                let key = format!("{prefix}/{id:x}");
                let txn = Txn::new()
                    .when([autogate_store::Compare::missing(&key)])
                    .and_then([TxnOp::put_with_lease(
                        &key,
                        options.node_id.as_bytes().to_vec(),
                        id,
                    )])
                    .or_else([TxnOp::get(&key)]);
                let mut backoff = Backoff::new();
                while *lease.borrow() == Some(id) {
                    match store.txn(txn.clone()).await {
                        Ok(response) => {
                            let create_revision = if response.succeeded {
                                Some(response.revision)
                            } else {
                                match response.responses.first() {
                                    Some(TxnOpResponse::Get(kvs)) => kvs
                                        .first()
                                        .filter(|kv| kv.lease == id)
                                        .map(|kv| kv.create_revision),
                                    _ => None,
                                }
                            };
                            match create_revision {
                                Some(create_revision) => event(Event::OwnKeyCreated {
                                    lease: id,
                                    attempt,
                                    create_revision,
                                }),
                                None => event(Event::LeaseLost { lease: id }),
                            }
                            break;
                        }
                        Err(StoreError::LeaseNotFound(_)) => {
                            event(Event::LeaseLost { lease: id });
                            break;
                        }
                        Err(e) => {
                            tracing::debug!("campaign failed, retrying: {e}");
                            backoff.wait().await;
                        }
                    }
                }
            }
            StoreCommand::Resign { lease: id } => {
                let key = format!("{prefix}/{id:x}");
                if let Err(e) = store.delete(&key).await {
                    tracing::warn!("cannot delete election key {key}: {e}");
                }
            }
            StoreCommand::RevokeLease { lease: id } => match store.revoke(id).await {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => tracing::debug!("cannot revoke lease {id:x}: {e}"),
            },
            StoreCommand::RevokePeerLease { node_id, lease: id } => match store.revoke(id).await {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => {
                    tracing::warn!("cannot revoke lease {id:x} of core node '{node_id}': {e}")
                }
            },
            StoreCommand::PublishRecord { lease: id, record } => {
                if *lease.borrow() != Some(id) {
                    continue;
                }
                if record.healthy {
                    healthy_since.get_or_insert_with(unix_ms);
                } else {
                    healthy_since = None;
                }
                let stored = StoredRecord::new(
                    record,
                    options.version.clone(),
                    options.name.clone(),
                    healthy_since,
                );
                let Ok(value) = serde_json::to_vec(&stored) else {
                    continue;
                };
                match store.put(&record_key, value, Some(id)).await {
                    Ok(_) => {}
                    Err(StoreError::LeaseNotFound(_)) => event(Event::LeaseLost { lease: id }),
                    Err(e) => {
                        tracing::debug!("cannot publish node record: {e}");
                        let input = input.clone();
                        tasks.spawn(async move {
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(500)) => {
                                    let _ = input.send(Input::Republish);
                                }
                                () = input.closed() => {}
                            }
                        });
                    }
                }
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
