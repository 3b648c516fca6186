//! The manager link through a real HTTP proxy, as a site behind one runs it: Debian's
//! `tinyproxy` (installed by `scripts/deps.sh`) on a port of the test's own, `autogate manager`
//! and `autogate server` as real processes with mutual TLS.
//!
//! On loopback the node could reach the manager directly, so these tests prove the tunnel is
//! used by what the proxy logs (the node's `CONNECT` to the manager's port) and by the link
//! following the proxy: down when it stops, up again when it returns. The proxy's refusals
//! (407 without or with wrong credentials) are logged by the node with the proxy's status
//! line, retried, and never show the password.
//!
//! Git reads the node's proxy variables too: a checkout from an http:// remote (a bare
//! repository served the "dumb" way by `python3 -m http.server`) goes through the proxy, as
//! its log shows. pip gets the same variables; no test reaches a package index through the
//! proxy (the tests run offline, with local wheel directories that use no network).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use autogate_testkit::scenario::{core_node, Manager, Pki, START};
use autogate_testkit::{poll_until, Autogate};

use crate::support::{expect_code, git_repo};

const TINYPROXY: &str = "/usr/bin/tinyproxy";

/// One `tinyproxy -d` in the foreground, killed on drop; its log is a file of the test's.
struct Tinyproxy {
    child: Child,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
}

impl Tinyproxy {
    /// A proxy on `port` (loopback only) that tunnels to `connect_port` only; with
    /// `auth = Some((user, password))` it demands basic authentication.
    fn start(dir: &Path, port: u16, connect_port: u16, auth: Option<(&str, &str)>) -> Tinyproxy {
        assert!(
            Path::new(TINYPROXY).is_file(),
            "{TINYPROXY} is missing: run scripts/deps.sh (it installs tinyproxy)"
        );
        let conf = dir.join(format!("tinyproxy-{port}.conf"));
        let log = dir.join(format!("tinyproxy-{port}.log"));
        let mut text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nLogFile \"{}\"\nLogLevel Info\n\
             MaxClients 20\nAllow 127.0.0.1\nConnectPort {connect_port}\n",
            log.display()
        );
        if let Some((user, password)) = auth {
            text.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        Tinyproxy::spawn(port, conf, log)
    }

    fn spawn(port: u16, conf: PathBuf, log: PathBuf) -> Tinyproxy {
        let child = Command::new(TINYPROXY)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {TINYPROXY}: {e}"));
        let mut proxy = Tinyproxy {
            child,
            port,
            conf,
            log,
        };
        poll_until("tinyproxy to listen", START, || {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("tinyproxy exited with {status}:\n{}", proxy.logs());
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        proxy
    }

    /// Stop it (SIGKILL: every tunnel drops at once, as when a proxy dies).
    fn stop(mut self) -> (u16, PathBuf, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.port, self.conf.clone(), self.log.clone())
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn link_goes_through_the_proxy_and_follows_it_down_and_up() {
    let pki = Pki::new(&["core-1"]);
    let data = tempfile::tempdir().unwrap();
    let mport = autogate_testkit::free_port();
    let m = Manager::start(&pki, mport, data.path());
    m.register(&pki, "cluster_1", &["core-1"]);
    let pport = autogate_testkit::free_port();
    let proxy = Tinyproxy::start(data.path(), pport, mport, None);

    let (cmd, _port) = core_node(&pki, "core-1", mport);
    let core = cmd
        .env(
            "GATEWAY_CONNECT_PROXY_URL",
            format!("http://127.0.0.1:{pport}"),
        )
        .spawn();
    core.wait_for_line(
        &format!(
            "INF manager link through proxy http://127.0.0.1:{pport} (from connect.proxy_url)"
        ),
        START,
    );
    let through = format!(
        "INF connected to commander at 127.0.0.1:{mport} through proxy http://127.0.0.1:{pport}"
    );
    core.wait_for_line(&through, START);
    // The proxy saw the node's tunnel to the manager's port.
    let request = format!("CONNECT 127.0.0.1:{mport} HTTP/1.1");
    poll_until("the proxy to log the CONNECT", START, || {
        proxy.logs().contains(&request).then_some(())
    });
    poll_until("the manager to show the node connected", START, || {
        (m.show(&pki, "cluster_1")["connected"] == true).then_some(())
    });

    // The proxy dies: the link goes down with it, and every attempt fails at the proxy.
    let (pport, conf, log) = proxy.stop();
    core.wait_for_line(
        &format!("connection to commander at 127.0.0.1:{mport} lost"),
        START,
    );
    let refused = format!("failed: proxy http://127.0.0.1:{pport}: TCP connect:");
    poll_until("attempts failing at the stopped proxy", START, || {
        (core.logs().matches(&refused).count() >= 2).then_some(())
    });
    poll_until("the manager to show the node gone", START, || {
        (m.show(&pki, "cluster_1")["connected"] == false).then_some(())
    });

    // It returns on the same port: the link comes back through it.
    let before = core.logs().matches(&through).count();
    let proxy = Tinyproxy::spawn(pport, conf, log);
    poll_until("the link back through the returned proxy", START, || {
        (core.logs().matches(&through).count() > before).then_some(())
    });
    poll_until(
        "the manager to show the node connected again",
        START,
        || (m.show(&pki, "cluster_1")["connected"] == true).then_some(()),
    );
    assert!(
        proxy.logs().matches(&request).count() >= 2,
        "{}",
        proxy.logs()
    );
}

#[test]
fn proxy_refusals_are_logged_with_their_status_line_and_retried() {
    let pki = Pki::new(&["core-1"]);
    let data = tempfile::tempdir().unwrap();
    let mport = autogate_testkit::free_port();
    let m = Manager::start(&pki, mport, data.path());
    m.register(&pki, "cluster_1", &["core-1"]);
    let pport = autogate_testkit::free_port();
    let proxy = Tinyproxy::start(data.path(), pport, mport, Some(("gw", "right-pass-7")));
    let url = format!("http://127.0.0.1:{pport}");
    let refused =
        |line: &str| format!("failed: proxy {url} refused CONNECT 127.0.0.1:{mport}: {line}");

    // No credentials, then wrong ones (in the URL, as HTTPS_PROXY often carries them): the
    // proxy's status line, attempt after attempt, and never the password. tinyproxy answers
    // wrong credentials with 401 rather than 407: the line is shown as the proxy sent it.
    for (name, proxy_url, status) in [
        (
            "no-credentials",
            url.clone(),
            refused("HTTP/1.0 407 Proxy Authentication Required"),
        ),
        (
            "wrong-credentials",
            format!("http://gw:wrong-pass-3@127.0.0.1:{pport}"),
            refused("HTTP/1.0 401 Unauthorized"),
        ),
    ] {
        let (cmd, _port) = core_node(&pki, "core-1", mport);
        let mut core = cmd
            .name(name)
            .env("GATEWAY_CONNECT_PROXY_URL", proxy_url)
            .spawn();
        poll_until("repeated 407 refusals", START, || {
            (core.logs().matches(&status).count() >= 3).then_some(())
        });
        let logs = core.logs();
        assert!(!logs.contains("INF connected to commander"), "{logs}");
        assert!(!logs.contains("wrong-pass-3"), "{logs}");
        assert!(
            logs.contains(&format!("manager link through proxy {url} ")),
            "{logs}"
        );
        core.kill();
    }

    // Right credentials, from the keys: connected through the proxy.
    let (cmd, _port) = core_node(&pki, "core-1", mport);
    let core = cmd
        .name("right-credentials")
        .env("GATEWAY_CONNECT_PROXY_URL", url.clone())
        .env("GATEWAY_CONNECT_PROXY_USERNAME", "gw")
        .env("GATEWAY_CONNECT_PROXY_PASSWORD", "right-pass-7")
        .spawn();
    core.wait_for_line(
        &format!("INF connected to commander at 127.0.0.1:{mport} through proxy {url}"),
        START,
    );
    poll_until("the manager to show the node connected", START, || {
        (m.show(&pki, "cluster_1")["connected"] == true).then_some(())
    });
    assert!(!core.logs().contains("right-pass-7"), "{}", core.logs());
    assert!(proxy
        .logs()
        .contains(&format!("CONNECT 127.0.0.1:{mport} HTTP/1.1")));
}

#[test]
fn an_unusable_proxy_setting_is_refused_at_start_without_its_password() {
    let pki = Pki::new(&["core-1"]);
    for (value, names) in [
        ("https://gw:s3cret-9@proxy.example:3128", "https:// proxy"),
        (
            "socks5://gw:s3cret-9@proxy.example:1080",
            "expected an http:// or https:// URL",
        ),
        (
            "http://gw:s3cret-9@proxy.example:99999",
            "port must be 1-65535",
        ),
    ] {
        let (cmd, _port) = core_node(&pki, "core-1", 1);
        let out = cmd.env("GATEWAY_CONNECT_PROXY_URL", value).output(START);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert_eq!(out.status.code(), Some(64), "{value}: {text}");
        assert!(text.contains(names), "{value}: {text}");
        assert!(text.contains("connect.proxy_url"), "{value}: {text}");
        assert!(!text.contains("s3cret-9"), "{value}: {text}");
    }
}

/// `python3 -m http.server` on loopback, killed on drop.
struct StaticServer(Child);

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn git_checkouts_from_http_remotes_go_through_the_nodes_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let src = git_repo(
        &dir.path().join("src"),
        &[("run.sh", "echo fetched-through-the-proxy\n")],
    );
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let git = |args: &[&str]| {
        let st = Command::new("git")
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    let bare = srv.join("repo.git");
    git(&["clone", "-q", "--bare", &src, bare.to_str().unwrap()]);
    git(&["-C", bare.to_str().unwrap(), "update-server-info"]);
    let hport = autogate_testkit::free_port();
    let server = StaticServer(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &hport.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&srv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    poll_until("the http server to listen", START, || {
        TcpStream::connect(("127.0.0.1", hport)).ok().map(|_| ())
    });
    let pport = autogate_testkit::free_port();
    let proxy = Tinyproxy::start(dir.path(), pport, hport, None);

    let work = dir.path().join("work");
    let run = |args: &[&str]| {
        let out = Autogate::new(args.iter().copied())
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                work.display().to_string(),
            )
            .env("http_proxy", format!("http://127.0.0.1:{pport}"))
            .output(START);
        expect_code(out, args, 0).stdout
    };
    let url = format!("http://127.0.0.1:{hport}/repo.git");
    run(&["create", "repository", "repo", "--url", &url]);
    run(&[
        "create",
        "executable-object",
        "sh",
        "--exec-command",
        "/bin/sh",
    ]);
    run(&[
        "create",
        "service",
        "executable",
        "exe",
        "--repository",
        "repo",
        "--executable-object",
        "sh",
        "--filename",
        "run.sh",
    ]);
    let out = run(&["run", "service", "executable", "exe"]);
    assert!(out.contains("fetched-through-the-proxy"), "{out}");
    let request = format!("GET http://127.0.0.1:{hport}/repo.git/");
    assert!(proxy.logs().contains(&request), "{}", proxy.logs());
    drop(server);
}

#[test]
fn https_proxy_from_the_environment_spares_a_manager_on_this_machine() {
    let pki = Pki::new(&["core-1"]);
    let data = tempfile::tempdir().unwrap();
    let mport = autogate_testkit::free_port();
    let m = Manager::start(&pki, mport, data.path());
    m.register(&pki, "cluster_1", &["core-1"]);
    // A proxy nobody listens on: were it used, the link could never come up.
    let dead = autogate_testkit::free_port();
    let (cmd, _port) = core_node(&pki, "core-1", mport);
    let core = cmd
        .env(
            "HTTPS_PROXY",
            format!("http://gw:env-s3cret@127.0.0.1:{dead}"),
        )
        .spawn();
    core.wait_for_line(
        &format!(
            "INF manager link through proxy http://127.0.0.1:{dead} (from environment variable HTTPS_PROXY), except to 127.0.0.1:{mport} (NO_PROXY, or a local address)"
        ),
        START,
    );
    core.wait_for_line(
        &format!("INF connected to commander at 127.0.0.1:{mport}"),
        START,
    );
    let direct = core.logs();
    assert!(
        !direct
            .lines()
            .any(|l| l.contains("connected to commander") && l.contains("through proxy")),
        "{direct}"
    );
    assert!(!core.logs().contains("env-s3cret"), "{}", core.logs());
}
