//! The machine loop: the one task that owns the [`Machine`]. It turns messages (store events,
//! keep-alives, watch snapshots, probe results, operator requests) and its own timer into events,
//! hands store commands to the worker and carries out local commands itself — leadership watch,
//! metrics, logs, probes, answers — then publishes the snapshot the handle reads. It never awaits
//! the store, so no slow store call delays a decision that is due.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use autogate_store::LeaseId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::probe::Prober;
use super::{millis, Input, Shared, StoreCmd};
use crate::machine::{Command, Event, Leadership, LocalCommand, LogLevel, Machine, Millis};

pub(super) struct MachineLoop {
    pub(super) machine: Machine,
    pub(super) origin: Instant,
    pub(super) shared: Arc<Shared>,
    pub(super) leader_tx: watch::Sender<Leadership>,
    pub(super) lease_tx: watch::Sender<Option<LeaseId>>,
    pub(super) worker_tx: mpsc::UnboundedSender<StoreCmd>,
    pub(super) input_tx: mpsc::UnboundedSender<Input>,
    pub(super) prober: Prober,
    pub(super) replies: VecDeque<oneshot::Sender<Result<(), String>>>,
    pub(super) timer: Option<Instant>,
    pub(super) tasks: TaskTracker,
}

impl MachineLoop {
    pub(super) async fn run(mut self, mut input: mpsc::UnboundedReceiver<Input>) {
        loop {
            let timer = self.timer;
            let next = tokio::select! {
                msg = input.recv() => msg,
                () = async {
                    match timer {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.timer = None;
                    Some(Input::Event(Event::Tick))
                }
            };
            let Some(msg) = next else { break };
            let now = millis(self.origin, Instant::now());
            let commands = match msg {
                Input::Event(e) => self.machine.handle(now, e),
                Input::Switchover(to, reply) => {
                    self.replies.push_back(reply);
                    self.machine.handle(now, Event::Switchover { to })
                }
                Input::Republish => {
                    self.machine.republish();
                    self.machine.handle(now, Event::Tick)
                }
                Input::Shutdown(done) => {
                    let commands = self.machine.handle(now, Event::Shutdown);
                    self.execute(commands);
                    self.after(now);
                    let (tx, rx) = oneshot::channel();
                    let _ = self.worker_tx.send(StoreCmd::Drain(tx));
                    let _ = rx.await;
                    let _ = done.send(());
                    break;
                }
            };
            self.execute(commands);
            self.after(now);
            if self.machine.is_finished() {
                break;
            }
        }
        // Stop the keep-alive loop and the watchers (they end when their sends fail).
        self.lease_tx.send_replace(None);
    }

    fn after(&mut self, now: Millis) {
        self.sync_lease();
        let leadership = self.machine.leadership();
        self.leader_tx.send_if_modified(|l| {
            let changed = *l != leadership;
            *l = leadership.clone();
            changed
        });
        let snap = self.machine.snapshot(now);
        let mut guard = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *guard = (Instant::now(), snap);
    }

    fn sync_lease(&self) {
        self.lease_tx.send_if_modified(|l| {
            let current = self.machine.current_lease();
            let changed = *l != current;
            *l = current;
            changed
        });
    }

    fn execute(&mut self, commands: Vec<Command>) {
        // The worker drops store commands for a lease that is not current, so the current lease
        // must be visible to it before the commands are.
        self.sync_lease();
        for command in commands {
            match command {
                Command::Store(command) => {
                    let _ = self.worker_tx.send(StoreCmd::Do(command));
                }
                Command::Local(command) => self.carry_out(command),
            }
        }
    }

    /// Carries out one local command (nothing here waits on the store).
    fn carry_out(&mut self, command: LocalCommand) {
        let metrics = &self.shared.metrics;
        match command {
            LocalCommand::StartLeaderWork { term, waited_ms } => {
                metrics.is_active.set(1);
                metrics.term.set(i64::try_from(term).unwrap_or(i64::MAX));
                metrics.transitions.inc();
                if let Some(ms) = waited_ms {
                    #[allow(clippy::cast_precision_loss)]
                    metrics.failover.observe(ms as f64 / 1000.0);
                }
            }
            LocalCommand::StopLeaderWork { .. } => {
                metrics.is_active.set(0);
                metrics.term.set(0);
                metrics.transitions.inc();
            }
            LocalCommand::Probe { node_id, address } => {
                let prober = self.prober.clone();
                let input = self.input_tx.clone();
                self.tasks.spawn(async move {
                    // A probe still in flight when the election stops has nobody to tell.
                    let result = tokio::select! {
                        result = prober.probe(&address) => result,
                        () = input.closed() => return,
                    };
                    let _ = input.send(Input::Event(Event::ProbeResult {
                        node_id,
                        address,
                        result,
                    }));
                });
            }
            LocalCommand::Log { level, text } => match level {
                LogLevel::Debug => tracing::debug!("{text}"),
                LogLevel::Info => tracing::info!("{text}"),
                LogLevel::Warn => tracing::warn!("{text}"),
            },
            LocalCommand::RetryManager { retry } => {
                self.shared.manager_retry.send_replace(retry);
            }
            LocalCommand::SetTimer { at } => {
                self.timer = Some(self.origin + Duration::from_millis(at.0));
            }
            LocalCommand::SwitchoverOutcome(outcome) => {
                if let Some(reply) = self.replies.pop_front() {
                    let _ = reply.send(outcome);
                }
            }
            LocalCommand::Finished => {}
        }
    }
}
