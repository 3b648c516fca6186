//! Settings of the family's files that must be honest on real core nodes and runners: a key
//! accepted only for compatibility is named by one warning at start-up when it is set (and never
//! when it is not), `[log] timestamp_timezone` puts the log's times in that zone, and the venv
//! pruner (`venv_retention_period`, `venv_sweep_interval`) deletes an idle venv while one in use
//! stays.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use autogate_testkit::auth::{admin_key, with_admin_password};
use autogate_testkit::process::free_port;
use autogate_testkit::{Autogate, Process};
use serde_json::{json, Value};

use crate::support::{call, git_repo};

const START: Duration = Duration::from_secs(30);
const COMPAT: &str = "accepted only for compatibility";

/// A core node on the local store of its own temp home, with the test admin.
fn node() -> (Autogate, u16) {
    let port = free_port();
    let cmd = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_CONNECT_ENABLED", "false");
    (with_admin_password(cmd), port)
}

fn started(p: &Process) {
    p.wait_for_line("core node listening", START);
}

#[test]
fn compat_keys_are_named_once_each_at_start_and_only_when_set() {
    let (cmd, _) = node();
    let conf = cmd.home().join("gateway.conf");
    // Two from the file (one of them also in the environment: still one warning), one from
    // the environment only.
    std::fs::write(
        &conf,
        "[runner]\nport = 50099\n[features]\nmcp_enabled = false\n[store]\nbackend = local\n",
    )
    .expect("write config");
    let p = cmd
        .arg("--config")
        .arg(conf.display().to_string())
        .env("GATEWAY_RUNNER_PORT", "50098")
        .env("GATEWAY_STORE_DYNAMODB_TABLE_NAME", "vendor.gateway5.store")
        .spawn();
    started(&p);
    let logs = p.logs();
    let warned: Vec<&str> = logs.lines().filter(|l| l.contains(COMPAT)).collect();
    assert_eq!(warned.len(), 3, "three keys set, three warnings:\n{logs}");
    for (key, from) in [
        ("runner.port", "environment variable GATEWAY_RUNNER_PORT"),
        ("features.mcp_enabled", "line 4"),
        (
            "store.dynamodb_table_name",
            "environment variable GATEWAY_STORE_DYNAMODB_TABLE_NAME",
        ),
    ] {
        let lines: Vec<_> = warned.iter().filter(|l| l.contains(key)).collect();
        assert_eq!(lines.len(), 1, "{key} named once:\n{logs}");
        let line = lines[0];
        assert!(line.contains(" WRN "), "a warning: {line}");
        assert!(line.contains(from), "says where {key} was set: {line}");
    }
    assert!(
        warned
            .iter()
            .any(|l| l.contains("runner.port") && l.contains("listen on no port")),
        "says what autogate does instead:\n{logs}"
    );
    // `[store] backend` is a working key: no warning for it.
    assert!(!logs.contains("store.backend is set"), "{logs}");

    // The same node without them says nothing of the kind.
    let (cmd, _) = node();
    let p = cmd.spawn();
    started(&p);
    let logs = p.logs();
    assert!(
        !logs.contains(COMPAT),
        "nothing set, nothing to warn:\n{logs}"
    );
}

#[test]
fn log_timestamps_are_in_the_configured_zone() {
    // India has no daylight saving time: the offset is +05:30 all year.
    let (cmd, _) = node();
    let p = cmd
        .env("GATEWAY_LOG_TIMESTAMP_TIMEZONE", "Asia/Kolkata")
        .spawn();
    started(&p);
    let line = p
        .lines()
        .into_iter()
        .find(|l| l.text.contains("core node listening"))
        .expect("the listening line");
    let stamp = line.text.split(' ').next().unwrap_or_default();
    assert!(
        stamp.len() == 25 && stamp.ends_with("+05:30") && stamp.as_bytes()[10] == b'T',
        "an RFC 3339 time with the zone's offset: {}",
        line.text
    );
    let logged = stamp
        .parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{stamp:?} is not an RFC 3339 time: {e}"));
    let age = jiff::Timestamp::now().as_second() - logged.as_second();
    assert!((0..120).contains(&age), "the time is now: {}", line.text);

    // JSON lines carry the same time.
    let (cmd, _) = node();
    let p = cmd
        .env("GATEWAY_LOG_TIMESTAMP_TIMEZONE", "Asia/Kolkata")
        .env("GATEWAY_LOG_CONSOLE_JSON", "true")
        .spawn();
    started(&p);
    let json_line = p
        .lines()
        .into_iter()
        .find_map(|l| {
            let v: Value = serde_json::from_str(&l.text).ok()?;
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("core node listening"))
                .then_some(v)
        })
        .expect("the listening line as JSON");
    let time = json_line["time"].as_str().unwrap_or_default();
    assert!(time.ends_with("+05:30"), "{json_line}");

    // A zone the system does not know stops the start, naming the key.
    let (cmd, _) = node();
    let out = cmd
        .env("GATEWAY_LOG_TIMESTAMP_TIMEZONE", "Mars/Olympus_Mons")
        .output(START);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr.contains("log.timestamp_timezone")
            && out.stderr.contains("GATEWAY_LOG_TIMESTAMP_TIMEZONE"),
        "{}",
        out.stderr
    );
}

/// The published venvs (`<venvs>/<key>` links) of a node's engine.
fn venv_keys(venvs: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(venvs)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.len() == 64)
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

fn run(addr: &str, key: &str, service: &str) {
    let (status, v) = call(
        addr,
        key,
        "POST",
        &format!("/api/v1/services/{service}/run"),
        Some(&json!({})),
    )
    .expect("node reachable");
    assert_eq!(status, 200, "run {service}: {v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["result"]["return_code"], 0, "{v}");
}

#[test]
fn the_venv_pruner_deletes_an_idle_venv_and_keeps_a_used_one() {
    let (cmd, port) = node();
    let venvs: PathBuf = cmd.home().join("work/runtime/venvs");
    // Two services with different requirement sets (nothing to install: the test needs no
    // network), so each has its own venv.
    let url = git_repo(
        &cmd.home().join("src"),
        &[
            ("a/main.py", "print('a')\n"),
            ("a/requirements.txt", "# the idle service's set\n"),
            ("b/main.py", "print('b')\n"),
            ("b/requirements.txt", "# the busy service's set\n"),
        ],
    );
    let mut p = cmd
        .env("GATEWAY_APPLICATION_VENV_RETENTION_PERIOD", "5s")
        .env("GATEWAY_APPLICATION_VENV_SWEEP_INTERVAL", "1s")
        .env("GATEWAY_LOG_LEVEL", "DEBUG")
        .spawn();
    started(&p);
    let addr = format!("127.0.0.1:{port}");
    let key = admin_key(port);
    let post = |path: &str, body: Value| {
        let (status, v) = call(&addr, &key, "POST", path, Some(&body)).expect("node reachable");
        assert_eq!(status, 201, "POST {path}: {v}");
    };
    post(
        "/api/v1/repositories",
        json!({"name": "code", "url": url, "reference": "main"}),
    );
    for (name, dir) in [("idle", "a"), ("busy", "b")] {
        post(
            "/api/v1/services",
            json!({"name": name, "type": "python-script", "repository": "code",
                   "working-directory": dir, "filename": "main.py"}),
        );
    }
    run(&addr, &key, "idle");
    let idle = venv_keys(&venvs);
    assert_eq!(idle.len(), 1, "the idle service's venv: {idle:?}");
    let idle = idle[0].clone();
    run(&addr, &key, "busy");
    let busy: Vec<String> = venv_keys(&venvs)
        .into_iter()
        .filter(|k| *k != idle)
        .collect();
    assert_eq!(busy.len(), 1, "the busy service's venv: {busy:?}");
    let busy = busy[0].clone();

    // The busy service runs about every second; the idle one not at all. Within a deadline
    // the idle venv goes, and the busy one is there at every look.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let keys = venv_keys(&venvs);
        assert!(
            keys.contains(&busy) && venvs.join(&busy).join("bin/python").exists(),
            "the venv in use stays: {keys:?}\n{}",
            p.logs()
        );
        if !keys.contains(&idle) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle venv is still there after 90 s:\n{}",
            p.logs()
        );
        run(&addr, &key, "busy");
        std::thread::sleep(Duration::from_millis(700));
    }
    // Gone for good: its directory too, and the node said so.
    let store_dirs: Vec<String> = std::fs::read_dir(venvs.join("store"))
        .expect("venv store")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    assert!(
        !store_dirs.iter().any(|d| d.starts_with(&idle)),
        "{store_dirs:?}"
    );
    assert!(
        store_dirs.iter().any(|d| d.starts_with(&busy)),
        "{store_dirs:?}"
    );
    p.wait_for_line(&format!("venv pruner: removed venv {idle}"), START);
    // A run of the pruned service builds its venv again.
    run(&addr, &key, "idle");
    assert!(venv_keys(&venvs).contains(&idle));
    p.signal("TERM");
    assert!(p.wait_exit(START).success(), "{}", p.logs());
}

#[test]
fn a_runner_warns_of_its_family_keys_and_prunes_its_venvs() {
    let etcd = autogate_testkit::etcd::EtcdServer::start();
    let cmd = Autogate::new(["runner"])
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .env("GATEWAY_RUNNER_PORT", "50099")
        .env("GATEWAY_APPLICATION_VENV_RETENTION_PERIOD", "2s")
        .env("GATEWAY_APPLICATION_VENV_SWEEP_INTERVAL", "1s");
    // A venv an earlier run left (built a day ago, its last use unknown): laid out as the cache
    // lays it out, with nothing in it but an interpreter's name.
    let venvs = cmd.home().join("work/runtime/venvs");
    let key = "e".repeat(64);
    let dir = venvs.join("store").join(format!("{key}-old"));
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::write(dir.join("bin/python"), "").expect("write");
    std::os::unix::fs::symlink(
        Path::new("store").join(format!("{key}-old")),
        venvs.join(&key),
    )
    .expect("link");
    std::fs::File::open(&dir)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(86_400)))
        .expect("age the venv");
    let spawned = Instant::now();
    let p = cmd.spawn();
    p.wait_for_line("runner registered in cluster", START);
    let logs = p.logs();
    let warned: Vec<&str> = logs.lines().filter(|l| l.contains(COMPAT)).collect();
    assert!(
        warned.len() == 1 && warned[0].contains("runner.port"),
        "one warning, for runner.port:\n{logs}"
    );
    // Its last use unknown, it counts as used when the pruner first saw it: gone one retention
    // period later, not at once.
    let removed = p.wait_for_line(&format!("venv pruner: removed venv {key}"), START);
    assert!(
        removed.at.duration_since(spawned) >= Duration::from_secs(2),
        "removed {:?} after the start, before a retention period had passed",
        removed.at.duration_since(spawned)
    );
    assert!(!dir.exists() && !venvs.join(&key).exists());
}
