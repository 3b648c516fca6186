//! `autogate get runners` and `autogate inspect cluster [health|activity]`: the operator's view
//! of the cluster. In local mode it is read from the store directly; in client mode from the
//! core node's API (which reads the same store).

use autogate_jobs::view::{self, ManagerLink};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::Value;

use super::backend::{self, Backend};
use super::term;
use crate::cli::Global;
use crate::exit::{Failure, FAILURE};

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: InspectNoun,
}

#[derive(Debug, Subcommand)]
pub enum InspectNoun {
    /// The cluster: health (default) or activity.
    Cluster {
        #[arg(value_enum, default_value = "health")]
        view: ClusterView,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClusterView {
    /// Store, controllers, runners and manager connection; exit 1 when unhealthy.
    Health,
    /// Jobs of the retention period: NAME, TYPE, NODE, STARTED, COMPLETED, DURATION, ATTEMPTS.
    Activity,
}

fn fetch(global: &Global, local: ViewKind) -> Result<(Value, jiff::tz::TimeZone), Failure> {
    let config = backend::load(global)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let tz = term::time_zone(&config)?;
        let backend = Backend::open(&config, global).await?;
        let v = match &backend {
            Backend::Local(a) => {
                let store = a.resources().store().clone();
                let cid = &config.application.cluster_id;
                match local {
                    ViewKind::Runners => Value::from(
                        view::runners(&*store, cid)
                            .await
                            .map_err(|e| Failure::new(69, format!("store: {e}")))?,
                    ),
                    ViewKind::Activity => Value::from(
                        view::activity(&*store, cid)
                            .await
                            .map_err(|e| Failure::new(69, format!("store: {e}")))?,
                    ),
                    ViewKind::Health => {
                        // No manager configured is no manager link, not a broken one.
                        let link = if config.connect.enabled && !config.connect.hosts.is_empty() {
                            ManagerLink::FromRecords
                        } else {
                            ManagerLink::Disabled
                        };
                        view::health(&*store, cid, config.server.distributed_execution, link).await
                    }
                }
            }
            Backend::Remote(c) => {
                let (path, key) = match local {
                    ViewKind::Runners => ("/api/v1/runners", Some("runners")),
                    ViewKind::Activity => ("/api/v1/cluster/activity", Some("jobs")),
                    ViewKind::Health => ("/api/v1/cluster/health", None),
                };
                let v = c.call(Method::GET, path, None).await?;
                match key {
                    Some(k) => v[k].clone(),
                    None => v,
                }
            }
        };
        Ok((v, tz))
    })
}

#[derive(Clone, Copy)]
enum ViewKind {
    Runners,
    Activity,
    Health,
}

/// `get runners`.
pub fn get_runners(global: &Global) -> Result<(), Failure> {
    let (v, tz) = fetch(global, ViewKind::Runners)?;
    if global.raw {
        println!("{}", serde_json::json!({ "runners": v }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                term::text(&r["node_id"]),
                term::text(&r["host"]),
                term::text(&r["status"]),
                format!(
                    "{}/{}",
                    term::text(&r["running"]),
                    term::text(&r["capacity"])
                ),
                labels(&r["labels"]),
                term::show_time(r["last_seen"].as_str().unwrap_or("-"), &tz),
            ]
        })
        .collect();
    print!(
        "{}",
        term::table(
            &[
                "NODE ID",
                "HOST",
                "STATUS",
                "RUNNING/CAPACITY",
                "LABELS",
                "LAST SEEN"
            ],
            &rows
        )
    );
    Ok(())
}

fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", term::text(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_owned(),
    }
}

pub fn inspect(global: &Global, args: InspectArgs) -> Result<(), Failure> {
    let InspectNoun::Cluster { view } = args.what;
    match view {
        ClusterView::Health => health(global),
        ClusterView::Activity => activity(global),
    }
}

fn health(global: &Global) -> Result<(), Failure> {
    let (v, _) = fetch(global, ViewKind::Health)?;
    let healthy = v["healthy"].as_bool().unwrap_or(false);
    if global.raw {
        println!("{v}");
    } else {
        println!("Cluster: {}", term::text(&v["cluster_id"]));
        println!(
            "Store: {} ({})",
            term::text(&v["store"]["backend"]),
            term::text(&v["store"]["status"])
        );
        println!(
            "Runners: {} registered, {} available",
            term::text(&v["runners"]["registered"]),
            term::text(&v["runners"]["available"])
        );
        println!("Gateway Manager: {}", term::text(&v["manager"]["status"]));
        println!();
        let mut rows = vec![vec![
            "store".to_owned(),
            term::text(&v["store"]["backend"]),
            "-".to_owned(),
            term::text(&v["store"]["status"]),
        ]];
        for c in v["controllers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            rows.push(vec![
                "controller".to_owned(),
                if c["primary"] == true { "primary" } else { "-" }.to_owned(),
                format!(
                    "{} ({})",
                    term::text(&c["node_id"]),
                    term::text(&c["address"])
                ),
                term::text(&c["role"]),
            ]);
        }
        let distributed = v["runners"]["distributed_execution"] == true;
        if !distributed {
            rows.push(vec![
                "runner".to_owned(),
                "embedded".to_owned(),
                "-".to_owned(),
                "reachable".to_owned(),
            ]);
        }
        for r in v["runners"]["nodes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            rows.push(vec![
                "runner".to_owned(),
                "remote".to_owned(),
                format!("{} ({})", term::text(&r["node_id"]), term::text(&r["host"])),
                if r["status"] == "online" {
                    "reachable"
                } else {
                    "draining"
                }
                .to_owned(),
            ]);
        }
        rows.push(vec![
            "gateway-manager".to_owned(),
            "-".to_owned(),
            term::text(&v["manager"]["via"]),
            term::text(&v["manager"]["status"]),
        ]);
        print!(
            "{}",
            term::table(&["COMPONENT", "TYPE", "ADDRESS", "STATUS"], &rows)
        );
    }
    if healthy {
        Ok(())
    } else {
        Err(Failure::new(FAILURE, "the cluster is unhealthy"))
    }
}

fn activity(global: &Global) -> Result<(), Failure> {
    let (v, tz) = fetch(global, ViewKind::Activity)?;
    if global.raw {
        println!("{}", serde_json::json!({ "jobs": v }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|j| {
            let started = j["started"].as_str();
            let completed = j["completed"].as_str();
            vec![
                term::text(&j["name"]),
                term::text(&j["type"]),
                term::text(&j["node"]),
                started.map_or("-".to_owned(), |t| term::show_time(t, &tz)),
                completed.map_or("-".to_owned(), |t| term::show_time(t, &tz)),
                duration(started, completed),
                term::text(&j["attempts"]),
            ]
        })
        .collect();
    print!(
        "{}",
        term::table(
            &[
                "NAME",
                "TYPE",
                "NODE",
                "STARTED",
                "COMPLETED",
                "DURATION",
                "ATTEMPTS"
            ],
            &rows
        )
    );
    Ok(())
}

fn duration(start: Option<&str>, end: Option<&str>) -> String {
    let parse = |t: &str| t.parse::<jiff::Timestamp>().ok();
    match (start.and_then(parse), end.and_then(parse)) {
        (Some(s), Some(e)) => {
            let ms = e.as_millisecond() - s.as_millisecond();
            format!("{:.3}s", ms as f64 / 1000.0)
        }
        _ => "-".to_owned(),
    }
}
