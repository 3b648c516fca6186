//! Loading: find the one file, read file and environment, resolve aliases, parse, validate.
//!
//! The pipeline is deliberately linear so that the order of precedence is visible in one place:
//! raw strings are gathered per key from the file and then overridden by the environment; the
//! `[commander]` names are folded onto `[connect]` (refusing a setting given under both names);
//! every key of the schema is then parsed once, in schema order, from the winning raw string or
//! its default; derived defaults are filled; finally cross-field rules run. Nothing here binds,
//! creates or writes anything.
//!
//! Every step records what is wrong in [`Problems`] and goes on with what it could read (a bad
//! line skipped, a bad value replaced by its default), so that `version --show-config` can show
//! everything that was read with each problem beside its key. [`load`] refuses the configuration
//! at the first problem; [`inspect`] returns them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;
use crate::ini::{self, Item};
use crate::model::{
    host_is_unspecified, Application, BackendKind, Client, Connect, Entry, Features, HostPort, Log,
    LogLevel, Manager, Mode, PythonScript, Registry, Runner, Secret, Secrets, Server, Store,
    Terminal,
};
use crate::schema::{self, env_name, DefaultValue, KeyDef, Kind, KEYS, PROFILE_SETTINGS, SECTIONS};
use crate::source::Source;
use crate::suggest;
use crate::value::{parse_value, Value};
use crate::{Config, Inspection, LoadOptions, Problem, REDACTED};

/// Name of the variable that points at the config file; it is not a key.
pub const CONFIG_ENV: &str = "GATEWAY_CONFIG";
/// Used for `application.working_dir` when no home directory is known (a service started
/// without `HOME`): the family's server data directory.
const NO_HOME_WORKING_DIR: &str = "/var/lib/gateway";

/// A value as given, before parsing.
#[derive(Debug, Clone)]
struct Raw {
    value: String,
    source: Source,
    /// The name it was given under (`server.client_certif_auth`, `commander.host`,
    /// `client:prod.port`), for messages.
    name: String,
}

type Profiles = BTreeMap<String, BTreeMap<&'static str, Raw>>;

/// The configuration, or its first problem.
pub(crate) fn load(opts: &LoadOptions) -> Result<Config, ConfigError> {
    let (config, problems) = read_all(opts);
    match problems.0.into_iter().next() {
        Some(problem) => Err(problem.error),
        None => Ok(config),
    }
}

/// Everything that was read, and every problem.
pub(crate) fn inspect(opts: &LoadOptions) -> Inspection {
    let (config, problems) = read_all(opts);
    Inspection {
        file: config.file,
        entries: config.entries,
        problems: problems.0,
    }
}

/// Problems in the order they were found.
#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    /// Records `error` about the keys `keys` (`section.key`; none for a problem of the file or
    /// of a name that is no key). The same message found twice (a `[commander]` value is read
    /// for its `[connect]` key too) is one problem about both keys.
    fn add(&mut self, keys: impl IntoIterator<Item = String>, error: ConfigError) {
        let keys: Vec<String> = keys.into_iter().collect();
        let text = error.to_string();
        if let Some(same) = self.0.iter_mut().find(|p| p.error.to_string() == text) {
            for key in keys {
                if !same.keys.contains(&key) {
                    same.keys.push(key);
                }
            }
            return;
        }
        self.0.push(Problem { keys, error });
    }
}

/// The whole pipeline. The configuration is built from what could be read, with defaults in
/// place of what could not; it is only fit for use when there are no problems.
fn read_all(opts: &LoadOptions) -> (Config, Problems) {
    let home = opts.home.as_deref();
    let mut problems = Problems::default();
    let file = find_file(opts).unwrap_or_else(|e| {
        problems.add([], e);
        None
    });

    let (mut keys, mut profiles) = match &file {
        Some(path) => read_file(path, &mut problems),
        None => (BTreeMap::new(), Profiles::new()),
    };
    let (env_keys, env_profiles) = read_env(&opts.env, &profiles, &mut problems);
    keys.extend(env_keys);
    for (name, settings) in env_profiles {
        profiles.entry(name).or_default().extend(settings);
    }
    fold_commander(&mut keys, &mut problems);

    let mut values = Values::default();
    let mut entries = Vec::with_capacity(KEYS.len());
    for def in KEYS {
        let raw = keys.get(&def.id());
        let (value, entry) = resolve_or_default(def, raw, home, &def.id(), &mut problems);
        if let Some(value) = value {
            values.map.insert(def.id(), value);
        }
        entries.push(entry);
    }
    let mut entries = Entries(entries);

    let mut config = build(&values, &mut entries);
    let (clients, profile_entries) =
        build_profiles(&values, &entries, profiles, home, &mut problems);
    config.profiles = clients;
    config.file = file;
    // Profile entries follow the schema keys, profile by profile.
    config.entries = entries.0;
    config.entries.extend(profile_entries);
    // The rules across keys would judge defaults standing in for values that did not parse, so
    // they only run on a configuration read without a problem.
    if problems.0.is_empty() {
        if let Err(e) = crate::validate::check_cross_fields(&config) {
            problems.add(e.keys(), e);
        }
    }
    (config, problems)
}

/// [`resolve_key`]; when the value given does not parse, the problem is recorded under `id`,
/// the entry shows the value as given (a secret stays redacted) and the key's default stands in
/// for it.
fn resolve_or_default(
    def: &KeyDef,
    raw: Option<&Raw>,
    home: Option<&Path>,
    id: &str,
    problems: &mut Problems,
) -> (Option<Value>, Entry) {
    match resolve_key(def, raw, home) {
        Ok(resolved) => resolved,
        Err(e) => {
            problems.add([id.to_string()], e);
            // Every default parses (a test checks it), so only a given value can fail.
            let value = resolve_key(def, None, home)
                .ok()
                .and_then(|(value, _)| value);
            (value, unparsed(def, raw))
        }
    }
}

/// The entry of a key whose value is shown as given, not parsed.
fn unparsed(def: &KeyDef, raw: Option<&Raw>) -> Entry {
    let mut entry = Entry {
        section: def.section.to_string(),
        key: def.key.to_string(),
        env: def.env_name(),
        value: String::new(),
        source: Source::Default,
        set_as: None,
        secret: def.secret,
    };
    if let Some(raw) = raw {
        entry.value = if def.secret {
            REDACTED.to_string()
        } else {
            shown_text(def, &raw.value)
        };
        entry.source = raw.source.clone();
        if raw.name != def.id() {
            entry.set_as = Some(raw.name.clone());
        }
    }
    entry
}

/// `--config`, then `$GATEWAY_CONFIG` (both must exist), then the home and /etc files if they
/// exist. The first found is the only one read: files are never merged.
fn find_file(opts: &LoadOptions) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = &opts.explicit_path {
        return if path.exists() {
            Ok(Some(path.clone()))
        } else {
            Err(ConfigError::ExplicitFileMissing { path: path.clone() })
        };
    }
    if let Some(raw) = opts.env.get(CONFIG_ENV).filter(|v| !v.trim().is_empty()) {
        let path = crate::value::expand_home(raw.trim(), opts.home.as_deref())
            .unwrap_or_else(|_| PathBuf::from(raw.trim()));
        return if path.exists() {
            Ok(Some(path))
        } else {
            Err(ConfigError::EnvFileMissing {
                var: CONFIG_ENV.to_string(),
                path,
            })
        };
    }
    let home_file = opts
        .home
        .as_ref()
        .map(|h| h.join(".gateway.d").join("gateway.conf"));
    let etc_file = opts
        .etc_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::ETC_DIR))
        .join("gateway.conf");
    Ok(home_file
        .into_iter()
        .chain([etc_file])
        .find(|p| p.is_file()))
}

/// Reads the file's keys and profiles. A line that cannot be used is recorded and skipped; the
/// keys of a section that cannot be used are skipped with it.
fn read_file(path: &Path, problems: &mut Problems) -> (BTreeMap<String, Raw>, Profiles) {
    let mut keys: BTreeMap<String, Raw> = BTreeMap::new();
    let mut profiles = Profiles::new();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(source) => {
            let path = path.to_path_buf();
            problems.add([], ConfigError::Io { path, source });
            return (keys, profiles);
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
            let path = path.to_path_buf();
            problems.add([], ConfigError::NotUtf8 { path, line });
            return (keys, profiles);
        }
    };

    enum Current {
        Section(&'static str),
        Profile(String),
        /// A section that is not known or not readable: its keys are skipped.
        Skipped,
    }
    let mut current = None;
    for item in ini::parse(&text, path) {
        match item {
            Item::Broken { error, key, header } => {
                // A malformed value still names its key, so the problem is shown beside it.
                let id = match (&current, key) {
                    (Some(Current::Section(section)), Some(key)) => {
                        find_in_section(section, &key.to_ascii_lowercase()).map(KeyDef::id)
                    }
                    (Some(Current::Profile(profile)), Some(key)) => {
                        let lower = key.to_ascii_lowercase();
                        PROFILE_SETTINGS
                            .contains(&lower.as_str())
                            .then(|| format!("client:{profile}.{lower}"))
                    }
                    _ => None,
                };
                problems.add(id, error);
                if header {
                    current = Some(Current::Skipped);
                }
            }
            Item::Section { name, line } => {
                let lower = name.to_ascii_lowercase();
                let source = Source::File {
                    path: path.to_path_buf(),
                    line,
                };
                current = Some(if let Some(profile) = lower.strip_prefix("client:") {
                    let profile = profile.trim().to_string();
                    match check_profile_name(&profile, &source) {
                        Ok(()) => {
                            profiles.entry(profile.clone()).or_default();
                            Current::Profile(profile)
                        }
                        Err(e) => {
                            problems.add([], e);
                            Current::Skipped
                        }
                    }
                } else if let Some((s, _)) = SECTIONS.iter().find(|(s, _)| *s == lower) {
                    Current::Section(s)
                } else {
                    let error = ConfigError::UnknownSection {
                        path: path.to_path_buf(),
                        line,
                        section: name,
                        expected: known_sections(),
                    };
                    problems.add([], error);
                    Current::Skipped
                });
            }
            Item::Pair { key, value, line } => {
                let lower = key.to_ascii_lowercase();
                let source = Source::File {
                    path: path.to_path_buf(),
                    line,
                };
                let unknown = |section: String, known: Vec<&str>| ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    line,
                    section,
                    key: key.clone(),
                    suggestions: suggest::closest(&key, "", known)
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                };
                match &current {
                    // `ini::parse` refuses pairs before the first header.
                    None | Some(Current::Skipped) => {}
                    Some(Current::Section(section)) => {
                        let Some(def) = find_in_section(section, &lower) else {
                            let known =
                                KEYS.iter().filter(|d| d.section == *section).flat_map(|d| {
                                    std::iter::once(d.key).chain(d.file_aliases.iter().copied())
                                });
                            problems.add([], unknown(section.to_string(), known.collect()));
                            continue;
                        };
                        let raw = Raw {
                            value,
                            source,
                            name: format!("{section}.{lower}"),
                        };
                        insert_once(&mut keys, def.id(), raw, problems);
                    }
                    Some(Current::Profile(profile)) => {
                        let Some(setting) = PROFILE_SETTINGS.iter().find(|s| **s == lower) else {
                            let known = PROFILE_SETTINGS.to_vec();
                            problems.add([], unknown(format!("client:{profile}"), known));
                            continue;
                        };
                        let raw = Raw {
                            value,
                            source,
                            name: format!("client:{profile}.{lower}"),
                        };
                        let map = profiles.entry(profile.clone()).or_default();
                        match map.get(setting) {
                            Some(first) => problems.add([raw.name.clone()], duplicate(first, &raw)),
                            None => {
                                map.insert(setting, raw);
                            }
                        }
                    }
                }
            }
        }
    }
    // An empty value means "not set" (the default applies), except for host lists where the
    // family crashes on an empty list and we report it instead.
    keys.retain(|id, raw| !raw.value.is_empty() || is_host_list(id));
    for map in profiles.values_mut() {
        map.retain(|_, raw| !raw.value.is_empty());
    }
    (keys, profiles)
}

/// The key `key` (lower case, or one of its file spellings) of `section`.
fn find_in_section(section: &str, key: &str) -> Option<&'static KeyDef> {
    KEYS.iter()
        .find(|d| d.section == section && (d.key == key || d.file_aliases.contains(&key)))
}

fn known_sections() -> String {
    let mut names: Vec<String> = SECTIONS.iter().map(|(s, _)| format!("[{s}]")).collect();
    names.push("[client:<profile>]".to_string());
    names.join(" ")
}

fn is_host_list(id: &str) -> bool {
    KEYS.iter()
        .any(|d| d.kind == Kind::HostPortList && d.id() == id)
}

fn duplicate(first: &Raw, second: &Raw) -> ConfigError {
    ConfigError::Duplicate {
        first_key: first.name.clone(),
        first_source: first.source.clone(),
        second_key: second.name.clone(),
        second_source: second.source.clone(),
    }
}

/// Keeps the first value of a key given twice, and records the second as a problem.
fn insert_once(keys: &mut BTreeMap<String, Raw>, id: String, raw: Raw, problems: &mut Problems) {
    match keys.get(&id) {
        Some(first) => problems.add([id], duplicate(first, &raw)),
        None => {
            keys.insert(id, raw);
        }
    }
}

/// Profile names end up in environment variable names, so they are limited to what those can
/// carry (`-` is read as `_` there).
fn check_profile_name(name: &str, source: &Source) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidProfileName {
            name: name.to_string(),
            origin: source.clone(),
        })
    }
}

/// Reads the `GATEWAY_*` variables. A variable first matches a key; `GATEWAY_CLIENT_<P>_<S>`
/// then matches a profile setting; anything else is refused so that a typo cannot silently do
/// nothing.
#[allow(clippy::type_complexity)]
fn read_env(
    env: &BTreeMap<String, String>,
    file_profiles: &Profiles,
    problems: &mut Problems,
) -> (BTreeMap<String, Raw>, Profiles) {
    let by_env: BTreeMap<String, &KeyDef> = KEYS.iter().map(|d| (d.env_name(), d)).collect();
    let mut keys = BTreeMap::new();
    let mut profiles = Profiles::new();
    for (var, value) in env {
        if !var.starts_with("GATEWAY_") || var == CONFIG_ENV {
            continue;
        }
        let value = value.trim().to_string();
        let source = Source::Env { var: var.clone() };
        if let Some(def) = by_env.get(var) {
            // An empty variable is treated as absent (compose files often expand unset
            // variables to ""), except for host lists, where it is a mistake worth reporting.
            if value.is_empty() && def.kind != Kind::HostPortList {
                continue;
            }
            let raw = Raw {
                value,
                source,
                name: def.id(),
            };
            keys.insert(def.id(), raw);
            continue;
        }
        let profile_setting = var.strip_prefix("GATEWAY_CLIENT_").and_then(|rest| {
            PROFILE_SETTINGS.iter().find_map(|setting| {
                let suffix = format!("_{}", setting.to_ascii_uppercase());
                rest.strip_suffix(suffix.as_str())
                    .filter(|p| !p.is_empty())
                    .map(|p| (p.to_ascii_lowercase(), *setting))
            })
        });
        let Some((profile, setting)) = profile_setting else {
            let known = KEYS
                .iter()
                .map(|d| d.env_name())
                .chain([CONFIG_ENV.to_string()])
                .collect::<Vec<_>>();
            let suggestions = suggest::closest(var, "GATEWAY_", known.iter().map(String::as_str))
                .into_iter()
                .map(str::to_string)
                .collect();
            let error = ConfigError::UnknownEnv {
                var: var.clone(),
                suggestions,
            };
            problems.add([], error);
            continue;
        };
        if let Err(e) = check_profile_name(&profile, &source) {
            problems.add([], e);
            continue;
        }
        // `[client:my-prod]` is reached by GATEWAY_CLIENT_MY_PROD_*.
        let profile = file_profiles
            .keys()
            .find(|p| p.replace('-', "_") == profile)
            .cloned()
            .unwrap_or(profile);
        if value.is_empty() {
            continue;
        }
        let raw = Raw {
            value,
            source,
            name: format!("client:{profile}.{setting}"),
        };
        profiles.entry(profile).or_default().insert(setting, raw);
    }
    (keys, profiles)
}

/// Folds `[commander]` values onto their `[connect]` keys. Giving one setting under both names
/// is refused wherever each comes from (file or environment): which one should win is a guess we
/// do not make (the `[connect]` value stays in place, the conflict is recorded).
/// `commander.host`/`port` become `connect.hosts` after parsing.
fn fold_commander(keys: &mut BTreeMap<String, Raw>, problems: &mut Problems) {
    for def in KEYS.iter().filter(|d| d.section == "commander") {
        let (Some(target), Some(raw)) = (def.alias_of, keys.get(&def.id())) else {
            continue;
        };
        let target_id = format!("connect.{target}");
        if let Some(other) = keys.get(&target_id) {
            let error = ConfigError::AliasConflict {
                first_key: raw.name.clone(),
                first_source: raw.source.clone(),
                second_key: other.name.clone(),
                second_source: other.source.clone(),
            };
            problems.add([def.id(), target_id], error);
            continue;
        }
        if target != "hosts" {
            let raw = raw.clone();
            keys.insert(target_id, raw);
        }
    }
}

/// Parses one key from its raw value or default and describes it for `entries()`.
fn resolve_key(
    def: &KeyDef,
    raw: Option<&Raw>,
    home: Option<&Path>,
) -> Result<(Option<Value>, Entry), ConfigError> {
    let mut entry = Entry {
        section: def.section.to_string(),
        key: def.key.to_string(),
        env: def.env_name(),
        value: String::new(),
        source: Source::Default,
        set_as: None,
        secret: def.secret,
    };
    let (text, name) = match (raw, def.default) {
        (Some(raw), _) => {
            entry.source = raw.source.clone();
            (raw.value.as_str(), raw.name.clone())
        }
        (None, DefaultValue::Value(text)) => {
            if def.section == "application" && def.key == "working_dir" && home.is_none() {
                (NO_HOME_WORKING_DIR, def.id())
            } else {
                (text, def.id())
            }
        }
        (None, _) => return Ok((None, entry)),
    };
    let value =
        parse_value(&def.kind, text, home).map_err(|expected| ConfigError::InvalidValue {
            key: name.clone(),
            value: (!def.secret).then(|| shown_text(def, text)),
            origin: entry.source.clone(),
            expected,
        })?;
    entry.value = display(def, &value, text);
    if name != def.id() {
        entry.set_as = Some(name);
    }
    Ok((Some(value), entry))
}

/// A value as given, as messages show it: a password inside a URL is hidden.
fn shown_text(def: &KeyDef, text: &str) -> String {
    match def.kind {
        Kind::Url => crate::value::url_without_password(text),
        _ => text.to_string(),
    }
}

fn display(def: &KeyDef, value: &Value, text: &str) -> String {
    if def.secret {
        return REDACTED.to_string();
    }
    if let (Kind::Url, Value::Text(t)) = (&def.kind, value) {
        return crate::value::url_without_password(t);
    }
    // Normalised where the spelling carries no information (`yes` is `true`, extra spaces in a
    // host list); durations and sizes keep the user's spelling (`1h30m` reads better than
    // `5400s`).
    match value {
        Value::Path(p) => p.display().to_string(),
        Value::Text(t) => t.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Hosts(h) => h
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        Value::HostPort(hp) => hp.to_string(),
        Value::Duration(_) | Value::Size(_) | Value::Labels(_) => text.to_string(),
    }
}

/// Parsed values by `section.key`.
#[derive(Debug, Default, Clone)]
struct Values {
    map: BTreeMap<String, Value>,
}

impl Values {
    fn get(&self, id: &str) -> Option<&Value> {
        debug_assert!(
            KEYS.iter().any(|d| d.id() == id),
            "no key {id} in the schema"
        );
        self.map.get(id)
    }
    fn bool(&self, id: &str) -> bool {
        matches!(self.get(id), Some(Value::Bool(true)))
    }
    fn int(&self, id: &str) -> i64 {
        match self.get(id) {
            Some(Value::Int(n)) => *n,
            _ => 0,
        }
    }
    fn u32(&self, id: &str) -> u32 {
        u32::try_from(self.int(id)).unwrap_or(0)
    }
    fn port(&self, id: &str) -> u16 {
        u16::try_from(self.int(id)).unwrap_or(0)
    }
    fn opt_port(&self, id: &str) -> Option<u16> {
        match self.get(id) {
            Some(Value::Int(n)) => u16::try_from(*n).ok(),
            _ => None,
        }
    }
    fn duration(&self, id: &str) -> Duration {
        match self.get(id) {
            Some(Value::Duration(d)) => *d,
            _ => Duration::ZERO,
        }
    }
    fn size(&self, id: &str) -> Option<u64> {
        match self.get(id) {
            Some(Value::Size(n)) => Some(*n),
            _ => None,
        }
    }
    fn text(&self, id: &str) -> Option<String> {
        match self.get(id) {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        }
    }
    fn string(&self, id: &str) -> String {
        self.text(id).unwrap_or_default()
    }
    fn path(&self, id: &str) -> Option<PathBuf> {
        match self.get(id) {
            Some(Value::Path(p)) => Some(p.clone()),
            _ => None,
        }
    }
    fn hosts(&self, id: &str) -> Vec<HostPort> {
        match self.get(id) {
            Some(Value::Hosts(h)) => h.clone(),
            _ => Vec::new(),
        }
    }
    fn host_port(&self, id: &str) -> Option<HostPort> {
        match self.get(id) {
            Some(Value::HostPort(h)) => Some(h.clone()),
            _ => None,
        }
    }
    fn labels(&self, id: &str) -> BTreeMap<String, String> {
        match self.get(id) {
            Some(Value::Labels(l)) => l.clone(),
            _ => BTreeMap::new(),
        }
    }
}

/// The entries in schema order, with in-place updates for derived values.
struct Entries(Vec<Entry>);

impl Entries {
    fn get(&self, section: &str, key: &str) -> Option<&Entry> {
        self.0.iter().find(|e| e.section == section && e.key == key)
    }
    fn get_mut(&mut self, section: &str, key: &str) -> Option<&mut Entry> {
        self.0
            .iter_mut()
            .find(|e| e.section == section && e.key == key)
    }
    /// Shows a value derived at load time for a key that was not given.
    fn derived(&mut self, section: &str, key: &str, value: String) {
        if let Some(e) = self.get_mut(section, key) {
            e.value = value;
            e.source = Source::Default;
        }
    }
}

fn build(v: &Values, entries: &mut Entries) -> Config {
    let working_dir = v
        .path("application.working_dir")
        .unwrap_or_else(|| PathBuf::from(NO_HOME_WORKING_DIR));

    // `[commander] host` + `port` is the older spelling of a one-entry `connect.hosts`; a port
    // without a host has nothing to apply to.
    let mut hosts = v.hosts("connect.hosts");
    if let Some(host) = v.text("commander.host") {
        let hp = HostPort {
            host,
            port: v.port("commander.port"),
        };
        let origin = entries.get("commander", "host").map(|e| e.source.clone());
        if let Some(e) = entries.get_mut("connect", "hosts") {
            e.value = hp.to_string();
            e.source = origin.unwrap_or(Source::Default);
            e.set_as = Some("commander.host".to_string());
        }
        hosts = vec![hp];
    }

    let listen_address = v.string("server.listen_address");
    let server_port = v.port("server.port");
    let advertise_address = match v.host_port("connect.advertise_address") {
        Some(hp) => Some(hp),
        None if host_is_unspecified(&listen_address) => None,
        None => {
            let hp = HostPort {
                host: listen_address.clone(),
                port: server_port,
            };
            entries.derived("connect", "advertise_address", hp.to_string());
            Some(hp)
        }
    };

    // The host name that stands in for an unspecified manager listen address is only known to
    // the process that starts, so the derived value is shown only when it is the listen address.
    let manager_advertise = v.host_port("manager.advertise_address");
    let manager_listen = v.string("manager.listen_address");
    if manager_advertise.is_none() && !host_is_unspecified(&manager_listen) {
        let hp = HostPort {
            host: manager_listen,
            port: v.port("manager.port"),
        };
        entries.derived("manager", "advertise_address", hp.to_string());
    }

    let server_dir = v.path("log.server_dir").unwrap_or_else(|| {
        let dir = working_dir.join("logs");
        entries.derived("log", "server_dir", dir.display().to_string());
        dir
    });
    let data_dir = v.path("manager.data_dir").unwrap_or_else(|| {
        let dir = working_dir.join("manager");
        entries.derived("manager", "data_dir", dir.display().to_string());
        dir
    });
    let capacity = match v.u32("runner.capacity") {
        0 => {
            let cpus = std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1);
            if v.get("runner.capacity").is_none() {
                entries.derived("runner", "capacity", cpus.to_string());
            }
            cpus
        }
        n => n,
    };

    Config {
        application: Application {
            mode: Mode::from_name(&v.string("application.mode")).unwrap_or_default(),
            cluster_id: v.string("application.cluster_id"),
            working_dir,
            ca_certificate_file: v.path("application.ca_certificate_file"),
            venv_retention_period: v.duration("application.venv_retention_period"),
            venv_sweep_interval: v.duration("application.venv_sweep_interval"),
            run_output_limit: v.size("application.run_output_limit").unwrap_or(16 << 20),
            auto_accept_eula: v.bool("application.auto_accept_eula"),
        },
        connect: Connect {
            enabled: v.bool("connect.enabled"),
            hosts,
            certificate_file: v.path("connect.certificate_file"),
            private_key_file: v.path("connect.private_key_file"),
            insecure_tls: v.bool("connect.insecure_tls"),
            proxy_url: v.text("connect.proxy_url"),
            proxy_username: v.text("connect.proxy_username"),
            proxy_password: v.text("connect.proxy_password").map(Secret::from),
            ha_enabled: v.bool("connect.server_ha_enabled"),
            is_primary: v.bool("connect.server_ha_is_primary"),
            lease_ttl: v.duration("connect.server_ha_lease_ttl"),
            preempt_delay: v.duration("connect.server_ha_preempt_delay"),
            connect_grace: v.duration("connect.server_ha_connect_grace"),
            drain_timeout: v.duration("connect.server_ha_drain_timeout"),
            run_retention: v.duration("connect.run_retention"),
            max_transitions: v.u32("connect.server_ha_max_transitions"),
            probe_window: v.duration("connect.server_ha_probe_window"),
            reconnect_max_backoff: v.duration("connect.reconnect_max_backoff"),
            link_ping_interval: v.duration("connect.link_ping_interval"),
            link_dead_after: v.duration("connect.link_dead_after"),
            advertise_address,
        },
        server: Server {
            listen_address,
            port: server_port,
            use_tls: v.bool("server.use_tls"),
            certificate_file: v.path("server.certificate_file"),
            private_key_file: v.path("server.private_key_file"),
            distributed_execution: v.bool("server.distributed_execution"),
            job_queue_timeout: v.duration("server.job_queue_timeout"),
            job_retention: v.duration("server.job_retention"),
            api_key_expiration: Duration::from_secs(
                u64::try_from(v.int("server.api_key_expiration")).unwrap_or(0) * 60,
            ),
            admin_password_file: v.path("server.admin_password_file"),
            client_cert_auth: v.bool("server.client_cert_auth"),
            grpc_max_recv_msg_size: v.size("server.grpc_max_recv_msg_size"),
            runtime_data_dir: v.path("server.runtime_data_dir"),
            service_user: v
                .text("server.service_user")
                .filter(|u| !u.trim().is_empty()),
            shutdown_grace: v.duration("server.shutdown_grace"),
            allow_plaintext: v.bool("server.allow_plaintext"),
            header_read_timeout: v.duration("server.header_read_timeout"),
            body_read_timeout: v.duration("server.body_read_timeout"),
            max_connections: usize::try_from(v.int("server.max_connections")).unwrap_or(1),
            max_connections_per_address: usize::try_from(
                v.int("server.max_connections_per_address"),
            )
            .unwrap_or(1),
        },
        runner: Runner {
            announcement_address: v.text("runner.announcement_address"),
            listen_address: v.string("runner.listen_address"),
            port: v.port("runner.port"),
            use_tls: v.bool("runner.use_tls"),
            certificate_file: v.path("runner.certificate_file"),
            private_key_file: v.path("runner.private_key_file"),
            client_cert_auth: v.bool("runner.client_cert_auth"),
            runtime_data_dir: v.path("runner.runtime_data_dir"),
            service_user: v
                .text("runner.service_user")
                .filter(|u| !u.trim().is_empty()),
            capacity,
            labels: v.labels("runner.labels"),
            drain_grace: v.duration("runner.drain_grace"),
            lease_ttl: v.duration("runner.lease_ttl"),
            metrics_port: v.opt_port("runner.metrics_port"),
        },
        store: Store {
            backend: BackendKind::from_name(&v.string("store.backend")).unwrap_or_default(),
            etcd_hosts: v.hosts("store.etcd_hosts"),
            etcd_use_tls: v.bool("store.etcd_use_tls"),
            etcd_client_cert_auth: v.bool("store.etcd_client_cert_auth"),
            etcd_ca_certificate_file: v.path("store.etcd_ca_certificate_file"),
            etcd_certificate_file: v.path("store.etcd_certificate_file"),
            etcd_private_key_file: v.path("store.etcd_private_key_file"),
            dynamodb_table_name: v.text("store.dynamodb_table_name"),
            etcd_dial_timeout: v.duration("store.etcd_dial_timeout"),
            etcd_request_timeout: v.duration("store.etcd_request_timeout"),
        },
        log: Log {
            level: LogLevel::from_name(&v.string("log.level")).unwrap_or_default(),
            console_json: v.bool("log.console_json"),
            file_enabled: v.bool("log.file_enabled"),
            file_json: v.bool("log.file_json"),
            server_dir,
            timestamp_timezone: v.string("log.timestamp_timezone"),
        },
        secrets: Secrets {
            encrypt_key_file: v.path("secrets.encrypt_key_file"),
        },
        features: Features {
            python_enabled: v.bool("features.python_enabled"),
            ansible_enabled: v.bool("features.ansible_enabled"),
            opentofu_enabled: v.bool("features.opentofu_enabled"),
            hostkeys_enabled: v.bool("features.hostkeys_enabled"),
            mcp_enabled: v.bool("features.mcp_enabled"),
        },
        python_script: PythonScript {
            requirements_file: v.string("python-script.requirements_file"),
        },
        terminal: Terminal {
            no_color: v.bool("terminal.no_color"),
            timestamp_timezone: v.string("terminal.timestamp_timezone"),
        },
        client: build_client(v),
        profiles: BTreeMap::new(),
        manager: Manager {
            listen_address: v.string("manager.listen_address"),
            port: v.port("manager.port"),
            certificate_file: v.path("manager.certificate_file"),
            private_key_file: v.path("manager.private_key_file"),
            data_dir,
            admin_token_file: v.path("manager.admin_token_file"),
            max_frame_size: v.size("manager.max_frame_size").unwrap_or(1 << 20),
            session_history: v.u32("manager.session_history"),
            run_queue_timeout: v.duration("manager.run_queue_timeout"),
            run_queue_size: v.u32("manager.run_queue_size"),
            run_retention: v.duration("manager.run_retention"),
            ping_interval: v.duration("manager.ping_interval"),
            silence_limit: v.duration("manager.silence_limit"),
            session_frame_rate: v.u32("manager.session_frame_rate"),
            session_frame_burst: v.u32("manager.session_frame_burst"),
            max_connections_per_source: v.u32("manager.max_connections_per_source"),
            store_backend: BackendKind::from_name(&v.string("manager.store_backend"))
                .unwrap_or_default(),
            store_etcd_hosts: v.hosts("manager.store_etcd_hosts"),
            store_etcd_prefix: v.string("manager.store_etcd_prefix"),
            store_etcd_use_tls: v.bool("manager.store_etcd_use_tls"),
            store_etcd_client_cert_auth: v.bool("manager.store_etcd_client_cert_auth"),
            store_etcd_ca_certificate_file: v.path("manager.store_etcd_ca_certificate_file"),
            store_etcd_certificate_file: v.path("manager.store_etcd_certificate_file"),
            store_etcd_private_key_file: v.path("manager.store_etcd_private_key_file"),
            store_etcd_dial_timeout: v.duration("manager.store_etcd_dial_timeout"),
            store_etcd_request_timeout: v.duration("manager.store_etcd_request_timeout"),
            replica_lease_ttl: v.duration("manager.replica_lease_ttl"),
            advertise_address: manager_advertise,
        },
        registry: Registry {
            default_overridable: v.bool("registry.default_overridable"),
        },
        entries: Vec::new(),
        file: None,
    }
}

fn build_client(v: &Values) -> Client {
    Client {
        host: v.string("client.host"),
        port: v.port("client.port"),
        use_tls: v.bool("client.use_tls"),
        certificate_file: v.path("client.certificate_file"),
        private_key_file: v.path("client.private_key_file"),
        api_key: v.text("client.api_key").map(Secret::from),
    }
}

/// Each profile starts from the `[client]` values and overrides what it sets itself. Returns
/// the profiles and their `entries()` lines.
fn build_profiles(
    values: &Values,
    entries: &Entries,
    profiles: Profiles,
    home: Option<&Path>,
    problems: &mut Problems,
) -> (BTreeMap<String, Client>, Vec<Entry>) {
    let mut out = BTreeMap::new();
    let mut new_entries = Vec::new();
    for (name, settings) in profiles {
        let mut v = values.clone();
        for setting in PROFILE_SETTINGS {
            let Some(def) = schema::find("client", setting) else {
                continue;
            };
            let section = format!("client:{name}");
            let env = env_name(&section, setting);
            let entry = match settings.get(setting) {
                Some(raw) => match resolve_key(def, Some(raw), home) {
                    Ok((value, mut entry)) => {
                        match value {
                            Some(value) => {
                                v.map.insert(def.id(), value);
                            }
                            None => {
                                v.map.remove(&def.id());
                            }
                        }
                        entry.set_as = None;
                        entry
                    }
                    // The `[client]` value stands in for one that does not parse.
                    Err(e) => {
                        problems.add([format!("{section}.{setting}")], e);
                        Entry {
                            set_as: None,
                            ..unparsed(def, Some(raw))
                        }
                    }
                },
                None => {
                    let inherited = entries.get("client", setting);
                    Entry {
                        section: String::new(),
                        key: String::new(),
                        env: String::new(),
                        value: inherited.map(|e| e.value.clone()).unwrap_or_default(),
                        source: inherited
                            .map(|e| e.source.clone())
                            .unwrap_or(Source::Default),
                        set_as: Some(format!("client.{setting}")),
                        secret: def.secret,
                    }
                }
            };
            new_entries.push(Entry {
                section,
                key: setting.to_string(),
                env,
                ..entry
            });
        }
        out.insert(name, build_client(&v));
    }
    (out, new_entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// No secret key can fail to parse today (they are free text), so the redaction of the
    /// value in `InvalidValue` is checked with a made-up secret key of a strict kind.
    #[test]
    fn invalid_secret_values_are_not_echoed() {
        let mut def = *schema::find("server", "port").unwrap();
        def.secret = true;
        let raw = Raw {
            value: "s3cr3t".to_string(),
            source: Source::Env {
                var: "GATEWAY_SERVER_PORT".to_string(),
            },
            name: "server.port".to_string(),
        };
        let e = resolve_key(&def, Some(&raw), None).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("s3cr3t"), "{msg}");
        assert!(!format!("{e:?}").contains("s3cr3t"));
        assert!(
            msg.starts_with(
                "invalid value for server.port (from environment variable GATEWAY_SERVER_PORT)"
            ),
            "{msg}"
        );
    }

    fn opts(env: &[(&str, &str)], file: Option<&str>, dir: &Path) -> LoadOptions {
        let explicit_path = file.map(|text| {
            let path = dir.join("gateway.conf");
            std::fs::write(&path, text).unwrap();
            path
        });
        LoadOptions {
            explicit_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: Some(dir.to_path_buf()),
            etc_dir: Some(dir.join("etc")),
        }
    }

    #[test]
    fn inspect_goes_past_problems_and_load_stops_at_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts(
            &[("GATEWAY_SERVER_PORT", "abc"), ("GATEWAY_NOPE", "1")],
            Some("[log]\nlevel = debug\n[store]\nbackend = etcdd\n[commander]\nenabled = maybe\n"),
            dir.path(),
        );
        let inspection = crate::inspect(&opts);
        let summary: Vec<(Vec<String>, String)> = inspection
            .problems
            .iter()
            .map(|p| (p.keys.clone(), p.error.to_string()))
            .collect();
        assert_eq!(summary.len(), 4, "{summary:#?}");
        assert!(summary[0].0.is_empty() && summary[0].1.contains("GATEWAY_NOPE"));
        // The `[commander]` value is read for its `[connect]` key too: one problem, both keys.
        assert_eq!(summary[1].0, ["connect.enabled", "commander.enabled"]);
        assert_eq!(summary[2].0, ["server.port"]);
        assert_eq!(summary[3].0, ["store.backend"]);
        let entry = |section: &str, key: &str| {
            inspection
                .entries
                .iter()
                .find(|e| e.section == section && e.key == key)
                .unwrap()
        };
        assert_eq!(entry("server", "port").value, "abc");
        assert_eq!(entry("store", "backend").value, "etcdd");
        assert_eq!(entry("log", "level").value, "DEBUG");
        assert_eq!(inspection.problems_of(entry("server", "port")).count(), 1);
        assert_eq!(inspection.problems_of(entry("log", "level")).count(), 0);
        assert_eq!(inspection.general_problems().count(), 1);

        let first = crate::load(&opts).unwrap_err();
        assert_eq!(first.to_string(), summary[0].1);
    }

    #[test]
    fn rules_across_keys_name_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts(
            &[("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")],
            None,
            dir.path(),
        );
        let inspection = crate::inspect(&opts);
        assert_eq!(inspection.problems.len(), 1);
        assert_eq!(
            inspection.problems[0].keys,
            ["connect.server_ha_enabled", "store.backend"]
        );
    }

    #[test]
    fn every_literal_default_parses() {
        for def in KEYS {
            if let DefaultValue::Value(text) = def.default {
                parse_value(&def.kind, text, Some(Path::new("/h")))
                    .unwrap_or_else(|e| panic!("default of {} does not parse: {e}", def.id()));
            }
        }
    }
}
