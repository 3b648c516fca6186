//! The manager's web page in a real browser, against real processes: a manager, etcd and two HA
//! core nodes with their own certificates. The operator signs in, adds the cluster with its
//! nodes' certificates (after a bad upload is refused with the server's reason), watches both
//! core nodes appear, and sees the page switch the active node without a reload when the active
//! node's process is killed. When the manager lists services, a service is run from the form the
//! page builds from its decorator: inputs out of bounds or missing are marked beside their field
//! and not sent, an input the gateway refuses is shown as `field: message`, and the output is read
//! back from the page. Then the getting-started path: a service created from the CLI while the
//! page is open is run from the page, and its inputs and result survive another service being
//! created and the page refreshing. Last, the manager process is killed with the page open: the
//! page says since when it has not heard from the manager and marks the states it shows as stale,
//! and returns to live once the manager is back.
//!
//! A second test follows a node that goes away: two named core nodes (their certificates' CN),
//! the standby killed with `kill -9` shows as *lost* by its name with when it was last seen,
//! comes back under a new id and the same name as *back*, then stops cleanly and shows as
//! *stopped* until the operator forgets it.
//!
//! Screenshots of every run land in `target/screenshots/manager-page-*.png` (before and after
//! the fail-over, the timeline, the service run, the manager outage, a lost and a returned
//! node). Without Chromium or chromedriver the test fails and says to run `make deps`.

use std::path::Path;
use std::time::{Duration, Instant};

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{node_id, Manager, Pki, START};
use autogate_testkit::webdriver::{self, Browser};
use autogate_testkit::{free_port, poll_until, Autogate};
use serde_json::{json, Value};

use crate::support::{ha_core_node, wait_connected};

/// How long a page condition that needs no process to start may take.
const PAGE: Duration = Duration::from_secs(20);
/// How soon a change the manager saw must show on the open page.
const LIVE: Duration = Duration::from_secs(2);
/// The service catalog may arrive after the session (and the page re-reads it at the latest on
/// its periodic refresh).
const CATALOG: Duration = Duration::from_secs(40);

const CLUSTER: &str = "cluster_1";

/// A blocking HTTPS client for the manager that trusts the test CA.
struct Https {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

impl Https {
    fn new(pki: &Pki, port: u16) -> Https {
        let ca = std::fs::read(pki.path("ca.pem")).expect("ca.pem");
        let client = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Https {
            rt,
            client,
            base: format!("https://127.0.0.1:{port}"),
        }
    }

    /// GET `path`: status, headers, body.
    fn get(&self, path: &str, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
        self.rt.block_on(async {
            let mut req = self.client.get(format!("{}{path}", self.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            (status, headers, resp.text().await.unwrap_or_default())
        })
    }

    /// PATCH `path` with a JSON body: the status.
    fn patch(&self, path: &str, token: &str, body: &Value) -> u16 {
        self.rt.block_on(async {
            self.client
                .patch(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(body)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        })
    }

    /// Status and headers of the event stream (the body never ends, so it is not read).
    fn events_status(&self, query: &str) -> (u16, String) {
        self.rt.block_on(async {
            let resp = self
                .client
                .get(format!("{}/api/v1/events{query}", self.base))
                .send()
                .await
                .expect("request");
            let ctype = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (resp.status().as_u16(), ctype)
        })
    }
}

/// The headers and probes a browser and an orchestrator rely on.
fn check_http_surface(api: &Https, token: &str) {
    let (status, h, body) = api.get("/", None);
    assert_eq!(status, 200, "{body}");
    let header = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert!(header("content-type").starts_with("text/html"));
    assert!(body.contains("/ui/app.js"), "{body}");
    let (status, h, _) = api.get("/ui/app.js", None);
    assert_eq!(status, 200);
    assert_eq!(h["x-content-type-options"], "nosniff");

    // The page's data needs the token; its event stream a ticket (the token never goes in a
    // URL, not even the right one).
    assert_eq!(api.get("/api/v1/clusters", None).0, 401);
    assert_eq!(api.events_status("").0, 401);
    assert_eq!(api.events_status("?ticket=wrong").0, 401);
    assert_eq!(api.events_status(&format!("?token={token}")).0, 401);

    // Probes: alive, and ready once the registry is loaded (it is before the port opens).
    assert_eq!(api.get("/healthz", None).0, 200);
    let (status, _, body) = api.get("/readyz", None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["clusters"], 0, "{v}");
}

/// A PEM file that is not a certificate, as an operator might pick by mistake.
fn write_bad_pem(dir: &Path) -> String {
    let p = dir.join("not-a-cert.pem");
    std::fs::write(
        &p,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    p.display().to_string()
}

/// The decorator, executable and service the test runs from the page, imported into the
/// cluster's store before the core nodes start.
const RESOURCES: &str = r#"
decorators:
  - name: echo-inputs
    schema:
      type: object
      properties:
        device: { type: string, description: "Device to greet", pattern: "^[a-z][a-z0-9-]*$" }
        count: { type: integer, minimum: 1, maximum: 5 }
        verbose: { type: boolean }
        mode: { type: string, enum: [fast, safe] }
        targets: { type: array, items: { type: string } }
      required: [device, count]
      additionalProperties: false
executable-objects:
  - name: echo
    exec-command: /bin/echo
services:
  - name: echo-inputs
    description: Prints its inputs
    tags: [demo]
    type: executable
    executable-object: echo
    arg-format: "--{{.Key}}={{.Value}}"
    decorator: echo-inputs
"#;

fn import_resources(etcd: &EtcdServer) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = autogate_store::open(autogate_store::StoreOptions::Etcd(
            autogate_store::EtcdOptions::new([etcd.endpoint()]),
        ))
        .await
        .expect("etcd");
        autogate_resources::Resources::new(store, CLUSTER)
            .import(RESOURCES, autogate_resources::ImportMode::default())
            .await
            .expect("import the test service");
    });
}

/// What is left of `budget` counted from `since`.
fn left(since: Instant, budget: Duration) -> Duration {
    (since + budget).saturating_duration_since(Instant::now())
}

/// Console entries that mean the page itself failed (not the expected 401s of a refused
/// sign-in or a dropped event stream).
fn script_errors(b: &Browser) -> Vec<String> {
    b.console()
        .into_iter()
        .filter(|l| l.starts_with("SEVERE"))
        .filter(|l| !l.contains("Failed to load resource") && !l.contains("EventSource"))
        .collect()
}

#[test]
fn operator_adds_the_cluster_and_watches_a_failover_live() {
    // Before anything starts: a missing browser is a setup problem to fix, not a skip.
    webdriver::require_tools();
    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let manager = Manager::start(&pki, free_port(), data.path());
    let token = std::fs::read_to_string(data.path().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_owned();
    let api = Https::new(&pki, manager.port);
    check_http_surface(&api, &token);
    // Whether this manager lists services (the services endpoints are newer than the page).
    let services = {
        let (status, _, body) = api.get(
            &format!("/api/v1/clusters/{CLUSTER}/services"),
            Some(&token),
        );
        !(status == 404 && body.contains("no such API endpoint"))
    };
    if services {
        import_resources(&etcd);
    } else {
        eprintln!("note: this manager has no services endpoint; the service run is not exercised");
    }

    let b = Browser::start();
    let base = format!("https://127.0.0.1:{}", manager.port);
    b.goto(&format!("{base}/"));

    // Sign in: a wrong token is refused with the server's word, the right one is accepted.
    b.wait_for_text("#signin", "Admin token", PAGE);
    b.type_into("#token", "not-the-admin-token");
    b.click("#signin-form button[type=submit]");
    b.wait_for_text("#signin-error", "invalid admin token", PAGE);
    b.clear("#token");
    b.type_into("#token", &token);
    b.click("#signin-form button[type=submit]");
    b.wait_for_text("#live", "live", PAGE);
    b.wait_for_text("#view", "No cluster is registered yet", PAGE);
    // The manager's replicas: one, the one this page talks to, on the local store.
    b.wait_for_text("#replicas", "(this page)", PAGE);
    b.wait_for_text("#manager-store", "Store: local", PAGE);
    let rows: Value = b.execute(
        "return document.querySelectorAll('#replicas tbody tr').length;",
        vec![],
    );
    assert_eq!(rows, json!(1), "one replica row");
    let kept: Value = b.execute(
        "return sessionStorage.getItem('autogate.manager.token') === arguments[0];",
        vec![json!(token)],
    );
    assert_eq!(kept, json!(true), "the token is kept in sessionStorage");

    // Add the cluster: first with a file that is not a certificate (refused, nothing created,
    // the message names the file), then with both core nodes' certificates.
    let bad = write_bad_pem(data.path());
    b.type_into("#new-id", CLUSTER);
    b.type_into("#new-certs", &bad);
    b.click("#add-cluster button[type=submit]");
    let err = b.wait_for_text(
        "#add-cluster-error",
        "certificates[0] (not-a-cert.pem): ",
        PAGE,
    );
    eprintln!("bad upload refused: {err}");
    assert_eq!(
        api.get(&format!("/api/v1/clusters/{CLUSTER}"), Some(&token))
            .0,
        404
    );
    b.execute("document.getElementById('new-certs').value = '';", vec![]);
    b.type_into(
        "#new-certs",
        &format!("{}\n{}", pki.path("core-1.pem"), pki.path("core-2.pem")),
    );
    b.click("#add-cluster button[type=submit]");
    b.wait_for_text(
        "#add-cluster-ok",
        &format!("Added {CLUSTER} with 2 certificate(s)"),
        PAGE,
    );
    let row = format!("#clusters tr[data-cluster-id='{CLUSTER}']");
    b.wait_until("the new cluster, not connected", PAGE, || {
        b.find(&format!("{row} .badge.disconnected"))
    });

    // The first core node connects: the list shows it without a reload, within LIVE.
    let (cmd, p1) = ha_core_node(&pki, "core-1", manager.port, &etcd.endpoint());
    let mut active = cmd.name("core-1").spawn();
    let connected = wait_connected(&active);
    b.wait_until(
        "the cluster connected on the page",
        left(connected.at, LIVE),
        || b.find(&format!("{row} .badge.connected")),
    );
    let id1 = node_id(p1);
    b.wait_for_text(&format!("{row} .active-node"), &id1, PAGE);

    // The cluster's page: one gateway, its core nodes, each node's own certificate.
    b.click(&format!("{row} a.cluster-link"));
    b.wait_for_text("#active-node", &id1, PAGE);
    let (cmd, p2) = ha_core_node(&pki, "core-2", manager.port, &etcd.endpoint());
    let standby = cmd.name("core-2").spawn();
    let id2 = node_id(p2);
    standby.wait_for_line("is not the active node", START);
    // The node list reaches the manager with the active node's next nodes.update; from the
    // moment the manager's API shows it, the page must follow within LIVE.
    let seen = poll_until("the manager to list the standby", START, || {
        let (_, _, body) = api.get(&format!("/api/v1/clusters/{CLUSTER}"), Some(&token));
        body.contains(&id2).then(Instant::now)
    });
    let standby_row = format!("#core-nodes tr[data-node-id='{id2}'][data-role='standby']");
    b.wait_until("the standby on the page", left(seen, LIVE), || {
        b.find(&standby_row)
    });
    b.wait_for_text(
        &format!("#core-nodes tr[data-node-id='{id1}'][data-role='active']"),
        "active",
        PAGE,
    );
    let certs = b.wait_for_text("#certificates", "CN=core-2", PAGE);
    assert!(certs.contains("CN=core-1"), "{certs}");
    let fp1 = autogate_tls::fingerprint_sha256(
        &autogate_tls::parse_pem_certs(
            &std::fs::read_to_string(pki.path("core-1.pem")).expect("core-1.pem"),
        )
        .expect("PEM")[0],
    );
    b.wait_for_text(&format!("tr.cert[data-fingerprint='{fp1}']"), &id1, PAGE);
    assert!(
        b.text(&format!("tr.cert[data-fingerprint='{fp1}']"))
            .unwrap_or_default()
            .contains(&fp1),
        "the fingerprint is shown"
    );

    // A standby proves a crashed active dead quickly once it has checked the active's
    // address; wait for that so the fail-over takes well under a second.
    poll_until("the standby to verify the active's address", START, || {
        let (_, body) = autogate_testkit::auth::authed_get(p2, "/api/v1/ha/status")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["crash_probe"]["verified"] == true).then_some(())
    });
    // Marks this document: a reload would lose the mark.
    b.execute("window.__sameDocument = 'before-failover';", vec![]);
    let before = b.screenshot("manager-page-before-failover");

    // Kill the active node's process. The standby takes over; the page follows by itself.
    active.kill();
    let took_over = wait_connected(&standby);
    b.wait_for_text("#active-node", &id2, left(took_over.at, LIVE));
    let shown = Instant::now();
    b.wait_for_text(
        &format!("#core-nodes tr[data-node-id='{id2}'][data-role='active']"),
        "active",
        PAGE,
    );
    // Named by the nodes' names (their certificates' CN), with the ids beside them.
    let failover = b.wait_for_text(
        "#timeline",
        &format!("fail-over core-1 ({id1}) → core-2 ({id2}): gap"),
        PAGE,
    );
    let line = failover
        .lines()
        .find(|l| l.starts_with("fail-over"))
        .unwrap_or_default()
        .to_owned();
    assert!(line.ends_with(" ms"), "{line}");
    let same: Value = b.execute("return window.__sameDocument || null;", vec![]);
    assert_eq!(same, json!("before-failover"), "the page was not reloaded");
    let after = b.screenshot("manager-page-after-failover");
    b.execute(
        "document.getElementById('sessions').scrollIntoView();",
        vec![],
    );
    let timeline = b.screenshot("manager-page-after-failover-timeline");
    eprintln!(
        "page showed the new active node {:?} after the standby connected; timeline: {line}",
        shown.saturating_duration_since(took_over.at)
    );
    eprintln!(
        "screenshots: {} {} {}",
        before.display(),
        after.display(),
        timeline.display()
    );

    if services {
        run_service_from_the_page(&b);
        guide_service_survives_catalog_changes(&b, &api, &token, p2);
        read_only_refuses_runs(&b);
    }
    let errors = script_errors(&b);
    assert!(errors.is_empty(), "script errors on the page: {errors:#?}");
    // The event stream took the token in its URL: it must not reach the log.
    let logs = manager.proc.logs();
    assert!(
        !logs.contains(&token),
        "the admin token is in the manager's log"
    );

    // The manager goes away with the page open: the page must not keep looking live.
    let port = manager.port;
    let mut manager = manager;
    manager.proc.kill();
    let banner = b.wait_for_text("#stale", "The manager is unreachable since ", PAGE);
    eprintln!("manager down: {banner}");
    assert!(
        banner.contains(" UTC; states below are as of then"),
        "{banner}"
    );
    for what in ["connected", "which node is active", "roles"] {
        assert!(
            banner.contains(what),
            "the banner says {what} is unknown: {banner}"
        );
    }
    assert!(
        b.find("body.stale #gateway-facts .badge.state.connected")
            .is_some(),
        "the cluster's connection is marked stale"
    );
    assert!(
        b.find(&format!(
            "body.stale #core-nodes tr[data-node-id='{id2}'] .badge.state"
        ))
        .is_some(),
        "the nodes' roles are marked stale"
    );
    let live = b.text("#live").unwrap_or_default();
    assert!(live.starts_with("offline since "), "{live}");
    b.execute("window.scrollTo(0, 0);", vec![]);
    b.screenshot("manager-page-manager-down");
    drop(manager);

    // Back on the same port and data: the banner goes, the page is live and current again.
    let manager = Manager::start(&pki, port, data.path());
    b.wait_until("the stale banner to go", PAGE, || b.find("#stale[hidden]"));
    assert!(
        b.find("body.stale").is_none(),
        "nothing marked stale any more"
    );
    b.wait_for_text("#live", "live", PAGE);
    // The active node reconnects by itself (back-off at most 1 s); the page follows.
    b.wait_until("the cluster connected again on the page", START, || {
        b.find("#gateway-facts .badge.state.connected")
    });
    // The gap the outage left is the manager's, not a fail-over: the killed manager's next
    // start closed the old session with `manager restarted`.
    let timeline = b.wait_for_text("#timeline", "manager restart", PAGE);
    let newest_gap = timeline
        .lines()
        .find(|l| {
            ["manager restart", "fail-over", "reconnected"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .unwrap_or_default();
    assert!(
        newest_gap.starts_with("manager restart") && newest_gap.contains(" gap "),
        "the newest gap: {newest_gap:?}\n{timeline}"
    );
    eprintln!("after the manager restart: {newest_gap}");
    let errors = script_errors(&b);
    assert!(errors.is_empty(), "script errors on the page: {errors:#?}");
    drop(manager);
    drop(standby);
}

/// The cluster as the manager's API shows it.
fn cluster_json(api: &Https, token: &str) -> Value {
    let (status, _, body) = api.get(&format!("/api/v1/clusters/{CLUSTER}"), Some(token));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("cluster JSON")
}

/// The entries of `absent_nodes` named `name`.
fn absent_named(cluster: &Value, name: &str) -> Vec<Value> {
    cluster["absent_nodes"]
        .as_array()
        .map(|a| a.iter().filter(|n| n["name"] == name).cloned().collect())
        .unwrap_or_default()
}

#[test]
fn a_killed_node_shows_as_lost_by_name_until_it_is_back() {
    webdriver::require_tools();
    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1", "core-2"]);
    let data = tempfile::tempdir().expect("tempdir");
    let manager = Manager::start(&pki, free_port(), data.path());
    manager.register(&pki, CLUSTER, &["core-1", "core-2"]);
    let token = std::fs::read_to_string(manager.token_path())
        .expect("admin token")
        .trim()
        .to_owned();
    let api = Https::new(&pki, manager.port);

    let (cmd, _) = ha_core_node(&pki, "core-1", manager.port, &etcd.endpoint());
    let active = cmd.name("core-1").spawn();
    wait_connected(&active);
    // The standby's lease is short, so its record goes soon after its process.
    let standby_cmd = || {
        let (cmd, port) = ha_core_node(&pki, "core-2", manager.port, &etcd.endpoint());
        let cmd = cmd
            .name("core-2")
            .env("GATEWAY_CONNECT_SERVER_HA_LEASE_TTL", "2s");
        (cmd, port)
    };
    let (cmd, p2) = standby_cmd();
    let mut standby = cmd.spawn();
    standby.wait_for_line("is not the active node", START);
    let id2 = node_id(p2);

    let b = Browser::start();
    b.goto(&format!("https://127.0.0.1:{}/", manager.port));
    b.wait_for_text("#signin", "Admin token", PAGE);
    b.type_into("#token", &token);
    b.click("#signin-form button[type=submit]");
    b.wait_for_text("#live", "live", PAGE);
    b.goto(&format!(
        "https://127.0.0.1:{}/#/clusters/{CLUSTER}",
        manager.port
    ));
    // Both nodes by name, each with its id beside it.
    let row = b.wait_for_text(
        &format!(
            "#core-nodes tr.node[data-name='core-2'][data-node-id='{id2}'][data-role='standby']"
        ),
        "core-2",
        START,
    );
    assert!(row.contains(&id2), "the id beside the name: {row}");
    b.wait_for_text(
        "#core-nodes tr.node[data-name='core-1'][data-role='active']",
        "core-1",
        PAGE,
    );
    b.wait_for_text("#active-node", "core-1", PAGE);
    b.wait_for_text("#timeline", "core-1", PAGE);

    // kill -9 the standby: its record goes with its lease, and the page shows it lost, by
    // name, with when it was last seen, without a reload.
    b.execute("window.__sameDocument = 'before-kill';", vec![]);
    let killed = Instant::now();
    standby.kill();
    let lost_row = "#core-nodes tr.absent[data-name='core-2'][data-status='lost']";
    let text = b.wait_for_text(lost_row, "last seen ", Duration::from_secs(30));
    eprintln!("lost after {:?}: {text}", killed.elapsed());
    assert!(text.contains("core-2") && text.contains(&id2), "{text}");
    assert!(text.contains("lost"), "{text}");
    let c = cluster_json(&api, &token);
    let gone = absent_named(&c, "core-2");
    assert_eq!(gone.len(), 1, "{c}");
    assert_eq!(
        (gone[0]["status"].as_str(), gone[0]["node_id"].as_str()),
        (Some("lost"), Some(id2.as_str())),
        "{c}"
    );
    let last_seen = gone[0]["last_seen"].as_str().expect("last_seen");
    assert!(
        text.contains(&last_seen[..19].replace('T', " ")),
        "the page shows the time the API gives ({last_seen}): {text}"
    );
    assert!(
        c["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["node_id"] != id2),
        "{c}"
    );
    b.execute("document.getElementById('core').scrollIntoView();", vec![]);
    b.screenshot("manager-page-node-lost");

    // Restarted: a new id, the same name; it is back, and no longer listed as lost.
    let (cmd, p2) = standby_cmd();
    let mut standby = cmd.spawn();
    standby.wait_for_line("is not the active node", START);
    let id2b = node_id(p2);
    assert_ne!(id2b, id2, "a new process, a new id");
    let back = b.wait_for_text(
        &format!("#core-nodes tr.node.back[data-name='core-2'][data-node-id='{id2b}']"),
        "back",
        START,
    );
    assert!(
        back.contains("was lost") && back.contains(&id2),
        "where it came back from: {back}"
    );
    b.wait_until("the lost row to go", PAGE, || {
        b.find(lost_row).is_none().then_some(())
    });
    let c = cluster_json(&api, &token);
    assert!(absent_named(&c, "core-2").is_empty(), "{c}");
    let node = c["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node_id"] == id2b)
        .cloned()
        .unwrap_or_else(|| panic!("core-2 listed again: {c}"));
    assert_eq!(node["name"], "core-2", "{node}");
    assert_eq!(
        (
            node["back"]["was"].as_str(),
            node["back"]["previous_node_id"].as_str()
        ),
        (Some("lost"), Some(id2.as_str())),
        "{node}"
    );
    b.screenshot("manager-page-node-back");

    // A clean stop says so: stopped, not lost; then the operator forgets it.
    standby.signal("TERM");
    standby.wait_exit(START);
    let stopped_row = "#core-nodes tr.absent[data-name='core-2'][data-status='stopped']";
    let text = b.wait_for_text(stopped_row, "stopped", PAGE);
    assert!(text.contains(&id2b), "{text}");
    assert!(
        b.find(lost_row).is_none(),
        "a clean stop is not shown as lost"
    );
    b.execute("window.confirm = () => true;", vec![]);
    b.click(&format!("{stopped_row} button.forget"));
    b.wait_until("the forgotten node to go", PAGE, || {
        b.find("#core-nodes tr.absent").is_none().then_some(())
    });
    assert!(absent_named(&cluster_json(&api, &token), "core-2").is_empty());

    let same: Value = b.execute("return window.__sameDocument || null;", vec![]);
    assert_eq!(same, json!("before-kill"), "the page was not reloaded");
    let errors = script_errors(&b);
    assert!(errors.is_empty(), "script errors on the page: {errors:#?}");
    drop(active);
}

/// Counts the service runs the page sends from now on (`window.__runs`), so a test can tell a
/// form that refused to send from one whose request is on its way.
fn count_runs(b: &Browser) {
    b.execute(
        "if (!window.__runs) { window.__runs = { n: 0 }; const f = window.fetch; \
         window.fetch = function (url, init) { \
           if (String(url).endsWith('/run')) window.__runs.n += 1; \
           return f.apply(this, arguments); }; }",
        vec![],
    );
}

fn runs_sent(b: &Browser) -> u64 {
    b.execute("return window.__runs ? window.__runs.n : 0;", vec![])
        .as_u64()
        .unwrap_or(0)
}

/// The value of the form control matching `css`.
fn value_of(b: &Browser, css: &str) -> String {
    b.execute(
        "const e = document.querySelector(arguments[0]); return e ? e.value : null;",
        vec![json!(css)],
    )
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// Fills the form generated from the decorator: a missing required input and inputs out of
/// bounds are marked beside their field and nothing is sent; an input only the gateway can
/// refuse (a pattern) comes back as `field: message`, with no JSON-RPC code or raw JSON; then the
/// service runs and its output is read.
fn run_service_from_the_page(b: &Browser) {
    let card = "#services-list .service[data-service='echo-inputs']";
    b.wait_until("the service form", CATALOG, || b.find(card));
    let field = |name: &str| format!("{card} .field[data-field='{name}']");
    // One field per property, of the right kind, with the required ones marked.
    for (name, kind) in [
        ("device", "string"),
        ("count", "integer"),
        ("verbose", "boolean"),
        ("mode", "enum"),
        ("targets", "array"),
    ] {
        let sel = format!("{}[data-kind='{kind}']", field(name));
        assert!(b.find(&sel).is_some(), "no {kind} field {name}");
    }
    assert!(b.find(&format!("{} .req", field("device"))).is_some());
    assert!(b.find(&format!("{} .req", field("count"))).is_some());
    assert!(b.find(&format!("{} .req", field("mode"))).is_none());
    count_runs(b);
    let submit = format!("{card} button[type=submit]");
    let count = format!("{} input", field("count"));
    let device = format!("{} input", field("device"));

    // Checked in the page, shown beside the field, not sent.
    b.type_into(&device, "r1");
    b.click(&submit);
    b.wait_for_text(
        &format!("{} .field-error", field("count")),
        "required",
        PAGE,
    );
    b.wait_for_text(&format!("{card} .run-error"), "Not sent: check count", PAGE);
    for (typed, message) in [("0", "must be at least 1"), ("9", "must be at most 5")] {
        b.clear(&count);
        b.type_into(&count, typed);
        b.click(&submit);
        b.wait_for_text(&format!("{} .field-error", field("count")), message, PAGE);
        assert!(
            b.find(&format!("{}.invalid", field("count"))).is_some(),
            "the field is marked"
        );
    }
    assert_eq!(runs_sent(b), 0, "a form the page refused sent nothing");
    assert_eq!(
        b.text(&format!("{card} .result")).unwrap_or_default(),
        "",
        "no result"
    );

    // Refused by the gateway: the field and the message, beside the field and in the result.
    b.clear(&count);
    b.type_into(&count, "3");
    b.clear(&device);
    b.type_into(&device, "R 1");
    b.click(&submit);
    let refused = b.wait_for_text(&format!("{card} .result .violations"), "device: ", PAGE);
    eprintln!("inputs refused by the gateway, as shown: {refused}");
    assert!(refused.contains("does not match"), "{refused}");
    let shown = b.text(&format!("{card} .result")).unwrap_or_default();
    for raw in ["-32602", "{\"", "pointer", "Error "] {
        assert!(
            !shown.contains(raw),
            "{raw:?} shown to the operator: {shown}"
        );
    }
    b.wait_for_text(
        &format!("{} .field-error", field("device")),
        "does not match",
        PAGE,
    );
    assert_eq!(runs_sent(b), 1);
    b.screenshot("manager-page-inputs-refused");

    b.clear(&device);
    b.type_into(&device, "r1");
    b.click(&format!("{} input", field("verbose")));
    b.select(&format!("{} select", field("mode")), "1");
    b.type_into(&format!("{} textarea", field("targets")), r#"["a", "b c"]"#);
    b.click(&submit);
    let out = b.wait_for_text(&format!("{card} .result pre.stdout"), "--device=r1", PAGE);
    for needle in ["--count=3", "--mode=safe", "--verbose=true"] {
        assert!(out.contains(needle), "{needle} in {out}");
    }
    assert!(
        b.find(&format!("{card} .field.invalid")).is_none(),
        "no field is marked after a good run"
    );
    let code = b.wait_for_text(&format!("{card} .result .return-code"), "0", PAGE);
    assert_eq!(code.trim(), "0");
    let result = b.text(&format!("{card} .result")).unwrap_or_default();
    for needle in ["Started", "Ended", "Elapsed"] {
        assert!(result.contains(needle), "{needle} in {result}");
    }
    eprintln!("service run from the page, stdout: {}", out.trim());
    b.execute(
        "document.querySelector(arguments[0]).scrollIntoView({ block: 'end' });",
        vec![json!(format!("{card} .result"))],
    );
    b.screenshot("manager-page-service-run");
}

/// `autogate <args…>` in client mode against the core node on `port`, as the guide's terminal
/// 5 runs it (the API key given directly instead of through `login`).
fn client_cli(port: u16, key: &str, args: &[&str]) {
    let out = Autogate::new(args.iter().copied())
        .env("GATEWAY_APPLICATION_MODE", "client")
        .env("GATEWAY_CLIENT_PORT", port.to_string())
        .env("GATEWAY_CLIENT_API_KEY", key)
        .output(START);
    assert_eq!(
        out.code(),
        Some(0),
        "autogate {args:?}\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// The getting-started path: with the cluster's page open, a service is created from the CLI,
/// run from the page; then the catalog changes (another service) and the page refreshes (the
/// cluster is renamed): the first service's inputs and result are still shown.
fn guide_service_survives_catalog_changes(b: &Browser, api: &Https, token: &str, node: u16) {
    let key = autogate_testkit::auth::admin_key(node);
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("hello.schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object",
            "properties": {"name": {"type": "string", "description": "Who to greet"},
                           "times": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["name"], "additionalProperties": false}"#,
    )
    .expect("write schema");
    let schema_arg = format!("@{}", schema.display());
    client_cli(
        node,
        &key,
        &[
            "create",
            "decorator",
            "hello-inputs",
            "--schema",
            &schema_arg,
        ],
    );
    client_cli(
        node,
        &key,
        &[
            "create",
            "service",
            "executable",
            "hello",
            "--executable-object",
            "echo",
            "--decorator",
            "hello-inputs",
            "--arg-format",
            "{{.Key}}={{.Value}}",
            "--description",
            "Says hello",
        ],
    );
    let card = "#services-list .service[data-service='hello']";
    b.wait_until("the new service on the page", CATALOG, || b.find(card));
    let name = format!("{card} .field[data-field='name'] input");
    let times = format!("{card} .field[data-field='times'] input");
    b.type_into(&name, "world");
    b.type_into(&times, "2");
    b.click(&format!("{card} button[type=submit]"));
    let stdout = format!("{card} .result pre.stdout");
    b.wait_for_text(&stdout, "name=world times=2", PAGE);

    let kept = |after: &str| {
        let out = b.text(&stdout).unwrap_or_default();
        assert!(
            out.contains("name=world times=2"),
            "the result is gone after {after}: {:?}",
            b.text(card)
        );
        assert_eq!(value_of(b, &name), "world", "input after {after}");
        assert_eq!(value_of(b, &times), "2", "input after {after}");
    };
    // The catalog changes: another service. Its card appears; the first one is untouched.
    client_cli(
        node,
        &key,
        &[
            "create",
            "service",
            "executable",
            "hello-again",
            "--executable-object",
            "echo",
            "--description",
            "Says hello again",
        ],
    );
    b.wait_until("the second service on the page", CATALOG, || {
        b.find("#services-list .service[data-service='hello-again']")
    });
    kept("another service was created");
    // The page re-reads the cluster (a rename is one notice): the catalog it already shows is
    // not drawn again.
    let status = api.patch(
        &format!("/api/v1/clusters/{CLUSTER}"),
        token,
        &json!({"name": "Guide cluster"}),
    );
    assert_eq!(status, 200);
    b.wait_for_text("#view h1", "Guide cluster", PAGE);
    kept("the page refreshed");
}

/// The operator makes the cluster read-only from the page: the state shows once (the control
/// that changes it), the cluster stays connected, and a run is refused with the manager's
/// reason, shown in place of the result.
fn read_only_refuses_runs(b: &Browser) {
    let card = "#services-list .service[data-service='echo-inputs']";
    let select = "#gateway-facts select.state-select";
    b.select(select, "read-only");
    b.wait_until("the read-only state on the page", PAGE, || {
        b.find(&format!("{select}.read-only[data-state='read-only']"))
    });
    assert!(
        b.find("#gateway-facts .badge.read-only").is_none(),
        "the state is shown once, not as a badge beside its control"
    );
    b.click(&format!("{card} button[type=submit]"));
    let refused = b.wait_for_text(&format!("{card} .result .run-failed"), "read-only", PAGE);
    eprintln!("run on a read-only cluster: {}", refused.trim());
    assert!(!refused.contains("Error -"), "{refused}");
    assert!(b.find("#gateway-facts .badge.connected").is_some());
}
