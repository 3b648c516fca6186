//! The keep-alive loop: renews the current lease every
//! [`MachineConfig::keepalive_interval_ms`](crate::machine::MachineConfig::keepalive_interval_ms)
//! and reports each acknowledgement with the send time of its request, measured on
//! [`tokio::time::Instant`] (monotonic): the machine's acting window counts from the send time,
//! which is earlier than etcd's own renewal, so the node stops before its lease can end.

use std::sync::Arc;
use std::time::Duration;

use autogate_store::{LeaseId, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{millis, Input};
use crate::machine::Event;

/// Renews the current lease until the machine loop ends.
pub(super) async fn keep_alive_loop(
    store: Arc<dyn Store>,
    interval_ms: u64,
    mut lease: watch::Receiver<Option<LeaseId>>,
    input: mpsc::UnboundedSender<Input>,
    origin: Instant,
) {
    let interval = Duration::from_millis(interval_ms);
    // A failed renewal is retried sooner: the acting window allows about one lost interval.
    let retry = (interval / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        let current = *lease.borrow_and_update();
        let Some(id) = current else {
            if lease.changed().await.is_err() || input.is_closed() {
                return;
            }
            continue;
        };
        let mut next = Instant::now() + interval;
        loop {
            tokio::select! {
                changed = lease.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                () = tokio::time::sleep_until(next) => {}
            }
            let sent = Instant::now();
            let outcome = tokio::select! {
                changed = lease.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                r = store.keep_alive(id) => r,
            };
            let event = match outcome {
                Ok(_) => {
                    next = sent + interval;
                    Event::KeepAliveAcked {
                        lease: id,
                        sent_at: millis(origin, sent),
                    }
                }
                Err(StoreError::LeaseNotFound(_)) => {
                    next = Instant::now() + interval;
                    Event::LeaseLost { lease: id }
                }
                Err(e) => {
                    next = Instant::now() + retry;
                    Event::KeepAliveFailed {
                        lease: id,
                        error: e.to_string(),
                    }
                }
            };
            if input.send(Input::Event(event)).is_err() {
                return;
            }
        }
    }
}
