//! Configuration of autogate: sources, INI parsing, typed settings and validation.
//!
//! Files written for the product family's gateway load unchanged: same sections, keys,
//! environment variable names, precedence (environment > one file > default) and lookup order.
//! [`load`] returns a fully parsed and cross-checked [`Config`] or a [`ConfigError`] that names
//! the key, the value and where it came from; [`Config::validate_for`] adds the rules of the role
//! about to start. Everything is decided before any port is bound. The reference
//! (`docs/configuration.md`) is generated from the same schema table by [`render_markdown`].
//!
//! Modules:
//! * `schema` — the table of every key (section, name, variable, kind, default, doc), once;
//! * `source`, `ini`, `load` — where values come from, the family's INI dialect, and loading with
//!   aliases and precedence;
//! * `value`, `model` — parsing one value by kind, and the typed [`Config`];
//! * `validate` — rules across keys; `error` — [`ConfigError`]; `suggest` — "did you mean" for
//!   unknown names; `docs` — the generated reference.
#![forbid(unsafe_code)]

mod docs;
mod error;
mod ini;
mod load;
mod model;
mod schema;
mod source;
mod suggest;
mod validate;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use docs::{render_markdown, role_settings};
pub use error::{ConfigError, Setting, EXIT_IOERR, EXIT_USAGE};
pub use load::CONFIG_ENV;
pub use model::{
    Application, BackendKind, Client, Connect, Entry, Features, HostPort, Log, LogLevel, Manager,
    Mode, PythonScript, Registry, Role, Runner, Secret, Secrets, Server, Store, Terminal,
};
pub use schema::{
    env_name, keys, role_keys, DefaultValue, KeyDef, Kind, PROFILE_SETTINGS, ROLE_KEYS, SECTIONS,
};
pub use source::Source;
pub use value::{format_duration, format_size};

/// How secret values are shown in listings, `Debug` and JSON.
pub const REDACTED: &str = "<redacted>";

/// Where the system-wide config file lives unless [`LoadOptions::etc_dir`] says otherwise.
pub const ETC_DIR: &str = "/etc/gateway";

/// Inputs of [`load`]. Tests build it by hand so they never read the real environment, home
/// or `/etc`.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// `--config PATH`; must exist.
    pub explicit_path: Option<PathBuf>,
    /// Environment variables; only `GATEWAY_*` ones are looked at.
    pub env: BTreeMap<String, String>,
    /// Home directory: `~` expansion and `~/.gateway.d/gateway.conf`.
    pub home: Option<PathBuf>,
    /// Directory of the system-wide `gateway.conf`; `None` = [`ETC_DIR`].
    pub etc_dir: Option<PathBuf>,
}

impl LoadOptions {
    /// The real process: its `GATEWAY_*` variables (values not UTF-8 are converted lossily and
    /// will then fail to parse with a clear message) and `$HOME`.
    pub fn from_process(explicit_path: Option<PathBuf>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                k.starts_with("GATEWAY_")
                    .then(|| (k, v.to_string_lossy().into_owned()))
            })
            .collect();
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        LoadOptions {
            explicit_path,
            env,
            home,
            etc_dir: None,
        }
    }
}

// Environment values may hold secrets, so Debug shows only the variable names.
impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("explicit_path", &self.explicit_path)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("home", &self.home)
            .field("etc_dir", &self.etc_dir)
            .finish()
    }
}

/// Loads the configuration: finds the file, applies the environment, parses and checks every
/// key and the rules that hold for every role. The error is the first problem found.
pub fn load(opts: &LoadOptions) -> Result<Config, ConfigError> {
    load::load(opts)
}

/// Reads the configuration as [`load`] does but keeps going past problems, for showing an
/// invalid configuration: every key with what was read for it, and every problem.
pub fn inspect(opts: &LoadOptions) -> Inspection {
    load::inspect(opts)
}

/// What [`inspect`] read.
#[derive(Debug)]
pub struct Inspection {
    /// The config file that was chosen (also when it could not be read).
    pub file: Option<PathBuf>,
    /// Every key as in [`Config::entries`]; a value that does not parse is shown as given
    /// (secrets redacted).
    pub entries: Vec<Entry>,
    /// The problems in the order they were found; the first is [`load`]'s error.
    pub problems: Vec<Problem>,
}

/// One problem of a configuration, with the keys it concerns.
#[derive(Debug)]
pub struct Problem {
    /// The keys the problem is about, as `section.key` or the name a value was set under
    /// (`commander.host`); empty for a problem of the file itself or of a name that matches no
    /// key (an unknown section, key or variable).
    pub keys: Vec<String>,
    /// What is wrong.
    pub error: ConfigError,
}

impl Inspection {
    /// The problems about `entry`'s key.
    pub fn problems_of<'a>(&'a self, entry: &'a Entry) -> impl Iterator<Item = &'a Problem> + 'a {
        let id = format!("{}.{}", entry.section, entry.key);
        self.problems.iter().filter(move |p| {
            p.keys
                .iter()
                .any(|k| *k == id || entry.set_as.as_deref() == Some(k.as_str()))
        })
    }

    /// The problems that concern no key listed in `entries`.
    pub fn general_problems(&self) -> impl Iterator<Item = &Problem> + '_ {
        self.problems.iter().filter(|p| {
            !self
                .entries
                .iter()
                .any(|e| self.problems_of(e).any(|q| std::ptr::eq(q, *p)))
        })
    }
}

/// A key accepted only for compatibility, set by this configuration; see
/// [`Config::compat_settings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatSetting {
    /// `section.key`, or the name it was set under.
    pub name: String,
    /// Its environment variable.
    pub env: String,
    /// Where it was set.
    pub source: Source,
    /// What autogate does instead.
    pub instead: &'static str,
}

impl fmt::Display for CompatSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is set ({}) but accepted only for compatibility with the family's files and has no effect: {}",
            self.name, self.source, self.instead
        )
    }
}

/// The effective configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// `[application]`.
    pub application: Application,
    /// `[connect]` (or `[commander]`).
    pub connect: Connect,
    /// `[server]`.
    pub server: Server,
    /// `[runner]`.
    pub runner: Runner,
    /// `[store]`.
    pub store: Store,
    /// `[log]`.
    pub log: Log,
    /// `[secrets]`.
    pub secrets: Secrets,
    /// `[features]`.
    pub features: Features,
    /// `[python-script]`.
    pub python_script: PythonScript,
    /// `[terminal]`.
    pub terminal: Terminal,
    /// `[client]`.
    pub client: Client,
    /// `[client:<name>]` profiles (names lower-cased), each already merged with `[client]`.
    pub profiles: BTreeMap<String, Client>,
    /// `[manager]`.
    pub manager: Manager,
    /// `[registry]`.
    pub registry: Registry,
    #[serde(skip)]
    entries: Vec<Entry>,
    #[serde(skip)]
    file: Option<PathBuf>,
}

impl Config {
    /// The config file that was read, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Every key (schema order, then profiles) with its effective value and source. Secret
    /// values that are set show as `<redacted>`.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.clone()
    }

    /// The client settings of `profile` (case-insensitive), or `[client]` for `None`.
    pub fn client_profile(&self, profile: Option<&str>) -> Option<&Client> {
        match profile {
            None => Some(&self.client),
            Some(p) => self.profiles.get(&p.to_ascii_lowercase()),
        }
    }

    /// The keys this configuration sets (in the file or the environment) that autogate
    /// accepts only for compatibility, in schema order, once each: a node logs one warning per
    /// item at start-up, so that nobody relies on a setting that does nothing.
    pub fn compat_settings(&self) -> Vec<CompatSetting> {
        self.entries
            .iter()
            .filter(|e| e.source != Source::Default)
            .filter_map(|e| {
                let def = schema::find(&e.section, &e.key)?;
                // `hostkeys_enabled = false` is reported by the automation side itself, with
                // what to do about refused checkouts: once is enough.
                if !def.compat || (def.id() == "features.hostkeys_enabled" && e.value == "false") {
                    return None;
                }
                Some(CompatSetting {
                    name: e.name(),
                    env: e.env.clone(),
                    source: e.source.clone(),
                    instead: def.instead,
                })
            })
            .collect()
    }

    /// Checks the rules of the role about to start (see the reference for the list).
    pub fn validate_for(&self, role: Role) -> Result<(), ConfigError> {
        validate::validate_for(self, role)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load_env(vars: &[(&str, &str)]) -> Config {
        let dir = tempfile::tempdir().unwrap();
        load(&LoadOptions {
            env: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: Some(dir.path().to_owned()),
            etc_dir: Some(dir.path().join("etc")),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn compat_settings_are_the_set_ones_only() {
        assert_eq!(load_env(&[]).compat_settings(), Vec::new());
        let c = load_env(&[
            ("GATEWAY_RUNNER_PORT", "50052"),
            ("GATEWAY_FEATURES_MCP_ENABLED", "true"),
            ("GATEWAY_LOG_TIMESTAMP_TIMEZONE", "Europe/Paris"),
            ("GATEWAY_FEATURES_HOSTKEYS_ENABLED", "false"),
        ]);
        let set = c.compat_settings();
        let names: Vec<_> = set.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["runner.port", "features.mcp_enabled"]);
        // `true` is named here; `false` by the automation side, which says what to do.
        let c = load_env(&[("GATEWAY_FEATURES_HOSTKEYS_ENABLED", "true")]);
        let names: Vec<_> = c.compat_settings().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["features.hostkeys_enabled"]);
        let text = set[0].to_string();
        assert!(
            text.contains("runner.port")
                && text.contains("GATEWAY_RUNNER_PORT")
                && text.contains("listen on no port"),
            "{text}"
        );
    }

    #[test]
    fn every_compat_key_says_what_happens_instead() {
        for def in keys() {
            assert_eq!(def.compat, !def.instead.is_empty(), "{}", def.id());
        }
    }
}
