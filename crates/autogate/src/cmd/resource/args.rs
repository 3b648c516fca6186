//! The grammar of `create|get|describe|delete`: the nouns and flags as clap parses them, and
//! the [`Target`] (a resource kind, or users) that a noun names. Nothing here builds a request
//! or prints: see `request` and `render`.

use std::path::PathBuf;

use autogate_resources::model::Kind;
use clap::{Args, Subcommand, ValueEnum};

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
        /// Template of the arguments per input (default `--{{.Key}}={{.Value}}`; a value
        /// starting with `-` may not be an argument of its own).
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
    /// What the user may do: admin (users, HA control, every resource, secrets), operator
    /// (run services, read everything but secrets' values) or viewer (read). Default: operator.
    #[arg(long, value_name = "ROLE")]
    pub role: Option<autogate_automation::api_types::Role>,
    /// The password is temporary: the user must change it at its first login (`autogate
    /// login` asks for a new one) and gets no API key before.
    #[arg(long)]
    pub temp_password: bool,
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
    /// `get services` only: list the services of this type (repeat for several).
    #[arg(long = "type", value_name = "TYPE", value_enum)]
    pub types: Vec<ServiceTypeArg>,
}

/// A service type, as `get services --type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceTypeArg {
    PythonScript,
    AnsiblePlaybook,
    OpentofuPlan,
    Executable,
}

impl ServiceTypeArg {
    /// The name a service's `type` field carries.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceTypeArg::PythonScript => "python-script",
            ServiceTypeArg::AnsiblePlaybook => "ansible-playbook",
            ServiceTypeArg::OpentofuPlan => "opentofu-plan",
            ServiceTypeArg::Executable => "executable",
        }
    }
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
pub(super) enum Target {
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
