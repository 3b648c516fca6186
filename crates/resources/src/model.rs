//! The resource records and their validation.
//!
//! Every resource carries a [`Meta`] (name, description, tags, created/updated times in RFC 3339
//! UTC) and its own fields, serialized with the family's kebab-case keys — the same shape is used
//! for the JSON stored in the cluster store and for the import/export YAML. Validation
//! ([`Resource::validate`]) checks one record on its own (names, required per-type fields,
//! absolute paths, JSON Schema); whether the resources it names exist is the store's business
//! ([`Resource::references`]).
//!
//! Unknown keys are refused (a typo such as `working-dir` must not silently drop a setting), in
//! import files and stored documents alike: every node of a cluster must run the same version of
//! this model.
//!
//! A [`Secret`] only ever holds its sealed value; the plaintext exists as a [`SecretValue`]
//! (redacted `Debug`, not serializable, wiped on drop) between [`Secret::decrypt`] and its use.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use autogate_exec::{GitCredentials, ServiceType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::crypto::{check_sealed, KeyFile, SecretError};

/// The six resource kinds, in the order the export file lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Decorator,
    Repository,
    Service,
    Secret,
    ExecutableObject,
    Registry,
}

impl Kind {
    /// Every kind, in export order.
    pub const ALL: [Kind; 6] = [
        Kind::Decorator,
        Kind::Repository,
        Kind::Service,
        Kind::Secret,
        Kind::ExecutableObject,
        Kind::Registry,
    ];

    /// The family's singular name (`executable-object`), also the store key segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decorator => "decorator",
            Kind::Repository => "repository",
            Kind::Service => "service",
            Kind::Secret => "secret",
            Kind::ExecutableObject => "executable-object",
            Kind::Registry => "registry",
        }
    }

    /// The plural (`executable-objects`): the API's path segment and list key, and the
    /// `--raw` list key of `get`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Decorator => "decorators",
            Kind::Repository => "repositories",
            Kind::Service => "services",
            Kind::Secret => "secrets",
            Kind::ExecutableObject => "executable-objects",
            Kind::Registry => "registries",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource definition that cannot be accepted; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ModelError {
    /// The field as the family spells it (`name`, `exec-command`, `secrets[1].target`, …).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ModelError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a resource name (or a reference to one): 1–63 characters of `[A-Za-z0-9_.-]`.
pub fn validate_name(field: &str, value: &str) -> Result<(), ModelError> {
    if value.is_empty() || value.len() > 63 {
        return Err(ModelError::new(
            field,
            format!("{value:?} must be 1 to 63 characters long"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(ModelError::new(
            field,
            format!("{value:?} contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"),
        ));
    }
    if value == "." || value == ".." {
        return Err(ModelError::new(field, format!("{value:?} is not a name")));
    }
    Ok(())
}

fn validate_env_name(field: &str, value: &str) -> Result<(), ModelError> {
    let mut chars = value.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ModelError::new(
            field,
            format!("{value:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
        ))
    }
}

fn validate_relative(field: &str, value: &str) -> Result<(), ModelError> {
    let path = Path::new(value);
    if value.is_empty() {
        return Err(ModelError::new(field, "must not be empty"));
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ModelError::new(
            field,
            format!(
                "{value:?} must be a relative path inside the repository (no '..', not absolute)"
            ),
        ));
    }
    Ok(())
}

/// What every resource carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Meta {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Set by the store on creation (RFC 3339, UTC).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub created: Option<OffsetDateTime>,
    /// Set by the store on every write (RFC 3339, UTC).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub updated: Option<OffsetDateTime>,
}

impl Meta {
    /// A name with no description, tags or times.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            tags: Vec::new(),
            created: None,
            updated: None,
        }
    }

    fn validate(&self) -> Result<(), ModelError> {
        validate_name("name", &self.name)?;
        for (i, tag) in self.tags.iter().enumerate() {
            if tag.trim().is_empty() || tag.len() > 255 {
                return Err(ModelError::new(
                    format!("tags[{i}]"),
                    "must be 1 to 255 non-blank characters",
                ));
            }
        }
        Ok(())
    }
}

/// Common behaviour of the six record types.
pub trait Resource: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync {
    const KIND: Kind;
    fn meta(&self) -> &Meta;
    fn meta_mut(&mut self) -> &mut Meta;
    /// Checks the record on its own.
    fn validate(&self) -> Result<(), ModelError>;
    /// The other resources this one names: (kind, name, field naming it).
    fn references(&self) -> Vec<(Kind, String, String)> {
        Vec::new()
    }
    fn name(&self) -> &str {
        &self.meta().name
    }
    /// Every name in [`references`](Self::references) is a valid resource name, reported
    /// under the field that holds it.
    fn validate_reference_names(&self) -> Result<(), ModelError> {
        for (_, name, field) in self.references() {
            validate_name(&field, &name)?;
        }
        Ok(())
    }
}

/// A git repository (`create repository`). `Debug` removes any user-info from the URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Repository {
    #[serde(flatten)]
    pub meta: Meta,
    pub url: String,
    /// Branch, tag or commit; `None` = the remote's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Secret holding an SSH private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_name: Option<String>,
    /// HTTPS basic-auth user (with `password-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Secret holding the HTTPS password or token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_name: Option<String>,
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("meta", &self.meta)
            .field("url", &autogate_exec::checkout::redact_url(&self.url))
            .field("reference", &self.reference)
            .field("private_key_name", &self.private_key_name)
            .field("username", &self.username)
            .field("password_name", &self.password_name)
            .finish()
    }
}

impl Repository {
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            meta: Meta::new(name),
            url: url.into(),
            reference: None,
            private_key_name: None,
            username: None,
            password_name: None,
        }
    }

    /// The engine's view, with credentials already decrypted by the caller.
    pub fn to_exec(&self, credentials: Option<GitCredentials>) -> autogate_exec::Repository {
        autogate_exec::Repository {
            url: self.url.clone(),
            reference: self.reference.clone(),
            credentials,
        }
    }

    /// Decrypts the repository's credentials from its secrets (`lookup` finds a secret by name).
    pub fn credentials<'a>(
        &self,
        key: &KeyFile,
        lookup: impl Fn(&str) -> Option<&'a Secret>,
    ) -> Result<Option<GitCredentials>, CredentialError> {
        let fetch = |name: &str| -> Result<String, CredentialError> {
            let secret = lookup(name).ok_or_else(|| CredentialError::MissingSecret(name.into()))?;
            Ok(secret.decrypt(key)?.expose().to_owned())
        };
        if let Some(name) = &self.private_key_name {
            return Ok(Some(GitCredentials::SshKey {
                private_key: fetch(name)?,
            }));
        }
        if let Some(name) = &self.password_name {
            return Ok(Some(GitCredentials::Basic {
                username: self.username.clone().unwrap_or_default(),
                password: fetch(name)?,
            }));
        }
        Ok(None)
    }
}

/// Why a credential could not be produced for a run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("secret {0} does not exist")]
    MissingSecret(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl Resource for Repository {
    const KIND: Kind = Kind::Repository;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
    fn validate(&self) -> Result<(), ModelError> {
        self.meta.validate()?;
        // The same checks the checkout makes, so a URL git would read as an option
        // (`--upload-pack=…`) or a command transport (`ext::`) is refused when it is stored.
        autogate_exec::checkout::check_url(&self.url)
            .map_err(|reason| ModelError::new("url", reason))?;
        if let Some(r) = &self.reference {
            autogate_exec::checkout::check_reference(r)
                .map_err(|reason| ModelError::new("reference", reason))?;
        }
        self.validate_reference_names()?;
        if self.private_key_name.is_some() && self.password_name.is_some() {
            return Err(ModelError::new(
                "private-key-name",
                "an SSH key and a password cannot both be given",
            ));
        }
        if self.username.is_some() != self.password_name.is_some() {
            return Err(ModelError::new(
                "username",
                "username and password-name go together",
            ));
        }
        Ok(())
    }
    fn references(&self) -> Vec<(Kind, String, String)> {
        let mut refs = Vec::new();
        if let Some(n) = &self.private_key_name {
            refs.push((Kind::Secret, n.clone(), "private-key-name".into()));
        }
        if let Some(n) = &self.password_name {
            refs.push((Kind::Secret, n.clone(), "password-name".into()));
        }
        refs
    }
}

/// A secret injected into a service's environment (`--secret name=…,type=env,target=…`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
    /// Only `env` exists.
    #[serde(rename = "type", default = "env_type")]
    pub ref_type: String,
    /// Environment variable that receives the value.
    pub target: String,
}

fn env_type() -> String {
    "env".into()
}

impl SecretRef {
    pub fn env(name: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ref_type: env_type(),
            target: target.into(),
        }
    }
}

/// One word or a list of them: the family writes `skip-tags: example-tag` as well as
/// `limit: [host1]`. The shape read is the shape written back, so an export round-trips.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Words {
    One(String),
    Many(Vec<String>),
}

impl Default for Words {
    fn default() -> Self {
        Words::Many(Vec::new())
    }
}

impl Words {
    /// The entries, an empty string (the family's "none") left out.
    pub fn items(&self) -> Vec<String> {
        match self {
            Words::One(s) => vec![s.clone()],
            Words::Many(v) => v.clone(),
        }
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .collect()
    }

    fn is_empty(&self) -> bool {
        self.items().is_empty()
    }
}

impl From<Vec<String>> for Words {
    fn from(v: Vec<String>) -> Self {
        Words::Many(v)
    }
}

/// Environment values as the family's files write them: a YAML scalar of any kind
/// (`NETMIKO_TIMEOUT: 30`), kept as the text the program sees.
fn scalar_map<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(D::Error::custom(format!(
                "env {k}: {other} is not a string, number or boolean"
            ))),
        })
        .collect()
}

/// The family's per-type `runtime:` block of a service. One record holds the keys of every
/// type so that an unknown key is refused by name and path; [`Service::validate`] refuses a
/// key that does not apply to the service's type.
///
/// * python-script: `req-file`, `env`;
/// * ansible-playbook: `check`, `diff`, `skip-tags`, `tags`, `limit`, `forks`, `inventory`,
///   `verbose-level`, `config-file`, `env`, and `req-file` (the family's own files carry it: a
///   `requirements.yml`-style file for Galaxy, else a pip one);
/// * opentofu-plan: `action`, `state-file` (and `env`);
/// * executable: `env`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Runtime {
    /// ansible: `--check` (a dry run: nothing on the targets changes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check: bool,
    /// ansible: `--diff`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diff: bool,
    /// ansible: `--skip-tags`.
    #[serde(default, skip_serializing_if = "Words::is_empty")]
    pub skip_tags: Words,
    /// ansible: `--tags`.
    #[serde(default, skip_serializing_if = "Words::is_empty")]
    pub tags: Words,
    /// ansible: `--limit`.
    #[serde(default, skip_serializing_if = "Words::is_empty")]
    pub limit: Words,
    /// ansible: `--forks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forks: Option<u32>,
    /// ansible: inventory files, relative to the working directory; each one is a `-i`.
    #[serde(default, skip_serializing_if = "Words::is_empty")]
    pub inventory: Words,
    /// ansible: 0 to 6, the number of `-v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbose_level: Option<u8>,
    /// ansible: an `ansible.cfg` relative to the working directory (`ANSIBLE_CONFIG`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    /// python: the requirement file (`requirements.txt` style or `pyproject.toml`); ansible:
    /// the Galaxy (`.yml`/`.yaml`) or pip requirement file replacing the default of its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_file: Option<String>,
    /// opentofu: `apply`, `plan` or `destroy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// opentofu: the state file, relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    /// Environment variables of the program (over the service's `env`).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "scalar_map"
    )]
    pub env: BTreeMap<String, String>,
}

/// The name this record had when it held the Ansible keys only.
pub type AnsibleRuntime = Runtime;

impl Runtime {
    /// The keys set in this block, as the family spells them.
    fn keys_set(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut add = |k: &'static str, set: bool| {
            if set {
                keys.push(k);
            }
        };
        add("check", self.check);
        add("diff", self.diff);
        add("skip-tags", !self.skip_tags.is_empty());
        add("tags", !self.tags.is_empty());
        add("limit", !self.limit.is_empty());
        add("forks", self.forks.is_some());
        add("inventory", !self.inventory.is_empty());
        add("verbose-level", self.verbose_level.is_some());
        add("config-file", self.config_file.is_some());
        add("req-file", self.req_file.is_some());
        add("action", self.action.is_some());
        add("state-file", self.state_file.is_some());
        add("env", !self.env.is_empty());
        keys
    }

    /// Checks the block for a service of type `ty`.
    fn validate(&self, ty: ServiceType) -> Result<(), ModelError> {
        let allowed: &[&str] = match ty {
            ServiceType::PythonScript => &["req-file", "env"],
            ServiceType::AnsiblePlaybook => &[
                "req-file",
                "check",
                "diff",
                "skip-tags",
                "tags",
                "limit",
                "forks",
                "inventory",
                "verbose-level",
                "config-file",
                "env",
            ],
            ServiceType::OpentofuPlan => &["action", "state-file", "env"],
            ServiceType::Executable => &["env"],
        };
        if let Some(k) = self.keys_set().into_iter().find(|k| !allowed.contains(k)) {
            return Err(ModelError::new(
                format!("runtime.{k}"),
                format!("does not apply to {} services", ty.as_str()),
            ));
        }
        for (field, words) in [
            ("skip-tags", &self.skip_tags),
            ("tags", &self.tags),
            ("limit", &self.limit),
        ] {
            for (i, w) in words.items().iter().enumerate() {
                if w.starts_with('-') || w.chars().any(char::is_control) {
                    return Err(ModelError::new(
                        format!("runtime.{field}[{i}]"),
                        format!("{w:?} must not start with '-' nor hold control characters"),
                    ));
                }
            }
        }
        for (i, inv) in self.inventory.items().iter().enumerate() {
            validate_relative(&format!("runtime.inventory[{i}]"), inv)?;
        }
        for (field, value) in [
            ("runtime.config-file", &self.config_file),
            ("runtime.req-file", &self.req_file),
            ("runtime.state-file", &self.state_file),
        ] {
            if let Some(v) = value {
                validate_relative(field, v)?;
            }
        }
        if self.forks == Some(0) {
            return Err(ModelError::new("runtime.forks", "must be at least 1"));
        }
        if self.verbose_level.is_some_and(|v| v > 6) {
            return Err(ModelError::new("runtime.verbose-level", "must be 0 to 6"));
        }
        if let Some(a) = &self.action {
            if !matches!(a.as_str(), "apply" | "plan" | "destroy") {
                return Err(ModelError::new(
                    "runtime.action",
                    format!("{a:?} is not apply, plan or destroy"),
                ));
            }
        }
        for k in self.env.keys() {
            validate_env_name("runtime.env", k)?;
        }
        Ok(())
    }
}

/// A runnable service (`create service <type> <name>`). Fields that do not apply to its type
/// must stay empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Service {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decorator: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable_object: Option<String>,
    /// Run limit in seconds; `None` = the engine's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Distributed execution: how many times a job of this service is dispatched again when
    /// the runner running it is lost (`None`/0: it fails instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Distributed execution: labels a runner must carry (`key=value`) to run this service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runner_labels: BTreeMap<String, String>,
    // python-script (and executable: a file passed as first argument)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_file: Option<String>,
    // ansible-playbook
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub playbooks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_vars: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_vars_file: Option<String>,
    /// The family's per-type runtime block (see [`Runtime`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    // opentofu-plan
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vars: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub var_files: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_config: Vec<String>,
    /// `apply`, `plan` or `destroy`: the family's files carry it here as well as in the
    /// runtime block (both given must agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The state file, relative to the working directory (as `runtime.state-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    // executable
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg_format: Option<String>,
}

impl Service {
    /// A service of `service_type` with every optional field empty.
    pub fn new(name: impl Into<String>, service_type: ServiceType) -> Self {
        Self {
            meta: Meta::new(name),
            service_type,
            repository: None,
            working_directory: None,
            decorator: None,
            env: BTreeMap::new(),
            secrets: Vec::new(),
            registry: None,
            executable_object: None,
            timeout: None,
            retries: None,
            runner_labels: BTreeMap::new(),
            filename: None,
            req_file: None,
            playbooks: Vec::new(),
            inventory: None,
            extra_vars: Vec::new(),
            extra_vars_file: None,
            runtime: None,
            vars: Vec::new(),
            var_files: Vec::new(),
            backend_config: Vec::new(),
            action: None,
            state_file: None,
            arg_format: None,
        }
    }

    /// The engine's service. The caller passes the resources this service names (checked
    /// against its fields) and the repository's decrypted credentials; secrets for the
    /// environment are resolved separately (see [`Service::secrets`]).
    pub fn to_exec(
        &self,
        repository: Option<(&Repository, Option<GitCredentials>)>,
        decorator: Option<&Decorator>,
        executable_object: Option<&ExecutableObject>,
    ) -> Result<autogate_exec::Service, ModelError> {
        fn check<R: Resource>(
            field: &str,
            wanted: &Option<String>,
            given: Option<&R>,
        ) -> Result<(), ModelError> {
            match (wanted, given) {
                (None, None) => Ok(()),
                (Some(w), Some(g)) if w == g.name() => Ok(()),
                (Some(w), _) => Err(ModelError::new(
                    field,
                    format!("{} {w} must be given to run this service", R::KIND),
                )),
                (None, Some(g)) => Err(ModelError::new(
                    field,
                    format!(
                        "the service names no {}, but {} was given",
                        R::KIND,
                        g.name()
                    ),
                )),
            }
        }
        check(
            "repository",
            &self.repository,
            repository.as_ref().map(|r| r.0),
        )?;
        check("decorator", &self.decorator, decorator)?;
        check(
            "executable-object",
            &self.executable_object,
            executable_object,
        )?;
        let mut svc = autogate_exec::Service::new(self.meta.name.clone(), self.service_type);
        svc.repository = repository.map(|(r, creds)| r.to_exec(creds));
        svc.working_dir = self.working_directory.clone();
        svc.filename = self.filename.clone();
        let runtime = self.runtime.clone().unwrap_or_default();
        svc.req_file = self.req_file.clone().or(runtime.req_file.clone());
        svc.playbooks = self.playbooks.clone();
        svc.inventory = self.inventory.clone();
        svc.ansible = autogate_exec::AnsibleOptions {
            inventories: runtime.inventory.items(),
            check: runtime.check,
            diff: runtime.diff,
            tags: runtime.tags.items(),
            skip_tags: runtime.skip_tags.items(),
            limit: runtime.limit.items(),
            forks: runtime.forks,
            verbosity: runtime.verbose_level.unwrap_or(0),
            config_file: runtime.config_file.clone(),
        };
        let action = runtime.action.as_ref().or(self.action.as_ref());
        svc.tofu_action = action.map(String::as_str).and_then(|a| match a {
            "apply" => Some(autogate_exec::TofuAction::Apply),
            "destroy" => Some(autogate_exec::TofuAction::Destroy),
            "plan" => Some(autogate_exec::TofuAction::Plan),
            _ => None,
        });
        svc.tofu_state_file = runtime.state_file.clone().or(self.state_file.clone());
        svc.extra_vars = self.extra_vars.clone();
        svc.extra_vars_file = self.extra_vars_file.clone();
        svc.vars = self.vars.clone();
        svc.var_files = self.var_files.clone();
        svc.backend_config = self.backend_config.clone();
        svc.executable = executable_object.map(|e| e.exec_command.clone());
        svc.arg_format = self.arg_format.clone();
        svc.env = self.env.clone();
        // The runtime block's variables over the service's own.
        svc.env.extend(runtime.env);
        svc.timeout = self.timeout.map(std::time::Duration::from_secs);
        svc.decorator = decorator.map(|d| d.schema.clone());
        Ok(svc)
    }
}

impl Resource for Service {
    const KIND: Kind = Kind::Service;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
    fn validate(&self) -> Result<(), ModelError> {
        self.meta.validate()?;
        let ty = self.service_type.as_str();
        for (field, value) in [
            ("repository", &self.repository),
            ("decorator", &self.decorator),
            ("registry", &self.registry),
            ("executable-object", &self.executable_object),
        ] {
            if let Some(v) = value {
                validate_name(field, v)?;
            }
        }
        if let Some(wd) = &self.working_directory {
            validate_relative("working-directory", wd)?;
        }
        for (field, value) in [
            ("filename", &self.filename),
            ("req-file", &self.req_file),
            ("inventory", &self.inventory),
            ("extra-vars-file", &self.extra_vars_file),
        ] {
            if let Some(v) = value {
                validate_relative(field, v)?;
            }
        }
        for (i, p) in self.playbooks.iter().enumerate() {
            validate_relative(&format!("playbooks[{i}]"), p)?;
        }
        for (i, p) in self.var_files.iter().enumerate() {
            validate_relative(&format!("var-files[{i}]"), p)?;
        }
        for k in self.env.keys() {
            validate_env_name("env", k)?;
        }
        for (i, s) in self.secrets.iter().enumerate() {
            validate_name(&format!("secrets[{i}].name"), &s.name)?;
            if s.ref_type != "env" {
                return Err(ModelError::new(
                    format!("secrets[{i}].type"),
                    format!("{:?} is not supported (only \"env\")", s.ref_type),
                ));
            }
            validate_env_name(&format!("secrets[{i}].target"), &s.target)?;
        }
        if self.timeout == Some(0) {
            return Err(ModelError::new("timeout", "must be at least 1 second"));
        }
        if self.retries.is_some_and(|r| r > 100) {
            return Err(ModelError::new("retries", "must be at most 100"));
        }
        for (k, v) in &self.runner_labels {
            if k.is_empty() || k.len() > 63 || v.len() > 255 || k.contains(['=', ' ']) {
                return Err(ModelError::new(
                    format!("runner-labels.{k}"),
                    "label keys are 1 to 63 characters without '=' or spaces, values at most 255",
                ));
            }
        }
        let needs_repo = !matches!(self.service_type, ServiceType::Executable);
        if needs_repo && self.repository.is_none() {
            return Err(ModelError::new(
                "repository",
                format!("is required for {ty} services"),
            ));
        }
        let not_for = |field: &str, set: bool| -> Result<(), ModelError> {
            if set {
                Err(ModelError::new(
                    field,
                    format!("does not apply to {ty} services"),
                ))
            } else {
                Ok(())
            }
        };
        if let Some(r) = &self.runtime {
            r.validate(self.service_type)?;
            for (key, top, inner) in [
                ("req-file", &self.req_file, &r.req_file),
                ("action", &self.action, &r.action),
                ("state-file", &self.state_file, &r.state_file),
            ] {
                if let (Some(a), Some(b)) = (top, inner) {
                    if a != b {
                        return Err(ModelError::new(
                            format!("runtime.{key}"),
                            format!("{b:?} differs from {key} {a:?}; give one of them"),
                        ));
                    }
                }
            }
        }
        let ansible = !self.playbooks.is_empty()
            || self.inventory.is_some()
            || !self.extra_vars.is_empty()
            || self.extra_vars_file.is_some();
        let tofu =
            !self.vars.is_empty() || !self.var_files.is_empty() || !self.backend_config.is_empty();
        if self.service_type != ServiceType::OpentofuPlan {
            not_for("action", self.action.is_some())?;
            not_for("state-file", self.state_file.is_some())?;
        }
        // The same checks as the runtime block's keys of those names.
        Runtime {
            action: self.action.clone(),
            state_file: self.state_file.clone(),
            ..Runtime::default()
        }
        .validate(ServiceType::OpentofuPlan)
        .map_err(|e| ModelError::new(e.field.trim_start_matches("runtime."), e.reason))?;
        match self.service_type {
            ServiceType::PythonScript => {
                if self.filename.is_none() {
                    return Err(ModelError::new(
                        "filename",
                        "is required for python-script services",
                    ));
                }
                not_for("playbooks", ansible)?;
                not_for("vars", tofu)?;
                not_for("arg-format", self.arg_format.is_some())?;
            }
            ServiceType::AnsiblePlaybook => {
                if self.playbooks.is_empty() {
                    return Err(ModelError::new(
                        "playbooks",
                        "at least one playbook is required for ansible-playbook services",
                    ));
                }
                not_for("filename", self.filename.is_some())?;
                not_for("vars", tofu)?;
                not_for("arg-format", self.arg_format.is_some())?;
            }
            ServiceType::OpentofuPlan => {
                not_for("filename", self.filename.is_some())?;
                not_for("playbooks", ansible)?;
                not_for("arg-format", self.arg_format.is_some())?;
            }
            ServiceType::Executable => {
                if self.executable_object.is_none() {
                    return Err(ModelError::new(
                        "executable-object",
                        "is required for executable services",
                    ));
                }
                not_for("playbooks", ansible)?;
                not_for("vars", tofu)?;
                if let Some(f) = &self.arg_format {
                    autogate_exec::inputs::ArgFormat::parse(f)
                        .map_err(|e| ModelError::new("arg-format", e.to_string()))?;
                }
            }
        }
        Ok(())
    }
    fn references(&self) -> Vec<(Kind, String, String)> {
        let mut refs = Vec::new();
        if let Some(n) = &self.repository {
            refs.push((Kind::Repository, n.clone(), "repository".into()));
        }
        if let Some(n) = &self.decorator {
            refs.push((Kind::Decorator, n.clone(), "decorator".into()));
        }
        if let Some(n) = &self.executable_object {
            refs.push((
                Kind::ExecutableObject,
                n.clone(),
                "executable-object".into(),
            ));
        }
        if let Some(n) = &self.registry {
            refs.push((Kind::Registry, n.clone(), "registry".into()));
        }
        for (i, s) in self.secrets.iter().enumerate() {
            refs.push((Kind::Secret, s.name.clone(), format!("secrets[{i}].name")));
        }
        refs
    }
}

/// A JSON Schema the run inputs must satisfy (`create decorator`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Decorator {
    #[serde(flatten)]
    pub meta: Meta,
    pub schema: serde_json::Value,
}

impl Decorator {
    pub fn new(name: impl Into<String>, schema: serde_json::Value) -> Self {
        Self {
            meta: Meta::new(name),
            schema,
        }
    }
}

impl Resource for Decorator {
    const KIND: Kind = Kind::Decorator;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
    fn validate(&self) -> Result<(), ModelError> {
        self.meta.validate()?;
        if !self.schema.is_object() {
            return Err(ModelError::new(
                "schema",
                "must be a JSON object (a JSON Schema)",
            ));
        }
        autogate_exec::Decorator::new(self.schema.clone())
            .map(|_| ())
            .map_err(|e| ModelError::new("schema", e.to_string()))
    }
}

/// A decrypted secret value: redacted in `Debug`, not serializable, wiped on drop.
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// The plaintext, for injection into a run.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// A secret: metadata and the sealed value (`v2:…`, see [`crate::crypto`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Secret {
    #[serde(flatten)]
    pub meta: Meta,
    /// The sealed value; readable only with the cluster's key file.
    pub value: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("meta", &self.meta)
            .field("value", &"<sealed>")
            .finish()
    }
}

impl Secret {
    /// Seals `plaintext` with the cluster key.
    pub fn new(
        name: impl Into<String>,
        plaintext: &str,
        key: &KeyFile,
    ) -> Result<Self, SecretError> {
        let meta = Meta::new(name);
        let value = key.seal(&meta.name, plaintext.as_bytes())?;
        Ok(Self { meta, value })
    }

    /// Opens the value with the cluster key.
    pub fn decrypt(&self, key: &KeyFile) -> Result<SecretValue, SecretError> {
        key.open_text(&self.meta.name, &self.value).map(SecretValue)
    }
}

impl Resource for Secret {
    const KIND: Kind = Kind::Secret;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
    fn validate(&self) -> Result<(), ModelError> {
        self.meta.validate()?;
        check_sealed(&self.meta.name, &self.value)
            .map_err(|e| ModelError::new("value", e.to_string()))
    }
}

/// An interpreter or program override (`create executable-object --exec-command`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExecutableObject {
    #[serde(flatten)]
    pub meta: Meta,
    /// Absolute path of the binary.
    pub exec_command: PathBuf,
}

impl ExecutableObject {
    pub fn new(name: impl Into<String>, exec_command: impl Into<PathBuf>) -> Self {
        Self {
            meta: Meta::new(name),
            exec_command: exec_command.into(),
        }
    }
}

impl Resource for ExecutableObject {
    const KIND: Kind = Kind::ExecutableObject;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
    fn validate(&self) -> Result<(), ModelError> {
        self.meta.validate()?;
        let p = &self.exec_command;
        if !p.is_absolute()
            || p.components().any(|c| matches!(c, Component::ParentDir))
            || p.as_os_str().to_string_lossy().ends_with('/')
        {
            return Err(ModelError::new(
                "exec-command",
                format!(
                    "{} must be an absolute path to a file, without '..'",
                    p.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Package index kind of a [`Registry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryType {
    Pypi,
    AnsibleGalaxy,
}

/// A package registry (`create registry <pypi|ansible-galaxy>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Registry {
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(rename = "type")]
    pub registry_type: RegistryType,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Secret holding the password (with `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_name: Option<String>,
    /// Secret holding a token (instead of username/password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    /// Used when a service names no registry.
    #[serde(default)]
    pub default: bool,
    /// pypi: `--trusted-host`; galaxy: certificate validation off.
    #[serde(default)]
    pub insecure: bool,
}

impl Registry {
    pub fn new(
        name: impl Into<String>,
        registry_type: RegistryType,
        url: impl Into<String>,
    ) -> Self {
        Self {
            meta: Meta::new(name),
            registry_type,
            url: url.into(),
            username: None,
            password_name: None,
            token_name: None,
            default: false,
            insecure: false,
        }
    }
}

impl Registry {
    /// The family's built-ins: `default-pypi` (public PyPI simple index) and `default-galaxy`
    /// (public Ansible Galaxy), each the default of its type.
    pub fn builtins() -> [Registry; 2] {
        let mut pypi = Registry::new(
            "default-pypi",
            RegistryType::Pypi,
            "https://pypi.org/simple",
        );
        pypi.meta.description = "Public PyPI simple index".into();
        pypi.default = true;
        let mut galaxy = Registry::new(
            "default-galaxy",
            RegistryType::AnsibleGalaxy,
            "https://galaxy.ansible.com",
        );
        galaxy.meta.description = "Public Ansible Galaxy".into();
        galaxy.default = true;
        [pypi, galaxy]
    }
}

impl Registry {
    /// True for a built-in registry nobody changed: a service without a registry of its own
    /// then keeps the node's own configuration (`pip.conf`, `ansible.cfg`) instead.
    pub fn is_untouched_builtin(&self) -> bool {
        Registry::builtins().iter().any(|b| {
            b.url == self.url
                && self.username.is_none()
                && self.password_name.is_none()
                && self.token_name.is_none()
                && !self.insecure
        })
    }

    /// The registry of `kind` a service draws from: the one it names when that one is of
    /// `kind`, else the default registry of `kind` unless it is an untouched built-in.
    /// An ansible-playbook service names at most one registry; its other kind comes from the
    /// defaults.
    pub fn chosen<'a>(
        registries: &'a [Registry],
        service: &Service,
        kind: RegistryType,
    ) -> Option<&'a Registry> {
        let named = service
            .registry
            .as_ref()
            .and_then(|n| registries.iter().find(|r| &r.meta.name == n));
        match named {
            Some(r) if r.registry_type == kind => Some(r),
            _ => registries
                .iter()
                .find(|r| r.registry_type == kind && r.default && !r.is_untouched_builtin()),
        }
    }

    /// The engine's Galaxy server for this (`ansible-galaxy`) registry; `open` gives the
    /// plaintext of a secret by name.
    pub fn to_galaxy<E>(
        &self,
        open: impl Fn(&str) -> Result<String, E>,
    ) -> Result<autogate_exec::GalaxyServer, E> {
        Ok(autogate_exec::GalaxyServer {
            name: self.meta.name.clone(),
            url: self.url.clone(),
            token: self.token_name.as_deref().map(&open).transpose()?,
            username: self.username.clone(),
            password: self.password_name.as_deref().map(&open).transpose()?,
            insecure: self.insecure,
        })
    }
}

impl Resource for Registry {
    const KIND: Kind = Kind::Registry;
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }
    fn validate(&self) -> Result<(), ModelError> {
        self.meta.validate()?;
        if !(self.url.starts_with("https://") || self.url.starts_with("http://"))
            || self.url.chars().any(char::is_whitespace)
        {
            return Err(ModelError::new(
                "url",
                format!("{:?} must be an http:// or https:// URL", self.url),
            ));
        }
        self.validate_reference_names()?;
        if self.token_name.is_some() && (self.username.is_some() || self.password_name.is_some()) {
            return Err(ModelError::new(
                "token-name",
                "a token cannot be combined with username/password-name",
            ));
        }
        if self.username.is_some() != self.password_name.is_some() {
            return Err(ModelError::new(
                "username",
                "username and password-name go together",
            ));
        }
        Ok(())
    }
    fn references(&self) -> Vec<(Kind, String, String)> {
        let mut refs = Vec::new();
        if let Some(n) = &self.password_name {
            refs.push((Kind::Secret, n.clone(), "password-name".into()));
        }
        if let Some(n) = &self.token_name {
            refs.push((Kind::Secret, n.clone(), "token-name".into()));
        }
        refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plurals_are_the_api_segments() {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        assert_eq!(
            all,
            [
                "decorators",
                "repositories",
                "services",
                "secrets",
                "executable-objects",
                "registries"
            ]
        );
    }

    #[test]
    fn names() {
        assert!(validate_name("name", "a.b_c-1").is_ok());
        assert!(validate_name("name", &"x".repeat(63)).is_ok());
        let e = validate_name("repository", &"x".repeat(64)).unwrap_err();
        assert_eq!(e.field, "repository");
        let e = validate_name("name", "a/b").unwrap_err();
        assert!(e.to_string().contains("invalid name"), "{e}");
        assert!(validate_name("name", "").is_err());
        assert!(validate_name("name", "..").is_err());
    }

    #[test]
    fn per_type_fields() {
        let mut s = Service::new("s", ServiceType::PythonScript);
        s.repository = Some("r".into());
        assert_eq!(s.validate().unwrap_err().field, "filename");
        s.filename = Some("main.py".into());
        s.validate().unwrap();
        s.playbooks = vec!["p.yml".into()];
        assert_eq!(s.validate().unwrap_err().field, "playbooks");

        let mut a = Service::new("a", ServiceType::AnsiblePlaybook);
        a.repository = Some("r".into());
        assert_eq!(a.validate().unwrap_err().field, "playbooks");
        a.playbooks = vec!["site.yml".into()];
        a.validate().unwrap();

        let mut e = Service::new("e", ServiceType::Executable);
        assert_eq!(e.validate().unwrap_err().field, "executable-object");
        e.executable_object = Some("bash".into());
        e.validate().unwrap();
        e.secrets.push(SecretRef::env("tok", "1BAD"));
        assert_eq!(e.validate().unwrap_err().field, "secrets[0].target");

        let mut t = Service::new("t", ServiceType::OpentofuPlan);
        t.repository = Some("r".into());
        t.working_directory = Some("../x".into());
        assert_eq!(t.validate().unwrap_err().field, "working-directory");
    }

    #[test]
    fn executable_object_must_be_absolute() {
        assert!(ExecutableObject::new("b", "/bin/bash").validate().is_ok());
        let e = ExecutableObject::new("b", "bash").validate().unwrap_err();
        assert_eq!(e.field, "exec-command");
    }

    #[test]
    fn decorator_schema_is_checked() {
        let good = Decorator::new(
            "d",
            json!({"type": "object", "properties": {"a": {"type": "string"}}}),
        );
        good.validate().unwrap();
        let bad = Decorator::new("d", json!({"type": 12}));
        assert_eq!(bad.validate().unwrap_err().field, "schema");
        assert_eq!(
            Decorator::new("d", json!("x"))
                .validate()
                .unwrap_err()
                .field,
            "schema"
        );
    }

    #[test]
    fn secret_never_shows_plaintext() {
        let key = KeyFile::from_bytes("k").unwrap();
        let s = Secret::new("tok", "PLAINTEXT-XYZ", &key).unwrap();
        assert!(!format!("{s:?}").contains("PLAINTEXT"));
        assert!(!serde_json::to_string(&s).unwrap().contains("PLAINTEXT"));
        let v = s.decrypt(&key).unwrap();
        assert_eq!(v.expose(), "PLAINTEXT-XYZ");
        assert!(!format!("{v:?}").contains("PLAINTEXT"));
        s.validate().unwrap();
    }

    #[test]
    fn repository_debug_hides_url_credentials() {
        let r = Repository::new("r", "https://bob:hunter2@git.example/x.git");
        let text = format!("{r:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("git.example"), "{text}");
    }

    #[test]
    fn builtins_are_valid() {
        for r in Registry::builtins() {
            r.validate().unwrap();
            assert!(r.default);
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let ok: Repository = serde_json::from_value(json!({
            "name": "r", "url": "file:///x", "description": "d", "tags": ["a"],
            "created": "2026-01-02T03:04:05Z"
        }))
        .unwrap();
        assert_eq!(ok.meta.tags, ["a"]);
        let err =
            serde_json::from_value::<Repository>(json!({"name": "r", "url": "u", "bogus": 1}))
                .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn kebab_case_json() {
        let mut s = Service::new("s", ServiceType::AnsiblePlaybook);
        s.repository = Some("r".into());
        s.working_directory = Some("sub".into());
        s.playbooks = vec!["a.yml".into()];
        s.extra_vars_file = Some("v.yml".into());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["type"], "ansible-playbook");
        assert_eq!(v["working-directory"], "sub");
        assert_eq!(v["extra-vars-file"], "v.yml");
        let back: Service = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn to_exec_maps_fields() {
        let repo = Repository::new("r", "file:///tmp/repo");
        let deco = Decorator::new("d", json!({"type": "object"}));
        let exe = ExecutableObject::new("py", "/usr/bin/python3");
        let mut s = Service::new("s", ServiceType::PythonScript);
        s.repository = Some("r".into());
        s.decorator = Some("d".into());
        s.executable_object = Some("py".into());
        s.filename = Some("main.py".into());
        s.timeout = Some(5);
        s.env.insert("A".into(), "1".into());
        let e = s
            .to_exec(Some((&repo, None)), Some(&deco), Some(&exe))
            .unwrap();
        assert_eq!(e.name, "s");
        assert_eq!(e.repository.unwrap().url, "file:///tmp/repo");
        assert_eq!(e.executable.unwrap(), PathBuf::from("/usr/bin/python3"));
        assert_eq!(e.decorator.unwrap(), json!({"type": "object"}));
        assert_eq!(e.timeout, Some(std::time::Duration::from_secs(5)));
        assert_eq!(e.env["A"], "1");
        // Wrong or missing companions are refused.
        let other = Repository::new("other", "file:///x");
        assert_eq!(
            s.to_exec(Some((&other, None)), Some(&deco), Some(&exe))
                .unwrap_err()
                .field,
            "repository"
        );
        assert_eq!(
            s.to_exec(Some((&repo, None)), None, Some(&exe))
                .unwrap_err()
                .field,
            "decorator"
        );
    }

    #[test]
    fn family_runtime_blocks_are_stored_and_mapped() {
        // The family's shapes: one word or a list, numbers for env values.
        let py: Service = serde_json::from_value(json!({
            "name": "p", "type": "python-script", "repository": "r", "filename": "main.py",
            "runtime": {"req-file": "deps/req.txt", "env": {"NETMIKO_TIMEOUT": 30, "MODE": "x"}}
        }))
        .unwrap();
        py.validate().unwrap();
        let e = py.to_exec(None, None, None);
        assert_eq!(e.unwrap_err().field, "repository");
        let repo = Repository::new("r", "file:///x");
        let e = py.to_exec(Some((&repo, None)), None, None).unwrap();
        assert_eq!(e.req_file.as_deref(), Some("deps/req.txt"));
        assert_eq!(e.env["NETMIKO_TIMEOUT"], "30");

        let ans: Service = serde_json::from_value(json!({
            "name": "a", "type": "ansible-playbook", "repository": "r", "playbooks": ["site.yml"],
            "runtime": {"check": true, "diff": true, "skip-tags": "example-tag", "tags": ["t1", "t2"],
                        "limit": ["host1"], "forks": 10, "inventory": ["./inventory.ini", "more.yml"],
                        "verbose-level": 6, "config-file": "ansible.cfg",
                        "env": {"ANSIBLE_HOST_KEY_CHECKING": "false"}}
        }))
        .unwrap();
        ans.validate().unwrap();
        // The shape read is the shape written back.
        let back = serde_json::to_value(&ans).unwrap();
        assert_eq!(back["runtime"]["skip-tags"], "example-tag");
        assert_eq!(back["runtime"]["tags"], json!(["t1", "t2"]));
        let e = ans.to_exec(Some((&repo, None)), None, None).unwrap();
        assert_eq!(e.inventory, None);
        assert_eq!(
            e.ansible,
            autogate_exec::AnsibleOptions {
                inventories: vec!["./inventory.ini".into(), "more.yml".into()],
                check: true,
                diff: true,
                tags: vec!["t1".into(), "t2".into()],
                skip_tags: vec!["example-tag".into()],
                limit: vec!["host1".into()],
                forks: Some(10),
                verbosity: 6,
                config_file: Some("ansible.cfg".into()),
            }
        );
        assert_eq!(e.env["ANSIBLE_HOST_KEY_CHECKING"], "false");

        // The family's files also carry them beside the block.
        let top: Service = serde_json::from_value(json!({
            "name": "t", "type": "opentofu-plan", "repository": "r", "action": "destroy",
            "vars": [], "var-files": [], "state-file": null
        }))
        .unwrap();
        top.validate().unwrap();
        let e = top.to_exec(Some((&repo, None)), None, None).unwrap();
        assert_eq!(e.tofu_action, Some(autogate_exec::TofuAction::Destroy));
        assert_eq!(e.tofu_state_file, None);
        let mut both = top.clone();
        both.runtime = Some(Runtime {
            action: Some("apply".into()),
            ..Runtime::default()
        });
        assert_eq!(both.validate().unwrap_err().field, "runtime.action");
        let mut bad = top.clone();
        bad.action = Some("import".into());
        assert_eq!(bad.validate().unwrap_err().field, "action");
        let mut py = Service::new("p", ServiceType::PythonScript);
        py.repository = Some("r".into());
        py.filename = Some("m.py".into());
        py.state_file = Some("s".into());
        assert_eq!(py.validate().unwrap_err().field, "state-file");

        let tofu: Service = serde_json::from_value(json!({
            "name": "t", "type": "opentofu-plan", "repository": "r",
            "runtime": {"action": "plan", "state-file": "state/prod.tfstate"}
        }))
        .unwrap();
        tofu.validate().unwrap();
        let e = tofu.to_exec(Some((&repo, None)), None, None).unwrap();
        assert_eq!(e.tofu_action, Some(autogate_exec::TofuAction::Plan));
        assert_eq!(e.tofu_state_file.as_deref(), Some("state/prod.tfstate"));
    }

    #[test]
    fn runtime_keys_are_checked_per_type_and_by_path() {
        let err = serde_json::from_value::<Service>(json!({
            "name": "p", "type": "python-script", "runtime": {"req-fil": "x"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("req-fil"), "{err}");
        let field = |ty: &str, runtime: serde_json::Value| {
            let mut v = json!({"name": "s", "type": ty, "repository": "r", "runtime": runtime});
            match ty {
                "python-script" => v["filename"] = json!("m.py"),
                "ansible-playbook" => v["playbooks"] = json!(["s.yml"]),
                "executable" => v["executable-object"] = json!("sh"),
                _ => {}
            }
            serde_json::from_value::<Service>(v)
                .unwrap()
                .validate()
                .map(|()| String::new())
                .unwrap_or_else(|e| e.field)
        };
        assert_eq!(
            field("python-script", json!({"check": true})),
            "runtime.check"
        );
        assert_eq!(
            field("opentofu-plan", json!({"req-file": "r.txt"})),
            "runtime.req-file"
        );
        assert_eq!(field("executable", json!({"forks": 2})), "runtime.forks");
        assert_eq!(
            field("ansible-playbook", json!({"action": "apply"})),
            "runtime.action"
        );
        assert_eq!(
            field("ansible-playbook", json!({"inventory": ["../x"]})),
            "runtime.inventory[0]"
        );
        assert_eq!(
            field("ansible-playbook", json!({"tags": ["ok", "-x"]})),
            "runtime.tags[1]"
        );
        assert_eq!(
            field("ansible-playbook", json!({"verbose-level": 7})),
            "runtime.verbose-level"
        );
        assert_eq!(
            field("ansible-playbook", json!({"forks": 0})),
            "runtime.forks"
        );
        assert_eq!(
            field("ansible-playbook", json!({"config-file": "/etc/a.cfg"})),
            "runtime.config-file"
        );
        assert_eq!(
            field("opentofu-plan", json!({"action": "import"})),
            "runtime.action"
        );
        assert_eq!(
            field("opentofu-plan", json!({"state-file": "../s"})),
            "runtime.state-file"
        );
        assert_eq!(
            field("executable", json!({"env": {"1X": "v"}})),
            "runtime.env"
        );
        // What the family writes for "none" is accepted.
        assert_eq!(
            field("ansible-playbook", json!({"inventory": "", "check": false})),
            ""
        );
        assert_eq!(field("executable", json!({"env": {"A": true}})), "");
    }

    #[test]
    fn registries_of_each_kind_for_a_playbook() {
        let [pypi, galaxy] = Registry::builtins();
        let mut private = Registry::new(
            "private-galaxy",
            RegistryType::AnsibleGalaxy,
            "https://galaxy.example/api/",
        );
        private.token_name = Some("tok".into());
        private.insecure = true;
        let all = vec![pypi.clone(), galaxy.clone(), private.clone()];
        let mut s = Service::new("a", ServiceType::AnsiblePlaybook);
        // Untouched built-ins leave the node's own configuration in charge.
        assert!(Registry::chosen(&all, &s, RegistryType::AnsibleGalaxy).is_none());
        assert!(Registry::chosen(&all, &s, RegistryType::Pypi).is_none());
        // The named registry serves its kind; the other kind still comes from the defaults.
        s.registry = Some("private-galaxy".into());
        assert_eq!(
            Registry::chosen(&all, &s, RegistryType::AnsibleGalaxy).map(|r| r.name()),
            Some("private-galaxy")
        );
        assert!(Registry::chosen(&all, &s, RegistryType::Pypi).is_none());
        // A default that is not the untouched public one is used when none is named.
        s.registry = None;
        let mut changed = galaxy.clone();
        changed.url = "https://mirror.example/".into();
        let all = vec![pypi, changed, private.clone()];
        assert_eq!(
            Registry::chosen(&all, &s, RegistryType::AnsibleGalaxy).map(|r| r.name()),
            Some("default-galaxy")
        );
        // Credentials are opened by the caller's function.
        let server = private
            .to_galaxy(|n| Ok::<_, String>(format!("opened-{n}")))
            .unwrap();
        assert_eq!(server.token.as_deref(), Some("opened-tok"));
        assert!(server.insecure);
        assert_eq!(
            private
                .to_galaxy(|n| Err::<String, _>(n.to_owned()))
                .unwrap_err(),
            "tok"
        );
    }

    #[test]
    fn repository_credentials_decrypt() {
        let key = KeyFile::from_bytes("k").unwrap();
        let secret = Secret::new("pw", "hunter2", &key).unwrap();
        let mut repo = Repository::new("r", "https://git.example/x.git");
        repo.username = Some("bob".into());
        repo.password_name = Some("pw".into());
        repo.validate().unwrap();
        let creds = repo
            .credentials(&key, |n| (n == "pw").then_some(&secret))
            .unwrap()
            .unwrap();
        assert_eq!(creds.secret_values(), vec!["hunter2".to_string()]);
        assert_eq!(
            repo.credentials(&key, |_| None).unwrap_err(),
            CredentialError::MissingSecret("pw".into())
        );
    }
}
