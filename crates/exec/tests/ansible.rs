//! The family's Ansible runtime options against the real `ansible-playbook` (installed by the
//! set-up): check mode leaves the machine alone, diff shows a diff, tags/skip-tags/limit pick
//! tasks and hosts, every inventory of the list is used, and verbosity, forks, config file and
//! environment reach the program. Without `ansible-playbook` in PATH the tests say so and pass.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

mod common;

use std::path::Path;

use autogate_exec::{
    AnsibleOptions, Engine, EngineConfig, ExecError, Inputs, Repository, RunResult, Secrets,
    Service, ServiceType,
};
use common::*;
use tokio_util::sync::CancellationToken;

fn have_ansible() -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    if autogate_exec::which("ansible-playbook", &path).is_none() {
        eprintln!("SKIPPED: ansible-playbook is not installed on this machine (not in PATH)");
        return false;
    }
    true
}

/// A playbook that writes the file `TARGET_FILE` names (tagged `write`), and reports per host
/// its name, its forks and the variable `MY_VAR` (tags `a`, `b`, `c`).
const SITE: &str = r#"- hosts: all
  gather_facts: false
  tasks:
    - name: write the target
      tags: [write]
      ansible.builtin.copy:
        dest: "{{ lookup('env', 'TARGET_FILE') }}"
        content: "written by the playbook\n"
    - name: task a
      tags: [a]
      ansible.builtin.debug:
        msg: "ran-a host={{ inventory_hostname }} forks={{ ansible_forks }} var={{ lookup('env', 'MY_VAR') }}"
    - name: task b
      tags: [b]
      ansible.builtin.debug:
        msg: "ran-b host={{ inventory_hostname }}"
    - name: task c
      tags: [c]
      ansible.builtin.debug:
        msg: "ran-c host={{ inventory_hostname }}"
"#;

fn service(src: &Path, target: &Path) -> Service {
    repo(
        src,
        &[
            ("pb/site.yml", SITE),
            ("pb/one.ini", "h1 ansible_connection=local\n"),
            (
                "pb/inv/two.ini",
                "h2 ansible_connection=local\nh3 ansible_connection=local\n",
            ),
            (
                "pb/cfg/ansible.cfg",
                "[defaults]\nretry_files_enabled = False\n",
            ),
        ],
    );
    let mut svc = Service::new("ans", ServiceType::AnsiblePlaybook);
    svc.repository = Some(Repository {
        url: file_url(src),
        reference: None,
        credentials: None,
    });
    svc.working_dir = Some("pb".into());
    svc.playbooks = vec!["site.yml".into()];
    svc.ansible.inventories = vec!["one.ini".into()];
    svc.env
        .insert("TARGET_FILE".into(), target.display().to_string());
    svc.env
        .insert("ANSIBLE_PYTHON_INTERPRETER".into(), "auto_silent".into());
    svc
}

async fn outcome(dir: &Path, svc: &Service) -> Result<RunResult, ExecError> {
    Engine::new(EngineConfig::new(dir.join("work")))
        .run(
            svc,
            &Inputs::new(),
            &Secrets::new(),
            &CancellationToken::new(),
        )
        .await
}

/// A run that must succeed with exit 0.
async fn run(dir: &Path, svc: &Service) -> RunResult {
    let r = outcome(dir, svc).await.unwrap();
    assert_eq!(r.return_code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

/// A run that must fail to run.
async fn run_err(dir: &Path, svc: &Service) -> ExecError {
    outcome(dir, svc).await.unwrap_err()
}

#[tokio::test]
async fn check_mode_changes_nothing_and_diff_shows_the_change() {
    if !have_ansible() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("created-by-playbook.txt");
    let mut svc = service(&t.path().join("src"), &target);
    svc.ansible.check = true;
    svc.ansible.diff = true;
    svc.ansible.tags = vec!["write".into()];
    let r = run(t.path(), &svc).await;
    // The task would change the machine (Ansible says so), and did not.
    assert!(r.stdout.contains("changed=1"), "{}", r.stdout);
    assert!(
        !target.exists(),
        "check mode created {}:\n{}",
        target.display(),
        r.stdout
    );
    // The diff of the file it would have written.
    assert!(r.stdout.contains("+++ after"), "{}", r.stdout);
    assert!(
        r.stdout.contains("+written by the playbook"),
        "{}",
        r.stdout
    );

    // The same service without check mode writes the file: the check above could fail.
    svc.ansible.check = false;
    svc.ansible.diff = false;
    let r = run(t.path(), &svc).await;
    assert!(!r.stdout.contains("+++ after"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "written by the playbook\n"
    );
}

#[tokio::test]
async fn tags_skip_tags_limit_and_every_inventory() {
    if !have_ansible() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("never.txt");
    let mut svc = service(&t.path().join("src"), &target);
    svc.inventory = Some("one.ini".into());
    svc.ansible.inventories = vec!["inv/two.ini".into()];
    svc.ansible.tags = vec!["a".into(), "b".into()];
    svc.ansible.skip_tags = vec!["b".into()];
    svc.ansible.limit = vec!["h1".into(), "h3".into()];
    let r = run(t.path(), &svc).await;
    let out = &r.stdout;
    // h1 comes from the first inventory, h3 from the second; h2 is left out by the limit.
    assert!(out.contains("ran-a host=h1"), "{out}");
    assert!(out.contains("ran-a host=h3"), "{out}");
    assert!(!out.contains("host=h2"), "{out}");
    // Only tag a: b is skipped, c and write are not selected.
    assert!(!out.contains("ran-b") && !out.contains("ran-c"), "{out}");
    assert!(!target.exists());

    // Without the limit, all three hosts of both inventories.
    svc.ansible.limit.clear();
    let r = run(t.path(), &svc).await;
    for h in ["h1", "h2", "h3"] {
        assert!(
            r.stdout.contains(&format!("ran-a host={h}")),
            "{}",
            r.stdout
        );
    }
}

#[tokio::test]
async fn verbosity_forks_config_file_and_env_reach_the_program() {
    if !have_ansible() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("never.txt");
    let mut svc = service(&t.path().join("src"), &target);
    svc.ansible.tags = vec!["a".into()];
    svc.ansible.forks = Some(3);
    svc.ansible.verbosity = 1;
    svc.ansible.config_file = Some("cfg/ansible.cfg".into());
    svc.env.insert("MY_VAR".into(), "from-runtime-env".into());
    let r = run(t.path(), &svc).await;
    let out = &r.stdout;
    assert!(
        out.contains("ran-a host=h1 forks=3 var=from-runtime-env"),
        "{out}"
    );
    // `-v` prints the configuration file Ansible uses: the service's.
    let used = out
        .lines()
        .find(|l| l.starts_with("Using ") && l.ends_with(" as config file"))
        .unwrap_or_else(|| panic!("no config file line in:\n{out}"));
    assert!(
        used.ends_with("/pb/cfg/ansible.cfg as config file"),
        "{used}"
    );

    // Verbosity 0: no such line (the line above comes from -v, not from Ansible's default).
    svc.ansible.verbosity = 0;
    let r = run(t.path(), &svc).await;
    assert!(!r.stdout.contains("as config file"), "{}", r.stdout);
}

#[test]
fn options_are_single_words_in_name_value_form() {
    let o = AnsibleOptions {
        inventories: vec!["x.ini".into()],
        check: true,
        diff: true,
        tags: vec!["a".into(), "b".into()],
        skip_tags: vec!["c".into()],
        limit: vec!["h1".into(), "g2".into()],
        forks: Some(7),
        verbosity: 9,
        config_file: Some("ansible.cfg".into()),
    };
    assert_eq!(
        o.args(),
        [
            "--check",
            "--diff",
            "--tags=a,b",
            "--skip-tags=c",
            "--limit=h1,g2",
            "--forks=7",
            "-vvvvvv"
        ]
    );
    assert!(AnsibleOptions::default().args().is_empty());
}

#[tokio::test]
async fn a_config_file_outside_the_checkout_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("never.txt");
    let mut svc = service(&t.path().join("src"), &target);
    // A stand-in program: the run must fail before any program starts.
    svc.executable = Some("/bin/true".into());
    svc.ansible.config_file = Some("../../../etc/ansible.cfg".into());
    let e = run_err(t.path(), &svc).await;
    assert!(e.to_string().contains("config_file"), "{e}");
    svc.ansible.config_file = None;
    svc.ansible.inventories = vec!["missing.ini".into()];
    let e = run_err(t.path(), &svc).await;
    assert!(e.to_string().contains("missing.ini"), "{e}");
}

/// A collection `testns.testcoll` with one module, built by `ansible-galaxy collection build`
/// into `dir`; returns the tarball's file name.
fn build_collection(dir: &Path) -> String {
    let work = tempfile::tempdir().unwrap();
    let coll = work.path().join("testcoll");
    write(
        &coll,
        "galaxy.yml",
        "namespace: testns\nname: testcoll\nversion: 1.0.0\nreadme: README.md\nauthors: [t]\n",
    );
    write(&coll, "README.md", "test\n");
    write(
        &coll,
        "plugins/modules/hello.py",
        "#!/usr/bin/python\nfrom ansible.module_utils.basic import AnsibleModule\n\
         def main():\n    m = AnsibleModule(argument_spec=dict(name=dict(type='str')))\n    \
         m.exit_json(changed=False, greeting='hello from the collection ' + m.params['name'])\n\
         main()\n",
    );
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("ansible-galaxy")
        .args(["collection", "build", "--output-path"])
        .arg(dir)
        .arg(&coll)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    "testns-testcoll-1.0.0.tar.gz".to_owned()
}

#[tokio::test]
async fn galaxy_collections_and_pip_requirements_are_installed_and_cached() {
    if !have_ansible() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let tarball = build_collection(&src.join("pb"));
    let mut files = tiny_package("pb/pkg/", "from-the-requirements");
    for (p, c) in [
        (
            "pb/site.yml",
            "- hosts: all\n  gather_facts: false\n  tasks:\n    - testns.testcoll.hello:\n        name: x\n      register: h\n    - debug:\n        msg: \"{{ h.greeting }}\"\n    - greet: {}\n      register: g\n    - debug:\n        msg: \"pkg says {{ g.greeting }}\"\n",
        ),
        ("pb/hosts.ini", "localhost ansible_connection=local\n"),
        (
            "pb/requirements.yml",
            &format!("collections:\n  - name: ./{tarball}\n    type: file\n"),
        ),
        ("pb/requirements.txt", "./pkg\n"),
        (
            "pb/library/greet.py",
            "#!/usr/bin/python\nfrom ansible.module_utils.basic import AnsibleModule\nimport tinypkg\n\
             m = AnsibleModule(argument_spec={})\nm.exit_json(changed=False, greeting=tinypkg.GREETING)\n",
        ),
    ] {
        files.push((p.to_owned(), c.to_owned()));
    }
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q"]);
    write_all(&src, &files);
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "x"]);

    let mut svc = Service::new("deps", ServiceType::AnsiblePlaybook);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: None,
        credentials: None,
    });
    svc.working_dir = Some("pb".into());
    svc.playbooks = vec!["site.yml".into()];
    svc.inventory = Some("hosts.ini".into());
    svc.env
        .insert("ANSIBLE_PYTHON_INTERPRETER".into(), "auto_silent".into());
    let engine = Engine::new(EngineConfig::new(t.path().join("work")));
    let cancel = CancellationToken::new();
    let r = engine
        .run(&svc, &Inputs::new(), &Secrets::new(), &cancel)
        .await
        .unwrap();
    assert_eq!(r.return_code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("hello from the collection x"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("pkg says from-the-requirements"),
        "{}",
        r.stdout
    );
    assert!(r.environment_build_time.is_some(), "first run installs");
    // Installed under the engine's galaxy cache, not in the workspace.
    // Beside the set: its lock files (`<key>.lock`, `<key>.use`).
    let sets: Vec<_> = std::fs::read_dir(t.path().join("work/galaxy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock") && !n.ends_with(".use"))
        .collect();
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert!(t
        .path()
        .join("work/galaxy")
        .join(&sets[0])
        .join("collections/ansible_collections/testns/testcoll")
        .is_dir());

    // The second run reuses both.
    let r = engine
        .run(&svc, &Inputs::new(), &Secrets::new(), &cancel)
        .await
        .unwrap();
    assert_eq!(r.return_code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("hello from the collection x"),
        "{}",
        r.stdout
    );
    assert_eq!(r.environment_build_time, None, "second run reuses");
}

#[tokio::test]
async fn a_failed_galaxy_install_is_reported_and_leaves_nothing() {
    if !have_ansible() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    repo(
        &src,
        &[
            ("site.yml", "- hosts: all\n  tasks: []\n"),
            (
                "requirements.yml",
                "collections:\n  - name: ./missing-1.0.0.tar.gz\n    type: file\n",
            ),
        ],
    );
    let mut svc = Service::new("deps", ServiceType::AnsiblePlaybook);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: None,
        credentials: None,
    });
    svc.playbooks = vec!["site.yml".into()];
    svc.galaxy_server = Some(autogate_exec::GalaxyServer {
        name: "private".into(),
        url: "http://127.0.0.1:9/".into(),
        token: Some("tok-SECRET-123".into()),
        username: None,
        password: None,
        insecure: false,
    });
    let e = run_err(t.path(), &svc).await;
    let msg = e.to_string();
    assert!(matches!(e, ExecError::Dependencies { .. }), "{msg}");
    assert!(msg.contains("missing-1.0.0.tar.gz"), "{msg}");
    assert!(!msg.contains("tok-SECRET-123"), "{msg}");
    // Nothing but the key's (empty) build lock file.
    let left: Vec<_> = std::fs::read_dir(t.path().join("work/galaxy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_named_req_file_replaces_the_default_of_its_kind() {
    if !have_ansible() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let tarball = build_collection(&src.join("deps"));
    let galaxy_reqs = format!("collections:\n  - name: ./deps/{tarball}\n    type: file\n");
    repo(
        &src,
        &[
            (
                "site.yml",
                "- hosts: all\n  gather_facts: false\n  tasks:\n    - testns.testcoll.hello:\n        name: named\n      register: h\n    - debug:\n        msg: \"{{ h.greeting }}\"\n",
            ),
            ("hosts.ini", "localhost ansible_connection=local\n"),
            ("deps/galaxy.yml", &galaxy_reqs),
            // Not read: the named file replaces it.
            ("requirements.yml", "collections:\n  - name: ./absent.tar.gz\n    type: file\n"),
        ],
    );
    let mut svc = Service::new("named", ServiceType::AnsiblePlaybook);
    svc.repository = Some(Repository {
        url: file_url(&src),
        reference: None,
        credentials: None,
    });
    svc.playbooks = vec!["site.yml".into()];
    svc.inventory = Some("hosts.ini".into());
    svc.req_file = Some("deps/galaxy.yml".into());
    svc.env
        .insert("ANSIBLE_PYTHON_INTERPRETER".into(), "auto_silent".into());
    let r = run(t.path(), &svc).await;
    assert!(
        r.stdout.contains("hello from the collection named"),
        "{}",
        r.stdout
    );

    // A named file that is not there is an error naming it, not a silent default.
    svc.req_file = Some("deps/missing.txt".into());
    let e = run_err(t.path(), &svc).await;
    assert!(
        e.to_string().contains("req_file") && e.to_string().contains("deps/missing.txt"),
        "{e}"
    );
}
