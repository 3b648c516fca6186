//! Where a setting came from.
//!
//! Every resolved value remembers its origin so that `version --show-config` can explain the
//! effective configuration and so that every error can point at the exact place to fix.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// The origin of one setting's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The built-in default (or a value derived from other settings).
    Default,
    /// An environment variable such as `GATEWAY_SERVER_PORT`.
    Env {
        /// The variable's name.
        var: String,
    },
    /// A line of the configuration file.
    File {
        /// The file that was read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Env { var } => write!(f, "environment variable {var}"),
            Source::File { path, line } => write!(f, "{} line {line}", path.display()),
        }
    }
}
