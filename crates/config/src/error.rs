//! The one error type of configuration loading and validation.
//!
//! Every message names what is wrong (the key as the user wrote it), the offending value (never
//! for secret keys), where it came from, and what would be accepted, because the reader of these
//! messages is an operator looking at a failed start, not at the code. All variants are usage
//! errors (exit code 64, `EX_USAGE`) except a failure to read a file that exists (74,
//! `EX_IOERR`), so scripts can tell "fix your configuration" from "fix your machine".

use std::path::PathBuf;

use crate::source::Source;
use crate::suggest::did_you_mean;

/// `EX_USAGE` from sysexits(3): the configuration is wrong.
pub const EXIT_USAGE: i32 = 64;
/// `EX_IOERR` from sysexits(3): an existing file could not be read.
pub const EXIT_IOERR: i32 = 74;

/// Why the configuration could not be loaded or is unfit for a role.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config PATH` names a file that does not exist.
    #[error("config file {} given with --config does not exist", path.display())]
    ExplicitFileMissing {
        /// The path given.
        path: PathBuf,
    },

    /// `$GATEWAY_CONFIG` names a file that does not exist.
    #[error("config file {} named by environment variable {var} does not exist", path.display())]
    EnvFileMissing {
        /// Always `GATEWAY_CONFIG`.
        var: String,
        /// The path it names.
        path: PathBuf,
    },

    /// The file exists but could not be read (permissions, a directory, I/O failure).
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// The file is not UTF-8 text.
    #[error("{} line {line}: the file is not valid UTF-8 text", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The first line holding invalid bytes.
        line: usize,
    },

    /// A line of the file is not a section header, a `key = value` pair, a comment or blank.
    #[error("{} line {line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what is expected.
        message: String,
    },

    /// A `key = value` line before the first `[section]` header.
    #[error("{} line {line}: key \"{key}\" appears before any [section] header; put it under its section, e.g. [server]", path.display())]
    KeyOutsideSection {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The key as written.
        key: String,
    },

    /// A `[section]` header that is not one of the known sections.
    #[error("{} line {line}: unknown section [{section}]; expected one of {expected}", path.display())]
    UnknownSection {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The section as written.
        section: String,
        /// The known sections.
        expected: String,
    },

    /// A key that the section does not have.
    #[error("{} line {line}: unknown key \"{key}\" in section [{section}]{}", path.display(), did_you_mean(suggestions))]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The section the key is in.
        section: String,
        /// The key as written.
        key: String,
        /// Keys of the section close enough to be what was meant.
        suggestions: Vec<String>,
    },

    /// A `GATEWAY_*` environment variable that matches no key.
    #[error("unknown configuration variable {var}: it matches no configuration key{} (every GATEWAY_* variable except GATEWAY_CONFIG must name a key; the configuration reference lists them all)", did_you_mean(suggestions))]
    UnknownEnv {
        /// The variable's name.
        var: String,
        /// Variables close enough to be what was meant.
        suggestions: Vec<String>,
    },

    /// A client profile name that cannot be used (empty, or characters an environment variable
    /// name cannot carry).
    #[error("invalid client profile name \"{name}\" (from {origin}): expected letters, digits, '_' or '-'")]
    InvalidProfileName {
        /// The name as written.
        name: String,
        /// Where it appeared.
        origin: Source,
    },

    /// The same key set twice in one file (possibly through an alternative spelling).
    #[error("{second_key} ({second_source}) sets the same setting as {first_key} ({first_source}); set it only once")]
    Duplicate {
        /// The first occurrence, as written.
        first_key: String,
        /// Where it is.
        first_source: Source,
        /// The second occurrence, as written.
        second_key: String,
        /// Where it is.
        second_source: Source,
    },

    /// A value that does not parse or is out of range.
    #[error("invalid value {}for {key} (from {origin}): {expected}", value.as_ref().map(|v| format!("{v:?} ")).unwrap_or_default())]
    InvalidValue {
        /// The key, e.g. `server.port`.
        key: String,
        /// The value as given; `None` for secret keys, which are never echoed.
        value: Option<String>,
        /// Where it came from.
        origin: Source,
        /// What would be accepted (and, where it helps, why this is not).
        expected: String,
    },

    /// The same setting given through both `[commander]` and `[connect]` names.
    #[error("{first_key} (from {first_source}) and {second_key} (from {second_source}) set the same setting: [commander] is the older name of [connect]; use only one of the two names")]
    AliasConflict {
        /// The `[commander]` name.
        first_key: String,
        /// Where it is set.
        first_source: Source,
        /// The `[connect]` name.
        second_key: String,
        /// Where it is set.
        second_source: Source,
    },

    /// Two settings that cannot go together.
    #[error("{first} conflicts with {second}: {reason}")]
    Conflict {
        /// One of the settings.
        first: Box<Setting>,
        /// The other.
        second: Box<Setting>,
        /// Why they cannot go together and what to change.
        reason: String,
    },

    /// A setting that must be given because of another one.
    #[error("{key} is not set (set it in the config file or with {env}): {reason}")]
    Missing {
        /// The key that is needed.
        key: String,
        /// Its environment variable.
        env: String,
        /// What needs it, with that setting's value and source.
        reason: String,
    },

    /// A setting whose value does not suit the role about to start.
    #[error("{setting} does not suit {role}: {reason}")]
    Unsuitable {
        /// The setting.
        setting: Box<Setting>,
        /// The role, e.g. `autogate runner`.
        role: String,
        /// Why, and what to set instead.
        reason: String,
    },

    /// A setting names a file that does not exist although it is needed now.
    #[error("{key} (from {origin}) names {}, which does not exist: {reason}", path.display())]
    FileNotFound {
        /// The key.
        key: String,
        /// The path it names.
        path: PathBuf,
        /// Where it came from.
        origin: Source,
        /// What needs the file.
        reason: String,
    },
}

/// One setting as named in messages: `key = value (from source)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key as it was set, e.g. `connect.server_ha_enabled` or `commander.server_ha_enabled`.
    pub key: String,
    /// Its display value (never a secret: those are shown as `<redacted>`).
    pub value: String,
    /// Where it came from.
    pub origin: Source,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {} (from {})", self.key, self.value, self.origin)
    }
}

impl ConfigError {
    /// The keys the error is about, as named in its message (`section.key`, or the name a value
    /// was set under); empty when it is about the file or a name that matches no key.
    pub fn keys(&self) -> Vec<String> {
        match self {
            ConfigError::Duplicate {
                first_key,
                second_key,
                ..
            }
            | ConfigError::AliasConflict {
                first_key,
                second_key,
                ..
            } => vec![first_key.clone(), second_key.clone()],
            ConfigError::InvalidValue { key, .. }
            | ConfigError::Missing { key, .. }
            | ConfigError::FileNotFound { key, .. } => vec![key.clone()],
            ConfigError::Conflict { first, second, .. } => {
                vec![first.key.clone(), second.key.clone()]
            }
            ConfigError::Unsuitable { setting, .. } => vec![setting.key.clone()],
            ConfigError::ExplicitFileMissing { .. }
            | ConfigError::EnvFileMissing { .. }
            | ConfigError::Io { .. }
            | ConfigError::NotUtf8 { .. }
            | ConfigError::Syntax { .. }
            | ConfigError::KeyOutsideSection { .. }
            | ConfigError::UnknownSection { .. }
            | ConfigError::UnknownKey { .. }
            | ConfigError::UnknownEnv { .. }
            | ConfigError::InvalidProfileName { .. } => Vec::new(),
        }
    }

    /// The process exit code for this error: 74 (`EX_IOERR`) when an existing file could not
    /// be read, 64 (`EX_USAGE`) for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Io { .. } => EXIT_IOERR,
            _ => EXIT_USAGE,
        }
    }
}
