//! High availability of core nodes: one active node per cluster, elected through the cluster
//! store (etcd) with the standard etcd election recipe, fenced by the leader key's create revision.
//!
//! Layout: [`machine`] holds every decision as a pure state machine (events in, commands out,
//! time as an input), with its rule-by-rule tests beside it. [`driver`] runs it against a
//! [`Store`](autogate_store::Store), one module per task or concern: the machine loop, the store
//! worker, the keep-alive loop and the watchers; the [`HaHandle`] the server holds (a
//! [`Leadership`] watch, a status snapshot, operator requests, shutdown); [`fenced_txn`]; the
//! crash [`Prober`] of the active node (HTTP or HTTPS); the options, the keys in the store and
//! the metrics. [`workdir`] holds a node process's working directory — one process per
//! directory and role, and the state file naming its lease — so that a restarted process clears
//! what a crashed one left ([`revoke_predecessor`]) instead of making the cluster wait for its
//! lease to expire.
#![forbid(unsafe_code)]

pub mod driver;
pub mod machine;
pub mod workdir;

pub use driver::{
    election_prefix, fenced_txn, nodes_prefix, revoke_predecessor, CandidateStatus, FencedError,
    HaDriver, HaError, HaHandle, HaOptions, HaStatus, ProbeProtocol, Prober, SwitchoverError,
};
pub use machine::{CrashProbe, Leadership, Millis, NodeRecord, ProbeResult, Role, StopReason};
pub use workdir::{ProcessState, StateFile, WorkdirError, WorkdirLock};
