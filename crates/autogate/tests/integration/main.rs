//! Black-box and end-to-end tests of the `autogate` binary, one test target: each module was
//! its own test binary before, and [`support`] holds what they share (git repositories, node
//! set-up, the scripted gateway of the manager tests).
//!
//! Everything runs in one process, with tests in parallel: a test must not change the
//! process's environment or current directory (children get their own through
//! `autogate_testkit::Autogate`), and takes its ports from `autogate_testkit::free_port`, which
//! never hands out the same port twice in one process, or binds port 0 where the program can say
//! what it bound.

// clippy.toml's allow-unwrap-in-tests covers `#[test]` functions only, not the helpers next to
// them; a helper's unwrap is a failed test with its message just the same.
#![allow(clippy::unwrap_used)]

mod support;

mod api_auth;
mod api_cancel;
mod api_idempotency;
mod api_login_flood;
mod api_resources;
mod api_roles;
mod api_standby;
mod api_tls;
mod api_transport;
mod cli_client;
mod cli_db;
mod cli_first_hour;
mod cli_newcomer;
mod cli_resources;
mod cli_run;
mod config_cli;
mod family_commands;
mod family_import;
mod family_proxy;
mod family_services;
mod family_settings;
mod ha_e2e;
mod ha_faults;
mod ha_friction;
mod ha_restart;
mod link_e2e;
mod link_liveness;
mod manager_abuse;
mod manager_cli;
mod manager_frame_limits;
mod manager_page;
mod manager_replicas;
mod manager_runs;
mod manager_security;
mod manager_services;
mod manager_sessions;
mod manager_status;
mod metrics_doc;
mod node_names;
mod packaging;
mod readiness;
mod runners_e2e;
mod runners_restart;
mod runs_failover;
mod security_bad_input;
mod security_files;
mod security_git;
mod security_inputs;
mod security_secrets;
mod security_service_user;
mod server_lifecycle;
mod services_e2e;
mod setup_scripts;
mod soak;
