//! Test harness for autogate's integration and black-box tests: real etcd servers, minted
//! certificates, and real `autogate` processes. Everything it starts is torn down on drop, also
//! when a test panics.
//!
//! Modules: [`etcd`] (single members and 3-member clusters, kill and pause), [`certs`] (a
//! throw-away PKI), [`process`] (spawned `autogate` processes with captured logs, ports),
//! [`auth`] (logging in to a core node), [`badinput`] (malformed and hostile requests against
//! every route of an API, counted), [`proxy`] (a cuttable TCP proxy for network faults),
//! [`scenario`] (end-to-end set-ups), [`replicas`] (several manager replicas on one etcd),
//! [`soak`] (the chaos soak and its checker), [`webdriver`]
//! (headless Chromium), `http` (requests through reqwest), `rng` (the seeded generator of the
//! soak's schedule and the bad-input cases).
#![forbid(unsafe_code)]

pub mod auth;
pub mod badinput;
pub mod certs;
pub mod etcd;
mod http;
pub mod process;
pub mod proxy;
pub mod replicas;
mod rng;
pub mod scenario;
pub mod soak;
pub mod webdriver;

pub use process::{
    autogate_bin, free_port, http_get, poll_until, Autogate, LogLine, Output, Process,
};
