//! Test helpers: an isolated home, /etc and environment per test, so no test reads the real
//! process environment, home directory or /etc.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use autogate_config::{load, Config, ConfigError, LoadOptions};
use tempfile::TempDir;

pub struct Sandbox {
    pub dir: TempDir,
    pub env: BTreeMap<String, String>,
    pub explicit: Option<PathBuf>,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        Sandbox {
            dir,
            env: BTreeMap::new(),
            explicit: None,
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// Writes `rel` under the sandbox and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes a file and selects it with `--config`.
    pub fn config(&mut self, text: &str) -> PathBuf {
        let p = self.write("gateway.conf", text);
        self.explicit = Some(p.clone());
        p
    }

    pub fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    pub fn opts(&self) -> LoadOptions {
        LoadOptions {
            explicit_path: self.explicit.clone(),
            env: self.env.clone(),
            home: Some(self.home()),
            etc_dir: Some(self.etc()),
        }
    }

    pub fn load(&self) -> Config {
        match load(&self.opts()) {
            Ok(c) => c,
            Err(e) => panic!("load failed: {e}"),
        }
    }

    pub fn err(&self) -> ConfigError {
        match load(&self.opts()) {
            Ok(_) => panic!("load unexpectedly succeeded"),
            Err(e) => e,
        }
    }

    /// The error message, checked to contain every fragment.
    pub fn err_with(&self, fragments: &[&str]) -> ConfigError {
        let e = self.err();
        let msg = e.to_string();
        for f in fragments {
            assert!(msg.contains(f), "error {msg:?} lacks {f:?}");
        }
        assert_eq!(e.exit_code(), 64, "{msg}");
        e
    }
}

pub fn entry<'a>(
    c: &'a [autogate_config::Entry],
    section: &str,
    key: &str,
) -> &'a autogate_config::Entry {
    c.iter()
        .find(|e| e.section == section && e.key == key)
        .unwrap_or_else(|| panic!("no entry {section}.{key}"))
}

pub fn file_line(path: &Path, line: usize) -> String {
    format!("{} line {line}", path.display())
}
