//! The CLI on a working directory of a test's own: [`LocalDir`] (local mode, in a temporary
//! directory), [`ClientDir`] (client mode against a node's API), and [`Cli`], the runs and checks
//! every such directory shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use autogate_testkit::{Autogate, Output};
use serde_json::Value;
use tempfile::TempDir;

use super::{expect_code, raw_json, with_stdin};

/// `autogate <args…>` with `GATEWAY_APPLICATION_WORKING_DIR` set to `work`.
pub fn in_work_dir(work: &Path, args: &[&str]) -> Autogate {
    Autogate::new(args.iter().map(|s| s.to_string())).env(
        "GATEWAY_APPLICATION_WORKING_DIR",
        work.display().to_string(),
    )
}

/// Runs of the CLI on one working directory and their checks; an implementation says how a
/// command is made ([`Cli::cmd`]) and how long a run may take ([`Cli::deadline`]).
pub trait Cli {
    /// `autogate <args…>` on this working directory (to add settings, or to spawn).
    fn cmd(&self, args: &[&str]) -> Autogate;

    /// How long one run may take.
    fn deadline(&self) -> Duration;

    /// `args` run to the end.
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output(self.deadline())
    }

    /// `args` run, asserted to exit with `code`.
    fn expect(&self, args: &[&str], code: i32) -> Output {
        expect_code(self.run(args), args, code)
    }

    /// Standard output of `args`, which must exit 0.
    fn ok(&self, args: &[&str]) -> String {
        self.expect(args, 0).stdout
    }

    /// Standard error of `args`, which must exit with `code`.
    fn fails(&self, args: &[&str], code: i32) -> String {
        self.expect(args, code).stderr
    }

    /// `args` with `--raw` added, exit 0, as JSON.
    fn raw(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--raw");
        raw_json(&a, &self.ok(&a))
    }

    /// `run service … --raw` (the flag in `args`), exit 0, as the bare result.
    fn raw_run(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("--raw output is JSON ({e}): {out}"));
        if v.get("result").is_some() {
            v["result"].clone()
        } else {
            v
        }
    }
}

/// One local-mode working directory, `work` in a temporary directory that also holds the
/// test's other files ([`LocalDir::path`]).
pub struct LocalDir {
    dir: TempDir,
    deadline: Duration,
}

impl LocalDir {
    /// A fresh temporary directory named from `prefix`; each run may take `deadline`.
    pub fn new(prefix: &str, deadline: Duration) -> Self {
        LocalDir {
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("temp dir"),
            deadline,
        }
    }

    /// The temporary directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The working directory of the CLI.
    pub fn work(&self) -> PathBuf {
        self.path("work")
    }

    /// Writes `text` to `name` in the temporary directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    }

    /// With `stdin` fed to the process (prompts read one line of a non-terminal stdin), `HOME`
    /// the temporary directory.
    pub fn with_stdin(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let work = self.work();
        with_stdin(
            args,
            &[
                ("HOME", self.root().as_os_str()),
                ("GATEWAY_APPLICATION_WORKING_DIR", work.as_os_str()),
            ],
            stdin,
        )
    }
}

impl Cli for LocalDir {
    fn cmd(&self, args: &[&str]) -> Autogate {
        in_work_dir(&self.work(), args)
    }

    fn deadline(&self) -> Duration {
        self.deadline
    }
}

/// One CLI user of a node: a client-mode working directory (where `login` keeps its key).
pub struct ClientDir {
    port: u16,
    work: PathBuf,
    deadline: Duration,
}

impl ClientDir {
    /// `name` in `root`, talking to the node on `port`; each run may take `deadline`.
    pub fn new(root: &Path, name: &str, port: u16, deadline: Duration) -> Self {
        ClientDir {
            port,
            work: root.join(name),
            deadline,
        }
    }

    /// The working directory.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// With `stdin` on standard input (`--password-stdin` reads its lines).
    pub fn with_stdin(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let port = self.port.to_string();
        with_stdin(
            args,
            &[
                ("HOME", self.work.as_os_str()),
                ("GATEWAY_APPLICATION_MODE", "client".as_ref()),
                ("GATEWAY_CLIENT_PORT", port.as_ref()),
                ("GATEWAY_APPLICATION_WORKING_DIR", self.work.as_os_str()),
            ],
            stdin,
        )
    }

    /// `login <user> --password-stdin` with `stdin`.
    pub fn login(&self, user: &str, stdin: &str) -> std::process::Output {
        self.with_stdin(&["login", user, "--password-stdin"], stdin)
    }
}

impl Cli for ClientDir {
    fn cmd(&self, args: &[&str]) -> Autogate {
        in_work_dir(&self.work, args)
            .env("GATEWAY_APPLICATION_MODE", "client")
            .env("GATEWAY_CLIENT_PORT", self.port.to_string())
    }

    fn deadline(&self) -> Duration {
        self.deadline
    }
}
