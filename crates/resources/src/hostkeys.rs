//! The cluster's known SSH hosts: the host keys a checkout of an SSH repository trusts.
//!
//! They live in the cluster store beside the resources, one JSON document per host at
//! `/autogate/<cluster_id>/known-hosts/<name>` (`<name>` as in a known_hosts file: `host`, or
//! `[host]:port` off port 22), so that every core node and runner of a cluster trusts the same
//! keys and a key added once counts everywhere at the next checkout. [`Resources`] implements
//! [`KnownHostsSource`]: the checkout reads them when it fetches an SSH repository.
//!
//! Adding never silently changes trust: a host that already has a key of the same type with
//! another value is refused ([`HostKeyError::Conflict`]) unless the caller asks to replace the
//! host's keys. Host names and keys are checked strictly (no patterns, no markers, no line
//! breaks), because they become lines of the file ssh reads. Each write is one transaction,
//! compared against the host's document as read and wrapped by the HA fencing guard.

use std::future::Future;
use std::pin::Pin;

use autogate_exec::checkout::SshHost;
use autogate_exec::KnownHostsSource;
use autogate_store::{cluster_prefix, Compare, CompareOp, StoreError, Txn, TxnOp};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::store::{now, Resources};

/// How many times a write re-reads and retries when another write changed the host.
const MAX_ATTEMPTS: usize = 8;

/// The key types ssh can check a host with.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Why a known-hosts operation failed, shaped by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// A host name, key type or key is malformed: fix the argument named by `field`.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The host already has another key of this type: check the new key out of band, then
    /// replace the host's keys.
    #[error(
        "{host} already has another {key_type} key ({known}); if the new one is right, add it with --replace"
    )]
    Conflict {
        host: String,
        key_type: String,
        /// The fingerprint of the key already known.
        known: String,
    },
    /// No key is known for this host.
    #[error("no host key is known for {host}")]
    NotFound { host: String },
    /// A stored document cannot be read back.
    #[error("stored known host {host} is unreadable: {reason}")]
    Corrupt { host: String, reason: String },
    /// The transaction guard refused the write (this node is no longer the leader).
    #[error("write refused: this node no longer holds the right to write (fenced)")]
    Fenced,
    /// Other writers kept changing the host; retry later.
    #[error("the known host kept changing concurrently; gave up after {attempts} attempts")]
    Contended { attempts: usize },
    /// Asking the host for its keys failed (unreachable, no SSH server, `ssh-keyscan` missing):
    /// check the host, or add its key by hand.
    #[error("cannot scan {host} for host keys: {reason}")]
    Scan { host: String, reason: String },
    /// The store failed; retry later.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One trusted key of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostKey {
    /// The key type (`ssh-ed25519`, …).
    #[serde(rename = "type")]
    pub key_type: String,
    /// The public key, base64 as in a known_hosts file.
    pub key: String,
    /// When it was added (RFC 3339, UTC).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub added: Option<OffsetDateTime>,
}

impl HostKey {
    /// A checked key: a known type, base64 that decodes to a key blob of that type.
    pub fn new(key_type: &str, key: &str) -> Result<HostKey, HostKeyError> {
        let invalid = |field, reason: String| HostKeyError::Invalid { field, reason };
        if !KEY_TYPES.contains(&key_type) {
            return Err(invalid(
                "key type",
                format!("{key_type:?} is not one of {}", KEY_TYPES.join(", ")),
            ));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| invalid("key", "is not base64 (the key as known_hosts writes it, e.g. AAAAC3NzaC1lZDI1NTE5…; a SHA256 fingerprint is not enough)".into()))?;
        if blob_type(&blob) != Some(key_type.as_bytes()) {
            return Err(invalid("key", format!("is not a {key_type} public key")));
        }
        Ok(HostKey {
            key_type: key_type.to_owned(),
            key: key.to_owned(),
            added: None,
        })
    }

    /// `SHA256:<base64>`, as `ssh-keygen -l` and ssh's own messages show it.
    pub fn fingerprint(&self) -> String {
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .unwrap_or_default();
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
        )
    }
}

/// The type name at the start of an SSH public key blob (a length-prefixed string).
fn blob_type(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    blob.get(4..4 + len)
}

/// The keys a cluster trusts for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownHost {
    /// The host as a known_hosts file names it: `host` or `[host]:port`.
    pub host: String,
    pub keys: Vec<HostKey>,
}

/// What an add did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddOutcome {
    /// The host as a known_hosts file names it.
    pub host: String,
    /// Fingerprints of the keys newly trusted.
    pub added: Vec<String>,
    /// Fingerprints of the keys given that were already trusted.
    pub unchanged: Vec<String>,
    /// Fingerprints of the keys `replace` dropped.
    pub removed: Vec<String>,
}

/// A host as an operator names it — `host`, `host:port`, `[host]:port`, an IPv6 address, or
/// `[v6]:port` — as a known_hosts name (`host`, or `[host]:port` off port 22).
///
/// Refused: anything but letters, digits, `.`, `-`, `_` (and `:` in IPv6 addresses), a leading
/// `-`, and a port outside 1–65535. Patterns (`*`, `?`, `!`), lists (`,`), hashed names (`|`)
/// and markers (`@revoked`) would change what the known_hosts line means, so none can pass.
pub fn host_name(input: &str) -> Result<String, HostKeyError> {
    parse_host(input).map(|h| h.known_hosts_name())
}

/// [`host_name`]'s checks, giving the host and port apart.
pub fn parse_host(input: &str) -> Result<SshHost, HostKeyError> {
    let invalid = |reason: String| HostKeyError::Invalid {
        field: "host",
        reason,
    };
    let (host, port) =
        if let Some(rest) = input.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid(format!("{input:?} has no closing ']'")))?;
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(p.strip_prefix(':').ok_or_else(|| {
                        invalid(format!("{input:?}: expected ':<port>' after ']'"))
                    })?),
                ),
            }
        } else {
            match input.split_once(':') {
                // One ':' separates a port; more make an IPv6 address.
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                _ => (input, None),
            }
        };
    let port: u16 = match port {
        None => 22,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("{p:?} is not a port (1-65535)")))?,
    };
    let v6 = host.contains(':');
    if host.is_empty()
        || host.len() > 253
        || host.starts_with('-')
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (v6 && c == ':'))
    {
        return Err(invalid(format!(
            "{input:?} is not a host name or address (letters, digits, '.', '-', '_'; \
             host, host:port or [host]:port)"
        )));
    }
    Ok(SshHost {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// How long a scan waits for a host's answer.
const SCAN_TIMEOUT_SECS: u64 = 10;

/// Asks `host` (as [`host_name`] takes it) for its host keys with `ssh-keyscan`. What it
/// returns is only as trustworthy as the network path at that moment (trust on first use): the
/// caller shows the fingerprints so an operator can compare them with the server's own.
pub async fn scan(host: &str) -> Result<Vec<HostKey>, HostKeyError> {
    let h = parse_host(host)?;
    let name = h.known_hosts_name();
    let fail = |reason: String| HostKeyError::Scan {
        host: h.display_name(),
        reason,
    };
    let out =
        autogate_exec::checkout::keyscan(&h, std::time::Duration::from_secs(SCAN_TIMEOUT_SECS))
            .await
            .map_err(fail)?;
    let mut keys: Vec<HostKey> = Vec::new();
    for line in out.stdout.lines() {
        let mut words = line.split_whitespace();
        let (Some(n), Some(t), Some(k)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if n.starts_with('#') || !n.eq_ignore_ascii_case(&name) {
            continue;
        }
        // Types this list does not know are skipped; those it knows must be well formed.
        if let Ok(k) = HostKey::new(t, k) {
            if !keys.iter().any(|o| o.key_type == k.key_type) {
                keys.push(k);
            }
        }
    }
    if keys.is_empty() {
        let why = out
            .stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("no SSH server answered")
            .to_owned();
        return Err(fail(why));
    }
    Ok(keys)
}

/// A known_hosts name as an operator types it (`host`, `host:port`, `[v6]:port`).
pub fn display_name(known_hosts_name: &str) -> String {
    if let Some(rest) = known_hosts_name.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            let port = p.parse().unwrap_or(22);
            return SshHost {
                host: h.to_owned(),
                port,
            }
            .display_name();
        }
    }
    known_hosts_name.to_owned()
}

impl Resources {
    /// `/autogate/<cluster_id>/known-hosts/`.
    pub fn known_hosts_prefix(&self) -> String {
        format!("{}known-hosts/", cluster_prefix(self.cluster_id()))
    }

    fn known_host_key(&self, name: &str) -> String {
        format!("{}{name}", self.known_hosts_prefix())
    }

    /// Every known host, sorted by name.
    pub async fn known_hosts(&self) -> Result<Vec<KnownHost>, HostKeyError> {
        let prefix = self.known_hosts_prefix();
        self.store()
            .list(&prefix)
            .await?
            .into_iter()
            .map(|kv| decode(kv.key.strip_prefix(&prefix).unwrap_or(&kv.key), &kv.value))
            .collect()
    }

    /// The known hosts as the lines of a known_hosts file.
    pub async fn known_hosts_file(&self) -> Result<String, HostKeyError> {
        let mut out = String::new();
        for h in self.known_hosts().await? {
            for k in &h.keys {
                // Checked again: a document written straight into the store must not add
                // anything but one plain line per key.
                if host_name(&display_name(&h.host)).ok().as_deref() == Some(h.host.as_str())
                    && HostKey::new(&k.key_type, &k.key).is_ok()
                {
                    out.push_str(&format!("{} {} {}\n", h.host, k.key_type, k.key));
                }
            }
        }
        Ok(out)
    }

    /// Trusts `keys` for `host` (as [`host_name`] takes it). Without `replace`, a key of a type
    /// the host already has with another value is refused; with it, the host's keys become
    /// exactly `keys`.
    pub async fn add_host_keys(
        &self,
        host: &str,
        keys: Vec<HostKey>,
        replace: bool,
    ) -> Result<AddOutcome, HostKeyError> {
        let name = host_name(host)?;
        if keys.is_empty() {
            return Err(HostKeyError::Invalid {
                field: "key",
                reason: "no key to add".into(),
            });
        }
        let key = self.known_host_key(&name);
        self.write_host(&key, |current| {
            let mut outcome = AddOutcome {
                host: name.clone(),
                added: Vec::new(),
                unchanged: Vec::new(),
                removed: Vec::new(),
            };
            let mut next = match (current, replace) {
                (Some(c), false) => c.keys.clone(),
                _ => Vec::new(),
            };
            for k in &keys {
                if let Some(known) = next.iter().find(|n| n.key_type == k.key_type) {
                    if known.key == k.key {
                        outcome.unchanged.push(k.fingerprint());
                        continue;
                    }
                    return Err(HostKeyError::Conflict {
                        host: display_name(&name),
                        key_type: k.key_type.clone(),
                        known: known.fingerprint(),
                    });
                }
                let mut k = k.clone();
                let kept = current.and_then(|c| {
                    c.keys
                        .iter()
                        .find(|o| o.key == k.key && o.key_type == k.key_type)
                });
                k.added = Some(kept.and_then(|o| o.added).unwrap_or_else(now));
                match kept {
                    Some(_) => outcome.unchanged.push(k.fingerprint()),
                    None => outcome.added.push(k.fingerprint()),
                }
                next.push(k);
            }
            if let Some(c) = current {
                outcome.removed = c
                    .keys
                    .iter()
                    .filter(|o| !next.iter().any(|n| n.key == o.key))
                    .map(HostKey::fingerprint)
                    .collect();
            }
            let changed = !outcome.added.is_empty() || !outcome.removed.is_empty();
            let doc = KnownHost {
                host: name.clone(),
                keys: next,
            };
            Ok((changed.then_some(Some(doc)), outcome))
        })
        .await
    }

    /// Forgets every key of `host`.
    pub async fn delete_host_keys(&self, host: &str) -> Result<(), HostKeyError> {
        let name = host_name(host)?;
        let key = self.known_host_key(&name);
        self.write_host(&key, |current| match current {
            None => Err(HostKeyError::NotFound {
                host: display_name(&name),
            }),
            Some(_) => Ok((Some(None), ())),
        })
        .await
    }

    /// Reads one host's document, lets `decide` say what to write (`None`: nothing; `Some(None)`:
    /// delete), and commits only if the document did not move meanwhile.
    async fn write_host<T>(
        &self,
        key: &str,
        mut decide: impl FnMut(
            Option<&KnownHost>,
        ) -> Result<(Option<Option<KnownHost>>, T), HostKeyError>,
    ) -> Result<T, HostKeyError> {
        let name = key.rsplit('/').next().unwrap_or(key).to_owned();
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let kv = self.store().get(key).await?;
            let revision = kv.as_ref().map(|kv| kv.mod_revision);
            if last == Some(revision) && self.is_guarded() {
                return Err(HostKeyError::Fenced);
            }
            last = Some(revision);
            let current = kv.map(|kv| decode(&name, &kv.value)).transpose()?;
            let (write, out) = decide(current.as_ref())?;
            let Some(write) = write else {
                return Ok(out);
            };
            let compare = match revision {
                Some(r) => Compare::mod_revision(key.to_owned(), CompareOp::Equal, r),
                None => Compare::missing(key.to_owned()),
            };
            let op = match write {
                Some(doc) => TxnOp::put(
                    key.to_owned(),
                    serde_json::to_vec(&doc).map_err(|e| HostKeyError::Corrupt {
                        host: name.clone(),
                        reason: e.to_string(),
                    })?,
                ),
                None => TxnOp::delete(key.to_owned()),
            };
            let txn = self.guarded(Txn::new().when([compare]).and_then([op]));
            if self.store().txn(txn).await?.succeeded {
                return Ok(out);
            }
        }
        Err(HostKeyError::Contended {
            attempts: MAX_ATTEMPTS,
        })
    }
}

fn decode(name: &str, raw: &[u8]) -> Result<KnownHost, HostKeyError> {
    serde_json::from_slice(raw).map_err(|e| HostKeyError::Corrupt {
        host: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Checkouts read the known hosts of the cluster these resources belong to.
impl KnownHostsSource for Resources {
    fn known_hosts(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move { self.known_hosts_file().await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIP+/1mWvYSVnEIwmYOIbbWpNQY31RCLVIoKohQ2O//ej";

    #[test]
    fn host_names() {
        assert_eq!(host_name("git.example.com").unwrap(), "git.example.com");
        assert_eq!(host_name("Git.Example.com:22").unwrap(), "git.example.com");
        assert_eq!(host_name("127.0.0.1:2222").unwrap(), "[127.0.0.1]:2222");
        assert_eq!(host_name("[127.0.0.1]:2222").unwrap(), "[127.0.0.1]:2222");
        assert_eq!(host_name("::1").unwrap(), "::1");
        assert_eq!(host_name("[::1]:2222").unwrap(), "[::1]:2222");
        for bad in [
            "",
            "*",
            "*.example.com",
            "a,b",
            "|1|abc",
            "@revoked",
            "-oProxyCommand=x",
            "host name",
            "host\nevil ssh-ed25519 AAAA",
            "h:0",
            "h:99999",
            "[h",
        ] {
            assert!(host_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(display_name("[127.0.0.1]:2222"), "127.0.0.1:2222");
        assert_eq!(display_name("[::1]:2222"), "[::1]:2222");
    }

    /// Add, conflict, replace, delete on a real (in-memory) store, and the file a checkout gets.
    #[tokio::test]
    async fn adding_never_silently_changes_trust() {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .unwrap();
        let r = Resources::new(store, "c1");
        let a = HostKey::new("ssh-ed25519", ED25519).unwrap();
        // Another ed25519 key: the same blob with its last key byte changed.
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(ED25519)
            .unwrap();
        if let Some(b) = blob.last_mut() {
            *b ^= 1;
        }
        let other = base64::engine::general_purpose::STANDARD.encode(&blob);
        let b = HostKey::new("ssh-ed25519", &other).unwrap();

        let o = r
            .add_host_keys("git.example.com:2222", vec![a.clone()], false)
            .await
            .unwrap();
        assert_eq!(
            (o.added.len(), o.host.as_str()),
            (1, "[git.example.com]:2222")
        );
        let o = r
            .add_host_keys("[git.example.com]:2222", vec![a.clone()], false)
            .await
            .unwrap();
        assert_eq!((o.added.len(), o.unchanged.len()), (0, 1));
        let e = r
            .add_host_keys("git.example.com:2222", vec![b.clone()], false)
            .await
            .unwrap_err();
        assert!(matches!(e, HostKeyError::Conflict { .. }), "{e}");
        assert!(e.to_string().contains("--replace"), "{e}");
        assert_eq!(
            r.known_hosts_file().await.unwrap(),
            format!("[git.example.com]:2222 ssh-ed25519 {ED25519}\n")
        );
        let o = r
            .add_host_keys("git.example.com:2222", vec![b.clone()], true)
            .await
            .unwrap();
        assert_eq!((o.added.len(), o.removed.len()), (1, 1));
        assert_eq!(
            r.known_hosts_file().await.unwrap(),
            format!("[git.example.com]:2222 ssh-ed25519 {other}\n")
        );
        r.delete_host_keys("git.example.com:2222").await.unwrap();
        assert_eq!(r.known_hosts_file().await.unwrap(), "");
        assert!(matches!(
            r.delete_host_keys("git.example.com:2222").await,
            Err(HostKeyError::NotFound { .. })
        ));
    }

    /// A document written straight into the store cannot add a pattern or a second line.
    #[tokio::test]
    async fn a_forged_document_adds_no_line() {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .unwrap();
        let r = Resources::new(store.clone(), "c1");
        let doc =
            serde_json::json!({"host": "*", "keys": [{"type": "ssh-ed25519", "key": ED25519}]});
        store
            .put(
                &format!("{}x", r.known_hosts_prefix()),
                doc.to_string().into_bytes(),
                None,
            )
            .await
            .unwrap();
        let doc = serde_json::json!({"host": "h", "keys": [{"type": "ssh-ed25519", "key": format!("{ED25519}\n* ssh-ed25519 {ED25519}")}]});
        store
            .put(
                &format!("{}h", r.known_hosts_prefix()),
                doc.to_string().into_bytes(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.known_hosts_file().await.unwrap(), "");
    }

    #[test]
    fn keys_are_checked() {
        let k = HostKey::new("ssh-ed25519", ED25519).unwrap();
        assert!(k.fingerprint().starts_with("SHA256:"));
        assert!(HostKey::new("ssh-rsa", ED25519).is_err());
        assert!(HostKey::new("ssh-dss", ED25519).is_err());
        assert!(HostKey::new("ssh-ed25519", "SHA256:abc").is_err());
        assert!(HostKey::new("ssh-ed25519", "AAAA\nx").is_err());
    }
}
