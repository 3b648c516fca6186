//! The core node role (`autogate server`): serves the operator API over HTTP/JSON, keeps the
//! cluster's resources in the store and — when it is the active node — holds the cluster's one
//! connection to the manager.
//!
//! Start-up order: the configuration has been validated by the caller; here the store is opened,
//! then the listener is bound, then the node announces itself. Shutdown order (written once, in
//! [`run`]): stop accepting → stop leader work → resign → drain in-flight requests → release the
//! store (revoking the node's lease).
#![forbid(unsafe_code)]

mod api;
pub mod link;
mod storeopts;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use autogate_config::Config;
use autogate_runtime::{Metrics, NodeId, Shutdown};
use autogate_store::{Store, StoreError};
use tokio::net::TcpListener;

pub use api::{health_body, router, ApiState};
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
}

impl ServerError {
    /// Process exit code for this error (sysexits: 64 usage, 69 unavailable, 1 other).
    pub fn exit_code(&self) -> i32 {
        match self {
            ServerError::Store(StoreError::Config(_)) | ServerError::Link(_) => 64,
            ServerError::Store(StoreError::Unavailable(_)) => 69,
            ServerError::Bind { .. } => 69,
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
}

/// Run a core node until the shutdown token is cancelled.
pub async fn run(config: Config, node_id: NodeId, shutdown: Shutdown) -> Result<(), ServerError> {
    let config = Arc::new(config);
    // Everything that can be wrong with the configuration fails here, before a port is bound.
    let link_settings = link::LinkSettings::from_config(&config)?;
    let store = open_store(&config).await?;
    let addr = format!("{}:{}", config.server.listen_address, config.server.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local: SocketAddr = listener.local_addr().map_err(ServerError::Serve)?;
    let node = Node {
        id: node_id,
        config: config.clone(),
        store,
        metrics: Arc::new(Metrics::new()),
        started: Instant::now(),
        link: link::LinkStatus::default(),
    };
    tracing::info!(
        node_id = %node.id,
        cluster_id = %config.application.cluster_id,
        store = node.store.backend(),
        "core node listening on http://{local}"
    );

    let token = shutdown.token();
    let app = router(ApiState::new(node.clone()));
    let serve = axum::serve(listener, app).with_graceful_shutdown({
        let token = token.clone();
        async move { token.cancelled().await }
    });
    // Stop accepting happens when the token fires: axum stops its accept loop and lets in-flight
    // requests finish; the grace deadline bounds how long we wait for them.
    let grace = config.server.shutdown_grace;
    let server = shutdown
        .tracker()
        .spawn(std::future::IntoFuture::into_future(serve));
    // Without HA this node is the cluster's only core node, so it holds the manager link for
    // as long as it runs (term null).
    let link_token = token.child_token();
    if let Some(settings) = link_settings {
        shutdown.tracker().spawn(link::run(
            node.clone(),
            settings,
            None,
            node.link.clone(),
            link_token.clone(),
        ));
    }
    token.cancelled().await;
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(ServerError::Serve(e)),
        Ok(Err(join)) => tracing::error!("API task failed: {join}"),
        Err(_) => tracing::warn!("in-flight API requests still running after {grace:?}; closing"),
    }
    if !shutdown.drain(grace).await {
        tracing::warn!("background tasks still running after {grace:?}; exiting anyway");
    }
    tracing::debug!("core node stopped");
    Ok(())
}
