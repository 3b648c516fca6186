//! `autogate create|get|describe|delete <noun>`: the automation resources (repositories,
//! services, decorators, secrets, executable-objects, registries) and, against a core node,
//! users — with the family's flags, tables and `Label:  value` layouts. Every command works the
//! same in local mode (in-process) and client mode (through the API): see [`Backend`].
//!
//! Flags only build the resource's JSON; whether it is valid (required fields per type,
//! references that exist, names) is decided in one place, the resource model, so the CLI, the
//! API and the import file report the same problems in the same words.

use std::collections::BTreeMap;
use std::path::PathBuf;

use autogate_resources::model::Kind;
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::backend::{self, Backend};
use super::term::{self, out, outln};
use crate::cli::Global;
use crate::exit::{Failure, USAGE};

// ---------------------------------------------------------------------------------------------
// Grammar

/// `create <noun> …`
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub noun: CreateNoun,
}

#[derive(Debug, Subcommand)]
pub enum CreateNoun {
    /// A git repository services take their code from.
    Repository(CreateRepository),
    /// A runnable service of one of the four types.
    Service(CreateService),
    /// A JSON Schema that run inputs must satisfy.
    Decorator(CreateDecorator),
    /// A secret, encrypted at rest with the cluster's key file.
    Secret(CreateSecret),
    /// An interpreter or program override (absolute path).
    ExecutableObject(CreateExecutableObject),
    /// A package registry (pypi or ansible-galaxy).
    Registry(CreateRegistry),
    /// A user of a core node (client mode only).
    User(CreateUser),
}

/// What every resource takes.
#[derive(Debug, Args)]
pub struct MetaArgs {
    /// Free-text description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A tag (repeat for more).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateRepository {
    /// Repository name.
    pub name: String,
    /// Git URL (file://, https://, ssh:// or user@host:path).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Branch, tag or commit (default: the remote's default branch).
    #[arg(long, value_name = "REF")]
    pub reference: Option<String>,
    /// Secret holding an SSH private key.
    #[arg(long, value_name = "SECRET")]
    pub private_key_name: Option<String>,
    /// HTTPS user (with --password-name).
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// Secret holding the HTTPS password or token (with --username).
    #[arg(long, value_name = "SECRET")]
    pub password_name: Option<String>,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Args)]
pub struct CreateService {
    #[command(subcommand)]
    pub kind: ServiceKind,
}

/// Flags of every service type.
#[derive(Debug, Args)]
pub struct ServiceCommon {
    /// Repository the code comes from (required except for executables).
    #[arg(long, value_name = "NAME")]
    pub repository: Option<String>,
    /// Subdirectory of the repository to run in.
    #[arg(long = "working-dir", value_name = "DIR")]
    pub working_dir: Option<String>,
    /// Decorator validating the run inputs.
    #[arg(long, value_name = "NAME")]
    pub decorator: Option<String>,
    /// Environment variable of the program (repeat).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Secret injected as an environment variable: name=<secret>,type=env,target=<VAR> (repeat).
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// Package registry to install from (else the default of its type).
    #[arg(long, value_name = "NAME")]
    pub registry: Option<String>,
    /// Interpreter or program override (required for executables).
    #[arg(long, value_name = "NAME")]
    pub executable_object: Option<String>,
    /// Run limit in seconds (default: the node's).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Distributed execution: how many times a run lost with its runner is dispatched again.
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Distributed execution: a label k=v the runner must carry (repeat).
    #[arg(long = "runner-label", value_name = "K=V")]
    pub runner_labels: Vec<String>,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Subcommand)]
pub enum ServiceKind {
    /// `python <filename> --k=v …` in a virtual environment built from its requirements.
    PythonScript {
        /// Service name.
        name: String,
        #[command(flatten)]
        common: ServiceCommon,
        /// The script, relative to the working directory.
        #[arg(long, value_name = "FILE")]
        filename: Option<String>,
        /// Requirements file (default: [python-script] requirements_file).
        #[arg(long, value_name = "FILE")]
        req_file: Option<String>,
    },
    /// `ansible-playbook` with the playbooks in order and the inputs as extra-vars.
    AnsiblePlaybook {
        /// Service name.
        name: String,
        #[command(flatten)]
        common: ServiceCommon,
        /// Playbook (repeat; run in order).
        #[arg(long = "playbook", value_name = "FILE")]
        playbooks: Vec<String>,
        /// Inventory file in the working directory.
        #[arg(long, value_name = "FILE")]
        inventory: Option<String>,
        /// Extra variables, k=v or a JSON object (repeat).
        #[arg(long = "extra-vars", value_name = "K=V|JSON")]
        extra_vars: Vec<String>,
        /// Extra variables file in the working directory.
        #[arg(long, value_name = "FILE")]
        extra_vars_file: Option<String>,
    },
    /// `tofu init` then `tofu apply|destroy` with the inputs as variables.
    OpentofuPlan {
        /// Service name.
        name: String,
        #[command(flatten)]
        common: ServiceCommon,
        /// Variable k=v (repeat).
        #[arg(long = "var", value_name = "K=V")]
        vars: Vec<String>,
        /// Variables file in the working directory (repeat).
        #[arg(long = "var-file", value_name = "FILE")]
        var_files: Vec<String>,
        /// Backend configuration k=v for `tofu init` (repeat).
        #[arg(long = "backend-config", value_name = "K=V")]
        backend_config: Vec<String>,
    },
    /// Any program (its executable-object) with the inputs rendered by --arg-format.
    Executable {
        /// Service name.
        name: String,
        #[command(flatten)]
        common: ServiceCommon,
        /// A file of the repository passed as first argument.
        #[arg(long, value_name = "FILE")]
        filename: Option<String>,
        /// Template of the arguments per input (default `--{{.Key}} {{.Value}}`).
        #[arg(long, value_name = "TEMPLATE")]
        arg_format: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateDecorator {
    /// Decorator name.
    pub name: String,
    /// The JSON Schema, inline or @file.
    #[arg(long, value_name = "JSON|@FILE")]
    pub schema: String,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["value", "prompt_value"])))]
pub struct CreateSecret {
    /// Secret name.
    pub name: String,
    /// The value (visible in the shell's history and the process list: prefer --prompt-value).
    #[arg(long, value_name = "VALUE")]
    pub value: Option<String>,
    /// Read the value from the terminal without echo (or one line of standard input).
    #[arg(long)]
    pub prompt_value: bool,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Args)]
pub struct CreateExecutableObject {
    /// Executable-object name.
    pub name: String,
    /// Absolute path of the program.
    #[arg(long, value_name = "PATH")]
    pub exec_command: PathBuf,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RegistryType {
    Pypi,
    AnsibleGalaxy,
}

#[derive(Debug, Args)]
pub struct CreateRegistry {
    /// Registry type.
    #[arg(value_enum)]
    pub registry_type: RegistryType,
    /// Registry name.
    pub name: String,
    /// Index URL (http:// or https://).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Use it for services that name no registry.
    #[arg(long)]
    pub default: bool,
    /// User (with --password-name).
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// Secret holding the password (with --username).
    #[arg(long, value_name = "SECRET", conflicts_with = "token_name")]
    pub password_name: Option<String>,
    /// Secret holding a token.
    #[arg(long, value_name = "SECRET")]
    pub token_name: Option<String>,
    /// pypi: trust the host without TLS verification; galaxy: no certificate validation.
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Args)]
pub struct CreateUser {
    /// User name.
    pub name: String,
    /// Read the password as one line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

/// The nouns of `get`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Plural {
    #[value(alias = "decorator")]
    Decorators,
    #[value(alias = "repository")]
    Repositories,
    #[value(alias = "service")]
    Services,
    #[value(alias = "secret")]
    Secrets,
    #[value(alias = "executable-object")]
    ExecutableObjects,
    #[value(alias = "registry")]
    Registries,
    #[value(alias = "user")]
    Users,
    /// Runner nodes registered in the cluster.
    #[value(alias = "runner")]
    Runners,
}

/// The nouns of `describe` and `delete`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Noun {
    #[value(alias = "decorators")]
    Decorator,
    #[value(alias = "repositories")]
    Repository,
    #[value(alias = "services")]
    Service,
    #[value(alias = "secrets")]
    Secret,
    #[value(alias = "executable-objects")]
    ExecutableObject,
    #[value(alias = "registries")]
    Registry,
    #[value(alias = "users")]
    User,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    #[arg(value_enum)]
    pub noun: Plural,
}

#[derive(Debug, Args)]
pub struct NamedArgs {
    /// Kind of resource.
    #[arg(value_enum)]
    pub noun: Noun,
    /// Its name.
    pub name: String,
}

/// A resource kind, or users (which only core nodes have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Kind(Kind),
    User,
}

impl From<Plural> for Target {
    fn from(p: Plural) -> Self {
        match p {
            Plural::Decorators => Target::Kind(Kind::Decorator),
            Plural::Repositories => Target::Kind(Kind::Repository),
            Plural::Services => Target::Kind(Kind::Service),
            Plural::Secrets => Target::Kind(Kind::Secret),
            Plural::ExecutableObjects => Target::Kind(Kind::ExecutableObject),
            Plural::Registries => Target::Kind(Kind::Registry),
            Plural::Users | Plural::Runners => Target::User,
        }
    }
}

impl From<Noun> for Target {
    fn from(n: Noun) -> Self {
        match n {
            Noun::Decorator => Target::Kind(Kind::Decorator),
            Noun::Repository => Target::Kind(Kind::Repository),
            Noun::Service => Target::Kind(Kind::Service),
            Noun::Secret => Target::Kind(Kind::Secret),
            Noun::ExecutableObject => Target::Kind(Kind::ExecutableObject),
            Noun::Registry => Target::Kind(Kind::Registry),
            Noun::User => Target::User,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Opens the backend of the configured mode and runs `f` on it.
fn with_backend<T>(
    global: &Global,
    f: impl AsyncFnOnce(&Backend, &autogate_config::Config) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let config = backend::load(global)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let backend = Backend::open(&config, global).await?;
        f(&backend, &config).await
    })
}

pub fn create(global: &Global, args: CreateArgs) -> Result<(), Failure> {
    // Values typed at a prompt are read before anything else happens, so that a mistake in the
    // configuration does not surface after the operator typed a password.
    let (kind, body) = match args.noun {
        CreateNoun::User(u) => return create_user(global, u),
        CreateNoun::Repository(r) => (Kind::Repository, repository_body(r)),
        CreateNoun::Service(s) => (Kind::Service, service_body(s.kind)?),
        CreateNoun::Decorator(d) => (Kind::Decorator, decorator_body(d)?),
        CreateNoun::Secret(s) => (Kind::Secret, secret_body(s)?),
        CreateNoun::ExecutableObject(e) => (Kind::ExecutableObject, exec_object_body(e)),
        CreateNoun::Registry(r) => (Kind::Registry, registry_body(r)),
    };
    let created = with_backend(global, async |b, _| b.create(kind, body).await)?;
    if global.raw {
        print_json(&created);
    } else {
        outln!("Successfully created {kind}");
        outln!("Name:   {}", term::text(&created["name"]));
    }
    Ok(())
}

pub fn get(global: &Global, args: GetArgs) -> Result<(), Failure> {
    if matches!(args.noun, Plural::Runners) {
        return super::cluster::get_runners(global);
    }
    let target = Target::from(args.noun);
    let key = match target {
        Target::Kind(k) => k.plural(),
        Target::User => "users",
    };
    let items = with_backend(global, async |b, _| match target {
        Target::Kind(k) => b.list(k).await,
        Target::User => {
            let c = b.remote("get users")?;
            backend::list_of(c.call(Method::GET, "/api/v1/users", None).await?, "users")
        }
    })?;
    if global.raw {
        print_json(&json!({ key: items }));
        return Ok(());
    }
    out!("{}", list_table(target, &items));
    Ok(())
}

pub fn describe(global: &Global, args: NamedArgs) -> Result<(), Failure> {
    let target = Target::from(args.noun);
    let name = args.name;
    let (item, tz) = with_backend(global, async |b, config| {
        let item = match target {
            Target::Kind(k) => b.get(k, &name).await?,
            Target::User => {
                let c = b.remote("describe user")?;
                c.call(
                    Method::GET,
                    &format!("/api/v1/users/{}", backend::segment(&name)),
                    None,
                )
                .await?
            }
        };
        Ok((item, term::time_zone(config)?))
    })?;
    if global.raw {
        let out = match target {
            Target::Kind(Kind::Service) => with_metadata(item),
            _ => item,
        };
        print_json(&out);
        return Ok(());
    }
    out!("{}", describe_text(target, &item, &tz));
    Ok(())
}

pub fn delete(global: &Global, args: NamedArgs) -> Result<(), Failure> {
    let target = Target::from(args.noun);
    let name = args.name;
    with_backend(global, async |b, _| match target {
        Target::Kind(k) => b.delete(k, &name).await,
        Target::User => {
            let c = b.remote("delete user")?;
            c.call(
                Method::DELETE,
                &format!("/api/v1/users/{}", backend::segment(&name)),
                None,
            )
            .await
            .map(|_| ())
        }
    })?;
    let kind = match target {
        Target::Kind(k) => k.as_str(),
        Target::User => "user",
    };
    if global.raw {
        print_json(&json!({ "kind": kind, "name": name, "deleted": true }));
    } else {
        outln!("Successfully deleted {kind} {name}");
    }
    Ok(())
}

/// `create user`: the family's prompts (twice, compared) unless `--password-stdin`.
fn create_user(global: &Global, u: CreateUser) -> Result<(), Failure> {
    let config = backend::load(global)?;
    if backend::is_local(&config) {
        return Err(backend::local_has_no_users("create user"));
    }
    let password = if u.password_stdin {
        term::read_secret("", true)?
    } else {
        let first = term::read_secret("Enter your password: ", false)?;
        let again = term::read_secret("Re-enter your password for verification: ", false)?;
        if first != again {
            return Err(Failure::new(USAGE, "the passwords do not match"));
        }
        eprintln!("Password verified successfully!");
        first
    };
    let client = crate::api::ApiClient::from_config(&config, global)?;
    let rt = super::runtime()?;
    let body = json!({ "name": u.name, "password": password });
    let created = rt.block_on(client.call(Method::POST, "/api/v1/users", Some(&body)))?;
    if global.raw {
        print_json(&without_secrets(created));
    } else {
        outln!("Successfully created user");
        outln!("Name:   {}", u.name);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bodies

fn put(m: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        m.insert(key.to_owned(), v.into());
    }
}

fn put_list(m: &mut Map<String, Value>, key: &str, v: Vec<String>) {
    if !v.is_empty() {
        m.insert(key.to_owned(), json!(v));
    }
}

fn meta_body(name: String, meta: MetaArgs) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    put(&mut m, "description", meta.description);
    put_list(&mut m, "tags", meta.tags);
    m
}

fn repository_body(r: CreateRepository) -> Value {
    let mut m = meta_body(r.name, r.meta);
    m.insert("url".into(), json!(r.url));
    put(&mut m, "reference", r.reference);
    put(&mut m, "private-key-name", r.private_key_name);
    put(&mut m, "username", r.username);
    put(&mut m, "password-name", r.password_name);
    Value::Object(m)
}

fn service_body(kind: ServiceKind) -> Result<Value, Failure> {
    let (name, common, service_type) = match &kind {
        ServiceKind::PythonScript { name, common, .. } => (name, common, "python-script"),
        ServiceKind::AnsiblePlaybook { name, common, .. } => (name, common, "ansible-playbook"),
        ServiceKind::OpentofuPlan { name, common, .. } => (name, common, "opentofu-plan"),
        ServiceKind::Executable { name, common, .. } => (name, common, "executable"),
    };
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("type".into(), json!(service_type));
    put(&mut m, "description", common.meta.description.clone());
    put_list(&mut m, "tags", common.meta.tags.clone());
    put(&mut m, "repository", common.repository.clone());
    put(&mut m, "working-directory", common.working_dir.clone());
    put(&mut m, "decorator", common.decorator.clone());
    if !common.env.is_empty() {
        m.insert("env".into(), json!(pairs("--env", &common.env)?));
    }
    if !common.secrets.is_empty() {
        let refs = common
            .secrets
            .iter()
            .map(|s| secret_ref(s))
            .collect::<Result<Vec<_>, _>>()?;
        m.insert("secrets".into(), Value::Array(refs));
    }
    put(&mut m, "registry", common.registry.clone());
    put(
        &mut m,
        "executable-object",
        common.executable_object.clone(),
    );
    put(&mut m, "timeout", common.timeout);
    put(&mut m, "retries", common.retries);
    if !common.runner_labels.is_empty() {
        m.insert(
            "runner-labels".into(),
            json!(pairs("--runner-label", &common.runner_labels)?),
        );
    }
    match kind {
        ServiceKind::PythonScript {
            filename, req_file, ..
        } => {
            put(&mut m, "filename", filename);
            put(&mut m, "req-file", req_file);
        }
        ServiceKind::AnsiblePlaybook {
            playbooks,
            inventory,
            extra_vars,
            extra_vars_file,
            ..
        } => {
            put_list(&mut m, "playbooks", playbooks);
            put(&mut m, "inventory", inventory);
            put_list(&mut m, "extra-vars", extra_vars);
            put(&mut m, "extra-vars-file", extra_vars_file);
        }
        ServiceKind::OpentofuPlan {
            vars,
            var_files,
            backend_config,
            ..
        } => {
            put_list(&mut m, "vars", vars);
            put_list(&mut m, "var-files", var_files);
            put_list(&mut m, "backend-config", backend_config);
        }
        ServiceKind::Executable {
            filename,
            arg_format,
            ..
        } => {
            put(&mut m, "filename", filename);
            put(&mut m, "arg-format", arg_format);
        }
    }
    Ok(Value::Object(m))
}

/// Repeated `K=V` flag values as a map (split at the first `=`; a later key wins).
fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut map = BTreeMap::new();
    for e in items {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| Failure::new(USAGE, format!("{flag} {e:?}: expected KEY=VALUE")))?;
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

/// `--secret name=<secret>,type=env,target=<VAR>`; `type` defaults to `env`.
fn secret_ref(spec: &str) -> Result<Value, Failure> {
    let bad = |why: String| {
        Failure::new(
            USAGE,
            format!("--secret {spec:?}: {why} (expected name=<secret>,type=env,target=<VAR>)"),
        )
    };
    let mut name = None;
    let mut ty = None;
    let mut target = None;
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
        let slot = match k.trim() {
            "name" => &mut name,
            "type" => &mut ty,
            "target" => &mut target,
            other => return Err(bad(format!("unknown key {other:?}"))),
        };
        if slot.replace(v.trim().to_owned()).is_some() {
            return Err(bad(format!("{} given twice", k.trim())));
        }
    }
    let name = name.ok_or_else(|| bad("name is missing".into()))?;
    let target = target.ok_or_else(|| bad("target is missing".into()))?;
    Ok(json!({ "name": name, "type": ty.unwrap_or_else(|| "env".into()), "target": target }))
}

fn decorator_body(d: CreateDecorator) -> Result<Value, Failure> {
    let schema = json_arg("--schema", &d.schema)?;
    let mut m = meta_body(d.name, d.meta);
    m.insert("schema".into(), schema);
    Ok(Value::Object(m))
}

/// A JSON flag value, inline or `@file`; errors name the flag (and file) and the position.
pub fn json_arg(flag: &str, raw: &str) -> Result<Value, Failure> {
    let (text, origin) = match raw.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Failure::new(USAGE, format!("{flag} @{path}: {e}")))?,
            format!("{flag} @{path}"),
        ),
        None => (raw.to_owned(), flag.to_owned()),
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::new(USAGE, format!("{origin} is not valid JSON: {e}")))
}

fn secret_body(s: CreateSecret) -> Result<Value, Failure> {
    let value = match s.value {
        Some(v) if !s.prompt_value => v,
        _ => term::read_secret("Enter secret value: ", false)?,
    };
    let mut m = meta_body(s.name, s.meta);
    m.insert("value".into(), json!(value));
    Ok(Value::Object(m))
}

fn exec_object_body(e: CreateExecutableObject) -> Value {
    let mut m = meta_body(e.name, e.meta);
    m.insert(
        "exec-command".into(),
        json!(e.exec_command.to_string_lossy()),
    );
    Value::Object(m)
}

fn registry_body(r: CreateRegistry) -> Value {
    let mut m = meta_body(r.name, r.meta);
    let ty = match r.registry_type {
        RegistryType::Pypi => "pypi",
        RegistryType::AnsibleGalaxy => "ansible-galaxy",
    };
    m.insert("type".into(), json!(ty));
    m.insert("url".into(), json!(r.url));
    put(&mut m, "username", r.username);
    put(&mut m, "password-name", r.password_name);
    put(&mut m, "token-name", r.token_name);
    m.insert("default".into(), json!(r.default));
    m.insert("insecure".into(), json!(r.insecure));
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Output

pub fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A user as the API returns it, minus anything credential-like it might carry.
fn without_secrets(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|k, _| !matches!(k.as_str(), "password" | "password_hash" | "api_key"));
    }
    v
}

/// The first of several field spellings that is present (users' fields come from the API).
fn field<'a>(v: &'a Value, names: &[&str]) -> &'a Value {
    names
        .iter()
        .map(|n| &v[*n])
        .find(|x| !x.is_null())
        .unwrap_or(&Value::Null)
}

fn list_table(target: Target, items: &[Value]) -> String {
    let s = |v: &Value, k: &str| term::text(&v[k]);
    let (headers, rows): (&[&str], Vec<Vec<String>>) = match target {
        Target::Kind(Kind::Service) => (
            &["NAME", "TYPE", "CREATED"],
            items
                .iter()
                .map(|v| vec![s(v, "name"), s(v, "type"), term::utc(&v["created"])])
                .collect(),
        ),
        Target::Kind(Kind::Repository) => (
            &["NAME", "URL", "REFERENCE", "CREATED"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "name"),
                        s(v, "url"),
                        or_dash(s(v, "reference")),
                        term::utc(&v["created"]),
                    ]
                })
                .collect(),
        ),
        Target::Kind(Kind::ExecutableObject) => (
            &["NAME", "EXEC COMMAND", "CREATED"],
            items
                .iter()
                .map(|v| vec![s(v, "name"), s(v, "exec-command"), term::utc(&v["created"])])
                .collect(),
        ),
        Target::Kind(Kind::Registry) => (
            &["NAME", "TYPE", "URL", "DEFAULT", "CREATED"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "name"),
                        s(v, "type"),
                        s(v, "url"),
                        s(v, "default"),
                        term::utc(&v["created"]),
                    ]
                })
                .collect(),
        ),
        Target::Kind(Kind::Decorator | Kind::Secret) => (
            &["NAME", "DESCRIPTION", "CREATED"],
            items
                .iter()
                .map(|v| vec![s(v, "name"), s(v, "description"), term::utc(&v["created"])])
                .collect(),
        ),
        Target::User => (
            &["NAME", "CREATED", "LAST LOGIN"],
            items
                .iter()
                .map(|v| {
                    vec![
                        term::text(field(v, &["name", "username"])),
                        term::utc(field(v, &["created", "created_at"])),
                        term::utc(field(v, &["last_login", "last-login", "last_login_at"])),
                    ]
                })
                .collect(),
        ),
    };
    term::table(headers, &rows)
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

fn describe_text(target: Target, v: &Value, tz: &jiff::tz::TimeZone) -> String {
    let s = |k: &str| term::text(&v[k]);
    let time = |k: &str| match v[k].as_str() {
        Some(t) => term::show_time(t, tz),
        None => String::new(),
    };
    let mut lines: Vec<(&str, String)> = vec![("Name", s("name"))];
    let optional = |lines: &mut Vec<(&'static str, String)>, label: &'static str, k: &str| {
        let t = term::text(&v[k]);
        if !t.is_empty() {
            lines.push((label, t));
        }
    };
    match target {
        Target::Kind(Kind::Service) => {
            // The family's lines first, in its order; then what the type adds, when set.
            lines.push(("Repo Name", s("repository")));
            lines.push(("Working Dir", s("working-directory")));
            lines.push(("Vars", s("vars")));
            lines.push(("Var Files", s("var-files")));
            lines.push(("Decorator", s("decorator")));
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
            lines.push(("Type", s("type")));
            optional(&mut lines, "Filename", "filename");
            optional(&mut lines, "Req File", "req-file");
            optional(&mut lines, "Playbooks", "playbooks");
            optional(&mut lines, "Inventory", "inventory");
            optional(&mut lines, "Extra Vars", "extra-vars");
            optional(&mut lines, "Extra Vars File", "extra-vars-file");
            optional(&mut lines, "Backend Config", "backend-config");
            optional(&mut lines, "Arg Format", "arg-format");
            optional(&mut lines, "Executable Object", "executable-object");
            optional(&mut lines, "Registry", "registry");
            optional(&mut lines, "Env", "env");
            if let Some(refs) = v["secrets"].as_array() {
                let t: Vec<String> = refs
                    .iter()
                    .map(|r| {
                        format!(
                            "name={},type={},target={}",
                            term::text(&r["name"]),
                            term::text(&r["type"]),
                            term::text(&r["target"])
                        )
                    })
                    .collect();
                lines.push(("Secrets", t.join(", ")));
            }
            optional(&mut lines, "Timeout", "timeout");
            optional(&mut lines, "Retries", "retries");
            optional(&mut lines, "Runner Labels", "runner-labels");
        }
        Target::Kind(Kind::Repository) => {
            lines.push(("URL", s("url")));
            lines.push(("Reference", s("reference")));
            optional(&mut lines, "Private Key Name", "private-key-name");
            optional(&mut lines, "Username", "username");
            optional(&mut lines, "Password Name", "password-name");
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
        }
        Target::Kind(Kind::Decorator) => {
            // The schema last, as an indented JSON document under its label.
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
            lines.push(("Created", time("created")));
            lines.push(("Updated", time("updated")));
            lines.push(("Schema", String::new()));
            let mut out = term::block(&lines);
            let schema = serde_json::to_string_pretty(&v["schema"]).unwrap_or_default();
            for l in schema.lines() {
                out.push_str("  ");
                out.push_str(l);
                out.push('\n');
            }
            return out;
        }
        Target::Kind(Kind::Secret) => {
            // Metadata only: the value never leaves the node.
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
        }
        Target::Kind(Kind::ExecutableObject) => {
            lines.push(("Exec Command", s("exec-command")));
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
        }
        Target::Kind(Kind::Registry) => {
            lines.push(("Type", s("type")));
            lines.push(("URL", s("url")));
            lines.push(("Default", s("default")));
            lines.push(("Insecure", s("insecure")));
            optional(&mut lines, "Username", "username");
            optional(&mut lines, "Password Name", "password-name");
            optional(&mut lines, "Token Name", "token-name");
            lines.push(("Description", s("description")));
            lines.push(("Tags", s("tags")));
        }
        Target::User => {
            lines[0] = ("Name", term::text(field(v, &["name", "username"])));
            let at = |names: &[&str]| match field(v, names).as_str() {
                Some(t) => term::show_time(t, tz),
                None => String::new(),
            };
            lines.push(("Created", at(&["created", "created_at"])));
            lines.push((
                "Last Login",
                at(&["last_login", "last-login", "last_login_at"]),
            ));
            return term::block(&lines);
        }
    }
    lines.push(("Created", time("created")));
    lines.push(("Updated", time("updated")));
    term::block(&lines)
}

/// `describe service --raw` also carries the family's `metadata` object (scripts read
/// `.metadata.repository.name`), next to the resource's own fields.
fn with_metadata(mut v: Value) -> Value {
    let repo = match v["repository"].as_str() {
        Some(r) => json!({ "name": r }),
        None => Value::Null,
    };
    let metadata = json!({
        "name": v["name"],
        "type": v["type"],
        "description": v.get("description").cloned().unwrap_or(json!("")),
        "tags": v.get("tags").cloned().unwrap_or(json!([])),
        "created": v["created"],
        "updated": v["updated"],
        "working_directory": v["working-directory"],
        "decorator": v["decorator"],
        "repository": repo,
    });
    if let Value::Object(m) = &mut v {
        m.insert("metadata".into(), metadata);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs() {
        assert_eq!(
            secret_ref("name=tok,type=env,target=TOKEN").ok(),
            Some(json!({"name": "tok", "type": "env", "target": "TOKEN"}))
        );
        assert_eq!(
            secret_ref("name=tok,target=TOKEN").ok(),
            Some(json!({"name": "tok", "type": "env", "target": "TOKEN"}))
        );
        assert!(secret_ref("name=tok").is_err());
        assert!(secret_ref("name=tok,target=A,color=red").is_err());
        assert!(secret_ref("tok").is_err());
    }
}
