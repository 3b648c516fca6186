//! The four service types end to end through the real binary in local mode: real git
//! repositories made here, real Python venvs with a package from the registry and one from a
//! local path, real Ansible against localhost, OpenTofu when installed; the progress and time
//! of an environment build; and secrets at rest in the raw local and etcd stores.

use std::path::{Path, PathBuf};
use std::time::Duration;

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::{Autogate, Output};
use serde_json::Value;

use crate::support::git_repo;

const DEADLINE: Duration = Duration::from_secs(60);
/// A venv build downloads from the package registry.
const BUILD_DEADLINE: Duration = Duration::from_secs(300);

/// One CLI command over the shared working dir `work`.
fn cli(work: &Path, args: &[&str], deadline: Duration) -> Output {
    let mut cmd = Autogate::new(args.iter().copied()).env(
        "GATEWAY_APPLICATION_WORKING_DIR",
        work.display().to_string(),
    );
    for (k, v) in extra_env(work) {
        cmd = cmd.env(&k, v);
    }
    cmd.output(deadline)
}

/// Per-test extra variables, kept in a file next to the working dir so `cli` stays short.
fn extra_env(work: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(work.with_extension("env"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn ok(out: &Output, what: &str) {
    assert_eq!(
        out.code(),
        Some(0),
        "{what}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

fn raw_result(out: &Output) -> Value {
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--raw output is JSON ({e}): {}", out.stdout));
    // Accept the bare result or the API's {"status","result"} envelope.
    if v.get("result").is_some() {
        v["result"].clone()
    } else {
        v
    }
}

fn venvs(work: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![work.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "pyvenv.cfg") {
                found.push(p.clone());
            } else if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    found
}

const SCRIPT: &str = r#"
import argparse, json, os, six, localpkg
p = argparse.ArgumentParser()
p.add_argument("--device")
p.add_argument("--port", type=int)
p.add_argument("--dry_run", action="store_true")
a = p.parse_args()
print(json.dumps({"device": a.device, "port": a.port, "dry_run": a.dry_run,
                  "six": six.__name__, "local": localpkg.GREETING}))
"#;

const SCHEMA: &str = r#"{"$schema":"http://json-schema.org/draft-07/schema#","type":"object",
 "properties":{"device":{"type":"string"},"port":{"type":"integer","maximum":65535},
 "dry_run":{"type":"boolean"}},"required":["device","port"],"additionalProperties":false}"#;

#[test]
fn python_script_with_registry_and_local_requirements() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let url = git_repo(
        &t.path().join("src"),
        &[
            ("app/main.py", SCRIPT),
            ("app/requirements.txt", "six==1.17.0\n./localpkg\n"),
            (
                "app/localpkg/pyproject.toml",
                "[project]\nname = \"localpkg\"\nversion = \"0.1\"\n[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n",
            ),
            ("app/localpkg/localpkg/__init__.py", "GREETING = 'from a local path'\n"),
        ],
    );
    ok(
        &cli(
            &work,
            &["create", "repository", "code", "--url", &url],
            DEADLINE,
        ),
        "create repository",
    );
    ok(
        &cli(
            &work,
            &["create", "decorator", "dev", "--schema", SCHEMA],
            DEADLINE,
        ),
        "create decorator",
    );
    ok(
        &cli(
            &work,
            &[
                "create",
                "service",
                "python-script",
                "probe",
                "--repository",
                "code",
                "--working-dir",
                "app",
                "--filename",
                "main.py",
                "--decorator",
                "dev",
            ],
            DEADLINE,
        ),
        "create service",
    );
    let run = |deadline| {
        cli(
            &work,
            &[
                "run",
                "service",
                "python-script",
                "probe",
                "--set",
                "device=r1",
                "--set",
                "port=22",
                "--set",
                "dry_run",
                "--raw",
            ],
            deadline,
        )
    };
    let first = run(BUILD_DEADLINE);
    ok(&first, "first run");
    let r = raw_result(&first);
    assert_eq!(r["return_code"], 0, "{r}");
    assert_eq!(
        r["stdout_json"],
        serde_json::json!({"device": "r1", "port": 22, "dry_run": true,
                           "six": "six", "local": "from a local path"})
    );
    let built = venvs(&work);
    assert_eq!(built.len(), 1, "one venv after the first run: {built:?}");
    let mtime = std::fs::metadata(&built[0]).unwrap().modified().unwrap();

    let second = run(DEADLINE);
    ok(&second, "second run");
    assert_eq!(raw_result(&second)["stdout_json"], r["stdout_json"]);
    let again = venvs(&work);
    assert_eq!(again, built, "the second run reuses the venv");
    assert_eq!(
        std::fs::metadata(&again[0]).unwrap().modified().unwrap(),
        mtime,
        "the venv was not rebuilt"
    );

    // Text layout of the family: stdout block, return code, times.
    let text = cli(
        &work,
        &[
            "run",
            "service",
            "python-script",
            "probe",
            "--set",
            "device=r2",
            "--set",
            "port=23",
        ],
        DEADLINE,
    );
    ok(&text, "text run");
    for needle in [
        "\"device\": \"r2\"",
        "Start Time:",
        "End Time:",
        "Elapsed Time:",
    ] {
        assert!(text.stdout.contains(needle), "{needle} in {}", text.stdout);
    }

    // Violations are all listed and nothing runs.
    let bad = cli(
        &work,
        &[
            "run",
            "service",
            "python-script",
            "probe",
            "--set",
            "port=99999",
            "--set",
            "colour=red",
        ],
        DEADLINE,
    );
    assert_eq!(bad.code(), Some(64), "{}", bad.stderr);
    for needle in ["/port", "device", "colour"] {
        assert!(bad.stderr.contains(needle), "{needle} in {}", bad.stderr);
    }
}

/// A PEP 517 backend in the package's own tree that packs `tinypkg/` into a wheel with the
/// standard library only: installing the package needs neither the network nor setuptools.
const TINY_BACKEND: &str = r#"
import base64, hashlib, os, zipfile
NAME, VERSION = "tinypkg", "0.1.0"
DIST = f"{NAME}-{VERSION}.dist-info"
def _line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {}
    for root, _, names in os.walk(NAME):
        for n in names:
            if n.endswith(".py"):
                p = os.path.join(root, n)
                with open(p, "rb") as f:
                    files[p.replace(os.sep, "/")] = f.read()
    files[f"{DIST}/METADATA"] = f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode()
    files[f"{DIST}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tiny\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [_line(p, d) for p, d in files.items()] + [f"{DIST}/RECORD,,"]
    files[f"{DIST}/RECORD"] = ("\n".join(record) + "\n").encode()
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
    return name
"#;

/// The first run of a python-script service with a requirements.txt builds its environment:
/// with standard error not a terminal, a plain line says so while it happens (before the
/// result), and the result shows the build's time beside Elapsed Time; the second run reuses
/// the environment and shows neither.
#[test]
fn python_environment_build_is_shown_and_timed() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let url = git_repo(
        &t.path().join("src"),
        &[
            (
                "app/main.py",
                "import tinypkg\nprint(tinypkg.GREETING)\n",
            ),
            ("app/requirements.txt", "./pkg\n"),
            (
                "app/pkg/pyproject.toml",
                "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"tinypkg\"\nversion = \"0.1.0\"\n",
            ),
            ("app/pkg/backend.py", TINY_BACKEND),
            ("app/pkg/tinypkg/__init__.py", "GREETING = 'from tinypkg'\n"),
        ],
    );
    for args in [
        &["create", "repository", "code", "--url", url.as_str()][..],
        &[
            "create",
            "service",
            "python-script",
            "greet",
            "--repository",
            "code",
            "--working-dir",
            "app",
            "--filename",
            "main.py",
        ],
    ] {
        ok(&cli(&work, args, DEADLINE), &format!("{args:?}"));
    }
    let run = || {
        let mut p = Autogate::new(["run", "service", "python-script", "greet"])
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                work.display().to_string(),
            )
            .spawn();
        let status = p.wait_exit(BUILD_DEADLINE);
        assert!(status.success(), "{status:?}\n{}", p.dump());
        p.lines()
    };
    let text = |lines: &[autogate_testkit::LogLine], stream: &str| -> String {
        lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| format!("{}\n", l.text))
            .collect()
    };

    let first = run();
    let (out, err) = (text(&first, "stdout"), text(&first, "stderr"));
    let said = first
        .iter()
        .find(|l| l.stream == "stderr" && l.text.contains("building the Python environment"))
        .unwrap_or_else(|| panic!("a progress line on stderr:\n{err}"));
    assert!(
        said.text.contains("requirements.txt") && !said.text.contains('\r'),
        "a plain line naming the requirement file: {:?}",
        said.text
    );
    let result = first
        .iter()
        .find(|l| l.stream == "stdout" && l.text.starts_with("Stdout:"))
        .unwrap_or_else(|| panic!("the result on stdout:\n{out}"));
    assert!(
        said.at <= result.at,
        "the line comes while it builds, before the result"
    );
    assert!(
        err.contains("built the Python environment in "),
        "and when it is done: {err}"
    );
    assert!(out.contains("from tinypkg"), "{out}");
    let labels: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .filter(|k| k.ends_with(" Time"))
        .collect();
    assert_eq!(
        labels,
        [
            "Start Time",
            "End Time",
            "Elapsed Time",
            "Environment Build Time"
        ],
        "{out}"
    );
    let build = out
        .lines()
        .find_map(|l| l.strip_prefix("Environment Build Time:"))
        .unwrap()
        .trim();
    let secs: f64 = build
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("seconds like Elapsed Time: {build:?}"));
    assert!(secs > 0.0, "{build}");

    let second = run();
    let (out, err) = (text(&second, "stdout"), text(&second, "stderr"));
    assert!(out.contains("from tinypkg"), "{out}");
    assert!(out.contains("Elapsed Time:"), "{out}");
    assert!(
        !out.contains("Environment Build Time"),
        "the cached environment was not built: {out}"
    );
    assert!(
        !err.contains("Python environment"),
        "nothing to wait for: {err}"
    );

    // --raw: the field is in the result JSON only when an environment was built.
    let raw = cli(
        &work,
        &["run", "service", "python-script", "greet", "--raw"],
        DEADLINE,
    );
    ok(&raw, "raw run");
    assert!(
        raw_result(&raw).get("environment_build_time").is_none(),
        "{}",
        raw.stdout
    );
}

#[test]
fn ansible_playbook_against_localhost_with_set_extra_vars() {
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(
        autogate_exec::which("ansible-playbook", &path).is_some(),
        "ansible-playbook is not installed: run `make deps`"
    );
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let url = git_repo(
        &t.path().join("src"),
        &[
            (
                "site.yml",
                "- hosts: all\n  gather_facts: false\n  tasks:\n    - debug:\n        msg: \"device={{ device }} port={{ netconf_port }} site={{ site }}\"\n",
            ),
            ("hosts.ini", "localhost ansible_connection=local\n"),
        ],
    );
    ok(
        &cli(
            &work,
            &["create", "repository", "pb", "--url", &url],
            DEADLINE,
        ),
        "create repository",
    );
    ok(
        &cli(
            &work,
            &[
                "create",
                "service",
                "ansible-playbook",
                "deploy",
                "--repository",
                "pb",
                "--playbook",
                "site.yml",
                "--inventory",
                "hosts.ini",
                "--extra-vars",
                "site=lab",
            ],
            DEADLINE,
        ),
        "create service",
    );
    let out = cli(
        &work,
        &[
            "run",
            "service",
            "ansible-playbook",
            "deploy",
            "--set",
            "device=r9",
            "--set",
            // `port` is a playbook keyword, which Ansible reserves: not an input name.
            "netconf_port=830",
            "--raw",
        ],
        BUILD_DEADLINE,
    );
    ok(&out, "ansible run");
    let r = raw_result(&out);
    assert_eq!(r["return_code"], 0, "{r}");
    let stdout = r["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("device=r9 port=830 site=lab"),
        "extra vars from the service and from --set reached the play: {stdout}"
    );
    assert!(stdout.contains("ok=1"), "{stdout}");
}

#[test]
fn opentofu_plan_runs_or_names_the_missing_binary() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let url = git_repo(
        &t.path().join("src"),
        &[(
            "main.tf",
            "variable \"name\" { type = string }\noutput \"greeting\" { value = \"hello ${var.name}\" }\n",
        )],
    );
    ok(
        &cli(
            &work,
            &["create", "repository", "tf", "--url", &url],
            DEADLINE,
        ),
        "create repository",
    );
    ok(
        &cli(
            &work,
            &[
                "create",
                "service",
                "opentofu-plan",
                "hello",
                "--repository",
                "tf",
            ],
            DEADLINE,
        ),
        "create service",
    );
    let out = cli(
        &work,
        &[
            "run",
            "service",
            "opentofu-plan",
            "apply",
            "hello",
            "--set",
            "name=lab",
            "--raw",
        ],
        BUILD_DEADLINE,
    );
    let path = std::env::var("PATH").unwrap_or_default();
    if autogate_exec::which("tofu", &path).is_none() {
        assert_ne!(out.code(), Some(0));
        assert!(
            out.stderr.contains("tofu not found"),
            "a clear error: {}",
            out.stderr
        );
        eprintln!(
            "SKIPPED: real opentofu run — tofu is not installed (\"tofu not found\" checked)"
        );
        return;
    }
    ok(&out, "tofu apply");
    let r = raw_result(&out);
    assert_eq!(r["return_code"], 0, "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("hello lab"), "{r}");
}

#[test]
fn opentofu_plan_cli_plans_without_applying_or_names_the_missing_binary() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let url = git_repo(
        &t.path().join("src"),
        &[(
            "main.tf",
            "variable \"name\" { type = string }\noutput \"greeting\" { value = \"hello ${var.name}\" }\n",
        )],
    );
    ok(
        &cli(
            &work,
            &["create", "repository", "tf", "--url", &url],
            DEADLINE,
        ),
        "create repository",
    );
    ok(
        &cli(
            &work,
            &[
                "create",
                "service",
                "opentofu-plan",
                "hello",
                "--repository",
                "tf",
            ],
            DEADLINE,
        ),
        "create service",
    );
    // An action the CLI does not know is a usage error that names the three it does.
    let bad = cli(
        &work,
        &["run", "service", "opentofu-plan", "show", "hello"],
        DEADLINE,
    );
    assert_ne!(bad.code(), Some(0));
    assert!(
        bad.stderr.contains("expected apply, destroy or plan"),
        "{}",
        bad.stderr
    );
    let out = cli(
        &work,
        &[
            "run",
            "service",
            "opentofu-plan",
            "plan",
            "hello",
            "--set",
            "name=lab",
            "--raw",
        ],
        BUILD_DEADLINE,
    );
    let path = std::env::var("PATH").unwrap_or_default();
    if autogate_exec::which("tofu", &path).is_none() {
        // `plan` was accepted: the run got as far as looking for the binary.
        assert_ne!(out.code(), Some(0));
        assert!(
            out.stderr.contains("tofu not found"),
            "a clear error: {}",
            out.stderr
        );
        eprintln!(
            "SKIPPED: real opentofu plan — tofu is not installed (\"tofu not found\" checked)"
        );
        return;
    }
    ok(&out, "tofu plan");
    let r = raw_result(&out);
    assert_eq!(r["return_code"], 0, "{r}");
    let stdout = r["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("hello lab"),
        "the plan shows the output: {r}"
    );
    assert!(
        !stdout.contains("Apply complete"),
        "plan applies nothing: {r}"
    );
}

const PLAINTEXT: &str = "PLAINTEXT-SECRET-4b1d9e";

/// A secret is created and used by a run; the run's output shows the mask, and the raw store
/// (the local file, or etcd's data directory) never holds the plaintext.
fn secret_round_trip(work: &Path) {
    ok(
        &cli(
            work,
            &["create", "secret", "token", "--value", PLAINTEXT],
            DEADLINE,
        ),
        "create secret",
    );
    ok(
        &cli(
            work,
            &[
                "create",
                "executable-object",
                "sh",
                "--exec-command",
                "/bin/sh",
            ],
            DEADLINE,
        ),
        "create executable-object",
    );
    ok(
        &cli(
            work,
            &[
                "create",
                "service",
                "executable",
                "leak",
                "--executable-object",
                "sh",
                "--arg-format=-c {{.Value}}",
                "--secret",
                "name=token,type=env,target=TOKEN",
                "--description",
                "CONTROL-MARKER-91c2",
            ],
            DEADLINE,
        ),
        "create service",
    );
    let out = cli(
        work,
        &[
            "run",
            "service",
            "executable",
            "leak",
            "--set",
            "cmd=echo token is $TOKEN",
            "--raw",
        ],
        DEADLINE,
    );
    ok(&out, "run");
    let r = raw_result(&out);
    assert_eq!(r["stdout"], "token is ********\n", "masked: {r}");
    assert!(!out.stdout.contains(PLAINTEXT) && !out.stderr.contains(PLAINTEXT));
    let described = cli(work, &["describe", "secret", "token", "--raw"], DEADLINE);
    ok(&described, "describe secret");
    assert!(!described.stdout.contains(PLAINTEXT));
}

/// Every file under `dir`, read raw: (contains the plaintext, contains the control marker).
fn grep_tree(dir: &Path) -> (bool, bool) {
    let (mut secret, mut control) = (false, false);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(raw) = std::fs::read(&p) else { continue };
            let has = |n: &str| raw.windows(n.len()).any(|w| w == n.as_bytes());
            secret |= has(PLAINTEXT);
            control |= has("CONTROL-MARKER-91c2");
        }
    }
    (secret, control)
}

#[test]
fn secrets_at_rest_local_store() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    secret_round_trip(&work);
    let (secret, control) = grep_tree(&work);
    assert!(control, "the grep sees what the store writes");
    assert!(!secret, "no plaintext anywhere under the working dir");
}

#[test]
fn secrets_at_rest_etcd_store_and_wrong_key_file() {
    let etcd = EtcdServer::start();
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let key = t.path().join("cluster.key");
    std::fs::write(
        &key,
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    std::fs::write(
        work.with_extension("env"),
        format!(
            "GATEWAY_STORE_BACKEND=etcd\nGATEWAY_STORE_ETCD_HOSTS={}\nGATEWAY_SECRETS_ENCRYPT_KEY_FILE={}\n",
            etcd.endpoint(),
            key.display()
        ),
    )
    .unwrap();
    secret_round_trip(&work);
    let (secret, control) = grep_tree(etcd.data_dir());
    assert!(control, "the grep sees what etcd stores");
    assert!(!secret, "no plaintext in etcd's data directory");

    // Another key file: the secret cannot be opened, and the error says so without the value.
    std::fs::write(
        &key,
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
    .unwrap();
    let out = cli(
        &work,
        &[
            "run",
            "service",
            "executable",
            "leak",
            "--set",
            "cmd=echo $TOKEN",
        ],
        DEADLINE,
    );
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("token"),
        "names the secret: {}",
        out.stderr
    );
    assert!(!out.stderr.contains(PLAINTEXT) && !out.stdout.contains(PLAINTEXT));

    // No key file at all: the error names the setting.
    std::fs::remove_file(&key).unwrap();
    let out = cli(
        &work,
        &[
            "run",
            "service",
            "executable",
            "leak",
            "--set",
            "cmd=echo $TOKEN",
        ],
        DEADLINE,
    );
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("GATEWAY_SECRETS_ENCRYPT_KEY_FILE"),
        "{}",
        out.stderr
    );
}
