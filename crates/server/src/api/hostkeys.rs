//! The cluster's known SSH hosts (`autogate hostkeys …` in client mode): list, add, scan and
//! delete the host keys that checkouts of SSH repositories trust.
//!
//! Adding a key is a trust decision for every node of the cluster, so the writes are forwarded to
//! the active node (they go through its fencing) and logged with the host and the fingerprints.
//! A scan runs `ssh-keyscan` from the active node, i.e. from where checkouts will connect, and
//! answers with the fingerprints so the operator can compare them with the server's own.

use autogate_resources::hostkeys::{self, AddOutcome, HostKey, HostKeyError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::json_body;
use super::{ApiError, ApiResult, ApiState};

/// One trusted key of one host.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct HostKeyView {
    /// The host as `autogate hostkeys add` takes it (`host` or `host:port`).
    host: String,
    /// The key type (`ssh-ed25519`, …).
    #[serde(rename = "type")]
    key_type: String,
    /// The public key, base64 as in a known_hosts file.
    key: String,
    /// `SHA256:…`, as ssh shows it.
    fingerprint: String,
    /// When it was added (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    added: Option<String>,
}

/// `GET /api/v1/hostkeys`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct HostKeyList {
    hostkeys: Vec<HostKeyView>,
}

/// `POST /api/v1/hostkeys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AddHostKey {
    /// `host`, `host:port` or `[host]:port`.
    host: String,
    /// The key type (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …).
    #[serde(rename = "type")]
    key_type: String,
    /// The public key, base64 as in a known_hosts file.
    key: String,
    /// Replace every key known for the host (needed when it already has another key of this
    /// type).
    #[serde(default)]
    replace: bool,
}

/// `POST /api/v1/hostkeys/scan`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ScanHosts {
    /// Hosts to ask for their keys (`host`, `host:port` or `[host]:port`).
    hosts: Vec<String>,
    /// Replace the keys known for each host with the ones it offers now.
    #[serde(default)]
    replace: bool,
}

/// What an add or a scan did to one host.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct HostKeysAdded {
    /// The host as `autogate hostkeys add` takes it.
    host: String,
    /// Fingerprints of the keys newly trusted.
    added: Vec<String>,
    /// Fingerprints of the keys given that were already trusted.
    unchanged: Vec<String>,
    /// Fingerprints of the keys `replace` dropped.
    removed: Vec<String>,
}

/// `POST /api/v1/hostkeys/scan`'s answer: one entry per host, in the order asked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct ScanAnswer {
    hosts: Vec<HostKeysAdded>,
}

fn api_error(e: HostKeyError) -> ApiError {
    let status = match &e {
        HostKeyError::Invalid { .. } | HostKeyError::Scan { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        HostKeyError::Conflict { .. } => StatusCode::CONFLICT,
        HostKeyError::NotFound { .. } => StatusCode::NOT_FOUND,
        HostKeyError::Fenced | HostKeyError::Contended { .. } | HostKeyError::Store(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        HostKeyError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

fn added(o: AddOutcome) -> HostKeysAdded {
    HostKeysAdded {
        host: hostkeys::display_name(&o.host),
        added: o.added,
        unchanged: o.unchanged,
        removed: o.removed,
    }
}

fn log(o: &HostKeysAdded, how: &str) {
    if !o.added.is_empty() || !o.removed.is_empty() {
        tracing::info!(
            host = %o.host,
            added = %o.added.join(","),
            removed = %o.removed.join(","),
            "known host keys changed ({how})"
        );
    }
}

pub(super) async fn list(State(s): State<ApiState>) -> ApiResult<Json<HostKeyList>> {
    let hosts = s
        .node
        .automation
        .resources()
        .known_hosts()
        .await
        .map_err(api_error)?;
    let mut out = Vec::new();
    for h in hosts {
        for k in h.keys {
            out.push(HostKeyView {
                host: hostkeys::display_name(&h.host),
                fingerprint: k.fingerprint(),
                added: k.added.and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                }),
                key_type: k.key_type,
                key: k.key,
            });
        }
    }
    Ok(Json(HostKeyList { hostkeys: out }))
}

pub(super) async fn add(
    State(s): State<ApiState>,
    body: Result<Json<AddHostKey>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<HostKeysAdded>)> {
    let b = json_body("host key body", body)?;
    let key = HostKey::new(&b.key_type, &b.key).map_err(api_error)?;
    let outcome = s
        .node
        .automation
        .resources()
        .add_host_keys(&b.host, vec![key], b.replace)
        .await
        .map_err(api_error)?;
    let o = added(outcome);
    log(&o, "add");
    Ok((StatusCode::CREATED, Json(o)))
}

pub(super) async fn scan(
    State(s): State<ApiState>,
    body: Result<Json<ScanHosts>, JsonRejection>,
) -> ApiResult<Json<ScanAnswer>> {
    let b = json_body("scan body", body)?;
    if b.hosts.is_empty() {
        return Err(api_error(HostKeyError::Invalid {
            field: "hosts",
            reason: "name at least one host".into(),
        }));
    }
    // Every host is scanned before anything is written: one unreachable host adds nothing.
    let mut scanned = Vec::new();
    for h in &b.hosts {
        scanned.push((h, hostkeys::scan(h).await.map_err(api_error)?));
    }
    let mut out = Vec::new();
    for (h, keys) in scanned {
        let o = added(
            s.node
                .automation
                .resources()
                .add_host_keys(h, keys, b.replace)
                .await
                .map_err(api_error)?,
        );
        log(&o, "scan");
        out.push(o);
    }
    Ok(Json(ScanAnswer { hosts: out }))
}

pub(super) async fn delete(
    State(s): State<ApiState>,
    Path(host): Path<String>,
) -> ApiResult<StatusCode> {
    s.node
        .automation
        .resources()
        .delete_host_keys(&host)
        .await
        .map_err(api_error)?;
    tracing::info!(%host, "known host keys deleted");
    Ok(StatusCode::NO_CONTENT)
}
