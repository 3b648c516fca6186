//! Leader work of a core node with HA on: follows the election (`autogate-ha`) and holds the
//! manager link — and, with distributed execution, the job dispatcher — only while this node
//! is the active one, under the term of that leadership.
//!
//! It also tells the election whether this node can reach the manager — from the live link
//! while active, from a TLS handshake on a slow timer while standby — so that leadership moves
//! away from an active node that cannot reach the manager only towards a node that can, and
//! only after an attempt of its own, asked for by the election and made at once, failed too.

use std::time::Duration;

use autogate_ha::{HaHandle, Leadership};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::link::{self, LinkSettings, LinkStatus};
use crate::Node;

/// How often a standby checks that it could reach the manager.
const STANDBY_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often it checks while the active node reports that it cannot: the election counts a
/// standby's reachability against the active's failure only once it is fresh
/// ([`autogate_ha::machine::FRESH_REACHABILITY_MS`]), so it must be said again within that.
const STANDBY_CHECK_FAST: Duration = Duration::from_secs(1);
/// How often the active node reports its link state.
const ACTIVE_REPORT_EVERY: Duration = Duration::from_millis(500);

struct Held {
    term: u64,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Held {
    async fn stop(self) {
        self.token.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Follow leadership until `token` is cancelled; the link of the current leadership, if any,
/// is closed before returning.
pub async fn follow(
    node: Node,
    ha: HaHandle,
    settings: Option<LinkSettings>,
    token: CancellationToken,
) {
    let mut rx = ha.leadership();
    let mut held: Option<Held> = None;
    let reporter = tokio::spawn(report_reachability(
        ha.clone(),
        settings.clone(),
        node.link.clone(),
        token.clone(),
    ));
    loop {
        let current = rx.borrow_and_update().clone();
        match current {
            Leadership::Active { term } => {
                if held.as_ref().map(|h| h.term) != Some(term) {
                    if let Some(old) = held.take() {
                        old.stop().await;
                    }
                    let term_token = CancellationToken::new();
                    let mut tasks = Vec::new();
                    if node.jobs.enabled() {
                        let (node, token) = (node.clone(), term_token.clone());
                        tasks.push(tokio::spawn(async move {
                            let writer = crate::dispatch::writer(&node);
                            node.jobs.serve_term(node.clone(), writer, token).await
                        }));
                    }
                    if let Some(settings) = &settings {
                        let mut settings = settings.clone();
                        settings.retries = Some(ha.manager_retries());
                        tasks.push(tokio::spawn(link::run(
                            node.clone(),
                            settings,
                            Some(term),
                            node.link.clone(),
                            term_token.clone(),
                        )));
                    }
                    held = Some(Held {
                        term,
                        token: term_token,
                        tasks,
                    });
                }
            }
            Leadership::Standby { .. } | Leadership::Paused => {
                if let Some(old) = held.take() {
                    old.stop().await;
                }
            }
        }
        tokio::select! {
            _ = token.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
    }
    if let Some(old) = held.take() {
        old.stop().await;
    }
    reporter.abort();
}

async fn report_reachability(
    ha: HaHandle,
    settings: Option<LinkSettings>,
    link: LinkStatus,
    token: CancellationToken,
) {
    let Some(settings) = settings else {
        // No manager configured: reachability cannot decide anything; never block hand-overs.
        ha.set_manager_reachable(true);
        return;
    };
    let mut last_standby_check: Option<tokio::time::Instant> = None;
    let mut last_reported: Option<bool> = None;
    let mut retry_reported: Option<u64> = None;
    loop {
        let reachable = match ha.current() {
            Leadership::Active { .. } => {
                let state = link.get();
                // The attempt the election asked for before handing over has failed.
                if state.retry_failed.is_some() && state.retry_failed != retry_reported {
                    retry_reported = state.retry_failed;
                    if let Some(n) = state.retry_failed {
                        ha.manager_retry_failed(n);
                    }
                }
                // A link still dialling after a fresh election is not a failure yet; the
                // machine only acts on a sustained `false` (connect grace).
                state.connected || state.failing_since.is_none()
            }
            standby => {
                let leader = match standby {
                    Leadership::Standby { leader } => leader,
                    _ => None,
                };
                let active_failing = leader.is_some_and(|id| {
                    ha.nodes()
                        .iter()
                        .any(|r| r.node_id == id && !r.manager_reachable)
                });
                let every = if active_failing {
                    STANDBY_CHECK_FAST
                } else {
                    STANDBY_CHECK_EVERY
                };
                let due = last_standby_check.is_none_or(|t| t.elapsed() >= every);
                if due {
                    last_standby_check = Some(tokio::time::Instant::now());
                    link::check_reachable(&settings).await
                } else {
                    last_reported.unwrap_or(false)
                }
            }
        };
        if last_reported != Some(reachable) {
            ha.set_manager_reachable(reachable);
            last_reported = Some(reachable);
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(ACTIVE_REPORT_EVERY) => {}
        }
    }
}
