//! Requests for a session another replica holds (`ping` through a replica the gateway is not
//! connected to), carried through the store.
//!
//! The asking replica writes `/manager/requests/<holder>/<id>` bound to its own lease; the
//! holder's watch sees it, sends the request on its session as it would its own, and writes the
//! answer to `/manager/replies/<asker>/<id>` bound to *its* lease; the asker's watch completes
//! the waiting caller and deletes both. A replica that dies takes its half with it: a request
//! whose holder died is answered by the caller's deadline, a reply whose asker died expires
//! with the asker's lease. Nothing of this is retried: a ping that times out is answered as a
//! timeout, as on one replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use autogate_store::{EventKind, Store, WatchEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::hub::{Hub, Reply, RequestError};
use crate::replicas::Replicas;
use crate::runs::RunAnswer;

/// Prefix of forwarded requests: `/manager/requests/<holder replica>/<id>`.
pub const REQUESTS: &str = "/manager/requests/";
/// Prefix of their answers: `/manager/replies/<asking replica>/<id>`.
pub const REPLIES: &str = "/manager/replies/";

/// A request for another replica's session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Forwarded {
    cluster: String,
    method: String,
    #[serde(default)]
    params: Option<Value>,
    timeout_ms: u64,
    from: String,
}

/// How a forwarded request ended on the holding replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Failure {
    NotConnected,
    Busy,
    SessionClosed,
    Timeout,
}

/// The holder's answer: the gateway's, as a run's is kept, or why there was none.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Answer {
    #[serde(flatten)]
    answer: RunAnswer,
    #[serde(default)]
    failure: Option<Failure>,
}

/// The forwarding of one replica: its callers waiting for other replicas.
#[derive(Debug)]
pub struct Forward {
    store: Arc<dyn Store>,
    replicas: Arc<Replicas>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
}

impl Forward {
    /// Nobody waiting yet.
    pub fn new(store: Arc<dyn Store>, replicas: Arc<Replicas>) -> Forward {
        Forward {
            store,
            replicas,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<Answer>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks replica `holder` to send `method` on its session of `cluster`; waits at most
    /// `timeout` for the answer.
    pub async fn ask(
        &self,
        holder: &str,
        cluster: &str,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let me = self.replicas.id().to_owned();
        let request = Forwarded {
            cluster: cluster.to_owned(),
            method: method.to_owned(),
            params,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            from: me.clone(),
        };
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(id.clone(), tx);
        let key = format!("{REQUESTS}{holder}/{id}");
        let written = self
            .store
            .put(
                &key,
                serde_json::to_vec(&request).unwrap_or_default(),
                Some(self.replicas.lease_id()),
            )
            .await;
        let outcome = match written {
            Err(e) => {
                tracing::warn!("cannot forward a request for cluster {cluster}: {e}");
                Err(RequestError::NotConnected(cluster.to_owned()))
            }
            Ok(_) => match tokio::time::timeout(timeout, rx).await {
                Err(_) => Err(RequestError::Timeout {
                    cluster: cluster.to_owned(),
                    after: timeout,
                }),
                Ok(Err(_)) => Err(RequestError::SessionClosed(cluster.to_owned())),
                Ok(Ok(answer)) => answer.into_reply(cluster),
            },
        };
        self.waiting().remove(&id);
        // Both halves go; a failure only leaves keys that expire with their leases.
        let _ = self.store.delete(&key).await;
        let _ = self.store.delete(&format!("{REPLIES}{me}/{id}")).await;
        outcome
    }
}

impl Answer {
    fn into_reply(self, cluster: &str) -> Result<Reply, RequestError> {
        let cluster = cluster.to_owned();
        match self.failure {
            Some(Failure::NotConnected) => Err(RequestError::NotConnected(cluster)),
            Some(Failure::Busy) => Err(RequestError::Busy(cluster)),
            Some(Failure::SessionClosed) => Err(RequestError::SessionClosed(cluster)),
            Some(Failure::Timeout) => Err(RequestError::Timeout {
                cluster,
                after: Duration::ZERO,
            }),
            None => Ok(Reply {
                outcome: self.answer.outcome(),
                node_id: self.answer.node_id,
                term: self.answer.term,
            }),
        }
    }
}

/// A watch event under [`REQUESTS`] or [`REPLIES`]: a request for this replica's session is
/// carried out (in a task of its own), an answer for this replica's caller completes it.
pub fn apply(hub: &Arc<Hub>, ev: &WatchEvent) {
    if ev.kind != EventKind::Put {
        return;
    }
    let me = hub.replicas().id();
    if let Some(rest) = ev.kv.key.strip_prefix(REPLIES) {
        let Some(id) = rest.strip_prefix(me).and_then(|r| r.strip_prefix('/')) else {
            return;
        };
        let Ok(answer) = serde_json::from_slice::<Answer>(&ev.kv.value) else {
            tracing::warn!("ignoring unreadable forwarded answer {}", ev.kv.key);
            return;
        };
        if let Some(tx) = hub.forward().waiting().remove(id) {
            let _ = tx.send(answer);
        }
        return;
    }
    let Some(rest) = ev.kv.key.strip_prefix(REQUESTS) else {
        return;
    };
    let Some(id) = rest.strip_prefix(me).and_then(|r| r.strip_prefix('/')) else {
        return;
    };
    let request = match serde_json::from_slice::<Forwarded>(&ev.kv.value) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("ignoring unreadable forwarded request {}: {e}", ev.kv.key);
            return;
        }
    };
    let hub = hub.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let timeout = Duration::from_millis(request.timeout_ms).min(Duration::from_secs(300));
        let answer = match hub
            .request_here(&request.cluster, &request.method, request.params, timeout)
            .await
        {
            Ok(a) => Answer {
                answer: RunAnswer::new(a.outcome, &a.node_id, a.term),
                failure: None,
            },
            Err(e) => Answer {
                answer: RunAnswer {
                    node_id: String::new(),
                    term: None,
                    result: None,
                    error: None,
                },
                failure: Some(match e {
                    RequestError::Busy(_) => Failure::Busy,
                    RequestError::SessionClosed(_) => Failure::SessionClosed,
                    RequestError::Timeout { .. } => Failure::Timeout,
                    RequestError::NotConnected(_) | RequestError::UnknownCluster(_) => {
                        Failure::NotConnected
                    }
                }),
            },
        };
        let key = format!("{REPLIES}{}/{id}", request.from);
        let lease = hub.replicas().lease_id();
        if let Err(e) = hub
            .registry()
            .store()
            .put(
                &key,
                serde_json::to_vec(&answer).unwrap_or_default(),
                Some(lease),
            )
            .await
        {
            tracing::warn!(
                "cannot answer a forwarded request for cluster {}: {e}",
                request.cluster
            );
        }
    });
}
