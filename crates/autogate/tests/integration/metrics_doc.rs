//! `docs/metrics.md` lists exactly what the processes expose, and the Grafana dashboard in
//! `deploy/grafana/` queries only listed metrics. The scrapes come from a real core node with HA
//! on a real etcd, a runner with its probe port, and a real manager that has also seen a refused connection and a
//! failed TLS handshake (labelled counters appear only once incremented).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::{self, Manager, Pki, START};
use autogate_testkit::{free_port, http_get, poll_until};
use serde_json::Value;

use crate::support::workspace_root;

/// Metric names per `## ` section of docs/metrics.md, with their type.
fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(workspace_root().join("docs/metrics.md")).expect("docs/metrics.md");
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            current = title.to_owned();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | labels | meaning |
        if cells.len() >= 5 && cells[0].is_empty() {
            if let Some(name) = cells[1]
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .filter(|n| n.starts_with("autogate_") || n.starts_with("process_"))
            {
                sections
                    .entry(current.clone())
                    .or_default()
                    .insert(name.to_owned(), cells[2].to_owned());
            }
        }
    }
    sections
}

fn section<'a>(
    doc: &'a BTreeMap<String, BTreeMap<String, String>>,
    prefix: &str,
) -> &'a BTreeMap<String, String> {
    doc.iter()
        .find(|(title, _)| title.starts_with(prefix))
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("docs/metrics.md has no section {prefix:?}"))
}

/// Query names in a scrape (counters with `_total`, histograms by their base name) and types,
/// from the `# TYPE` lines, each checked to have at least one sample.
fn exposed(scrape: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').expect("# TYPE name kind");
        let name = if kind == "counter" {
            format!("{family}_total")
        } else {
            family.to_owned()
        };
        let sample = if kind == "histogram" {
            format!("{family}_count")
        } else {
            name.clone()
        };
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with(&format!("{sample} "))
                    || l.starts_with(&format!("{sample}{{"))),
            "{name} has no sample in:\n{scrape}"
        );
        out.insert(name, kind.to_owned());
    }
    out
}

fn check(role: &str, scrape: &str, documented: &BTreeMap<String, String>) {
    let exposed = exposed(scrape);
    for (name, kind) in documented {
        assert_eq!(
            exposed.get(name),
            Some(kind),
            "{role}: docs/metrics.md lists {name} ({kind}), the scrape has {:?}:\n{scrape}",
            exposed.get(name)
        );
    }
    for name in exposed.keys() {
        assert!(
            documented.contains_key(name),
            "{role}: {name} is exposed but missing from docs/metrics.md"
        );
    }
}

fn https_get(pki: &Pki, url: &str) -> (u16, String) {
    let ca = std::fs::read(pki.path("ca.pem")).expect("ca");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let resp = client.get(url).send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    })
}

#[test]
fn metrics_doc_matches_what_core_node_manager_and_runner_expose() {
    let doc = documented();
    let process = section(&doc, "Every process").clone();
    let mut core = section(&doc, "Core node").clone();
    core.extend(section(&doc, "Store").clone());
    core.extend(section(&doc, "Jobs").clone());
    core.extend(process.clone());
    let mut manager = section(&doc, "Manager").clone();
    manager.extend(process.clone());
    let mut runner = section(&doc, "Runner").clone();
    runner.extend(process);

    let etcd = EtcdServer::start();
    let pki = Pki::new(&["core-1"]);
    let data = tempfile::tempdir().expect("temp dir");
    let mport = free_port();
    let mgr = Manager::start(&pki, mport, data.path());
    mgr.register(&pki, "cluster_1", &["core-1"]);

    let (cmd, port) = scenario::core_node(&pki, "core-1", mport);
    let node = cmd
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .env("GATEWAY_CONNECT_SERVER_HA_ENABLED", "true")
        .spawn();
    let base = format!("https://127.0.0.1:{mport}");

    // A session is live (frames in and out) and the node is active.
    poll_until("a live session at the manager", START, || {
        let (_, body) = https_get(&pki, &format!("{base}/metrics"));
        body.contains("autogate_manager_sessions_live 1")
            .then_some(())
    });
    let addr = format!("127.0.0.1:{port}");
    let core_scrape = poll_until("the core node to be active", START, || {
        let (status, body) = http_get(&addr, "/metrics").ok()?;
        (status == 200 && body.contains("autogate_ha_is_active 1")).then_some(body)
    });

    // A connection refused (no client certificate) and a failed TLS handshake.
    let (status, _) = https_get(&pki, &format!("{base}/ws"));
    assert_ne!(status, 101);
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", mport)).expect("connect");
    raw.write_all(b"this is not a TLS client hello\r\n\r\n")
        .expect("write");
    drop(raw);
    let manager_scrape = poll_until("refusal and handshake failure counted", START, || {
        let (status, body) = https_get(&pki, &format!("{base}/metrics"));
        (status == 200
            && body.contains("autogate_manager_sessions_refused_total{")
            && body.contains("autogate_manager_handshake_failures_total{")
            && body.contains("autogate_manager_frames_total{direction=\"in\"}")
            && body.contains("autogate_manager_frames_total{direction=\"out\"}"))
        .then_some(body)
    });

    // A runner with its optional probe port.
    let rport = free_port();
    let runner_proc = autogate_testkit::Autogate::new(["runner"])
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
        .env("GATEWAY_RUNNER_METRICS_PORT", rport.to_string())
        .spawn();
    let raddr = format!("127.0.0.1:{rport}");
    let runner_scrape = poll_until("the runner's metrics", START, || {
        let (status, body) = http_get(&raddr, "/metrics").ok()?;
        (status == 200).then_some(body)
    });
    let (status, body) = http_get(&raddr, "/readyz").expect("runner /readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    check("core node", &core_scrape, &core);
    check("manager", &manager_scrape, &manager);
    check("runner", &runner_scrape, &runner);
    drop(runner_proc);
    drop(node);
    drop(mgr);
}

/// Every metric name an expression mentions (`autogate_…`, `process_…`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("autogate_") || word.starts_with("process_") {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_queries_only_documented_metrics() {
    let doc = documented();
    let mut allowed = BTreeSet::new();
    for (name, kind) in doc.values().flatten() {
        allowed.insert(name.clone());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                allowed.insert(format!("{name}{suffix}"));
            }
        }
    }
    let text = std::fs::read_to_string(workspace_root().join("deploy/grafana/autogate.json"))
        .expect("deploy/grafana/autogate.json");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(
        dash["schemaVersion"].as_u64().expect("schemaVersion") >= 36,
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 7, "only {} expressions", all.len());
    let mut used = BTreeSet::new();
    for expr in &all {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "expression without a metric: {expr}");
        for name in names {
            assert!(
                allowed.contains(&name),
                "{name} in {expr:?} is not in docs/metrics.md"
            );
            used.insert(name);
        }
    }
    for needed in [
        "autogate_ha_is_active",
        "autogate_ha_term",
        "autogate_ha_transitions_total",
        "autogate_ha_failover_seconds_bucket",
        "autogate_store_request_seconds_bucket",
        "autogate_manager_sessions_live",
        "autogate_manager_sessions_refused_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(needed), "no panel queries {needed}");
    }
}
