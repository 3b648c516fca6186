//! Operator accounts of a core node: users with argon2id password hashes and the API keys that
//! `POST /api/v1/login` hands out, both kept in the cluster store so that every core node of a
//! cluster accepts the same keys.
//!
//! Layout: `/autogate/<cluster_id>/users/<name>` holds a user (PHC hash, created and last-login
//! times); `/autogate/<cluster_id>/api-keys/<sha256 hex of the key>` holds a key's user and
//! expiry. The key itself is never stored nor logged: whoever reads the store learns only
//! digests, which cannot be presented as keys.
//!
//! The first core node to start in a cluster without users creates `admin`, with the password
//! from `[server] admin_password_file` or a random temporary one printed once to the log, in a
//! create-if-absent transaction so two nodes starting together never both create it.
//!
//! A user created with a temporary password (`create user --temp-password`), or whose password
//! an admin set as temporary, must choose a new one at its next login: that login checks the
//! password as usual but issues no key, answering [`LoginError::PasswordChangeRequired`]; a
//! login that also gives a new password (`autogate login` asks for it) changes it and gets
//! a key in the same transaction. The same login with a new password is how any user changes
//! its own password from the command line (`login --change-password`): the change revokes
//! every key of the user, and the new key is issued after that.
//!
//! [`Auth::recover_admin`] is `server --recover-admin-user`: run on the store directly while
//! this machine's core node is stopped, it gives `admin` a new password and the admin role
//! (creating it if it was deleted) and revokes its keys.
//!
//! Each user has a [`Role`]: `admin` is an admin, users are created as operators unless told
//! otherwise. A record written by an earlier version has no role (every user was a superuser
//! then): `admin` stays an admin, every other such user is read as an operator — unless the
//! cluster would then have no admin at all (its `admin` was deleted), in which case they stay
//! admins, so an upgrade never leaves a cluster that nobody can manage. Every password check
//! goes through the [`LoginGuard`] (bounded hashing slots, backoff per user and per address).
//! Expired keys are collected after successful logins, a bounded number per pass.

mod login_guard;

pub use login_guard::{loggable, Admission, LoginGuard, Refusal, Source, BUSY_RETRY_AFTER};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use autogate_store::{cluster_prefix, Compare, CompareOp, Store, StoreError, Txn, TxnOp};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The user the first start creates.
pub const ADMIN: &str = "admin";
/// Shortest password accepted (the family asks for more than eight characters).
pub const MIN_PASSWORD_LEN: usize = 8;
/// How long a key check may wait for the store before a recent successful check of the same
/// key is trusted instead (a node cut off from its store still answers `ha status`).
const STORE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// How old a successful key check may be to stand in for the store.
const STALE_CHECK_LIMIT: Duration = Duration::from_secs(600);
/// Attempts of a read-check-write on a user record that others keep changing.
const CONTENDED_ATTEMPTS: usize = 5;
/// Most expired keys deleted by one collection pass (one pass follows each successful login,
/// which adds one key, so the store never accumulates them).
const COLLECT_PER_PASS: usize = 256;
/// Deletes per transaction (etcd refuses transactions of more than 128 operations by default).
const DELETES_PER_TXN: usize = 64;

/// Why an account operation failed; messages are what the API returns, never a password or key.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (one message for both, so names cannot be probed).
    #[error("invalid username or password")]
    BadCredentials,
    #[error("missing or invalid API key: run autogate login")]
    MissingKey,
    #[error("api key has expired. please login")]
    Expired,
    #[error("user {0} does not exist")]
    NotFound(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("cannot delete user {0}: it is the last user, nobody could log in any more")]
    LastUser(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// The API's answers about users, shared with the CLI.
pub use autogate_automation::api_types::{IssuedKey, Role, UserView};

/// Why a login failed: refused before any password check, or failed with one.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Too many hashes in flight (503) or a backoff (429): retry later.
    #[error("login refused: {0:?}")]
    Refused(Refusal),
    /// The password was right but is temporary: log in again giving a new one.
    #[error(
        "the password of user {0} is temporary and must be changed: log in again with a new password (autogate login {0})"
    )]
    PasswordChangeRequired(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Who a request's API key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    /// The digest of the key presented (what `logout` revokes).
    pub key_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    name: String,
    password_hash: String,
    created: String,
    #[serde(default)]
    last_login: Option<String>,
    #[serde(default)]
    password_changed: Option<String>,
    /// `None` in a record of an earlier version (see the module's notes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    /// The password is temporary: the next login must change it. Left out when false, so a
    /// record of a user without one reads the same in an earlier version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    must_change_password: bool,
}

impl UserRecord {
    /// The role this user has, given whether the cluster has an admin by role or by name
    /// (`cluster_has_admin`, only read for records without a role).
    fn role(&self, cluster_has_admin: bool) -> Role {
        match self.role {
            Some(r) => r,
            None if self.name == ADMIN || !cluster_has_admin => Role::Admin,
            None => Role::Operator,
        }
    }

    /// An admin by its role, or the role-less `admin` of an earlier version.
    fn is_named_admin(&self) -> bool {
        self.role == Some(Role::Admin) || (self.role.is_none() && self.name == ADMIN)
    }

    fn view(&self, cluster_has_admin: bool) -> UserView {
        UserView {
            name: self.name.clone(),
            role: self.role(cluster_has_admin),
            created: self.created.clone(),
            last_login: self.last_login.clone(),
            password_changed: self.password_changed.clone(),
            password_change_required: self.must_change_password,
        }
    }
}

/// What the store keeps about one API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub user: String,
    pub created: String,
    pub expires_at: String,
}

/// A key check that succeeded, remembered to answer while the store cannot.
#[derive(Debug, Clone)]
struct Checked {
    user: String,
    role: Role,
    expires_at: OffsetDateTime,
    at: Instant,
}

/// Users and API keys of one cluster. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    store: Arc<dyn Store>,
    users: String,
    keys: String,
    key_ttl: Duration,
    checked: Arc<Mutex<HashMap<String, Checked>>>,
    /// Held for writing while the first user is being created (see
    /// [`hold_logins`](Self::hold_logins)); logins read it, so they wait for the bootstrap instead
    /// of failing in the window between the port opening and `admin` existing.
    bootstrap: Arc<tokio::sync::RwLock<()>>,
    guard: LoginGuard,
    /// Set while a collection of expired keys runs (one at a time).
    collecting: Arc<AtomicBool>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users", &self.users)
            .field("key_ttl", &self.key_ttl)
            .finish_non_exhaustive()
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The store name of a key: its SHA-256 in lower-case hex.
pub fn key_digest(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// User names become store keys and URL segments: keep them plain.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "invalid user name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

fn check_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AuthError::Invalid(format!(
            "password too short: at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

thread_local! {
    /// The argon2 memory (19 MiB) of a hashing thread, allocated by its first hash and reused by
    /// every later one: a fresh block per hash, freed into whichever malloc arena the thread
    /// used, left that memory resident in up to one arena per thread (a login flood reached
    /// 700 MiB with four hashes at a time), while reused blocks keep it at slots × 19 MiB.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// argon2 into `out`, with this thread's reused memory for hashes of the default cost (the
/// only ones this node writes); a hash of another cost gets memory of its own.
fn argon2_into(argon: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> bool {
    let need = argon.params().block_count();
    if need > Params::default().block_count() {
        let mut own = vec![argon2::Block::new(); need];
        return argon
            .hash_password_into_with_memory(password, salt, out, &mut own[..])
            .is_ok();
    }
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        if blocks.len() < need {
            blocks.resize(need, argon2::Block::new());
        }
        argon
            .hash_password_into_with_memory(password, salt, out, &mut blocks[..])
            .is_ok()
    })
}

/// A PHC string of argon2id with the default parameters for `password`.
fn hash_now(password: &[u8]) -> Result<String, AuthError> {
    let internal =
        |e: &dyn std::fmt::Display| AuthError::Internal(format!("hashing the password: {e}"));
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt_string = SaltString::encode_b64(&salt).map_err(|e| internal(&e))?;
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    if !argon2_into(&argon, password, &salt, &mut out) {
        return Err(AuthError::Internal("hashing the password failed".into()));
    }
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| internal(&e))?,
        salt: Some(salt_string.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| internal(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (compared in constant time).
fn matches(password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    argon2_into(&argon, password, salt, &mut out)
        && Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// Hashes on the guard's hashing threads (argon2id is deliberately slow and big), in a slot:
/// the slot bounds how many hashes (each ~19 MiB) run at once.
async fn hash_password(guard: &LoginGuard, password: String) -> Result<String, AuthError> {
    let _slot = guard
        .slot()
        .await
        .ok_or_else(|| AuthError::Internal("the hashing slots are closed".into()))?;
    guard
        .run(move || hash_now(password.as_bytes()))
        .await
        .ok_or_else(|| AuthError::Internal("no password-hashing thread answered".into()))?
}

/// A hash nobody's password matches, verified against for unknown users so that a login for a
/// name that does not exist costs the same time as one with a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        hash_now(&secret).unwrap_or_default()
    })
}

/// Checks a password; `_slot` (the caller's hashing slot) is held while the hash runs.
async fn verify_password(
    guard: &LoginGuard,
    _slot: &Admission,
    password: String,
    hash: Option<String>,
) -> bool {
    guard
        .run(move || {
            let real = hash.is_some();
            let hash = hash.unwrap_or_else(|| decoy_hash().to_owned());
            matches(password.as_bytes(), &hash) && real
        })
        .await
        .unwrap_or(false)
}

/// A new random key: 32 bytes from the OS generator, hex (URL- and header-safe).
fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("ag_{}", hex::encode(bytes))
}

/// A random temporary password (letters and digits, 20 characters).
fn temporary_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, AuthError> {
    serde_json::from_slice(value)
        .map_err(|e| AuthError::Internal(format!("unreadable record at {key}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AuthError> {
    serde_json::to_vec(value).map_err(|e| AuthError::Internal(e.to_string()))
}

impl Auth {
    /// Accounts of `cluster_id`; keys live for `key_ttl`.
    pub fn new(store: Arc<dyn Store>, cluster_id: &str, key_ttl: Duration) -> Self {
        let prefix = cluster_prefix(cluster_id);
        Auth {
            store,
            users: format!("{prefix}users/"),
            keys: format!("{prefix}api-keys/"),
            key_ttl,
            checked: Arc::default(),
            bootstrap: Arc::default(),
            guard: LoginGuard::new(),
            collecting: Arc::default(),
        }
    }

    /// The hashing slots and backoff tables of this node.
    pub fn guard(&self) -> &LoginGuard {
        &self.guard
    }

    /// Makes logins wait until the returned guard is dropped: the core node takes it before it
    /// starts serving and drops it once [`bootstrap_admin`](Self::bootstrap_admin) has run, so the
    /// API can answer health checks while the first password is still being hashed.
    pub async fn hold_logins(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.bootstrap.clone().write_owned().await
    }

    fn user_key(&self, name: &str) -> String {
        format!("{}{name}", self.users)
    }

    async fn user(&self, name: &str) -> Result<Option<(UserRecord, i64)>, AuthError> {
        let key = self.user_key(name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some((decode(&key, &kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Creates `admin` when the cluster has no user. With `password` (the admin password
    /// file) that password is set; otherwise a random one is generated and returned so the
    /// caller prints it once. `Ok(None)` when users exist or another node won the race.
    pub async fn bootstrap_admin(
        &self,
        password: Option<String>,
    ) -> Result<Option<Bootstrap>, AuthError> {
        if !self.store.list(&self.users).await?.is_empty() {
            return Ok(None);
        }
        let (password, temporary) = match password {
            Some(p) => (p, false),
            None => (temporary_password(), true),
        };
        let record = UserRecord {
            name: ADMIN.to_owned(),
            password_hash: hash_password(&self.guard, password.clone()).await?,
            created: rfc3339(now()),
            last_login: None,
            password_changed: None,
            role: Some(Role::Admin),
            must_change_password: false,
        };
        let key = self.user_key(ADMIN);
        let txn = Txn::new()
            .when([Compare::missing(key.clone())])
            .and_then([TxnOp::put(key, encode(&record)?)]);
        if !self.store.txn(txn).await?.succeeded {
            return Ok(None);
        }
        Ok(Some(Bootstrap {
            temporary_password: temporary.then_some(password),
        }))
    }

    /// Checks a password and issues a key valid for the configured lifetime. `source` is the
    /// caller's address, for the backoff per address and the log of failures.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        source: Source,
    ) -> Result<IssuedKey, LoginError> {
        self.login_with(username, password, None, source).await
    }

    /// [`login`](Self::login), changing the password to `new_password` when given: the
    /// change and the new key are written together, every earlier key of the user is revoked.
    /// A temporary password gets no key without a new one
    /// ([`LoginError::PasswordChangeRequired`]).
    pub async fn login_with(
        &self,
        username: &str,
        password: &str,
        new_password: Option<&str>,
        source: Source,
    ) -> Result<IssuedKey, LoginError> {
        drop(self.bootstrap.read().await);
        if let Some(new) = new_password {
            // Before the guard: a new password that can never be set costs no hash and no
            // failure count.
            check_password(new)?;
            if new == password {
                return Err(AuthError::Invalid(
                    "the new password must differ from the current one".into(),
                )
                .into());
            }
        }
        let slot = self
            .guard
            .admit(username, source)
            .map_err(LoginError::Refused)?;
        match self
            .login_checked(&slot, username, password, new_password)
            .await
        {
            Ok(issued) => {
                drop(slot);
                self.guard.succeeded(username);
                self.collect_in_background();
                Ok(issued)
            }
            Err(LoginError::Auth(AuthError::BadCredentials)) => {
                self.guard.failed(username, source);
                Err(AuthError::BadCredentials.into())
            }
            Err(e @ LoginError::PasswordChangeRequired(_)) => {
                // The password was right: no backoff for a user following the instructions.
                self.guard.succeeded(username);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn login_checked(
        &self,
        slot: &Admission,
        username: &str,
        password: &str,
        new_password: Option<&str>,
    ) -> Result<IssuedKey, LoginError> {
        let mut found = if check_name(username).is_ok() {
            self.user(username).await?
        } else {
            None
        };
        let hash = found.as_ref().map(|(u, _)| u.password_hash.clone());
        if !verify_password(&self.guard, slot, password.to_owned(), hash.clone()).await {
            return Err(AuthError::BadCredentials.into());
        }
        let mut verified = hash;
        // Hashed once, outside the retries: only the record written around it changes.
        let new_hash = match new_password {
            Some(p) => Some(hash_password(&self.guard, p.to_owned()).await?),
            None => None,
        };
        let ttl = time::Duration::try_from(self.key_ttl)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        for _ in 0..CONTENDED_ATTEMPTS {
            let Some((mut user, revision)) = found.take() else {
                return Err(AuthError::BadCredentials.into());
            };
            // The user record changed since the password was checked (a concurrent login or a
            // password change): check against what is stored now.
            if verified.as_deref() != Some(user.password_hash.as_str()) {
                let hash = Some(user.password_hash.clone());
                if !verify_password(&self.guard, slot, password.to_owned(), hash.clone()).await {
                    return Err(AuthError::BadCredentials.into());
                }
                verified = hash;
            }
            let mut ops = Vec::new();
            match &new_hash {
                Some(h) => {
                    user.password_hash = h.clone();
                    user.password_changed = Some(rfc3339(now()));
                    user.must_change_password = false;
                    // Every key of the old password goes; the one issued below is the only one.
                    ops.extend(self.key_deletes(&user.name).await?);
                }
                None if user.must_change_password => {
                    return Err(LoginError::PasswordChangeRequired(user.name));
                }
                None => {}
            }
            let created = now();
            let api_key = new_key();
            let record = KeyRecord {
                user: user.name.clone(),
                created: rfc3339(created),
                expires_at: rfc3339(created + ttl),
            };
            user.last_login = Some(rfc3339(created));
            let user_key = self.user_key(&user.name);
            // Written only if the user is still as read: a user deleted or given a new
            // password at the same moment gets no key from the old password, and the record
            // written back cannot undo a password change.
            ops.push(TxnOp::put(
                format!("{}{}", self.keys, key_digest(&api_key)),
                encode(&record)?,
            ));
            ops.push(TxnOp::put(user_key.clone(), encode(&user)?));
            let txn = Txn::new()
                .when([Compare::mod_revision(user_key, CompareOp::Equal, revision)])
                .and_then(ops);
            if self
                .store
                .txn(txn)
                .await
                .map_err(AuthError::from)?
                .succeeded
            {
                if new_hash.is_some() {
                    self.forget_user(&user.name);
                }
                return Ok(IssuedKey {
                    api_key,
                    expires_at: record.expires_at,
                });
            }
            found = self.user(username).await?;
        }
        Err(contended(username).into())
    }

    /// The user a bearer key belongs to, and its role.
    pub async fn check(&self, key: Option<&str>) -> Result<Caller, AuthError> {
        let key = key.map(str::trim).filter(|k| !k.is_empty());
        let Some(key) = key else {
            return Err(AuthError::MissingKey);
        };
        let digest = key_digest(key);
        let path = format!("{}{digest}", self.keys);
        let read = tokio::time::timeout(STORE_CHECK_TIMEOUT, self.store.get(&path)).await;
        let record = match read {
            Ok(Ok(Some(kv))) => decode::<KeyRecord>(&path, &kv.value)?,
            Ok(Ok(None)) => {
                self.forget(&digest);
                return Err(AuthError::MissingKey);
            }
            Ok(Err(e)) => return self.stale(&digest, AuthError::Store(e)),
            Err(_) => {
                return self.stale(
                    &digest,
                    AuthError::Store(StoreError::Unavailable(format!(
                        "the store did not answer within {STORE_CHECK_TIMEOUT:?}"
                    ))),
                )
            }
        };
        let expires_at = OffsetDateTime::parse(&record.expires_at, &Rfc3339)
            .map_err(|e| AuthError::Internal(format!("unreadable expiry at {path}: {e}")))?;
        if expires_at <= OffsetDateTime::now_utc() {
            self.forget(&digest);
            return Err(AuthError::Expired);
        }
        let role = match self.role_of(&record.user).await {
            Ok(Some(role)) => role,
            // The user was deleted (its keys with it, but this one was read before).
            Ok(None) => {
                self.forget(&digest);
                return Err(AuthError::MissingKey);
            }
            Err(e) => return self.stale(&digest, e),
        };
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                digest.clone(),
                Checked {
                    user: record.user.clone(),
                    role,
                    expires_at,
                    at: Instant::now(),
                },
            );
        Ok(Caller {
            user: record.user,
            role,
            key_digest: digest,
        })
    }

    /// The role of user `name` (`None`: no such user).
    async fn role_of(&self, name: &str) -> Result<Option<Role>, AuthError> {
        let Some((user, _)) = self.user(name).await? else {
            return Ok(None);
        };
        if let Some(role) = user.role {
            return Ok(Some(role));
        }
        // A record of an earlier version: its role depends on whether the cluster has an
        // admin (read only for such records).
        let has_admin = self.cluster_has_admin(&self.store.list(&self.users).await?);
        Ok(Some(user.role(has_admin)))
    }

    fn cluster_has_admin(&self, users: &[autogate_store::KeyValue]) -> bool {
        users.iter().any(|kv| {
            serde_json::from_slice::<UserRecord>(&kv.value).is_ok_and(|u| u.is_named_admin())
        })
    }

    fn forget(&self, digest: &str) {
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
    }

    /// While the store cannot answer, a key this node checked recently still works: otherwise
    /// a node cut off from its store could not even report its own HA state.
    fn stale(&self, digest: &str, err: AuthError) -> Result<Caller, AuthError> {
        let checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        match checked.get(digest) {
            Some(c)
                if c.at.elapsed() < STALE_CHECK_LIMIT
                    && c.expires_at > OffsetDateTime::now_utc() =>
            {
                tracing::debug!("store unavailable; accepting an API key checked recently");
                Ok(Caller {
                    user: c.user.clone(),
                    role: c.role,
                    key_digest: digest.to_owned(),
                })
            }
            _ => Err(err),
        }
    }

    /// Every user, sorted by name.
    pub async fn list_users(&self) -> Result<Vec<UserView>, AuthError> {
        let listed = self.store.list(&self.users).await?;
        let has_admin = self.cluster_has_admin(&listed);
        let mut out = Vec::new();
        for kv in listed {
            let u: UserRecord = decode(&kv.key, &kv.value)?;
            out.push(u.view(has_admin));
        }
        Ok(out)
    }

    pub async fn get_user(&self, name: &str) -> Result<UserView, AuthError> {
        check_name(name)?;
        let (user, _) = self
            .user(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(name.to_owned()))?;
        let role = self.role_of(name).await?.unwrap_or(Role::Viewer);
        let mut view = user.view(true);
        view.role = role;
        Ok(view)
    }

    /// Creates a user with `role` (operators by default, see the API layer).
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        role: Role,
    ) -> Result<UserView, AuthError> {
        self.create_user_with(name, password, role, false).await
    }

    /// [`create_user`](Self::create_user); with `temporary` the user must change the password
    /// at its first login.
    pub async fn create_user_with(
        &self,
        name: &str,
        password: &str,
        role: Role,
        temporary: bool,
    ) -> Result<UserView, AuthError> {
        check_name(name)?;
        check_password(password)?;
        let record = UserRecord {
            name: name.to_owned(),
            password_hash: hash_password(&self.guard, password.to_owned()).await?,
            created: rfc3339(now()),
            last_login: None,
            password_changed: None,
            role: Some(role),
            must_change_password: temporary,
        };
        let key = self.user_key(name);
        let txn = Txn::new()
            .when([Compare::missing(key.clone())])
            .and_then([TxnOp::put(key, encode(&record)?)]);
        if !self.store.txn(txn).await?.succeeded {
            return Err(AuthError::Exists(name.to_owned()));
        }
        Ok(record.view(true))
    }

    /// Deletes operations for every key of `user`.
    async fn key_deletes(&self, user: &str) -> Result<Vec<TxnOp>, AuthError> {
        let mut ops = Vec::new();
        for kv in self.store.list(&self.keys).await? {
            if let Ok(k) = serde_json::from_slice::<KeyRecord>(&kv.value) {
                if k.user == user {
                    ops.push(TxnOp::delete(kv.key));
                }
            }
        }
        Ok(ops)
    }

    fn forget_user(&self, user: &str) {
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| c.user != user);
    }

    /// Deletes a user and its keys; the last user cannot be deleted.
    pub async fn delete_user(&self, name: &str) -> Result<(), AuthError> {
        check_name(name)?;
        let users = self.store.list(&self.users).await?;
        let key = self.user_key(name);
        let Some(kv) = users.iter().find(|kv| kv.key == key) else {
            return Err(AuthError::NotFound(name.to_owned()));
        };
        if users.len() == 1 {
            return Err(AuthError::LastUser(name.to_owned()));
        }
        let has_admin = self.cluster_has_admin(&users);
        let admins = users
            .iter()
            .filter_map(|kv| serde_json::from_slice::<UserRecord>(&kv.value).ok())
            .filter(|u| u.role(has_admin) == Role::Admin)
            .count();
        let deleted: UserRecord = decode(&kv.key, &kv.value)?;
        if admins == 1 && deleted.role(has_admin) == Role::Admin {
            return Err(AuthError::Invalid(format!(
                "cannot delete user {name}: it is the last admin, nobody could manage users any more"
            )));
        }
        let mut ops = vec![TxnOp::delete(key.clone())];
        ops.extend(self.key_deletes(name).await?);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                kv.mod_revision,
            )])
            .and_then(ops);
        if !self.store.txn(txn).await?.succeeded {
            return Err(AuthError::Invalid(format!(
                "user {name} changed while it was being deleted; try again"
            )));
        }
        self.forget_user(name);
        Ok(())
    }

    /// Changes one's own password: `current` must be the password stored now. The check goes
    /// through the login guard (slots and backoff), so a stolen key cannot be used to guess
    /// its user's password at the node's expense.
    pub async fn change_own_password(
        &self,
        name: &str,
        current: &str,
        password: &str,
        source: Source,
    ) -> Result<usize, LoginError> {
        check_name(name)?;
        check_password(password)?;
        let slot = self
            .guard
            .admit(name, source)
            .map_err(LoginError::Refused)?;
        let stored = self.user(name).await?.map(|(u, _)| u.password_hash);
        let Some(stored) = stored else {
            return Err(AuthError::NotFound(name.to_owned()).into());
        };
        if !verify_password(&self.guard, &slot, current.to_owned(), Some(stored.clone())).await {
            self.guard.failed(name, source);
            return Err(AuthError::BadCredentials.into());
        }
        drop(slot);
        Ok(self
            .set_password_if(name, password, Some(stored), false)
            .await?)
    }

    /// Sets a new password and revokes every key of the user; returns how many were revoked.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<usize, AuthError> {
        self.set_password_with(name, password, false).await
    }

    /// [`set_password`](Self::set_password); with `temporary` (an admin resetting another
    /// user's password) the user must change it at its next login.
    pub async fn set_password_with(
        &self,
        name: &str,
        password: &str,
        temporary: bool,
    ) -> Result<usize, AuthError> {
        check_name(name)?;
        check_password(password)?;
        self.set_password_if(name, password, None, temporary).await
    }

    /// [`set_password`](Self::set_password), only while the stored hash is still `expected`
    /// (when given): a concurrent change in between makes the current password checked stale.
    async fn set_password_if(
        &self,
        name: &str,
        password: &str,
        expected: Option<String>,
        temporary: bool,
    ) -> Result<usize, AuthError> {
        let hash = hash_password(&self.guard, password.to_owned()).await?;
        for _ in 0..CONTENDED_ATTEMPTS {
            let Some((user, revision)) = self.user(name).await? else {
                return Err(AuthError::NotFound(name.to_owned()));
            };
            if expected.as_ref().is_some_and(|e| *e != user.password_hash) {
                return Err(AuthError::Invalid(format!(
                    "the password of user {name} changed meanwhile; try again with the new current password"
                )));
            }
            // A login between the listing of keys and this write changes the user record
            // (last login), so its new key cannot survive the change: the write is retried.
            let (txn, count) = self
                .password_txn(name, user, revision, &hash, temporary)
                .await?;
            if self.store.txn(txn).await?.succeeded {
                self.forget_user(name);
                return Ok(count);
            }
        }
        Err(contended(name))
    }

    /// The write of a password change: `user` of `name`, read at `revision`, with the hash
    /// `hash` (`temporary`: to be changed at the next login), put back together with the
    /// deletion of every key of the user, only while the record is still at `revision`.
    /// Returns the transaction and how many keys it revokes.
    async fn password_txn(
        &self,
        name: &str,
        mut user: UserRecord,
        revision: i64,
        hash: &str,
        temporary: bool,
    ) -> Result<(Txn, usize), AuthError> {
        user.password_hash = hash.to_owned();
        user.password_changed = Some(rfc3339(now()));
        user.must_change_password = temporary;
        let key = self.user_key(name);
        let revoked = self.key_deletes(name).await?;
        let count = revoked.len();
        let mut ops = vec![TxnOp::put(key.clone(), encode(&user)?)];
        ops.extend(revoked);
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then(ops);
        Ok((txn, count))
    }
}

/// What [`Auth::recover_admin`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// `admin` did not exist (it had been deleted) and was created again.
    pub created: bool,
    /// `admin` was not an admin any more and is again.
    pub role_restored: bool,
    /// The API keys of `admin` revoked with the change.
    pub revoked_keys: usize,
}

impl Auth {
    /// `server --recover-admin-user`: sets the password of `admin`, makes it an admin again
    /// and revokes its keys; creates it when it was deleted. Meant for the store of a stopped
    /// node (the caller holds its working directory), but safe beside running nodes of the
    /// cluster: the write is a compare-and-swap on the record.
    pub async fn recover_admin(&self, password: &str) -> Result<Recovered, AuthError> {
        check_password(password)?;
        let hash = hash_password(&self.guard, password.to_owned()).await?;
        let key = self.user_key(ADMIN);
        for _ in 0..CONTENDED_ATTEMPTS {
            let (txn, recovered) = match self.user(ADMIN).await? {
                Some((mut user, revision)) => {
                    let role_restored = user.role.is_some_and(|r| r != Role::Admin);
                    user.role = Some(Role::Admin);
                    let (txn, revoked_keys) = self
                        .password_txn(ADMIN, user, revision, &hash, false)
                        .await?;
                    let recovered = Recovered {
                        created: false,
                        role_restored,
                        revoked_keys,
                    };
                    (txn, recovered)
                }
                None => {
                    let record = UserRecord {
                        name: ADMIN.to_owned(),
                        password_hash: hash.clone(),
                        created: rfc3339(now()),
                        last_login: None,
                        password_changed: None,
                        role: Some(Role::Admin),
                        must_change_password: false,
                    };
                    // Keys of a deleted user were deleted with it; any left are stale.
                    let mut ops = vec![TxnOp::put(key.clone(), encode(&record)?)];
                    ops.extend(self.key_deletes(ADMIN).await?);
                    let txn = Txn::new()
                        .when([Compare::missing(key.clone())])
                        .and_then(ops);
                    let recovered = Recovered {
                        created: true,
                        role_restored: false,
                        revoked_keys: 0,
                    };
                    (txn, recovered)
                }
            };
            if self.store.txn(txn).await?.succeeded {
                self.forget_user(ADMIN);
                return Ok(recovered);
            }
        }
        Err(contended(ADMIN))
    }
}

impl Auth {
    /// Revokes one key (`logout`): the key presented, by its digest.
    pub async fn revoke(&self, key_digest: &str) -> Result<bool, AuthError> {
        let removed = self
            .store
            .delete(&format!("{}{key_digest}", self.keys))
            .await?;
        self.forget(key_digest);
        Ok(removed)
    }

    /// Deletes up to `max` expired keys; returns how many. Keys are never rewritten, so an
    /// expired one can be deleted without a comparison.
    pub async fn collect_expired(&self, max: usize) -> Result<usize, AuthError> {
        let now = OffsetDateTime::now_utc();
        let expired: Vec<String> = self
            .store
            .list(&self.keys)
            .await?
            .into_iter()
            .filter(|kv| {
                serde_json::from_slice::<KeyRecord>(&kv.value)
                    .ok()
                    .and_then(|k| OffsetDateTime::parse(&k.expires_at, &Rfc3339).ok())
                    .is_some_and(|at| at <= now)
            })
            .map(|kv| kv.key)
            .take(max)
            .collect();
        for batch in expired.chunks(DELETES_PER_TXN) {
            let txn = Txn::new().and_then(batch.iter().cloned().map(TxnOp::delete));
            self.store.txn(txn).await?;
        }
        Ok(expired.len())
    }

    /// One collection pass after a login, unless one runs already; its failure is only logged
    /// (the next login tries again).
    fn collect_in_background(&self) {
        if self.collecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let auth = self.clone();
        tokio::spawn(async move {
            match auth.collect_expired(COLLECT_PER_PASS).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(collected = n, "expired API keys deleted"),
                Err(e) => tracing::warn!("collecting expired API keys: {e}"),
            }
            auth.collecting.store(false, Ordering::Release);
        });
    }
}

fn contended(name: &str) -> AuthError {
    AuthError::Store(StoreError::Unavailable(format!(
        "user {name} kept changing concurrently; try again"
    )))
}

/// Outcome of [`Auth::bootstrap_admin`] when this node created the admin user.
#[derive(Debug)]
pub struct Bootstrap {
    /// The generated password, to print once; `None` when it came from the password file.
    pub temporary_password: Option<String>,
}

/// Reads `[server] admin_password_file`: the first line, without its line ending.
pub fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read server.admin_password_file {}: {e}",
            path.display()
        )
    })?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!(
            "server.admin_password_file {}: the password must have at least {MIN_PASSWORD_LEN} characters",
            path.display()
        ));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn auth(ttl: Duration) -> Auth {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .expect("memory store");
        Auth::new(store, "c1", ttl)
    }

    #[tokio::test]
    async fn bootstrap_once_login_and_revoke() {
        let a = auth(Duration::from_secs(60)).await;
        let b = a
            .bootstrap_admin(None)
            .await
            .expect("bootstrap")
            .expect("created");
        let pw = b.temporary_password.expect("temporary password");
        assert!(a.bootstrap_admin(None).await.expect("again").is_none());
        assert!(matches!(
            a.login("admin", "wrong-password", Source::Unknown).await,
            Err(LoginError::Auth(AuthError::BadCredentials))
        ));
        assert!(matches!(
            a.login("nobody", &pw, Source::Unknown).await,
            Err(LoginError::Auth(AuthError::BadCredentials))
        ));
        let k = a.login("admin", &pw, Source::Unknown).await.expect("login");
        assert_eq!(
            a.check(Some(&k.api_key)).await.expect("check").user,
            "admin"
        );
        assert!(matches!(a.check(None).await, Err(AuthError::MissingKey)));
        assert!(matches!(
            a.check(Some("ag_nope")).await,
            Err(AuthError::MissingKey)
        ));
        // The store holds the digest, never the key.
        let listed = a.store.list(&a.keys).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].key.ends_with(&key_digest(&k.api_key)));
        assert!(!String::from_utf8_lossy(&listed[0].value).contains(&k.api_key));
        assert_eq!(
            a.set_password("admin", "another-pass").await.expect("set"),
            1
        );
        assert!(matches!(
            a.check(Some(&k.api_key)).await,
            Err(AuthError::MissingKey)
        ));
        assert!(a
            .login("admin", "another-pass", Source::Unknown)
            .await
            .is_ok());
        assert!(matches!(
            a.delete_user("admin").await,
            Err(AuthError::LastUser(_))
        ));
    }

    /// Logins of one user at the same moment all get a key (each rewrites the user's last
    /// login); none can write back a record that undoes a password change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_logins_and_a_password_change() {
        let a = auth(Duration::from_secs(60)).await;
        a.bootstrap_admin(Some("password-1".into()))
            .await
            .expect("bootstrap");
        let logins = (0..4).map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.login("admin", "password-1", Source::Unknown).await })
        });
        for l in futures::future::join_all(logins).await {
            assert!(l.expect("task").is_ok());
        }
        let racing = {
            let a = a.clone();
            tokio::spawn(async move { a.login("admin", "password-1", Source::Unknown).await })
        };
        a.set_password("admin", "password-2").await.expect("set");
        if let Ok(k) = racing.await.expect("task") {
            assert!(matches!(
                a.check(Some(&k.api_key)).await,
                Err(AuthError::MissingKey)
            ));
        }
        // Whatever the order, the new password is the one stored, and no key of the old one
        // is left.
        assert!(a
            .login("admin", "password-2", Source::Unknown)
            .await
            .is_ok());
        assert!(matches!(
            a.login("admin", "password-1", Source::Unknown).await,
            Err(LoginError::Auth(AuthError::BadCredentials))
        ));
    }

    #[tokio::test]
    async fn expired_keys_are_refused() {
        let a = auth(Duration::from_secs(60)).await;
        a.bootstrap_admin(Some("password-1".into()))
            .await
            .expect("bootstrap");
        let past = KeyRecord {
            user: "admin".into(),
            created: "2020-01-01T00:00:00Z".into(),
            expires_at: "2020-01-01T00:01:00Z".into(),
        };
        a.store
            .put(
                &format!("{}{}", a.keys, key_digest("ag_old")),
                serde_json::to_vec(&past).expect("json"),
                None,
            )
            .await
            .expect("put");
        assert!(matches!(
            a.check(Some("ag_old")).await,
            Err(AuthError::Expired)
        ));
    }

    async fn put_record(a: &Auth, name: &str, role: Option<Role>) {
        let record = UserRecord {
            name: name.to_owned(),
            password_hash: hash_now(b"password-1").expect("hash"),
            created: "2024-01-01T00:00:00Z".into(),
            last_login: None,
            password_changed: None,
            role,
            must_change_password: false,
        };
        a.store
            .put(&a.user_key(name), encode(&record).expect("json"), None)
            .await
            .expect("put");
    }

    async fn role(a: &Auth, name: &str) -> Role {
        let k = a
            .login(name, "password-1", Source::Unknown)
            .await
            .expect("login");
        a.check(Some(&k.api_key)).await.expect("check").role
    }

    /// Records of earlier versions have no role: `admin` stays an admin, the others become
    /// operators — unless nobody would be an admin, then they stay admins.
    #[tokio::test]
    async fn records_without_a_role() {
        let a = auth(Duration::from_secs(60)).await;
        put_record(&a, "admin", None).await;
        put_record(&a, "bob", None).await;
        assert_eq!(role(&a, "admin").await, Role::Admin);
        assert_eq!(role(&a, "bob").await, Role::Operator);
        let listed = a.list_users().await.expect("list");
        assert_eq!(
            listed.iter().map(|u| u.role).collect::<Vec<_>>(),
            [Role::Admin, Role::Operator]
        );
        let b = auth(Duration::from_secs(60)).await;
        put_record(&b, "ops", None).await;
        put_record(&b, "bob", None).await;
        assert_eq!(role(&b, "bob").await, Role::Admin, "no admin otherwise");
        put_record(&b, "chief", Some(Role::Admin)).await;
        assert_eq!(role(&b, "bob").await, Role::Operator);
        assert_eq!(b.get_user("ops").await.expect("get").role, Role::Operator);
    }

    #[tokio::test]
    async fn own_password_needs_the_current_one_and_the_last_admin_stays() {
        let a = auth(Duration::from_secs(60)).await;
        a.bootstrap_admin(Some("password-1".into()))
            .await
            .expect("bootstrap");
        let bob = a
            .create_user("bob", "bob-password", Role::Viewer)
            .await
            .expect("create");
        assert_eq!(bob.role, Role::Viewer);
        assert!(matches!(
            a.change_own_password("bob", "wrong-one", "bob-password-2", Source::Unknown)
                .await,
            Err(LoginError::Auth(AuthError::BadCredentials))
        ));
        assert_eq!(
            a.change_own_password("bob", "bob-password", "bob-password-2", Source::Unknown)
                .await
                .expect("change"),
            0
        );
        assert!(a
            .login("bob", "bob-password-2", Source::Unknown)
            .await
            .is_ok());
        assert!(matches!(
            a.delete_user("admin").await,
            Err(AuthError::Invalid(m)) if m.contains("last admin")
        ));
        assert!(a.delete_user("bob").await.is_ok());
    }

    #[tokio::test]
    async fn logout_revokes_one_key_and_expired_keys_are_collected() {
        let a = auth(Duration::from_secs(60)).await;
        a.bootstrap_admin(Some("password-1".into()))
            .await
            .expect("bootstrap");
        let k1 = a
            .login("admin", "password-1", Source::Unknown)
            .await
            .expect("login");
        let k2 = a
            .login("admin", "password-1", Source::Unknown)
            .await
            .expect("login");
        let c1 = a.check(Some(&k1.api_key)).await.expect("check");
        assert!(a.revoke(&c1.key_digest).await.expect("revoke"));
        assert!(matches!(
            a.check(Some(&k1.api_key)).await,
            Err(AuthError::MissingKey)
        ));
        assert!(a.check(Some(&k2.api_key)).await.is_ok());
        let past = KeyRecord {
            user: "admin".into(),
            created: "2020-01-01T00:00:00Z".into(),
            expires_at: "2020-01-01T00:01:00Z".into(),
        };
        for i in 0..150 {
            a.store
                .put(
                    &format!("{}{}", a.keys, key_digest(&format!("ag_old{i}"))),
                    serde_json::to_vec(&past).expect("json"),
                    None,
                )
                .await
                .expect("put");
        }
        assert_eq!(a.collect_expired(100).await.expect("collect"), 100);
        assert_eq!(a.collect_expired(100).await.expect("collect"), 50);
        assert_eq!(a.collect_expired(100).await.expect("collect"), 0);
        assert_eq!(a.store.list(&a.keys).await.expect("list").len(), 1);
        assert!(a.check(Some(&k2.api_key)).await.is_ok());
    }

    /// The reused-memory hashing writes and reads the same PHC strings as the argon2 crate's
    /// own hasher, so records of earlier versions still verify and new ones verify elsewhere.
    #[test]
    fn hashes_are_standard_phc() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash_now(b"s3cret-pass").expect("hash");
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(Argon2::default()
            .verify_password(b"s3cret-pass", &parsed)
            .is_ok());
        assert!(matches(b"s3cret-pass", &ours));
        assert!(!matches(b"s3cret-pasS", &ours));
        let salt = SaltString::encode_b64(&[7u8; 16]).expect("salt");
        let theirs = Argon2::default()
            .hash_password(b"older-pass", &salt)
            .expect("hash")
            .to_string();
        assert!(matches(b"older-pass", &theirs));
        assert!(!matches(b"older-pass", "not a phc string"));
    }

    /// A temporary password gets no key until a login gives a new one; that login changes it
    /// and revokes nothing it should keep.
    #[tokio::test]
    async fn temporary_password_must_be_changed_at_login() {
        let a = auth(Duration::from_secs(60)).await;
        a.bootstrap_admin(Some("password-1".into()))
            .await
            .expect("bootstrap");
        let bob = a
            .create_user_with("bob", "temp-password-1", Role::Operator, true)
            .await
            .expect("create");
        assert!(bob.password_change_required);
        assert!(matches!(
            a.login("bob", "temp-password-1", Source::Unknown).await,
            Err(LoginError::PasswordChangeRequired(u)) if u == "bob"
        ));
        assert!(a.store.list(&a.keys).await.expect("list").is_empty());
        // A wrong password is a wrong password, temporary or not.
        assert!(matches!(
            a.login_with(
                "bob",
                "wrong-password",
                Some("bob-password-2"),
                Source::Unknown
            )
            .await,
            Err(LoginError::Auth(AuthError::BadCredentials))
        ));
        assert!(matches!(
            a.login_with("bob", "temp-password-1", Some("short"), Source::Unknown)
                .await,
            Err(LoginError::Auth(AuthError::Invalid(_)))
        ));
        assert!(matches!(
            a.login_with(
                "bob",
                "temp-password-1",
                Some("temp-password-1"),
                Source::Unknown
            )
            .await,
            Err(LoginError::Auth(AuthError::Invalid(_)))
        ));
        let k = a
            .login_with(
                "bob",
                "temp-password-1",
                Some("bob-password-2"),
                Source::Unknown,
            )
            .await
            .expect("change at login");
        assert_eq!(a.check(Some(&k.api_key)).await.expect("check").user, "bob");
        assert!(
            !a.get_user("bob")
                .await
                .expect("get")
                .password_change_required
        );
        assert!(a
            .login("bob", "bob-password-2", Source::Unknown)
            .await
            .is_ok());
        // A change at login revokes the keys of the old password.
        let k2 = a
            .login_with(
                "bob",
                "bob-password-2",
                Some("bob-password-3"),
                Source::Unknown,
            )
            .await
            .expect("change");
        assert!(matches!(
            a.check(Some(&k.api_key)).await,
            Err(AuthError::MissingKey)
        ));
        assert!(a.check(Some(&k2.api_key)).await.is_ok());
        // An admin can make a password temporary again.
        a.set_password_with("bob", "temp-password-4", true)
            .await
            .expect("set");
        assert!(a.check(Some(&k2.api_key)).await.is_err());
        assert!(matches!(
            a.login("bob", "temp-password-4", Source::Unknown).await,
            Err(LoginError::PasswordChangeRequired(_))
        ));
    }

    #[tokio::test]
    async fn recover_admin_resets_restores_and_recreates() {
        let a = auth(Duration::from_secs(60)).await;
        a.bootstrap_admin(Some("password-1".into()))
            .await
            .expect("bootstrap");
        let k = a
            .login("admin", "password-1", Source::Unknown)
            .await
            .expect("login");
        let r = a.recover_admin("recovered-1").await.expect("recover");
        assert_eq!(
            r,
            Recovered {
                created: false,
                role_restored: false,
                revoked_keys: 1
            }
        );
        assert!(a.check(Some(&k.api_key)).await.is_err());
        assert!(a
            .login("admin", "password-1", Source::Unknown)
            .await
            .is_err());
        assert!(a
            .login("admin", "recovered-1", Source::Unknown)
            .await
            .is_ok());
        assert!(matches!(
            a.recover_admin("short").await,
            Err(AuthError::Invalid(_))
        ));
        // Demoted, then recovered: an admin again.
        put_record(&a, "admin", Some(Role::Viewer)).await;
        let r = a.recover_admin("recovered-2").await.expect("recover");
        assert!(r.role_restored);
        assert_eq!(role_with(&a, "admin", "recovered-2").await, Role::Admin);
        // Deleted, then recovered: created again.
        a.create_user("chief", "chief-password", Role::Admin)
            .await
            .expect("create");
        a.delete_user("admin").await.expect("delete");
        let r = a.recover_admin("recovered-3").await.expect("recover");
        assert!(r.created);
        assert_eq!(role_with(&a, "admin", "recovered-3").await, Role::Admin);
    }

    async fn role_with(a: &Auth, name: &str, password: &str) -> Role {
        let k = a
            .login(name, password, Source::Unknown)
            .await
            .expect("login");
        a.check(Some(&k.api_key)).await.expect("check").role
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("ops.team-1").is_ok());
        for bad in ["", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
