//! The engine: one service run from inputs to [`RunResult`].
//!
//! Order of a run: validate the inputs against the decorator and the service definition
//! against its type, find the binary the type needs — all before touching the network, so a
//! bad request fails fast and runs nothing — then check the repository out (cached by commit),
//! copy it into a private workspace, resolve every path of the definition inside it, build or
//! reuse the venv (python-script), run, and discard the workspace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checkout::{resolve_inside, CheckoutCache, HostKeyPolicy, Repository};
use crate::error::ExecError;
use crate::inputs::{self, ArgFormat, Decorator, Inputs};
use crate::runner::{self, run_process, ProcessSpec, RunResult, DEFAULT_OUTPUT_LIMIT};
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
    /// `None` = `requirements.txt` when present, else the bare interpreter.
    pub req_file: Option<String>,
    /// ansible-playbook: playbooks, run in order (required).
    pub playbooks: Vec<String>,
    /// ansible-playbook: inventory file.
    pub inventory: Option<String>,
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
    /// The executable-object: for executable services the program (required); otherwise an
    /// override of the binary (python interpreter, `ansible-playbook`, `tofu`).
    pub executable: Option<PathBuf>,
    /// executable: Go-template-like argument format (default `--{{.Key}} {{.Value}}`).
    pub arg_format: Option<String>,
    /// Environment variables for the program.
    pub env: BTreeMap<String, String>,
    /// Run limit; `None` = the engine's default.
    pub timeout: Option<Duration>,
    /// Decorator (JSON Schema) the inputs must satisfy.
    pub decorator: Option<serde_json::Value>,
    /// python-script: the package index of its venv; `None` = pip's own configuration.
    pub pip_index: Option<PipIndex>,
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
            extra_vars: Vec::new(),
            extra_vars_file: None,
            vars: Vec::new(),
            var_files: Vec::new(),
            backend_config: Vec::new(),
            executable: None,
            arg_format: None,
            env: BTreeMap::new(),
            timeout: None,
            decorator: None,
            pip_index: None,
        }
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
    /// SSH host key checking for repositories.
    pub host_keys: HostKeyPolicy,
}

impl EngineConfig {
    /// Defaults under `work_dir`: 16 MiB per stream, one hour per run.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            default_timeout: Some(Duration::from_secs(3600)),
            venv: VenvOptions::default(),
            host_keys: HostKeyPolicy::default(),
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
        let venvs = VenvCache::new(cfg.work_dir.join("venvs"), cfg.venv.clone());
        Self {
            cfg,
            checkouts,
            venvs,
        }
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
        let search_path = service
            .env
            .get("PATH")
            .cloned()
            .or_else(|| runner::minimal_env().remove("PATH"))
            .unwrap_or_default();
        let binary = self.binary(service, &search_path)?;
        let arg_format = match service.service_type {
            ServiceType::Executable => Some(ArgFormat::parse(
                service
                    .arg_format
                    .as_deref()
                    .unwrap_or(inputs::DEFAULT_ARG_FORMAT),
            )?),
            _ => None,
        };
        let extra_vars = match service.service_type {
            ServiceType::AnsiblePlaybook => {
                Some(inputs::ansible_extra_vars(&service.extra_vars, inputs)?)
            }
            _ => None,
        };

        // 2. Code.
        let checkout = match &service.repository {
            Some(r) => Some(self.checkouts.checkout(r, cancel).await?),
            None => None,
        };
        let ws =
            CheckoutCache::workspace(checkout.as_ref(), &self.cfg.work_dir.join("runs")).await?;
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
        let mut env = service.env.clone();
        env.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut mask: Vec<String> = secrets.values().cloned().collect();
        if let Some(c) = service
            .repository
            .as_ref()
            .and_then(|r| r.credentials.as_ref())
        {
            mask.extend(c.secret_values());
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
            s
        };

        // Set when this run built its Python environment: reported beside the program's time.
        let mut env_build = None;
        let plan = match service.service_type {
            ServiceType::PythonScript => {
                let filename = required(service.filename.as_deref(), "filename", service)?;
                let script = inside(filename, "filename")?;
                let req = match service.req_file.as_deref() {
                    Some(r) => Some(inside(r, "req_file")?),
                    None => Some(cwd.join("requirements.txt")).filter(|p| p.is_file()),
                };
                let python = match req {
                    Some(req) => {
                        let venv = self
                            .venvs
                            .ensure_with(&binary, &req, service.pip_index.as_ref(), cancel)
                            .await?;
                        env_build = venv.build_time;
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
                if let Some(f) = &arg_format {
                    args.extend(f.render(inputs));
                }
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
                let mut args = Vec::new();
                if let Some(i) = service.inventory.as_deref() {
                    args.push("-i".to_owned());
                    args.push(inside(i, "inventory")?.to_string_lossy().into_owned());
                }
                for p in &service.playbooks {
                    args.push(inside(p, "playbook")?.to_string_lossy().into_owned());
                }
                if let Some(f) = service.extra_vars_file.as_deref() {
                    args.push("--extra-vars".to_owned());
                    args.push(format!("@{}", inside(f, "extra_vars_file")?.display()));
                }
                if let Some(ev) = extra_vars {
                    args.push("--extra-vars".to_owned());
                    args.push(ev);
                }
                Plan {
                    program: binary,
                    args,
                }
            }
            ServiceType::OpentofuPlan => {
                return self
                    .run_tofu(
                        service, inputs, opts, binary, &cwd, &inside, timeout, cancel, spec,
                    )
                    .await;
            }
        };
        let result = run_process(&spec(plan, timeout), cancel)
            .await
            .map(|mut r| {
                r.environment_build_time = env_build.map(runner::format_elapsed);
                r
            });
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
        spec: impl Fn(Plan, Option<Duration>) -> ProcessSpec,
    ) -> Result<RunResult, ExecError> {
        let state_file = cwd.join("terraform.tfstate");
        if let Some(state) = &opts.tofu_state {
            let text = serde_json::to_vec_pretty(state).map_err(|e| ExecError::InvalidService {
                reason: format!("state: {e}"),
            })?;
            std::fs::write(&state_file, text)
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
        let action = match opts.tofu_action {
            TofuAction::Apply => "apply",
            TofuAction::Destroy => "destroy",
        };
        let mut args = vec![
            action.to_owned(),
            "-auto-approve".to_owned(),
            "-input=false".to_owned(),
            "-no-color".to_owned(),
        ];
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
        let state = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let stdout = format!("{}{}", init.stdout, apply.stdout);
        Ok(RunResult {
            stdout_json: None,
            stderr: format!("{}{}", init.stderr, apply.stderr),
            start_time: init.start_time,
            elapsed_time: runner::format_elapsed(started.elapsed()),
            state,
            stdout,
            ..apply
        })
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
