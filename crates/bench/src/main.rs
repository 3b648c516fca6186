//! Benchmarks of autogate, reported and never asserted. Each compares against its baseline in the
//! same run (raw etcd for the store, the bare process for start-up) and prints a Markdown table
//! ready for `docs/benchmarks.md`.
//!
//! `autogate-bench foundation`: time from `exec autogate server` to `/api/v1/health` answering,
//! idle RSS of the server, local-store put/get throughput, etcd-store put throughput against raw
//! etcd with the same write pattern.
//!
//! `autogate-bench services`: a no-op service run through the API against the bare command,
//! sequential runs per second, python-script with a cold and a warm venv.
//!
//! `autogate-bench dispatch`: a no-op job through manager, active core node and runner with one
//! and two runners — latency, jobs/s, overhead over a core node running it itself, and the raw
//! etcd put rate as the ceiling.
//!
//! `autogate-bench replicas`: the manager as one process on its local store, as one replica
//! and as three replicas on a shared 3-member etcd — registrations, session accept rate, runs/s
//! through the replica holding the session and through another one, kill -9 → new session,
//! RSS per replica.
//!
//! `autogate-bench badinput`: every route of a core node and of the manager fed malformed and
//! hostile requests (see `autogate_testkit::badinput`); counts the answers, and exits 1 on a 5xx,
//! an unanswered request or a crash.
//!
//! `autogate-bench soak`: the chaos soak (see `autogate_testkit::soak`) in both modes, local
//! and distributed execution, then against three manager replicas on a shared etcd (local
//! execution, its own table); `SOAK_FAULTS` faults each (default 100), schedule seeded by
//! `SOAK_SEED` (default 1); `SOAK_MODE=local`, `distributed` or `replicas` runs one. Unlike the
//! benchmarks it judges: it exits 1 when anything was refused, failed, left unanswered,
//! executed twice or executed while its caller was told it failed, when two manager sessions
//! overlapped, or when a manager replica crashed.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

mod badinput;
mod dispatch;
mod failover;
mod foundation;
mod manager;
mod replicas;
mod services;

fn main() {
    let which = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "foundation".to_owned());
    let started = Instant::now();
    let report = match which.as_str() {
        "badinput" => badinput::run(),
        "dispatch" => dispatch::run(),
        "failover" => failover::run(),
        "foundation" => foundation::run(),
        "manager" => manager::run(),
        "replicas" => replicas::run(),
        "services" => services::run(),
        "soak" => soak(),
        other => {
            eprintln!(
                "unknown benchmark {other:?}; available: badinput, dispatch, failover, foundation, manager, replicas, services, soak"
            );
            std::process::exit(64);
        }
    };
    println!("{report}");
    let out = std::path::Path::new("target").join(format!("bench-{which}.md"));
    if std::fs::write(&out, &report).is_ok() {
        eprintln!("(written to {}, {:?})", out.display(), started.elapsed());
    }
}

/// The soaks, one table each (the replicas' under a heading of their own); exits 1 (after
/// writing the tables) when any broke the goal.
fn soak() -> String {
    let env = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let faults = usize::try_from(env("SOAK_FAULTS", 100)).unwrap_or(100);
    let seed = env("SOAK_SEED", 1);
    let heading = |title: &str| {
        let mut h = table_header(title)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        h.push_str("\n\n");
        h
    };
    let mut out = String::new();
    let mut violations = 0;
    // (distributed execution, manager replicas)
    let modes: &[(bool, bool)] = match std::env::var("SOAK_MODE").as_deref() {
        Ok("local") => &[(false, false)],
        Ok("distributed") => &[(true, false)],
        Ok("replicas") => &[(false, true)],
        _ => &[(false, false), (true, false), (false, true)],
    };
    for (n, &(distributed, replicas)) in modes.iter().enumerate() {
        if replicas {
            out.push_str(&heading("Chaos soak — manager replicas"));
        } else if n == 0 {
            out.push_str(&heading("Chaos soak"));
        }
        let mut cfg = autogate_testkit::soak::SoakConfig::new(seed, faults, distributed);
        if replicas {
            cfg = cfg.with_replicas();
        }
        let report = autogate_testkit::soak::run(cfg);
        eprintln!("{}", report.table());
        violations += report.violations();
        out.push_str(&report.table());
        out.push('\n');
        for (what, list) in [
            (
                "refused or failed",
                report
                    .failed
                    .iter()
                    .map(|(s, m)| format!("{s} {m}"))
                    .collect::<Vec<_>>(),
            ),
            ("unanswered", report.unanswered.clone()),
            ("executed twice", report.executed_twice.clone()),
            (
                "executed while told failed",
                report.executed_while_failed.clone(),
            ),
            ("replica crash", report.crashes.clone()),
        ] {
            for item in list.iter().take(10) {
                eprintln!("{what}: {item}");
            }
        }
    }
    if violations > 0 {
        println!("{out}");
        eprintln!("soak: {violations} violation(s) of the goal");
        std::process::exit(1);
    }
    out
}

/// Summary statistics of a set of samples.
#[derive(Debug)]
pub struct Stats {
    pub samples: Vec<f64>,
}

impl Stats {
    pub fn new(mut samples: Vec<f64>) -> Self {
        samples.sort_by(|a, b| a.total_cmp(b));
        Stats { samples }
    }
    pub fn quantile(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.samples.len() - 1) as f64 * q).round() as usize;
        self.samples[idx]
    }
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }
}

/// `### <title> (<date>; <machine>)` and the head of a `measure | result | target` table.
pub fn table_header(title: &str) -> String {
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "### {title} ({date}; {})\n\n| measure | result | target |\n|---|---|---|\n",
        machine()
    )
}

/// The machine line every table carries.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB RAM")
}

/// A memory figure of process `pid` from `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) in MiB; NaN
/// when it cannot be read (the process is gone).
pub fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
