//! Checkout against real git repositories: references, the commit cache, workspaces, path
//! safety, SSH key handling.

mod common;

use autogate_exec::checkout::{resolve_inside, CheckoutCache, GitCredentials, Repository};
use autogate_exec::ExecError;
use common::*;
use tokio_util::sync::CancellationToken;

fn repo_ref(url: &str, reference: Option<&str>) -> Repository {
    Repository {
        url: url.to_owned(),
        reference: reference.map(str::to_owned),
        credentials: None,
    }
}

#[tokio::test]
async fn branches_tags_commits_and_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let c1 = repo(&src, &[("a.txt", "one\n")]);
    git(&src, &["tag", "v1"]);
    git(&src, &["checkout", "-q", "-b", "feature"]);
    let cf = commit(&src, &[("a.txt", "feature\n")], "feature");
    git(&src, &["checkout", "-q", "main"]);
    let c2 = commit(&src, &[("a.txt", "two\n")], "second");
    let url = file_url(&src);
    let cache = CheckoutCache::new(t.path().join("work/repos"));
    let cancel = CancellationToken::new();

    let read = |c: &autogate_exec::checkout::Checkout| {
        std::fs::read_to_string(c.path.join("a.txt")).unwrap()
    };
    let head = cache
        .checkout(&repo_ref(&url, None), &cancel)
        .await
        .unwrap();
    assert_eq!(
        (head.commit.as_str(), read(&head).as_str(), head.reused),
        (c2.as_str(), "two\n", false)
    );
    let tag = cache
        .checkout(&repo_ref(&url, Some("v1")), &cancel)
        .await
        .unwrap();
    assert_eq!(
        (tag.commit.as_str(), read(&tag).as_str()),
        (c1.as_str(), "one\n")
    );
    let br = cache
        .checkout(&repo_ref(&url, Some("feature")), &cancel)
        .await
        .unwrap();
    assert_eq!(
        (br.commit.as_str(), read(&br).as_str()),
        (cf.as_str(), "feature\n")
    );
    let by_sha = cache
        .checkout(&repo_ref(&url, Some(&c1)), &cancel)
        .await
        .unwrap();
    assert!(by_sha.reused, "same commit as the tag: reused");
    assert_eq!(by_sha.path, tag.path);
    let short = cache
        .checkout(&repo_ref(&url, Some(&c2[..10])), &cancel)
        .await
        .unwrap();
    assert_eq!(short.commit, c2);

    // A new commit on the branch is seen by the next run.
    let c3 = commit(&src, &[("a.txt", "three\n")], "third");
    let again = cache
        .checkout(&repo_ref(&url, Some("main")), &cancel)
        .await
        .unwrap();
    assert_eq!(
        (again.commit.as_str(), read(&again).as_str(), again.reused),
        (c3.as_str(), "three\n", false)
    );

    // A full commit id already cached needs no repository at all.
    std::fs::rename(&src, t.path().join("moved")).unwrap();
    let offline = cache
        .checkout(&repo_ref(&url, Some(&c3)), &cancel)
        .await
        .unwrap();
    assert!(offline.reused);

    // Workspaces are private copies, removed on drop.
    let ws = CheckoutCache::workspace(Some(&again), &t.path().join("work/runs"))
        .await
        .unwrap();
    let wp = ws.path().to_owned();
    std::fs::write(wp.join("a.txt"), "scribbled").unwrap();
    assert_eq!(read(&again), "three\n");
    drop(ws);
    // Removal happens on the blocking pool: poll for it with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wp.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!wp.exists(), "the workspace was not removed after drop");
}

#[tokio::test]
async fn failures_name_the_repository_and_reference() {
    let t = tempfile::tempdir().unwrap();
    let cache = CheckoutCache::new(t.path().join("repos"));
    let cancel = CancellationToken::new();
    let missing = format!("file://{}/nope", t.path().display());
    let e = cache
        .checkout(&repo_ref(&missing, None), &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ExecError::Checkout { .. }) && e.to_string().contains(&missing),
        "{e}"
    );

    let src = t.path().join("src");
    repo(&src, &[("a", "a")]);
    let e = cache
        .checkout(&repo_ref(&file_url(&src), Some("no-such-branch")), &cancel)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no-such-branch") && e.to_string().contains("not found"),
        "{e}"
    );

    let e = cache
        .checkout(
            &repo_ref("https://user:topsecret@127.0.0.1:9/x.git", None),
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("https://127.0.0.1:9/x.git") && !e.to_string().contains("topsecret"),
        "{e}"
    );
}

#[tokio::test]
async fn path_safety() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/run.py"), "").unwrap();
    std::fs::write(t.path().join("outside.py"), "").unwrap();
    std::os::unix::fs::symlink(t.path().join("outside.py"), root.join("escape.py")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    std::os::unix::fs::symlink("sub/run.py", root.join("inside.py")).unwrap();

    assert!(resolve_inside(&root, "sub/run.py", "filename").is_ok());
    assert!(resolve_inside(&root, "./sub", "working_dir").is_ok());
    assert!(
        resolve_inside(&root, "inside.py", "filename").is_ok(),
        "symlink staying inside is fine"
    );
    for bad in [
        "../outside.py",
        "sub/../../outside.py",
        "/etc/passwd",
        "escape.py",
        "etc/passwd",
    ] {
        let e = resolve_inside(&root, bad, "filename").unwrap_err();
        assert!(matches!(e, ExecError::PathOutside { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(bad), "{e}");
    }
    let e = resolve_inside(&root, "sub/missing.py", "filename").unwrap_err();
    assert!(matches!(e, ExecError::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn ssh_key_goes_through_a_private_temp_file() {
    let t = tempfile::tempdir().unwrap();
    // A stand-in ssh client that records how it was called and what the key file held.
    let fake = t.path().join("fake-ssh");
    let log = t.path().join("ssh.log");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do echo \"arg:$a\"; done > {log}\nprev=\nfor a in \"$@\"; do if [ \"$prev\" = -i ]; then stat -c '%a' \"$a\" >> {log}; cat \"$a\" >> {log}; echo \"$a\" > {log}.path; fi; prev=$a; done\nexit 1\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cache = CheckoutCache::new(t.path().join("repos")).with_ssh_program(fake.to_string_lossy());
    let repo = Repository {
        url: "ssh://git@example.invalid/r.git".into(),
        reference: None,
        credentials: Some(GitCredentials::SshKey {
            private_key: "-----KEY-MATERIAL-----".into(),
        }),
    };
    let e = cache
        .checkout(&repo, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::Checkout { .. }), "{e}");
    assert!(!e.to_string().contains("KEY-MATERIAL"), "{e}");
    assert!(!format!("{repo:?}").contains("KEY-MATERIAL"));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("arg:-i") && logged.contains("\n600\n-----KEY-MATERIAL-----\n"),
        "{logged}"
    );
    let key_path = std::fs::read_to_string(format!("{}.path", log.display())).unwrap();
    assert!(
        !std::path::Path::new(key_path.trim()).exists(),
        "key file left behind"
    );
}
