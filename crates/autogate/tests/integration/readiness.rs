//! A core node's probes when its etcd goes away, on an HA node as it runs in production:
//! `/readyz` answers 503 — promptly, bounded by the store's request timeout, never hanging — while
//! etcd is frozen (SIGSTOP: requests time out instead of being refused) or killed, and 200 again
//! once etcd is back, without restarting the node. `/healthz` stays 200 throughout, so a
//! supervisor that restarts on failed liveness does not restart every node of a cluster because
//! etcd is down. (`server_lifecycle.rs` covers a node without HA and a killed etcd.)

use std::time::{Duration, Instant};

use autogate_testkit::etcd::EtcdServer;
use autogate_testkit::{free_port, http_get, poll_until, Autogate};

use crate::support::ha_without_manager;

/// The node's bound on one etcd request; `/readyz` must answer within about this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long etcd's absence or return may take to show in `/readyz`.
const FOLLOW: Duration = Duration::from_secs(20);

fn status(addr: &str, path: &str) -> Option<u16> {
    http_get(addr, path).ok().map(|(status, _)| status)
}

#[test]
fn readyz_follows_a_frozen_and_a_killed_etcd_and_healthz_stays_up() {
    let mut etcd = EtcdServer::start();
    let port = free_port();
    let cmd = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_STORE_ETCD_REQUEST_TIMEOUT", "2s")
        .name("core-1");
    // No manager in this test: the node stands for election without dialling one.
    let mut node = ha_without_manager(cmd, &etcd.endpoint()).spawn();
    node.wait_for_line("core node listening", Duration::from_secs(20));
    let addr = format!("127.0.0.1:{port}");
    poll_until("readyz 200 with etcd up", FOLLOW, || {
        (status(&addr, "/readyz")? == 200).then_some(())
    });

    // Frozen: etcd accepts connections but answers nothing.
    etcd.pause();
    poll_until("readyz 503 with etcd frozen", FOLLOW, || {
        (status(&addr, "/readyz")? == 503).then_some(())
    });
    let asked = Instant::now();
    assert_eq!(status(&addr, "/readyz"), Some(503));
    assert!(
        asked.elapsed() < REQUEST_TIMEOUT * 2,
        "readyz took {:?} with etcd frozen",
        asked.elapsed()
    );
    assert_eq!(status(&addr, "/healthz"), Some(200));
    etcd.resume();
    poll_until("readyz 200 after etcd resumed", FOLLOW, || {
        (status(&addr, "/readyz")? == 200).then_some(())
    });

    // Killed: connections are refused.
    etcd.stop();
    poll_until("readyz 503 with etcd killed", FOLLOW, || {
        (status(&addr, "/readyz")? == 503).then_some(())
    });
    assert_eq!(status(&addr, "/healthz"), Some(200));
    etcd.restart();
    poll_until("readyz 200 after etcd restarted", FOLLOW, || {
        (status(&addr, "/readyz")? == 200).then_some(())
    });

    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(10)).success());
}
