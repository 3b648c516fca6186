//! Import/export against the memory store and a local store file.

mod common;

use autogate_resources::{
    Decorator, ImportError, ImportMode, ImportOutcome, Kind, Repository, ResourceError, Resources,
    Secret, Service,
};
use common::*;

const FAMILY_FILE: &str = r#"
decorators:
  - name: device-input
    schema: {"$id": "root", "type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"], "additionalProperties": false}
repositories:
  - name: automation
    description: network scripts
    url: https://git.example/automation.git
    reference: main
    tags: [network, prod]
    username: deploy
    password-name: git-token
services:
  - name: backup-config
    type: python-script
    description: back up a device configuration
    working-directory: scripts
    repository: automation
    decorator: device-input
    tags: [backup]
    filename: backup.py
    secrets:
      - {name: git-token, type: env, target: GIT_TOKEN}
  - name: site
    type: ansible-playbook
    repository: automation
    playbooks: [site.yml, verify.yml]
    runtime: {check: true, diff: false, skip-tags: [slow], inventory: [hosts.ini], verbose-level: 2}
  - name: ping
    type: executable
    executable-object: bash
    arg-format: "{{.Key}}={{.Value}}"
executable-objects:
  - name: bash
    exec-command: /bin/bash
registries:
  - name: internal-pypi
    type: pypi
    url: https://pypi.internal.example/simple
    default: true
"#;

fn family_file() -> String {
    // The secret travels sealed with the cluster key.
    let sealed = secret("git-token", "tok-PLAINTEXT-42").value;
    format!("{FAMILY_FILE}secrets:\n  - name: git-token\n    value: \"{sealed}\"\n")
}

fn outcomes(report: &autogate_resources::ImportReport) -> Vec<(Kind, &str, ImportOutcome)> {
    report
        .items
        .iter()
        .map(|i| (i.kind, i.name.as_str(), i.outcome))
        .collect()
}

#[tokio::test]
async fn import_family_file_then_export_round_trips() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let file = family_file();
        let report = r.import(&file, ImportMode::default()).await.unwrap();
        assert!(report.written);
        assert_eq!(report.items.len(), 8);
        assert!(report.items.iter().all(|i| i.outcome == ImportOutcome::Add));
        let svc: Service = r.get("site").await.unwrap().unwrap();
        assert_eq!(svc.playbooks, ["site.yml", "verify.yml"]);
        assert_eq!(svc.runtime.unwrap().verbose_level, Some(2));
        assert!(svc.meta.created.is_some());
        let repo: Repository = r.get("automation").await.unwrap().unwrap();
        assert_eq!(repo.meta.tags, ["network", "prod"]);
        let s: Secret = r.get("git-token").await.unwrap().unwrap();
        assert_eq!(s.decrypt(&key()).unwrap().expose(), "tok-PLAINTEXT-42");

        let exported = r.export().await.unwrap();
        assert!(
            exported.contains("working-directory: scripts"),
            "{exported}"
        );
        assert!(exported.contains("executable-objects:"), "{exported}");
        assert!(!exported.contains("PLAINTEXT"));
        // Into another cluster: the same resources.
        let other = Resources::new(b.store.clone(), "c2");
        let report = other
            .import(&exported, ImportMode::default())
            .await
            .unwrap();
        assert_eq!(report.items.len(), 8);
        let a: Service = r.get("backup-config").await.unwrap().unwrap();
        let mut bsvc: Service = other.get("backup-config").await.unwrap().unwrap();
        bsvc.meta.created = a.meta.created;
        bsvc.meta.updated = a.meta.updated;
        assert_eq!(a, bsvc);
    }
}

#[tokio::test]
async fn check_mode_and_conflicts_and_force() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let file = family_file();
        let before = dump(&b.store).await;
        let report = r
            .import(
                &file,
                ImportMode {
                    check: true,
                    force: false,
                },
            )
            .await
            .unwrap();
        assert!(!report.written);
        assert_eq!(report.items.len(), 8);
        assert_eq!(dump(&b.store).await, before, "check mode wrote");

        let mut d = decorator("device-input");
        d.meta.description = "kept unless forced".into();
        r.create(d).await.unwrap();
        let original: Decorator = r.get("device-input").await.unwrap().unwrap();
        let report = r.import(&file, ImportMode::default()).await.unwrap();
        let o = outcomes(&report);
        assert_eq!(
            o[0],
            (Kind::Decorator, "device-input", ImportOutcome::Conflict)
        );
        assert!(o[1..].iter().all(|x| x.2 == ImportOutcome::Add));
        // Conflict: the existing decorator is untouched.
        assert_eq!(
            r.get::<Decorator>("device-input").await.unwrap().unwrap(),
            original
        );

        let report = r
            .import(
                &file,
                ImportMode {
                    check: false,
                    force: true,
                },
            )
            .await
            .unwrap();
        // Only what differs is replaced; what the last import wrote is unchanged, not rewritten.
        let o = outcomes(&report);
        assert_eq!(
            o[0],
            (Kind::Decorator, "device-input", ImportOutcome::Replacement)
        );
        assert!(o[1..].iter().all(|x| x.2 == ImportOutcome::Unchanged));
        let replaced: Decorator = r.get("device-input").await.unwrap().unwrap();
        assert_eq!(replaced.meta.created, original.meta.created);
        assert_eq!(replaced.meta.description, "");

        // Re-import, with or without force: everything is unchanged, nothing written.
        let before = dump(&b.store).await;
        for force in [false, true] {
            let mode = ImportMode {
                check: false,
                force,
            };
            let report = r.import(&file, mode).await.unwrap();
            assert!(!report.written);
            assert!(report
                .items
                .iter()
                .all(|i| i.outcome == ImportOutcome::Unchanged));
            assert_eq!(dump(&b.store).await, before);
        }
    }
}

#[tokio::test]
async fn bad_files_change_nothing() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        r.create(repo("existing")).await.unwrap();
        let good = family_file();
        let cases: Vec<(String, &str)> = vec![
            ("services: [".into(), "not a valid resource file"),
            ("widgets: []".into(), "widgets"),
            (
                good.replace("working-directory: scripts", "working-dir: scripts"),
                "working-dir",
            ),
            (good.replace("name: ping", "name: pi/ng"), "invalid name"),
            (
                good.replace(
                    "repository: automation\n    playbooks",
                    "repository: nowhere\n    playbooks",
                ),
                "repository nowhere",
            ),
            (
                good.replace(
                    "\"type\": \"object\", \"properties\"",
                    "\"type\": 12, \"properties\"",
                ),
                "schema",
            ),
            (
                good.replace("exec-command: /bin/bash", "exec-command: bin/bash"),
                "exec-command",
            ),
            (good.replace("value: \"v2:", "value: \"v9:"), "value"),
            (
                format!("{good}  - name: git-token\n    value: x\n"),
                "more than once",
            ),
            (
                good.replace("filename: backup.py", "playbooks: [x.yml]"),
                "filename",
            ),
        ];
        for (file, expect) in cases {
            let before = dump(&b.store).await;
            let err = r
                .import(
                    &file,
                    ImportMode {
                        check: false,
                        force: true,
                    },
                )
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains(expect),
                "expected {expect:?} in: {err}"
            );
            assert_eq!(
                dump(&b.store).await,
                before,
                "store changed by a bad file ({expect})"
            );
        }
        // References may also point into the store.
        let ok = "services:\n  - name: s\n    type: python-script\n    repository: existing\n    filename: a.py\n";
        r.import(ok, ImportMode::default()).await.unwrap();
        let missing = "services:\n  - name: s2\n    type: python-script\n    repository: gone\n    filename: a.py\n";
        let err = r.import(missing, ImportMode::default()).await.unwrap_err();
        assert!(matches!(
            err,
            ImportError::Resource(ResourceError::MissingReference { .. })
        ));
    }
}

#[tokio::test]
async fn empty_file_imports_nothing() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let report = r.import("", ImportMode::default()).await.unwrap();
        assert!(report.items.is_empty() && !report.written);
        assert_eq!(r.export().await.unwrap().trim(), "{}");
    }
}

#[tokio::test]
async fn import_with_key_refuses_foreign_secrets() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let foreign = autogate_resources::KeyFile::from_bytes("another cluster").unwrap();
        let sealed = Secret::new("s", "v", &foreign).unwrap().value;
        let file = format!("secrets:\n  - name: s\n    value: \"{sealed}\"\n");
        let before = dump(&b.store).await;
        let err = r
            .import_with_key(&file, ImportMode::default(), &key())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "wrong key file or corrupted secret s");
        assert_eq!(dump(&b.store).await, before);
        r.import_with_key(&file, ImportMode::default(), &foreign)
            .await
            .unwrap();
    }
}
