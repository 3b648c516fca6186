//! Maps the `[store]` section onto the store's own options, so the store crate stays free of the
//! configuration format (and runners and the manager can share the mapping).

use std::sync::Arc;

use autogate_config::{BackendKind, Config};
use autogate_store::{EtcdOptions, EtcdTls, Store, StoreError, StoreOptions};

/// The store options a node with this configuration uses.
pub fn store_options(config: &Config) -> StoreOptions {
    let s = &config.store;
    match s.backend {
        BackendKind::Memory => StoreOptions::Memory,
        BackendKind::Local => StoreOptions::Local {
            path: config.application.working_dir.join("gateway.db"),
        },
        BackendKind::Etcd => {
            let tls = s.etcd_use_tls.then(|| EtcdTls {
                ca_file: s.etcd_ca_certificate_file.clone(),
                identity: if s.etcd_client_cert_auth {
                    s.etcd_certificate_file
                        .clone()
                        .zip(s.etcd_private_key_file.clone())
                } else {
                    None
                },
            });
            StoreOptions::Etcd(EtcdOptions {
                endpoints: s.etcd_hosts.iter().map(ToString::to_string).collect(),
                tls,
                dial_timeout: s.etcd_dial_timeout,
                request_timeout: s.etcd_request_timeout,
            })
        }
    }
}

/// Open the configured store, creating the working directory for the local backend.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    if config.store.backend == BackendKind::Local {
        // The store file keeps password hashes and sealed secrets: the directory is this
        // user's only (tightened when an older version left it open) — 0711 with a service
        // user, who passes through it to its runs but cannot list it.
        let dir = &config.application.working_dir;
        let traversable = config.server.service_user.is_some();
        match autogate_runtime::private::node_dir(dir, traversable) {
            Ok(autogate_runtime::private::DirState::Tightened(old)) => tracing::warn!(
                "working directory {} was mode {old:o}, readable by other users: it is {} now",
                dir.display(),
                if traversable { "0711" } else { "0700" }
            ),
            Ok(_) => {}
            Err(e) => {
                return Err(StoreError::Config(format!(
                    "cannot create working directory {}: {e}",
                    dir.display()
                )))
            }
        }
    }
    autogate_store::open(store_options(config)).await
}
