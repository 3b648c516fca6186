//! The family's settings the engine honours beyond Ansible: `[python-script] requirements_file`
//! picks the venv of a service without its own requirement file, and an OpenTofu service's
//! runtime `action` and `state-file` reach `tofu` (a stand-in recording its arguments), whose
//! state comes back as `state` and `state_file`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

mod common;

use std::path::Path;

use autogate_exec::{
    Engine, EngineConfig, Inputs, Repository, RunOptions, Secrets, Service, ServiceType, TofuAction,
};
use common::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = "import json, sys\nprint(json.dumps({'argv': sys.argv[1:], 'in_venv': sys.prefix != sys.base_prefix}))\n";

fn python_service(src: &Path) -> Service {
    repo(
        src,
        &[
            ("main.py", SCRIPT),
            // Only the configured name exists: a venv is built exactly when it is honoured.
            ("deps.txt", "# no packages\n"),
        ],
    );
    let mut svc = Service::new("py", ServiceType::PythonScript);
    svc.repository = Some(Repository {
        url: file_url(src),
        reference: None,
        credentials: None,
    });
    svc.filename = Some("main.py".into());
    svc.decorator = Some(json!({"type": "object", "properties": {
        "device": {"type": "string"}, "port": {"type": "integer"}, "dry_run": {"type": "boolean"}
    }}));
    svc
}

#[tokio::test]
async fn requirements_file_setting_picks_the_venv_and_every_property_is_passed() {
    let t = tempfile::tempdir().unwrap();
    let svc = python_service(&t.path().join("src"));
    let mut inputs = Inputs::new();
    inputs.insert("device".into(), json!("r1"));
    let cancel = CancellationToken::new();

    // The default name (requirements.txt) is absent: the bare interpreter runs.
    let r = Engine::new(EngineConfig::new(t.path().join("work")))
        .run(&svc, &inputs, &Secrets::new(), &cancel)
        .await
        .unwrap();
    assert_eq!(r.return_code, 0, "{}", r.stderr);
    let said: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(said["in_venv"], false);
    // Unset properties arrive as "" (the unset boolean is left out).
    assert_eq!(said["argv"], json!(["--device=r1", "--port="]));

    // `[python-script] requirements_file = deps.txt`: its venv.
    let mut cfg = EngineConfig::new(t.path().join("work"));
    cfg.requirements_file = "deps.txt".into();
    let r = Engine::new(cfg)
        .run(&svc, &inputs, &Secrets::new(), &cancel)
        .await
        .unwrap();
    assert_eq!(r.return_code, 0, "{}", r.stderr);
    let said: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(said["in_venv"], true);
    assert!(r.environment_build_time.is_some());

    // The service's own req-file wins over the setting, and leaves the checkout only refused.
    let mut own = svc.clone();
    own.req_file = Some("../outside.txt".into());
    let mut cfg = EngineConfig::new(t.path().join("work"));
    cfg.requirements_file = "deps.txt".into();
    let e = Engine::new(cfg)
        .run(&own, &inputs, &Secrets::new(), &cancel)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("req_file"), "{e}");
}

fn fake_tofu(dir: &Path, log: &Path) -> std::path::PathBuf {
    // Records each call; apply writes the state file named by -state= (else the default one).
    let p = dir.join("tofu");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\necho \"$*\" >> {log}\nstate=terraform.tfstate\nfor a in \"$@\"; do case \"$a\" in -state=*) state=\"${{a#-state=}}\";; esac; done\nif [ \"$1\" = apply ]; then echo '{{\"serial\": 7}}' > \"$state\"; fi\necho \"tofu $1 ok\"\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

#[tokio::test]
async fn tofu_runtime_action_and_state_file() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    repo(
        &src,
        &[("infra/main.tf", "# nothing\n"), ("infra/state/.keep", "")],
    );
    let log = t.path().join("tofu.log");
    let mut svc = Service::new("plan", ServiceType::OpentofuPlan);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: None,
        credentials: None,
    });
    svc.working_dir = Some("infra".into());
    svc.executable = Some(fake_tofu(t.path(), &log));
    svc.tofu_state_file = Some("state/prod.tfstate".into());
    let engine = Engine::new(EngineConfig::new(t.path().join("work")));
    let cancel = CancellationToken::new();

    let r = engine
        .run(&svc, &Inputs::new(), &Secrets::new(), &cancel)
        .await
        .unwrap();
    assert_eq!(r.return_code, 0, "{}", r.stderr);
    assert_eq!(r.state, Some(json!({"serial": 7})));
    assert_eq!(r.state_file, r.state);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["state_file"], json!({"serial": 7}));
    let calls = std::fs::read_to_string(&log).unwrap();
    let apply = calls.lines().nth(1).unwrap();
    assert!(
        apply.starts_with("apply -auto-approve -input=false -no-color -state=/")
            && apply.ends_with("/infra/state/prod.tfstate"),
        "{apply}"
    );

    // plan: no -auto-approve, nothing written, the state given comes back as it was.
    let opts = RunOptions {
        tofu_action: TofuAction::Plan,
        tofu_state: Some(json!({"serial": 3})),
        stdin: None,
    };
    let r = engine
        .run_with(&svc, &Inputs::new(), &Secrets::new(), &cancel, &opts)
        .await
        .unwrap();
    assert_eq!(r.return_code, 0, "{}", r.stderr);
    assert_eq!(r.state_file, Some(json!({"serial": 3})));
    let calls = std::fs::read_to_string(&log).unwrap();
    let plan = calls.lines().nth(3).unwrap();
    assert!(
        plan.starts_with("plan -input=false -no-color -state=/"),
        "{plan}"
    );

    // A state file outside the checkout is refused before tofu runs.
    svc.tofu_state_file = Some("../../elsewhere.tfstate".into());
    let e = engine
        .run(&svc, &Inputs::new(), &Secrets::new(), &cancel)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("state_file"), "{e}");
}
