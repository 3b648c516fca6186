//! Errors of [`crate::Automation`], classified by what the caller does next; the API maps
//! [`ErrorClass`] to an HTTP status, the CLI to an exit code, the manager link to a JSON-RPC
//! error with `data`.

use autogate_exec::ExecError;
use autogate_resources::model::Kind;
use autogate_resources::{ImportError, ResourceError};
use serde_json::{json, Value};

/// Why an automation request failed.
#[derive(Debug, thiserror::Error)]
pub enum AutomationError {
    /// The request itself is malformed (unknown field, wrong type).
    #[error("{0}")]
    BadRequest(String),
    #[error("{kind} {name} does not exist")]
    NotFound { kind: Kind, name: String },
    #[error("service {name} is {actual}, not {asked}")]
    WrongType {
        name: String,
        actual: String,
        asked: String,
    },
    #[error("{service_type} services are disabled on this node ([features] {flag} = false)")]
    FeatureDisabled { service_type: String, flag: String },
    #[error("no secrets key file is configured: set [secrets] encrypt_key_file (GATEWAY_SECRETS_ENCRYPT_KEY_FILE), the same file on every node of the cluster")]
    KeyMissing,
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// What kind of failure, for status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller sent something wrong (400/422, exit 64).
    Invalid,
    NotFound,
    /// Exists already, or is still used (409).
    Conflict,
    /// Disabled by configuration (403).
    Forbidden,
    /// Not this node's to do now: fenced, store unavailable, contended (503).
    Unavailable,
    /// The node is misconfigured for this request (key file) (500, exit 78).
    Config,
    /// Anything else (500).
    Internal,
}

impl AutomationError {
    pub fn class(&self) -> ErrorClass {
        use ResourceError as R;
        match self {
            AutomationError::BadRequest(_) | AutomationError::WrongType { .. } => {
                ErrorClass::Invalid
            }
            AutomationError::NotFound { .. } => ErrorClass::NotFound,
            AutomationError::FeatureDisabled { .. } => ErrorClass::Forbidden,
            AutomationError::KeyMissing | AutomationError::Key(_) => ErrorClass::Config,
            AutomationError::Resource(r) | AutomationError::Import(ImportError::Resource(r)) => {
                match r {
                    R::Invalid { .. } | R::MissingReference { .. } => ErrorClass::Invalid,
                    R::NotFound { .. } => ErrorClass::NotFound,
                    R::AlreadyExists { .. } | R::InUse { .. } => ErrorClass::Conflict,
                    R::Fenced | R::Contended { .. } | R::Store(_) => ErrorClass::Unavailable,
                    R::Secret(_) | R::KeyRequired { .. } => ErrorClass::Config,
                    R::Corrupt { .. } | R::Encode(_) => ErrorClass::Internal,
                }
            }
            AutomationError::Import(_) => ErrorClass::Invalid,
            AutomationError::Exec(e) => match e {
                ExecError::InvalidInputs { .. }
                | ExecError::InvalidDecorator { .. }
                | ExecError::InvalidService { .. }
                | ExecError::PathOutside { .. }
                | ExecError::NotFound { .. } => ErrorClass::Invalid,
                ExecError::Cancelled => ErrorClass::Unavailable,
                ExecError::ServiceUser(_) => ErrorClass::Config,
                _ => ErrorClass::Internal,
            },
        }
    }

    /// Structured detail for API bodies and JSON-RPC `data`: the violations of invalid inputs.
    pub fn detail(&self) -> Option<Value> {
        match self {
            AutomationError::Exec(ExecError::InvalidInputs { violations }) => {
                Some(json!({ "violations": violations }))
            }
            _ => None,
        }
    }
}
