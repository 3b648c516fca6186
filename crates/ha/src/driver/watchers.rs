//! The two watchers, election prefix and node records: each lists its prefix, then watches it
//! from the list's revision, and hands the machine a full snapshot after every change. Watching
//! the whole election prefix instead of only the immediate predecessor (the recipe's
//! `waitDeletes`) costs one event per candidate change and gives every node the ordered
//! candidate list the status page shows.

use std::collections::BTreeMap;
use std::sync::Arc;

use autogate_store::{EventKind, KeyValue, Store, Txn, TxnOp, TxnOpResponse};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::keys::StoredRecord;
use super::{Backoff, Input};
use crate::machine::{Candidate, Event};

/// Lists `prefix`, then watches it from the list's revision; after every change hands the
/// machine `to_event(revision, all keys)`. Re-lists after any watch error.
pub(super) async fn watch_prefix<F>(
    store: Arc<dyn Store>,
    prefix: String,
    input: mpsc::UnboundedSender<Input>,
    to_event: F,
) where
    F: Fn(i64, Vec<KeyValue>) -> Event + Send + 'static,
{
    let mut backoff = Backoff::new();
    while !input.is_closed() {
        // Every wait also ends when the machine loop has (shutdown then waits for this task).
        let listed = tokio::select! {
            listed = store.txn(Txn::new().and_then([TxnOp::get_prefix(&prefix)])) => listed,
            () = input.closed() => return,
        };
        let (revision, kvs) = match listed {
            Ok(r) => {
                let kvs = match r.responses.into_iter().next() {
                    Some(TxnOpResponse::Get(kvs)) => kvs,
                    _ => Vec::new(),
                };
                (r.revision, kvs)
            }
            Err(e) => {
                tracing::debug!("cannot list {prefix}: {e}");
                tokio::select! {
                    () = backoff.wait() => {}
                    () = input.closed() => return,
                }
                continue;
            }
        };
        let mut state: BTreeMap<String, KeyValue> =
            kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        if input
            .send(Input::Event(to_event(
                revision,
                state.values().cloned().collect(),
            )))
            .is_err()
        {
            return;
        }
        let watched = tokio::select! {
            watched = store.watch(&prefix, Some(revision + 1)) => watched,
            () = input.closed() => return,
        };
        let mut stream = match watched {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("cannot watch {prefix}: {e}");
                tokio::select! {
                    () = backoff.wait() => {}
                    () = input.closed() => return,
                }
                continue;
            }
        };
        backoff = Backoff::new();
        let mut last = revision;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = input.closed() => return,
            };
            match item {
                Some(Ok(ev)) => {
                    last = last.max(ev.kv.mod_revision);
                    match ev.kind {
                        EventKind::Put => {
                            state.insert(ev.kv.key.clone(), ev.kv);
                        }
                        EventKind::Delete => {
                            state.remove(&ev.kv.key);
                        }
                    }
                    if input
                        .send(Input::Event(to_event(
                            last,
                            state.values().cloned().collect(),
                        )))
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("watch of {prefix} ended: {e}");
                    break;
                }
                None => break,
            }
        }
    }
}

/// The election view: every candidate key with its create revision and lease.
pub(super) fn election_view(revision: i64, kvs: Vec<KeyValue>) -> Event {
    let candidates = kvs
        .into_iter()
        .map(|kv| Candidate {
            node_id: String::from_utf8_lossy(&kv.value).into_owned(),
            key: kv.key,
            create_revision: kv.create_revision,
            lease: kv.lease,
        })
        .collect();
    Event::ElectionView {
        revision,
        candidates,
    }
}

/// Every readable node record under `prefix` (a record that does not parse is left out).
pub(super) fn node_records(prefix: &str, kvs: Vec<KeyValue>) -> Event {
    Event::NodeRecords(
        kvs.into_iter()
            .filter_map(|kv| {
                let id = kv.key.strip_prefix(prefix)?.to_owned();
                let r: StoredRecord = serde_json::from_slice(&kv.value).ok()?;
                Some(r.into_record(id))
            })
            .collect(),
    )
}
