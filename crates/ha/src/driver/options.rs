//! The node's HA settings as the driver takes them: read from the configuration
//! (`[application] cluster_id`, the HA part of `[connect]`), checked before anything starts, and
//! handed to the machine in milliseconds.

use std::time::Duration;

use crate::machine::MachineConfig;

/// Everything the driver needs to know about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaOptions {
    pub cluster_id: String,
    pub node_id: String,
    pub is_primary: bool,
    pub lease_ttl: Duration,
    pub preempt_delay: Duration,
    pub connect_grace: Duration,
    pub max_transitions: u32,
    pub probe_window: Duration,
    /// Probe period of the active node while it answers (refusals are re-checked faster).
    pub probe_interval: Duration,
    /// `host:port` of this node's API as other core nodes reach it.
    pub advertise_address: Option<String>,
    /// Software version published in the node record.
    pub version: String,
    /// The node's stable name (`[application] node_name`), published in the node record so
    /// the manager and the HA status can show it next to the id, which changes at every start.
    pub name: Option<String>,
    /// The working directory's state file: each lease is recorded there before a key is
    /// created with it, so that a restarted process can clear what a crashed one left.
    pub state_file: Option<crate::workdir::StateFile>,
}

impl HaOptions {
    /// Options from the node's configuration (`[application] cluster_id`, `[connect]`).
    pub fn from_config(
        config: &autogate_config::Config,
        node_id: &autogate_runtime::NodeId,
    ) -> Self {
        let c = &config.connect;
        HaOptions {
            cluster_id: config.application.cluster_id.clone(),
            node_id: node_id.as_str().to_owned(),
            is_primary: c.is_primary,
            lease_ttl: c.lease_ttl,
            preempt_delay: c.preempt_delay,
            connect_grace: c.connect_grace,
            max_transitions: c.max_transitions,
            probe_window: c.probe_window,
            // Probing a healthy active costs one loopback/LAN HTTP request; doing it at 2/3 of
            // the proof window keeps crash detection under a second (period + window).
            probe_interval: (c.probe_window * 2 / 3)
                .clamp(Duration::from_millis(100), Duration::from_secs(1)),
            advertise_address: c.advertise_address.as_ref().map(ToString::to_string),
            version: autogate_runtime::VERSION.to_owned(),
            name: Some(node_id.name().to_owned()),
            state_file: None,
        }
    }

    /// What the driver cannot start with.
    pub(super) fn check(&self) -> Result<(), HaError> {
        if self.cluster_id.is_empty() || self.cluster_id.contains('/') {
            return Err(HaError::InvalidOptions(format!(
                "cluster id '{}' must be non-empty and contain no '/'",
                self.cluster_id
            )));
        }
        if self.node_id.is_empty() {
            return Err(HaError::InvalidOptions("node id is empty".into()));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(HaError::InvalidOptions(format!(
                "lease TTL {:?} is below etcd's minimum of 1 s",
                self.lease_ttl
            )));
        }
        Ok(())
    }

    pub(super) fn machine_config(&self) -> MachineConfig {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        MachineConfig {
            node_id: self.node_id.clone(),
            is_primary: self.is_primary,
            lease_ttl_ms: ms(self.lease_ttl),
            preempt_delay_ms: ms(self.preempt_delay),
            connect_grace_ms: ms(self.connect_grace),
            max_transitions: self.max_transitions,
            probe_window_ms: ms(self.probe_window),
            probe_interval_ms: ms(self.probe_interval).max(1),
            advertise_address: self.advertise_address.clone(),
        }
    }
}

/// Errors starting the driver: the caller fixes its options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaError {
    #[error("invalid HA options: {0}")]
    InvalidOptions(String),
}
