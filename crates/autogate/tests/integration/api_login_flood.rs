//! A login flood against a real `autogate server`: hundreds of parallel logins with wrong
//! passwords, for `admin` and for names that do not exist, from several loopback source
//! addresses (127.0.0.2–9, so that the per-address connection cap of the port is not what
//! answers). Before the hashing slots and the backoff, every one of them got an argon2id hash
//! (~19 MiB each) on its own blocking thread: 300 took the node to 5.8 GB. Now the node's peak
//! memory stays under 256 MB, the flood gets 503 (no free hashing slot) and 429 (backoff)
//! answers with `Retry-After`, each failure is logged with its source address and user name
//! and never its password, and `admin` still logs in from a clean address as soon as the
//! flood ends.
//!
//! Behind a standby, the active node sees every forwarded login come from the standby: the
//! standby keeps its callers' backoff itself, so bad logins from one caller through a standby
//! do not refuse another caller of that standby, and a caller that only claims to be a standby
//! is counted as itself.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autogate_testkit::auth::{admin_key, with_admin_password, ADMIN_PASSWORD};
use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::scenario::START;
use autogate_testkit::{free_port, poll_until, Autogate, Process};

use crate::support::{ha_status, ha_without_manager};
use serde_json::{json, Value};

/// Parallel logins in flight, all the time, during the flood.
const PARALLEL: usize = 360;
/// Source addresses the flood comes from (127.0.0.2 …).
const SOURCES: u8 = 8;
/// The longest the flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(90);
/// A word in every flood password, looked for in the log.
const SECRET_MARK: &str = "Fl00dSecret";

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    unauthorized: usize,
    busy: usize,
    backoff: usize,
    other: Vec<String>,
    errors: usize,
    /// A 503 and a 429 of the login guard, with their `Retry-After`.
    busy_sample: Option<(String, String)>,
    backoff_sample: Option<(String, String)>,
}

fn client(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .pool_max_idle_per_host(PARALLEL)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn login(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> reqwest::Result<(u16, Option<String>, String)> {
    login_with(client.post(url), user, password).await
}

async fn login_with(
    req: reqwest::RequestBuilder,
    user: &str,
    password: &str,
) -> reqwest::Result<(u16, Option<String>, String)> {
    let resp = req
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, retry, resp.text().await?))
}

#[test]
fn a_login_flood_stays_under_256_mb_and_admin_still_logs_in() {
    let port = free_port();
    let node = with_admin_password(Autogate::new(["server"]))
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .name("server")
        .spawn();
    node.wait_for_line("core node listening", Duration::from_secs(30));
    // admin logs in once before (a known user with a real hash to check against).
    admin_key(port);
    let url = format!("http://127.0.0.1:{port}/api/v1/login");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tally = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
        let clients: Vec<reqwest::Client> = (0..SOURCES)
            .map(|i| client(IpAddr::from([127, 0, 0, 2 + i])))
            .collect();
        let started = Instant::now();
        let mut workers = Vec::new();
        for w in 0..PARALLEL {
            let client = clients[w % clients.len()].clone();
            let (url, stop, tally) = (url.clone(), stop.clone(), tally.clone());
            workers.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Half aim at admin, half at names that do not exist.
                    let user = if (w + n) % 2 == 0 {
                        "admin".to_owned()
                    } else {
                        format!("ghost-{w}-{n}")
                    };
                    let password = format!("{SECRET_MARK}-{w}-{n}");
                    let answer = login(&client, &url, &user, &password).await;
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    match answer {
                        Ok((200, _, _)) => t.ok += 1,
                        Ok((401, _, _)) => t.unauthorized += 1,
                        Ok((503, retry, body)) if body.contains("too many logins in progress") => {
                            t.busy += 1;
                            if let Some(r) = retry {
                                t.busy_sample.get_or_insert((r, body));
                            }
                        }
                        Ok((429, retry, body)) => {
                            t.backoff += 1;
                            if let Some(r) = retry {
                                t.backoff_sample.get_or_insert((r, body));
                            }
                        }
                        Ok((s, _, body)) => t.other.push(format!("{s}: {body}")),
                        Err(_) => t.errors += 1,
                    }
                    let done = t.busy_sample.is_some()
                        && t.backoff_sample.is_some()
                        && t.unauthorized >= usize::from(SOURCES) * 6
                        && started.elapsed() > Duration::from_secs(5);
                    drop(t);
                    if done || started.elapsed() > FLOOD_FOR {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }));
        }
        for w in workers {
            w.await.expect("worker");
        }
        let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        t
    });

    let peak = peak_rss(node.pid());
    eprintln!(
        "flood: {} × 401, {} × 503, {} × 429, {} × 200, {} connection errors, {} other; server peak RSS {} MiB",
        tally.unauthorized,
        tally.busy,
        tally.backoff,
        tally.ok,
        tally.errors,
        tally.other.len(),
        peak >> 20
    );
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
    assert_eq!(tally.ok, 0, "no wrong password logs in");
    assert!(
        tally.other.is_empty(),
        "{:?}",
        &tally.other[..tally.other.len().min(5)]
    );
    let (retry, body) = tally
        .busy_sample
        .as_ref()
        .expect("503 answers while slots are busy");
    assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "{retry} {body}");
    let (retry, body) = tally
        .backoff_sample
        .as_ref()
        .expect("429 answers in backoff");
    assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "{retry} {body}");
    assert!(body.contains("too many failed logins"), "{body}");

    // Failures are logged with their source address and user name, never a password.
    let logs = node.logs();
    let failures: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("login failed"))
        .collect();
    assert!(
        failures.len() >= tally.unauthorized.min(20),
        "{} failure lines for {} failures",
        failures.len(),
        tally.unauthorized
    );
    assert!(
        failures
            .iter()
            .any(|l| l.contains("127.0.0.") && l.contains("user=admin")),
        "{:?}",
        &failures[..failures.len().min(3)]
    );
    assert!(
        failures.iter().any(|l| l.contains("user=ghost-")),
        "{:?}",
        &failures[..failures.len().min(3)]
    );
    assert!(!logs.contains(SECRET_MARK), "a password reached the log");
    assert!(!logs.contains(ADMIN_PASSWORD), "a password reached the log");

    // The flood is over: admin, whose name was flooded, logs in from a clean address at once;
    // a flooding address stays refused (without a hash) until its backoff ends.
    rt.block_on(async {
        let (s, retry, body) = login(
            &client(IpAddr::from([127, 0, 0, 2])),
            &url,
            "admin",
            ADMIN_PASSWORD,
        )
        .await
        .expect("login");
        assert_eq!(s, 429, "{body}");
        assert!(retry.is_some(), "{body}");
        let (s, _, body) = login(
            &client(IpAddr::from([127, 0, 0, 1])),
            &url,
            "admin",
            ADMIN_PASSWORD,
        )
        .await
        .expect("login");
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert!(
            v["api_key"].as_str().is_some_and(|k| k.starts_with("ag_")),
            "{v}"
        );
    });
    assert!(peak_rss(node.pid()) < 256 << 20);
}

fn ha_node(etcd: &EtcdServer, name: &str, port: u16) -> Process {
    let cmd = Autogate::new(["server"])
        .name(name)
        .env("GATEWAY_SERVER_PORT", port.to_string());
    with_admin_password(ha_without_manager(cmd, &etcd.endpoint())).spawn()
}

#[test]
fn logins_through_a_standby_count_its_callers_not_the_standby() {
    let etcd = EtcdServer::start();
    let (p1, p2) = (free_port(), free_port());
    let _n1 = ha_node(&etcd, "core-1", p1);
    poll_until("core-1 to be active", START, || {
        (ha_status(p1)?["role"] == "active").then_some(())
    });
    let n2 = ha_node(&etcd, "core-2", p2);
    poll_until("core-2 to be a standby", START, || {
        (ha_status(p2)?["role"] == "standby").then_some(())
    });
    let standby = format!("http://127.0.0.1:{p2}/api/v1/login");
    let active = format!("http://127.0.0.1:{p1}/api/v1/login");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // One caller guesses through the standby until it is refused.
        let attacker = client(IpAddr::from([127, 0, 0, 2]));
        let mut refused = None;
        for i in 0..30 {
            let (s, retry, body) = login(&attacker, &standby, &format!("ghost-{i}"), "wrong-guess")
                .await
                .expect("login");
            match s {
                401 => {}
                429 => {
                    refused = Some((retry, body));
                    break;
                }
                _ => panic!("{s}: {body}"),
            }
        }
        let (retry, body) = refused.expect("the guessing caller is refused by the standby");
        assert!(
            retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)),
            "{body}"
        );
        // Another caller of the same standby logs in: the active node did not count the
        // standby's address.
        let (s, _, body) = login(
            &client(IpAddr::from([127, 0, 0, 3])),
            &standby,
            "admin",
            ADMIN_PASSWORD,
        )
        .await
        .expect("login");
        assert_eq!(s, 200, "{body}");
        // A caller that claims to be a standby from elsewhere is counted as itself.
        let spoofer = client(IpAddr::from([127, 0, 0, 4]));
        let mut refused = false;
        for i in 0..30 {
            let req = spoofer
                .post(&active)
                .header("x-autogate-forwarded-by", "core-9");
            let (s, _, body) = login_with(req, &format!("ghost-s{i}"), "wrong-guess")
                .await
                .expect("login");
            match s {
                401 => {}
                429 => {
                    refused = true;
                    break;
                }
                _ => panic!("{s}: {body}"),
            }
        }
        assert!(refused, "a forged forwarding header escaped the backoff");
    });
    let line = n2.wait_for_line("checked by the active node", START);
    assert!(line.text.contains("source=127.0.0.2"), "{}", line.text);
    assert!(!n2.logs().contains("wrong-guess"));
}
