//! `autogate run service <type> [apply|destroy|plan] NAME [--set k=v]… [--use]`: runs a service
//! (in-process in local mode, on the core node in client mode) and prints the family's layout —
//! the program's stdout and stderr, its return code, then start, end and elapsed time in
//! `[terminal] timestamp_timezone`, and the environment build time when the run built one — or,
//! with `--raw`, the result JSON. `--use` prints the inputs the service's decorator expects
//! instead of running it. `--set-secret name=<secret>,type=env,target=<VAR>` (repeatable, the
//! family's syntax of `create service --secret`) injects a stored secret for this run only,
//! merged with the service's own secrets and replacing one of the same target; like those,
//! its value is masked in the output and never printed, stored or logged (client mode: only
//! the secret's name travels, and only admins may). A run that takes more than a second shows on standard error what it
//! is waiting for: a spinner on a terminal, `still running service NAME: N s` lines elsewhere.

use std::path::PathBuf;

use autogate_automation::{RunRequest, ServiceInfo};
use autogate_exec::{RunResult, ServiceType, TofuAction};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::backend::{self, Backend};
use super::resource::{json_arg, print_json, secret_ref_flag};
use super::term::{self, out, outln};
use crate::cli::Global;
use crate::exit::{Failure, FAILURE, USAGE};

/// Shown by `run --help` and `run service --help`: what the exit status means.
pub const EXIT_STATUS_HELP: &str = "\
Exit status: 0 when the service ran, whatever the program's own return code (as in the \
product family: read it from `Return Code:`, or `.return_code` with --raw); 64 when the command \
is wrong or the inputs do not satisfy the service's decorator (each violation is listed with its \
JSON pointer, and nothing ran); 1 when the service could not be run (unknown service, failed \
checkout, missing binary); 69 when the store or the core node is unavailable; 77 when the API key \
is missing or expired (client mode); 130 when interrupted (local mode: the program and its \
children are killed).

In client mode the run carries an Idempotency-Key and is sent again under it for up to 30 s while \
the core node cannot be reached or the connection breaks before the answer (a node restarting): \
the node runs it once and answers every attempt with that run's outcome.";

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(subcommand)]
    pub noun: RunNoun,
}

#[derive(Debug, Subcommand)]
pub enum RunNoun {
    /// Run a service and print its output.
    #[command(after_help = EXIT_STATUS_HELP)]
    Service(RunService),
}

#[derive(Debug, Args)]
pub struct RunService {
    #[command(subcommand)]
    pub kind: RunKind,
}

#[derive(Debug, Subcommand)]
pub enum RunKind {
    /// Run a python-script service.
    #[command(after_help = EXIT_STATUS_HELP)]
    PythonScript(RunOpts),
    /// Run an ansible-playbook service.
    #[command(after_help = EXIT_STATUS_HELP)]
    AnsiblePlaybook(RunOpts),
    /// Run an opentofu-plan service: `apply` (the default), `destroy`, or `plan` (shows what
    /// apply would change, changes nothing).
    #[command(after_help = EXIT_STATUS_HELP)]
    OpentofuPlan(TofuRunOpts),
    /// Run an executable service.
    #[command(after_help = EXIT_STATUS_HELP)]
    Executable(RunOpts),
}

/// Flags of every run.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// An input k=v, coerced to the type the decorator declares (repeat; a bare `k` is true).
    #[arg(long = "set", value_name = "K=V")]
    pub set: Vec<String>,
    /// Print the inputs the service expects (from its decorator) instead of running it.
    #[arg(long = "use")]
    pub use_inputs: bool,
    /// A stored secret injected for this run: name=<secret>,type=env,target=<VAR> (repeat);
    /// over the service's own secrets by target, masked in the output.
    #[arg(long = "set-secret", value_name = "SPEC")]
    pub set_secret: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunOpts {
    /// Service name.
    pub name: String,
    #[command(flatten)]
    pub inputs: InputArgs,
}

#[derive(Debug, Args)]
pub struct TofuRunOpts {
    /// `[apply|destroy|plan] NAME`: the action (apply when left out; plan changes nothing)
    /// and the service.
    #[arg(
        num_args = 1..=2,
        required = true,
        value_name = "[apply|destroy|plan] NAME"
    )]
    pub words: Vec<String>,
    #[command(flatten)]
    pub inputs: InputArgs,
    /// The state to start from: JSON, or @path (the new state is written back there unless
    /// --state-out is given).
    #[arg(long, value_name = "JSON|@PATH")]
    pub state: Option<String>,
    /// Where to write the state after the run.
    #[arg(long, value_name = "PATH")]
    pub state_out: Option<PathBuf>,
}

/// What to run, from the grammar.
struct Plan {
    service_type: ServiceType,
    name: String,
    inputs: InputArgs,
    action: Option<TofuAction>,
    state: Option<Value>,
    state_out: Option<PathBuf>,
}

fn plan(args: RunArgs) -> Result<Plan, Failure> {
    let RunNoun::Service(svc) = args.noun;
    let simple = |t, o: RunOpts| Plan {
        service_type: t,
        name: o.name,
        inputs: o.inputs,
        action: None,
        state: None,
        state_out: None,
    };
    Ok(match svc.kind {
        RunKind::PythonScript(o) => simple(ServiceType::PythonScript, o),
        RunKind::AnsiblePlaybook(o) => simple(ServiceType::AnsiblePlaybook, o),
        RunKind::Executable(o) => simple(ServiceType::Executable, o),
        RunKind::OpentofuPlan(o) => {
            let (action, name) = match o.words.as_slice() {
                [name] => (TofuAction::Apply, name.clone()),
                [action, name] => {
                    let action = match action.as_str() {
                        "apply" => TofuAction::Apply,
                        "destroy" => TofuAction::Destroy,
                        "plan" => TofuAction::Plan,
                        other => {
                            let why = "expected apply, destroy or plan";
                            return Err(Failure::new(
                                USAGE,
                                format!("opentofu-plan action {other:?}: {why}"),
                            ));
                        }
                    };
                    (action, name.clone())
                }
                _ => {
                    return Err(Failure::new(
                        USAGE,
                        "run service opentofu-plan [apply|destroy|plan] NAME",
                    ))
                }
            };
            let state = o
                .state
                .as_deref()
                .map(|s| json_arg("--state", s))
                .transpose()?;
            // `--state @path` is also where the new state goes, unless --state-out says otherwise.
            let state_out = o.state_out.or_else(|| {
                o.state
                    .as_deref()
                    .and_then(|s| s.strip_prefix('@'))
                    .map(PathBuf::from)
            });
            Plan {
                service_type: ServiceType::OpentofuPlan,
                name,
                inputs: o.inputs,
                action: Some(action),
                state,
                state_out,
            }
        }
    })
}

pub fn run(global: &Global, args: RunArgs) -> Result<(), Failure> {
    let plan = plan(args)?;
    let secrets = plan
        .inputs
        .set_secret
        .iter()
        .map(|spec| {
            let v = secret_ref_flag("--set-secret", spec)?;
            serde_json::from_value(v)
                .map_err(|e| Failure::new(USAGE, format!("--set-secret {spec:?}: {e}")))
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let config = backend::load(global)?;
    let tz = term::time_zone(&config)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let backend = Backend::open(&config, global).await?;
        if plan.inputs.use_inputs {
            let info = backend.describe_inputs(&plan.name).await?;
            if info.service_type != plan.service_type {
                return Err(Failure::new(
                    USAGE,
                    format!(
                        "service {} is {}, not {}",
                        info.name,
                        info.service_type.as_str(),
                        plan.service_type.as_str()
                    ),
                ));
            }
            print_use(&info, global.raw);
            return Ok(());
        }
        let req = RunRequest {
            service: plan.name.clone(),
            service_type: Some(plan.service_type),
            set: plan.inputs.set.clone(),
            action: plan.action,
            state: plan.state.clone(),
            secrets,
            ..RunRequest::default()
        };
        let result = match &backend {
            Backend::Local(_) => run_local(&backend, &req).await?,
            Backend::Remote(_) => {
                // The core node answers when the run is over: the same progress as a local
                // run, without its steps (the node does not report them).
                let spinner = term::Spinner::start(format!("running service {}", req.service));
                let out = backend.run(&req, &CancellationToken::new()).await;
                spinner.finish().await;
                out?
            }
        };
        let written = match (&plan.state_out, &result.state) {
            (Some(path), Some(state)) => {
                write_state(path, state)?;
                Some(path.clone())
            }
            _ => None,
        };
        if global.raw {
            print_json(&serde_json::to_value(&result).unwrap_or(Value::Null));
        } else {
            out!("{}", result_text(&result, &tz, written.as_deref()));
        }
        Ok(())
    })
}

/// A local run: Ctrl-C or SIGTERM cancels it (the engine kills the program's process group),
/// and progress shows on standard error while it runs (see [`term::Spinner`]).
async fn run_local(backend: &Backend, req: &RunRequest) -> Result<RunResult, Failure> {
    let cancel = CancellationToken::new();
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm => {}
            }
            cancel.cancel();
        })
    };
    let running = format!("running service {}", req.service);
    let spinner = term::Spinner::start(running.clone());
    let out = autogate_exec::with_progress(
        progress_hook(spinner.status(), running),
        backend.run(req, &cancel),
    )
    .await;
    spinner.finish().await;
    watcher.abort();
    out
}

/// What the spinner (or, without a terminal, a line on standard error) says while the engine
/// works on something other than the program: a first run with a requirement file builds its
/// Python environment, seconds to minutes without output of its own.
fn progress_hook(status: term::Status, running: String) -> autogate_exec::ProgressHook {
    use autogate_exec::Progress;
    std::sync::Arc::new(move |p: &Progress| match p {
        Progress::EnvironmentBuildStarted { requirements } => {
            let from = requirements
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            status.set("building the Python environment");
            // Said at once: a build is never quick, and a log should show where it began.
            status.note(&format!(
                "building the Python environment from {from} (first run with these requirements)…"
            ));
        }
        Progress::EnvironmentBuildFinished { elapsed, ok } => {
            status.set(&running);
            if *ok {
                status.note(&format!(
                    "built the Python environment in {:.1}s; {running}",
                    elapsed.as_secs_f64()
                ));
            }
        }
        _ => {}
    })
}

fn write_state(path: &std::path::Path, state: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(state).unwrap_or_else(|_| state.to_string());
    std::fs::write(path, text + "\n").map_err(|e| {
        Failure::new(
            FAILURE,
            format!(
                "the run completed but its state could not be written to {}: {e}",
                path.display()
            ),
        )
    })
}

/// The family's text layout of a run.
fn result_text(
    r: &RunResult,
    tz: &jiff::tz::TimeZone,
    state_file: Option<&std::path::Path>,
) -> String {
    let mut out = String::new();
    let stream = |out: &mut String, title: &str, body: &str| {
        out.push_str(title);
        out.push_str(":\n");
        out.push_str(body);
        if !body.is_empty() && !body.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    };
    stream(&mut out, "Stdout", &r.stdout);
    stream(&mut out, "Stderr", &r.stderr);
    if let Some(state) = &r.state {
        match state_file {
            Some(p) => {
                out.push_str(&format!("State written to {}\n\n", p.display()));
            }
            None => stream(
                &mut out,
                "State",
                &serde_json::to_string_pretty(state).unwrap_or_default(),
            ),
        }
    }
    let mut lines = vec![("Return Code", r.return_code.to_string())];
    if r.timed_out {
        lines.push((
            "Timed Out",
            "true (the program was killed at the service's timeout)".to_owned(),
        ));
    }
    lines.push(("Start Time", term::show_time(&r.start_time, tz)));
    lines.push(("End Time", term::show_time(&r.end_time, tz)));
    lines.push(("Elapsed Time", r.elapsed_time.clone()));
    // Only a run that built its Python environment has one; the build precedes Start Time.
    if let Some(build) = &r.environment_build_time {
        lines.push(("Environment Build Time", build.clone()));
    }
    out.push_str(&term::block(&lines));
    out
}

/// One input of a decorator, as `--use` shows it.
fn inputs_of(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| {
            let ty = match &p["type"] {
                Value::String(t) => t.clone(),
                Value::Array(ts) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("|"),
                _ => "any".to_owned(),
            };
            let mut v = json!({
                "name": name,
                "type": ty,
                "required": required.contains(&name.as_str()),
                "description": p["description"].as_str().or_else(|| p["title"].as_str()).unwrap_or(""),
            });
            if let Some(e) = p.get("enum") {
                v["enum"] = e.clone();
            }
            if let Some(d) = p.get("default") {
                v["default"] = d.clone();
            }
            v
        })
        .collect()
}

fn print_use(info: &ServiceInfo, raw: bool) {
    let inputs = info.schema.as_ref().map(inputs_of).unwrap_or_default();
    if raw {
        let mut v = serde_json::to_value(info).unwrap_or(Value::Null);
        v["inputs"] = Value::Array(inputs);
        print_json(&v);
        return;
    }
    let mut head = vec![
        ("Service", info.name.clone()),
        ("Type", info.service_type.as_str().to_owned()),
    ];
    match &info.decorator {
        Some(d) => head.push(("Decorator", d.clone())),
        None => {
            head.push(("Decorator", "none: any --set k=v is passed on".to_owned()));
        }
    }
    out!("{}", term::block(&head));
    if info.decorator.is_none() {
        return;
    }
    outln!();
    if inputs.is_empty() {
        outln!("The decorator declares no inputs.");
        return;
    }
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::Array(items) => items.iter().map(term::text).collect::<Vec<_>>().join(", "),
        other => term::text(other),
    };
    let rows: Vec<Vec<String>> = inputs
        .iter()
        .map(|i| {
            vec![
                term::text(&i["name"]),
                term::text(&i["type"]),
                if i["required"] == true { "yes" } else { "no" }.to_owned(),
                cell(&i["default"]),
                cell(&i["enum"]),
                term::text(&i["description"]),
            ]
        })
        .collect();
    out!(
        "{}",
        term::table(
            &[
                "INPUT",
                "TYPE",
                "REQUIRED",
                "DEFAULT",
                "ALLOWED",
                "DESCRIPTION"
            ],
            &rows
        )
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_lists_inputs() {
        let schema = json!({
            "type": "object",
            "required": ["device"],
            "properties": {
                "device": {"type": "string", "description": "address"},
                "port": {"type": ["integer", "string"], "default": 22},
                "mode": {"enum": ["a", "b"]}
            }
        });
        let i = inputs_of(&schema);
        assert_eq!(i.len(), 3);
        let device = i.iter().find(|x| x["name"] == "device").expect("device");
        assert_eq!(device["required"], true);
        let port = i.iter().find(|x| x["name"] == "port").expect("port");
        assert_eq!(port["type"], "integer|string");
        assert_eq!(port["default"], 22);
        let mode = i.iter().find(|x| x["name"] == "mode").expect("mode");
        assert_eq!(mode["enum"], json!(["a", "b"]));
        assert_eq!(mode["type"], "any");
    }
}
