//! Process runtime shared by every role: log output in the product family's format, the node
//! identity, the shutdown choreography (signals, root cancellation token, task tracker, grace
//! deadline) and the Prometheus registry.
#![forbid(unsafe_code)]

pub mod identity;
pub mod logging;
pub mod metrics;
pub mod shutdown;

pub use identity::{hostname, NodeId};
pub use logging::{init_logging, LogFormat, LogSettings, LoggingGuard};
pub use metrics::{Metrics, ProcessStats};
pub use shutdown::{abort_on_panic, Shutdown, ShutdownSignal};

/// Version of this build, as reported by `autogate version` and in `hello`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
