//! `autogate get runners` and `autogate inspect cluster [health|activity]`: the operator's view
//! of the cluster. In local mode it is read from the store directly; in client mode from the
//! core node's API (which reads the same store). `inspect cluster` alone shows both, health
//! first (as the family does), and exits 1 when the cluster is unhealthy, like `health`.

use std::collections::BTreeMap;

use autogate_config::Config;
use autogate_jobs::view::{
    self, ActivityList, ClusterHealth, JobActivity, ManagerLink, ManagerStatus, RunnerList,
    RunnerStatus, RunnerView, Status,
};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::json;

use super::backend::{self, Backend};
use super::term::{self, out, outln};
use crate::cli::Global;
use crate::exit::{Failure, FAILURE};

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: InspectNoun,
}

#[derive(Debug, Subcommand)]
pub enum InspectNoun {
    /// The cluster: health and activity together, or one of them.
    Cluster {
        /// Only this view (default: both, health first).
        #[arg(value_enum)]
        view: Option<ClusterView>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClusterView {
    /// Store, controllers, runners and manager connection; exit 1 when unhealthy.
    Health,
    /// Jobs of the retention period: NAME, TYPE, NODE, STARTED, COMPLETED, DURATION, ATTEMPTS.
    Activity,
}

/// Opens the backend of the configured mode and reads one view with `f`; with the time zone
/// timestamps are shown in.
fn fetch<T>(
    global: &Global,
    f: impl AsyncFnOnce(&Backend, &Config) -> Result<T, Failure>,
) -> Result<(T, jiff::tz::TimeZone), Failure> {
    let config = backend::load(global)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let tz = term::time_zone(&config)?;
        let backend = Backend::open(&config, global).await?;
        Ok((f(&backend, &config).await?, tz))
    })
}

/// A cluster view the store could not give.
fn store_failure(e: String) -> Failure {
    Failure::new(69, format!("store: {e}"))
}

async fn runners(b: &Backend, config: &Config) -> Result<Vec<RunnerView>, Failure> {
    match b {
        Backend::Local(a) => {
            let store = a.resources().store().clone();
            view::runners(&*store, &config.application.cluster_id)
                .await
                .map_err(store_failure)
        }
        Backend::Remote(c) => {
            let v = c.call(Method::GET, "/api/v1/runners", None).await?;
            let list: RunnerList = serde_json::from_value(v).map_err(backend::unexpected)?;
            Ok(list.runners)
        }
    }
}

async fn jobs(b: &Backend, config: &Config) -> Result<Vec<JobActivity>, Failure> {
    match b {
        Backend::Local(a) => {
            let store = a.resources().store().clone();
            view::activity(&*store, &config.application.cluster_id)
                .await
                .map_err(store_failure)
        }
        Backend::Remote(c) => {
            let v = c
                .call(Method::GET, "/api/v1/cluster/activity", None)
                .await?;
            let list: ActivityList = serde_json::from_value(v).map_err(backend::unexpected)?;
            Ok(list.jobs)
        }
    }
}

async fn cluster_health(b: &Backend, config: &Config) -> Result<ClusterHealth, Failure> {
    match b {
        Backend::Local(a) => {
            let store = a.resources().store().clone();
            // No manager configured is no manager link, not a broken one.
            let link = if config.connect.enabled && !config.connect.hosts.is_empty() {
                ManagerLink::FromRecords
            } else {
                ManagerLink::Disabled
            };
            Ok(view::health(
                &*store,
                &config.application.cluster_id,
                config.server.distributed_execution,
                link,
            )
            .await)
        }
        Backend::Remote(c) => {
            let v = c.call(Method::GET, "/api/v1/cluster/health", None).await?;
            serde_json::from_value(v).map_err(backend::unexpected)
        }
    }
}

/// `get runners`.
pub fn get_runners(global: &Global) -> Result<(), Failure> {
    let (runners, tz) = fetch(global, runners)?;
    if global.raw {
        outln!("{}", json!({ "runners": runners }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = runners
        .iter()
        .map(|r| {
            let status = match r.status {
                RunnerStatus::Online => "online",
                RunnerStatus::Draining => "draining",
            };
            vec![
                r.record.name.clone().unwrap_or_else(|| "-".to_owned()),
                r.record.node_id.clone(),
                r.record.host.clone(),
                status.to_owned(),
                format!("{}/{}", r.record.running, r.record.capacity),
                labels(&r.record.labels),
                term::show_time(&r.record.last_seen, &tz),
            ]
        })
        .collect();
    out!(
        "{}",
        term::table(
            &[
                "NAME",
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

fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn inspect(global: &Global, args: InspectArgs) -> Result<(), Failure> {
    let InspectNoun::Cluster { view } = args.what;
    match view {
        Some(ClusterView::Health) => health(global),
        Some(ClusterView::Activity) => activity(global),
        None => health_and_activity(global),
    }
}

/// `inspect cluster`: both views from one connection. `--raw` is the health object with the
/// activity's `jobs` beside its fields, so `.healthy` reads as it does from `health`.
fn health_and_activity(global: &Global) -> Result<(), Failure> {
    let ((h, jobs), tz) = fetch(global, async |b, config| {
        Ok((cluster_health(b, config).await?, jobs(b, config).await?))
    })?;
    if global.raw {
        let mut v = json!(h);
        v["jobs"] = json!(jobs);
        outln!("{v}");
    } else {
        print_health(&h);
        outln!();
        outln!("Activity:");
        print_activity(&jobs, &tz);
    }
    healthy(&h)
}

fn healthy(h: &ClusterHealth) -> Result<(), Failure> {
    if h.healthy {
        Ok(())
    } else {
        Err(Failure::new(FAILURE, "the cluster is unhealthy"))
    }
}

fn health(global: &Global) -> Result<(), Failure> {
    let (h, _) = fetch(global, cluster_health)?;
    if global.raw {
        outln!("{}", json!(h));
    } else {
        print_health(&h);
    }
    healthy(&h)
}

/// The family's health layout: the summary lines, then one row per component.
fn print_health(h: &ClusterHealth) {
    {
        let store_status = status_text(h.store.status);
        let manager_status = match h.manager.status {
            ManagerStatus::Disabled => "disabled",
            ManagerStatus::Connected => "connected",
            ManagerStatus::Disconnected => "disconnected",
        };
        outln!("Cluster: {}", h.cluster_id);
        outln!("Store: {} ({store_status})", h.store.backend);
        outln!(
            "Runners: {} registered, {} available",
            h.runners.registered,
            h.runners.available
        );
        outln!("Gateway Manager: {manager_status}");
        outln!();
        let mut rows = vec![vec![
            "store".to_owned(),
            h.store.backend.clone(),
            "-".to_owned(),
            store_status.to_owned(),
        ]];
        for c in &h.controllers {
            rows.push(vec![
                "controller".to_owned(),
                if c.primary { "primary" } else { "-" }.to_owned(),
                format!(
                    "{} ({})",
                    c.node_id,
                    c.address.as_deref().unwrap_or_default()
                ),
                c.role.to_string(),
            ]);
        }
        if !h.runners.distributed_execution {
            rows.push(vec![
                "runner".to_owned(),
                "embedded".to_owned(),
                "-".to_owned(),
                "reachable".to_owned(),
            ]);
        }
        for r in &h.runners.nodes {
            rows.push(vec![
                "runner".to_owned(),
                "remote".to_owned(),
                match &r.record.name {
                    Some(name) => format!("{name} {} ({})", r.record.node_id, r.record.host),
                    None => format!("{} ({})", r.record.node_id, r.record.host),
                },
                match r.status {
                    RunnerStatus::Online => "reachable",
                    RunnerStatus::Draining => "draining",
                }
                .to_owned(),
            ]);
        }
        rows.push(vec![
            "gateway-manager".to_owned(),
            "-".to_owned(),
            h.manager.via.clone().unwrap_or_default(),
            manager_status.to_owned(),
        ]);
        out!(
            "{}",
            term::table(&["COMPONENT", "TYPE", "ADDRESS", "STATUS"], &rows)
        );
    }
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Healthy => "healthy",
        Status::Unhealthy => "unhealthy",
    }
}

fn activity(global: &Global) -> Result<(), Failure> {
    let (jobs, tz) = fetch(global, jobs)?;
    if global.raw {
        outln!("{}", json!({ "jobs": jobs }));
        return Ok(());
    }
    print_activity(&jobs, &tz);
    Ok(())
}

/// The family's activity table.
fn print_activity(jobs: &[JobActivity], tz: &jiff::tz::TimeZone) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let started = j.started.as_deref();
            let completed = j.completed.as_deref();
            vec![
                j.name.clone(),
                j.service_type.clone(),
                j.node.clone().unwrap_or_default(),
                started.map_or("-".to_owned(), |t| term::show_time(t, tz)),
                completed.map_or("-".to_owned(), |t| term::show_time(t, tz)),
                duration(started, completed),
                j.attempts.to_string(),
            ]
        })
        .collect();
    out!(
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
