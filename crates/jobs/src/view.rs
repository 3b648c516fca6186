//! The operator's view of a cluster, read from the store so that every node (and the CLI in
//! local mode) shows the same thing: runners with their load, the retained job activity, and
//! the health summary of `inspect cluster health` (store, controllers, runners, manager).

use autogate_store::Store;
use serde_json::{json, Value};

use crate::dispatcher::{list_jobs, list_runners};

/// What the caller knows of the manager link (a core node knows its own; the CLI does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerLink {
    /// `[connect] enabled = false`.
    Disabled,
    /// Known connected or not by the node holding the link.
    Known(bool),
    /// Not known here: taken from the active controller's record.
    FromRecords,
}

/// `get runners`: every registered runner with its status.
pub async fn runners(store: &dyn Store, cluster_id: &str) -> Result<Vec<Value>, String> {
    let mut list = list_runners(store, cluster_id)
        .await
        .map_err(|e| e.to_string())?;
    list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(list
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                let status = if r.draining { "draining" } else { "online" };
                m.insert("status".into(), json!(status));
            }
            v
        })
        .collect())
}

/// `inspect cluster activity`: retained jobs, newest first.
pub async fn activity(store: &dyn Store, cluster_id: &str) -> Result<Vec<Value>, String> {
    Ok(list_jobs(store, cluster_id)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|j| {
            json!({
                "id": j.id,
                "name": j.service,
                "type": j.service_type,
                "state": j.state,
                "node": j.runner,
                "started": j.started_at,
                "completed": j.finished_at,
                "attempts": j.attempts.len(),
                "error": j.error,
                "created": j.created_at,
            })
        })
        .collect())
}

/// `inspect cluster health`: `healthy` is false when the store does not answer, when HA is on
/// and no controller is active, when distributed execution is on and no runner can take work,
/// or when the manager link is enabled and down.
pub async fn health(
    store: &dyn Store,
    cluster_id: &str,
    distributed: bool,
    manager: ManagerLink,
) -> Value {
    let status = store.status().await;
    let store_ok = status.is_ok();
    let store_view = json!({
        "backend": store.backend(),
        "status": if store_ok { "healthy" } else { "unhealthy" },
        "error": status.err().map(|e| e.to_string()),
    });
    let controllers: Vec<autogate_ha::NodeRecord> = match store
        .list(&autogate_ha::driver::nodes_prefix(cluster_id))
        .await
    {
        Ok(kvs) => kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    let active = controllers
        .iter()
        .find(|c| c.role == autogate_ha::Role::Active);
    let runners = runners(store, cluster_id).await.unwrap_or_default();
    let available = runners.iter().filter(|r| r["status"] == "online").count();
    let manager_status = match manager {
        ManagerLink::Disabled => "disabled",
        ManagerLink::Known(true) => "connected",
        ManagerLink::Known(false) => "disconnected",
        ManagerLink::FromRecords => match active {
            Some(a) if a.manager_reachable => "connected",
            _ => "disconnected",
        },
    };
    let healthy = store_ok
        && (controllers.is_empty() || active.is_some())
        && (!distributed || available > 0)
        && manager_status != "disconnected";
    json!({
        "cluster_id": cluster_id,
        "healthy": healthy,
        "store": store_view,
        "controllers": controllers.iter().map(|c| json!({
            "node_id": c.node_id,
            "address": c.address,
            "role": c.role,
            "primary": c.is_primary,
            "manager_reachable": c.manager_reachable,
        })).collect::<Vec<_>>(),
        "runners": {
            "distributed_execution": distributed,
            "registered": runners.len(),
            "available": available,
            "nodes": runners,
        },
        "manager": {
            "status": manager_status,
            "via": active.map(|a| a.node_id.clone()),
        },
    })
}
