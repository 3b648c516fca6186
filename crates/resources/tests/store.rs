//! The resource repository against the memory store and a local store file.

mod common;

use std::sync::Arc;

use autogate_resources::{
    Decorator, ExecutableObject, Kind, Repository, ResourceError, Resources, Secret,
};
use autogate_store::{Compare, Txn};
use common::*;

#[tokio::test]
async fn create_get_list_delete() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let stored = r.create(repo("automation")).await.unwrap();
        assert!(stored.meta.created.is_some());
        assert_eq!(stored.meta.created, stored.meta.updated);
        let got: Repository = r.get("automation").await.unwrap().unwrap();
        assert_eq!(got, stored);
        assert!(r.get::<Repository>("other").await.unwrap().is_none());
        r.create(repo("b-repo")).await.unwrap();
        let names: Vec<String> = r
            .list::<Repository>()
            .await
            .unwrap()
            .into_iter()
            .map(|x| x.meta.name)
            .collect();
        assert_eq!(names, ["automation", "b-repo"]);
        assert_eq!(
            r.names(Kind::Repository).await.unwrap(),
            ["automation", "b-repo"]
        );
        assert!(b
            .store
            .get("/autogate/c1/resources/repository/automation")
            .await
            .unwrap()
            .is_some());

        let err = r.create(repo("automation")).await.unwrap_err();
        assert!(matches!(err, ResourceError::AlreadyExists { .. }), "{err}");
        assert_eq!(err.to_string(), "repository automation already exists");

        r.delete(Kind::Repository, "b-repo").await.unwrap();
        let err = r.delete(Kind::Repository, "b-repo").await.unwrap_err();
        assert!(matches!(err, ResourceError::NotFound { .. }));

        // Another cluster sees nothing.
        let other = Resources::new(b.store.clone(), "c2");
        assert!(other.list::<Repository>().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn invalid_definitions_are_refused_naming_the_field() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let before = dump(&b.store).await;
        let err = r.create(repo("bad/name")).await.unwrap_err();
        assert!(err.to_string().contains("invalid name"), "{err}");
        let err = r
            .create(ExecutableObject::new("sh", "bin/sh"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exec-command"), "{err}");
        assert_eq!(dump(&b.store).await, before);
    }
}

#[tokio::test]
async fn references_are_checked_on_create() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let before = dump(&b.store).await;
        let err = r.create(python("svc", "missing-repo")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "service svc: repository names repository missing-repo, which does not exist"
        );
        r.create(repo("r")).await.unwrap();
        let mut s = python("svc", "r");
        s.decorator = Some("d".into());
        let err = r.create(s.clone()).await.unwrap_err();
        assert!(err.to_string().contains("decorator d"), "{err}");
        r.create(decorator("d")).await.unwrap();
        let s = with_secret(s, "token", "API_TOKEN");
        let err = r.create(s.clone()).await.unwrap_err();
        assert!(err.to_string().contains("secret token"), "{err}");
        r.create(secret("token", "abc")).await.unwrap();
        r.create(s).await.unwrap();
        assert_ne!(dump(&b.store).await, before);
    }
}

#[tokio::test]
async fn delete_refuses_referenced_resources_naming_users() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        r.create(repo("r")).await.unwrap();
        r.create(decorator("d")).await.unwrap();
        r.create(exe("bash")).await.unwrap();
        r.create(secret("tok", "v")).await.unwrap();
        let mut a = python("svc-a", "r");
        a.decorator = Some("d".into());
        r.create(with_secret(a, "tok", "TOKEN")).await.unwrap();
        r.create(with_secret(executable("svc-b", "bash"), "tok", "T"))
            .await
            .unwrap();
        let mut repo2 = repo("r2");
        repo2.private_key_name = Some("tok".into());
        r.create(repo2).await.unwrap();

        let err = r.delete(Kind::Repository, "r").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "repository r is still used by service svc-a"
        );
        let err = r.delete(Kind::Decorator, "d").await.unwrap_err();
        assert!(matches!(err, ResourceError::InUse { .. }));
        let err = r.delete(Kind::ExecutableObject, "bash").await.unwrap_err();
        assert!(err.to_string().contains("service svc-b"));
        let err = r.delete(Kind::Secret, "tok").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret tok is still used by repository r2, service svc-a, service svc-b"
        );

        r.delete(Kind::Service, "svc-a").await.unwrap();
        r.delete(Kind::Repository, "r").await.unwrap();
        r.delete(Kind::Decorator, "d").await.unwrap();
    }
}

#[tokio::test]
async fn update_keeps_created() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let first = r.create(repo("r")).await.unwrap();
        let mut next = repo("r");
        next.reference = Some("main".into());
        let stored = r.update(next).await.unwrap();
        assert_eq!(stored.meta.created, first.meta.created);
        assert!(stored.meta.updated >= first.meta.updated);
        assert_eq!(
            r.get::<Repository>("r")
                .await
                .unwrap()
                .unwrap()
                .reference
                .as_deref(),
            Some("main")
        );
        assert!(matches!(
            r.update(repo("nope")).await.unwrap_err(),
            ResourceError::NotFound { .. }
        ));
    }
}

#[tokio::test]
async fn txn_guard_fences_writes() {
    for b in backends().await {
        let leader_key = "/autogate/c1/leader".to_string();
        b.store
            .put(&leader_key, b"me".to_vec(), None)
            .await
            .unwrap();
        let kv = b.store.get(&leader_key).await.unwrap().unwrap();
        let token = kv.create_revision;
        let guard_key = leader_key.clone();
        let r = Resources::new(b.store.clone(), "c1").with_txn_guard(Arc::new(move |t: Txn| {
            t.when([Compare::create_revision(
                guard_key.clone(),
                autogate_store::CompareOp::Equal,
                token,
            )])
        }));
        r.create(repo("r")).await.unwrap();
        // Leadership moves: the key is re-created with a new create revision.
        b.store.delete(&leader_key).await.unwrap();
        b.store
            .put(&leader_key, b"other".to_vec(), None)
            .await
            .unwrap();
        let before = dump(&b.store).await;
        let err = r.create(repo("r2")).await.unwrap_err();
        assert!(matches!(err, ResourceError::Fenced), "{err}");
        assert_eq!(dump(&b.store).await, before);
    }
}

#[tokio::test]
async fn concurrent_writers_never_leave_dangling_references() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        for round in 0..10 {
            let repo_name = format!("r{round}");
            r.create(repo(&repo_name)).await.unwrap();
            let (a, c) = tokio::join!(
                r.delete(Kind::Repository, &repo_name),
                r.create(python(&format!("s{round}"), &repo_name))
            );
            // Either the delete won (and the create saw the missing repository) or the create
            // won (and the delete saw the user); never both.
            assert!(a.is_ok() != c.is_ok(), "round {round}: {a:?} {c:?}");
        }
    }
}

#[tokio::test]
async fn resolve_service_decrypts_for_the_engine() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let mut rp = Repository::new("r", "https://git.example/a.git");
        rp.username = Some("bob".into());
        rp.password_name = Some("git-pw".into());
        r.create(secret("git-pw", "hunter2")).await.unwrap();
        r.create(secret("api", "tok-123")).await.unwrap();
        r.create(rp).await.unwrap();
        r.create(decorator("d")).await.unwrap();
        let mut s = python("svc", "r");
        s.decorator = Some("d".into());
        r.create(with_secret(s, "api", "API_TOKEN")).await.unwrap();
        let (exec, env) = r.resolve_service("svc", Some(&key())).await.unwrap();
        assert_eq!(env["API_TOKEN"], "tok-123");
        let creds = exec.repository.unwrap().credentials.unwrap();
        assert_eq!(creds.secret_values(), ["hunter2"]);
        assert!(exec.decorator.is_some());
        let wrong = autogate_resources::KeyFile::from_bytes("other key").unwrap();
        let err = r.resolve_service("svc", Some(&wrong)).await.unwrap_err();
        assert_eq!(err.to_string(), "wrong key file or corrupted secret git-pw");
    }
}

#[tokio::test]
async fn local_store_file_never_holds_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let plaintext = "PLAINTEXT-MARKER-7f3a9c";
    {
        let store =
            autogate_store::open(autogate_store::StoreOptions::Local { path: path.clone() })
                .await
                .unwrap();
        let r = Resources::new(store, "c1");
        r.create(secret("db-password", plaintext)).await.unwrap();
        let mut d = Decorator::new("d", serde_json::json!({"type": "object"}));
        d.meta.description = "control marker DESC-MARKER-123".into();
        r.create(d).await.unwrap();
        let back: Secret = r.get("db-password").await.unwrap().unwrap();
        assert_eq!(back.decrypt(&key()).unwrap().expose(), plaintext);
    }
    let raw = std::fs::read(&path).unwrap();
    let has = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The control proves the grep can see what is written.
    assert!(has("DESC-MARKER-123"));
    assert!(has("db-password"));
    assert!(!has(plaintext));
}

#[tokio::test]
async fn builtins_are_seeded_once() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        let created = r.ensure_builtins().await.unwrap();
        assert_eq!(created, ["default-pypi", "default-galaxy"]);
        assert_eq!(
            r.names(Kind::Registry).await.unwrap(),
            ["default-galaxy", "default-pypi"]
        );
        r.delete(Kind::Registry, "default-pypi").await.unwrap();
        // A deleted built-in stays deleted.
        assert!(r.ensure_builtins().await.unwrap().is_empty());
        assert_eq!(r.names(Kind::Registry).await.unwrap(), ["default-galaxy"]);
    }
}

#[tokio::test]
async fn unreadable_secrets_are_listed() {
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        r.create(secret("ours", "v")).await.unwrap();
        let foreign = autogate_resources::KeyFile::from_bytes("another cluster").unwrap();
        r.create(Secret::new("theirs", "v", &foreign).unwrap())
            .await
            .unwrap();
        assert_eq!(r.unreadable_secrets(&key()).await.unwrap(), ["theirs"]);
    }
}

#[tokio::test]
async fn python_venvs_use_the_chosen_pypi_registry() {
    use autogate_resources::model::{Registry, RegistryType};
    for b in backends().await {
        let r = Resources::new(b.store.clone(), "c1");
        r.ensure_builtins().await.unwrap();
        r.create(repo("r")).await.unwrap();
        r.create(python("plain", "r")).await.unwrap();
        // The untouched public default leaves pip's own configuration in charge.
        let (exec, _) = r.resolve_service("plain", None).await.unwrap();
        assert_eq!(exec.pip_index, None);

        r.create(secret("idx-pw", "p@ss word")).await.unwrap();
        let mut mirror = Registry::new("mirror", RegistryType::Pypi, "https://pypi.lab/simple");
        mirror.username = Some("ci".into());
        mirror.password_name = Some("idx-pw".into());
        mirror.insecure = true;
        r.create(mirror).await.unwrap();
        let mut svc = python("mirrored", "r");
        svc.registry = Some("mirror".into());
        r.create(svc).await.unwrap();
        let (exec, _) = r.resolve_service("mirrored", Some(&key())).await.unwrap();
        let index = exec.pip_index.unwrap();
        assert_eq!(index.url, "https://ci:p%40ss%20word@pypi.lab/simple");
        assert!(index.trusted_host);
        assert!(
            !format!("{index:?}").contains("p%40ss"),
            "Debug hides the credentials"
        );
        // Without the key file the credentials cannot be opened, and the error names the secret.
        let err = r.resolve_service("mirrored", None).await.unwrap_err();
        assert!(err.to_string().contains("idx-pw"), "{err}");
    }
}
