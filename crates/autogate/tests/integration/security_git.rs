//! Repository checkouts attacked through git and SSH, with the real binary, real git and a real
//! `sshd`:
//!
//! - a repository URL that git would read as an option (`--upload-pack=touch${IFS}<marker>;`)
//!   is refused, naming the `url` field, by the API, by `create repository` and by `db import`;
//!   one that reaches a checkout anyway (written straight into the store, as an older version
//!   could have) is refused there too — and the marker file the command would create never
//!   appears;
//! - an SSH repository on an `sshd` whose host key the cluster does not know is refused with an
//!   error naming `autogate hostkeys add`; after `hostkeys add` (and after `hostkeys scan`) the
//!   checkout works; once the server's key changes (an impersonator on the same address) it is
//!   refused again until the operator replaces the key — in local mode on the embedded store, and
//!   in client mode through a core node's API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autogate_testkit::auth::{admin_key, with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::{free_port, Autogate, Process};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::local::{Cli, ClientDir, LocalDir};
use crate::support::{call, git_repo};

const DEADLINE: Duration = Duration::from_secs(120);

/// One local working directory and its CLI.
fn local() -> LocalDir {
    LocalDir::new("autogate-secgit-", DEADLINE)
}

/// The URL of the reproduced attack: git runs `touch <marker>` as its upload-pack.
fn upload_pack_url(marker: &Path) -> String {
    format!("--upload-pack=touch${{IFS}}{};", marker.display())
}

#[test]
fn an_option_like_url_is_refused_by_the_cli_and_db_import() {
    let l = local();
    let marker = l.path("pwned");
    let url = upload_pack_url(&marker);

    let err = l
        .expect(
            &["create", "repository", "evil", &format!("--url={url}")],
            64,
        )
        .stderr;
    assert!(
        err.contains("url") && err.contains("option"),
        "the error names the field and why: {err}"
    );

    let file = l.path("import.yaml");
    std::fs::write(
        &file,
        format!("repositories:\n  - name: evil\n    url: '{url}'\n"),
    )
    .expect("import file");
    let err = l
        .expect(&["db", "import", &file.display().to_string()], 64)
        .stderr;
    assert!(err.contains("url") && err.contains("evil"), "{err}");
    // A reference git would read as an option is refused too.
    let err = l
        .expect(
            &[
                "create",
                "repository",
                "evil-ref",
                "--url",
                "https://git.example.invalid/r.git",
                "--reference=--output=/tmp/x",
            ],
            64,
        )
        .stderr;
    assert!(err.contains("reference"), "{err}");
    assert!(!l.ok(&["get", "repositories"]).contains("evil"));
    assert!(!marker.exists(), "the attack's command ran");
}

#[test]
fn an_option_like_url_already_in_the_store_is_refused_at_checkout() {
    let l = local();
    let marker = l.path("pwned");
    let src = git_repo(&l.path("src"), &[("run.sh", "echo hi\n")]);
    l.ok(&["create", "repository", "good", "--url", &src]);
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    l.ok(&[
        "create",
        "service",
        "executable",
        "exe",
        "--repository",
        "good",
        "--executable-object",
        "sh",
        "--filename",
        "run.sh",
    ]);
    // An older version stored any URL: put the attack straight into the repository's record.
    let url = upload_pack_url(&marker);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = autogate_store::open(autogate_store::StoreOptions::Local {
            path: l.path("work").join("gateway.db"),
        })
        .await
        .expect("the local store opens");
        let key = "/autogate/cluster_1/resources/repository/good";
        let mut doc: Value =
            serde_json::from_slice(&store.get(key).await.expect("get").expect("stored").value)
                .expect("json");
        doc["url"] = url.clone().into();
        store
            .put(key, serde_json::to_vec(&doc).expect("json"), None)
            .await
            .expect("put");
    });
    drop(rt);
    let err = l.expect(&["run", "service", "executable", "exe"], 1).stderr;
    assert!(
        err.contains("refused URL") && err.contains("option"),
        "the checkout names the refused URL: {err}"
    );
    assert!(!marker.exists(), "the attack's command ran");
}

#[test]
fn an_option_like_url_is_refused_by_the_api() {
    let port = free_port();
    let cmd = with_admin_password(
        Autogate::new(["server"])
            .name("core")
            .env("GATEWAY_SERVER_PORT", port.to_string()),
    );
    let marker = cmd.home().join("pwned");
    let proc = cmd.spawn();
    let key = admin_key(port);
    let addr = format!("127.0.0.1:{port}");
    let url = upload_pack_url(&marker);
    let (s, v) = call(
        &addr,
        &key,
        "POST",
        "/api/v1/repositories",
        Some(&json!({"name": "evil", "url": url})),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.dump()));
    assert_eq!(s, 422, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(msg.contains("url") && msg.contains("option"), "{v}");
    // And through the import route.
    let yaml = format!("repositories:\n  - name: evil\n    url: '{url}'\n");
    let (s, body) = autogate_testkit::auth::request(
        &addr,
        "POST",
        "/api/v1/db/import",
        Some(&key),
        Some(("application/yaml", yaml.as_bytes())),
    )
    .expect("import");
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("url"), "{body}");
    assert!(!marker.exists(), "the attack's command ran");
}

// --- SSH host keys --------------------------------------------------------------------------

/// A key pair minted with ssh-keygen: (private key file, public key line).
fn keypair(path: &Path) -> (PathBuf, String) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path.to_owned(), public.trim().to_owned())
}

/// `SHA256:…` of a public key file, as ssh-keygen prints it.
fn fingerprint(public_file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public_file)
        .output()
        .expect("ssh-keygen runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned()
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A real sshd on 127.0.0.1:`port` serving git through `git-shell` to one client key.
struct Sshd {
    child: Child,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, port: u16, host_key: &Path, client_public: &str) -> Sshd {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd is installed (scripts/deps.sh installs openssh-server)");
        let git_shell =
            autogate_exec::which("git-shell", &std::env::var("PATH").unwrap_or_default())
                .expect("git-shell is installed with git");
        // sshd refuses to start as root without its privilege separation directory, which the
        // Debian service creates at boot; a test machine may never have started the service.
        if user() == "root" {
            std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        }
        let auth = dir.join("authorized_keys");
        std::fs::write(
            &auth,
            format!(
                "command=\"{} -c \\\"$SSH_ORIGINAL_COMMAND\\\"\",no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty {client_public}\n",
                git_shell.display()
            ),
        )
        .expect("authorized_keys");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowUsers {}\n",
                host_key.display(),
                dir.join(format!("sshd-{port}.pid")).display(),
                auth.display(),
                user()
            ),
        )
        .expect("sshd_config");
        let log = dir.join(format!(
            "sshd-{}.log",
            host_key.file_name().unwrap_or_default().to_string_lossy()
        ));
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("sshd starts");
        let mut s = Sshd { child, log };
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("sshd exited ({st}): {}", s.log());
            }
            assert!(Instant::now() < end, "sshd not listening: {}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the SSH tests share: the server's directory, two host keys, the client key, the repo.
struct SshFixture {
    dir: TempDir,
    port: u16,
    key_a: PathBuf,
    key_b: PathBuf,
    client_private: String,
    client_public: String,
    url: String,
}

impl SshFixture {
    fn new() -> SshFixture {
        let dir = tempfile::Builder::new()
            .prefix("autogate-sshd-")
            .tempdir()
            .expect("temp dir");
        let (key_a, _) = keypair(&dir.path().join("host_a"));
        let (key_b, _) = keypair(&dir.path().join("host_b"));
        let (client, client_public) = keypair(&dir.path().join("client"));
        let client_private = std::fs::read_to_string(client).expect("client key");
        let repo = dir.path().join("repo");
        git_repo(&repo, &[("run.sh", "echo hello-over-ssh\n")]);
        let port = free_port();
        let url = format!("ssh://{}@127.0.0.1:{port}{}", user(), repo.display());
        SshFixture {
            dir,
            port,
            key_a,
            key_b,
            client_private,
            client_public,
            url,
        }
    }

    fn sshd(&self, host_key: &Path) -> Sshd {
        Sshd::start(self.dir.path(), self.port, host_key, &self.client_public)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn public(&self, key: &Path) -> (String, String) {
        let line = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
        let mut w = line.split_whitespace();
        (
            w.next().expect("type").to_owned(),
            w.next().expect("key").to_owned(),
        )
    }
}

fn assert_unknown(err: &str, host: &str) {
    assert!(
        err.contains(&format!("host key of {host} is not known"))
            && err.contains(&format!("autogate hostkeys add {host} ssh-ed25519"))
            && err.contains(&format!("autogate hostkeys scan {host}")),
        "the error says how to add the key: {err}"
    );
}

fn assert_changed(err: &str, host: &str, offered: &str) {
    assert!(
        err.contains(&format!("host key of {host} has changed"))
            && err.contains(&format!("the server offers ssh-ed25519 key {offered}"))
            && err.contains("--replace"),
        "the error says the key changed, and which key is offered now: {err}"
    );
}

#[test]
fn ssh_checkouts_trust_only_the_clusters_known_hosts_in_local_mode() {
    let f = SshFixture::new();
    let sshd = f.sshd(&f.key_a);
    let l = local();
    let host = f.host();
    // `--value=`: the key's first line starts with dashes.
    let value = format!("--value={}", f.client_private);
    l.ok(&["create", "secret", "deploy-key", &value]);
    l.ok(&[
        "create",
        "repository",
        "r",
        "--url",
        &f.url,
        "--private-key-name",
        "deploy-key",
    ]);
    l.ok(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    l.ok(&[
        "create",
        "service",
        "executable",
        "exe",
        "--repository",
        "r",
        "--executable-object",
        "sh",
        "--filename",
        "run.sh",
    ]);
    let run = ["run", "service", "executable", "exe"];

    // Unknown host: refused, saying how to add the key.
    let out = l.expect(&run, 1);
    assert_unknown(&out.stderr, &host);
    assert!(l
        .ok(&["hostkeys", "list"])
        .contains("No host keys are known"));

    // Added by hand from the server's public key file: the checkout works.
    let (ty, key) = f.public(&f.key_a);
    let out = l.ok(&["hostkeys", "add", &host, &ty, &key]);
    let fp_a = fingerprint(&f.key_a.with_extension("pub"));
    assert!(out.contains(&fp_a), "the fingerprint is shown: {out}");
    let out = l.ok(&run);
    assert!(out.contains("hello-over-ssh"), "{out}\n{}", sshd.log());
    let list = l.ok(&["hostkeys", "list"]);
    assert!(list.contains(&host) && list.contains(&fp_a), "{list}");

    // Another server on the same address (the key changed): refused.
    sshd.stop();
    let sshd = f.sshd(&f.key_b);
    let out = l.expect(&run, 1);
    assert_changed(
        &out.stderr,
        &host,
        &fingerprint(&f.key_b.with_extension("pub")),
    );
    // A scan does not silently take the new key either…
    let out = l.expect(&["hostkeys", "scan", &host], 1);
    assert!(out.stderr.contains("--replace"), "{}", out.stderr);
    // …and an add of another key of the same type neither.
    let (ty_b, key_b) = f.public(&f.key_b);
    let out = l.expect(&["hostkeys", "add", &host, &ty_b, &key_b], 1);
    assert!(out.stderr.contains("--replace"), "{}", out.stderr);
    assert!(l.expect(&run, 1).stderr.contains("has changed"));

    // The operator replaces it through a scan, and checks what the scan printed.
    let out = l.ok(&["hostkeys", "scan", &host, "--replace"]);
    let fp_b = fingerprint(&f.key_b.with_extension("pub"));
    assert!(out.contains(&fp_b) && out.contains(&fp_a), "{out}");
    let out = l.ok(&run);
    assert!(out.contains("hello-over-ssh"), "{out}\n{}", sshd.log());

    // Forgotten: refused again.
    l.ok(&["hostkeys", "delete", &host]);
    assert_unknown(&l.expect(&run, 1).stderr, &host);

    // Bad arguments are usage errors naming what is wrong; nothing is stored.
    let err = l
        .expect(&["hostkeys", "add", "*.example.com", &ty, &key], 64)
        .stderr;
    assert!(err.contains("host"), "{err}");
    let err = l
        .expect(&["hostkeys", "add", &host, "ssh-rsa", &key], 64)
        .stderr;
    assert!(err.contains("ssh-rsa"), "{err}");
    let err = l.expect(&["hostkeys", "add", &host, &ty, &fp_a], 64).stderr;
    assert!(err.contains("key"), "{err}");
    drop(sshd);
}

#[test]
fn ssh_checkouts_trust_only_the_clusters_known_hosts_through_the_api() {
    let f = SshFixture::new();
    let sshd = f.sshd(&f.key_a);
    let host = f.host();
    let port = free_port();
    let cmd = with_admin_password(
        Autogate::new(["server"])
            .name("core")
            .env("GATEWAY_SERVER_PORT", port.to_string()),
    );
    let key_file = cmd.home().join("secrets.key");
    std::fs::write(&key_file, "0123456789abcdef0123456789abcdef\n").expect("key file");
    let proc: Process = cmd
        .env(
            "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
            key_file.display().to_string(),
        )
        .spawn();
    let key = admin_key(port);
    let addr = format!("127.0.0.1:{port}");
    let api = |method: &str, path: &str, body: Option<Value>| {
        call(&addr, &key, method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", proc.dump()))
    };
    for (path, body) in [
        (
            "/api/v1/secrets",
            json!({"name": "deploy-key", "value": f.client_private}),
        ),
        (
            "/api/v1/repositories",
            json!({"name": "r", "url": f.url, "private-key-name": "deploy-key"}),
        ),
        (
            "/api/v1/executable-objects",
            json!({"name": "sh", "exec-command": "/bin/sh"}),
        ),
        (
            "/api/v1/services",
            json!({"name": "exe", "type": "executable", "repository": "r",
                   "executable-object": "sh", "filename": "run.sh"}),
        ),
    ] {
        let (s, v) = api("POST", path, Some(body));
        assert_eq!(s, 201, "{path}: {v}");
    }
    let run = || api("POST", "/api/v1/services/exe/run", Some(json!({})));

    let (s, v) = run();
    assert_ne!(s, 200, "{v}");
    assert_unknown(v["error"].as_str().unwrap_or_default(), &host);

    // A bad host is refused naming the field.
    let (ty, k) = f.public(&f.key_a);
    let (s, v) = api(
        "POST",
        "/api/v1/hostkeys",
        Some(json!({"host": "evil\nhost", "type": ty, "key": k})),
    );
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("host"),
        "{v}"
    );

    // The operator adds the key with the CLI in client mode, logged in to the node.
    let cli = ClientDir::new(f.dir.path(), "cli", port, DEADLINE);
    let out = cli.login("admin", &format!("{ADMIN_PASSWORD}\n"));
    assert!(out.status.success(), "{out:?}");
    let client = |args: &[&str], code: i32| cli.expect(args, code);
    let out = client(&["hostkeys", "add", &host, &ty, &k], 0).stdout;
    let fp_a = fingerprint(&f.key_a.with_extension("pub"));
    assert!(out.contains(&fp_a), "{out}");
    let (s, v) = run();
    assert_eq!(s, 200, "{v}\n{}", sshd.log());
    assert!(v.to_string().contains("hello-over-ssh"), "{v}");

    let (s, v) = api("GET", "/api/v1/hostkeys", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["hostkeys"][0]["fingerprint"], fp_a.as_str(), "{v}");
    assert!(client(&["hostkeys", "list"], 0).stdout.contains(&fp_a));

    // The key changes: refused; the scan without replace conflicts; with replace it is trusted.
    sshd.stop();
    let sshd = f.sshd(&f.key_b);
    let (s, v) = run();
    assert_ne!(s, 200, "{v}");
    assert_changed(
        v["error"].as_str().unwrap_or_default(),
        &host,
        &fingerprint(&f.key_b.with_extension("pub")),
    );
    let (s, v) = api(
        "POST",
        "/api/v1/hostkeys/scan",
        Some(json!({"hosts": [host]})),
    );
    assert_eq!(s, 409, "{v}");
    let (s, v) = api(
        "POST",
        "/api/v1/hostkeys/scan",
        Some(json!({"hosts": [host], "replace": true})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = run();
    assert_eq!(s, 200, "{v}\n{}", sshd.log());

    client(&["hostkeys", "delete", &host], 0);
    let (s, v) = api("GET", "/api/v1/hostkeys", None);
    assert_eq!(
        (s, v["hostkeys"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    let (s, v) = run();
    assert_ne!(s, 200, "{v}");
    assert_unknown(v["error"].as_str().unwrap_or_default(), &host);
}

/// Runners check out through the same cluster known hosts as core nodes: a core node with
/// distributed execution on a real etcd hands the run to a runner (with its own
/// `runtime_data_dir`), which refuses the unknown host, then checks out once the key is added
/// through the core node, then refuses the changed key.
#[test]
fn runners_check_host_keys_against_the_clusters_known_hosts() {
    let f = SshFixture::new();
    let sshd = f.sshd(&f.key_a);
    let host = f.host();
    let etcd = autogate_testkit::etcd::EtcdServer::start();
    let key_file = f.dir.path().join("secrets.key");
    std::fs::write(&key_file, "0123456789abcdef0123456789abcdef\n").expect("key file");
    let port = free_port();
    let core = with_admin_password(
        Autogate::new(["server"])
            .name("core")
            .env("GATEWAY_SERVER_PORT", port.to_string())
            .env("GATEWAY_STORE_BACKEND", "etcd")
            .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
            .env("GATEWAY_SERVER_DISTRIBUTED_EXECUTION", "true")
            .env("GATEWAY_CONNECT_ENABLED", "false")
            .env(
                "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
                key_file.display().to_string(),
            ),
    )
    .spawn();
    let key = admin_key(port);
    let addr = format!("127.0.0.1:{port}");
    let api = |method: &str, path: &str, body: Option<Value>| {
        call(&addr, &key, method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", core.dump()))
    };
    let runner = Autogate::new(["runner"])
        .name("runner")
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .env("GATEWAY_RUNNER_LEASE_TTL", "2s")
        .env(
            "GATEWAY_RUNNER_RUNTIME_DATA_DIR",
            f.dir.path().join("runner-data").display().to_string(),
        )
        .env(
            "GATEWAY_SECRETS_ENCRYPT_KEY_FILE",
            key_file.display().to_string(),
        )
        .spawn();
    let runner_id = autogate_testkit::poll_until("the runner registers", DEADLINE, || {
        let (s, v) = api("GET", "/api/v1/runners", None);
        (s == 200)
            .then(|| v["runners"][0]["node_id"].as_str().map(str::to_owned))
            .flatten()
    });
    for (path, body) in [
        (
            "/api/v1/secrets",
            json!({"name": "deploy-key", "value": f.client_private}),
        ),
        (
            "/api/v1/repositories",
            json!({"name": "r", "url": f.url, "private-key-name": "deploy-key"}),
        ),
        (
            "/api/v1/executable-objects",
            json!({"name": "sh", "exec-command": "/bin/sh"}),
        ),
        (
            "/api/v1/services",
            json!({"name": "exe", "type": "executable", "repository": "r",
                   "executable-object": "sh", "filename": "run.sh"}),
        ),
    ] {
        let (s, v) = api("POST", path, Some(body));
        assert_eq!(s, 201, "{path}: {v}");
    }
    let run = || api("POST", "/api/v1/services/exe/run", Some(json!({})));

    let (s, v) = run();
    assert_ne!(s, 200, "{v}\n{}", runner.dump());
    assert_unknown(&v.to_string(), &host);

    let (ty, k) = f.public(&f.key_a);
    let (s, v) = api(
        "POST",
        "/api/v1/hostkeys",
        Some(json!({"host": host, "type": ty, "key": k})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = run();
    assert_eq!(s, 200, "{v}\n{}\n{}", runner.dump(), sshd.log());
    assert!(v.to_string().contains("hello-over-ssh"), "{v}");
    let (_, job) = api(
        "GET",
        &format!("/api/v1/jobs/{}", v["job_id"].as_str().expect("job_id")),
        None,
    );
    assert_eq!(
        job["runner"],
        runner_id.as_str(),
        "it ran on the runner: {job}"
    );

    sshd.stop();
    let _sshd = f.sshd(&f.key_b);
    let (s, v) = run();
    assert_ne!(s, 200, "{v}");
    assert!(
        v.to_string()
            .contains(&format!("host key of {host} has changed")),
        "{v}"
    );
}
