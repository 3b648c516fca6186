//! Service inputs that try to become code or options, performed through the real binary in
//! local mode against the real tools: an Ansible input that templates a command
//! (`{{ lookup('pipe', …) }}`, also nested) and one that reconfigures the play
//! (`ansible_connection=local`), an executable input that would stand alone as an option
//! (`--output=…`), the secrets of an OpenTofu run's state (run with `tofu`, or with
//! `terraform`, whose state format OpenTofu shares, when only that is installed), and a
//! default `requirements.txt` that is a symlink out of the checkout. Each attack either is
//! refused with an error naming the input or path, or runs harmlessly — a marker file the
//! attack would create is checked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::local::{Cli, LocalDir};
use crate::support::{git, git_commit, git_repo};

const DEADLINE: Duration = Duration::from_secs(120);

/// One local working directory and its CLI.
fn local() -> LocalDir {
    LocalDir::new("autogate-secinputs-", DEADLINE)
}

fn which(name: &str) -> Option<PathBuf> {
    autogate_exec::which(name, &std::env::var("PATH").unwrap_or_default())
}

// --- Ansible: inputs are data, never templates, and never Ansible's own variables -----------

const PLAYBOOK: &str = r#"- hosts: all
  gather_facts: false
  tasks:
    - debug:
        msg: "who=[{{ who }}] opts=[{{ opts | to_json }}]"
    - name: the inputs' vars file is private to the run
      shell: "stat -c 'mode=%a' {{ playbook_dir }}/.autogate-inputs-*.yml"
      register: mode
    - debug:
        msg: "{{ mode.stdout }}"
"#;

const ANSIBLE_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "who": {"type": "string"},
    "opts": {"type": "object"}
  }
}"#;

#[test]
fn ansible_inputs_are_never_templated_nor_ansible_variables() {
    assert!(
        which("ansible-playbook").is_some(),
        "ansible-playbook is not installed: run `make deps`"
    );
    let l = local();
    let pwned = l.path("pwned");
    let moved = l.path("moved-onto-the-gateway");
    let url = git_repo(
        &l.path("repo"),
        &[
            ("site.yml", PLAYBOOK),
            ("hosts.ini", "localhost ansible_connection=local\n"),
            // A host reached over SSH on a port where nothing listens: a task can only run if
            // something moved it onto this node.
            (
                "remote.ini",
                "far ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh\n",
            ),
            (
                "far.yml",
                &format!(
                    "- hosts: all\n  gather_facts: false\n  tasks:\n    - command: touch {}\n",
                    moved.display()
                ),
            ),
        ],
    );
    l.ok(&["create", "repository", "pb", "--url", &url]);
    l.ok(&["create", "decorator", "deco", "--schema", ANSIBLE_SCHEMA]);
    l.ok(&[
        "create",
        "service",
        "ansible-playbook",
        "site",
        "--repository",
        "pb",
        "--playbook",
        "site.yml",
        "--inventory",
        "hosts.ini",
        "--decorator",
        "deco",
    ]);
    l.ok(&[
        "create",
        "service",
        "ansible-playbook",
        "far",
        "--repository",
        "pb",
        "--playbook",
        "far.yml",
        "--inventory",
        "remote.ini",
    ]);

    // Template payloads, at the top and nested in an object (keys too): printed as written.
    let who = format!(
        "{{{{ lookup('pipe','id') }}}}{{{{ lookup('pipe','touch {}') }}}}",
        pwned.display()
    );
    let opts = format!(
        r#"{{"{{{{ lookup('pipe','id') }}}}": ["{{% if true %}}x{{% endif %}}", "{{{{ lookup('pipe','touch {}') }}}}"]}}"#,
        pwned.display()
    );
    let r = l.raw_run(&[
        "run",
        "service",
        "ansible-playbook",
        "site",
        "--set",
        &format!("who={who}"),
        "--set",
        &format!("opts={opts}"),
        "--raw",
    ]);
    let stdout = r["stdout"].as_str().unwrap_or_default();
    assert_eq!(r["return_code"], 0, "{r}");
    assert!(
        stdout.contains("who=[{{ lookup('pipe','id') }}{{ lookup('pipe','touch "),
        "the input reached the play as text: {stdout}"
    );
    assert!(
        stdout.contains(r#"{% if true %}x{% endif %}"#)
            && stdout.contains(r#"{{ lookup('pipe','id') }}\": ["#),
        "nested values and keys are text too: {stdout}"
    );
    assert!(!stdout.contains("uid="), "no command ran: {stdout}");
    assert!(!pwned.exists(), "a lookup ran a command on the gateway");
    assert!(stdout.contains("mode=600"), "vars file is 0600: {stdout}");
    let leftovers: Vec<_> = walk(&l.path("work"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".autogate-inputs-"))
        .collect();
    assert!(leftovers.is_empty(), "vars file removed: {leftovers:?}");

    // Ansible's own variables and non-identifiers are refused by name; nothing runs.
    for (set, pointer, why) in [
        (
            "ansible_connection=local",
            "/ansible_connection",
            "reserved",
        ),
        ("hostvars=x", "/hostvars", "reserved"),
        ("environment=x", "/environment", "reserved"),
        ("a-b=x", "/a-b", "identifier"),
    ] {
        let out = l.expect(
            &["run", "service", "ansible-playbook", "far", "--set", set],
            64,
        );
        assert!(
            out.stderr.contains(pointer) && out.stderr.contains(why),
            "--set {set}: {}",
            out.stderr
        );
        assert!(
            !moved.exists(),
            "--set {set} moved the task onto the gateway"
        );
    }
    // Without the attack the same play cannot reach its host: the refusal above is what kept
    // the task off this node, not the play itself.
    let r = l.raw_run(&["run", "service", "ansible-playbook", "far", "--raw"]);
    assert_ne!(r["return_code"], 0, "{r}");
    assert!(!moved.exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

// --- Executables: a value never stands alone as an option -----------------------------------

/// A program with a dangerous option, as many real ones have: `--output=FILE` writes a file.
const PROGRAM: &str = r#"#!/bin/sh
for a in "$@"; do
  printf '[%s]' "$a"
  case "$a" in --output=*) touch "${a#--output=}" ;; esac
done
echo
"#;

#[test]
fn executable_values_never_become_options() {
    let l = local();
    let url = git_repo(&l.path("repo"), &[("prog.sh", PROGRAM)]);
    let written = l.path("written-by-an-option");
    l.ok(&["create", "repository", "repo", "--url", &url]);
    l.ok(&[
        "create",
        "decorator",
        "strict",
        "--schema",
        r#"{"type":"object","properties":{"host":{"type":"string"},"count":{"type":"integer"}},"additionalProperties":false}"#,
    ]);
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    // The default format.
    l.ok(&[
        "create",
        "service",
        "executable",
        "dflt",
        "--repository",
        "repo",
        "--executable-object",
        "sh",
        "--filename",
        "prog.sh",
        "--decorator",
        "strict",
    ]);
    // The format that used to be the default: the value is a word of its own.
    l.ok(&[
        "create",
        "service",
        "executable",
        "split",
        "--repository",
        "repo",
        "--executable-object",
        "sh",
        "--filename",
        "prog.sh",
        "--decorator",
        "strict",
        // `=`: the template starts with `-`.
        "--arg-format=--{{.Key}} {{.Value}}",
    ]);
    let attack = format!("host=--output={}", written.display());

    let r = l.raw_run(&[
        "run",
        "service",
        "executable",
        "dflt",
        "--set",
        &attack,
        "--set",
        "count=-2",
        "--raw",
    ]);
    assert_eq!(r["return_code"], 0, "{r}");
    assert_eq!(
        r["stdout"].as_str().unwrap_or_default().trim(),
        format!("[--count=-2][--host=--output={}]", written.display()),
        "one word per input: the value stays attached to its option"
    );
    assert!(!written.exists());

    let out = l.expect(
        &["run", "service", "executable", "split", "--set", &attack],
        64,
    );
    assert!(
        out.stderr.contains("/host") && out.stderr.contains("option"),
        "the refusal names the input: {}",
        out.stderr
    );
    assert!(!written.exists(), "the value was passed as an option");

    // A negative number is data, and an ordinary value runs as before.
    let r = l.raw_run(&[
        "run",
        "service",
        "executable",
        "split",
        "--set",
        "host=r1",
        "--set",
        "count=-2",
        "--raw",
    ]);
    assert_eq!(
        r["stdout"].as_str().unwrap_or_default().trim(),
        "[--count][-2][--host][r1]"
    );
}

// --- OpenTofu: the state carries no secret ---------------------------------------------------

const SECRET: &str = "hunter2-TOFU-s3cret";

const MAIN_TF: &str = r#"variable "password" {
  type      = string
  sensitive = true
}
variable "site" { type = string }
resource "terraform_data" "conn" {
  input = { user = "admin", password = var.password, site = var.site }
}
output "pw" {
  value     = var.password
  sensitive = true
}
output "site" { value = var.site }
"#;

#[test]
fn opentofu_state_is_returned_without_secrets() {
    let Some(tool) = which("tofu").or_else(|| which("terraform")) else {
        eprintln!("SKIPPED: neither tofu nor terraform is installed");
        return;
    };
    let l = local();
    let url = git_repo(&l.path("repo"), &[("main.tf", MAIN_TF)]);
    l.ok(&["create", "repository", "tf", "--url", &url]);
    l.ok(&["create", "secret", "pw", "--value", SECRET]);
    l.ok(&[
        "create",
        "executable-object",
        "tofu",
        "--exec-command",
        &tool.display().to_string(),
    ]);
    l.ok(&[
        "create",
        "service",
        "opentofu-plan",
        "conn",
        "--repository",
        "tf",
        "--executable-object",
        "tofu",
        "--secret",
        "name=pw,type=env,target=TF_VAR_password",
    ]);
    let r = l.raw_run(&[
        "run",
        "service",
        "opentofu-plan",
        "apply",
        "conn",
        "--set",
        "site=lab",
        "--raw",
    ]);
    assert_eq!(r["return_code"], 0, "{r}");
    let state = &r["state"];
    assert!(state.is_object(), "the run returns its state: {r}");
    assert!(
        !r.to_string().contains(SECRET),
        "no secret in the answer: {r}"
    );
    assert_eq!(state["outputs"]["pw"]["value"], "********", "{state}");
    assert_eq!(
        state["outputs"]["site"]["value"], "lab",
        "the rest stays: {state}"
    );
    let attrs = &state["resources"][0]["instances"][0]["attributes"];
    assert_eq!(attrs["input"]["value"]["password"], "********", "{state}");
    assert_eq!(attrs["output"]["value"]["user"], "admin", "{state}");
}

// --- python-script: the default requirements.txt stays in the checkout -----------------------

#[test]
fn default_requirements_symlink_out_of_the_checkout_is_refused() {
    let l = local();
    let outside = l.path("outside-requirements.txt");
    std::fs::write(&outside, "this-package-does-not-exist-anywhere==1\n").unwrap();
    let repo = l.path("repo");
    let url = git_repo(&repo, &[("main.py", "print('ran')\n")]);
    std::os::unix::fs::symlink(&outside, repo.join("requirements.txt")).unwrap();
    git(&repo, &["add", "requirements.txt"]);
    git_commit(&repo, "link");
    l.ok(&["create", "repository", "py", "--url", &url]);
    l.ok(&[
        "create",
        "service",
        "python-script",
        "main",
        "--repository",
        "py",
        "--filename",
        "main.py",
    ]);
    let out = l.run(&["run", "service", "python-script", "main"]);
    // A definition that cannot run as written: a usage error, as for any path of it.
    assert_eq!(
        out.code(),
        Some(64),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .contains("\"requirements.txt\" is outside the repository checkout"),
        "the error names the file: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
}
