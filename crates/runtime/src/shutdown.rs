//! The shutdown choreography every daemon role follows.
//!
//! One root [`CancellationToken`] and one [`TaskTracker`] per process. The first SIGTERM or
//! SIGINT logs the family's two lines (`got signal for shutdown....terminated`, `received
//! shutdown signal`) and cancels the root token; each role then runs its written shutdown order
//! (stop accepting → stop leader work → resign → drain → revoke lease) under a grace deadline.
//! A second signal forces the exit at once, for an operator who will not wait.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Which signal started the shutdown, named as the family names it (Go's signal strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownSignal {
    Terminate,
    Interrupt,
}

impl ShutdownSignal {
    pub fn name(self) -> &'static str {
        match self {
            ShutdownSignal::Terminate => "terminated",
            ShutdownSignal::Interrupt => "interrupt",
        }
    }
}

/// Exit status used when a second signal forces the exit (128 + SIGINT, as shells do).
pub const FORCED_EXIT_CODE: i32 = 130;

/// The root of every long-running task of a process.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// The root token: cancelled once when shutdown starts. Children derive from it.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Every long-running task is spawned here (or on a child tracker its component waits for)
    /// so shutdown can wait for it. The one exception is the signal listener itself.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Start listening for SIGTERM/SIGINT. Must be called inside a Tokio runtime.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        // Not on the tracker: it must outlive the drain (a second signal forces the exit while
        // shutdown waits for the tracked tasks), and it ends with the process.
        tokio::spawn(async move {
            let first = tokio::select! {
                _ = term.recv() => ShutdownSignal::Terminate,
                _ = int.recv() => ShutdownSignal::Interrupt,
            };
            tracing::info!("got signal for shutdown....{}", first.name());
            tracing::info!("received shutdown signal");
            token.cancel();
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::warn!("second signal received: forcing exit without finishing shutdown");
            std::process::exit(FORCED_EXIT_CODE);
        });
        Ok(())
    }

    /// Close the tracker and wait for every task, at most `grace`. Returns false when the
    /// deadline passed with tasks still running (the caller logs and exits anyway).
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// A daemon must not limp on after a panic in one task: log it and abort the whole process so
/// its supervisor (and, with HA, a standby) takes over cleanly.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(fatal = true, "panic: {info}; aborting");
        default(info);
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tracked_tasks_until_grace() {
        let s = Shutdown::new();
        let token = s.token();
        s.tracker().spawn(async move { token.cancelled().await });
        s.token().cancel();
        assert!(s.drain(Duration::from_secs(5)).await);

        let stuck = Shutdown::new();
        stuck
            .tracker()
            .spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        assert!(!stuck.drain(Duration::from_millis(20)).await);
    }

    #[test]
    fn signal_names_match_go() {
        assert_eq!(ShutdownSignal::Terminate.name(), "terminated");
        assert_eq!(ShutdownSignal::Interrupt.name(), "interrupt");
    }
}
