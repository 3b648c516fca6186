//! Every route of a core node (from its OpenAPI document) and of the manager, fed malformed and
//! hostile requests (see `autogate_testkit::badinput`): no answer is a 5xx, every request is
//! answered, and the process is still there and healthy afterwards. The full-size run with its
//! figures is `autogate-bench badinput` (docs/security.md).

use std::time::Duration;

use autogate_testkit::auth::{admin_key, with_admin_password};
use autogate_testkit::badinput::{
    fire_blocking, manager_routes, routes_of_openapi, Endpoint, Sizes,
};
use autogate_testkit::{free_port, http_get, Autogate};

use crate::support::manager::Manager;

const START: Duration = Duration::from_secs(30);
const SEED: u64 = 20261205;

fn report(what: &str, t: &autogate_testkit::badinput::Tally) -> String {
    format!(
        "{what}: {} requests, statuses {:?}, {} unanswered; failures:\n{}",
        t.requests,
        t.statuses,
        t.unanswered,
        t.failures.join("\n")
    )
}

#[test]
fn every_core_node_route_answers_bad_input_without_a_5xx_or_a_crash() {
    let port = free_port();
    let mut node = with_admin_password(Autogate::new(["server"]))
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .name("server")
        .spawn();
    node.wait_for_line("core node listening", START);
    let key = admin_key(port);
    let addr = format!("127.0.0.1:{port}");
    let (status, doc) = http_get(&addr, "/api/v1/openapi.json").expect("openapi");
    assert_eq!(status, 200);
    let routes = routes_of_openapi(&serde_json::from_str(&doc).expect("json"));
    assert!(routes.len() >= 30, "{routes:?}");
    // Logging out would revoke the key the rest of the run uses: that route is fed without it.
    let ep = Endpoint {
        port,
        tls: None,
        authorization: Some(format!("Bearer {key}")),
    };
    let (logout, rest): (Vec<_>, Vec<_>) = routes
        .into_iter()
        .partition(|r| r.path.ends_with("/logout"));
    let mut tally = fire_blocking(&ep, &rest, Sizes::QUICK, SEED, 4);
    let anonymous = Endpoint {
        authorization: None,
        ..ep
    };
    let t = fire_blocking(&anonymous, &logout, Sizes::QUICK, SEED, 4);
    tally.requests += t.requests;
    tally.unanswered += t.unanswered;
    tally.failures.extend(t.failures);
    for (s, n) in t.statuses {
        *tally.statuses.entry(s).or_default() += n;
    }
    eprintln!("{}", report("core node", &tally));
    assert!(tally.requests > 5_000, "{}", tally.requests);
    assert_eq!(tally.server_errors(), 0, "{}", report("core node", &tally));
    assert_eq!(tally.unanswered, 0, "{}", report("core node", &tally));
    assert!(node.is_running(), "the node died:\n{}", node.dump());
    let (status, _) = http_get(&addr, "/healthz").expect("healthz");
    assert_eq!(status, 200);
}

#[test]
fn every_manager_route_answers_bad_input_without_a_5xx_or_a_crash() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut manager = Manager::start(data.path());
    let tls = autogate_tls::client_config(autogate_tls::Roots::File(manager.ca()), None, false)
        .expect("client tls");
    let ep = Endpoint {
        port: manager.port,
        tls: Some(tls),
        authorization: Some(format!("Bearer {}", manager.token())),
    };
    let tally = fire_blocking(&ep, &manager_routes(), Sizes::QUICK, SEED, 4);
    eprintln!("{}", report("manager", &tally));
    assert!(tally.requests > 2_000, "{}", tally.requests);
    assert_eq!(tally.server_errors(), 0, "{}", report("manager", &tally));
    assert_eq!(tally.unanswered, 0, "{}", report("manager", &tally));
    assert!(
        manager.proc.is_running(),
        "the manager died:\n{}",
        manager.proc.dump()
    );
}
