//! Test fixtures: real git repositories made in a temp directory.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Writes files and commits them; returns the commit id.
pub fn commit(dir: &Path, files: &[(&str, &str)], msg: &str) -> String {
    for (rel, text) in files {
        write(dir, rel, text);
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", msg]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A new repository with one commit on `main`.
pub fn repo(dir: &Path, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
    commit(dir, files, "initial")
}

pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// An in-tree PEP 517 backend packing `tinypkg/` into a wheel with the standard library only,
/// so installing the package needs neither the network nor setuptools/wheel.
const BACKEND: &str = r#"
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

/// Files of a tiny local python package `tinypkg` (pyproject.toml + module) under `prefix`.
pub fn tiny_package(prefix: &str, greeting: &str) -> Vec<(String, String)> {
    vec![
        (
            format!("{prefix}pyproject.toml"),
            "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"tinypkg\"\nversion = \"0.1.0\"\n".to_owned(),
        ),
        (format!("{prefix}backend.py"), BACKEND.to_owned()),
        (format!("{prefix}tinypkg/__init__.py"), format!("GREETING = {greeting:?}\n")),
    ]
}

pub fn write_all(dir: &Path, files: &[(String, String)]) {
    for (rel, text) in files {
        write(dir, rel, text);
    }
}

/// `python3` as the engine would find it.
pub fn python3() -> std::path::PathBuf {
    autogate_exec::which("python3", &std::env::var("PATH").unwrap()).expect("python3 in PATH")
}
