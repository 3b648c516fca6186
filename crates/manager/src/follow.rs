//! The store watch of a replica: one watch over everything under `/manager/`, applied in
//! revision order to the replica's copies — clusters and catalogs ([`crate::registry`]),
//! session claims ([`crate::hub`]), replicas ([`crate::replicas`]), runs ([`crate::runs`]) and
//! forwarded requests ([`crate::forward`]).
//!
//! One watch rather than one per kind keeps a single order: a run accepted before a claim
//! changed is applied before the claim. When the watch is lost it is opened again from the
//! next revision; when that revision was compacted away, every copy is read again from the
//! store and the watch starts after that read. Each applied revision is published
//! ([`Hub::applied`]), so a session that starts can wait until its replica has seen everything
//! written before its claim.

use std::sync::Arc;
use std::time::Duration;

use autogate_store::{Revision, StoreError, WatchEvent};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::web::EventKind;

/// Everything the manager keeps.
pub const MANAGER: &str = "/manager/";
/// Pause before opening a lost watch again.
const RETRY: Duration = Duration::from_millis(500);

/// Follows the store from revision `start + 1` until `token` is cancelled.
pub async fn follow(hub: Arc<Hub>, start: Revision, token: CancellationToken) {
    let store = hub.registry().store().clone();
    let mut next = start + 1;
    let mut warned = false;
    loop {
        let opened = tokio::select! {
            () = token.cancelled() => return,
            w = store.watch(MANAGER, Some(next)) => w,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!("cannot watch the manager's store ({e}); retrying");
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        loop {
            let item = tokio::select! {
                () = token.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Ok(ev)) => {
                    warned = false;
                    apply(&hub, &ev);
                    next = ev.kv.mod_revision + 1;
                    hub.applied(ev.kv.mod_revision);
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    match reload(&hub).await {
                        Ok(rev) => {
                            next = rev + 1;
                            hub.applied(rev);
                        }
                        Err(e) => tracing::warn!("cannot read the manager's store again: {e}"),
                    }
                    break;
                }
                Some(Err(e)) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(
                            "the watch of the manager's store was lost ({e}); opening it again"
                        );
                    }
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                    break;
                }
            }
        }
    }
}

/// Applies one change.
fn apply(hub: &Arc<Hub>, ev: &WatchEvent) {
    let key = ev.kv.key.as_str();
    if key.starts_with(crate::registry::CLUSTERS) {
        if let Some(id) = hub.registry().apply(ev) {
            hub.events().send(EventKind::ClusterChanged, &id);
        }
    } else if key.starts_with(crate::registry::SERVICES) {
        if let Some(id) = hub.registry().apply(ev) {
            hub.events().send(EventKind::ServicesChanged, &id);
        }
    } else if key.starts_with(crate::claims::LIVE) {
        hub.apply_claim(ev);
    } else if key.starts_with(crate::replicas::REPLICAS) {
        if let Some(gone) = hub.replicas().apply(ev) {
            tracing::info!("manager replica {gone} is gone; ending the sessions it held");
            let hub = hub.clone();
            tokio::spawn(async move { hub.sweep().await });
        }
    } else if key.starts_with(crate::members::MEMBERS) {
        hub.apply_members(ev);
    } else if key.starts_with(crate::runs::RUNS) {
        hub.runs().apply(ev);
    } else if key.starts_with(crate::forward::REQUESTS) || key.starts_with(crate::forward::REPLIES)
    {
        crate::forward::apply(hub, ev);
    }
}

/// Reads every copy again; returns the revision the reading started at.
async fn reload(hub: &Arc<Hub>) -> Result<Revision, StoreError> {
    let store = hub.registry().store().clone();
    let rev = store.status().await?.revision;
    hub.registry().reload().await?;
    hub.reload_claims().await?;
    hub.reload_members().await?;
    hub.replicas()
        .reset(&store.list(crate::replicas::REPLICAS).await?);
    hub.runs().reload().await?;
    hub.sweep().await;
    Ok(rev)
}
