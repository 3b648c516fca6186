//! `autogate-bench badinput`: the figures of docs/security.md — every route of a core node (from
//! its OpenAPI document) and of the manager fed malformed and hostile requests
//! (`autogate_testkit::badinput`, full sizes: 1 MiB values, 40 MiB bodies) under several seeds,
//! against the release binary. Counted: requests, answers by class, 5xx answers, unanswered
//! requests, crashes (the process gone or `/healthz` not 200 afterwards), and the peak memory of
//! the process under the flood. Like the soak it judges: it exits 1 on any 5xx, unanswered
//! request or crash.

use std::time::{Duration, Instant};

use autogate_testkit::auth::{admin_key, with_admin_password};
use autogate_testkit::badinput::{
    fire_blocking, manager_routes, routes_of_openapi, Endpoint, Sizes, Tally,
};
use autogate_testkit::{free_port, http_get, poll_until, Autogate, Process};

const SEEDS: [u64; 3] = [1, 2, 3];
const CONCURRENCY: usize = 8;

struct Row {
    api: &'static str,
    routes: usize,
    tally: Tally,
    crashes: u64,
    took: Duration,
    peak_mib: f64,
}

fn merge(into: &mut Tally, t: Tally) {
    into.requests += t.requests;
    into.unanswered += t.unanswered;
    into.failures.extend(t.failures);
    for (s, n) in t.statuses {
        *into.statuses.entry(s).or_default() += n;
    }
}

fn core_node() -> Row {
    let port = free_port();
    let mut node: Process = with_admin_password(Autogate::new(["server"]))
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env("GATEWAY_LOG_LEVEL", "warn")
        .spawn();
    let addr = format!("127.0.0.1:{port}");
    poll_until("core node", Duration::from_secs(30), || {
        http_get(&addr, "/healthz").ok().filter(|(s, _)| *s == 200)
    });
    let key = admin_key(port);
    let (_, doc) = http_get(&addr, "/api/v1/openapi.json").expect("openapi");
    let routes = routes_of_openapi(&serde_json::from_str(&doc).expect("openapi json"));
    let (logout, rest): (Vec<_>, Vec<_>) = routes
        .iter()
        .cloned()
        .partition(|r| r.path.ends_with("/logout"));
    let ep = Endpoint {
        port,
        tls: None,
        authorization: Some(format!("Bearer {key}")),
    };
    let anonymous = Endpoint {
        authorization: None,
        ..ep.clone()
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut crashes = 0;
    for seed in SEEDS {
        merge(
            &mut tally,
            fire_blocking(&ep, &rest, Sizes::FULL, seed, CONCURRENCY),
        );
        merge(
            &mut tally,
            fire_blocking(&anonymous, &logout, Sizes::FULL, seed, CONCURRENCY),
        );
        let healthy = http_get(&addr, "/healthz").is_ok_and(|(s, _)| s == 200);
        if !node.is_running() || !healthy {
            crashes += 1;
            eprintln!("core node down after seed {seed}:\n{}", node.dump());
            break;
        }
    }
    Row {
        api: "core node",
        routes: routes.len(),
        tally,
        crashes,
        took: started.elapsed(),
        peak_mib: crate::status_mib(node.pid(), "VmHWM"),
    }
}

fn manager() -> Row {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut proc = Autogate::new(["manager"])
        .env("GATEWAY_MANAGER_PORT", port.to_string())
        .env(
            "GATEWAY_MANAGER_DATA_DIR",
            data.path().display().to_string(),
        )
        .env("GATEWAY_LOG_LEVEL", "warn")
        .spawn();
    let token_file = data.path().join("admin.token");
    let token = poll_until("manager admin token", Duration::from_secs(30), || {
        std::fs::read_to_string(&token_file)
            .ok()
            .filter(|t| !t.trim().is_empty())
    });
    poll_until("manager port", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let tls = autogate_tls::client_config(
        autogate_tls::Roots::File(data.path().join("manager.pem")),
        None,
        false,
    )
    .expect("client tls");
    let ep = Endpoint {
        port,
        tls: Some(tls),
        authorization: Some(format!("Bearer {}", token.trim())),
    };
    let routes = manager_routes();
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut crashes = 0;
    for seed in SEEDS {
        merge(
            &mut tally,
            fire_blocking(&ep, &routes, Sizes::FULL, seed, CONCURRENCY),
        );
        if !proc.is_running() {
            crashes += 1;
            eprintln!("manager down after seed {seed}:\n{}", proc.dump());
            break;
        }
    }
    Row {
        api: "manager",
        routes: routes.len(),
        tally,
        crashes,
        took: started.elapsed(),
        peak_mib: crate::status_mib(proc.pid(), "VmHWM"),
    }
}

pub fn run() -> String {
    let rows = [core_node(), manager()];
    let mut out = crate::table_header("Bad input against every route")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    out.push_str(&format!(
        "\n\nSeeds {SEEDS:?}, {CONCURRENCY} requests at a time, values up to 1 MiB, one 40 MiB \
         body per route that takes a body.\n\n\
         | API | routes | requests | 2xx | 3xx | 4xx | 5xx | unanswered | crashes | peak RSS | time |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    ));
    let mut bad = 0;
    for r in &rows {
        let class = |c: u16| -> u64 {
            r.tally
                .statuses
                .iter()
                .filter(|(s, _)| **s / 100 == c)
                .map(|(_, n)| n)
                .sum()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} MiB | {:.0} s |\n",
            r.api,
            r.routes,
            r.tally.requests,
            class(2),
            class(3),
            class(4),
            r.tally.server_errors(),
            r.tally.unanswered,
            r.crashes,
            r.peak_mib,
            r.took.as_secs_f64()
        ));
        for f in r.tally.failures.iter().take(20) {
            eprintln!("{}: {f}", r.api);
        }
        bad += r.tally.server_errors() + r.tally.unanswered + r.crashes;
    }
    let statuses: Vec<String> = rows
        .iter()
        .map(|r| format!("{}: {:?}", r.api, r.tally.statuses))
        .collect();
    out.push_str(&format!("\nAnswers by status — {}\n", statuses.join("; ")));
    if bad > 0 {
        println!("{out}");
        eprintln!("badinput: {bad} 5xx answer(s), unanswered request(s) or crash(es)");
        std::process::exit(1);
    }
    out
}
