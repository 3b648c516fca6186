//! The operator's view of a cluster, read from the store so that every node (and the CLI in
//! local mode) shows the same thing: runners with their load, the retained job activity, and
//! the health summary of `inspect cluster health` (store, controllers, runners, manager).
//!
//! The views are typed: a core node serializes them as its answers to `GET /api/v1/runners`,
//! `/api/v1/cluster/activity` and `/api/v1/cluster/health`, and the CLI in client mode
//! deserializes the same types, so both modes print from one shape.

use autogate_store::Store;
use serde::{Deserialize, Serialize};

use crate::dispatcher::{list_jobs, list_runners};
use crate::model::{JobState, RunnerRecord};

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

/// A registered runner: its registration and whether it takes work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerView {
    #[serde(flatten)]
    pub record: RunnerRecord,
    pub status: RunnerStatus,
}

/// Whether a runner takes new jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerStatus {
    Online,
    /// Stopping: finishes its jobs, takes no new ones.
    Draining,
}

/// `GET /api/v1/runners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerList {
    pub runners: Vec<RunnerView>,
}

/// One retained job as `inspect cluster activity` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobActivity {
    pub id: String,
    /// The service run.
    pub name: String,
    #[serde(rename = "type")]
    pub service_type: String,
    pub state: JobState,
    /// The runner of the last attempt, once assigned.
    pub node: Option<String>,
    /// RFC 3339.
    pub started: Option<String>,
    /// RFC 3339.
    pub completed: Option<String>,
    /// How many times it was assigned.
    pub attempts: usize,
    pub error: Option<String>,
    /// RFC 3339.
    pub created: String,
}

/// `GET /api/v1/cluster/activity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityList {
    pub jobs: Vec<JobActivity>,
}

/// `inspect cluster health` (`GET /api/v1/cluster/health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    pub cluster_id: String,
    /// See [`health`].
    pub healthy: bool,
    pub store: StoreHealth,
    /// The core nodes' records, when they publish one (HA).
    pub controllers: Vec<Controller>,
    pub runners: RunnersHealth,
    pub manager: ManagerHealth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// `memory`, `local` or `etcd`.
    pub backend: String,
    pub status: Status,
    /// Why it does not answer.
    pub error: Option<String>,
}

/// Whether a part answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Unhealthy,
}

/// A core node as its record shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controller {
    pub node_id: String,
    /// Advertised API address (`host:port`).
    pub address: Option<String>,
    pub role: autogate_ha::Role,
    pub primary: bool,
    pub manager_reachable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnersHealth {
    /// Without it, core nodes run services themselves and `nodes` is empty.
    pub distributed_execution: bool,
    pub registered: usize,
    /// Registered and not draining.
    pub available: usize,
    pub nodes: Vec<RunnerView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerHealth {
    pub status: ManagerStatus,
    /// The active core node, which holds the link.
    pub via: Option<String>,
}

/// The manager link of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerStatus {
    Disabled,
    Connected,
    Disconnected,
}

/// `get runners`: every registered runner with its status.
pub async fn runners(store: &dyn Store, cluster_id: &str) -> Result<Vec<RunnerView>, String> {
    let mut list = list_runners(store, cluster_id)
        .await
        .map_err(|e| e.to_string())?;
    list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(list
        .into_iter()
        .map(|record| RunnerView {
            status: if record.draining {
                RunnerStatus::Draining
            } else {
                RunnerStatus::Online
            },
            record,
        })
        .collect())
}

/// `inspect cluster activity`: retained jobs, newest first.
pub async fn activity(store: &dyn Store, cluster_id: &str) -> Result<Vec<JobActivity>, String> {
    Ok(list_jobs(store, cluster_id)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|j| JobActivity {
            id: j.id,
            name: j.service,
            service_type: j.service_type,
            state: j.state,
            node: j.runner,
            started: j.started_at,
            completed: j.finished_at,
            attempts: j.attempts.len(),
            error: j.error,
            created: j.created_at,
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
) -> ClusterHealth {
    let status = store.status().await;
    let store_ok = status.is_ok();
    let store_view = StoreHealth {
        backend: store.backend().to_owned(),
        status: if store_ok {
            Status::Healthy
        } else {
            Status::Unhealthy
        },
        error: status.err().map(|e| e.to_string()),
    };
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
    let available = runners
        .iter()
        .filter(|r| r.status == RunnerStatus::Online)
        .count();
    let manager_status = match manager {
        ManagerLink::Disabled => ManagerStatus::Disabled,
        ManagerLink::Known(true) => ManagerStatus::Connected,
        ManagerLink::Known(false) => ManagerStatus::Disconnected,
        ManagerLink::FromRecords => match active {
            Some(a) if a.manager_reachable => ManagerStatus::Connected,
            _ => ManagerStatus::Disconnected,
        },
    };
    let healthy = store_ok
        && (controllers.is_empty() || active.is_some())
        && (!distributed || available > 0)
        && manager_status != ManagerStatus::Disconnected;
    ClusterHealth {
        cluster_id: cluster_id.to_owned(),
        healthy,
        store: store_view,
        controllers: controllers
            .iter()
            .map(|c| Controller {
                node_id: c.node_id.clone(),
                address: c.address.clone(),
                role: c.role,
                primary: c.is_primary,
                manager_reachable: c.manager_reachable,
            })
            .collect(),
        runners: RunnersHealth {
            distributed_execution: distributed,
            registered: runners.len(),
            available,
            nodes: runners,
        },
        manager: ManagerHealth {
            status: manager_status,
            via: active.map(|a| a.node_id.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_runner_is_shown_as_its_record_with_a_status() {
        let view = RunnerView {
            record: RunnerRecord {
                node_id: "r1".into(),
                name: Some("runner-a".into()),
                host: "h1".into(),
                version: "0.1.0".into(),
                capacity: 2,
                labels: [("zone".to_owned(), "a".to_owned())].into(),
                running: 1,
                draining: true,
                started_at: "2025-01-01T00:00:00Z".into(),
                last_seen: "2025-01-01T00:00:05Z".into(),
            },
            status: RunnerStatus::Draining,
        };
        let v = serde_json::to_value(&view).unwrap();
        assert_eq!(
            v,
            json!({
                "node_id": "r1", "name": "runner-a", "host": "h1", "version": "0.1.0", "capacity": 2,
                "labels": {"zone": "a"}, "running": 1, "draining": true,
                "started_at": "2025-01-01T00:00:00Z", "last_seen": "2025-01-01T00:00:05Z",
                "status": "draining"
            })
        );
        assert_eq!(
            serde_json::from_value::<RunnerView>(v.clone()).unwrap(),
            view
        );
        // A record of a runner older than names reads without one.
        let mut old = v;
        old.as_object_mut().unwrap().remove("name");
        assert_eq!(
            serde_json::from_value::<RunnerView>(old)
                .unwrap()
                .record
                .name,
            None
        );
    }
}
