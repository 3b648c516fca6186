//! The core node role (`autogate server`): serves the operator API over HTTP/JSON, keeps the
//! cluster's resources in the store and — when it is the active node — holds the cluster's one
//! connection to the manager.
//!
//! Start-up order: the configuration has been validated by the caller; here the working
//! directory is locked, the store is opened (and a lease the directory's previous process left
//! is revoked), then the listener is bound, then what is created once (the first user) is
//! created while the API already answers, then the node announces itself. Shutdown order
//! (written once, in [`run`]): stop accepting → stop leader work → resign → drain in-flight
//! requests → release the store (revoking the node's lease).
//!
//! Modules:
//! * `api` — the operator API: route table, handlers by area, errors, the OpenAPI document;
//! * [`auth`] — users, password hashes and API keys;
//! * `forward` — a standby's forwarding of writes, runs and logins to the active node;
//! * `leader` — leader work under HA: the manager link and the dispatcher follow the election;
//! * [`link`] — the one connection of the cluster to its manager; [`services`] — its service
//!   runs and catalog;
//! * [`run_records`] — the record of each manager run this node executes, so that a copy
//!   sent again is answered from it instead of running twice;
//! * [`dispatch`] — distributed execution on the active node;
//! * `metered` — store latency and error metrics; `storeopts` — `[store]` onto the store's
//!   options; `tls` — the rustls configurations of the API; `transport` — the API's port:
//!   connection caps, header and body timeouts, the body limit of the routes without a key.
#![forbid(unsafe_code)]

mod api;
pub mod auth;
pub mod dispatch;
mod forward;
mod leader;
pub mod link;
mod metered;
pub mod proxy;
pub mod run_records;
pub mod services;
mod storeopts;
mod tls;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use autogate_config::Config;
use autogate_runtime::{Metrics, NodeId, Shutdown, StopClock};
use autogate_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{
    health_body, openapi_document, route_specs, router, Access, ApiState, Body, RouteSpec, Standby,
};
pub use storeopts::{open_store, store_options};

/// Failures of a core node, shaped by what the caller does next: a usage problem exits 64,
/// anything else is an operational failure (exit 1, supervisor restarts).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("serving the API failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error("high availability: {0}")]
    Ha(#[from] autogate_ha::HaError),
    /// The API's TLS material is unusable (missing, unreadable, mismatched).
    #[error("API TLS: {0}")]
    Tls(#[from] autogate_tls::TlsError),
    /// A setting the node cannot start with (e.g. an unreadable admin password file).
    #[error("{0}")]
    Config(String),
    /// Users and API keys could not be set up.
    #[error("users: {0}")]
    Auth(#[from] auth::AuthError),
    /// The working directory is held by another core node, or unusable.
    #[error(transparent)]
    Workdir(#[from] autogate_ha::WorkdirError),
}

impl ServerError {
    /// Process exit code for this error (sysexits: 64 usage, 69 unavailable, 1 other).
    pub fn exit_code(&self) -> i32 {
        match self {
            ServerError::Store(StoreError::Config(_))
            | ServerError::Link(_)
            | ServerError::Ha(_)
            | ServerError::Config(_) => 64,
            ServerError::Tls(e) if e.is_usage() => 64,
            ServerError::Store(StoreError::Unavailable(_)) => 69,
            ServerError::Bind { .. } => 69,
            ServerError::Workdir(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Everything a running core node shares between its tasks.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    pub link: link::LinkStatus,
    /// The election, when HA is on.
    pub ha: Option<autogate_ha::HaHandle>,
    /// Resources and service runs; with HA its writes are fenced by this node's term.
    pub automation: autogate_automation::Automation,
    /// Distributed execution: the dispatcher while this node is active, and the outcomes
    /// still to send to the manager.
    pub jobs: dispatch::Jobs,
    /// The manager's runs this node executes itself, and their records.
    pub runs: run_records::RunRecords,
}

/// Readies the engine's directories for the service user and checks it can reach them, before
/// anything binds: a working directory under a directory closed to it stops the start here.
async fn prepare_service_user(
    config: &Config,
    user: autogate_exec::ServiceUser,
) -> Result<(), ServerError> {
    let work_dir = autogate_automation::AutomationOptions::from_config(config).work_dir;
    let mut cfg = autogate_exec::EngineConfig::new(work_dir);
    let (name, uid) = (user.name().to_owned(), user.uid());
    cfg.service_user = Some(Ok(user));
    autogate_exec::Engine::new(cfg)
        .prepare()
        .await
        .map_err(|e| ServerError::Config(format!("server.service_user = {name}: {e}")))?;
    tracing::info!("services run as user {name} (uid {uid})");
    Ok(())
}

/// Run a core node until the shutdown token is cancelled.
pub async fn run(config: Config, node_id: NodeId, shutdown: Shutdown) -> Result<(), ServerError> {
    let config = Arc::new(config);
    // Everything that can be wrong with the configuration fails here, before a port is bound.
    let link_settings = link::LinkSettings::from_config(&config)?;
    let tls_config = if config.server.use_tls {
        Some(tls::server_config(&config)?)
    } else {
        None
    };
    let peer_tls = if config.server.use_tls {
        Some(tls::peer_client_config(&config)?)
    } else {
        None
    };
    let admin_password = config
        .server
        .admin_password_file
        .as_deref()
        .map(auth::read_password_file)
        .transpose()
        .map_err(ServerError::Config)?;
    let service_user = config
        .server
        .service_user
        .as_deref()
        .map(|name| {
            autogate_exec::ServiceUser::resolve(name)
                .map_err(|e| ServerError::Config(format!("server.service_user = {name}: {e}")))
        })
        .transpose()?;
    // One core node per working directory: a second one stops here (69). Holding the lock also
    // proves the process its state file names gone, so a lease that process left is cleared.
    let (workdir, previous) = autogate_ha::WorkdirLock::acquire_with(
        &config.application.working_dir,
        "server",
        service_user.is_some(),
    )
    .await?;
    if let Some(user) = service_user {
        prepare_service_user(&config, user).await?;
    }
    let metrics = Arc::new(Metrics::new());
    let store = metered::MeteredStore::wrap(open_store(&config).await?, &metrics);
    if let Some(previous) = &previous {
        let cluster = &config.application.cluster_id;
        if let Err(e) =
            autogate_ha::revoke_predecessor(&*store, cluster, node_id.as_str(), previous).await
        {
            tracing::warn!("cannot clear the lease of this node's previous process: {e}");
        }
    }
    let auth = auth::Auth::new(
        store.clone(),
        &config.application.cluster_id,
        config.server.api_key_expiration,
    );
    // The port is bound before anything created once (the first user and its printed password)
    // is created, so a failed bind loses nothing; logins wait for that creation.
    let logins_held = auth.hold_logins().await;
    let addr = format!("{}:{}", config.server.listen_address, config.server.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local: SocketAddr = listener.local_addr().map_err(ServerError::Serve)?;
    // Held until `run` returns (or the process dies); its state file names this process and,
    // with HA, each lease before the election key is created with it.
    let workdir = Arc::new(workdir);
    let state = autogate_ha::ProcessState::new(node_id.as_str(), &config.application.cluster_id);
    let ha = if config.connect.ha_enabled {
        let mut options = autogate_ha::HaOptions::from_config(&config, &node_id);
        options.state_file = Some(autogate_ha::StateFile::new(workdir.clone(), state));
        Some(match &peer_tls {
            // A TLS API is probed over TLS: a plain request would never get the health answer
            // that arms crash detection.
            Some(tls) => autogate_ha::HaDriver::start_with_prober(
                store.clone(),
                options,
                Some(&metrics),
                autogate_ha::Prober::new(autogate_ha::ProbeProtocol::Tls(tls.clone())),
                shutdown.tracker(),
            )?,
            None => autogate_ha::HaDriver::start(
                store.clone(),
                options,
                Some(&metrics),
                shutdown.tracker(),
            )?,
        })
    } else {
        if let Err(e) = workdir.record(&state).await {
            tracing::warn!("cannot write {}: {e}", workdir.state_path().display());
        }
        None
    };
    let forwarder = match &peer_tls {
        Some(tls) => forward::Forwarder::tls(tls.clone())
            .map_err(|e| ServerError::Config(format!("HTTPS client for forwarding: {e}")))?,
        None => forward::Forwarder::plain(),
    };
    let mut automation = autogate_automation::Automation::from_config(&config, store.clone());
    if let Some(ha) = &ha {
        automation =
            automation.with_txn_guard(fence_guard(ha.clone(), &config.application.cluster_id));
    }
    let jobs = dispatch::Jobs::new(config.server.distributed_execution, &metrics);
    let node = Node {
        automation,
        id: node_id,
        config: config.clone(),
        store: store.clone(),
        metrics,
        started: Instant::now(),
        link: link::LinkStatus::default(),
        jobs,
        runs: run_records::RunRecords::new(
            store.clone(),
            &config.application.cluster_id,
            config.connect.run_retention,
            shutdown.tracker().clone(),
        ),
        ha,
    };
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };

    let token = shutdown.token();
    let bootstrap_auth = auth.clone();
    // The body limit of the routes anyone may call runs before every route's own layers, so
    // before a standby forwards anything.
    let app = transport::limit_open_bodies(router(ApiState::new(
        node.clone(),
        auth,
        forwarder,
        token.clone(),
    )));
    // Stop accepting happens when `api_stop` fires, just after the shutdown token unless the
    // manager's runs must drain first: the accept loop stops and in-flight requests finish;
    // the grace deadline bounds how long we wait for them. While runs drain the port keeps
    // answering, as a live node's does: a standby's crash probe that found it refusing would
    // take the node for dead and revoke its lease, runs and all.
    let grace = config.server.shutdown_grace;
    let api_stop = CancellationToken::new();
    let server = shutdown.tracker().spawn(transport::serve(
        listener,
        tls_config,
        app,
        transport::Limits::from_config(&config),
        api_stop.clone(),
    ));
    // Hashing the first password (argon2, tens of milliseconds) runs while the API already
    // answers: start-up is the time to the first answer, not to the first login.
    let bootstrapped = bootstrap_admin(
        &bootstrap_auth,
        admin_password,
        &config.application.working_dir,
    )
    .await;
    drop(logins_held);
    if let Err(e) = bootstrapped {
        token.cancel();
        api_stop.cancel();
        if let Some(ha) = &node.ha {
            ha.shutdown().await;
        }
        return Err(e);
    }
    // Said once the first user exists, so the bootstrap's lines come before it.
    tracing::info!(
        node_id = %node.id,
        cluster_id = %config.application.cluster_id,
        store = node.store.backend(),
        "core node listening on {scheme}://{local}"
    );
    shutdown
        .tracker()
        .spawn(builtins(node.clone(), token.clone()));
    spawn_venv_pruner(
        &config,
        &node.automation.engine().config().work_dir,
        &shutdown,
    );
    let lead_token = CancellationToken::new();
    // Without HA this node is the cluster's only core node: it dispatches for as long as it
    // runs (with HA, the leader work starts a dispatcher for each leadership).
    let solo_jobs = (node.ha.is_none() && node.jobs.enabled()).then(|| {
        let node = node.clone();
        let token = lead_token.clone();
        shutdown.tracker().spawn(async move {
            let writer = dispatch::writer(&node);
            node.jobs.serve_term(node.clone(), writer, token).await
        })
    });
    let lead = match &node.ha {
        // With HA the link follows leadership, under the term of each leadership.
        Some(ha) => Some(shutdown.tracker().spawn(leader::follow(
            node.clone(),
            ha.clone(),
            link_settings,
            lead_token.clone(),
        ))),
        // Without HA this node is the cluster's only core node, so it holds the manager link
        // for as long as it runs (term null).
        None => link_settings.map(|settings| {
            shutdown.tracker().spawn(link::run(
                node.clone(),
                settings,
                None,
                node.link.clone(),
                lead_token.clone(),
            ))
        }),
    };
    token.cancelled().await;
    // Each phase is timed so the last line says where a slow stop went.
    let mut clock = StopClock::start(&shutdown);
    // The written shutdown order: let the manager's runs in progress finish and answer them on
    // the session still up (new ones are left to the next active node), up to
    // connect.server_ha_drain_timeout → the API stops accepting (axum's graceful shutdown) →
    // resign, so a standby takes over at once → close the
    // manager session → drain in-flight requests → the lease was revoked by the resignation.
    let had_runs = node.runs.running() > 0;
    node.runs.drain(config.connect.drain_timeout).await;
    if had_runs {
        clock.phase("manager runs");
    }
    api_stop.cancel();
    if let Some(ha) = &node.ha {
        // Said before resigning (its records go with it), so the manager shows it as stopped.
        link::announce_departure(&*node.store, &config.application.cluster_id, &node.id).await;
        clock.phase("departure notice");
        ha.shutdown().await;
        clock.phase("resign");
    }
    lead_token.cancel();
    if let Some(lead) = lead {
        let _ = tokio::time::timeout(grace, lead).await;
        clock.phase("manager session");
    }
    if let Some(jobs) = solo_jobs {
        let _ = tokio::time::timeout(grace, jobs).await;
        clock.phase("dispatcher");
    }
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(ServerError::Serve(e)),
        Ok(Err(join)) => tracing::error!("API task failed: {join}"),
        Err(_) => tracing::warn!("in-flight API requests still running after {grace:?}; closing"),
    }
    clock.phase("API requests");
    if !shutdown.drain(grace).await {
        tracing::warn!("background tasks still running after {grace:?}; exiting anyway");
    }
    clock.phase("background tasks");
    drop(workdir);
    clock.finish("core node");
    Ok(())
}

/// Where the first core node of a cluster leaves the generated password of `admin`.
pub const TEMPORARY_PASSWORD_FILE: &str = "temporary-admin-password";

/// Creates `admin` when the cluster has no user yet. A generated password goes to
/// [`TEMPORARY_PASSWORD_FILE`] in the working directory (mode 0600, in a 0700 directory), never
/// to the log: logs are shipped, kept and read by more people than the node's user.
async fn bootstrap_admin(
    auth: &auth::Auth,
    password: Option<String>,
    working_dir: &std::path::Path,
) -> Result<(), ServerError> {
    let from_file = password.is_some();
    match auth.bootstrap_admin(password).await? {
        Some(auth::Bootstrap {
            temporary_password: Some(password),
        }) => {
            let path = working_dir.join(TEMPORARY_PASSWORD_FILE);
            let written = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    autogate_runtime::private::write_private(
                        &path,
                        format!("{password}\n").as_bytes(),
                    )
                })
                .await
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(ServerError::Config(format!(
                        "cannot write the temporary admin password to {}: {e}",
                        path.display()
                    )))
                }
                Err(e) => {
                    return Err(ServerError::Config(format!(
                        "cannot write {}: {e}",
                        path.display()
                    )))
                }
            }
            // The family's words: operators and scripts look for these three lines; the third
            // says where the password is instead of what it is.
            tracing::info!("CREATED TEMPORARY ADMIN");
            tracing::info!("username: {}", auth::ADMIN);
            tracing::info!(
                "password: in {} (readable by this user only; log in, change it, delete the file)",
                path.display()
            );
        }
        Some(_) => tracing::info!(
            "created user {} with the password of server.admin_password_file",
            auth::ADMIN
        ),
        None if from_file => tracing::debug!(
            "users exist already; server.admin_password_file is only used for the first user"
        ),
        None => {}
    }
    Ok(())
}

/// Seeds the built-in resources whenever this node starts acting for the cluster: at start
/// without HA, on each election with HA. Failures are logged: the node still serves.
async fn builtins(node: Node, token: CancellationToken) {
    let ensure = |node: &Node| {
        let automation = node.automation.clone();
        async move {
            match automation.ensure_builtins().await {
                Ok(created) if !created.is_empty() => {
                    tracing::info!("created built-in resources: {}", created.join(", "))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot create the built-in resources: {e}"),
            }
        }
    };
    let Some(ha) = node.ha.clone() else {
        tokio::select! {
            _ = token.cancelled() => {}
            _ = ensure(&node) => {}
        }
        return;
    };
    let mut rx = ha.leadership();
    let mut seeded_term = None;
    loop {
        let current = rx.borrow_and_update().clone();
        if let autogate_ha::Leadership::Active { term } = current {
            if seeded_term != Some(term) {
                seeded_term = Some(term);
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = ensure(&node) => {}
                }
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Adds the HA fence to a write transaction: it commits only while this node's election key
/// still has the create revision of its term. A node that is not active gets a compare that can
/// never hold, so its write is refused as fenced rather than silently applied.
fn fence_guard(ha: autogate_ha::HaHandle, cluster_id: &str) -> autogate_resources::TxnGuard {
    let never = format!("{}not-active", autogate_ha::election_prefix(cluster_id));
    Arc::new(move |mut txn: autogate_store::Txn| {
        let compare = match ha.fence() {
            Some((key, term)) => autogate_store::Compare::create_revision(
                key,
                autogate_store::CompareOp::Equal,
                i64::try_from(term).unwrap_or(i64::MAX),
            ),
            None => autogate_store::Compare::create_revision(
                never.clone(),
                autogate_store::CompareOp::Equal,
                -1,
            ),
        };
        txn.compares.insert(0, compare);
        txn
    })
}

/// Starts the venv pruner of a node whose engine works in `work_dir` (core node or runner) on
/// its shutdown tracker: every `[application] venv_sweep_interval`, the cached venvs unused
/// for `venv_retention_period` are deleted (see `autogate_exec::venv_prune`).
pub fn spawn_venv_pruner(config: &Config, work_dir: &std::path::Path, shutdown: &Shutdown) {
    let app = &config.application;
    let root = work_dir.join("venvs");
    tracing::debug!(
        "venv pruner: {} swept every {}, venvs unused for {} are deleted",
        root.display(),
        autogate_config::format_duration(app.venv_sweep_interval),
        autogate_config::format_duration(app.venv_retention_period)
    );
    shutdown.tracker().spawn(autogate_exec::venv_prune::run(
        root,
        app.venv_retention_period,
        app.venv_sweep_interval,
        shutdown.token(),
        |outcome| match outcome {
            Ok(sweep) => {
                for (key, idle) in &sweep.removed {
                    tracing::info!(
                        "venv pruner: removed venv {key}, unused for {}",
                        autogate_config::format_duration(std::time::Duration::from_secs(
                            idle.as_secs()
                        ))
                    );
                }
                for (key, idle) in &sweep.removed_galaxy {
                    tracing::info!(
                        "venv pruner: removed Galaxy dependencies {key}, unused for {}",
                        autogate_config::format_duration(std::time::Duration::from_secs(
                            idle.as_secs()
                        ))
                    );
                }
                for problem in &sweep.problems {
                    tracing::warn!("venv pruner: {problem}");
                }
            }
            Err(e) => tracing::warn!("venv pruner: {e}"),
        },
    ));
}
