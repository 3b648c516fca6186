//! Process runtime shared by every role: log output in the product family's format, the node
//! identity, the shutdown choreography (signals, root cancellation token, task tracker, grace
//! deadline) and the Prometheus registry.
//!
//! Modules: [`identity`] (node ids, host name), [`logging`] (the family's log line and JSON
//! lines), [`shutdown`] (signals, root token, task tracker, grace), [`metrics`] (the registry and
//! process figures), [`private`] (the working directory and files only this node's user reads),
//! [`ratelimit`] (token buckets and a limiter of log lines).
#![forbid(unsafe_code)]

pub mod identity;
pub mod logging;
pub mod metrics;
pub mod private;
pub mod ratelimit;
pub mod shutdown;

pub use identity::{hostname, NodeId};
pub use logging::{init_logging, LogFormat, LogSettings, LoggingGuard};
pub use metrics::{Metrics, ProcessStats};
pub use shutdown::{abort_on_panic, Shutdown, ShutdownSignal, StopClock};

/// Version of this build, as reported by `autogate version` and in `hello`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error with all its causes, `outer: cause: root cause`. Client libraries (reqwest, hyper)
/// put a generic message on top ("error sending request"); the causes say what went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
