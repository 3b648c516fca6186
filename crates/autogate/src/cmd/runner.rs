//! `autogate runner`: an execution-only node. It needs no listening port: it registers in the
//! cluster's etcd, takes the jobs the active core node assigns to it, and drains on SIGTERM. It
//! holds its working directory (one runner per directory, `runner.lock`), so that a runner
//! restarted there can clear the lease a crashed predecessor left (`runner.state`).

use std::collections::BTreeMap;

use autogate_automation::Automation;
use autogate_config::{Config, Role};
use autogate_jobs::RunnerOptions;
use autogate_runtime::{NodeId, Shutdown};

use crate::cli::Global;
use crate::exit::Failure;

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerRoleError {
    #[error("store: {0}")]
    Store(#[from] autogate_store::StoreError),
    #[error(transparent)]
    Runner(#[from] autogate_jobs::RunnerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The working directory is held by another runner, or unusable.
    #[error(transparent)]
    Workdir(#[from] autogate_ha::WorkdirError),
    /// `[runner] service_user` names a user the runner cannot run jobs as.
    #[error("runner.service_user = {name}: {source}")]
    ServiceUser {
        name: String,
        source: autogate_exec::ExecError,
    },
}

impl super::DaemonError for RunnerRoleError {
    fn exit_code(&self) -> i32 {
        match self {
            RunnerRoleError::Store(autogate_store::StoreError::Config(_)) => 64,
            RunnerRoleError::Store(autogate_store::StoreError::Unavailable(_)) => 69,
            RunnerRoleError::Bind { .. } => 69,
            RunnerRoleError::Workdir(e) => e.exit_code(),
            RunnerRoleError::ServiceUser { .. } => 64,
            _ => 1,
        }
    }
}

pub fn run(global: &Global) -> Result<(), Failure> {
    super::daemon(global, Role::Runner, |config, shutdown| {
        let node_id = NodeId::generate().named(&autogate_server::link::node_name(&config));
        run_role(config, node_id, shutdown)
    })
}

/// The options of a runner from `[runner]`.
pub fn options(config: &Config, node_id: &NodeId) -> RunnerOptions {
    let capacity = match config.runner.capacity {
        0 => std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1),
        n => n,
    };
    RunnerOptions {
        cluster_id: config.application.cluster_id.clone(),
        node_id: node_id.as_str().to_owned(),
        name: Some(node_id.name().to_owned()),
        host: autogate_runtime::hostname(),
        capacity,
        labels: config
            .runner
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        lease_ttl: config.runner.lease_ttl,
        drain_grace: config.runner.drain_grace,
        metrics: Default::default(),
        workdir: None,
    }
}

async fn run_role(
    config: Config,
    node_id: NodeId,
    shutdown: Shutdown,
) -> Result<(), RunnerRoleError> {
    // One runner per working directory: a second one stops here (69). Holding the lock also
    // proves the process its state file names gone, so the runner clears what that one left.
    let service_user = config
        .runner
        .service_user
        .as_deref()
        .map(|name| {
            autogate_exec::ServiceUser::resolve(name).map_err(|e| RunnerRoleError::ServiceUser {
                name: name.to_owned(),
                source: e.into(),
            })
        })
        .transpose()?;
    let (workdir, previous) = autogate_ha::WorkdirLock::acquire_with(
        &config.application.working_dir,
        "runner",
        service_user.is_some(),
    )
    .await?;
    let store = autogate_server::open_store(&config).await?;
    let mut automation = Automation::from_config(&config, store.clone());
    {
        let default = automation.engine().config();
        let mut engine = autogate_exec::EngineConfig::new(
            config
                .runner
                .runtime_data_dir
                .clone()
                .unwrap_or_else(|| default.work_dir.clone()),
        );
        engine.output_limit = default.output_limit;
        // `[python-script] requirements_file`, read from the runner's own configuration.
        engine.requirements_file = default.requirements_file.clone();
        // The same cluster known hosts as the default engine: checkouts on runners check SSH
        // host keys exactly as core nodes do.
        engine.host_keys = default.host_keys.clone();
        // [runner] service_user, never [server]'s: a runner's jobs run as the runner says.
        engine.service_user = service_user.clone().map(Ok);
        let engine = autogate_exec::Engine::new(engine);
        if let Some(user) = &service_user {
            engine
                .prepare()
                .await
                .map_err(|source| RunnerRoleError::ServiceUser {
                    name: user.name().to_owned(),
                    source,
                })?;
            tracing::info!("jobs run as user {} (uid {})", user.name(), user.uid());
        }
        automation = automation.with_engine(engine);
    }
    autogate_server::spawn_venv_pruner(&config, &automation.engine().config().work_dir, &shutdown);
    let mut opts = options(&config, &node_id);
    opts.workdir = Some(autogate_jobs::RunnerWorkdir {
        state_file: autogate_ha::StateFile::new(
            std::sync::Arc::new(workdir),
            autogate_ha::ProcessState::new(node_id.as_str(), &config.application.cluster_id),
        ),
        previous,
    });
    let metrics = std::sync::Arc::new(autogate_runtime::Metrics::new());
    opts.metrics = autogate_jobs::RunnerMetrics::default();
    metrics.register(|r| opts.metrics.register(r));
    if let Some(port) = config.runner.metrics_port {
        let addr = format!("{}:{port}", config.runner.listen_address);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| RunnerRoleError::Bind {
                addr: addr.clone(),
                source,
            })?;
        tracing::info!("runner probes and metrics on http://{addr}");
        let app = probe_routes(store.clone(), metrics.clone());
        let token = shutdown.token();
        shutdown.tracker().spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await });
            if let Err(e) = serve.await {
                tracing::warn!("probe port failed: {e}");
            }
        });
    }
    tracing::info!(
        node_id = %node_id,
        node_name = node_id.name(),
        cluster_id = %config.application.cluster_id,
        "runner starting: capacity {}, labels {:?}",
        opts.capacity,
        opts.labels
    );
    // A stop first says so in the store, then drains: the departure must be written before
    // the runner's registration goes with its lease, so that the manager shows it as stopped
    // rather than lost.
    let stop = tokio_util::sync::CancellationToken::new();
    let announce = {
        let (store, cluster, stop) = (
            store.clone(),
            config.application.cluster_id.clone(),
            stop.clone(),
        );
        let shutdown = shutdown.clone();
        async move {
            shutdown.token().cancelled().await;
            let mut clock = autogate_runtime::StopClock::start(&shutdown);
            autogate_server::link::announce_departure(&*store, &cluster, &node_id).await;
            clock.phase("departure notice");
            stop.cancel();
            clock
        }
    };
    let drain_grace = opts.drain_grace;
    let runner = autogate_jobs::runner::run(store, automation, opts, stop, shutdown.tracker());
    tokio::pin!(runner);
    let mut clock = tokio::select! {
        ended = &mut runner => {
            // The runner ended on its own (its store went away for good, say): no signal to
            // name, and an error is the FTL line instead.
            let clock = autogate_runtime::StopClock::start(&shutdown);
            ended?;
            clock
        }
        mut clock = announce => {
            runner.await?;
            clock.phase("running jobs");
            clock
        }
    };
    // What is left on the tracker (the probe port) stops with the root token; the bound is
    // the drain's own, so a stuck task cannot hold the exit longer than jobs could.
    shutdown.token().cancel();
    if !shutdown.drain(drain_grace).await {
        tracing::warn!("background tasks still running after {drain_grace:?}; exiting anyway");
    }
    clock.phase("background tasks");
    clock.finish("runner");
    Ok(())
}

/// `/healthz` (the process is up), `/readyz` (the store answers) and `/metrics`.
fn probe_routes(
    store: std::sync::Arc<dyn autogate_store::Store>,
    metrics: std::sync::Arc<autogate_runtime::Metrics>,
) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let store = store.clone();
                async move {
                    match store.status().await {
                        Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(e) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("store unavailable: {e}\n"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
}
