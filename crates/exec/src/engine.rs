//! The engine: one service run from inputs to [`RunResult`].
//!
//! Order of a run: validate the inputs against the decorator and the service definition
//! against its type, find the binary the type needs — all before touching the network, so a
//! bad request fails fast and runs nothing — then check the repository out (cached by commit),
//! copy it into a private workspace, resolve every path of the definition inside it, build or
//! reuse the venv (python-script), run, and discard the workspace.
//!
//! With a service user ([`EngineConfig::service_user`], see [`crate::user`]) every program that
//! executes service code runs as that user, in a workspace it owns, with `HOME` there; git runs
//! as the node (it holds the deploy keys and known hosts, and runs no service code). The engine's
//! directories are then `repos/` 0700 (no run reads another service's checkout), `runs/` and
//! `venvs/` 0711 (a run reaches its own workspace and venv by name, and can list neither), and
//! the node never reads or writes through a path a run could have changed: the state an
//! OpenTofu run leaves is opened without following links and only when the user owns it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checkout::{resolve_inside, CheckoutCache, HostKeyPolicy, Repository};
use crate::error::ExecError;
use crate::galaxy::{GalaxyCache, GalaxyServer};
use crate::inputs::{self, ArgFormat, Decorator, Inputs};
use crate::runner::{self, run_process, ProcessSpec, RunResult, DEFAULT_OUTPUT_LIMIT};
use crate::user::{ServiceUser, ServiceUserError};
use crate::venv::{PipIndex, VenvCache, VenvOptions};

/// Decrypted secrets for one run: environment variable name → value. Injected into the
/// program's environment and masked in its output.
pub type Secrets = BTreeMap<String, String>;

/// The four service types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceType {
    /// `python <filename> --k=v …` in a venv built from the requirement file.
    PythonScript,
    /// `ansible-playbook -i <inventory> <playbook>… --extra-vars <json>`.
    AnsiblePlaybook,
    /// `tofu init` then `tofu apply|destroy -auto-approve -var k=v …`.
    OpentofuPlan,
    /// `<executable> [filename] <args per --arg-format>`.
    Executable,
}

impl ServiceType {
    /// The family's name (`python-script`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PythonScript => "python-script",
            Self::AnsiblePlaybook => "ansible-playbook",
            Self::OpentofuPlan => "opentofu-plan",
            Self::Executable => "executable",
        }
    }
}

/// A service as the engine needs it (the resource layer maps its records onto this).
///
/// Every path is relative to the checkout: `working_dir` to its root, the others to
/// `working_dir`. Fields that do not apply to the service's type are ignored.
#[derive(Clone)]
pub struct Service {
    /// Service name (for messages).
    pub name: String,
    /// Its type.
    pub service_type: ServiceType,
    /// Where the code comes from; `None` = run in an empty workspace (executables).
    pub repository: Option<Repository>,
    /// Subdirectory of the checkout to run in.
    pub working_dir: Option<String>,
    /// python-script: the script (required); executable: a file passed as first argument.
    pub filename: Option<String>,
    /// python-script: requirement file (`requirements.txt` style or `pyproject.toml`);
    /// `None` = [`EngineConfig::requirements_file`] when present, else the bare interpreter.
    /// ansible-playbook: replaces `requirements.yml` when it ends in `.yml`/`.yaml`, else
    /// `requirements.txt`.
    pub req_file: Option<String>,
    /// ansible-playbook: playbooks, run in order (required).
    pub playbooks: Vec<String>,
    /// ansible-playbook: inventory file (the first `-i`; [`AnsibleOptions::inventories`] follow).
    pub inventory: Option<String>,
    /// ansible-playbook: the options of the family's runtime block.
    pub ansible: AnsibleOptions,
    /// ansible-playbook: `k=v` or JSON-object entries, overlaid by the run inputs.
    pub extra_vars: Vec<String>,
    /// ansible-playbook: a vars file passed as `--extra-vars @file`.
    pub extra_vars_file: Option<String>,
    /// opentofu-plan: `k=v` variables.
    pub vars: Vec<String>,
    /// opentofu-plan: var files.
    pub var_files: Vec<String>,
    /// opentofu-plan: `k=v` entries for `tofu init -backend-config`.
    pub backend_config: Vec<String>,
    /// opentofu-plan: the action of a run that names none (`None` = apply).
    pub tofu_action: Option<TofuAction>,
    /// opentofu-plan: the state file, relative to `working_dir` (`None` = `terraform.tfstate`).
    pub tofu_state_file: Option<String>,
    /// The executable-object: for executable services the program (required); otherwise an
    /// override of the binary (python interpreter, `ansible-playbook`, `tofu`).
    pub executable: Option<PathBuf>,
    /// executable: Go-template-like argument format (default `--{{.Key}}={{.Value}}`).
    pub arg_format: Option<String>,
    /// Environment variables for the program.
    pub env: BTreeMap<String, String>,
    /// Run limit; `None` = the engine's default.
    pub timeout: Option<Duration>,
    /// Decorator (JSON Schema) the inputs must satisfy.
    pub decorator: Option<serde_json::Value>,
    /// python-script, ansible-playbook: the package index of its venv (`requirements.txt`);
    /// `None` = pip's own configuration.
    pub pip_index: Option<PipIndex>,
    /// ansible-playbook: the Galaxy server of its `requirements.yml`; `None` = `ansible-galaxy`'s
    /// own configuration.
    pub galaxy_server: Option<GalaxyServer>,
}

impl std::fmt::Debug for Service {
    // `env` values may carry credentials users put there: names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("service_type", &self.service_type)
            .field("repository", &self.repository)
            .field("working_dir", &self.working_dir)
            .field("filename", &self.filename)
            .field("executable", &self.executable)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service of `service_type` with every optional field empty.
    pub fn new(name: impl Into<String>, service_type: ServiceType) -> Self {
        Self {
            name: name.into(),
            service_type,
            repository: None,
            working_dir: None,
            filename: None,
            req_file: None,
            playbooks: Vec::new(),
            inventory: None,
            ansible: AnsibleOptions::default(),
            extra_vars: Vec::new(),
            extra_vars_file: None,
            vars: Vec::new(),
            var_files: Vec::new(),
            backend_config: Vec::new(),
            tofu_action: None,
            tofu_state_file: None,
            executable: None,
            arg_format: None,
            env: BTreeMap::new(),
            timeout: None,
            decorator: None,
            pip_index: None,
            galaxy_server: None,
        }
    }
}

/// ansible-playbook options beyond playbooks and variables: the family's `runtime` block.
/// Each one reaches `ansible-playbook` as its own option (see [`AnsibleOptions::args`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnsibleOptions {
    /// More inventories, after [`Service::inventory`]: one `-i` each, in order.
    pub inventories: Vec<String>,
    /// `--check`: a dry run, nothing on the targets changes.
    pub check: bool,
    /// `--diff`.
    pub diff: bool,
    /// `--tags`.
    pub tags: Vec<String>,
    /// `--skip-tags`.
    pub skip_tags: Vec<String>,
    /// `--limit` (host patterns).
    pub limit: Vec<String>,
    /// `--forks`.
    pub forks: Option<u32>,
    /// The number of `-v` (at most 6).
    pub verbosity: u8,
    /// An `ansible.cfg` relative to the working directory, given as `ANSIBLE_CONFIG`: the
    /// variable is the only way to name a configuration file, and it wins over every other
    /// place Ansible looks (the working directory's own `ansible.cfg` included).
    pub config_file: Option<String>,
}

impl AnsibleOptions {
    /// The options, in `--name=value` form so a value can never be read as an option of its
    /// own; lists are joined with commas, as `ansible-playbook` reads them.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.check {
            args.push("--check".to_owned());
        }
        if self.diff {
            args.push("--diff".to_owned());
        }
        for (name, list) in [
            ("--tags", &self.tags),
            ("--skip-tags", &self.skip_tags),
            ("--limit", &self.limit),
        ] {
            if !list.is_empty() {
                args.push(format!("{name}={}", list.join(",")));
            }
        }
        if let Some(f) = self.forks {
            args.push(format!("--forks={f}"));
        }
        if self.verbosity > 0 {
            args.push(format!(
                "-{}",
                "v".repeat(usize::from(self.verbosity.min(6)))
            ));
        }
        args
    }
}

/// OpenTofu action of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TofuAction {
    /// `tofu apply`.
    #[default]
    Apply,
    /// `tofu destroy`.
    Destroy,
    /// `tofu plan`: shows what apply would change, changes nothing.
    Plan,
}

/// Per-run options beyond the inputs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// opentofu-plan: apply or destroy.
    pub tofu_action: TofuAction,
    /// opentofu-plan: state to start from (written as `terraform.tfstate` before `init`).
    pub tofu_state: Option<serde_json::Value>,
    /// Bytes for the program's standard input (e.g. `{"inventory_nodes": …}`).
    pub stdin: Option<Vec<u8>>,
}

/// The requirement file of a python-script service that names none, unless configured.
pub const DEFAULT_REQUIREMENTS_FILE: &str = "requirements.txt";

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of the caches and workspaces: `repos/`, `venvs/`, `runs/` below it.
    pub work_dir: PathBuf,
    /// Per-stream output capture limit.
    pub output_limit: usize,
    /// Run limit of services without their own.
    pub default_timeout: Option<Duration>,
    /// venv building.
    pub venv: VenvOptions,
    /// python-script: the requirement file looked up in the working directory of a service
    /// that names none (`[python-script] requirements_file`; `requirements.txt` or
    /// `pyproject.toml`).
    pub requirements_file: String,
    /// SSH host key checking for repositories.
    pub host_keys: HostKeyPolicy,
    /// The OS user service code runs as: `None` = the node's own user; `Some(Err)` = one was
    /// configured but cannot be used, and every run fails with that error rather than run as
    /// the node.
    pub service_user: Option<Result<ServiceUser, ServiceUserError>>,
}

impl EngineConfig {
    /// Defaults under `work_dir`: 16 MiB per stream, one hour per run.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            default_timeout: Some(Duration::from_secs(3600)),
            venv: VenvOptions::default(),
            requirements_file: DEFAULT_REQUIREMENTS_FILE.to_owned(),
            host_keys: HostKeyPolicy::default(),
            service_user: None,
        }
    }
}

/// Runs services. Cheap to share (`Arc`) between concurrent runs; the caches it holds are
/// safe under concurrent use, also across processes sharing `work_dir`.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    checkouts: CheckoutCache,
    venvs: VenvCache,
    galaxy: GalaxyCache,
    /// The usable service user, when one is configured.
    user: Option<ServiceUser>,
    /// Set once the directories a service user needs are in place.
    prepared: tokio::sync::OnceCell<()>,
}

/// What the program of a run is, once everything is resolved.
struct Plan {
    program: PathBuf,
    args: Vec<String>,
}

impl Engine {
    /// An engine over `cfg.work_dir` (created on first use).
    pub fn new(cfg: EngineConfig) -> Self {
        let checkouts =
            CheckoutCache::new(cfg.work_dir.join("repos")).with_host_keys(cfg.host_keys.clone());
        let user = cfg.service_user.clone().and_then(Result::ok);
        let venvs =
            VenvCache::new(cfg.work_dir.join("venvs"), cfg.venv.clone()).with_user(user.clone());
        let galaxy = GalaxyCache::new(cfg.work_dir.join("galaxy")).with_user(user.clone());
        Self {
            cfg,
            checkouts,
            venvs,
            galaxy,
            user,
            prepared: tokio::sync::OnceCell::new(),
        }
    }

    /// Readies the directories a service user needs (see the module) and checks the user can
    /// reach them; a node calls it at start so that a mistake stops it there. Without a service
    /// user there is nothing to do; with an unusable one it is the error every run would get.
    pub async fn prepare(&self) -> Result<(), ExecError> {
        let user = match &self.cfg.service_user {
            None => return Ok(()),
            Some(Err(e)) => return Err(ExecError::ServiceUser(e.clone())),
            Some(Ok(u)) => u.clone(),
        };
        let root = self.cfg.work_dir.clone();
        self.prepared
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    for (dir, mode) in [
                        (root.clone(), 0o711),
                        (root.join("repos"), 0o700),
                        (root.join("runs"), 0o711),
                        (root.join("venvs"), 0o711),
                        (root.join("venvs/store"), 0o711),
                    ] {
                        crate::user::dir_with_mode(&dir, mode).map_err(|e| {
                            ExecError::io(format!("setting the mode of {}", dir.display()), e)
                        })?;
                    }
                    user.check_reachable(&root.join("runs"))?;
                    user.check_reachable(&root.join("venvs/store"))?;
                    Ok::<(), ExecError>(())
                })
                .await
                .map_err(|e| {
                    ExecError::io("engine directories", std::io::Error::other(e.to_string()))
                })?
            })
            .await
            .map(|_| ())
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Runs `service` with `inputs` and `secrets`; see [`Engine::run_with`].
    pub async fn run(
        &self,
        service: &Service,
        inputs: &Inputs,
        secrets: &Secrets,
        cancel: &CancellationToken,
    ) -> Result<RunResult, ExecError> {
        self.run_with(service, inputs, secrets, cancel, &RunOptions::default())
            .await
    }

    /// Runs `service`. `Err` means it could not run (bad inputs, bad definition, checkout,
    /// missing binary, venv, cancellation); a non-zero exit or a timeout is an `Ok` result.
    pub async fn run_with(
        &self,
        service: &Service,
        inputs: &Inputs,
        secrets: &Secrets,
        cancel: &CancellationToken,
        opts: &RunOptions,
    ) -> Result<RunResult, ExecError> {
        // 1. Everything that needs no I/O: inputs, definition, binary.
        let decorator = service.decorator.clone().map(Decorator::new).transpose()?;
        if let Some(d) = &decorator {
            d.validate(inputs)?;
        }
        // Input names become option or variable names: never options or expressions of their
        // own, nor a variable that reconfigures Ansible.
        let bad_keys =
            inputs::key_violations(service.service_type == ServiceType::AnsiblePlaybook, inputs);
        if !bad_keys.is_empty() {
            return Err(ExecError::InvalidInputs {
                violations: bad_keys,
            });
        }
        let search_path = service
            .env
            .get("PATH")
            .cloned()
            .or_else(|| runner::minimal_env().remove("PATH"))
            .unwrap_or_default();
        let binary = self.binary(service, &search_path)?;
        // Rendered now, so that a value refused as an option fails the run before any I/O.
        let exec_args = match service.service_type {
            ServiceType::Executable => ArgFormat::parse(
                service
                    .arg_format
                    .as_deref()
                    .unwrap_or(inputs::DEFAULT_ARG_FORMAT),
            )?
            .render(inputs)?,
            _ => Vec::new(),
        };
        let extra_vars = match service.service_type {
            ServiceType::AnsiblePlaybook => inputs::ansible_vars_file(&service.extra_vars, inputs)?,
            _ => None,
        };

        // 2. Code.
        self.prepare().await?;
        let user = self.user.as_ref();
        let checkout = match &service.repository {
            Some(r) => Some(self.checkouts.checkout(r, cancel).await?),
            None => None,
        };
        let ws =
            CheckoutCache::workspace_for(checkout.as_ref(), &self.cfg.work_dir.join("runs"), user)
                .await?;
        let root = ws.path();
        let wd = service
            .working_dir
            .as_deref()
            .filter(|w| !w.is_empty())
            .unwrap_or(".");
        let cwd = resolve_inside(root, wd, "working_dir")?;
        if !cwd.is_dir() {
            return Err(ExecError::InvalidService {
                reason: format!("working_dir {wd:?} is not a directory"),
            });
        }
        // Paths of the definition are relative to the working directory but must stay in the
        // checkout.
        let inside = |rel: &str, field: &str| -> Result<PathBuf, ExecError> {
            let p = Path::new(wd).join(rel);
            resolve_inside(root, &p.to_string_lossy(), field).map_err(|e| match e {
                ExecError::PathOutside { field, .. } => ExecError::PathOutside {
                    field,
                    path: rel.to_owned(),
                },
                ExecError::NotFound { field, .. } => ExecError::NotFound {
                    field,
                    path: rel.to_owned(),
                },
                other => other,
            })
        };

        // 3. The program and its arguments.
        let mut env = BTreeMap::new();
        if user.is_some() {
            // The node's HOME is not the user's to write (Ansible keeps ~/.ansible/tmp there);
            // the service's own HOME, if it sets one, still wins.
            env.insert("HOME".to_owned(), root.to_string_lossy().into_owned());
        }
        env.extend(service.env.clone());
        env.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut mask: Vec<String> = secrets.values().cloned().collect();
        if let Some(c) = service
            .repository
            .as_ref()
            .and_then(|r| r.credentials.as_ref())
        {
            mask.extend(c.secret_values());
        }
        if let Some(index) = &service.pip_index {
            mask.extend(index.secret_values());
        }
        if let Some(server) = &service.galaxy_server {
            mask.extend(server.secret_values());
        }
        let timeout = service.timeout.or(self.cfg.default_timeout);
        let spec = |plan: Plan, timeout: Option<Duration>| {
            let mut s = ProcessSpec::new(plan.program, &cwd);
            s.args = plan.args.into_iter().map(Into::into).collect();
            s.env = env.clone();
            s.timeout = timeout;
            s.output_limit = self.cfg.output_limit;
            s.mask = mask.clone();
            s.stdin = opts.stdin.clone();
            s.user = self.user.clone();
            s
        };

        // Set when this run built its Python environment: reported beside the program's time.
        let mut env_build = None;
        // ansible-playbook: the inputs' vars file, removed when the run is over.
        let mut vars_file = None;
        // python-script: the venv's pin against the pruner, held until the program is done.
        let mut venv_in_use = None;
        // ansible-playbook: the service's `ansible.cfg`, set as ANSIBLE_CONFIG.
        let mut ansible_config: Option<PathBuf> = None;
        // ansible-playbook: where its dependencies are (Galaxy paths, PYTHONPATH).
        let mut deps_env = BTreeMap::new();
        // ansible-playbook: the venv of its requirements.txt, held until the program is done.
        let mut ansible_venv = None;
        // ansible-playbook: its Galaxy dependencies' pin against the pruner, held likewise.
        let mut galaxy_in_use = None;
        let plan = match service.service_type {
            ServiceType::PythonScript => {
                let filename = required(service.filename.as_deref(), "filename", service)?;
                let script = inside(filename, "filename")?;
                let req = match service.req_file.as_deref() {
                    Some(r) => Some(inside(r, "req_file")?),
                    // The default file is resolved like any other path: a `requirements.txt`
                    // that is a symlink out of the checkout is refused, not read.
                    None => match inside(&self.cfg.requirements_file, "req_file") {
                        Ok(p) => Some(p).filter(|p| p.is_file()),
                        Err(ExecError::NotFound { .. }) => None,
                        Err(e) => return Err(e),
                    },
                };
                let python = match req {
                    Some(req) => {
                        let venv = self
                            .venvs
                            .ensure_with(&binary, &req, service.pip_index.as_ref(), cancel)
                            .await?;
                        env_build = venv.build_time;
                        venv_in_use = venv.in_use;
                        venv.python
                    }
                    None => binary,
                };
                let mut args = vec![script.to_string_lossy().into_owned()];
                args.extend(inputs::python_args(decorator.as_ref(), inputs));
                Plan {
                    program: python,
                    args,
                }
            }
            ServiceType::Executable => {
                let mut args = Vec::new();
                if let Some(f) = service.filename.as_deref() {
                    args.push(inside(f, "filename")?.to_string_lossy().into_owned());
                }
                args.extend(exec_args);
                Plan {
                    program: binary,
                    args,
                }
            }
            ServiceType::AnsiblePlaybook => {
                if service.playbooks.is_empty() {
                    return Err(ExecError::InvalidService {
                        reason: format!(
                            "ansible-playbook service {:?} has no playbook",
                            service.name
                        ),
                    });
                }
                // The playbook's dependencies, installed as the family does at run time: the
                // Galaxy collections and roles of `requirements.yml`, and the Python packages
                // of `requirements.txt` (which may pin Ansible itself).
                // A `req-file` the service names replaces the default file of its kind (a
                // `.yml`/`.yaml` one is Galaxy's) and must exist.
                let named = service.req_file.as_deref().filter(|f| !f.is_empty());
                let is_galaxy = |f: &str| f.ends_with(".yml") || f.ends_with(".yaml");
                let galaxy_req = match named {
                    Some(f) if is_galaxy(f) => Some(inside(f, "req_file")?),
                    _ => optional_file(&inside, "requirements.yml")?,
                };
                let pip_req = match named {
                    Some(f) if !is_galaxy(f) => Some(inside(f, "req_file")?),
                    _ => optional_file(&inside, "requirements.txt")?,
                };
                let mut program = binary;
                if let Some(req) = galaxy_req {
                    let galaxy = galaxy_binary(&program, &search_path)?;
                    let mut genv = service.env.clone();
                    if user.is_some() {
                        genv.insert("HOME".to_owned(), root.to_string_lossy().into_owned());
                    }
                    let deps = self
                        .galaxy
                        .ensure(
                            &galaxy,
                            &req,
                            &cwd,
                            service.galaxy_server.as_ref(),
                            &genv,
                            cancel,
                        )
                        .await?;
                    deps_env.extend(deps.env(&service.env));
                    env_build = add_time(env_build, deps.build_time);
                    galaxy_in_use = deps.in_use;
                }
                if let Some(req) = pip_req {
                    let python = crate::which("python3", &search_path).ok_or_else(|| {
                        ExecError::BinaryNotFound {
                            binary: "python3".to_owned(),
                            path: search_path.clone(),
                        }
                    })?;
                    let venv = self
                        .venvs
                        .ensure_with(&python, &req, service.pip_index.as_ref(), cancel)
                        .await?;
                    env_build = add_time(env_build, venv.build_time);
                    let own = venv.path.join("bin").join("ansible-playbook");
                    if service.executable.is_none() && own.is_file() {
                        // The requirements install Ansible: that one runs the playbook.
                        program = own;
                    } else {
                        // The node's Ansible, with the packages importable by it and by the
                        // modules it runs locally.
                        let mut paths = site_packages(&venv.path);
                        paths.extend(service.env.get("PYTHONPATH").cloned());
                        deps_env.insert("PYTHONPATH".to_owned(), paths.join(":"));
                    }
                    ansible_venv = Some(venv);
                }
                let mut args = Vec::new();
                // Every inventory of the definition is used, each with its own `-i`.
                for i in service.inventory.iter().chain(&service.ansible.inventories) {
                    args.push("-i".to_owned());
                    args.push(inside(i, "inventory")?.to_string_lossy().into_owned());
                }
                if let Some(c) = service.ansible.config_file.as_deref() {
                    ansible_config = Some(inside(c, "config_file")?);
                }
                args.extend(service.ansible.args());
                for p in &service.playbooks {
                    args.push(inside(p, "playbook")?.to_string_lossy().into_owned());
                }
                if let Some(f) = service.extra_vars_file.as_deref() {
                    args.push("--extra-vars".to_owned());
                    args.push(format!("@{}", inside(f, "extra_vars_file")?.display()));
                }
                if let Some(text) = &extra_vars {
                    let file = write_private(root, ".autogate-inputs-", ".yml", text)?;
                    if let Some(u) = user {
                        // Still 0600: readable by the run's user only.
                        std::os::unix::fs::fchown(file.as_file(), Some(u.uid()), Some(u.gid()))
                            .map_err(|e| ExecError::io("giving the inputs file to the run", e))?;
                    }
                    args.push("--extra-vars".to_owned());
                    args.push(format!("@{}", file.path().display()));
                    vars_file = Some(file);
                }
                Plan { program, args }
            }
            ServiceType::OpentofuPlan => {
                return self
                    .run_tofu(
                        service, inputs, opts, binary, &cwd, &inside, timeout, cancel, &mask, spec,
                    )
                    .await;
            }
        };
        let mut process = spec(plan, timeout);
        process.env.extend(deps_env);
        if let Some(c) = ansible_config {
            process.env.insert(
                "ANSIBLE_CONFIG".to_owned(),
                c.to_string_lossy().into_owned(),
            );
        }
        let result = run_process(&process, cancel).await.map(|mut r| {
            r.environment_build_time = env_build.map(runner::format_elapsed);
            r
        });
        drop(vars_file);
        drop(ansible_venv);
        drop(galaxy_in_use);
        drop(venv_in_use);
        drop(ws);
        result
    }

    /// The binary the service type runs, found before anything else happens.
    fn binary(&self, service: &Service, search_path: &str) -> Result<PathBuf, ExecError> {
        let default = match service.service_type {
            ServiceType::PythonScript => "python3",
            ServiceType::AnsiblePlaybook => "ansible-playbook",
            ServiceType::OpentofuPlan => "tofu",
            ServiceType::Executable => {
                let Some(exe) = service.executable.as_ref() else {
                    return Err(ExecError::InvalidService {
                        reason: format!("executable service {:?} has no executable", service.name),
                    });
                };
                let name = exe.to_string_lossy();
                return crate::which(&name, search_path).ok_or_else(|| ExecError::BinaryNotFound {
                    binary: name.into_owned(),
                    path: search_path.to_owned(),
                });
            }
        };
        let name = service
            .executable
            .as_ref()
            .map_or_else(|| default.to_owned(), |p| p.to_string_lossy().into_owned());
        crate::which(&name, search_path).ok_or_else(|| ExecError::BinaryNotFound {
            binary: name,
            path: search_path.to_owned(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_tofu(
        &self,
        service: &Service,
        inputs: &Inputs,
        opts: &RunOptions,
        tofu: PathBuf,
        cwd: &Path,
        inside: &(dyn Fn(&str, &str) -> Result<PathBuf, ExecError> + Sync),
        timeout: Option<Duration>,
        cancel: &CancellationToken,
        mask: &[String],
        spec: impl Fn(Plan, Option<Duration>) -> ProcessSpec,
    ) -> Result<RunResult, ExecError> {
        // The service's own state file, or OpenTofu's default one. The file need not exist yet:
        // its directory is resolved inside the checkout, the name joined to it.
        let (state_file, state_arg) = match service.tofu_state_file.as_deref() {
            None => (cwd.join("terraform.tfstate"), None),
            Some(rel) => {
                let p = Path::new(rel);
                let name = match p.components().next_back() {
                    Some(std::path::Component::Normal(n)) => n.to_owned(),
                    _ => {
                        return Err(ExecError::PathOutside {
                            field: "state_file".to_owned(),
                            path: rel.to_owned(),
                        })
                    }
                };
                let dir = p
                    .parent()
                    .map(|d| d.to_string_lossy().into_owned())
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| ".".to_owned());
                let path = inside(&dir, "state_file")?.join(name);
                let arg = format!("-state={}", path.display());
                (path, Some(arg))
            }
        };
        if let Some(state) = &opts.tofu_state {
            let text = serde_json::to_vec_pretty(state).map_err(|e| ExecError::InvalidService {
                reason: format!("state: {e}"),
            })?;
            write_state(&state_file, &text, self.user.as_ref())
                .map_err(|e| ExecError::io("writing terraform.tfstate", e))?;
        }
        let mut init_args = vec![
            "init".to_owned(),
            "-input=false".to_owned(),
            "-no-color".to_owned(),
        ];
        for b in &service.backend_config {
            init_args.push(format!("-backend-config={b}"));
        }
        let mut args = match opts.tofu_action {
            TofuAction::Apply => vec!["apply".to_owned(), "-auto-approve".to_owned()],
            TofuAction::Destroy => vec!["destroy".to_owned(), "-auto-approve".to_owned()],
            TofuAction::Plan => vec!["plan".to_owned()],
        };
        args.extend(["-input=false".to_owned(), "-no-color".to_owned()]);
        args.extend(state_arg);
        args.extend(inputs::tofu_var_args(&service.vars, inputs));
        for f in &service.var_files {
            args.push(format!("-var-file={}", inside(f, "var_file")?.display()));
        }

        let started = Instant::now();
        let init = run_process(
            &spec(
                Plan {
                    program: tofu.clone(),
                    args: init_args,
                },
                timeout,
            ),
            cancel,
        )
        .await?;
        if init.return_code != 0 || init.timed_out {
            return Ok(init);
        }
        // One budget for both steps.
        let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
        let apply = run_process(
            &spec(
                Plan {
                    program: tofu,
                    args,
                },
                left,
            ),
            cancel,
        )
        .await?;
        // The state leaves this node (API answer, manager reply, job record): without the
        // secrets the run knows and without what OpenTofu itself marks sensitive.
        let state = read_state(&state_file, self.user.as_ref(), self.cfg.output_limit)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .map(|mut s| {
                mask_tofu_state(&mut s, mask);
                s
            });
        let stdout = format!("{}{}", init.stdout, apply.stdout);
        Ok(RunResult {
            stdout_json: None,
            stderr: format!("{}{}", init.stderr, apply.stderr),
            start_time: init.start_time,
            elapsed_time: runner::format_elapsed(started.elapsed()),
            state_file: state.clone(),
            state,
            stdout,
            ..apply
        })
    }
}

/// Writes the state a run starts from. The checkout may hold an entry of that name (a link to a
/// file of the node's, say): it is removed, and the file created anew, never written through.
/// With a service user the file is then given to it.
fn write_state(path: &Path, text: &[u8], user: Option<&ServiceUser>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text)?;
    if let Some(u) = user {
        std::os::unix::fs::fchown(&f, Some(u.uid()), Some(u.gid()))?;
    }
    Ok(())
}

/// Reads the state a run left, at most `limit` bytes. Under a service user the run owned the
/// directory and could have put anything there: the file is opened without following a link
/// (nor blocking on a pipe) and read only when it is a regular file of that user, so the node
/// never hands out a file of its own through the state.
fn read_state(path: &Path, user: Option<&ServiceUser>, limit: usize) -> Option<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let Some(user) = user else {
        return std::fs::read(path).ok();
    };
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.uid() != user.uid() {
        return None;
    }
    let mut out = Vec::new();
    f.take(u64::try_from(limit).unwrap_or(u64::MAX))
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// Writes `text` to a new file named `<prefix><random><suffix>` in `dir`, readable by its owner
/// only (0600, as `tempfile` creates it); the file is removed when the handle is dropped.
fn write_private(
    dir: &Path,
    prefix: &str,
    suffix: &str,
    text: &str,
) -> Result<tempfile::NamedTempFile, ExecError> {
    use std::io::Write as _;
    let mut f = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .tempfile_in(dir)
        .map_err(|e| ExecError::io(format!("creating a {prefix}{suffix} file"), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.flush())
        .map_err(|e| ExecError::io(format!("writing a {prefix}{suffix} file"), e))?;
    Ok(f)
}

/// Removes secrets from an OpenTofu state document (format version 4) in place:
///
/// * outputs marked `sensitive` keep their type but their value becomes [`runner::MASK`];
/// * every attribute an instance lists in `sensitive_attributes` is masked — the exact path
///   when the state holds it, else the whole top-level attribute the path starts with (a
///   dynamic attribute keeps its value one level down, under `value`); an instance whose
///   `sensitive_attributes` is not a list of paths has all its attributes masked;
/// * every string (keys included) that contains a secret value of the run has it masked, as
///   in the program's output.
///
/// Masking keeps the shape of the document: strings, numbers and booleans under a masked
/// path become [`runner::MASK`], `null` stays `null`.
pub fn mask_tofu_state(state: &mut serde_json::Value, secrets: &[String]) {
    use serde_json::Value;
    if let Some(outputs) = state.get_mut("outputs").and_then(Value::as_object_mut) {
        for output in outputs.values_mut() {
            if output.get("sensitive").and_then(Value::as_bool) == Some(true) {
                if let Some(v) = output.get_mut("value") {
                    *v = Value::String(runner::MASK.to_owned());
                }
            }
        }
    }
    if let Some(resources) = state.get_mut("resources").and_then(Value::as_array_mut) {
        for instance in resources
            .iter_mut()
            .filter_map(|r| r.get_mut("instances").and_then(Value::as_array_mut))
            .flatten()
        {
            mask_sensitive_attributes(instance);
        }
    }
    mask_strings(state, secrets);
}

/// One resource instance of a state: its `sensitive_attributes` masked in `attributes`.
fn mask_sensitive_attributes(instance: &mut serde_json::Value) {
    use serde_json::Value;
    let paths: Option<Vec<Vec<Value>>> = match instance.get("sensitive_attributes") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(paths)) => paths
            .iter()
            .map(|p| p.as_array().cloned())
            .collect::<Option<Vec<_>>>(),
        Some(_) => None,
    };
    let Some(attributes) = instance.get_mut("attributes") else {
        return;
    };
    let Some(paths) = paths else {
        // A format this code does not know: nothing of the instance leaves unmasked.
        mask_all(attributes);
        return;
    };
    for path in paths {
        // Each step is {"type": "get_attr", "value": name} or {"type": "index", "value":
        // {"value": key, "type": …}} (older states: the key itself).
        let mut at: Option<&mut Value> = Some(&mut *attributes);
        let mut first_attr: Option<String> = None;
        for step in &path {
            let key = step.get("value").map(|v| v.get("value").unwrap_or(v));
            at = match (at, step.get("type").and_then(Value::as_str), key) {
                (Some(Value::Object(m)), Some("get_attr"), Some(Value::String(name))) => {
                    first_attr.get_or_insert_with(|| name.clone());
                    m.get_mut(name)
                }
                (Some(Value::Object(m)), Some("index"), Some(Value::String(k))) => m.get_mut(k),
                (Some(Value::Array(a)), Some("index"), Some(Value::Number(n))) => n
                    .as_u64()
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| a.get_mut(i)),
                _ => None,
            };
            if at.is_none() {
                break;
            }
        }
        match (at, first_attr) {
            (Some(v), _) => mask_all(v),
            (None, Some(name)) => {
                if let Some(v) = attributes.get_mut(&name) {
                    mask_all(v);
                }
            }
            // A path that names no attribute: mask them all rather than guess.
            (None, None) => mask_all(attributes),
        }
    }
}

/// Every scalar below `v` (strings, numbers, booleans) becomes [`runner::MASK`].
fn mask_all(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => {}
        Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            *v = Value::String(runner::MASK.to_owned());
        }
        Value::Array(a) => a.iter_mut().for_each(mask_all),
        Value::Object(m) => m.values_mut().for_each(mask_all),
    }
}

/// Every secret value inside any string below `v` (map keys too) becomes [`runner::MASK`].
fn mask_strings(v: &mut serde_json::Value, secrets: &[String]) {
    use serde_json::Value;
    if secrets.iter().all(String::is_empty) {
        return;
    }
    match v {
        Value::String(s) => *s = runner::mask_str(s, secrets),
        Value::Array(a) => a.iter_mut().for_each(|v| mask_strings(v, secrets)),
        Value::Object(m) => {
            let entries = std::mem::take(m);
            for (k, mut item) in entries {
                mask_strings(&mut item, secrets);
                m.insert(runner::mask_str(&k, secrets), item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A file of the definition's default name (`requirements.yml`, …) in the working directory:
/// `None` when there is none. It is resolved like any other path, so one that is a link out of
/// the checkout is refused, not read.
fn optional_file(
    inside: &dyn Fn(&str, &str) -> Result<PathBuf, ExecError>,
    name: &str,
) -> Result<Option<PathBuf>, ExecError> {
    match inside(name, name) {
        Ok(p) => Ok(Some(p).filter(|p| p.is_file())),
        Err(ExecError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `ansible-galaxy` beside the `ansible-playbook` that runs the playbook, else from `PATH`.
fn galaxy_binary(playbook: &Path, search_path: &str) -> Result<PathBuf, ExecError> {
    if let Some(p) = playbook
        .parent()
        .map(|d| d.join("ansible-galaxy"))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    crate::which("ansible-galaxy", search_path).ok_or_else(|| ExecError::BinaryNotFound {
        binary: "ansible-galaxy".to_owned(),
        path: search_path.to_owned(),
    })
}

/// The `site-packages` directories of a venv (`lib/python3.X/site-packages`).
fn site_packages(venv: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// The sum of two build times, either of which may be absent.
fn add_time(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

fn required<'a>(v: Option<&'a str>, field: &str, service: &Service) -> Result<&'a str, ExecError> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| ExecError::InvalidService {
            reason: format!(
                "{} service {:?} has no {field}",
                service.service_type.as_str(),
                service.name
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A state written by `terraform apply` (1.11) for a `terraform_data` resource whose
    /// input holds a sensitive variable, plus a sensitive output.
    fn real_state() -> serde_json::Value {
        json!({
          "version": 4, "terraform_version": "1.11.4", "serial": 1,
          "lineage": "6de979b1-fe46-f567-04ce-768f19b733c4",
          "outputs": {
            "plain": {"value": "hello", "type": "string"},
            "pw": {"value": "hunter2xyz", "type": "string", "sensitive": true}
          },
          "resources": [{
            "mode": "managed", "type": "terraform_data", "name": "conn",
            "provider": "provider[\"terraform.io/builtin/terraform\"]",
            "instances": [{
              "schema_version": 0,
              "attributes": {
                "id": "2f3cf609-40d4-7aa6-34f1-53121523bb15",
                "input": {
                  "value": {"password": "hunter2xyz", "user": "admin"},
                  "type": ["object", {"password": "string", "user": "string"}]
                },
                "output": {
                  "value": {"password": "hunter2xyz", "user": "admin"},
                  "type": ["object", {"password": "string", "user": "string"}]
                },
                "triggers_replace": null
              },
              "sensitive_attributes": [[
                {"type": "get_attr", "value": "input"},
                {"type": "get_attr", "value": "password"}
              ]]
            }]
          }],
          "check_results": null
        })
    }

    #[test]
    fn state_loses_secrets_and_sensitive_values() {
        // No secret known to the run: what OpenTofu marks sensitive is masked all the same.
        let mut s = real_state();
        mask_tofu_state(&mut s, &[]);
        assert_eq!(s["outputs"]["pw"]["value"], runner::MASK);
        assert_eq!(s["outputs"]["pw"]["type"], "string");
        assert_eq!(s["outputs"]["plain"]["value"], "hello");
        let attrs = &s["resources"][0]["instances"][0]["attributes"];
        // The path input.password lives under input.value: the whole `input` is masked.
        assert_eq!(attrs["input"]["value"]["password"], runner::MASK);
        assert_eq!(attrs["id"], "2f3cf609-40d4-7aa6-34f1-53121523bb15");
        assert_eq!(attrs["triggers_replace"], serde_json::Value::Null);

        // The run's secrets are masked wherever they appear, here in `output` too.
        let mut s = real_state();
        mask_tofu_state(&mut s, &["hunter2xyz".to_owned()]);
        assert!(!s.to_string().contains("hunter2xyz"), "{s}");
        let attrs = &s["resources"][0]["instances"][0]["attributes"];
        assert_eq!(attrs["output"]["value"]["user"], "admin");
    }

    #[test]
    fn exact_paths_and_unknown_formats() {
        let mut s = json!({"resources": [{"instances": [
            {"attributes": {"a": {"b": "x", "c": "keep"}, "l": ["p", "q"], "m": {"k": "v"}},
             "sensitive_attributes": [
                [{"type": "get_attr", "value": "a"}, {"type": "get_attr", "value": "b"}],
                [{"type": "get_attr", "value": "l"},
                 {"type": "index", "value": {"value": 1, "type": "number"}}],
                [{"type": "get_attr", "value": "m"},
                 {"type": "index", "value": {"value": "k", "type": "string"}}]
             ]},
            {"attributes": {"a": "x", "n": 5}, "sensitive_attributes": "a future format"}
        ]}]});
        mask_tofu_state(&mut s, &[]);
        let i = &s["resources"][0]["instances"];
        assert_eq!(
            i[0]["attributes"],
            json!({"a": {"b": runner::MASK, "c": "keep"}, "l": ["p", runner::MASK],
                   "m": {"k": runner::MASK}})
        );
        assert_eq!(
            i[1]["attributes"],
            json!({"a": runner::MASK, "n": runner::MASK})
        );
    }
}
