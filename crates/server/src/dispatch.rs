//! Distributed execution on a core node (`[server] distributed_execution = true`): the active
//! node runs a job dispatcher for as long as its leadership lasts, and hands the outcomes of
//! the manager's runs to whichever session of the manager link is up.
//!
//! [`Jobs`] is shared by the API, the link and the leader work. [`Jobs::serve_term`] runs
//! during one leadership (or the whole life of a node without HA): it starts a dispatcher
//! (which adopts the store's state, so jobs of a former active node carry on), publishes it,
//! starts a new one if it stops while the leadership lasts (a failed store write stops a
//! dispatcher, since its memory may then differ from the store), and withdraws it when the
//! leadership ends. Outcomes of manager-origin jobs wait in a queue until the link sends them
//! on a live session — right after `hello`, or at once when a session is up — and the link
//! then records them delivered. The queue is dropped with the leadership: the next active node
//! finds the undelivered outcomes in the store and sends them itself.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autogate_jobs::{Dispatcher, DispatcherOptions, Finished, JobMetrics, Writer};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Node;

/// Pause before a dispatcher that could not start, or stopped, is started again.
const RESTART_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Undelivered {
    queue: VecDeque<Finished>,
    /// Job ids in `queue`: a dispatcher started again re-sends what it finds undelivered.
    ids: HashSet<String>,
}

/// The node's dispatcher slot, its metrics and the outcomes still to send to the manager.
#[derive(Clone)]
pub struct Jobs {
    enabled: bool,
    current: Arc<watch::Sender<Option<Dispatcher>>>,
    undelivered: Arc<Mutex<Undelivered>>,
    ready: Arc<Notify>,
    metrics: JobMetrics,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("enabled", &self.enabled)
            .field("dispatching", &self.current().is_some())
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// The slot of a node; the metrics are registered whatever the mode, so every core node
    /// exposes the same list.
    pub fn new(enabled: bool, metrics: &autogate_runtime::Metrics) -> Self {
        let jobs = JobMetrics::new();
        metrics.register(|r| jobs.register(r));
        Jobs {
            enabled,
            current: Arc::new(watch::channel(None).0),
            undelivered: Arc::new(Mutex::new(Undelivered::default())),
            ready: Arc::new(Notify::new()),
            metrics: jobs,
        }
    }

    /// Whether runs go to runners (`[server] distributed_execution`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The dispatcher of this node's current leadership, if it has one now.
    pub fn current(&self) -> Option<Dispatcher> {
        self.current
            .borrow()
            .as_ref()
            .filter(|d| !d.is_closed())
            .cloned()
    }

    /// The current dispatcher, waiting up to `within` for one (a node elected a moment ago is
    /// still adopting the store's state).
    pub async fn wait_current(&self, within: Duration) -> Option<Dispatcher> {
        let mut rx = self.current.subscribe();
        let found = tokio::time::timeout(
            within,
            rx.wait_for(|d| d.as_ref().is_some_and(|d| !d.is_closed())),
        )
        .await;
        match found {
            Ok(Ok(d)) => d.clone(),
            _ => None,
        }
    }

    /// Dispatches until `token` is cancelled (the leadership ended or the node stops).
    pub async fn serve_term(&self, node: Node, writer: Writer, token: CancellationToken) {
        let opts = DispatcherOptions {
            cluster_id: node.config.application.cluster_id.clone(),
            queue_timeout: node.config.server.job_queue_timeout,
            retention: node.config.server.job_retention,
        };
        // The tasks of this term's dispatchers: each ends with its dispatcher's token, and the
        // term's work is over only once they all have.
        let tasks = TaskTracker::new();
        while !token.is_cancelled() {
            // Its own token: a dispatcher whose watch fails cancels it, which must not look
            // like the end of the leadership.
            let instance = token.child_token();
            let started = autogate_jobs::start_metered(
                node.store.clone(),
                opts.clone(),
                writer.clone(),
                self.metrics.clone(),
                instance.clone(),
                &tasks,
            )
            .await;
            match started {
                Ok((dispatcher, mut deliveries)) => {
                    tracing::info!("dispatching jobs to the cluster's runners");
                    self.current.send_replace(Some(dispatcher.clone()));
                    loop {
                        tokio::select! {
                            _ = instance.cancelled() => break,
                            _ = dispatcher.closed() => break,
                            done = deliveries.recv() => match done {
                                Some(done) => self.push(done),
                                None => break,
                            },
                        }
                    }
                    self.current.send_replace(None);
                    instance.cancel();
                    if !token.is_cancelled() {
                        tracing::warn!(
                            "the job dispatcher stopped while this node is active; starting it again"
                        );
                    }
                }
                Err(e) => {
                    instance.cancel();
                    tracing::warn!("cannot start the job dispatcher: {e}; retrying");
                }
            }
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(RESTART_AFTER) => {}
            }
        }
        self.current.send_replace(None);
        tasks.close();
        tasks.wait().await;
        // The next active node re-sends from the store what this one could not.
        let mut u = self.lock();
        u.queue.clear();
        u.ids.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Undelivered> {
        self.undelivered.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, done: Finished) {
        {
            let mut u = self.lock();
            if !u.ids.insert(done.record.id.clone()) {
                return;
            }
            u.queue.push_back(done);
        }
        self.ready.notify_one();
    }

    /// Takes the outcomes waiting for the manager (the link sends them, then calls
    /// [`Jobs::delivered`] or gives back what it could not send).
    pub fn take_undelivered(&self) -> Vec<Finished> {
        let mut u = self.lock();
        u.ids.clear();
        u.queue.drain(..).collect()
    }

    /// Outcomes the link could not send (the session ended): first in line for the next one.
    pub fn give_back(&self, items: Vec<Finished>) {
        let mut u = self.lock();
        for done in items.into_iter().rev() {
            if u.ids.insert(done.record.id.clone()) {
                u.queue.push_front(done);
            }
        }
    }

    /// Resolves when outcomes are waiting to be sent.
    pub async fn undelivered_ready(&self) {
        self.ready.notified().await;
    }

    /// Records that the manager was sent the outcome of `job` on a live session.
    pub fn delivered(&self, job: &str) {
        if let Some(d) = self.current() {
            d.mark_delivered(job);
        }
    }
}

/// The writer of a dispatcher: fenced by the leadership's term with HA (a refused fence means
/// another node leads now), plain without.
pub fn writer(node: &Node) -> Writer {
    let Some(ha) = node.ha.clone() else {
        return autogate_jobs::plain_writer(node.store.clone());
    };
    Arc::new(move |txn| {
        let ha = ha.clone();
        Box::pin(async move {
            match ha.fenced_txn(txn).await {
                Ok(_) => Ok(true),
                Err(
                    autogate_ha::FencedError::NotActive | autogate_ha::FencedError::Rejected { .. },
                ) => Ok(false),
                Err(autogate_ha::FencedError::Store(e)) => Err(e.to_string()),
            }
        })
    })
}
