//! What ships next to the binary: shell completion scripts, the systemd units in
//! `deploy/systemd/` and the example cluster configuration in `deploy/examples/`.

use std::process::Command;
use std::time::Duration;

use autogate_testkit::{autogate_bin, Autogate};
use serde_json::Value;

use crate::support::workspace_root;

const DEADLINE: Duration = Duration::from_secs(20);

fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn completion_scripts_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Autogate::new(["completion", shell]).output(DEADLINE);
        assert_eq!(out.code(), Some(0), "{shell}: {}", out.stderr);
        assert!(!out.stdout.trim().is_empty(), "{shell}: empty script");
        assert!(out.stdout.contains("autogate"), "{shell}: {}", out.stdout);
        for sub in ["cert-gen", "server", "manager", "completion"] {
            assert!(out.stdout.contains(sub), "{shell} script lacks {sub}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().expect("temp dir");
            let script = dir.path().join("autogate.bash");
            std::fs::write(&script, &out.stdout).expect("write script");
            let check = Command::new("bash")
                .arg("-n")
                .arg(&script)
                .output()
                .expect("run bash -n");
            assert!(
                check.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let out = Autogate::new(["completion", "powershell-9"]).output(DEADLINE);
    assert_eq!(out.code(), Some(64), "{}", out.stderr);
}

#[test]
fn systemd_units_are_hardened_and_verify() {
    let units = ["server", "runner", "manager"];
    for role in units {
        let text = std::fs::read_to_string(
            workspace_root().join(format!("deploy/systemd/autogate-{role}.service")),
        )
        .expect("unit file");
        for line in [
            "User=gateway".to_owned(),
            "ProtectSystem=strict".to_owned(),
            "ProtectHome=true".to_owned(),
            "NoNewPrivileges=true".to_owned(),
            "PrivateTmp=true".to_owned(),
            "ReadWritePaths=/var/lib/gateway /var/log/gateway".to_owned(),
            "Restart=on-failure".to_owned(),
            "KillSignal=SIGTERM".to_owned(),
            "TimeoutStopSec=30".to_owned(),
            format!("ExecStart=/usr/local/bin/autogate {role} --config /etc/gateway/gateway.conf"),
        ] {
            assert!(
                text.lines().any(|l| l.trim() == line),
                "autogate-{role}.service lacks {line}"
            );
        }
    }

    if !has("systemd-analyze") {
        eprintln!("systemd-analyze not found: skipping `systemd-analyze verify` of the units");
        return;
    }
    // `verify` checks that ExecStart's program exists and is executable. The units name the
    // installed path /usr/local/bin/autogate, which a build machine lacks, so verify copies of
    // the units whose ExecStart points at the binary under test; nothing else is changed.
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = autogate_bin();
    let mut paths = Vec::new();
    for role in units {
        let name = format!("autogate-{role}.service");
        let text = std::fs::read_to_string(workspace_root().join("deploy/systemd").join(&name))
            .expect("unit file");
        let text = text.replace("/usr/local/bin/autogate", &bin.display().to_string());
        let path = dir.path().join(&name);
        std::fs::write(&path, text).expect("write unit");
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// Load `deploy/examples/<name>` with `/etc/gateway/` moved to a temp dir holding (empty)
/// files of every path the example names there: a TLS-enabled etcd needs its CA file to
/// exist when the configuration loads.
fn show_example(name: &str) -> Value {
    let text = std::fs::read_to_string(workspace_root().join("deploy/examples").join(name))
        .expect("example config");
    let dir = tempfile::tempdir().expect("temp dir");
    let etc = format!("{}/", dir.path().display());
    let rewritten = text.replace("/etc/gateway/", &etc);
    for word in text.split_whitespace() {
        if let Some(rest) = word.strip_prefix("/etc/gateway/") {
            let path = dir.path().join(rest);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "").expect("touch");
        }
    }
    let conf = dir.path().join(name);
    std::fs::write(&conf, rewritten).expect("write config");
    let out = Autogate::new(["version", "--show-config", "--raw", "--config"])
        .arg(conf.display().to_string())
        .output(DEADLINE);
    assert_eq!(out.code(), Some(0), "{name}: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("raw output is JSON")
}

fn value(v: &Value, key: &str) -> String {
    let (section, key) = key.split_once('.').expect("section.key");
    let entry = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["section"] == section && e["key"] == key)
        .unwrap_or_else(|| panic!("no entry {section}.{key}"));
    assert_ne!(
        entry["source"]["kind"], "default",
        "{section}.{key} should come from the file"
    );
    match &entry["value"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn example_cluster_configs_load_with_the_expected_values() {
    let etcd = "10.0.1.21:2379 10.0.1.22:2379 10.0.1.23:2379";
    for (i, primary) in [(1, "true"), (2, "false"), (3, "false")] {
        let v = show_example(&format!("core-{i}.conf"));
        for (key, want) in [
            ("application.mode", "server".to_owned()),
            ("application.cluster_id", "dc1-automation".to_owned()),
            ("connect.server_ha_enabled", "true".to_owned()),
            ("connect.server_ha_is_primary", primary.to_owned()),
            ("connect.hosts", "manager.example.com:8443".to_owned()),
            ("connect.advertise_address", format!("10.0.1.1{i}:50051")),
            ("store.backend", "etcd".to_owned()),
            ("store.etcd_hosts", etcd.to_owned()),
            ("store.etcd_use_tls", "true".to_owned()),
            ("server.distributed_execution", "true".to_owned()),
        ] {
            assert_eq!(value(&v, key), want, "core-{i}.conf {key}");
        }
        assert!(
            value(&v, "connect.certificate_file").ends_with(&format!("/certificates/core-{i}.pem"))
        );
    }

    let v = show_example("runner.conf");
    for (key, want) in [
        ("application.mode", "runner"),
        ("application.cluster_id", "dc1-automation"),
        ("store.backend", "etcd"),
        ("store.etcd_hosts", etcd),
        ("runner.capacity", "8"),
    ] {
        assert_eq!(value(&v, key), want, "runner.conf {key}");
    }

    let v = show_example("manager.conf");
    for (key, want) in [
        ("manager.listen_address", "0.0.0.0"),
        ("manager.port", "8443"),
        ("manager.session_history", "1000"),
    ] {
        assert_eq!(value(&v, key), want, "manager.conf {key}");
    }
    assert!(value(&v, "manager.certificate_file").ends_with("/certificates/manager.pem"));
}
