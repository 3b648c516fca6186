//! Automation resources of a cluster: repositories, services, decorators, secrets,
//! executable-objects and registries.
//!
//! * [`crypto`] — the cluster key file and the sealed form of secret values (AES-256-GCM, PBKDF2);
//! * [`hostkeys`] — the cluster's known SSH hosts, which checkouts of SSH repositories trust;
//! * [`model`] — the resource records, their validation, and the mapping of a service onto the
//!   execution engine's [`autogate_exec::Service`];
//! * `reseal` — sealing again, bound to their names, the secret values of earlier versions;
//! * `staged` — writes larger than one store transaction (big imports on etcd): staged, committed
//!   by one small transaction, visible all at once;
//! * [`store`] — the records in the cluster store under `/autogate/<cluster_id>/resources/`, with
//!   reference checks, every write one transaction (or one staged commit);
//! * [`yaml`] — the product family's kebab-case import/export file (YAML or JSON), all-or-nothing.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod hostkeys;
pub mod model;
mod reseal;
mod staged;
pub mod store;
pub mod yaml;

pub use crypto::{KeyFile, KeyFileError, SecretError};
pub use hostkeys::{HostKey, HostKeyError, KnownHost};
pub use model::{
    AnsibleRuntime, CredentialError, Decorator, ExecutableObject, Kind, Meta, ModelError, Registry,
    RegistryType, Repository, Resource, Secret, SecretRef, SecretValue, Service,
};
pub use store::{ResourceError, Resources, TxnGuard};
pub use yaml::{Document, ImportError, ImportItem, ImportMode, ImportOutcome, ImportReport};
