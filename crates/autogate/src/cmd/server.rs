//! `autogate server`: run a core node until SIGTERM/SIGINT.

use autogate_config::{Config, LogLevel, Role};
use autogate_runtime::{abort_on_panic, init_logging, LogFormat, LogSettings, NodeId, Shutdown};

use crate::cli::Global;
use crate::exit::Failure;

pub fn run(global: &Global) -> Result<(), Failure> {
    let config = super::load_config(global, Some(Role::Server))?;
    let _logging = start_logging(&config, global.verbose)?;
    abort_on_panic();
    let node_id = NodeId::generate();
    if global.verbose {
        match config.file() {
            Some(p) => tracing::info!("using configuration file {}", p.display()),
            None => tracing::info!("no configuration file: defaults and environment"),
        }
    }
    let rt = super::runtime()?;
    rt.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown
            .listen_for_signals()
            .map_err(|e| Failure::new(1, format!("cannot install signal handlers: {e}")))?;
        autogate_server::run(config, node_id, shutdown)
            .await
            .map_err(|e| {
                tracing::error!(fatal = true, "{e}");
                Failure::new(e.exit_code(), e)
            })
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
