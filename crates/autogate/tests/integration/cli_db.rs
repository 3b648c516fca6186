//! Black-box tests of `autogate db export|import` in local mode: an export imported into a fresh
//! working directory gives the same resources (and its secret still opens with the shared key),
//! `--check` lists the outcomes and writes nothing, `--force` replaces, and a bad file changes
//! nothing and exits 64 naming the problem.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use autogate_testkit::{Autogate, Output};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::local::{in_work_dir, Cli};
use crate::support::{expect_code, git_repo};

const DEADLINE: Duration = Duration::from_secs(60);

/// The program of the service the tests export and import.
const RUN_SH: &str = "#!/bin/sh\necho \"tok=[$TOKEN] $*\"\n";

/// A local-mode working directory; every node of the test shares one secrets key file.
struct Local {
    work: PathBuf,
    key: PathBuf,
}

impl Local {
    fn new(root: &Path, name: &str) -> Self {
        let key = root.join("secrets.key");
        if !key.exists() {
            std::fs::write(&key, "6f".repeat(32)).expect("key");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        }
        Local {
            work: root.join(name),
            key,
        }
    }

    /// Every resource, without the store's timestamps.
    fn snapshot(&self) -> Value {
        let mut all = serde_json::Map::new();
        for plural in [
            "decorators",
            "repositories",
            "services",
            "secrets",
            "executable-objects",
            "registries",
        ] {
            let mut v = self.raw(&["get", plural]);
            if let Some(items) = v[plural].as_array_mut() {
                for i in items {
                    if let Some(m) = i.as_object_mut() {
                        m.remove("created");
                        m.remove("updated");
                    }
                }
            }
            all.insert(plural.to_owned(), v[plural].take());
        }
        Value::Object(all)
    }
}

impl Cli for Local {
    fn cmd(&self, args: &[&str]) -> Autogate {
        in_work_dir(&self.work, args).env(
            "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
            self.key.display().to_string(),
        )
    }

    fn deadline(&self) -> Duration {
        DEADLINE
    }
}

fn populate(l: &Local, url: &str) {
    l.ok(&["create", "secret", "tok", "--value", "PLAIN-db-secret"]);
    l.ok(&[
        "create",
        "repository",
        "repo",
        "--url",
        url,
        "--reference",
        "main",
    ]);
    l.ok(&[
        "create",
        "decorator",
        "deco",
        "--schema",
        r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#,
    ]);
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    l.ok(&[
        "create",
        "registry",
        "ansible-galaxy",
        "galaxy2",
        "--url",
        "https://galaxy.example.invalid",
    ]);
    l.ok(&[
        "create",
        "service",
        "executable",
        "exe",
        "--repository",
        "repo",
        "--executable-object",
        "sh",
        "--filename",
        "run.sh",
        "--decorator",
        "deco",
        "--secret",
        "name=tok,type=env,target=TOKEN",
        "--description",
        "round trip",
        "--tag",
        "t",
    ]);
}

fn outcome_lines(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| {
            ["Add ", "Unchanged ", "Conflict ", "Replacement "]
                .iter()
                .any(|o| l.starts_with(o))
        })
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn export_then_import_into_a_fresh_working_dir() {
    let root = TempDir::new().expect("tmp");
    let a = Local::new(root.path(), "a");
    let url = git_repo(&root.path().join("repo"), &[("run.sh", RUN_SH)]);
    populate(&a, &url);

    let yaml = a.ok(&["db", "export"]);
    for section in [
        "decorators:",
        "repositories:",
        "services:",
        "secrets:",
        "registries:",
    ] {
        assert!(yaml.contains(section), "{section} missing in\n{yaml}");
    }
    assert!(!yaml.contains("PLAIN-db-secret"), "{yaml}");
    let file = root.path().join("export.yaml");
    let out = a.ok(&["db", "export", "--output", file.to_str().expect("utf-8")]);
    assert!(out.contains("export.yaml"), "{out}");
    let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let f = file.to_str().expect("utf-8");

    // --check on a fresh node: every outcome listed, nothing written.
    let b = Local::new(root.path(), "b");
    let before = b.snapshot();
    let out = b.ok(&["db", "import", f, "--check"]);
    let lines = outcome_lines(&out);
    assert!(
        lines.contains(&vec!["Add".into(), "service".into(), "exe".into()]),
        "{out}"
    );
    assert!(
        lines.contains(&vec!["Add".into(), "secret".into(), "tok".into()]),
        "{out}"
    );
    for builtin in ["default-pypi", "default-galaxy"] {
        assert!(
            lines.contains(&vec!["Unchanged".into(), "registry".into(), builtin.into()]),
            "the built-ins exist on every node, the same: {out}"
        );
    }
    assert!(!out.contains("Conflict"), "{out}");
    assert!(out.contains("nothing written"), "{out}");
    assert_eq!(b.snapshot(), before, "--check wrote something");
    let raw = b.raw(&["db", "import", f, "--check"]);
    assert_eq!(raw["written"], false);
    assert!(raw["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|i| i["kind"] == "repository" && i["name"] == "repo" && i["outcome"] == "add"));

    // The import itself: the same resources as the source.
    let out = b.ok(&["db", "import", f]);
    assert!(out.contains("Imported"), "{out}");
    assert_eq!(b.snapshot(), a.snapshot());
    // The secret came across sealed and still opens with the cluster's key.
    let out = b.ok(&["run", "service", "executable", "exe", "--set", "n=5"]);
    assert!(out.contains("tok=[********] --n=5"), "{out}");

    // Again, with or without --force: every item is unchanged and nothing is written.
    for force in [&[][..], &["--force"]] {
        let mut args = vec!["db", "import", f];
        args.extend_from_slice(force);
        let out = b.ok(&args);
        let lines = outcome_lines(&out);
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l[0] == "Unchanged"),
            "{out}"
        );
        assert!(out.contains("Nothing written"), "{out}");
        assert!(!out.contains("--force"), "nothing to force: {out}");
    }

    // One resource changed here: that one conflicts, and --force replaces only it.
    b.ok(&["delete", "registry", "galaxy2"]);
    b.ok(&[
        "create",
        "registry",
        "ansible-galaxy",
        "galaxy2",
        "--url",
        "https://other.example.invalid",
    ]);
    let out = b.ok(&["db", "import", f]);
    let lines = outcome_lines(&out);
    let conflicts: Vec<&Vec<String>> = lines.iter().filter(|l| l[0] != "Unchanged").collect();
    assert_eq!(
        conflicts,
        [&vec![
            "Conflict".to_owned(),
            "registry".into(),
            "galaxy2".into()
        ]],
        "{out}"
    );
    assert!(out.contains("use --force"), "{out}");
    let out = b.ok(&["db", "import", f, "--force"]);
    let lines = outcome_lines(&out);
    let replaced: Vec<&Vec<String>> = lines.iter().filter(|l| l[0] != "Unchanged").collect();
    assert_eq!(
        replaced,
        [&vec![
            "Replacement".to_owned(),
            "registry".into(),
            "galaxy2".into()
        ]],
        "{out}"
    );
    assert_eq!(b.snapshot(), a.snapshot());
}

#[test]
fn a_bad_file_changes_nothing() {
    let root = TempDir::new().expect("tmp");
    let l = Local::new(root.path(), "n");
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    let before = l.snapshot();
    let write = |name: &str, text: &str| {
        let p = root.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };

    // A valid item next to one that names a missing repository: neither is written.
    let f = write(
        "missing-ref.yaml",
        "decorators:\n  - name: ok\n    schema: {type: object}\nservices:\n  - name: s\n    type: python-script\n    repository: nowhere\n    filename: main.py\n",
    );
    let out = l.expect(&["db", "import", &f], 64);
    assert!(out.stderr.contains("nowhere"), "{}", out.stderr);
    assert!(out.stderr.contains("missing-ref.yaml"), "{}", out.stderr);
    assert_eq!(l.snapshot(), before);

    // Unknown key: named.
    let f = write(
        "typo.yaml",
        "executable-objects:\n  - name: py\n    exec-command: /usr/bin/python3\n    exec-comand: x\n",
    );
    let out = l.expect(&["db", "import", &f], 64);
    assert!(out.stderr.contains("exec-comand"), "{}", out.stderr);
    assert_eq!(l.snapshot(), before);

    // Not YAML at all; the same name twice; a missing file.
    let f = write("garbage.yaml", "services: [unclosed\n");
    l.expect(&["db", "import", &f], 64);
    let f = write(
        "dup.yaml",
        "executable-objects:\n  - {name: x, exec-command: /bin/a}\n  - {name: x, exec-command: /bin/b}\n",
    );
    let out = l.expect(&["db", "import", &f], 64);
    assert!(out.stderr.contains("more than once"), "{}", out.stderr);
    let out = l.expect(&["db", "import", "/no/such/file.yaml"], 64);
    assert!(out.stderr.contains("/no/such/file.yaml"), "{}", out.stderr);
    assert_eq!(l.snapshot(), before);
}

/// `autogate <args…>` in local mode on `work`, with `env` and no key file setting unless given.
fn run_in(work: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = in_work_dir(work, args);
    for (k, v) in env {
        cmd = cmd.env(k, *v);
    }
    cmd.output(DEADLINE)
}

#[test]
fn an_import_on_a_fresh_machine_asks_for_the_source_key_file() {
    let root = TempDir::new().expect("tmp");
    let a = Local::new(root.path(), "a");
    let url = git_repo(&root.path().join("repo"), &[("run.sh", RUN_SH)]);
    populate(&a, &url);
    let file = root.path().join("export.yaml");
    let f = file.to_str().expect("utf-8");
    a.ok(&["db", "export", "--output", f]);

    // A fresh machine: no key file at the local-mode default. Refused once, naming the setting,
    // its variable, the default path and what to copy; nothing imported, no key made up.
    let fresh = root.path().join("fresh");
    let default_key = fresh.join("secrets.key");
    let args = ["db", "import", f];
    let out = expect_code(run_in(&fresh, &[], &args), &args, 64);
    let err = out.stderr;
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let path = default_key.display().to_string();
    assert_eq!(err.matches(&path).count(), 1, "the path once: {err}");
    for needle in [
        "sealed with the key file of the cluster that exported it",
        "copy that cluster's key file",
        "[secrets] encrypt_key_file",
        "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
        "<working_dir>/secrets.key",
        "nothing was imported",
    ] {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
    assert!(!default_key.exists(), "a new key would never open the file");
    let out = expect_code(run_in(&fresh, &[], &["get", "secrets"]), &["get"], 0);
    assert!(!out.stdout.contains("tok"), "{}", out.stdout);

    // A configured key file that is not there: the same advice, with that path.
    let elsewhere = root.path().join("copied.key");
    let e = elsewhere.display().to_string();
    let env = [("GATEWAY_SECRETS_ENCRYPT_KEY_FILE", e.as_str())];
    let out = expect_code(run_in(&fresh, &env, &args), &args, 64);
    assert_eq!(out.stderr.matches(&e).count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("copy that cluster's key file there"),
        "{}",
        out.stderr
    );

    // Another cluster's key: the secret that does not open is named, with the same advice.
    std::fs::write(&elsewhere, "7a".repeat(32)).expect("key");
    let out = expect_code(run_in(&fresh, &env, &args), &args, 64);
    assert!(
        out.stderr
            .contains("secret tok does not open with the key file")
            && out.stderr.contains("copy that cluster's key file"),
        "{}",
        out.stderr
    );

    // The source's key copied to the default path: the import goes through and the secret opens.
    std::fs::copy(&a.key, &default_key).expect("copy the key");
    let out = expect_code(run_in(&fresh, &[], &args), &args, 0);
    assert!(out.stdout.contains("Imported"), "{}", out.stdout);
    // The built-in registries are the same on both machines: unchanged, not conflicts.
    let lines = outcome_lines(&out.stdout);
    for builtin in ["default-pypi", "default-galaxy"] {
        assert!(
            lines.contains(&vec!["Unchanged".into(), "registry".into(), builtin.into()]),
            "{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("--force"), "{}", out.stdout);
    let args = ["run", "service", "executable", "exe", "--set", "n=5"];
    let out = expect_code(run_in(&fresh, &[], &args), &args, 0);
    assert!(
        out.stdout.contains("tok=[********] --n=5"),
        "{}",
        out.stdout
    );
}
