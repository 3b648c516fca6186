//! The shutdown choreography every daemon role follows.
//!
//! One root [`CancellationToken`] and one [`TaskTracker`] per process. The first SIGTERM or
//! SIGINT logs the family's two lines (`got signal for shutdown....terminated`, `received
//! shutdown signal`) and cancels the root token; each role then runs its written shutdown order
//! (stop accepting → stop leader work → resign → drain → revoke lease) under a grace deadline.
//! A second signal forces the exit at once, for an operator who will not wait.
//!
//! The listener records which signal started the shutdown and when, so each role can end with
//! one [`StopClock`] line: what stopped, how long after the signal, and where that time went.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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

    /// The signal's own name (`SIGINT`), as an operator sends it.
    pub fn unix_name(self) -> &'static str {
        match self {
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Interrupt => "SIGINT",
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
    /// Set once, by the signal listener, before it cancels the token: a stop that finds it
    /// empty was not started by a signal and must not say so.
    signalled: Arc<OnceLock<(ShutdownSignal, Instant)>>,
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
        let signalled = self.signalled.clone();
        // Not on the tracker: it must outlive the drain (a second signal forces the exit while
        // shutdown waits for the tracked tasks), and it ends with the process.
        tokio::spawn(async move {
            let first = tokio::select! {
                _ = term.recv() => ShutdownSignal::Terminate,
                _ = int.recv() => ShutdownSignal::Interrupt,
            };
            let _ = signalled.set((first, Instant::now()));
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

    /// The signal that started the shutdown and when it arrived; `None` while none has, or
    /// when something else cancelled the root token.
    pub fn signal(&self) -> Option<(ShutdownSignal, Instant)> {
        self.signalled.get().copied()
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

/// Times a role's written shutdown order, phase by phase, for the one line that ends its log:
/// `core node stopped 13 ms after SIGINT (resign 4 ms, API requests 1 ms, …)`. An operator
/// waiting for the prompt sees where the wait went without turning on debug logs.
#[derive(Debug)]
pub struct StopClock {
    /// When the stop began: the signal's arrival, or when the role noticed the stop.
    began: Instant,
    signal: Option<ShutdownSignal>,
    mark: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl StopClock {
    /// Start timing once the role has seen its root token cancelled. Time from the signal to
    /// here counts in the total, not in a phase.
    pub fn start(shutdown: &Shutdown) -> Self {
        let now = Instant::now();
        let (signal, began) = match shutdown.signal() {
            Some((signal, at)) => (Some(signal), at.min(now)),
            None => (None, now),
        };
        Self {
            began,
            signal,
            mark: now,
            phases: Vec::new(),
        }
    }

    /// Close the phase that ran since the previous mark, under `name`.
    pub fn phase(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.mark));
        self.mark = now;
    }

    /// The closing line, without the log level: `<what> stopped 13 ms after SIGINT (…)`, or
    /// `<what> stopped in 13 ms, not by a signal (…)`.
    pub fn line(&self, what: &str) -> String {
        let total = ms(self.began.elapsed());
        let mut line = match self.signal {
            Some(s) => format!("{what} stopped {total} after {}", s.unix_name()),
            None => format!("{what} stopped in {total}, not by a signal"),
        };
        if !self.phases.is_empty() {
            let phases: Vec<String> = self
                .phases
                .iter()
                .map(|(name, d)| format!("{name} {}", ms(*d)))
                .collect();
            line.push_str(&format!(" ({})", phases.join(", ")));
        }
        line
    }

    /// Log [`StopClock::line`] at INFO: the role's last line.
    pub fn finish(self, what: &str) {
        tracing::info!("{}", self.line(what));
    }
}

/// Whole milliseconds: a stop is read by a person, and sub-millisecond phases say "0 ms".
fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
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
    fn stop_line_names_the_signal_only_when_one_started_it() {
        let s = Shutdown::new();
        let mut clock = StopClock::start(&s);
        clock.phase("resign");
        clock.phase("API requests");
        let line = clock.line("core node");
        assert!(
            line.starts_with("core node stopped in ") && line.contains(" ms, not by a signal ("),
            "{line}"
        );
        assert!(line.contains("(resign 0 ms, API requests 0 ms)"), "{line}");

        let _ = s.signalled.set((
            ShutdownSignal::Interrupt,
            Instant::now() - Duration::from_millis(40),
        ));
        let line = StopClock::start(&s).line("runner");
        let total: u128 = line
            .strip_prefix("runner stopped ")
            .and_then(|rest| rest.strip_suffix(" ms after SIGINT"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(total >= 40, "{line}");
    }

    #[test]
    fn signal_names_match_go() {
        assert_eq!(ShutdownSignal::Terminate.name(), "terminated");
        assert_eq!(ShutdownSignal::Interrupt.name(), "interrupt");
    }
}
