//! Automation resources of a cluster: repositories, services, decorators, secrets,
//! executable-objects and registries.
//!
//! * [`crypto`] — the cluster key file and the sealed form of secret values (AES-256-GCM, PBKDF2);
//! * [`model`] — the resource records, their validation, and the mapping of a service onto the
//!   execution engine's [`autogate_exec::Service`];
#![forbid(unsafe_code)]

pub mod crypto;
pub mod model;

pub use crypto::{KeyFile, KeyFileError, SecretError};
pub use model::{
    AnsibleRuntime, CredentialError, Decorator, ExecutableObject, Kind, Meta, ModelError, Registry,
    RegistryType, Repository, Resource, Secret, SecretRef, SecretValue, Service,
};
