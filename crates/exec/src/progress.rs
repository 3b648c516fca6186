//! Progress of a run for a front end that shows it (the CLI's spinner, plain lines in logs).
//!
//! A run reaches the engine through layers that build their own [`RunOptions`](crate::RunOptions)
//! (the resource model, the job queue), so the hook is not an option of the run: it is set for
//! the task that awaits the run with [`with_progress`], and every step of the engine that takes
//! long without output of its own reports through it. A run awaited outside such a scope
//! reports to nobody and costs nothing.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A step of a run worth telling the user about while it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// A Python environment is being built for the run: none was cached for its requirement
    /// file and interpreter. A build takes seconds to minutes (pip downloads and installs).
    EnvironmentBuildStarted {
        /// The requirement file (`requirements.txt` or `pyproject.toml`) it is built from.
        requirements: PathBuf,
    },
    /// The build ended after `elapsed`; `ok` is false when it failed (the run then fails with
    /// the reason).
    EnvironmentBuildFinished {
        /// How long the build took.
        elapsed: Duration,
        /// True when the environment is ready.
        ok: bool,
    },
}

/// What receives the progress of the runs awaited in a [`with_progress`] scope. It is called
/// on the runtime's threads in the middle of the run: it must return quickly.
pub type ProgressHook = Arc<dyn Fn(&Progress) + Send + Sync>;

tokio::task_local! {
    static HOOK: ProgressHook;
}

/// Awaits `run` (a run of the engine, or anything that awaits one in the same task) with
/// `hook` receiving its progress.
pub async fn with_progress<F: Future>(hook: ProgressHook, run: F) -> F::Output {
    HOOK.scope(hook, run).await
}

/// Reports `p` to the hook of the current scope, if any.
pub(crate) fn report(p: Progress) {
    let _ = HOOK.try_with(|hook| hook(&p));
}
