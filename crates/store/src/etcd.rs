//! The `etcd` backend, on `etcd-client` (gRPC over tonic, rustls).
//!
//! Choices that matter for high availability:
//! * require-leader is on: a member cut off from the quorum answers "no leader" at once (and cancels
//!   watches) instead of serving stale data or hanging, so a partitioned node steps down in time;
//! * reads are linearizable (etcd's default), so `status` proves the quorum is reachable;
//! * every call is bounded by the request timeout here, not only by tonic: with an unreachable
//!   endpoint the balanced channel would otherwise wait for readiness forever;
//! * HTTP/2 keep-alive pings run only while streams are open and no more often than etcd's default
//!   enforcement (5 s) allows, so dead connections under watches and keep-alives are detected;
//! * one keep-alive stream is cached per lease, so a renewal is one round trip.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, GetOptions, Identity, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, TlsOptions, WatchOptions,
};
use tokio::sync::Mutex;

use crate::{
    Compare, CompareOp, CompareTarget, EtcdOptions, EtcdTls, EventKind, KeyValue, LeaseId,
    Revision, Store, StoreError, StoreStatus, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchEvent,
    WatchStream,
};

/// HTTP/2 ping interval; etcd's `--grpc-keepalive-min-time` default is 5 s and faster pings get
/// the connection closed with "too many pings".
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Pause between attempts of a request that could not reach any member.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A cached keep-alive stream of one lease.
struct Keeper {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    /// False while a renewal is in flight. A keeper left unclean by a cancelled call may have a
    /// response queued that would be taken for the next renewal's answer, so it is replaced.
    clean: bool,
}

type KeeperSlot = Arc<Mutex<Option<Keeper>>>;

pub(crate) struct EtcdStore {
    client: Client,
    endpoints: String,
    request_timeout: Duration,
    keepers: Mutex<HashMap<LeaseId, KeeperSlot>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Renders an error with its causes (tonic hides the interesting part, e.g. the TLS alert, in
/// the source chain).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn describe_status(s: &tonic::Status) -> String {
    let mut out = s.message().to_owned();
    let mut source = std::error::Error::source(s);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = cause.source();
    }
    if out.is_empty() {
        out = format!("{:?}", s.code());
    }
    out
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| {
        StoreError::Config(format!(
            "cannot read etcd {what} file {}: {e}",
            path.display()
        ))
    })
}

fn check_certs(path: &Path, pem: &[u8], what: &str) -> Result<(), StoreError> {
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        cert.map_err(|e| {
            StoreError::Config(format!(
                "etcd {what} file {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
        found += 1;
    }
    if found == 0 {
        return Err(StoreError::Config(format!(
            "etcd {what} file {} contains no PEM certificate",
            path.display()
        )));
    }
    Ok(())
}

fn check_key(path: &Path, pem: &[u8]) -> Result<(), StoreError> {
    // The parser's error text is not included: it could quote part of the key.
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(StoreError::Config(format!(
            "etcd private key file {} contains no PEM private key",
            path.display()
        ))),
        Err(_) => Err(StoreError::Config(format!(
            "etcd private key file {} is not a valid PEM private key",
            path.display()
        ))),
    }
}

/// Reads and checks the PEM files up front, so a bad file is a `Config` error naming it rather
/// than an opaque handshake failure later.
fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    let mut options = TlsOptions::new();
    options = match &tls.ca_file {
        Some(path) => {
            let pem = read_pem(path, "CA certificate")?;
            check_certs(path, &pem, "CA certificate")?;
            options.ca_certificate(Certificate::from_pem(pem))
        }
        None => options.with_native_roots(),
    };
    if let Some((cert_path, key_path)) = &tls.identity {
        let cert = read_pem(cert_path, "client certificate")?;
        check_certs(cert_path, &cert, "client certificate")?;
        let key = read_pem(key_path, "private key")?;
        check_key(key_path, &key)?;
        options = options.identity(Identity::from_pem(cert, key));
    }
    Ok(options)
}

fn endpoint_urls(options: &EtcdOptions) -> Result<Vec<String>, StoreError> {
    if options.endpoints.is_empty() {
        return Err(StoreError::Config("no etcd endpoints configured".into()));
    }
    let scheme = if options.tls.is_some() {
        "https://"
    } else {
        "http://"
    };
    options
        .endpoints
        .iter()
        .map(|ep| {
            let ep = ep.trim();
            let bare = ep.strip_prefix("http://").or_else(|| ep.strip_prefix("https://"));
            match bare {
                Some(_) if !ep.starts_with(scheme) => Err(StoreError::Config(format!(
                    "etcd endpoint {ep} does not match the TLS setting (expected {scheme}host:port or host:port)"
                ))),
                Some(rest) if !rest.is_empty() => Ok(ep.to_owned()),
                None if !ep.is_empty() && !ep.contains("://") => Ok(format!("{scheme}{ep}")),
                _ => Err(StoreError::Config(format!("invalid etcd endpoint {ep:?} (expected host:port)"))),
            }
        })
        .collect()
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn convert_compare(c: Compare) -> etcd_client::Compare {
    let op = match c.op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
        CompareOp::Less => etcd_client::CompareOp::Less,
    };
    match c.target {
        CompareTarget::CreateRevision(r) => etcd_client::Compare::create_revision(c.key, op, r),
        CompareTarget::ModRevision(r) => etcd_client::Compare::mod_revision(c.key, op, r),
        CompareTarget::Version(v) => etcd_client::Compare::version(c.key, op, v),
        CompareTarget::Value(v) => etcd_client::Compare::value(c.key, op, v),
    }
}

fn convert_op(op: TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            let options = lease
                .filter(|l| *l != 0)
                .map(|l| PutOptions::new().with_lease(l));
            etcd_client::TxnOp::put(key, value, options)
        }
        TxnOp::Delete { key } => etcd_client::TxnOp::delete(key, None),
        TxnOp::DeletePrefix { prefix } => {
            etcd_client::TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
        }
        TxnOp::Get { key } => etcd_client::TxnOp::get(key, None),
        TxnOp::GetPrefix { prefix } => {
            etcd_client::TxnOp::get(prefix, Some(GetOptions::new().with_prefix()))
        }
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

/// Largest response accepted from etcd. The client's default (4 MiB) is below what a whole
/// prefix read returns once a cluster has a few thousand jobs with their results: a new active
/// node's dispatcher reads them in one snapshot, and could then never start. etcd is trusted;
/// the bound only keeps a runaway answer from taking all memory.
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

impl EtcdStore {
    /// The KV client, with [`MAX_RESPONSE`].
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE)
    }

    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let urls = endpoint_urls(&options)?;
        let endpoints = urls.join(",");
        let mut connect = ConnectOptions::new()
            .with_require_leader(true)
            .with_connect_timeout(options.dial_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, options.request_timeout)
            .with_keep_alive_while_idle(false);
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls_options(tls)?);
        }
        let client =
            match tokio::time::timeout(options.dial_timeout, Client::connect(&urls, Some(connect)))
                .await
            {
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot connect to etcd at {endpoints} within {:?}",
                        options.dial_timeout
                    )))
                }
                Ok(Err(e)) => return Err(connect_error(&endpoints, e)),
                Ok(Ok(client)) => client,
            };
        let store = Self {
            client,
            endpoints,
            request_timeout: options.request_timeout,
            keepers: Mutex::new(HashMap::new()),
        };
        // The channel connects lazily; one linearizable read proves the endpoints answer, the TLS
        // setup is accepted and there is a leader, and bounds all that by the dial timeout.
        let kv = store.kv();
        let probe = store
            .call_within(options.dial_timeout, "connection check", None, || {
                let mut kv = kv.clone();
                async move { kv.get("/", Some(GetOptions::new().with_count_only())).await }
            })
            .await;
        match probe {
            Ok(_) => Ok(store),
            // A server requiring client certificates closes the connection after the handshake
            // and the TLS alert does not survive tonic's error mapping; say what is most likely
            // wrong instead of only "connection closed".
            Err(StoreError::Unavailable(msg))
                if options.tls.as_ref().is_some_and(|t| t.identity.is_none()) =>
            {
                Err(StoreError::Unavailable(format!(
                    "{msg} (if etcd requires client certificates, configure a client certificate and key: none is set)"
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn map_err(&self, what: &str, lease: Option<LeaseId>, e: etcd_client::Error) -> StoreError {
        map_error(&self.endpoints, what, lease, e)
    }

    /// Runs a request, retrying it while it fails before reaching any server, within the
    /// request timeout.
    ///
    /// tonic's balancer keeps a member that refuses connections in its ready set and hands it
    /// requests which then fail with "connection refused"; such a request was never sent, so
    /// sending it again (to whichever member is picked next) is safe even for writes. Without
    /// this, one member down would make a share of all calls fail.
    async fn call<T, F, Fut>(
        &self,
        what: &str,
        lease: Option<LeaseId>,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_within(self.request_timeout, what, lease, attempt)
            .await
    }

    async fn call_within<T, F, Fut>(
        &self,
        limit: Duration,
        what: &str,
        lease: Option<LeaseId>,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last_error = None;
        loop {
            match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if never_sent(&e) && tokio::time::Instant::now() < deadline => {
                    last_error = Some(e);
                    let pause = tokio::time::Instant::now() + CONNECT_RETRY_PAUSE;
                    tokio::time::sleep_until(pause.min(deadline)).await;
                }
                Ok(Err(e)) => return Err(self.map_err(what, lease, e)),
                // The last connection error says more than "timed out".
                Err(_) => {
                    return Err(match last_error {
                        Some(e) => self.map_err(what, lease, e),
                        None => StoreError::Unavailable(format!(
                            "etcd {what} timed out after {limit:?} ({})",
                            self.endpoints
                        )),
                    })
                }
            }
        }
    }

    /// Bounds one step of a stream by the request timeout and maps its error.
    async fn once<T>(
        &self,
        what: &str,
        lease: Option<LeaseId>,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd {what} timed out after {:?} ({})",
                self.request_timeout, self.endpoints
            ))),
            Ok(result) => result.map_err(|e| self.map_err(what, lease, e)),
        }
    }

    async fn renew(
        &self,
        lease: LeaseId,
        slot: &mut Option<Keeper>,
    ) -> Result<Duration, StoreError> {
        if slot.as_ref().is_some_and(|k| !k.clean) {
            *slot = None;
        }
        let keeper = match slot {
            Some(keeper) => keeper,
            None => {
                let client = self.client.lease_client();
                let (keeper, stream) = self
                    .call("lease keep-alive", Some(lease), || {
                        let mut client = client.clone();
                        async move { client.keep_alive(lease).await }
                    })
                    .await?;
                slot.insert(Keeper {
                    keeper,
                    stream,
                    clean: true,
                })
            }
        };
        keeper.clean = false;
        self.once("lease keep-alive", Some(lease), keeper.keeper.keep_alive())
            .await?;
        let response = self
            .once("lease keep-alive", Some(lease), keeper.stream.message())
            .await?;
        keeper.clean = true;
        match response {
            None => Err(StoreError::Unavailable(format!(
                "etcd closed the lease keep-alive stream ({})",
                self.endpoints
            ))),
            Some(r) if r.ttl() <= 0 => Err(StoreError::LeaseNotFound(lease)),
            Some(r) => Ok(Duration::from_secs(r.ttl().unsigned_abs())),
        }
    }

    async fn forget_keeper(&self, lease: LeaseId) {
        self.keepers.lock().await.remove(&lease);
    }
}

fn connect_error(endpoints: &str, e: etcd_client::Error) -> StoreError {
    match e {
        etcd_client::Error::InvalidArgs(msg) => {
            StoreError::Config(format!("etcd endpoints {endpoints}: {msg}"))
        }
        etcd_client::Error::InvalidUri(u) => {
            StoreError::Config(format!("invalid etcd endpoint in {endpoints}: {u}"))
        }
        etcd_client::Error::TransportError(t) => StoreError::Config(format!(
            "cannot set up the connection to etcd at {endpoints}: {}",
            chain(&t)
        )),
        other => map_error(endpoints, "connect", None, other),
    }
}

/// True for errors raised before the request left this process (no connection could be made),
/// after which retrying cannot apply a write twice.
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = match e {
        etcd_client::Error::GRpcStatus(status) => describe_status(status),
        etcd_client::Error::TransportError(t) => chain(t),
        _ => return false,
    };
    text.contains("tcp connect error") || text.contains("error trying to connect")
}

fn map_error(
    endpoints: &str,
    what: &str,
    lease: Option<LeaseId>,
    e: etcd_client::Error,
) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => {
            let msg = describe_status(&status);
            match status.code() {
                tonic::Code::NotFound if msg.contains("lease not found") => {
                    StoreError::LeaseNotFound(lease.unwrap_or(0))
                }
                tonic::Code::OutOfRange if msg.contains("compacted") => StoreError::Compacted {
                    requested: 0,
                    compacted: 0,
                },
                tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::OutOfRange => {
                    StoreError::InvalidArgument(format!("etcd refused {what}: {msg}"))
                }
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                    StoreError::Config(format!("etcd at {endpoints} refused {what}: {msg}"))
                }
                _ => StoreError::Unavailable(format!("etcd {what} failed ({endpoints}): {msg}")),
            }
        }
        E::LeaseKeepAliveError(msg) if msg.contains("lease not found") => {
            StoreError::LeaseNotFound(lease.unwrap_or(0))
        }
        E::InvalidArgs(msg) => StoreError::InvalidArgument(format!("etcd {what}: {msg}")),
        other => StoreError::Unavailable(format!(
            "etcd {what} failed ({endpoints}): {}",
            chain(&other)
        )),
    }
}

struct WatchState {
    stream: etcd_client::WatchStream,
    pending: VecDeque<WatchEvent>,
    done: bool,
    requested: Revision,
    endpoints: String,
}

fn push_events(state: &mut WatchState, response: &etcd_client::WatchResponse) {
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        let kind = match event.event_type() {
            etcd_client::EventType::Put => EventKind::Put,
            etcd_client::EventType::Delete => EventKind::Delete,
        };
        state.pending.push_back(WatchEvent {
            kind,
            kv: convert_kv(kv),
        });
    }
}

fn cancel_error(
    response: &etcd_client::WatchResponse,
    requested: Revision,
    endpoints: &str,
) -> StoreError {
    if response.compact_revision() > 0 {
        // etcd reports the first revision still available; the trait reports the last one gone.
        StoreError::Compacted {
            requested,
            compacted: response.compact_revision() - 1,
        }
    } else {
        let reason = response.cancel_reason();
        let reason = if reason.is_empty() {
            "no reason given"
        } else {
            reason
        };
        StoreError::Unavailable(format!("etcd cancelled the watch ({endpoints}): {reason}"))
    }
}

async fn next_event(mut state: WatchState) -> Option<(Result<WatchEvent, StoreError>, WatchState)> {
    loop {
        if let Some(event) = state.pending.pop_front() {
            return Some((Ok(event), state));
        }
        if state.done {
            return None;
        }
        // The stream always ends with an error so a consumer cannot mistake loss for silence.
        let error = match state.stream.message().await {
            Ok(Some(response)) if response.canceled() => {
                cancel_error(&response, state.requested, &state.endpoints)
            }
            Ok(Some(response)) => {
                push_events(&mut state, &response);
                continue;
            }
            Ok(None) => StoreError::Unavailable(format!(
                "etcd closed the watch stream ({})",
                state.endpoints
            )),
            Err(e) => map_error(&state.endpoints, "watch", None, e),
        };
        state.done = true;
        return Some((Err(error), state));
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let kv = self.kv();
        let response = self
            .call("get", None, || {
                let mut kv = kv.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(response.kvs().first().map(convert_kv))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let kv = self.kv();
        let response = self
            .call("list", None, || {
                let mut kv = kv.clone();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(response.kvs().iter().map(convert_kv).collect())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let kv = self.kv();
        let options = lease
            .filter(|l| *l != 0)
            .map(|l| PutOptions::new().with_lease(l));
        let response = self
            .call("put", lease, || {
                let (mut kv, value, options) = (kv.clone(), value.clone(), options.clone());
                async move { kv.put(key, value, options).await }
            })
            .await?;
        Ok(header_revision(response.header()))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let kv = self.kv();
        let response = self
            .call("delete", None, || {
                let mut kv = kv.clone();
                async move { kv.delete(key, None).await }
            })
            .await?;
        Ok(response.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        let kv = self.kv();
        let response = self
            .call("delete", None, || {
                let mut kv = kv.clone();
                async move {
                    kv.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok(response.deleted())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        // A put with a lease names it, so "lease not found" can say which one.
        let lease = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                TxnOp::Put { lease: Some(l), .. } if *l != 0 => Some(*l),
                _ => None,
            });
        let request = etcd_client::Txn::new()
            .when(
                txn.compares
                    .into_iter()
                    .map(convert_compare)
                    .collect::<Vec<_>>(),
            )
            .and_then(txn.success.into_iter().map(convert_op).collect::<Vec<_>>())
            .or_else(txn.failure.into_iter().map(convert_op).collect::<Vec<_>>());
        let kv = self.kv();
        let response = self
            .call("transaction", lease, || {
                let (mut kv, request) = (kv.clone(), request.clone());
                async move { kv.txn(request).await }
            })
            .await?;
        let responses = response
            .op_responses()
            .into_iter()
            .map(|r| match r {
                etcd_client::TxnOpResponse::Put(_) | etcd_client::TxnOpResponse::Txn(_) => {
                    TxnOpResponse::Put
                }
                etcd_client::TxnOpResponse::Delete(d) => TxnOpResponse::Delete {
                    deleted: d.deleted(),
                },
                etcd_client::TxnOpResponse::Get(g) => {
                    TxnOpResponse::Get(g.kvs().iter().map(convert_kv).collect())
                }
            })
            .collect();
        Ok(TxnResponse {
            succeeded: response.succeeded(),
            revision: header_revision(response.header()),
            responses,
        })
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, StoreError> {
        let start = start_revision.filter(|r| *r > 0);
        let mut options = WatchOptions::new().with_prefix();
        if let Some(r) = start {
            options = options.with_start_revision(r);
        }
        let client = self.client.watch_client();
        let mut stream = self
            .call("watch", None, || {
                let (mut client, options) = (client.clone(), options.clone());
                async move { client.watch(prefix, Some(options)).await }
            })
            .await?;
        // etcd confirms a new watch with a "created" response; waiting for it makes a broken
        // connection fail here rather than on the first event.
        let first = self.once("watch", None, stream.message()).await?;
        let mut state = WatchState {
            stream,
            pending: VecDeque::new(),
            done: false,
            requested: start.unwrap_or(0),
            endpoints: self.endpoints.clone(),
        };
        match first {
            None => {
                return Err(StoreError::Unavailable(format!(
                    "etcd closed the watch stream ({})",
                    self.endpoints
                )))
            }
            Some(response) if response.canceled() => {
                // Reported as the stream's first item, like the embedded backends do.
                let error = cancel_error(&response, state.requested, &self.endpoints);
                state.done = true;
                return Ok(Box::pin(futures::stream::once(async move { Err(error) })));
            }
            Some(response) => push_events(&mut state, &response),
        }
        Ok(Box::pin(futures::stream::unfold(state, next_event)))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument(
                "lease TTL must be positive".into(),
            ));
        }
        // etcd counts whole seconds; round up so a lease never lives shorter than asked.
        let seconds = i64::try_from(
            ttl.as_secs()
                .saturating_add(u64::from(ttl.subsec_nanos() > 0)),
        )
        .unwrap_or(i64::MAX);
        let client = self.client.lease_client();
        let response = self
            .call("lease grant", None, || {
                let mut client = client.clone();
                async move { client.grant(seconds, None).await }
            })
            .await?;
        if !response.error().is_empty() {
            return Err(StoreError::Unavailable(format!(
                "etcd lease grant failed ({}): {}",
                self.endpoints,
                response.error()
            )));
        }
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let slot = self.keepers.lock().await.entry(lease).or_default().clone();
        let mut keeper = slot.lock().await;
        let had_stream = keeper.is_some();
        let mut result = self.renew(lease, &mut keeper).await;
        if had_stream && matches!(result, Err(StoreError::Unavailable(_))) {
            // A cached stream may have died with its connection; one fresh stream gets a
            // definite answer instead of failing a renewal that would succeed.
            *keeper = None;
            result = self.renew(lease, &mut keeper).await;
        }
        match &result {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                *keeper = None;
                drop(keeper);
                self.forget_keeper(lease).await;
            }
            Err(_) => *keeper = None,
        }
        result
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.forget_keeper(lease).await;
        let client = self.client.lease_client();
        self.call("lease revoke", Some(lease), || {
            let mut client = client.clone();
            async move { client.revoke(lease).await }
        })
        .await?;
        Ok(())
    }

    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let client = self.client.lease_client();
        match self
            .call("lease time-to-live", Some(lease), || {
                let mut client = client.clone();
                async move { client.time_to_live(lease, None).await }
            })
            .await
        {
            // etcd truncates to whole seconds: 0 means "under a second left", -1 "no such lease".
            Ok(response) if response.ttl() >= 0 => {
                Ok(Some(Duration::from_secs(response.ttl().unsigned_abs())))
            }
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        let kv = self.kv();
        let read = self
            .call("status", None, || {
                let mut kv = kv.clone();
                async move { kv.get("/", Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        let maintenance = self.client.maintenance_client();
        let status = self
            .call("status", None, || {
                let mut maintenance = maintenance.clone();
                async move { maintenance.status().await }
            })
            .await?;
        Ok(StoreStatus {
            backend: "etcd",
            revision: header_revision(read.header()),
            endpoints: self.endpoints.clone(),
            version: Some(status.version().to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(endpoints: &[&str], tls: bool) -> EtcdOptions {
        let mut o = EtcdOptions::new(endpoints.iter().copied());
        if tls {
            o.tls = Some(EtcdTls::default());
        }
        o
    }

    #[test]
    fn endpoints_get_the_scheme_of_the_tls_setting() {
        assert_eq!(
            endpoint_urls(&opts(&["127.0.0.1:2379"], false)).unwrap(),
            vec!["http://127.0.0.1:2379"]
        );
        assert_eq!(
            endpoint_urls(&opts(&["a:1", "https://b:2"], true)).unwrap(),
            vec!["https://a:1", "https://b:2"]
        );
        assert!(matches!(
            endpoint_urls(&opts(&["http://a:1"], true)),
            Err(StoreError::Config(_))
        ));
        assert!(matches!(
            endpoint_urls(&opts(&[], false)),
            Err(StoreError::Config(_))
        ));
        assert!(matches!(
            endpoint_urls(&opts(&["ftp://x"], false)),
            Err(StoreError::Config(_))
        ));
    }

    #[test]
    fn bad_tls_files_name_the_file() {
        let dir = std::env::temp_dir().join(format!("autogate-store-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let missing = dir.join("missing.pem");
        for tls in [
            EtcdTls {
                ca_file: Some(missing.clone()),
                identity: None,
            },
            EtcdTls {
                ca_file: Some(garbage.clone()),
                identity: None,
            },
        ] {
            let err = tls_options(&tls).unwrap_err();
            let StoreError::Config(msg) = &err else {
                panic!("{err:?}")
            };
            assert!(
                msg.contains(&tls.ca_file.as_ref().unwrap().display().to_string()),
                "{msg}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
