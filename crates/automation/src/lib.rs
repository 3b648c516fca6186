//! What a node does with automation resources, in one place for every front end: the CLI in
//! local mode calls it in-process, the core node's operator API calls it for each request, and
//! the manager link calls it for `services.list` and `service.run`.
//!
//! [`Automation`] joins the resource store ([`autogate_resources::Resources`]), the execution
//! engine ([`autogate_exec::Engine`]), the cluster's secret key file and the `[features]` flags.
//! Requests and answers are JSON in the family's kebab-case shapes, so the API, the CLI's
//! `--raw` output and the import file agree on field names. Secrets leave this module only as
//! metadata: their sealed value is never returned, their plaintext only reaches a child's
//! environment.
//!
//! Modules: [`api_types`] (the core node's answers the CLI reads, defined once), `error` (errors
//! classified by what the caller does next), `keys` (where the secrets key comes from); the
//! facade itself is here.
#![forbid(unsafe_code)]

pub mod api_types;
mod error;
mod keys;

use std::path::PathBuf;
use std::sync::Arc;

use autogate_config::Config;
use autogate_exec::{
    inputs::parse_set_args, Decorator as ExecDecorator, Engine, EngineConfig, Inputs, RunOptions,
    RunResult, ServiceType, TofuAction,
};
use autogate_resources::model::{
    Decorator, ExecutableObject, Kind, Registry, Repository, Resource, Secret, Service,
};
use autogate_resources::{
    ImportError, ImportMode, ImportReport, ResourceError, Resources, SecretError, TxnGuard,
};
use autogate_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use error::{AutomationError, ErrorClass};
pub use keys::KeySource;

/// `[features] *_enabled`: a disabled type can be neither managed nor run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub python: bool,
    pub ansible: bool,
    pub opentofu: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            python: true,
            ansible: true,
            opentofu: true,
        }
    }
}

impl Features {
    pub fn from_config(config: &Config) -> Self {
        Self {
            python: config.features.python_enabled,
            ansible: config.features.ansible_enabled,
            opentofu: config.features.opentofu_enabled,
        }
    }

    /// `Err` naming the flag when `t` is disabled.
    pub fn check(&self, t: ServiceType) -> Result<(), AutomationError> {
        let (on, flag) = match t {
            ServiceType::PythonScript => (self.python, "python_enabled"),
            ServiceType::AnsiblePlaybook => (self.ansible, "ansible_enabled"),
            ServiceType::OpentofuPlan => (self.opentofu, "opentofu_enabled"),
            ServiceType::Executable => (true, ""),
        };
        if on {
            Ok(())
        } else {
            Err(AutomationError::FeatureDisabled {
                service_type: t.as_str().to_owned(),
                flag: flag.to_owned(),
            })
        }
    }
}

/// One run request, as the CLI, the API and the manager give it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunRequest {
    /// The service's name.
    pub service: String,
    /// When given (the CLI's `run service <type>`), the service must be of this type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    /// Typed inputs (the API's and the manager's JSON object).
    pub inputs: Inputs,
    /// `--set k=v` strings, coerced to the decorator's types and laid over `inputs`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// opentofu-plan: apply (default) or destroy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<TofuAction>,
    /// opentofu-plan: the state to start from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// `--set-secret name=…,type=env,target=…`: secrets of the store injected for this run
    /// only, merged with the service's own (the same target: this one wins). Names, never
    /// values, travel in a request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<autogate_resources::model::SecretRef>,
}

/// What the manager is told about one service (discovery) and what `--use` prints from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// The decorator's name and schema, when the service has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decorator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// Settings of [`Automation`] that do not come from the store.
#[derive(Debug, Clone)]
pub struct AutomationOptions {
    /// Engine work directory (`repos/`, `venvs/`, `runs/`).
    pub work_dir: PathBuf,
    /// The secrets key.
    pub key: KeySource,
    pub features: Features,
    /// Per-stream capture limit of a run (bytes).
    pub output_limit: usize,
}

impl AutomationOptions {
    /// From the configuration: work directory `runtime_data_dir` (else `<working_dir>/runtime`),
    /// key file `[secrets] encrypt_key_file`; in local mode without one, `<working_dir>/secrets.key`
    /// is created on first use (a single machine is its own cluster).
    pub fn from_config(config: &Config) -> Self {
        let work_dir = config
            .server
            .runtime_data_dir
            .clone()
            .unwrap_or_else(|| config.application.working_dir.join("runtime"));
        let key = match &config.secrets.encrypt_key_file {
            Some(p) => KeySource::File(p.clone()),
            None if config.application.mode == autogate_config::Mode::Local => {
                KeySource::LocalDefault(config.application.working_dir.join("secrets.key"))
            }
            None => KeySource::Missing,
        };
        Self {
            work_dir,
            key,
            features: Features::from_config(config),
            output_limit: usize::try_from(config.application.run_output_limit)
                .unwrap_or(usize::MAX),
        }
    }
}

/// The automation side of a node. Cheap to clone.
#[derive(Clone)]
pub struct Automation {
    resources: Resources,
    engine: Arc<Engine>,
    key: KeySource,
    features: Features,
}

impl std::fmt::Debug for Automation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Automation")
            .field("cluster_id", &self.resources.cluster_id())
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

impl Automation {
    /// Over `store`, for `cluster_id`.
    pub fn new(store: Arc<dyn Store>, cluster_id: &str, opts: AutomationOptions) -> Self {
        let resources = Resources::new(store, cluster_id);
        Self {
            engine: Arc::new(Engine::new({
                let mut cfg = EngineConfig::new(opts.work_dir);
                cfg.output_limit = opts.output_limit;
                // SSH repositories trust the cluster's known hosts, strictly, on every node.
                cfg.host_keys = autogate_exec::HostKeyPolicy::Cluster(Arc::new(resources.clone()));
                cfg
            })),
            resources,
            key: opts.key,
            features: opts.features,
        }
    }

    /// From the configuration (see [`AutomationOptions::from_config`]).
    pub fn from_config(config: &Config, store: Arc<dyn Store>) -> Self {
        if !config.features.hostkeys_enabled {
            // The family turns host key checking off with this; here it stays on, and an
            // operator relying on the old meaning must learn why SSH checkouts are refused.
            tracing::warn!(
                "[features] hostkeys_enabled = false is ignored: SSH host keys are always checked \
                 against the cluster's known hosts; add them with `autogate hostkeys add|scan`"
            );
        }
        let automation = Self::new(
            store,
            &config.application.cluster_id,
            AutomationOptions::from_config(config),
        );
        let automation = {
            let mut cfg = automation.engine().config().clone();
            // `[python-script] requirements_file`: the file a python-script service without
            // its own `req-file` installs from.
            cfg.requirements_file = config.python_script.requirements_file.clone();
            automation.with_engine(Engine::new(cfg))
        };
        match &config.server.service_user {
            None => automation,
            // Resolved here too (the node checked it at start): a user that cannot be used is
            // kept as the error every run gets, never as a reason to run as the node instead.
            Some(name) => {
                let mut cfg = automation.engine().config().clone();
                cfg.service_user = Some(autogate_exec::ServiceUser::resolve(name));
                automation.with_engine(Engine::new(cfg))
            }
        }
    }

    /// Every write goes through `guard` (HA fencing: a deposed leader cannot write).
    pub fn with_txn_guard(mut self, guard: TxnGuard) -> Self {
        self.resources = self.resources.with_txn_guard(guard);
        self
    }

    /// A different engine (tests and benchmarks tune its limits).
    pub fn with_engine(mut self, engine: Engine) -> Self {
        self.engine = Arc::new(engine);
        self
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn features(&self) -> Features {
        self.features
    }

    /// Store key every resource write rewrites: watch it to learn that services changed.
    pub fn generation_key(&self) -> String {
        self.resources.generation_key()
    }

    /// Creates the built-in registries when this cluster never had them.
    pub async fn ensure_builtins(&self) -> Result<Vec<String>, AutomationError> {
        let created = self.resources.ensure_builtins().await?;
        self.reseal_unbound_secrets().await;
        Ok(created)
    }

    /// Seals again, bound to their names, the secret values an earlier version sealed unbound
    /// (see `autogate_resources::crypto`). Best effort: without the key file there is nothing
    /// to open them with, and a failure is retried at the next start or election.
    async fn reseal_unbound_secrets(&self) {
        let Ok(key) = self.key.load(false) else {
            return;
        };
        match self.resources.reseal_unbound_secrets(&key).await {
            Ok(names) if !names.is_empty() => tracing::info!(
                "sealed again, bound to their names: {} secret(s) of an earlier version ({})",
                names.len(),
                names.join(", ")
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot seal the secrets of an earlier version again: {e}"),
        }
    }

    /// Creates a resource from its JSON (kebab-case, as in the import file). A secret takes
    /// its plaintext in `value` and is sealed here.
    pub async fn create(&self, kind: Kind, body: Value) -> Result<Value, AutomationError> {
        match kind {
            Kind::Decorator => self.create_as::<Decorator>(body).await,
            Kind::Repository => self.create_as::<Repository>(body).await,
            Kind::Service => {
                let s: Service = parse(kind, body)?;
                self.features.check(s.service_type)?;
                Ok(to_json(&self.resources.create(s).await?))
            }
            Kind::Secret => {
                let req: SecretInput = parse(kind, body)?;
                let key = self.key.load(true)?;
                let mut secret = Secret::new(req.name, &req.value, &key)
                    .map_err(|e| AutomationError::Key(e.to_string()))?;
                secret.meta.description = req.description;
                secret.meta.tags = req.tags;
                Ok(secret_meta(&self.resources.create(secret).await?))
            }
            Kind::ExecutableObject => self.create_as::<ExecutableObject>(body).await,
            Kind::Registry => self.create_as::<Registry>(body).await,
        }
    }

    async fn create_as<R: Resource>(&self, body: Value) -> Result<Value, AutomationError> {
        let r: R = parse(R::KIND, body)?;
        Ok(to_json(&self.resources.create(r).await?))
    }

    /// One resource as JSON (a secret: metadata only).
    pub async fn get(&self, kind: Kind, name: &str) -> Result<Value, AutomationError> {
        let found = match kind {
            Kind::Decorator => self.resources.get::<Decorator>(name).await?.map(to_json),
            Kind::Repository => self.resources.get::<Repository>(name).await?.map(to_json),
            Kind::Service => match self.resources.get::<Service>(name).await? {
                Some(s) if self.features.check(s.service_type).is_ok() => Some(to_json(s)),
                _ => None,
            },
            Kind::Secret => self
                .resources
                .get::<Secret>(name)
                .await?
                .map(|s| secret_meta(&s)),
            Kind::ExecutableObject => self
                .resources
                .get::<ExecutableObject>(name)
                .await?
                .map(to_json),
            Kind::Registry => self.resources.get::<Registry>(name).await?.map(to_json),
        };
        found.ok_or_else(|| AutomationError::NotFound {
            kind,
            name: name.to_owned(),
        })
    }

    /// Every resource of `kind`, sorted by name (secrets: metadata only; services of disabled
    /// types are hidden).
    pub async fn list(&self, kind: Kind) -> Result<Vec<Value>, AutomationError> {
        Ok(match kind {
            Kind::Decorator => map(self.resources.list::<Decorator>().await?, to_json),
            Kind::Repository => map(self.resources.list::<Repository>().await?, to_json),
            Kind::Service => self
                .resources
                .list::<Service>()
                .await?
                .into_iter()
                .filter(|s| self.features.check(s.service_type).is_ok())
                .map(to_json)
                .collect(),
            Kind::Secret => self
                .resources
                .list::<Secret>()
                .await?
                .iter()
                .map(secret_meta)
                .collect(),
            Kind::ExecutableObject => {
                map(self.resources.list::<ExecutableObject>().await?, to_json)
            }
            Kind::Registry => map(self.resources.list::<Registry>().await?, to_json),
        })
    }

    /// Deletes a resource (refused while others name it).
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), AutomationError> {
        if kind == Kind::Service {
            if let Some(s) = self.resources.get::<Service>(name).await? {
                self.features.check(s.service_type)?;
            }
        }
        self.resources.delete(kind, name).await?;
        Ok(())
    }

    /// The services the manager may run, sorted by name, with their decorator schemas.
    pub async fn catalog(&self) -> Result<Vec<ServiceInfo>, AutomationError> {
        let services = self.resources.list::<Service>().await?;
        let decorators = self.resources.list::<Decorator>().await?;
        Ok(services
            .into_iter()
            .filter(|s| self.features.check(s.service_type).is_ok())
            .map(|s| {
                let schema = s.decorator.as_ref().and_then(|d| {
                    decorators
                        .iter()
                        .find(|x| &x.meta.name == d)
                        .map(|x| x.schema.clone())
                });
                ServiceInfo {
                    name: s.meta.name,
                    service_type: s.service_type,
                    description: s.meta.description,
                    tags: s.meta.tags,
                    repository: s.repository,
                    working_directory: s.working_directory,
                    decorator: s.decorator,
                    schema,
                    created: s.meta.created.and_then(rfc3339),
                    updated: s.meta.updated.and_then(rfc3339),
                }
            })
            .collect())
    }

    /// The inputs a service expects (`run service --use`): its catalog entry.
    pub async fn describe_inputs(&self, name: &str) -> Result<ServiceInfo, AutomationError> {
        self.catalog()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| AutomationError::NotFound {
                kind: Kind::Service,
                name: name.to_owned(),
            })
    }

    /// The service a request names, if this node may run it: it exists, its type is enabled,
    /// and it is of the type the request asks for (when it asks).
    pub async fn requested_service(&self, req: &RunRequest) -> Result<Service, AutomationError> {
        let stored = self
            .resources
            .get::<Service>(&req.service)
            .await?
            .ok_or_else(|| AutomationError::NotFound {
                kind: Kind::Service,
                name: req.service.clone(),
            })?;
        self.features.check(stored.service_type)?;
        if let Some(t) = req.service_type {
            if t != stored.service_type {
                return Err(AutomationError::WrongType {
                    name: req.service.clone(),
                    actual: stored.service_type.as_str().to_owned(),
                    asked: t.as_str().to_owned(),
                });
            }
        }
        Ok(stored)
    }

    /// Runs a service to completion (or timeout, or `cancel`). A program that ran is `Ok`
    /// whatever its exit status; `Err` is a failure to run (nothing ran, or it could not start).
    pub async fn run(
        &self,
        req: &RunRequest,
        cancel: &CancellationToken,
    ) -> Result<RunResult, AutomationError> {
        let stored = self.requested_service(req).await?;
        if (req.action.is_some() || req.state.is_some())
            && stored.service_type != ServiceType::OpentofuPlan
        {
            return Err(AutomationError::BadRequest(format!(
                "action and state apply to opentofu-plan services only; {} is {}",
                req.service,
                stored.service_type.as_str()
            )));
        }
        // The key is only needed when the service or its repository names a secret; a node
        // without one can still run everything else.
        let (key, key_err) = match self.key.load(false) {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e)),
        };
        let (service, secrets) = match self
            .resources
            .resolve_service(&req.service, key.as_deref())
            .await
        {
            Ok(ok) => ok,
            Err(ResourceError::KeyRequired { .. }) if key_err.is_some() => {
                return Err(key_err.unwrap_or(AutomationError::KeyMissing));
            }
            Err(e) => return Err(e.into()),
        };
        let mut secrets = secrets;
        for r in &req.secrets {
            if r.ref_type != "env" {
                return Err(AutomationError::BadRequest(format!(
                    "secret {}: type {:?} is not supported (only env)",
                    r.name, r.ref_type
                )));
            }
            let mut chars = r.target.chars();
            let env_name = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !env_name {
                return Err(AutomationError::BadRequest(format!(
                    "secret {}: target {:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    r.name, r.target
                )));
            }
            let secret = self
                .resources
                .get::<Secret>(&r.name)
                .await?
                .ok_or_else(|| AutomationError::NotFound {
                    kind: Kind::Secret,
                    name: r.name.clone(),
                })?;
            let Some(key) = key.as_deref() else {
                return Err(key_err.unwrap_or(AutomationError::KeyMissing));
            };
            let value = secret.decrypt(key).map_err(ResourceError::from)?;
            secrets.insert(r.target.clone(), value.expose().to_owned());
        }
        let mut inputs = req.inputs.clone();
        if !req.set.is_empty() {
            let decorator = service
                .decorator
                .clone()
                .map(ExecDecorator::new)
                .transpose()?;
            inputs.extend(parse_set_args(decorator.as_ref(), &req.set)?);
        }
        let opts = RunOptions {
            // The request's action, else the service's runtime `action`, else apply.
            tofu_action: req.action.or(service.tofu_action).unwrap_or_default(),
            tofu_state: req.state.clone(),
            stdin: None,
        };
        tracing::debug!(service = %req.service, "running service");
        Ok(self
            .engine
            .run_with(&service, &inputs, &secrets, cancel, &opts)
            .await?)
    }

    /// Checks a request's inputs against the service's decorator without running anything
    /// (distributed execution checks before it queues a job).
    pub async fn check_inputs(&self, req: &RunRequest) -> Result<(), AutomationError> {
        let service = self
            .resources
            .get::<Service>(&req.service)
            .await?
            .ok_or_else(|| AutomationError::NotFound {
                kind: Kind::Service,
                name: req.service.clone(),
            })?;
        let Some(name) = &service.decorator else {
            return Ok(());
        };
        let decorator = self
            .resources
            .get::<Decorator>(name)
            .await?
            .ok_or_else(|| AutomationError::NotFound {
                kind: Kind::Decorator,
                name: name.clone(),
            })?;
        let compiled = ExecDecorator::new(decorator.schema)?;
        let mut inputs = req.inputs.clone();
        inputs.extend(parse_set_args(Some(&compiled), &req.set)?);
        compiled.validate(&inputs)?;
        Ok(())
    }

    /// Every resource as the family's YAML import file (secrets sealed).
    pub async fn export(&self) -> Result<String, AutomationError> {
        Ok(self.resources.export().await?)
    }

    /// The same file in JSON (`db export --format json`), which imports back as it is.
    pub async fn export_json(&self) -> Result<String, AutomationError> {
        Ok(self.resources.export_json().await?)
    }

    /// Checks a file on its own (`db import --validate`): nothing is read or written; see
    /// [`validate_import`].
    pub fn validate_import(&self, yaml: &str) -> Result<ImportReport, AutomationError> {
        validate_import(yaml, self.features)
    }

    /// Imports a YAML file all-or-nothing; secrets in it must open with this cluster's key.
    pub async fn import(
        &self,
        yaml: &str,
        mode: ImportMode,
    ) -> Result<ImportReport, AutomationError> {
        let doc = autogate_resources::Document::parse(yaml)?;
        for s in &doc.services {
            self.features.check(s.service_type)?;
        }
        let report = if doc.secrets.is_empty() {
            self.resources.import(yaml, mode).await?
        } else {
            let key = self.key.load_for_import()?;
            match self.resources.import_with_key(yaml, mode, &key).await {
                Err(ImportError::Resource(ResourceError::Secret(
                    SecretError::WrongKeyOrCorrupted { name },
                ))) => return Err(self.key.wrong_key_for_import(&name)),
                other => other?,
            }
        };
        Ok(report)
    }
}

/// Checks an import file without any store, as `db import --validate` does: its shape (unknown
/// keys refused with their path), each item's required fields and rules, duplicates, and the
/// `[features]` flags of the node that would import it. References are left to the import (they
/// may name resources of the target store). Every item is reported `Valid`.
pub fn validate_import(yaml: &str, features: Features) -> Result<ImportReport, AutomationError> {
    let report = autogate_resources::Document::validate_file(yaml)?;
    let doc = autogate_resources::Document::parse(yaml)?;
    for s in &doc.services {
        features.check(s.service_type)?;
    }
    Ok(report)
}

/// `create secret` body: the plaintext arrives here and nowhere else.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct SecretInput {
    name: String,
    value: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
}

fn parse<T: serde::de::DeserializeOwned>(kind: Kind, body: Value) -> Result<T, AutomationError> {
    serde_json::from_value(body).map_err(|e| AutomationError::BadRequest(format!("{kind}: {e}")))
}

fn to_json<R: Serialize>(r: R) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

fn map<R: Serialize>(items: Vec<R>, f: fn(R) -> Value) -> Vec<Value> {
    items.into_iter().map(f).collect()
}

/// A secret without its value.
fn secret_meta(s: &Secret) -> Value {
    let mut v = to_json(&s.meta);
    if let Value::Object(m) = &mut v {
        m.insert("value".into(), json!("********"));
    }
    v
}

fn rfc3339(t: time::OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}
