//! Python venvs with real interpreters and a local package (no network): build, reuse,
//! concurrent builders, pyproject projects, failures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

mod common;

use std::time::Instant;

use autogate_exec::venv::{VenvCache, VenvOptions};
use autogate_exec::ExecError;
use common::*;
use tokio_util::sync::CancellationToken;

fn import_greeting(python: &std::path::Path) -> String {
    let out = std::process::Command::new(python)
        .args(["-c", "import tinypkg; print(tinypkg.GREETING)"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn requirements_venv_is_built_once_and_shared() {
    let t = tempfile::tempdir().unwrap();
    let proj = t.path().join("proj");
    write_all(&proj, &tiny_package("pkg/", "hello from tinypkg"));
    write(&proj, "requirements.txt", "./pkg\n");
    let cache = VenvCache::new(t.path().join("venvs"), VenvOptions::default());
    let req = proj.join("requirements.txt");
    let py = python3();
    let cancel = CancellationToken::new();

    // Two runs needing the same venv at once: one builds, the other waits and reuses it.
    let t0 = Instant::now();
    let (a, b) = tokio::join!(
        cache.ensure(&py, &req, &cancel),
        cache.ensure(&py, &req, &cancel)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let build_time = t0.elapsed();
    assert_eq!(a.path, b.path);
    assert_eq!(
        u8::from(a.built) + u8::from(b.built),
        1,
        "exactly one builder"
    );
    assert_eq!(import_greeting(&a.python), "hello from tinypkg");
    let mtime = std::fs::metadata(a.path.join("pyvenv.cfg"))
        .unwrap()
        .modified()
        .unwrap();

    let t1 = Instant::now();
    let c = cache.ensure(&py, &req, &cancel).await.unwrap();
    let reuse_time = t1.elapsed();
    assert!(!c.built);
    assert_eq!(c.path, a.path);
    assert_eq!(
        std::fs::metadata(c.path.join("pyvenv.cfg"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    eprintln!("venv build {build_time:?}, reuse {reuse_time:?}");
    assert!(
        reuse_time * 5 < build_time,
        "reuse {reuse_time:?} vs build {build_time:?}"
    );
    // Exactly one venv in the store.
    assert_eq!(
        std::fs::read_dir(t.path().join("venvs/store"))
            .unwrap()
            .count(),
        1
    );

    // A changed requirement set is another venv.
    write(&proj, "requirements.txt", "./pkg\n# v2\n");
    let d = cache.ensure(&py, &req, &cancel).await.unwrap();
    assert!(d.built && d.key != a.key);
}

#[tokio::test]
async fn pyproject_project_is_installed_and_keyed_by_its_code() {
    let t = tempfile::tempdir().unwrap();
    let proj = t.path().join("proj");
    write_all(&proj, &tiny_package("", "v1"));
    let cache = VenvCache::new(t.path().join("venvs"), VenvOptions::default());
    let py = python3();
    let cancel = CancellationToken::new();
    let v = cache
        .ensure(&py, &proj.join("pyproject.toml"), &cancel)
        .await
        .unwrap();
    assert!(v.built);
    assert_eq!(import_greeting(&v.python), "v1");
    write_all(&proj, &tiny_package("", "v2"));
    let v2 = cache
        .ensure(&py, &proj.join("pyproject.toml"), &cancel)
        .await
        .unwrap();
    assert!(
        v2.built && v2.key != v.key,
        "project code changed: new venv"
    );
    assert_eq!(import_greeting(&v2.python), "v2");
}

#[tokio::test]
async fn failed_install_is_a_venv_error_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "requirements.txt",
        "definitely-not-a-package-xyz==0.0.1\n",
    );
    let opts = VenvOptions {
        pip_args: vec!["--no-index".into()],
        ..VenvOptions::default()
    };
    let cache = VenvCache::new(t.path().join("venvs"), opts);
    let e = cache
        .ensure(
            &python3(),
            &t.path().join("requirements.txt"),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::Venv { .. }), "{e}");
    assert!(
        e.to_string().contains("definitely-not-a-package-xyz"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(t.path().join("venvs/store"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn packages_come_from_the_registry_index_and_the_index_keys_the_venv() {
    let t = tempfile::tempdir().unwrap();
    // A simple index with one project, laid out as pip reads a `file://` index.
    write_all(
        &t.path().join("pkgsrc"),
        &tiny_package("", "from the index"),
    );
    let index_dir = t.path().join("simple");
    let out = std::process::Command::new(python3())
        .args(["-m", "pip", "wheel", "--no-deps", "-q", "-w"])
        .arg(index_dir.join("tinypkg"))
        .arg(t.path().join("pkgsrc"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // PEP 503 pages: pip reads `index.html` of a `file://` directory.
    let links: String = std::fs::read_dir(index_dir.join("tinypkg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .map(|f| format!("<a href=\"{f}\">{f}</a>\n"))
        .collect();
    write(&index_dir, "tinypkg/index.html", &links);
    write(
        &index_dir,
        "index.html",
        "<a href=\"tinypkg/\">tinypkg</a>\n",
    );
    let proj = t.path().join("proj");
    write(&proj, "requirements.txt", "tinypkg==0.1.0\n");
    let req = proj.join("requirements.txt");
    let index = autogate_exec::PipIndex {
        url: format!("file://{}", index_dir.display()),
        trusted_host: false,
    };
    let cache = VenvCache::new(t.path().join("venvs"), VenvOptions::default());
    let cancel = CancellationToken::new();
    let v = cache
        .ensure_with(&python3(), &req, Some(&index), &cancel)
        .await
        .unwrap();
    assert!(v.built);
    assert_eq!(import_greeting(&v.python), "from the index");
    let again = cache
        .ensure_with(&python3(), &req, Some(&index), &cancel)
        .await
        .unwrap();
    assert!(!again.built, "same index, same requirements: reused");
    let interp = cache.interpreter(&python3(), &cancel).await.unwrap();
    assert_ne!(
        VenvCache::key_with(&interp, &req, Some(&index)).unwrap(),
        VenvCache::key(&interp, &req).unwrap(),
        "another index may resolve other packages: another venv"
    );
}

/// A package build that prints its environment (a careless `setup.py`, or a hostile one in
/// the service's repository) puts the index URL into pip's output, and pip's output into the
/// build error: the index's credentials are masked there, as written and decoded.
#[tokio::test]
async fn index_credentials_are_masked_in_a_failed_build() {
    let t = tempfile::tempdir().unwrap();
    let proj = t.path().join("proj");
    // An in-tree build backend needs nothing from any index, so the build runs offline.
    write(
        &proj,
        "pkg/pyproject.toml",
        "[build-system]\nrequires = []\nbuild-backend = \"leaky\"\nbackend-path = [\".\"]\n\
         [project]\nname = \"leaky\"\nversion = \"0.1\"\n",
    );
    write(
        &proj,
        "pkg/leaky.py",
        "import os, sys, urllib.parse\n\
         def _leak(*a, **k):\n\
         \x20   url = os.environ.get('PIP_INDEX_URL', '')\n\
         \x20   print('index=' + url, file=sys.stderr)\n\
         \x20   print('password=' + urllib.parse.unquote(url.split('@')[0].split(':')[-1]), file=sys.stderr)\n\
         \x20   raise SystemExit(3)\n\
         get_requires_for_build_wheel = _leak\n\
         build_wheel = _leak\n\
         prepare_metadata_for_build_wheel = _leak\n",
    );
    write(&proj, "requirements.txt", "./pkg\n");
    let index = autogate_exec::PipIndex {
        // Never contacted: the one requirement is a local directory.
        url: "http://bob:s3cr%40t-PIP@127.0.0.1:9/simple".into(),
        trusted_host: false,
    };
    let cache = VenvCache::new(t.path().join("venvs"), VenvOptions::default());
    let err = cache
        .ensure_with(
            &python3(),
            &proj.join("requirements.txt"),
            Some(&index),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ExecError::Venv { .. }), "{msg}");
    assert!(
        msg.contains("index=********") && msg.contains("password=********"),
        "the build's output is in the error, masked: {msg}"
    );
    assert!(!msg.contains("s3cr"), "no credential in the error: {msg}");
}
