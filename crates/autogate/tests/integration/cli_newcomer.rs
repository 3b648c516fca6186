//! What a newcomer meets first, through the real binary: output piped into `head` (a closed
//! pipe ends the process quietly), `version --show-config` on a configuration that does not load,
//! "did you mean" for a mistyped `GATEWAY_*` variable or key, and the roles' help naming their
//! settings.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autogate_config::{DefaultValue, Role};
use autogate_testkit::{autogate_bin, Autogate, Output};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(20);

/// How a run whose standard output was closed early ended.
struct ClosedPipeRun {
    code: Option<i32>,
    /// Lines read before the pipe was closed.
    read: Vec<String>,
    stderr: String,
}

/// Runs `autogate <args>` in a fresh HOME with no `GATEWAY_*` variable, reads `lines` lines of
/// its standard output (0: none) and then closes the pipe, as `| head -n <lines>` does.
fn with_stdout_closed_after(args: &[&str], home: &Path, lines: usize) -> ClosedPipeRun {
    let mut child = Command::new(autogate_bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GATEWAY_APPLICATION_WORKING_DIR", home.join("work"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autogate");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut read = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read a line") == 0 {
            break;
        }
        read.push(line);
    }
    drop(reader);
    let mut err = child.stderr.take().expect("stderr");
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("autogate {args:?} still runs {DEADLINE:?} after its stdout was closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ClosedPipeRun {
        code: status.code(),
        read,
        stderr: collector.join().expect("stderr reader"),
    }
}

/// A configuration whose `--show-config` listing is larger than a pipe's buffer (64 KiB on
/// Linux), so the process is still writing when the reader goes away, however the two are
/// scheduled.
fn big_config(home: &Path) -> String {
    let mut text = String::from("[server]\nport = 50100\n");
    for i in 0..300 {
        text.push_str(&format!(
            "\n[client:profile-{i:03}]\nhost = host-{i:03}.example.net\nport = {}\n",
            20000 + i
        ));
    }
    let path = home.join("gateway.conf");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn assert_quiet_closed_pipe(run: &ClosedPipeRun, what: &str) {
    assert!(
        run.stderr.is_empty(),
        "{what}: a closed pipe must end the process without a word, got: {}",
        run.stderr
    );
    assert_eq!(
        run.code,
        Some(141),
        "{what}: the status of a Unix tool ended by SIGPIPE (128 + 13)"
    );
}

#[test]
fn show_config_into_a_closed_pipe_exits_quietly() {
    for raw in [false, true] {
        for lines in [0, 1, 10] {
            let home = tempfile::tempdir().expect("temp dir");
            let conf = big_config(home.path());
            let mut args = vec!["version", "--show-config", "--config", conf.as_str()];
            if raw {
                args.push("--raw");
            }
            let run = with_stdout_closed_after(&args, home.path(), lines);
            let what = format!("{args:?} | head -n {lines}");
            assert_quiet_closed_pipe(&run, &what);
            assert_eq!(run.read.len(), lines, "{what}");
            if lines > 0 && !raw {
                assert_eq!(
                    run.read[0],
                    concat!("autogate: ", env!("CARGO_PKG_VERSION"), "\n"),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn help_into_a_closed_pipe_exits_quietly() {
    let home = tempfile::tempdir().expect("temp dir");
    // Smaller than a pipe's buffer, so the write may succeed before the reader goes: either
    // outcome is quiet.
    let run = with_stdout_closed_after(&["help", "server"], home.path(), 1);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(matches!(run.code, Some(0 | 141)), "{:?}", run.code);
}

/// `autogate version --show-config [--raw]` with `conf` as its config file and `env` set.
fn show_config(conf: &str, raw: bool, env: &[(&str, &str)]) -> Output {
    let cmd = Autogate::new(["version", "--show-config"]);
    let path = cmd.home().join("gateway.conf");
    std::fs::write(&path, conf).expect("write config");
    let mut cmd = cmd.arg("--config").arg(path.display().to_string());
    for (k, v) in env {
        cmd = cmd.env(k, *v);
    }
    if raw {
        cmd = cmd.arg("--raw");
    }
    cmd.output(DEADLINE)
}

/// Two bad values (one in the file, one in the environment), a key set twice and an unknown
/// section, beside good values.
const BROKEN: &str = "[server]\nlisten_address = 10.9.9.9\nport = abc\n[store]\nbackend = etcd\nbackend = local\n[nonsense]\nx = 1\n";
const BROKEN_ENV: &[(&str, &str)] = &[
    ("GATEWAY_LOG_LEVEL", "LOUD"),
    ("GATEWAY_APPLICATION_CLUSTER_ID", "east"),
];

#[test]
fn show_config_lists_an_invalid_configuration_with_its_problems() {
    let out = show_config(BROKEN, false, BROKEN_ENV);
    assert_eq!(out.code(), Some(64), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{}", out.stdout))
    };
    // What was read, good or bad, with its source.
    let good = lines[find("  server.listen_address ")];
    assert!(
        good.contains("10.9.9.9") && good.contains("line 2"),
        "{good}"
    );
    let cluster = lines[find("  application.cluster_id ")];
    assert!(
        cluster.contains("east") && cluster.contains("GATEWAY_APPLICATION_CLUSTER_ID"),
        "{cluster}"
    );
    // Each bad key marked, its value as given and its source, the problem on the next line.
    for (key, value, source, problem) in [
        (
            "server.port",
            "abc",
            "line 3",
            "invalid value \"abc\" for server.port",
        ),
        ("store.backend", "etcd", "line 5", "set it only once"),
        (
            "log.level",
            "LOUD",
            "environment variable GATEWAY_LOG_LEVEL",
            "invalid value \"LOUD\" for log.level",
        ),
    ] {
        let at = find(&format!("! {key} "));
        assert!(
            lines[at].contains(value) && lines[at].contains(source),
            "{}",
            lines[at]
        );
        assert!(
            lines[at + 1].trim_start().starts_with("error: ") && lines[at + 1].contains(problem),
            "{key}: {}",
            lines[at + 1]
        );
    }
    // A problem that concerns no key is listed above the keys.
    let section = find("! ");
    assert!(lines[section].contains("[nonsense]"), "{}", lines[section]);
    assert!(section < find("[application]"), "{}", out.stdout);
    // And every problem is an error on stderr, nothing else.
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 4, "{}", out.stderr);
    assert!(
        errors.iter().all(|l| l.starts_with("error: ")),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn show_config_raw_lists_an_invalid_configuration_with_its_problems() {
    let out = show_config(BROKEN, true, BROKEN_ENV);
    assert_eq!(out.code(), Some(64), "{}\n{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("raw output is JSON");
    let entry = |section: &str, key: &str| {
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["section"] == section && e["key"] == key)
            .unwrap_or_else(|| panic!("no entry {section}.{key}"))
            .clone()
    };
    let port = entry("server", "port");
    assert_eq!(port["value"], "abc");
    assert_eq!(port["source"]["kind"], "file");
    assert_eq!(port["source"]["line"], 3);
    let problems = port["problems"]
        .as_array()
        .expect("problems of server.port");
    assert!(
        problems[0].as_str().expect("text").contains("server.port"),
        "{port}"
    );
    assert!(entry("server", "listen_address").get("problems").is_none());
    assert_eq!(entry("server", "listen_address")["value"], "10.9.9.9");
    let all = v["problems"].as_array().expect("problems");
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(
        all.iter().any(|p| p["keys"] == serde_json::json!([])
            && p["message"].as_str().expect("text").contains("[nonsense]")),
        "{all:?}"
    );

    // A valid configuration has no problems and exits 0.
    let out = show_config("[server]\nport = 6000\n", true, &[]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("raw output is JSON");
    assert_eq!(v["problems"], serde_json::json!([]));
}

/// `autogate <args>` with `env` set, run to its end.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Autogate::new(args.iter().copied());
    for (k, v) in env {
        cmd = cmd.env(k, *v);
    }
    cmd.output(DEADLINE)
}

#[test]
fn a_mistyped_variable_gets_a_suggestion() {
    for (args, var, meant) in [
        (
            &["version", "--show-config"][..],
            "GATEWAY_SERVER_PROT",
            "GATEWAY_SERVER_PORT",
        ),
        (
            &["server"][..],
            "GATEWAY_STORE_ETCD_HOST",
            "GATEWAY_STORE_ETCD_HOSTS",
        ),
        (&["runner"][..], "GATEWAY_LOG_LEVL", "GATEWAY_LOG_LEVEL"),
        (
            &["get", "services"][..],
            "GATEWAY_client_port",
            "GATEWAY_CLIENT_PORT",
        ),
    ] {
        let out = run(args, &[(var, "1")]);
        assert_eq!(out.code(), Some(64), "{args:?} {var}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("unknown configuration variable {var}")),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("did you mean {meant}?")),
            "{args:?} {var}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("docs/"), "{}", out.stderr);
    }
    // Nothing close: no guess.
    let out = run(&["version", "--show-config"], &[("GATEWAY_NOPE", "1")]);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("GATEWAY_NOPE"), "{}", out.stderr);
    assert!(!out.stderr.contains("did you mean"), "{}", out.stderr);
    assert!(
        out.stderr.contains("the configuration reference"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_mistyped_file_key_gets_a_suggestion() {
    let out = show_config("[server]\nprot = 6000\n", false, &[]);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("unknown key \"prot\" in section [server]; did you mean port?"),
        "{}",
        out.stderr
    );
}

/// Messages and help name documents by their published names, never by a path in the source.
#[test]
fn messages_and_help_do_not_point_into_the_source_tree() {
    type Env<'a> = &'a [(&'a str, &'a str)];
    let runs: &[(&[&str], Env)] = &[
        (&["--help"], &[]),
        (&["help", "server"], &[]),
        (&["help", "runner"], &[]),
        (&["help", "manager"], &[]),
        (&["help", "version"], &[]),
        (&["help", "run"], &[]),
        (&["version", "--show-config"], &[("GATEWAY_NOPE", "1")]),
        (&["server"], &[("GATEWAY_NOPE", "1")]),
    ];
    for (args, env) in runs {
        let out = run(args, env);
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !text.contains("docs/") && !text.contains(".md"),
                "autogate {args:?}: {text}"
            );
        }
    }
}

/// `autogate help <role>` names the role's key settings with their variables and defaults,
/// straight from the configuration schema, and where to see the rest; it lists no option that
/// only the operator CLI uses.
#[test]
fn each_role_help_names_its_settings() {
    for (role, name, about) in [
        (Role::Server, "server", "operator API"),
        (Role::Runner, "runner", "execution-only node"),
        (Role::Manager, "manager", "gateway clusters connect to"),
    ] {
        for help in [
            &["help", name][..],
            &[name, "--help"][..],
            &[name, "-h"][..],
        ] {
            let out = run(help, &[]);
            assert_eq!(out.code(), Some(0), "{help:?}: {}", out.stderr);
            let text = &out.stdout;
            // The full description in the long help (`-h` gives the one-line summary).
            if help[1] != "-h" {
                assert!(text.contains(about), "{help:?}:\n{text}");
            }
            let mut keys = 0;
            for def in autogate_config::role_keys(role) {
                let default = match def.default {
                    DefaultValue::Value(v) => v.to_owned(),
                    DefaultValue::Derived(d) => d.replace('`', ""),
                    DefaultValue::None => "unset".to_owned(),
                };
                let line = text
                    .lines()
                    .find(|l| l.split_whitespace().next() == Some(def.env_name().as_str()))
                    .unwrap_or_else(|| panic!("{help:?}: no line for {}:\n{text}", def.env_name()));
                assert!(
                    line.contains(&format!("[{}] {}", def.section, def.key))
                        && line.trim_end().ends_with(&default),
                    "{help:?}: {line}"
                );
                keys += 1;
            }
            assert!(keys >= 8, "{help:?}: only {keys} settings");
            assert!(
                text.contains("autogate version --show-config"),
                "{help:?}:\n{text}"
            );
            assert!(text.contains("--config"), "{help:?}:\n{text}");
            for client_only in ["--raw", "--profile"] {
                assert!(
                    !text.contains(client_only),
                    "{help:?} lists {client_only}:\n{text}"
                );
            }
        }
    }
    // The operator CLI still lists them, and so do the manager's admin commands for --raw.
    let out = run(&["get", "services", "--help"], &[]);
    assert!(
        out.stdout.contains("--raw") && out.stdout.contains("--profile"),
        "{}",
        out.stdout
    );
    let out = run(&["manager", "cluster", "list", "--help"], &[]);
    assert!(out.stdout.contains("--raw"), "{}", out.stdout);
    // A daemon's command line that passes them still parses: here the configuration is what
    // stops it, before anything starts.
    let out = run(
        &["server", "--raw", "--profile", "x"],
        &[("GATEWAY_SERVER_PORT", "0")],
    );
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("server.port"), "{}", out.stderr);
}
