//! The facade over a memory store with real processes: create, list, run, feature flags, key
//! handling. (The HTTP, CLI and manager paths are tested end to end in the `autogate` crate.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

use std::sync::Arc;

use autogate_automation::{
    Automation, AutomationError, AutomationOptions, ErrorClass, Features, KeySource, RunRequest,
};
use autogate_resources::model::Kind;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn automation(dir: &std::path::Path, key: KeySource, features: Features) -> Automation {
    let store = autogate_store::open(autogate_store::StoreOptions::Memory)
        .await
        .unwrap();
    Automation::new(
        store as Arc<dyn autogate_store::Store>,
        "c1",
        AutomationOptions {
            work_dir: dir.join("runtime"),
            key,
            features,
            output_limit: autogate_exec::runner::DEFAULT_OUTPUT_LIMIT,
        },
    )
}

#[tokio::test]
async fn executable_with_secret_runs_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeySource::LocalDefault(dir.path().join("secrets.key"));
    let a = automation(dir.path(), key, Features::default()).await;
    a.create(
        Kind::ExecutableObject,
        json!({"name": "sh", "exec-command": "/bin/sh"}),
    )
    .await
    .unwrap();
    a.create(
        Kind::Secret,
        json!({"name": "tok", "value": "s3cr3t-value"}),
    )
    .await
    .unwrap();
    a.create(
        Kind::Decorator,
        json!({"name": "d", "schema": {"type": "object",
            "properties": {"cmd": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["n"],
            "additionalProperties": false}}),
    )
    .await
    .unwrap();
    a.create(
        Kind::Service,
        json!({"name": "echo", "type": "executable", "executable-object": "sh",
               "decorator": "d", "arg-format": "-c {{.Value}}",
               "secrets": [{"name": "tok", "type": "env", "target": "TOKEN"}]}),
    )
    .await
    .unwrap();
    // The key file was created on first need, private to its owner.
    let mode = std::fs::metadata(dir.path().join("secrets.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o400
    );

    let req = RunRequest {
        service: "echo".into(),
        // sh -c 'echo got $TOKEN' -c 7: the script sees the secret, `n` arrives as an integer.
        set: vec!["cmd=echo got $TOKEN $1".into(), "n=7".into()],
        ..Default::default()
    };
    let r = a.run(&req, &CancellationToken::new()).await.unwrap();
    assert_eq!(r.return_code, 0, "{r:?}");
    assert_eq!(r.stdout, "got ******** 7\n");

    // Listing never shows the sealed value.
    let secrets = a.list(Kind::Secret).await.unwrap();
    assert_eq!(secrets[0]["value"], "********");
    assert!(!a
        .get(Kind::Secret, "tok")
        .await
        .unwrap()
        .to_string()
        .contains("v2:"));

    // Every violation, nothing runs.
    let bad = RunRequest {
        service: "echo".into(),
        set: vec!["n=x".into(), "extra=1".into()],
        ..Default::default()
    };
    let err = a.run(&bad, &CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Invalid);
    let detail = err.detail().unwrap().to_string();
    assert!(detail.contains("/n"), "{detail}");

    // Asking for the wrong type is refused with both types named.
    let wrong = RunRequest {
        service: "echo".into(),
        service_type: Some(autogate_exec::ServiceType::PythonScript),
        ..Default::default()
    };
    let err = a.run(&wrong, &CancellationToken::new()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "service echo is executable, not python-script"
    );

    let catalog = a.catalog().await.unwrap();
    assert_eq!(catalog.len(), 1);
    assert_eq!(catalog[0].schema.as_ref().unwrap()["required"][0], "n");
}

#[tokio::test]
async fn server_without_key_file_runs_secretless_services_and_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let a = automation(dir.path(), KeySource::Missing, Features::default()).await;
    let err = a
        .create(Kind::Secret, json!({"name": "tok", "value": "x"}))
        .await
        .unwrap_err();
    assert!(matches!(err, AutomationError::KeyMissing));
    assert!(err.to_string().contains("GATEWAY_SECRETS_ENCRYPT_KEY_FILE"));
    a.create(
        Kind::ExecutableObject,
        json!({"name": "t", "exec-command": "/bin/true"}),
    )
    .await
    .unwrap();
    a.create(
        Kind::Service,
        json!({"name": "noop", "type": "executable", "executable-object": "t"}),
    )
    .await
    .unwrap();
    let req = RunRequest {
        service: "noop".into(),
        ..Default::default()
    };
    assert_eq!(
        a.run(&req, &CancellationToken::new())
            .await
            .unwrap()
            .return_code,
        0
    );
}

#[tokio::test]
async fn disabled_types_can_be_neither_managed_nor_run() {
    let dir = tempfile::tempdir().unwrap();
    let features = Features {
        python: false,
        ..Features::default()
    };
    let a = automation(dir.path(), KeySource::Missing, features).await;
    let err = a
        .create(
            Kind::Service,
            json!({"name": "p", "type": "python-script", "repository": "r", "filename": "m.py"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert!(err.to_string().contains("python_enabled"), "{err}");
    let err = a
        .import(
            "services:\n  - name: p\n    type: python-script\n",
            Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
}
