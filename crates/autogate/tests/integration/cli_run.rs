//! Black-box tests of `autogate run service` in local mode: a real git repository holding a
//! `/bin/sh` script, run in-process by the binary — the family's output layout, `--arg-format`
//! and `--set` coercion, `--use`, decorator violations (listed with their JSON pointers, and
//! nothing ran: the program would have created a file), a secret masked in the output, the
//! terminal time zone, Ctrl-C killing the program's process group, and the progress a slow
//! run shows on standard error (plain lines here: standard error is a pipe).

use std::path::PathBuf;
use std::time::Duration;

use autogate_testkit::poll_until;
use serde_json::Value;

use crate::support::git_repo;
use crate::support::local::{Cli, LocalDir};

const DEADLINE: Duration = Duration::from_secs(90);

const SCRIPT: &str = r#"#!/bin/sh
echo "args:$*"
echo "token=[$TOKEN] len=${#TOKEN}"
echo "to stderr" >&2
touch "$MARKER"
exit 3
"#;

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["device"],
  "additionalProperties": false,
  "properties": {
    "device": {"type": "string", "description": "Device address"},
    "port": {"type": "integer", "default": 22, "description": "SSH port"},
    "verbose": {"type": "boolean"},
    "mode": {"type": "string", "enum": ["fast", "safe"]}
  }
}"#;

/// One local working directory and its CLI.
fn local() -> LocalDir {
    LocalDir::new("autogate-run-", DEADLINE)
}

/// Repository, decorator, secret, `/bin/sh` executable-object and the service `exe`.
fn setup(l: &LocalDir) -> PathBuf {
    let url = git_repo(&l.path("repo"), &[("run.sh", SCRIPT)]);
    let marker = l.path("marker");
    l.ok(&["create", "repository", "repo", "--url", &url]);
    l.ok(&["create", "decorator", "deco", "--schema", SCHEMA]);
    l.ok(&["create", "secret", "tok", "--value", "PLAIN-s3cret"]);
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
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
        "--arg-format",
        "{{.Key}}={{.Value}}",
        "--env",
        &format!("MARKER={}", marker.display()),
        "--secret",
        "name=tok,type=env,target=TOKEN",
    ]);
    marker
}

fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label}: in\n{text}"))
}

#[test]
fn use_violations_then_a_real_run() {
    let l = local();
    let marker = setup(&l);

    // --use: the decorator's inputs, and nothing runs.
    let out = l.ok(&["run", "service", "executable", "exe", "--use"]);
    assert_eq!(field(&out, "Decorator"), "deco");
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{out}"))
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert!(out.contains("INPUT") && out.contains("REQUIRED"), "{out}");
    assert_eq!(
        row("device"),
        ["device", "string", "yes", "-", "-", "Device address"]
    );
    assert_eq!(
        row("port"),
        ["port", "integer", "no", "22", "-", "SSH port"]
    );
    assert_eq!(row("mode"), ["mode", "string", "no", "-", "fast, safe"]);
    let raw: Value =
        serde_json::from_str(&l.ok(&["run", "service", "executable", "exe", "--use", "--raw"]))
            .expect("json");
    assert_eq!(raw["decorator"], "deco");
    let inputs = raw["inputs"].as_array().expect("inputs");
    assert_eq!(inputs.len(), 4);
    assert!(!marker.exists(), "--use must not run the service");

    // Violations: every one with its JSON pointer, one per line, exit 64, nothing ran.
    let out = l.expect(
        &[
            "run",
            "service",
            "executable",
            "exe",
            "--set",
            "port=abc",
            "--set",
            "mode=slow",
            "--set",
            "extra=1",
        ],
        64,
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    for pointer in ["/port:", "/mode:", "/extra:", "/device:"] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(pointer)),
            "{pointer} {}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("nothing ran"), "{}", out.stderr);
    assert!(!marker.exists(), "a refused run must not start the program");

    // Wrong type and unknown service.
    let out = l.expect(&["run", "service", "python-script", "exe"], 64);
    assert!(
        out.stderr.contains("exe is executable, not python-script"),
        "{}",
        out.stderr
    );
    let out = l.expect(&["run", "service", "executable", "nope"], 1);
    assert!(
        out.stderr.contains("service nope does not exist"),
        "{}",
        out.stderr
    );
    let out = l.expect(
        &["run", "service", "executable", "exe", "--state", "{}"],
        64,
    );
    assert!(out.stderr.contains("--state"), "{}", out.stderr);

    // A real run: --set coerced (port is an integer, bare verbose a boolean), rendered per
    // --arg-format in key order; exit 0 although the program returned 3; secret masked.
    let out = l.ok(&[
        "run",
        "service",
        "executable",
        "exe",
        "--set",
        "device=10.0.0.1",
        "--set",
        "port=22",
        "--set",
        "verbose",
    ]);
    assert!(marker.exists(), "the program ran");
    assert!(
        out.contains("args:run.sh device=10.0.0.1 port=22 verbose=true")
            || out.contains("args:device=10.0.0.1 port=22 verbose=true"),
        "{out}"
    );
    assert!(out.contains("token=[********] len=12"), "{out}");
    assert!(!out.contains("PLAIN-s3cret"), "{out}");
    let labels: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .filter(|k| {
            [
                "Stdout",
                "Stderr",
                "Return Code",
                "Start Time",
                "End Time",
                "Elapsed Time",
            ]
            .contains(k)
        })
        .collect();
    assert_eq!(
        labels,
        [
            "Stdout",
            "Stderr",
            "Return Code",
            "Start Time",
            "End Time",
            "Elapsed Time"
        ],
        "{out}"
    );
    assert!(out.contains("to stderr"), "{out}");
    assert_eq!(field(&out, "Return Code"), "3");
    let start = field(&out, "Start Time");
    assert!(start.ends_with('Z') && start.len() == 20, "{start}");
    let elapsed = field(&out, "Elapsed Time");
    let digits = elapsed.strip_suffix('s').expect("s suffix");
    let (secs, micros) = digits.split_once('.').expect("seconds.micros");
    assert!(
        secs.chars().all(|c| c.is_ascii_digit()) && micros.len() == 6,
        "{elapsed}"
    );

    // --raw: the result JSON.
    std::fs::remove_file(&marker).expect("rm marker");
    let raw: Value = serde_json::from_str(&l.ok(&[
        "run",
        "service",
        "executable",
        "exe",
        "--set",
        "device=d",
        "--raw",
    ]))
    .expect("json");
    assert_eq!(raw["return_code"], 3);
    assert_eq!(raw["timed_out"], false);
    assert!(
        raw["stdout"].as_str().unwrap_or("").contains("device=d"),
        "{raw}"
    );
    assert!(!raw.to_string().contains("PLAIN-s3cret"));
    for k in ["start_time", "end_time", "elapsed_time", "stderr"] {
        assert!(raw[k].is_string(), "{k} in {raw}");
    }

    // Times in [terminal] timestamp_timezone.
    let out = l
        .cmd(&["run", "service", "executable", "exe", "--set", "device=d"])
        .env("GATEWAY_TERMINAL_TIMESTAMP_TIMEZONE", "Asia/Kolkata")
        .output(DEADLINE);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        field(&out.stdout, "Start Time").ends_with("+05:30"),
        "{}",
        out.stdout
    );
    assert!(
        field(&out.stdout, "End Time").ends_with("+05:30"),
        "{}",
        out.stdout
    );
    let out = l
        .cmd(&["run", "service", "executable", "exe", "--set", "device=d"])
        .env("GATEWAY_TERMINAL_TIMESTAMP_TIMEZONE", "Mars/Olympus")
        .output(DEADLINE);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("timestamp_timezone"), "{}", out.stderr);
}

#[test]
fn service_without_decorator_takes_any_input_with_the_default_format() {
    let l = local();
    l.ok(&[
        "create",
        "executable-object",
        "echo",
        "--exec-command",
        "/bin/echo",
    ]);
    l.ok(&[
        "create",
        "service",
        "executable",
        "plain",
        "--executable-object",
        "echo",
    ]);
    let out = l.ok(&["run", "service", "executable", "plain", "--use"]);
    assert!(out.contains("none"), "{out}");
    let out = l.ok(&[
        "run",
        "service",
        "executable",
        "plain",
        "--set",
        "b=2",
        "--set",
        "a=x y",
    ]);
    assert!(out.contains("--a=x y --b=2"), "{out}");
    assert_eq!(field(&out, "Return Code"), "0");
}

#[test]
fn ctrl_c_cancels_a_local_run_and_kills_its_process_group() {
    let l = local();
    let pids = l.path("pids");
    let script = format!(
        "#!/bin/sh\nsleep 300 &\necho \"$$ $!\" > {}\nwait\n",
        pids.display()
    );
    let url = git_repo(&l.path("repo"), &[("slow.sh", &script)]);
    l.ok(&["create", "repository", "repo", "--url", &url]);
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    l.ok(&[
        "create",
        "service",
        "executable",
        "slow",
        "--repository",
        "repo",
        "--executable-object",
        "sh",
        "--filename",
        "slow.sh",
    ]);
    let mut proc = l.cmd(&["run", "service", "executable", "slow"]).spawn();
    let text = poll_until("the program's pids", DEADLINE, || {
        std::fs::read_to_string(&pids)
            .ok()
            .filter(|t| t.split_whitespace().count() == 2)
    });
    let children: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    proc.signal("INT");
    let status = proc.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{}", proc.logs());
    assert!(proc.logs().contains("cancelled"), "{}", proc.logs());
    for pid in children {
        poll_until(
            &format!("process {pid} to be gone"),
            Duration::from_secs(20),
            || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // Gone, or a zombie waiting for init to reap it.
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|s| s.split_whitespace().next());
                (stat.is_empty() || state == Some("Z")).then_some(())
            },
        );
    }
}

/// A run that takes seconds says so on standard error, as plain lines (standard error is a
/// pipe here, not a terminal), while standard output carries the result alone; a quick run
/// prints no progress at all.
#[test]
fn a_slow_run_says_it_is_still_running_on_stderr_and_a_quick_one_says_nothing() {
    let l = local();
    let url = git_repo(
        &l.path("repo"),
        &[
            ("slow.sh", "#!/bin/sh\nsleep 3\necho slept\n"),
            ("quick.sh", "#!/bin/sh\necho quick\n"),
        ],
    );
    l.ok(&["create", "repository", "repo", "--url", &url]);
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    for name in ["slow", "quick"] {
        l.ok(&[
            "create",
            "service",
            "executable",
            name,
            "--repository",
            "repo",
            "--executable-object",
            "sh",
            "--filename",
            &format!("{name}.sh"),
        ]);
    }

    let mut proc = l.cmd(&["run", "service", "executable", "slow"]).spawn();
    let status = proc.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}\n{}", proc.dump());
    let lines = proc.lines();
    let still: Vec<_> = lines
        .iter()
        .filter(|l| l.text.starts_with("still running service slow: "))
        .collect();
    assert!(!still.is_empty(), "a progress line:\n{}", proc.dump());
    for line in &still {
        assert_eq!(line.stream, "stderr", "{:?}", line.text);
        let secs: u64 = line
            .text
            .strip_prefix("still running service slow: ")
            .and_then(|t| t.strip_suffix(" s"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("seconds in {:?}", line.text));
        assert!(secs >= 2, "not before two seconds: {:?}", line.text);
        assert!(!line.text.contains('\r'), "a plain line: {:?}", line.text);
    }
    let result = lines
        .iter()
        .find(|l| l.stream == "stdout" && l.text.starts_with("Stdout:"))
        .unwrap_or_else(|| panic!("the result on stdout:\n{}", proc.dump()));
    assert!(still[0].at < result.at, "the line comes while it runs");
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(
        &stdout[..4],
        ["Stdout:", "slept", "", "Stderr:"],
        "{stdout:?}"
    );
    assert!(
        stdout.iter().all(|l| !l.contains("still running")),
        "standard output has the result only: {stdout:?}"
    );
    let elapsed = field(&stdout.join("\n"), "Elapsed Time").to_owned();
    assert!(elapsed.ends_with('s'), "{elapsed}");

    let out = l.expect(&["run", "service", "executable", "quick"], 0);
    assert!(out.stdout.contains("quick"), "{}", out.stdout);
    assert_eq!(out.stderr, "", "a quick run shows no progress");
}
