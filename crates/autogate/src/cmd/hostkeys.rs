//! `autogate hostkeys add|scan|list|delete`: the cluster's known SSH hosts, the host keys that
//! checkouts of SSH repositories trust (strictly: an unknown or changed key fails the checkout).
//!
//! Like the resource commands, they work in-process on the embedded store in local mode and
//! through the core node's API in client mode (where a scan runs on the active node, i.e. from
//! where checkouts connect). Every answer shows the keys' SHA256 fingerprints, so that a scanned
//! key — trusted on first use — can be compared with the server's own (`ssh-keygen -lf
//! /etc/ssh/ssh_host_ed25519_key.pub` on it).

use autogate_resources::hostkeys::{self, AddOutcome, HostKey, HostKeyError};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::backend::{self, Backend};
use super::term::outln;
use crate::api::UNAVAILABLE;
use crate::cli::Global;
use crate::exit::{Failure, FAILURE, USAGE};

#[derive(Debug, Args)]
pub struct HostkeysArgs {
    #[command(subcommand)]
    pub command: HostkeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum HostkeysCommand {
    /// Trust a host key: HOST (host, host:port or [host]:port), its type and the base64 key as
    /// in a known_hosts file or the server's /etc/ssh/ssh_host_*_key.pub.
    Add {
        host: String,
        /// ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa, sk-…
        keytype: String,
        /// The public key (base64), the fingerprint alone is not enough.
        key: String,
        /// Replace every key known for the host (needed when it has another key of this type).
        #[arg(long)]
        replace: bool,
    },
    /// Ask hosts for their keys (ssh-keyscan) and trust them; check the fingerprints printed.
    Scan {
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Replace the keys known for each host with the ones it offers now.
        #[arg(long)]
        replace: bool,
    },
    /// List the trusted host keys.
    List,
    /// Forget every key of a host.
    Delete { host: String },
}

fn failure(e: HostKeyError) -> Failure {
    let code = match &e {
        HostKeyError::Invalid { .. } => USAGE,
        HostKeyError::Fenced | HostKeyError::Contended { .. } | HostKeyError::Store(_) => {
            UNAVAILABLE
        }
        HostKeyError::Conflict { .. }
        | HostKeyError::NotFound { .. }
        | HostKeyError::Scan { .. }
        | HostKeyError::Corrupt { .. } => FAILURE,
    };
    Failure::new(code, e)
}

/// The API's shape of what an add did, for the local side too.
fn outcome_json(o: AddOutcome) -> Value {
    json!({
        "host": hostkeys::display_name(&o.host),
        "added": o.added,
        "unchanged": o.unchanged,
        "removed": o.removed,
    })
}

pub fn run(global: &Global, args: HostkeysArgs) -> Result<(), Failure> {
    let config = backend::load(global)?;
    let rt = super::runtime()?;
    let answer = rt.block_on(async {
        let b = Backend::open(&config, global).await?;
        match (&b, &args.command) {
            (
                Backend::Local(a),
                HostkeysCommand::Add {
                    host,
                    keytype,
                    key,
                    replace,
                },
            ) => {
                let k = HostKey::new(keytype, key).map_err(failure)?;
                let o = a
                    .resources()
                    .add_host_keys(host, vec![k], *replace)
                    .await
                    .map_err(failure)?;
                Ok(outcome_json(o))
            }
            (Backend::Local(a), HostkeysCommand::Scan { hosts, replace }) => {
                // Every host first: one unreachable host adds nothing.
                let mut scanned = Vec::new();
                for h in hosts {
                    scanned.push((h, hostkeys::scan(h).await.map_err(failure)?));
                }
                let mut out = Vec::new();
                for (h, keys) in scanned {
                    let o = a
                        .resources()
                        .add_host_keys(h, keys, *replace)
                        .await
                        .map_err(failure)?;
                    out.push(outcome_json(o));
                }
                Ok(json!({ "hosts": out }))
            }
            (Backend::Local(a), HostkeysCommand::List) => {
                let mut out = Vec::new();
                for h in a.resources().known_hosts().await.map_err(failure)? {
                    for k in &h.keys {
                        out.push(json!({
                            "host": hostkeys::display_name(&h.host),
                            "type": k.key_type,
                            "key": k.key,
                            "fingerprint": k.fingerprint(),
                            // The record's own serialization writes the time as RFC 3339.
                            "added": serde_json::to_value(k).unwrap_or_default()["added"],
                        }));
                    }
                }
                Ok(json!({ "hostkeys": out }))
            }
            (Backend::Local(a), HostkeysCommand::Delete { host }) => {
                a.resources()
                    .delete_host_keys(host)
                    .await
                    .map_err(failure)?;
                Ok(Value::Null)
            }
            (
                Backend::Remote(c),
                HostkeysCommand::Add {
                    host,
                    keytype,
                    key,
                    replace,
                },
            ) => {
                let body = json!({ "host": host, "type": keytype, "key": key, "replace": replace });
                c.call(Method::POST, "/api/v1/hostkeys", Some(&body)).await
            }
            (Backend::Remote(c), HostkeysCommand::Scan { hosts, replace }) => {
                let body = json!({ "hosts": hosts, "replace": replace });
                c.call(Method::POST, "/api/v1/hostkeys/scan", Some(&body))
                    .await
            }
            (Backend::Remote(c), HostkeysCommand::List) => {
                c.call(Method::GET, "/api/v1/hostkeys", None).await
            }
            (Backend::Remote(c), HostkeysCommand::Delete { host }) => {
                let path = format!("/api/v1/hostkeys/{}", backend::segment(host));
                c.call(Method::DELETE, &path, None)
                    .await
                    .map(|_| Value::Null)
            }
        }
    })?;
    if global.raw {
        if !answer.is_null() {
            outln!("{answer}");
        }
        return Ok(());
    }
    match &args.command {
        HostkeysCommand::Add { .. } => print_outcome(&answer),
        HostkeysCommand::Scan { .. } => {
            for h in answer["hosts"].as_array().into_iter().flatten() {
                print_outcome(h);
            }
        }
        HostkeysCommand::List => print_list(&answer),
        HostkeysCommand::Delete { host } => outln!("Deleted the host keys of {host}"),
    }
    Ok(())
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn print_outcome(v: &Value) {
    let host = v["host"].as_str().unwrap_or_default();
    for f in strings(&v["added"]) {
        outln!("Added host key {f} for {host}");
    }
    for f in strings(&v["unchanged"]) {
        outln!("Already known: host key {f} for {host}");
    }
    for f in strings(&v["removed"]) {
        outln!("Removed host key {f} of {host}");
    }
}

fn print_list(v: &Value) {
    let rows = v["hostkeys"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        outln!("No host keys are known: SSH repositories are refused until their host's key is added (autogate hostkeys add|scan)");
        return;
    }
    outln!("{:<32} {:<22} {:<52} ADDED", "HOST", "TYPE", "FINGERPRINT");
    for r in rows {
        outln!(
            "{:<32} {:<22} {:<52} {}",
            r["host"].as_str().unwrap_or_default(),
            r["type"].as_str().unwrap_or_default(),
            r["fingerprint"].as_str().unwrap_or_default(),
            r["added"].as_str().unwrap_or("-")
        );
    }
}
