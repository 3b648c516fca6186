//! `autogate server`: run a core node until SIGTERM/SIGINT.

use autogate_config::{Config, LogLevel, Role};
use autogate_runtime::{init_logging, LogFormat, LogSettings, NodeId};

use crate::cli::Global;
use crate::exit::Failure;

pub fn run(global: &Global) -> Result<(), Failure> {
    super::daemon(global, Role::Server, |config, shutdown| {
        let node_id = NodeId::generate().named(&autogate_server::link::node_name(&config));
        autogate_server::run(config, node_id, shutdown)
    })
}

/// Logging of a daemon role from `[log]`.
pub fn start_logging(
    config: &Config,
    verbose: bool,
) -> Result<autogate_runtime::LoggingGuard, Failure> {
    let level = match config.log.level {
        _ if verbose => Some(tracing::Level::DEBUG),
        LogLevel::Trace => Some(tracing::Level::TRACE),
        LogLevel::Debug => Some(tracing::Level::DEBUG),
        LogLevel::Info => Some(tracing::Level::INFO),
        LogLevel::Warn => Some(tracing::Level::WARN),
        LogLevel::Error | LogLevel::Fatal => Some(tracing::Level::ERROR),
        LogLevel::Disabled => None,
    };
    let format = |json: bool| {
        if json {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    };
    let settings = LogSettings {
        level,
        console: format(config.log.console_json),
        file: config
            .log
            .file_enabled
            .then(|| (config.log.file_path(), format(config.log.file_json))),
    };
    init_logging(&settings).map_err(|e| Failure::new(74, e))
}
