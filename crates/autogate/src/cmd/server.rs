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
    let name = &config.log.timestamp_timezone;
    let time_zone = autogate_runtime::logging::time_zone(name).map_err(|e| {
        Failure::new(
            64,
            format!("log.timestamp_timezone = {name:?} (GATEWAY_LOG_TIMESTAMP_TIMEZONE): {e}"),
        )
    })?;
    let settings = LogSettings {
        level,
        console: format(config.log.console_json),
        file: config
            .log
            .file_enabled
            .then(|| (config.log.file_path(), format(config.log.file_json))),
        time_zone,
    };
    let guard = init_logging(&settings).map_err(|e| Failure::new(74, e))?;
    // Once per key and start: a setting the family's file carries but autogate ignores must
    // not look as if it worked.
    for setting in config.compat_settings() {
        tracing::warn!("{setting}");
    }
    Ok(guard)
}
