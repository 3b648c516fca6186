//! High availability of core nodes: one active node per cluster, elected through the cluster
//! store (etcd) with the standard etcd election recipe, fenced by the leader key's create revision.
//!
//! [`machine`] holds every decision as a pure state machine; [`driver`] runs it against a
//! [`Store`](autogate_store::Store), publishes the node's record, probes the active node, and
//! hands the server a [`Leadership`] watch, a status snapshot and [`fenced_txn`].
#![forbid(unsafe_code)]

pub mod driver;
pub mod machine;
mod tlsprobe;

pub use driver::{
    election_prefix, fenced_txn, nodes_prefix, CandidateStatus, FencedError, HaDriver, HaError,
    HaHandle, HaOptions, HaStatus, HttpProber, Prober, SwitchoverError,
};
pub use machine::{CrashProbe, Leadership, Millis, NodeRecord, ProbeResult, Role, StopReason};
pub use tlsprobe::TlsProber;
