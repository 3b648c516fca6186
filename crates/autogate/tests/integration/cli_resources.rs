//! Black-box tests of `autogate create|get|describe|delete` in local mode: real processes of the
//! binary on one working directory (the embedded store), every noun, the family's tables and
//! text layouts, the `--raw` JSON shapes, and the errors an operator meets (duplicates, missing
//! references, resources still in use, bad flags) with their exit codes.

use std::time::Duration;

use autogate_testkit::Autogate;
use serde_json::Value;

use crate::support::git_repo;
use crate::support::local::{Cli, LocalDir};

const DEADLINE: Duration = Duration::from_secs(60);

/// The program of the repository the tests create.
const RUN_SH: &str = "#!/bin/sh\necho hello\n";

/// One local working directory and its CLI.
fn local() -> LocalDir {
    LocalDir::new("autogate-cli-", DEADLINE)
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list in {list}"))
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_owned())
        .collect()
}

fn is_utc_second(s: &str) -> bool {
    // 2024-08-20T17:45:01Z
    s.len() == 20
        && s.ends_with('Z')
        && s.as_bytes()[10] == b'T'
        && s[..4].chars().all(|c| c.is_ascii_digit())
}

#[test]
fn every_noun_created_listed_described_and_deleted() {
    let l = local();
    let url = git_repo(&l.path("repo"), &[("run.sh", RUN_SH)]);

    // secret: the value never comes back.
    let out = l.ok(&[
        "create",
        "secret",
        "tok",
        "--value",
        "S3CRET-plain",
        "--description",
        "api token",
    ]);
    assert!(out.contains("Successfully created secret"), "{out}");
    assert!(!out.contains("S3CRET-plain"));
    let list = l.ok(&["get", "secrets"]);
    assert!(list.starts_with("NAME"), "{list}");
    assert!(list.contains("tok") && list.contains("api token"), "{list}");
    let raw = l.raw(&["get", "secrets"]);
    assert_eq!(names(&raw, "secrets"), ["tok"]);
    assert!(!raw.to_string().contains("S3CRET-plain"), "{raw}");
    let d = l.ok(&["describe", "secret", "tok"]);
    assert!(d.contains("Name:") && d.contains("tok"), "{d}");
    assert!(d.contains("api token"), "{d}");
    assert!(!d.contains("S3CRET-plain") && !d.contains("v2:"), "{d}");
    let d = l.raw(&["describe", "secret", "tok"]);
    assert!(!d.to_string().contains("S3CRET-plain") && !d.to_string().contains("v2:"));

    // secret from standard input (not a terminal: one line).
    let out = l.with_stdin(
        &["create", "secret", "pw", "--prompt-value"],
        "from stdin\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // repository
    l.ok(&[
        "create",
        "repository",
        "repo",
        "--url",
        &url,
        "--reference",
        "main",
        "--tag",
        "a",
        "--tag",
        "b",
        "--description",
        "code",
    ]);
    let r = l.raw(&["describe", "repository", "repo"]);
    assert_eq!(r["url"], url);
    assert_eq!(r["reference"], "main");
    assert_eq!(r["tags"], serde_json::json!(["a", "b"]));
    let text = l.ok(&["describe", "repository", "repo"]);
    assert!(
        text.contains("Reference:") && text.contains("main"),
        "{text}"
    );
    let list = l.ok(&["get", "repositories"]);
    assert!(
        list.lines().next().unwrap_or("").starts_with("NAME"),
        "{list}"
    );
    assert!(list.contains(&url), "{list}");

    // decorator from a file
    let schema = l.path("schema.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"device":{"type":"string"}},"required":["device"]}"#,
    )
    .expect("schema");
    l.ok(&[
        "create",
        "decorator",
        "deco",
        "--schema",
        &format!("@{}", schema.display()),
    ]);
    let d = l.raw(&["describe", "decorator", "deco"]);
    assert_eq!(d["schema"]["required"], serde_json::json!(["device"]));
    assert!(l
        .ok(&["describe", "decorator", "deco"])
        .contains("\"device\""));

    // executable-object
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    let e = l.raw(&["get", "executable-objects"]);
    assert_eq!(e["executable-objects"][0]["exec-command"], "/bin/sh");
    assert!(l.ok(&["get", "executable-objects"]).contains("/bin/sh"));

    // registry (the built-ins are there from the start)
    l.ok(&[
        "create",
        "registry",
        "pypi",
        "mirror",
        "--url",
        "https://pypi.example.invalid/simple",
        "--insecure",
        "--username",
        "bob",
        "--password-name",
        "pw",
    ]);
    let regs = l.raw(&["get", "registries"]);
    let mut got = names(&regs, "registries");
    got.sort();
    assert_eq!(got, ["default-galaxy", "default-pypi", "mirror"]);
    let m = l.raw(&["describe", "registry", "mirror"]);
    assert_eq!(m["type"], "pypi");
    assert_eq!(m["insecure"], true);
    assert_eq!(m["password-name"], "pw");

    // services of the four types
    l.ok(&[
        "create",
        "service",
        "executable",
        "exe",
        "--executable-object",
        "sh",
        "--repository",
        "repo",
        "--filename",
        "run.sh",
        "--decorator",
        "deco",
        "--env",
        "A=1",
        "--secret",
        "name=tok,type=env,target=TOKEN",
        "--timeout",
        "30",
        "--arg-format",
        "{{.Key}}={{.Value}}",
        "--description",
        "an exe",
        "--tag",
        "t1",
        "--retries",
        "2",
        "--runner-label",
        "zone=a",
    ]);
    l.ok(&[
        "create",
        "service",
        "python-script",
        "py",
        "--repository",
        "repo",
        "--filename",
        "main.py",
        "--req-file",
        "req.txt",
        "--registry",
        "mirror",
    ]);
    l.ok(&[
        "create",
        "service",
        "ansible-playbook",
        "ans",
        "--repository",
        "repo",
        "--playbook",
        "a.yml",
        "--playbook",
        "b.yml",
        "--inventory",
        "hosts",
        "--extra-vars",
        "x=1",
        "--extra-vars-file",
        "vars.yml",
    ]);
    l.ok(&[
        "create",
        "service",
        "opentofu-plan",
        "tf",
        "--repository",
        "repo",
        "--working-dir",
        "infra",
        "--var",
        "region=eu",
        "--var-file",
        "prod.tfvars",
        "--backend-config",
        "path=state",
        "--decorator",
        "deco",
        "--description",
        "infra plan",
        "--tag",
        "x",
        "--tag",
        "y",
    ]);

    // get services: the family's table, RFC 3339 UTC to the second.
    let table = l.ok(&["get", "services"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "TYPE", "CREATED"], "{table}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 4, "{table}");
    let types: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        types,
        [
            ("ans", "ansible-playbook"),
            ("exe", "executable"),
            ("py", "python-script"),
            ("tf", "opentofu-plan")
        ]
    );
    for r in &rows {
        assert!(is_utc_second(r[2]), "{}: {table}", r[2]);
    }
    let raw = l.raw(&["get", "services"]);
    assert_eq!(names(&raw, "services"), ["ans", "exe", "py", "tf"]);
    let exe = &raw["services"][1];
    assert_eq!(exe["type"], "executable");
    assert_eq!(exe["executable-object"], "sh");
    assert_eq!(exe["arg-format"], "{{.Key}}={{.Value}}");
    assert_eq!(exe["env"]["A"], "1");
    assert_eq!(
        exe["secrets"],
        serde_json::json!([{"name": "tok", "type": "env", "target": "TOKEN"}])
    );
    assert_eq!(exe["timeout"], 30);
    assert_eq!(exe["retries"], 2);
    assert_eq!(exe["runner-labels"]["zone"], "a");
    let ans = &raw["services"][0];
    assert_eq!(ans["playbooks"], serde_json::json!(["a.yml", "b.yml"]));
    assert_eq!(ans["extra-vars-file"], "vars.yml");
    assert_eq!(raw["services"][2]["req-file"], "req.txt");

    // describe service: the family's lines, in its order.
    let d = l.ok(&["describe", "service", "tf"]);
    let labels: Vec<&str> = d
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .collect();
    let family = [
        "Name",
        "Repo Name",
        "Working Dir",
        "Vars",
        "Var Files",
        "Decorator",
        "Description",
        "Tags",
    ];
    assert_eq!(&labels[..family.len()], family, "{d}");
    let value = |label: &str| {
        d.lines()
            .find_map(|l| l.strip_prefix(&format!("{label}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {label}: in {d}"))
            .to_owned()
    };
    assert_eq!(value("Name"), "tf");
    assert_eq!(value("Repo Name"), "repo");
    assert_eq!(value("Working Dir"), "infra");
    assert_eq!(value("Vars"), "region=eu");
    assert_eq!(value("Var Files"), "prod.tfvars");
    assert_eq!(value("Decorator"), "deco");
    assert_eq!(value("Description"), "infra plan");
    assert_eq!(value("Tags"), "x, y");
    let raw = l.raw(&["describe", "service", "tf"]);
    assert_eq!(raw["metadata"]["repository"]["name"], "repo");
    assert_eq!(raw["backend-config"], serde_json::json!(["path=state"]));

    // Vars and Var Files are an OpenTofu plan's: the other types show no empty lines for
    // them, and do show what they have.
    let labels_of = |d: &str| -> Vec<String> {
        d.lines()
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_owned()))
            .collect()
    };
    for (name, theirs) in [
        ("exe", "Executable Object"),
        ("py", "Req File"),
        ("ans", "Playbooks"),
    ] {
        let d = l.ok(&["describe", "service", name]);
        let labels = labels_of(&d);
        assert!(
            !labels.iter().any(|l| l == "Vars" || l == "Var Files"),
            "{d}"
        );
        assert!(labels.iter().any(|l| l == theirs), "{d}");
        assert_eq!(
            labels[..4],
            ["Name", "Repo Name", "Working Dir", "Decorator"],
            "{d}"
        );
    }
    // A plan without vars has no empty Vars line either.
    l.ok(&[
        "create",
        "service",
        "opentofu-plan",
        "tf0",
        "--repository",
        "repo",
    ]);
    let d = l.ok(&["describe", "service", "tf0"]);
    assert!(
        !labels_of(&d)
            .iter()
            .any(|l| l == "Vars" || l == "Var Files"),
        "{d}"
    );
    l.ok(&["delete", "service", "tf0"]);

    // Singular and plural nouns are both accepted.
    assert_eq!(names(&l.raw(&["get", "service"]), "services").len(), 4);

    // delete, users of a resource first.
    for (noun, name) in [
        ("service", "exe"),
        ("service", "py"),
        ("services", "ans"),
        ("service", "tf"),
        ("decorator", "deco"),
        ("repository", "repo"),
        ("executable-object", "sh"),
        ("registry", "mirror"),
        ("secret", "tok"),
        ("secret", "pw"),
    ] {
        let out = l.ok(&["delete", noun, name]);
        assert!(out.starts_with("Successfully deleted"), "{out}");
    }
    let raw = l.raw(&["get", "services"]);
    assert_eq!(raw, serde_json::json!({"services": []}));
    assert_eq!(l.ok(&["get", "services"]).trim(), "NAME  TYPE  CREATED");
    let raw = l.raw(&["delete", "registry", "default-galaxy"]);
    assert_eq!(raw["deleted"], true);
    assert_eq!(
        names(&l.raw(&["get", "registries"]), "registries"),
        ["default-pypi"]
    );
}

#[test]
fn operator_mistakes_are_named_with_their_exit_codes() {
    let l = local();
    let url = git_repo(&l.path("repo"), &[("run.sh", RUN_SH)]);
    l.ok(&["create", "repository", "repo", "--url", &url]);
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);

    // Duplicate: named, exit 1, the first one unchanged.
    let err = l.fails(
        &["create", "repository", "repo", "--url", "file:///elsewhere"],
        1,
    );
    assert!(err.contains("repository repo already exists"), "{err}");
    assert_eq!(l.raw(&["describe", "repository", "repo"])["url"], url);

    // Missing references: the field and the missing name, exit 64, nothing created.
    let err = l.fails(
        &[
            "create",
            "service",
            "executable",
            "e",
            "--executable-object",
            "nope",
        ],
        64,
    );
    assert!(
        err.contains("executable-object") && err.contains("nope"),
        "{err}"
    );
    let err = l.fails(
        &[
            "create",
            "service",
            "executable",
            "e",
            "--executable-object",
            "sh",
            "--repository",
            "gone",
        ],
        64,
    );
    assert!(err.contains("repository") && err.contains("gone"), "{err}");
    let err = l.fails(
        &[
            "create",
            "service",
            "executable",
            "e",
            "--executable-object",
            "sh",
            "--secret",
            "name=nosuch,type=env,target=X",
        ],
        64,
    );
    assert!(err.contains("nosuch"), "{err}");
    assert_eq!(names(&l.raw(&["get", "services"]), "services").len(), 0);

    // Required per type: the field is named.
    let err = l.fails(
        &[
            "create",
            "service",
            "python-script",
            "p",
            "--repository",
            "repo",
        ],
        64,
    );
    assert!(err.contains("filename"), "{err}");
    let err = l.fails(&["create", "service", "executable", "e"], 64);
    assert!(err.contains("executable-object"), "{err}");
    let err = l.fails(
        &[
            "create",
            "executable-object",
            "rel",
            "--exec-command",
            "bin/sh",
        ],
        64,
    );
    assert!(err.contains("exec-command"), "{err}");
    let err = l.fails(
        &[
            "create",
            "service",
            "executable",
            "bad/name",
            "--executable-object",
            "sh",
        ],
        64,
    );
    assert!(err.contains("name"), "{err}");

    // Bad flag values: the flag is named, exit 64.
    let err = l.fails(&["create", "decorator", "d", "--schema", "{not json"], 64);
    assert!(err.contains("--schema"), "{err}");
    let err = l.fails(
        &["create", "decorator", "d", "--schema", "@/no/such/file"],
        64,
    );
    assert!(err.contains("/no/such/file"), "{err}");
    let err = l.fails(
        &["create", "decorator", "d", "--schema", r#"{"type": 12}"#],
        64,
    );
    assert!(err.contains("schema"), "{err}");
    let err = l.fails(
        &[
            "create",
            "service",
            "executable",
            "e",
            "--executable-object",
            "sh",
            "--env",
            "NOEQ",
        ],
        64,
    );
    assert!(err.contains("--env"), "{err}");
    let err = l.fails(
        &[
            "create",
            "service",
            "executable",
            "e",
            "--executable-object",
            "sh",
            "--secret",
            "name=x",
        ],
        64,
    );
    assert!(err.contains("--secret") && err.contains("target"), "{err}");
    let err = l.fails(
        &[
            "create",
            "service",
            "executable",
            "e",
            "--executable-object",
            "sh",
            "--arg-format",
            "{{.Nope}}",
        ],
        64,
    );
    assert!(err.contains("arg-format"), "{err}");
    l.fails(&["create", "secret", "s"], 64); // neither --value nor --prompt-value
    l.fails(&["get", "widgets"], 64);

    // In use: refused with the user named, exit 1; still there.
    l.ok(&[
        "create",
        "service",
        "executable",
        "e",
        "--executable-object",
        "sh",
        "--repository",
        "repo",
    ]);
    let err = l.fails(&["delete", "repository", "repo"], 1);
    assert!(
        err.contains("repository repo is still used by") && err.contains('e'),
        "{err}"
    );
    l.ok(&["describe", "repository", "repo"]);
    let err = l.fails(&["delete", "executable-object", "sh"], 1);
    assert!(err.contains("still used"), "{err}");

    // Unknown names: exit 1.
    let err = l.fails(&["describe", "service", "nope"], 1);
    assert!(err.contains("service nope does not exist"), "{err}");
    l.fails(&["delete", "secret", "nope"], 1);

    // Users and login belong to core nodes.
    for args in [
        vec!["get", "users"],
        vec!["describe", "user", "admin"],
        vec!["delete", "user", "admin"],
        vec!["create", "user", "bob", "--password-stdin"],
        vec!["login", "admin", "--password-stdin"],
    ] {
        let err = l.fails(&args, 64);
        assert!(err.contains("local mode"), "{args:?}: {err}");
    }

    // A client profile in local mode would act on the wrong store.
    let err = l.fails(&["get", "services", "--profile", "production"], 64);
    assert!(err.contains("--profile production"), "{err}");

    // A bad configuration value is a usage error naming it.
    let out = Autogate::new(["get", "services"])
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            l.work().display().to_string(),
        )
        .env("GATEWAY_APPLICATION_MODE", "sideways")
        .output(DEADLINE);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr.contains("GATEWAY_APPLICATION_MODE"),
        "{}",
        out.stderr
    );
}

#[test]
fn client_mode_without_a_server_is_unavailable() {
    let l = local();
    let port = autogate_testkit::free_port();
    let out = Autogate::new(["get", "services"])
        .env("GATEWAY_APPLICATION_MODE", "client")
        .env("GATEWAY_CLIENT_PORT", port.to_string())
        .output(DEADLINE);
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
    assert!(out.stderr.contains(&port.to_string()), "{}", out.stderr);
    drop(l);
}
