//! Resource files as the family's users move them: imports of any size on a real etcd (its
//! default `--max-txn-ops` of 128), all-or-nothing — a thousand services land at once and a
//! reader polling meanwhile never counts a part of them; a bad item near the end, or the
//! importing process killed with SIGKILL mid-import, leaves nothing visible, and its staging is
//! removed afterwards — and `db export --format json` / `--file`, `db import --validate`, in
//! local mode and through an active HA node (whose fencing guard every staged write carries).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autogate_resources::{Kind, Resources};
use autogate_store::{EtcdOptions, Store, StoreOptions};
use autogate_testkit::auth::{with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::{free_port, poll_until, Autogate, Output};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{expect_code, ha_status, ha_without_manager, raw_json, with_stdin};

const DEADLINE: Duration = Duration::from_secs(180);
const CLUSTER: &str = "cluster_1";

/// `n` executable services on one executable-object; `bad` makes item `bad` name a missing
/// executable-object.
fn services_file(n: usize, bad: Option<usize>) -> String {
    let mut f =
        String::from("executable-objects:\n  - name: sh\n    exec-command: /bin/sh\nservices:\n");
    for i in 0..n {
        let exe = if Some(i) == bad { "nowhere" } else { "sh" };
        f.push_str(&format!(
            "  - name: svc-{i:04}\n    type: executable\n    description: service number {i} of a large family file\n    executable-object: {exe}\n    tags: [bulk, family]\n"
        ));
    }
    f
}

/// The CLI in local mode on the test's etcd.
fn cli(etcd: &EtcdServer, args: &[&str]) -> Autogate {
    Autogate::new(args.iter().map(|s| s.to_string()))
        .env("GATEWAY_STORE_BACKEND", "etcd")
        .env("GATEWAY_STORE_ETCD_HOSTS", etcd.endpoint())
}

fn run(etcd: &EtcdServer, args: &[&str], code: i32) -> Output {
    expect_code(cli(etcd, args).output(DEADLINE), args, code)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn open(etcd: &EtcdServer) -> Arc<dyn Store> {
    autogate_store::open(StoreOptions::Etcd(EtcdOptions::new([etcd.endpoint()])))
        .await
        .expect("etcd")
}

/// How many services a fresh reader sees.
fn service_count(etcd: &EtcdServer) -> usize {
    runtime().block_on(async {
        Resources::new(open(etcd).await, CLUSTER)
            .names(Kind::Service)
            .await
            .expect("names")
            .len()
    })
}

/// Keys an import keeps while it runs (staging, jobs, owners, the commit marker).
fn import_keys(etcd: &EtcdServer) -> Vec<String> {
    runtime().block_on(async {
        open(etcd)
            .await
            .list(&format!("/autogate/{CLUSTER}/"))
            .await
            .expect("list")
            .into_iter()
            .map(|kv| kv.key)
            .filter(|k| k.contains("/import-") || k.ends_with("/resources-import"))
            .collect()
    })
}

/// Polls the service count from another thread until stopped; returns every count seen.
struct Reader {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<usize>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(etcd: &EtcdServer) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let endpoint = etcd.endpoint();
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let store = autogate_store::open(StoreOptions::Etcd(EtcdOptions::new([endpoint])))
                    .await
                    .expect("etcd");
                let r = Resources::new(store, CLUSTER);
                while !s.load(Ordering::SeqCst) {
                    let n = r.names(Kind::Service).await.expect("names").len();
                    v.lock().expect("lock").push(n);
                }
            })
        });
        Reader {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<usize> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("reader thread");
        }
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn a_thousand_services_land_on_etcd_at_once() {
    let etcd = EtcdServer::start();
    let dir = TempDir::new().expect("tmp");
    let file = write_file(dir.path(), "big.yaml", &services_file(1000, None));

    let reader = Reader::start(&etcd);
    poll_until("the reader's first read", DEADLINE, || {
        (!reader.seen.lock().expect("lock").is_empty()).then_some(())
    });
    let out = run(&etcd, &["db", "import", &file], 0);
    let seen = reader.finish();
    eprintln!(
        "{} reads during the import: {} saw none, {} saw all",
        seen.len(),
        seen.iter().filter(|n| **n == 0).count(),
        seen.iter().filter(|n| **n == 1000).count()
    );
    assert!(
        out.stdout
            .contains("Imported: 1001 added, 0 replaced, 0 unchanged"),
        "{}",
        out.stdout
    );
    assert!(
        seen.iter().all(|n| *n == 0 || *n == 1000),
        "a reader saw part of the import: {:?}",
        seen.iter()
            .filter(|n| **n != 0 && **n != 1000)
            .collect::<Vec<_>>()
    );
    assert_eq!(seen.first(), Some(&0));
    assert_eq!(service_count(&etcd), 1000);
    assert!(import_keys(&etcd).is_empty(), "{:?}", import_keys(&etcd));

    // Forced again with a change: 1000 replacements, again all at once.
    let changed = services_file(1000, None).replace("of a large", "of a changed");
    let file = write_file(dir.path(), "changed.yaml", &changed);
    let out = run(&etcd, &["db", "import", &file, "--force", "--raw"], 0);
    let report = raw_json(&["db", "import"], &out.stdout);
    let replaced = report["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["outcome"] == "replacement")
        .count();
    assert_eq!(replaced, 1000, "{report}");
    let exported = run(&etcd, &["db", "export", "--format", "json"], 0).stdout;
    let v: Value = serde_json::from_str(&exported).expect("JSON export");
    let services = v["services"].as_array().expect("services");
    assert_eq!(services.len(), 1000);
    assert!(services.iter().all(|s| s["description"]
        .as_str()
        .expect("description")
        .contains("changed")));
}

#[test]
fn a_bad_item_or_a_killed_importer_leaves_nothing_on_etcd() {
    let etcd = EtcdServer::start();
    let dir = TempDir::new().expect("tmp");

    // Item 900 names an executable-object that exists nowhere: named, nothing written.
    let bad = write_file(dir.path(), "bad.yaml", &services_file(1000, Some(900)));
    let out = run(&etcd, &["db", "import", &bad], 64);
    assert!(
        out.stderr.contains("service svc-0900") && out.stderr.contains("executable-object"),
        "{}",
        out.stderr
    );
    assert_eq!(service_count(&etcd), 0);
    assert!(import_keys(&etcd).is_empty(), "{:?}", import_keys(&etcd));
    // An unknown key in item 950: named by position and name, nothing written.
    let unknown = services_file(1000, None).replace(
        "  - name: svc-0950\n    type: executable\n",
        "  - name: svc-0950\n    type: executable\n    colour: red\n",
    );
    let unknown = write_file(dir.path(), "unknown.yaml", &unknown);
    let out = run(&etcd, &["db", "import", &unknown], 64);
    assert!(
        out.stderr.contains("service svc-0950: services[950]") && out.stderr.contains("colour"),
        "{}",
        out.stderr
    );
    assert_eq!(service_count(&etcd), 0);

    // SIGKILL while it stages: nothing of it is visible, from a fresh process.
    let big = write_file(dir.path(), "big.yaml", &services_file(3000, None));
    let mut importer = cli(&etcd, &["db", "import", &big]).spawn();
    let rt = runtime();
    let store = rt.block_on(open(&etcd));
    let staging = format!("/autogate/{CLUSTER}/import-data/");
    let marker = format!("/autogate/{CLUSTER}/resources-import");
    let end = Instant::now() + DEADLINE;
    let committed = loop {
        let staged = rt.block_on(store.list(&staging)).expect("list").len();
        if staged > 0 {
            importer.kill();
            break rt.block_on(store.get(&marker)).expect("get").is_some();
        }
        assert!(
            importer.is_running(),
            "the import ended before it was seen staging:\n{}",
            importer.dump()
        );
        assert!(Instant::now() < end, "no staging seen");
        std::thread::sleep(Duration::from_millis(1));
    };
    let count = service_count(&etcd);
    eprintln!(
        "importer killed {} its commit; {count} services visible",
        if committed { "after" } else { "before" }
    );
    if committed {
        // Killed after its commit: everything is visible, and the next write finishes it.
        assert_eq!(count, 3000);
    } else {
        assert_eq!(count, 0, "a killed import left part of itself visible");
    }
    // The staging of the dead importer goes once its lease has ended: any later open of the
    // resources removes it (here `get services`, a fresh process each time).
    poll_until("the dead import's staging removed", DEADLINE, || {
        run(&etcd, &["get", "services"], 0);
        import_keys(&etcd).is_empty().then_some(())
    });
    assert_eq!(service_count(&etcd), if committed { 3000 } else { 0 });
    // And the same file then imports whole.
    let out = run(&etcd, &["db", "import", &big, "--raw"], 0);
    let report = raw_json(&["db", "import"], &out.stdout);
    assert_eq!(report["written"], !committed);
    assert_eq!(service_count(&etcd), 3000);
    assert!(import_keys(&etcd).is_empty(), "{:?}", import_keys(&etcd));
}

#[test]
fn export_as_json_or_to_a_file_and_validate_without_a_store() {
    let root = TempDir::new().expect("tmp");
    let work_a = root.path().join("a");
    let local = |work: &Path, args: &[&str], code: i32| {
        let out = Autogate::new(args.iter().map(|s| s.to_string()))
            .env(
                "GATEWAY_APPLICATION_WORKING_DIR",
                work.display().to_string(),
            )
            .output(DEADLINE);
        expect_code(out, args, code)
    };
    let file = write_file(root.path(), "in.yaml", &services_file(3, None));
    local(&work_a, &["db", "import", &file], 0);

    // JSON on standard output, the same keys as the YAML.
    let json = local(&work_a, &["db", "export", "-f", "json"], 0).stdout;
    let v: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["services"].as_array().expect("services").len(), 3);
    assert_eq!(v["executable-objects"][0]["exec-command"], "/bin/sh");
    // To a file (mode 0600), in either format; --output is the earlier spelling.
    let out_json = root.path().join("export.json");
    let said = local(
        &work_a,
        &[
            "db",
            "export",
            "--format",
            "json",
            "--file",
            &out_json.display().to_string(),
        ],
        0,
    )
    .stdout;
    assert!(said.contains("export.json"), "{said}");
    let text = std::fs::read_to_string(&out_json).expect("file");
    assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON"), v);
    let mode = std::fs::metadata(&out_json)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let out_yaml = root.path().join("export.yaml");
    local(
        &work_a,
        &["db", "export", "--output", &out_yaml.display().to_string()],
        0,
    );
    assert!(std::fs::read_to_string(&out_yaml)
        .expect("file")
        .contains("exec-command: /bin/sh"));

    // The JSON file imports into a fresh working dir.
    let work_b = root.path().join("b");
    let out = local(
        &work_b,
        &["db", "import", &out_json.display().to_string()],
        0,
    )
    .stdout;
    assert!(out.contains("Imported: 4 added"), "{out}");

    // --validate: the file alone; no store is opened, not even created.
    let work_c = root.path().join("c");
    let out = local(&work_c, &["db", "import", &file, "--validate"], 0).stdout;
    assert!(out.contains("Valid"), "{out}");
    assert!(out.contains("svc-0002"), "{out}");
    assert!(!work_c.join("gateway.db").exists());
    let raw = local(&work_c, &["db", "import", &file, "--validate", "--raw"], 0).stdout;
    let report = raw_json(&["db", "import", "--validate"], &raw);
    assert_eq!(report["written"], false);
    assert!(report["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|i| i["outcome"] == "valid"));
    // A missing required field: named with its item, exit 64, nothing created.
    let bad = write_file(
        root.path(),
        "bad.yaml",
        "services:\n  - name: nofile\n    type: python-script\n    repository: elsewhere\n",
    );
    let err = local(&work_c, &["db", "import", &bad, "--validate"], 64).stderr;
    assert!(
        err.contains("service nofile") && err.contains("filename"),
        "{err}"
    );
    assert!(!work_c.join("gateway.db").exists());
    // Validation is not a dry run: it takes neither --check nor --force.
    local(
        &work_c,
        &["db", "import", &file, "--validate", "--check"],
        64,
    );
}

#[test]
fn through_an_active_ha_node_on_etcd() {
    let etcd = EtcdServer::start();
    let root = TempDir::new().expect("tmp");
    let port = free_port();
    let cmd = Autogate::new(["server"])
        .name("core")
        .env("GATEWAY_SERVER_PORT", port.to_string());
    let _node = with_admin_password(ha_without_manager(cmd, &etcd.endpoint())).spawn();
    poll_until("the node to be active", DEADLINE, || {
        (ha_status(port)?["role"] == "active").then_some(())
    });
    let work = root.path().join("cli");
    let port_s = port.to_string();
    let env = [
        ("HOME", work.as_os_str()),
        ("GATEWAY_APPLICATION_MODE", "client".as_ref()),
        ("GATEWAY_CLIENT_PORT", port_s.as_ref()),
        ("GATEWAY_APPLICATION_WORKING_DIR", work.as_os_str()),
    ];
    std::fs::create_dir_all(&work).expect("dir");
    let login = with_stdin(
        &["login", "admin", "--password-stdin"],
        &env,
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert!(login.status.success(), "{login:?}");
    let client = |args: &[&str], code: i32| {
        let mut cmd = Autogate::new(args.iter().map(|s| s.to_string()));
        for (k, v) in &env {
            cmd = cmd.env(k, v.to_string_lossy().into_owned());
        }
        expect_code(cmd.output(DEADLINE), args, code)
    };

    // 500 services through the active node: staged under its fencing guard, visible at once.
    let file = write_file(root.path(), "big.yaml", &services_file(500, None));
    let reader = Reader::start(&etcd);
    poll_until("the reader's first read", DEADLINE, || {
        (!reader.seen.lock().expect("lock").is_empty()).then_some(())
    });
    let out = client(&["db", "import", &file], 0).stdout;
    let seen = reader.finish();
    assert!(out.contains("Imported: 501 added"), "{out}");
    assert!(
        seen.iter().all(|n| *n == 0 || *n == 500),
        "a reader saw part of the import"
    );
    assert_eq!(service_count(&etcd), 500);
    assert!(import_keys(&etcd).is_empty(), "{:?}", import_keys(&etcd));

    // JSON export through the node.
    let json = client(&["db", "export", "-f", "json"], 0).stdout;
    let v: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["services"].as_array().expect("services").len(), 500);

    // --validate through the node: every item valid, nothing written.
    let other = write_file(
        root.path(),
        "other.yaml",
        &services_file(3, None).replace("svc-", "other-"),
    );
    let raw = client(&["db", "import", &other, "--validate", "--raw"], 0).stdout;
    let report = raw_json(&["db", "import", "--validate"], &raw);
    assert_eq!(report["items"].as_array().expect("items").len(), 4);
    assert!(report["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|i| i["outcome"] == "valid"));
    assert_eq!(service_count(&etcd), 500);
    let bad = write_file(
        root.path(),
        "bad.yaml",
        "services:\n  - name: x\n    type: executable\n",
    );
    let err = client(&["db", "import", &bad, "--validate"], 64).stderr;
    assert!(
        err.contains("service x") && err.contains("executable-object"),
        "{err}"
    );
    // The API refuses validate with check or force.
    let key = autogate_testkit::auth::admin_key(port);
    let (status, body) = autogate_testkit::auth::request(
        &format!("127.0.0.1:{port}"),
        "POST",
        "/api/v1/db/import?validate=true&check=true",
        Some(&key),
        Some(("application/yaml", other_text(&other).as_bytes())),
    )
    .expect("request");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("validate"), "{body}");
}

fn other_text(path: &str) -> String {
    std::fs::read_to_string(path).expect("read")
}

/// What an importer killed right after its commit leaves on etcd: the marker and the staged
/// records, none copied yet. Every reader — another process's CLI included — sees all of them,
/// and the next write (here a small import) copies them into place before writing.
#[test]
fn a_committed_import_left_by_a_dead_importer_is_whole_and_finished_by_the_next_write() {
    let etcd = EtcdServer::start();
    let dir = TempDir::new().expect("tmp");
    let base = write_file(
        dir.path(),
        "base.yaml",
        "executable-objects:\n  - name: sh\n    exec-command: /bin/sh\n",
    );
    run(&etcd, &["db", "import", &base], 0);
    let rt = runtime();
    let store = rt.block_on(open(&etcd));
    rt.block_on(async {
        for i in 0..300 {
            let record = serde_json::json!({
                "name": format!("late-{i:03}"),
                "type": "executable",
                "executable-object": "sh",
            });
            store
                .put(
                    &format!("/autogate/{CLUSTER}/import-data/dead0001/service/late-{i:03}"),
                    record.to_string().into_bytes(),
                    None,
                )
                .await
                .expect("put");
        }
        store
            .put(
                &format!("/autogate/{CLUSTER}/resources-import"),
                b"dead0001".to_vec(),
                None,
            )
            .await
            .expect("put");
    });
    let listed = run(&etcd, &["get", "services", "--raw"], 0).stdout;
    let v = raw_json(&["get", "services", "--raw"], &listed);
    assert_eq!(v["services"].as_array().expect("services").len(), 300);
    assert_eq!(service_count(&etcd), 300);

    let one = write_file(
        dir.path(),
        "one.yaml",
        "services:\n  - name: after\n    type: executable\n    executable-object: sh\n",
    );
    run(&etcd, &["db", "import", &one], 0);
    assert!(import_keys(&etcd).is_empty(), "{:?}", import_keys(&etcd));
    let live = rt
        .block_on(store.list(&format!("/autogate/{CLUSTER}/resources/service/")))
        .expect("list");
    assert_eq!(live.len(), 301);
}
