//! The engine end to end: real git repositories, real python venvs (local package), real
//! `/bin/sh` executables; fake `tofu`/`ansible-playbook` stand-ins for argument shape, and
//! the real `ansible-playbook` when installed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use autogate_exec::inputs::parse_set_args;
use autogate_exec::{
    with_progress, Decorator, Engine, EngineConfig, ExecError, Inputs, Progress, ProgressHook,
    Repository, RunOptions, Secrets, Service, ServiceType, TofuAction,
};
use common::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = r#"
import json, os, sys
import tinypkg
print(json.dumps({"argv": sys.argv[1:], "greeting": tinypkg.GREETING, "token": os.environ.get("API_TOKEN"),
                  "cwd": os.path.basename(os.getcwd()), "region": os.environ.get("REGION")}))
"#;

fn schema() -> serde_json::Value {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "root",
        "type": "object",
        "properties": {
            "device": {"type": "string"},
            "port": {"type": "integer"},
            "dry_run": {"type": "boolean"}
        },
        "required": ["device"],
        "additionalProperties": false
    })
}

fn engine(dir: &Path) -> Engine {
    Engine::new(EngineConfig::new(dir.join("work")))
}

fn fake_bin(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

#[tokio::test]
async fn python_script_from_git_with_venv_inputs_and_secrets() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut files = tiny_package("scripts/pkg/", "hi");
    files.push(("scripts/run.py".into(), SCRIPT.into()));
    files.push(("scripts/requirements.txt".into(), "./pkg\n".into()));
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q"]);
    write_all(&src, &files);
    git(&src, &["add", "-A"]);
    git(
        &src,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "x",
        ],
    );
    git(&src, &["tag", "v1"]);

    let eng = engine(t.path());
    let mut svc = Service::new("py", ServiceType::PythonScript);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: Some("v1".into()),
        credentials: None,
    });
    svc.working_dir = Some("scripts".into());
    svc.filename = Some("run.py".into());
    svc.env.insert("REGION".into(), "eu-1".into());
    svc.decorator = Some(schema());
    let deco = Decorator::new(schema()).unwrap();
    let inputs = parse_set_args(Some(&deco), &["device=r1", "port=22", "dry_run"]).unwrap();
    let mut secrets = Secrets::new();
    secrets.insert("API_TOKEN".into(), "tok-123456".into());
    let cancel = CancellationToken::new();

    // The front end's hook hears the build start and end; the result carries its time.
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Progress>::new()));
    let hook: ProgressHook = {
        let heard = heard.clone();
        std::sync::Arc::new(move |p: &Progress| heard.lock().unwrap().push(p.clone()))
    };
    let t0 = Instant::now();
    let r = with_progress(hook.clone(), eng.run(&svc, &inputs, &secrets, &cancel))
        .await
        .unwrap();
    let first = t0.elapsed();
    assert_eq!(r.return_code, 0, "{}", r.stderr);
    let build = r
        .environment_build_time
        .clone()
        .expect("the first run built its venv");
    let secs: f64 = build.strip_suffix('s').unwrap().parse().unwrap();
    assert!(
        secs > 0.0 && secs <= first.as_secs_f64(),
        "{build} vs {first:?}"
    );
    {
        let heard = heard.lock().unwrap();
        assert_eq!(heard.len(), 2, "{heard:?}");
        assert!(
            matches!(&heard[0], Progress::EnvironmentBuildStarted { requirements }
                if requirements.ends_with("scripts/requirements.txt")),
            "{heard:?}"
        );
        assert!(
            matches!(heard[1], Progress::EnvironmentBuildFinished { ok: true, elapsed }
                if elapsed.as_secs_f64() <= first.as_secs_f64()),
            "{heard:?}"
        );
    }
    assert!(
        serde_json::to_value(&r).unwrap()["environment_build_time"].is_string(),
        "serialized with the result"
    );
    let j = r.stdout_json.clone().unwrap();
    assert_eq!(j["argv"], json!(["--device=r1", "--dry_run", "--port=22"]));
    assert_eq!(j["greeting"], "hi");
    assert_eq!(
        j["token"], "********",
        "secret reached the program and was masked in its output"
    );
    assert_eq!(j["cwd"], "scripts");
    assert_eq!(j["region"], "eu-1");

    let t1 = Instant::now();
    let r2 = with_progress(hook, eng.run(&svc, &inputs, &secrets, &cancel))
        .await
        .unwrap();
    let second = t1.elapsed();
    assert_eq!(r2.stdout_json, r.stdout_json);
    assert_eq!(
        r2.environment_build_time, None,
        "the cached venv is not built"
    );
    assert_eq!(heard.lock().unwrap().len(), 2, "nothing to report");
    assert!(serde_json::to_value(&r2)
        .unwrap()
        .get("environment_build_time")
        .is_none());
    eprintln!("first run (clone + venv build) {first:?}, second run (cached) {second:?}");
    assert!(
        second * 3 < first,
        "second run must reuse checkout and venv: {second:?} vs {first:?}"
    );
    // Workspaces are gone after the runs (removed on the blocking pool: polled with a deadline).
    let runs = t.path().join("work/runs");
    let left = || std::fs::read_dir(&runs).unwrap().count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while left() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left(), 0, "run workspaces left behind");
}

#[tokio::test]
async fn invalid_inputs_run_nothing_and_list_every_violation() {
    let t = tempfile::tempdir().unwrap();
    let marker = t.path().join("ran");
    let mut svc = Service::new("sh", ServiceType::Executable);
    svc.executable = Some("/bin/sh".into());
    svc.arg_format = Some("-c {{.Value}}".into());
    svc.decorator = Some(schema());
    let mut inputs = Inputs::new();
    inputs.insert("port".into(), json!("abc"));
    inputs.insert("extra".into(), json!(format!("touch {}", marker.display())));
    let e = engine(t.path())
        .run(&svc, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap_err();
    let ExecError::InvalidInputs { violations } = &e else {
        panic!("{e}")
    };
    let ptrs: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
    for p in ["/device", "/port", "/extra"] {
        assert!(ptrs.contains(&p), "{p} not in {ptrs:?}");
    }
    assert!(!marker.exists());
    // A bad decorator is its own error.
    svc.decorator = Some(json!({"type": "nope"}));
    let e = engine(t.path())
        .run(
            &svc,
            &Inputs::new(),
            &Secrets::new(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::InvalidDecorator { .. }), "{e}");
}

#[tokio::test]
async fn executable_services() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let c = repo(
        &src,
        &[(
            "bin/show.sh",
            "for a in \"$@\"; do echo \"[$a]\"; done\nexit 4\n",
        )],
    );
    let eng = engine(t.path());
    let mut svc = Service::new("exe", ServiceType::Executable);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: Some(c),
        credentials: None,
    });
    svc.executable = Some("/bin/sh".into());
    svc.filename = Some("bin/show.sh".into());
    let mut inputs = Inputs::new();
    inputs.insert("device".into(), json!("10.0.0.1; echo pwned"));
    inputs.insert("port".into(), json!(22));
    let r = eng
        .run(&svc, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        r.stdout, "[--device=10.0.0.1; echo pwned]\n[--port=22]\n",
        "the default arg-format: one argument per input"
    );
    assert_eq!(r.return_code, 4, "non-zero exit is a normal result");

    svc.arg_format = Some("{{.Key}}={{.Value}}".into());
    let r = eng
        .run(&svc, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.stdout, "[device=10.0.0.1; echo pwned]\n[port=22]\n");

    // No repository, a program found in PATH.
    let mut echo = Service::new("echo", ServiceType::Executable);
    echo.executable = Some("echo".into());
    let r = eng
        .run(&echo, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.stdout, "--device=10.0.0.1; echo pwned --port=22\n");

    echo.executable = Some("/nonexistent/tool".into());
    let e = eng
        .run(&echo, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/tool not found"), "{e}");
    echo.executable = None;
    let e = eng
        .run(&echo, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::InvalidService { .. }), "{e}");
}

#[tokio::test]
async fn timeout_is_a_result() {
    let t = tempfile::tempdir().unwrap();
    let mut svc = Service::new("slow", ServiceType::Executable);
    svc.executable = Some("/bin/sh".into());
    svc.arg_format = Some("-c {{.Value}}".into());
    svc.timeout = Some(Duration::from_millis(300));
    let mut inputs = Inputs::new();
    inputs.insert("cmd".into(), json!("echo before; sleep 30"));
    let r = engine(t.path())
        .run(&svc, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap();
    assert!(r.timed_out);
    assert_eq!((r.stdout.as_str(), r.return_code), ("before\n", -9));
}

#[tokio::test]
async fn paths_leaving_the_checkout_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(t.path().join("secret.py"), "print('outside')").unwrap();
    std::os::unix::fs::symlink(t.path().join("secret.py"), src.join("link.py")).unwrap();
    repo(&src, &[("ok.py", "print('ok')"), ("sub/x", "")]);
    let eng = engine(t.path());
    let cancel = CancellationToken::new();
    let base = |filename: &str| {
        let mut s = Service::new("py", ServiceType::PythonScript);
        s.repository = Some(Repository {
            url: file_url(&src),
            reference: None,
            credentials: None,
        });
        s.filename = Some(filename.into());
        s
    };
    for (svc, field) in [
        (base("../secret.py"), "filename"),
        (base("/etc/passwd"), "filename"),
        (base("link.py"), "filename"),
        (
            {
                let mut s = base("ok.py");
                s.working_dir = Some("sub/../..".into());
                s
            },
            "working_dir",
        ),
        (
            {
                let mut s = base("ok.py");
                s.req_file = Some("../../requirements.txt".into());
                s
            },
            "req_file",
        ),
    ] {
        let e = eng
            .run(&svc, &Inputs::new(), &Secrets::new(), &cancel)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ExecError::PathOutside { field: f, .. } if f == field),
            "{e}"
        );
    }
    let e = eng
        .run(
            &base("missing.py"),
            &Inputs::new(),
            &Secrets::new(),
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::NotFound { .. }), "{e}");
    let r = eng
        .run(&base("ok.py"), &Inputs::new(), &Secrets::new(), &cancel)
        .await
        .unwrap();
    assert_eq!(r.stdout, "ok\n");
}

#[tokio::test]
async fn checkout_failure_names_the_repository() {
    let t = tempfile::tempdir().unwrap();
    let mut svc = Service::new("exe", ServiceType::Executable);
    svc.executable = Some("/bin/true".into());
    let url = format!("file://{}/missing-repo", t.path().display());
    svc.repository = Some(Repository {
        url: url.clone(),
        reference: Some("main".into()),
        credentials: None,
    });
    let e = engine(t.path())
        .run(
            &svc,
            &Inputs::new(),
            &Secrets::new(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ExecError::Checkout { .. }) && e.to_string().contains(&url),
        "{e}"
    );
}

#[tokio::test]
async fn tofu_missing_is_named() {
    let t = tempfile::tempdir().unwrap();
    let mut svc = Service::new("plan", ServiceType::OpentofuPlan);
    svc.env.insert("PATH".into(), "/usr/bin:/bin".into());
    let e = engine(t.path())
        .run(
            &svc,
            &Inputs::new(),
            &Secrets::new(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::BinaryNotFound { .. }), "{e}");
    assert!(e.to_string().starts_with("tofu not found"), "{e}");
}

#[tokio::test]
async fn tofu_init_then_apply_with_vars_and_state() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    repo(
        &src,
        &[
            ("infra/main.tf", "# plan\n"),
            ("infra/prod.tfvars", "x = 1\n"),
        ],
    );
    let log = t.path().join("tofu.log");
    // Stand-in tofu: records each call; apply writes a state derived from the one it found.
    let fake = fake_bin(
        t.path(),
        "tofu",
        &format!(
            "echo \"$*\" >> {log}\nif [ \"$1\" = apply ] || [ \"$1\" = destroy ]; then\n  serial=$(sed -n 's/.*\"serial\": *\\([0-9]*\\).*/\\1/p' terraform.tfstate 2>/dev/null)\n  echo \"{{\\\"serial\\\": $(( ${{serial:-0}} + 1 )), \\\"action\\\": \\\"$1\\\"}}\" > terraform.tfstate\nfi\necho \"tofu $1 ok\"",
            log = log.display()
        ),
    );
    let mut svc = Service::new("plan", ServiceType::OpentofuPlan);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: None,
        credentials: None,
    });
    svc.working_dir = Some("infra".into());
    svc.executable = Some(fake);
    svc.vars = vec!["region=eu".into()];
    svc.var_files = vec!["prod.tfvars".into()];
    svc.backend_config = vec!["path=state/x.tfstate".into()];
    let mut inputs = Inputs::new();
    inputs.insert("count".into(), json!(3));
    let opts = RunOptions {
        tofu_action: TofuAction::Apply,
        tofu_state: Some(json!({"serial": 41})),
        stdin: None,
    };
    let r = engine(t.path())
        .run_with(
            &svc,
            &inputs,
            &Secrets::new(),
            &CancellationToken::new(),
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(r.return_code, 0);
    assert_eq!(r.stdout, "tofu init ok\ntofu apply ok\n");
    assert_eq!(r.state, Some(json!({"serial": 42, "action": "apply"})));
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        lines[0],
        "init -input=false -no-color -backend-config=path=state/x.tfstate"
    );
    assert!(
        lines[1].starts_with(
            "apply -auto-approve -input=false -no-color -var region=eu -var count=3 -var-file=/"
        ) && lines[1].ends_with("/infra/prod.tfvars"),
        "{}",
        lines[1]
    );
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["state"]["serial"], 42);
}

#[tokio::test]
async fn ansible_arguments_with_a_stand_in() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    repo(
        &src,
        &[
            ("pb/site.yml", "- hosts: all\n"),
            ("pb/more.yml", "- hosts: all\n"),
            ("pb/hosts.ini", "localhost\n"),
        ],
    );
    let fake = fake_bin(
        t.path(),
        "ansible-playbook",
        // Each argument, and the vars file the inputs come in (as the run sees it).
        "for a in \"$@\"; do echo \"[$a]\"; case \"$a\" in @*) stat -c 'mode=%a' \"${a#@}\"; cat \"${a#@}\";; esac; done",
    );
    let mut svc = Service::new("ans", ServiceType::AnsiblePlaybook);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: None,
        credentials: None,
    });
    svc.working_dir = Some("pb".into());
    svc.executable = Some(fake);
    svc.playbooks = vec!["site.yml".into(), "more.yml".into()];
    svc.inventory = Some("hosts.ini".into());
    svc.extra_vars = vec!["env=prod".into()];
    let mut inputs = Inputs::new();
    inputs.insert("device".into(), json!("r1"));
    let r = engine(t.path())
        .run(&svc, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap();
    let words: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(words[0], "[-i]");
    assert!(
        words[1].ends_with("/pb/hosts.ini]")
            && words[2].ends_with("/pb/site.yml]")
            && words[3].ends_with("/pb/more.yml]")
    );
    assert_eq!(words[4], "[--extra-vars]");
    assert!(
        words[5].starts_with("[@") && words[5].ends_with(".yml]"),
        "{words:?}"
    );
    assert_eq!(
        &words[6..],
        [
            "mode=600",
            "# run inputs are tagged !unsafe: Ansible never templates them",
            r#""device": !unsafe "r1""#,
            r#""env": "prod""#,
        ]
    );
    // The vars file lives for the run only.
    let file = words[5].trim_start_matches("[@").trim_end_matches(']');
    assert!(!Path::new(file).exists(), "{file} removed");
}

#[tokio::test]
async fn ansible_playbook_for_real_when_installed() {
    let path = std::env::var("PATH").unwrap_or_default();
    if autogate_exec::which("ansible-playbook", &path).is_none() {
        eprintln!("SKIPPED: ansible-playbook is not installed on this machine (not in PATH)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    repo(
        &src,
        &[
            ("site.yml", "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug:\n        msg: \"device={{ device }}\"\n"),
            ("hosts.ini", "localhost ansible_connection=local\n"),
        ],
    );
    let mut svc = Service::new("ans", ServiceType::AnsiblePlaybook);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: None,
        credentials: None,
    });
    svc.playbooks = vec!["site.yml".into()];
    svc.inventory = Some("hosts.ini".into());
    let mut inputs = Inputs::new();
    inputs.insert("device".into(), json!("r1"));
    let r = engine(t.path())
        .run(&svc, &inputs, &Secrets::new(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.return_code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("device=r1"), "{}", r.stdout);
}

#[tokio::test]
async fn ansible_missing_is_named() {
    let t = tempfile::tempdir().unwrap();
    let mut svc = Service::new("ans", ServiceType::AnsiblePlaybook);
    svc.playbooks = vec!["site.yml".into()];
    svc.env
        .insert("PATH".into(), t.path().display().to_string());
    let e = engine(t.path())
        .run(
            &svc,
            &Inputs::new(),
            &Secrets::new(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with("ansible-playbook not found"),
        "{e}"
    );
}
