//! `scripts/deps.sh`, the set-up every README command starts with, run against stand-in commands:
//! a PATH of stubs decides what is "installed", and a stub `apt-get` records what it was asked
//! for, so the script's decisions are checked without touching the machine.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::workspace_root;

/// Every command deps.sh looks for, as a stub that succeeds (`cargo deny --version` answers the
/// pinned version, read from the script so the test follows it).
const TOOLS: &[&str] = &[
    "etcd",
    "etcdctl",
    "git",
    "ssh-keyscan",
    "sshd",
    "python3",
    "tinyproxy",
    "curl",
    "ansible-playbook",
    "chromium",
    "chromedriver",
];

fn stub(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A bin directory with the stubs (minus `missing`), plus the few real tools the script uses.
fn stubs(dir: &Path, missing: &[&str], apt_log: &Path) {
    let script = std::fs::read_to_string(workspace_root().join("scripts/deps.sh")).unwrap();
    let deny = script
        .lines()
        .find_map(|l| l.strip_prefix("CARGO_DENY_VERSION="))
        .expect("deps.sh pins CARGO_DENY_VERSION")
        .trim()
        .to_owned();
    for t in TOOLS.iter().filter(|t| !missing.contains(t)) {
        stub(dir, t, "exit 0");
    }
    stub(
        dir,
        "cargo",
        &format!("[ \"$1 $2\" = \"deny --version\" ] && echo \"cargo-deny {deny}\"; exit 0"),
    );
    // Nothing counts as an installed Debian package; apt-get only records its arguments.
    stub(dir, "dpkg-query", "exit 1");
    stub(
        dir,
        "apt-get",
        &format!("echo \"$@\" >> '{}'", apt_log.display()),
    );
    stub(dir, "sudo", "exec \"$@\"");
    for real in ["bash", "grep", "id", "cat"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(real))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{real} not found"));
        std::os::unix::fs::symlink(found, dir.join(real)).unwrap();
    }
}

fn run_deps(bin: &Path) -> (i32, String) {
    let out = Command::new(bin.join("bash"))
        .arg(workspace_root().join("scripts/deps.sh"))
        .env_clear()
        .env("PATH", bin)
        .env("HOME", bin)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn deps_says_so_when_everything_is_present_and_installs_only_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let all = t.path().join("all");
    std::fs::create_dir(&all).unwrap();
    let apt_all = t.path().join("apt-all.log");
    stubs(&all, &[], &apt_all);
    let (code, text) = run_deps(&all);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.trim(), "deps: all dependencies present", "{text}");
    assert!(!apt_all.exists(), "apt-get ran with everything present");

    let some = t.path().join("some");
    std::fs::create_dir(&some).unwrap();
    let apt_some = t.path().join("apt-some.log");
    stubs(&some, &["etcdctl", "chromedriver"], &apt_some);
    let (code, text) = run_deps(&some);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("deps: installing etcd-client chromium-driver"),
        "{text}"
    );
    assert!(!text.contains("all dependencies present"), "{text}");
    let asked = std::fs::read_to_string(&apt_some).unwrap();
    assert!(
        asked.lines().any(|l| l.starts_with("install ")
            && l.contains("etcd-client")
            && l.contains("chromium-driver")
            && !l.contains("protobuf")),
        "apt-get was asked: {asked}"
    );
}
