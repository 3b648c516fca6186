//! Shared helpers: every scenario runs against the memory store and a real local store file.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use autogate_exec::ServiceType;
use autogate_resources::{
    Decorator, ExecutableObject, KeyFile, Repository, Secret, SecretRef, Service,
};
use autogate_store::{open, Store, StoreOptions};
use serde_json::json;

#[derive(Debug)]
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub fn file(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("gateway.db"))
    }
}

pub async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let local = open(StoreOptions::Local {
        path: dir.path().join("gateway.db"),
    })
    .await
    .unwrap();
    vec![
        Backend {
            store: open(StoreOptions::Memory).await.unwrap(),
            dir: None,
        },
        Backend {
            store: local,
            dir: Some(dir),
        },
    ]
}

pub fn key() -> KeyFile {
    KeyFile::from_bytes("test cluster key material\n").unwrap()
}

pub fn repo(name: &str) -> Repository {
    Repository::new(name, "file:///srv/git/automation.git")
}

pub fn decorator(name: &str) -> Decorator {
    Decorator::new(
        name,
        json!({"$id": "root", "type": "object", "properties": {"host": {"type": "string"}},
               "required": ["host"], "additionalProperties": false}),
    )
}

pub fn python(name: &str, repo: &str) -> Service {
    let mut s = Service::new(name, ServiceType::PythonScript);
    s.repository = Some(repo.into());
    s.filename = Some("main.py".into());
    s
}

pub fn executable(name: &str, exe: &str) -> Service {
    let mut s = Service::new(name, ServiceType::Executable);
    s.executable_object = Some(exe.into());
    s
}

pub fn exe(name: &str) -> ExecutableObject {
    ExecutableObject::new(name, "/bin/bash")
}

pub fn secret(name: &str, value: &str) -> Secret {
    Secret::new(name, value, &key()).unwrap()
}

pub fn with_secret(mut s: Service, secret: &str, target: &str) -> Service {
    s.secrets.push(SecretRef::env(secret, target));
    s
}

/// Every key and value of the store, for before/after comparisons.
pub async fn dump(store: &Arc<dyn Store>) -> Vec<(String, Vec<u8>)> {
    store
        .list("/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}
