//! One module per command; each loads the configuration it needs and reports errors as
//! [`crate::exit::Failure`]s.

pub mod certgen;
pub mod ha;
pub mod manager;
pub mod server;
pub mod version;

use autogate_config::{Config, LoadOptions, Role};

use crate::cli::Global;
use crate::exit::Failure;

/// Load and validate the configuration for a role; every problem is a usage error (64).
pub fn load_config(global: &Global, role: Option<Role>) -> Result<Config, Failure> {
    let config = autogate_config::load(&LoadOptions::from_process(global.config.clone()))?;
    if let Some(role) = role {
        config.validate_for(role)?;
    }
    Ok(config)
}

/// Build the Tokio runtime of a daemon role.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("autogate")
        .build()
        .map_err(|e| Failure::new(1, format!("cannot start the async runtime: {e}")))
}
