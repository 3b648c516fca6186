//! Distributed execution (described for operators in docs/runners.md): runner nodes take jobs
//! from the active core node through the cluster's etcd, and no job is lost when a runner or the
//! active core node dies.
//!
//! - [`model`]: the records and their keys;
//! - [`scheduler`]: the dispatch rules as a pure state machine;
//! - [`dispatcher`]: the active core node's driver of the scheduler;
//! - [`runner`]: the runner role;
//! - [`metrics`]: what the dispatcher counts.
#![forbid(unsafe_code)]

pub mod dispatcher;
pub mod metrics;
pub mod model;
pub mod runner;
pub mod scheduler;
pub mod view;

pub use dispatcher::{
    list_jobs, list_runners, lookup, plain_writer, start, start_metered, Dispatcher,
    DispatcherOptions, Finished, JobsError, Submitted, Writer,
};
pub use metrics::{JobMetrics, RunnerMetrics};
pub use model::{JobOutcome, JobRecord, JobState, Origin, RunnerRecord};
pub use runner::{RunnerError, RunnerOptions, RunnerWorkdir};
