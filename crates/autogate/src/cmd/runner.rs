//! `autogate runner`: an execution-only node. It needs no listening port: it registers in the
//! cluster's etcd, takes the jobs the active core node assigns to it, and drains on SIGTERM.

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
}

impl super::DaemonError for RunnerRoleError {
    fn exit_code(&self) -> i32 {
        match self {
            RunnerRoleError::Store(autogate_store::StoreError::Config(_)) => 64,
            RunnerRoleError::Store(autogate_store::StoreError::Unavailable(_)) => 69,
            _ => 1,
        }
    }
}

pub fn run(global: &Global) -> Result<(), Failure> {
    super::daemon(global, Role::Runner, |config, shutdown| {
        run_role(config, NodeId::generate(), shutdown)
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
        host: hostname(),
        capacity,
        labels: config
            .runner
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        lease_ttl: config.runner.lease_ttl,
        drain_grace: config.runner.drain_grace,
    }
}

async fn run_role(
    config: Config,
    node_id: NodeId,
    shutdown: Shutdown,
) -> Result<(), RunnerRoleError> {
    let store = autogate_server::open_store(&config).await?;
    let mut automation = Automation::from_config(&config, store.clone());
    if let Some(dir) = &config.runner.runtime_data_dir {
        let mut engine = autogate_exec::EngineConfig::new(dir.clone());
        engine.output_limit = automation.engine().config().output_limit;
        automation = automation.with_engine(autogate_exec::Engine::new(engine));
    }
    let opts = options(&config, &node_id);
    tracing::info!(
        node_id = %node_id,
        cluster_id = %config.application.cluster_id,
        "runner starting: capacity {}, labels {:?}",
        opts.capacity,
        opts.labels
    );
    let token = shutdown.token();
    autogate_jobs::runner::run(store, automation, opts, token).await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}
