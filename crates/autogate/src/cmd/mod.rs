//! One module per command; each loads the configuration it needs and reports errors as
//! [`crate::exit::Failure`]s.

pub mod backend;
pub mod certgen;
pub mod cluster;
pub mod completion;
pub mod db;
pub mod ha;
pub mod hostkeys;
pub mod login;
pub mod manager;
pub mod recover;
pub mod resource;
pub mod run;
pub mod runner;
pub mod server;
pub mod term;
pub mod version;

use autogate_config::{Config, LoadOptions, Role};

use crate::cli::Global;
use crate::exit::Failure;

/// Load and validate the configuration for a role; every problem is a usage error (64).
pub fn load_config(global: &Global, role: Option<Role>) -> Result<Config, Failure> {
    let config = autogate_config::load(&LoadOptions::from_process(global.config.clone()))?;
    term::set_plain(config.terminal.no_color);
    if let Some(role) = role {
        config.validate_for(role)?;
    }
    Ok(config)
}

/// Run a daemon role the same way for every role: validated configuration, logging, abort on
/// panic, the runtime, signal handling, then `role(config, shutdown)` until it returns. A
/// failure is logged as the last (FTL) line before the exit.
pub fn daemon<F, Fut, E>(global: &Global, role: Role, run: F) -> Result<(), Failure>
where
    F: FnOnce(Config, autogate_runtime::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display + DaemonError,
{
    let config = load_config(global, Some(role))?;
    let _logging = server::start_logging(&config, global.verbose)?;
    autogate_runtime::abort_on_panic();
    if global.verbose {
        match config.file() {
            Some(p) => tracing::info!("using configuration file {}", p.display()),
            None => tracing::info!("no configuration file: defaults and environment"),
        }
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let shutdown = autogate_runtime::Shutdown::new();
        shutdown
            .listen_for_signals()
            .map_err(|e| Failure::new(1, format!("cannot install signal handlers: {e}")))?;
        run(config, shutdown).await.map_err(|e| {
            tracing::error!(fatal = true, "{e}");
            Failure::new(e.exit_code(), e)
        })
    })
}

/// Errors of a daemon role know their process exit code.
pub trait DaemonError {
    fn exit_code(&self) -> i32;
}

impl DaemonError for autogate_server::ServerError {
    fn exit_code(&self) -> i32 {
        autogate_server::ServerError::exit_code(self)
    }
}

impl DaemonError for autogate_manager::ManagerError {
    fn exit_code(&self) -> i32 {
        autogate_manager::ManagerError::exit_code(self)
    }
}

/// Build the Tokio runtime of a daemon role.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("autogate")
        .build()
        .map_err(|e| Failure::new(1, format!("cannot start the async runtime: {e}")))
}
