//! The family's service definitions, imported as they are and run by the real binary in local
//! mode: an ansible-playbook service whose `runtime:` block asks for check mode runs the real
//! `ansible-playbook` and leaves the machine unchanged (the file its playbook writes is not
//! there, the diff of it is in the output); a python-script service with `runtime.req-file` and
//! `runtime.env` runs in the venv of that file and gets every decorator property, `""` when
//! unset; the export gives the blocks back. An unknown runtime key, or one that does not apply
//! to the service's type, is refused with its path and nothing is written.

use std::time::Duration;

use serde_json::Value;

use crate::support::local::{Cli, LocalDir};
use crate::support::{git_repo, raw_json};

const DEADLINE: Duration = Duration::from_secs(300);

const PLAYBOOK: &str = r#"- hosts: all
  gather_facts: false
  tasks:
    - name: write the target
      ansible.builtin.copy:
        dest: "{{ lookup('env', 'TARGET_FILE') }}"
        content: "written by the playbook\n"
    - name: never runs
      tags: [never-run]
      ansible.builtin.debug:
        msg: "SKIPPED-TAG-RAN"
"#;

const SCRIPT: &str = r#"import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "timeout": os.environ.get("NETMIKO_TIMEOUT"),
                  "in_venv": sys.prefix != sys.base_prefix}))
"#;

/// One local working directory and its CLI.
fn local() -> LocalDir {
    LocalDir::new("autogate-family-services-", DEADLINE)
}

fn have_ansible() -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join("ansible-playbook").is_file()) {
        return true;
    }
    eprintln!("SKIPPED: ansible-playbook is not installed on this machine (not in PATH)");
    false
}

/// The family's resource file, as its users write it (kebab-case, one-word `skip-tags`, a
/// number as an environment value).
fn family_file(url: &str, target: &str) -> String {
    format!(
        r#"decorators:
  - name: py-inputs
    schema:
      $id: root
      type: object
      properties:
        device: {{type: string}}
        port: {{type: string}}
repositories:
  - name: fam-repo
    description: the family's repository
    url: {url}
    tags: [family]
services:
  - name: ansible-dry-run
    type: ansible-playbook
    description: a playbook imported with check mode on
    playbooks:
      - site.yml
    working-directory: ./ansible
    repository: fam-repo
    tags: [family, check]
    runtime:
      check: true
      diff: true
      skip-tags: never-run
      inventory:
        - ./inventory.ini
      verbose-level: 1
      env:
        TARGET_FILE: {target}
        ANSIBLE_PYTHON_INTERPRETER: auto_silent
  - name: py-hello
    type: python-script
    description: a script with its own requirement file
    filename: main.py
    working-directory: python
    repository: fam-repo
    decorator: py-inputs
    runtime:
      req-file: deps.txt
      env:
        NETMIKO_TIMEOUT: 30
"#
    )
}

#[test]
fn a_family_file_with_runtime_blocks_imports_unchanged_and_its_services_run() {
    if !have_ansible() {
        return;
    }
    let l = local();
    let url = git_repo(
        &l.path("repo"),
        &[
            ("ansible/site.yml", PLAYBOOK),
            (
                "ansible/inventory.ini",
                "localhost ansible_connection=local\n",
            ),
            ("python/main.py", SCRIPT),
            // Nothing to install: the venv of this file is built all the same.
            ("python/deps.txt", "# no packages\n"),
        ],
    );
    let target = l.path("created-by-the-playbook.txt");
    let file = l.write(
        "family.yaml",
        &family_file(&url, &target.display().to_string()),
    );
    l.expect(&["db", "import", &file], 0);

    // Check mode: Ansible reports the change it would make, shows its diff, makes none.
    let out = l.expect(
        &[
            "run",
            "service",
            "ansible-playbook",
            "ansible-dry-run",
            "--raw",
        ],
        0,
    );
    let run = raw_json(&["run", "service"], &out.stdout);
    let stdout = run["stdout"].as_str().unwrap_or_default();
    assert_eq!(run["return_code"], 0, "{run}");
    assert!(stdout.contains("changed=1"), "{stdout}");
    assert!(stdout.contains("+written by the playbook"), "{stdout}");
    assert!(!stdout.contains("SKIPPED-TAG-RAN"), "{stdout}");
    // verbose-level 1 reached the program: -v names the configuration (none here).
    assert!(stdout.contains("No config file found"), "{stdout}");
    assert!(
        !target.exists(),
        "check mode changed the machine:\n{stdout}"
    );

    // req-file and env of the python runtime; every decorator property, "" when unset.
    let out = l.expect(
        &[
            "run",
            "service",
            "python-script",
            "py-hello",
            "--set",
            "device=r1",
            "--raw",
        ],
        0,
    );
    let run = raw_json(&["run", "service"], &out.stdout);
    let said: Value = serde_json::from_str(run["stdout"].as_str().unwrap_or_default().trim())
        .unwrap_or_else(|e| panic!("{e}: {run}"));
    assert_eq!(said["argv"], serde_json::json!(["--device=r1", "--port="]));
    assert_eq!(said["timeout"], "30");
    assert_eq!(said["in_venv"], true, "{run}");

    // The export gives the runtime blocks back in the family's shape.
    let out = l.expect(&["db", "export"], 0);
    for want in [
        "check: true",
        "diff: true",
        "skip-tags: never-run",
        "verbose-level: 1",
        "req-file: deps.txt",
    ] {
        assert!(out.stdout.contains(want), "{want} missing:\n{}", out.stdout);
    }
}

#[test]
fn unknown_or_misplaced_runtime_keys_are_refused_with_their_path() {
    let l = local();
    let url = git_repo(&l.path("repo"), &[("main.py", "print('x')\n")]);
    let base = format!(
        "repositories:\n  - name: r\n    url: {url}\nservices:\n  - name: ok\n    type: python-script\n    filename: main.py\n    repository: r\n"
    );
    for (runtime, path, name) in [
        ("{req-fil: x.txt}", "services[1].runtime", "req-fil"),
        ("{check: true}", "runtime.check", "python-script"),
        ("{req-file: ../x.txt}", "runtime.req-file", "../x.txt"),
    ] {
        let file = l.write(
            "bad.yaml",
            &format!(
                "{base}  - name: bad\n    type: python-script\n    filename: main.py\n    repository: r\n    runtime: {runtime}\n"
            ),
        );
        let out = l.expect(&["db", "import", &file], 64);
        assert!(
            out.stderr.contains(path) && out.stderr.contains(name),
            "{runtime}: {}",
            out.stderr
        );
        // All or nothing: the good service before it was not written either.
        let out = l.expect(&["get", "services", "--raw"], 0);
        let list = raw_json(&["get", "services"], &out.stdout);
        assert_eq!(list["services"], serde_json::json!([]), "{runtime}");
    }
}
