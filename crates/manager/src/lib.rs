//! The manager role (`autogate manager`): the controller side that gateway clusters connect to.
//!
//! One HTTPS port serves everything: `wss://host:port/ws` for gateway sessions (client
//! certificate required, pinned per cluster by SHA-256 fingerprint), the REST API under
//! `/api/v1` (admin bearer token), `/healthz`, `/readyz` and `/metrics`. State — registered
//! clusters with their certificates, the highest term seen per cluster, the session history,
//! catalogs, runs — lives in a store: the embedded one in `manager.data_dir` (one process), or
//! an etcd shared by several processes, the *replicas* of one manager, each serving any request.
//!
//! Modules: [`listener`] (TLS accept loop), [`ws`] (the session protocol), [`hub`] (live
//! sessions and the session rules), [`claims`] (each cluster's one live session across
//! replicas), [`replicas`] (a replica's lease and the others it knows), [`follow`] (the store
//! watch every copy is fed by), [`mirror`] (those copies), [`forward`] (requests for another
//! replica's session), [`prehello`] (the frame limit before `hello`), [`members`] (the nodes
//! that left a cluster, stopped or lost, and those that came back), [`membercopy`] (a
//! replica's copy of them, stored without undoing another's), [`disconnect`] (why a
//! connection was lost, in plain words), [`api`] (REST), [`web`] (the web page and its live
//! event stream), [`tickets`] (the stream's single-use tickets), [`registry`] (clusters,
//! catalogs and history), [`runs`] (service runs from acceptance to answer, kept in the
//! store), [`storeopen`] (opening the store from `[manager]`), [`bootstrap`] (certificate and
//! admin token on first start), [`client`] (the admin client the CLI uses).
//!
//! Start-up order: bind → data directory and admin token → store (identity checked against the
//! other replicas) → this replica's lease → registry, claims, runs → end the sessions of
//! replicas that are gone → watch the store → serve. Binding first means a taken port fails the
//! start before anything is written. Shutdown on SIGTERM/SIGINT: stop accepting, close every
//! session of this replica with 1001 (recorded in the history), drain (the store watch still
//! delivers answers to this replica's waiting callers, from the replica their cluster moved
//! to), stop the watch and the heartbeat, end the replica's lease, exit 0.
#![forbid(unsafe_code)]

pub mod api;
pub mod bootstrap;
pub mod claims;
pub mod client;
pub mod disconnect;
pub mod error;
pub mod follow;
pub mod forward;
pub mod hub;
pub mod listener;
pub mod membercopy;
pub mod members;
pub mod metrics;
pub mod mirror;
pub mod model;
pub mod prehello;
pub mod ratelimit;
pub mod registry;
pub mod replicas;
pub mod runs;
pub mod storeopen;
pub mod tickets;
pub mod web;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use autogate_config::Config;
use autogate_runtime::Shutdown;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

pub use client::{AdminClient, ClientError};
pub use error::ManagerError;
pub use model::{ClusterState, SessionRecord};

/// File name of the manager's store inside `data_dir`.
pub const STORE_FILE: &str = "manager.db";
/// How long shutdown waits for sessions to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The `[manager]` settings of a run's wait.
fn run_limits(m: &autogate_config::Manager) -> runs::RunLimits {
    runs::RunLimits {
        queue_timeout: m.run_queue_timeout,
        queue_size: m.run_queue_size as usize,
        retention: m.run_retention,
    }
}

/// Runs the manager until the shutdown token is cancelled.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ManagerError> {
    let m = &config.manager;
    // The port first: a manager that cannot listen must leave nothing behind — no data
    // directory, no store, no certificate and above all no admin token that nobody was told
    // about. Connections that arrive before the registry is loaded wait in the backlog.
    let addr = format!("{}:{}", m.listen_address, m.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ManagerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| ManagerError::Bind { addr, source })?;

    bootstrap::ensure_data_dir(&m.data_dir)?;
    // The certificate before the token: whoever waits for the token file finds both.
    let (chain, key) = bootstrap::identity(&config)?;
    let (token, _token_path) = bootstrap::admin_token(&config)?;
    let opened = storeopen::open(&config, &token).await?;
    let store = opened.store.clone();
    // Where the watch starts: everything read below is at this revision or later, and the
    // watch replays what changed in between (every copy applies only what is newer).
    let start = store.status().await?.revision;
    let replicas = Arc::new(
        replicas::Replicas::join(
            store.clone(),
            m.advertised_address(&autogate_runtime::hostname())
                .to_string(),
            m.replica_lease_ttl,
            opened.backend == "local",
        )
        .await?,
    );
    let claims = store.list(claims::LIVE).await?;
    // The history records of sessions some claim still holds stay open; the sweep below ends
    // those of replicas that are gone, with the history.
    let held: std::collections::HashSet<String> = claims
        .iter()
        .filter_map(|kv| serde_json::from_slice::<claims::Claim>(&kv.value).ok())
        .filter(|c| c.ended.is_none())
        .map(|c| c.history_key)
        .collect();
    let registry = registry::Registry::open(store, m.session_history as usize, &held).await?;
    let tls = autogate_tls::server_config(
        chain,
        key,
        autogate_tls::ClientAuth::AnyPresented { mandatory: false },
    )?;

    let metrics = metrics::ManagerMetrics::new();
    let runs = runs::Runs::open(registry.store().clone(), run_limits(m)).await?;
    let hub = Arc::new(hub::Hub::new(
        registry,
        metrics.clone(),
        runs,
        replicas.clone(),
        claims,
        start,
    ));
    hub.reload_members().await?;
    hub.sweep().await;
    shutdown
        .tracker()
        .spawn(hub.clone().write_members(shutdown.token()));
    // The store watch and the lease outlive the drain: callers of this replica still waiting
    // for runs that another replica answers (its sessions moved there) get their answers
    // while the connections drain. Both are stopped, and joined, after it.
    let keep = tokio_util::sync::CancellationToken::new();
    let follower = tokio::spawn(follow::follow(hub.clone(), start, keep.clone()));
    let heartbeat = tokio::spawn(replicas::heartbeat(hub.clone(), keep.clone()));
    let state = api::AppState {
        hub: hub.clone(),
        token_digest: Sha256::digest(token.as_bytes()).into(),
        max_frame_size: usize::try_from(m.max_frame_size).unwrap_or(usize::MAX),
        token: shutdown.token(),
        tracker: shutdown.tracker().clone(),
        // Every refusal is logged with its reason, up to 20 lines a second (bursts of 100), so
        // a storm of bad connections cannot flood the log; the next line counts the rest.
        refusal_log: Arc::new(ratelimit::LogLimiter::new(20.0, 100.0)),
        session: ws::SessionLimits::from_config(m),
        tickets: Arc::new(tickets::Tickets::new(
            &token,
            hub.registry().store().clone(),
        )),
        store_where: api::StoreWhere {
            backend: opened.backend,
            endpoints: opened.endpoints.clone(),
            prefix: opened.prefix.clone(),
        },
    };
    let app = api::router(state);
    let data = if opened.backend == "local" {
        m.data_dir.display().to_string()
    } else {
        format!("etcd {} under {}", opened.endpoints, opened.prefix)
    };
    tracing::info!(
        "manager listening on https://{local} (gateways: wss://{local}/ws; {} cluster(s) registered; data in {data}; replica {}, {} live)",
        hub.registry().len(),
        replicas.id(),
        replicas.list(0).len()
    );

    let token = shutdown.token();
    let serve = listener::serve(
        listener,
        tls,
        app,
        metrics,
        usize::try_from(m.max_connections_per_source)
            .unwrap_or(listener::MAX_CONNECTIONS_PER_SOURCE),
        token.clone(),
        shutdown.tracker().clone(),
    );
    shutdown.tracker().spawn(serve);
    token.cancelled().await;
    let mut clock = autogate_runtime::StopClock::start(&shutdown);
    // With other replicas alive, this is one replica stopping (its gateways move to another),
    // not the manager.
    let reason = hub.shutdown_reason();
    hub.close_all(hub::CLOSE_GOING_AWAY, &reason);
    clock.phase("closing sessions");
    if !shutdown.drain(SHUTDOWN_GRACE).await {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    clock.phase("connections");
    keep.cancel();
    let _ = tokio::join!(follower, heartbeat);
    // Last: the lease ends this replica's record (its sessions ended above).
    replicas.leave().await;
    clock.phase("replica lease");
    clock.finish("manager");
    Ok(())
}
