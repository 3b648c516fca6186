//! What stands between an unauthenticated caller and the password hash: argon2id costs ~19 MiB
//! and tens of milliseconds per check, so a flood of logins that each got a hash would exhaust
//! the node's memory (300 parallel bad logins once took 5.8 GB). Three bounds, all decided
//! before any hash is computed:
//!
//! - **Hashing slots.** At most 2 × the available parallelism hashes run at once, and never more
//!   than [`MAX_SLOTS`] (every hash of the node: logins, new users, password changes). A login
//!   that finds no free slot is refused at once with 503 and `Retry-After` instead of waiting in
//!   an unbounded queue; an authenticated admin's hash waits for a slot.
//! - **Backoff per source address.** After [`FREE_FAILURES`] failed logins from one address (an
//!   IPv6 address counts by its /64, which one host usually owns whole), its logins are refused
//!   with 429 and `Retry-After` for a delay that doubles with every further failure, up to
//!   [`MAX_DELAY`]. Refusals are not failures: hammering a refused address does not lengthen
//!   its delay, and costs the node no hash.
//! - **Backoff per user.** The same count per user name. While a user is in backoff, its logins
//!   are still checked from an address with no recent failure — the rightful user, logging in
//!   from a clean address, is not locked out by someone else's guesses — and refused from an
//!   address that has failed before, so each attacking address gets at most one guess at that
//!   user while it lasts.
//!
//! The hashes run on [`LoginGuard::slots`] threads of their own, not on tokio's blocking pool,
//! and each thread reuses one argon2 memory block (see `auth::argon2_into`): a fresh 19 MiB
//! block per hash, freed into one malloc arena or another, left hundreds of MiB resident after
//! a flood even with four hashes at a time; reused blocks keep it at slots × 19 MiB.
//!
//! A standby core node forwards logins to the active node, which then sees the standby's
//! address, not the caller's: counting it there would let a few bad logins through one standby
//! refuse everyone who logs in through it. So the standby keeps the backoff of its callers'
//! addresses itself (it refuses an address in backoff before forwarding, and counts the 401s
//! the active node answers), and the active node counts a login forwarded by a core node of the
//! cluster against the user only ([`Source::Standby`]). A caller claiming to be a standby from
//! an address that is no core node's is counted as itself.
//!
//! A success clears the user's count (not the address's: one valid account must not buy an
//! address fresh guesses at the others). Counts are forgotten [`FORGET_AFTER`] after their last
//! failure, and each table holds at most [`MAX_ENTRIES`]: when full, the forgotten entries go,
//! then the oldest, so memory stays bounded whatever the number of names or addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autogate_runtime::ratelimit::LogLimiter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Failed logins a user or an address gets before the backoff starts.
pub const FREE_FAILURES: u32 = 5;
/// The first delay once a count reaches [`FREE_FAILURES`]; it doubles with each failure.
const BASE_DELAY: Duration = Duration::from_secs(1);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// How long a count is kept after its last failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Entries per table (users, addresses).
const MAX_ENTRIES: usize = 10_000;
/// The most hashes at once whatever the number of cores: each holds 19 MiB, so the memory a
/// flood can make the node use stays well under 256 MB on any machine (8 logins at a time are
/// already hundreds of logins a second).
pub const MAX_SLOTS: usize = 8;
/// What a login refused for want of a hashing slot is told to wait.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// At most one log line per this interval about logins refused for want of a slot.
const BUSY_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Where a login comes from, as far as the backoff is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The caller's own address.
    Client(IpAddr),
    /// A standby core node of the cluster, at this address, forwarded it: the standby keeps
    /// the backoff of its caller's address, so only the user is counted here.
    Standby(IpAddr),
    /// No address is known (the router driven without a connection, as in unit tests).
    Unknown,
}

impl Source {
    fn client(self) -> Option<IpAddr> {
        match self {
            Source::Client(a) => Some(a),
            Source::Standby(_) | Source::Unknown => None,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The whole address in logs (the /64 is only the backoff's key).
            Source::Client(a) => write!(f, "{}", a.to_canonical()),
            Source::Standby(a) => write!(f, "standby {a} (forwarded)"),
            Source::Unknown => f.write_str("unknown"),
        }
    }
}

/// Why a login was refused before its password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every hashing slot is taken: 503, retry after [`BUSY_RETRY_AFTER`].
    Busy,
    /// Too many failures from this address, or for this user from an address that failed
    /// before: 429, retry after the given time.
    Backoff(Duration),
}

/// A login allowed to check its password; holds its hashing slot until dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

impl Entry {
    /// When the backoff of this entry ends (`None`: not in backoff).
    fn until(&self) -> Option<Instant> {
        let over = self.failures.checked_sub(FREE_FAILURES)?;
        let delay = BASE_DELAY
            .checked_mul(1u32.checked_shl(over.min(16)).unwrap_or(u32::MAX))
            .unwrap_or(MAX_DELAY)
            .min(MAX_DELAY);
        Some(self.last + delay)
    }

    fn forgotten(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= FORGET_AFTER
    }
}

/// Failure counts by key, bounded.
#[derive(Debug, Default)]
struct Counts {
    entries: HashMap<String, Entry>,
}

impl Counts {
    fn get(&self, key: &str, now: Instant) -> Option<Entry> {
        self.entries.get(key).copied().filter(|e| !e.forgotten(now))
    }

    /// The time left in `key`'s backoff.
    fn remaining(&self, key: &str, now: Instant) -> Option<Duration> {
        let until = self.get(key, now)?.until()?;
        (until > now).then(|| until - now)
    }

    fn fail(&mut self, key: &str, now: Instant) -> Entry {
        if !self.entries.contains_key(key) && self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, e| !e.forgotten(now));
            if self.entries.len() >= MAX_ENTRIES {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        let entry = self.entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            last: now,
        });
        if entry.forgotten(now) {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        *entry
    }

    fn clear(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

#[derive(Debug, Default)]
struct Tables {
    users: Counts,
    addresses: Counts,
}

/// The hashing slots and the backoff tables of one node. Cheap to clone.
#[derive(Clone)]
pub struct LoginGuard {
    slots: Arc<Semaphore>,
    /// Jobs for the hashing threads (as many as slots; they end when the last guard goes).
    jobs: std::sync::mpsc::SyncSender<Job>,
    size: usize,
    tables: Arc<Mutex<Tables>>,
    /// At most one "busy" line per [`BUSY_LOG_INTERVAL`].
    busy_log: Arc<LogLimiter>,
}

type Job = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard")
            .field("slots", &self.size)
            .finish_non_exhaustive()
    }
}

/// The backoff key of a client address: the client the port's connection caps count it under
/// (an IPv6 address by its /64).
fn address_key(addr: IpAddr) -> String {
    autogate_tls::client_source(addr).to_string()
}

/// A user name as it may appear in a log line: what a caller typed, so at most 64 characters
/// with control and non-ASCII characters escaped (no forged log lines).
pub fn loggable(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

impl LoginGuard {
    /// Slots for 2 × the available parallelism, from 2 to [`MAX_SLOTS`].
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::with_slots((2 * cores).clamp(2, MAX_SLOTS))
    }

    pub fn with_slots(size: usize) -> Self {
        // Jobs are only sent by holders of a slot, so the queue never holds more than `size`.
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(size);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..size {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a password-hashing thread: {e}");
            }
        }
        LoginGuard {
            slots: Arc::new(Semaphore::new(size)),
            jobs,
            size,
            tables: Arc::default(),
            busy_log: Arc::new(LogLimiter::new(1.0 / BUSY_LOG_INTERVAL.as_secs_f64(), 1.0)),
        }
    }

    /// Runs `f` (a hash) on a hashing thread. The caller holds a slot, which is what bounds
    /// how many run at once. `None` when no hashing thread could take it.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.try_send(job).ok()?;
        rx.await.ok()
    }

    /// How many hashes may run at once.
    pub fn slots(&self) -> usize {
        self.size
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides whether a login of `user` from `source` may check its password, and takes its
    /// hashing slot. Nothing is hashed before this says yes.
    pub fn admit(&self, user: &str, source: Source) -> Result<Admission, Refusal> {
        let now = Instant::now();
        {
            let t = self.tables();
            let address = source.client().map(address_key);
            if let Some(left) = address
                .as_deref()
                .and_then(|a| t.addresses.remaining(a, now))
            {
                return Err(Refusal::Backoff(left));
            }
            if let Some(left) = t.users.remaining(user, now) {
                // The user is in backoff: heard only from an address without failures (one
                // behind a standby, or unknown, cannot be told clean).
                let clean = address.is_some_and(|a| t.addresses.get(&a, now).is_none());
                if !clean {
                    return Err(Refusal::Backoff(left));
                }
            }
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admission { _permit: permit }),
            Err(_) => {
                self.log_busy(source);
                Err(Refusal::Busy)
            }
        }
    }

    /// On a standby, before it forwards a login: the backoff of the caller's address, which
    /// the standby keeps (see the module's notes).
    pub fn address_refusal(&self, addr: IpAddr) -> Option<Refusal> {
        self.tables()
            .addresses
            .remaining(&address_key(addr), Instant::now())
            .map(Refusal::Backoff)
    }

    /// On a standby, when the active node answered a forwarded login 401: counts the failure
    /// against the caller's address, and logs it with the address and the user name.
    pub fn failed_at_active(&self, user: &str, addr: IpAddr) {
        let now = Instant::now();
        let address = address_key(addr);
        let a = self.tables().addresses.fail(&address, now);
        tracing::warn!(
            source = %address,
            user = %loggable(user),
            source_failures = a.failures,
            "login failed: invalid username or password (checked by the active node){}",
            match a.until().map(|u| u.saturating_duration_since(now).as_secs()) {
                Some(s) => format!("; further logins refused for {s}s (backoff)"),
                None => String::new(),
            }
        );
    }

    /// A hashing slot for an authenticated operation (a new user, a password change): waits
    /// for one, so the bound on concurrent hashes holds for those too.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    fn log_busy(&self, source: Source) {
        if self.busy_log.allow().is_some() {
            tracing::warn!(
                %source,
                slots = self.size,
                "login refused: every password-hashing slot is busy (503; further refusals are not logged for {}s)",
                BUSY_LOG_INTERVAL.as_secs()
            );
        }
    }

    /// Counts a failed login (wrong password or unknown user) against the user and the
    /// address, and logs it with both — never with the password.
    pub fn failed(&self, user: &str, source: Source) {
        let now = Instant::now();
        let (u, a) = {
            let mut t = self.tables();
            let a = source
                .client()
                .map(|a| t.addresses.fail(&address_key(a), now));
            (t.users.fail(user, now), a)
        };
        let backoff = |e: Option<Entry>| {
            e.and_then(|e| e.until())
                .map(|until| until.saturating_duration_since(now).as_secs())
        };
        tracing::warn!(
            %source,
            user = %loggable(user),
            user_failures = u.failures,
            source_failures = a.map_or(0, |a| a.failures),
            "login failed: invalid username or password{}",
            match backoff(Some(u)).max(backoff(a)) {
                Some(s) => format!("; further logins refused for {s}s (backoff)"),
                None => String::new(),
            }
        );
    }

    /// A successful login: the user's count starts again.
    pub fn succeeded(&self, user: &str) {
        self.tables().users.clear(user);
    }

    #[cfg(test)]
    fn entries(&self) -> (usize, usize) {
        let t = self.tables();
        (t.users.entries.len(), t.addresses.entries.len())
    }
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Source {
        s.parse().map_or(Source::Unknown, Source::Client)
    }

    #[test]
    fn slots_are_bounded_and_refuse_at_once() {
        let g = LoginGuard::with_slots(2);
        let a = g.admit("u", ip("10.0.0.1")).expect("first");
        let _b = g.admit("u", ip("10.0.0.1")).expect("second");
        assert_eq!(g.admit("u", ip("10.0.0.1")).map(|_| ()), Err(Refusal::Busy));
        drop(a);
        assert!(g.admit("u", ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn an_address_backs_off_after_its_free_failures() {
        let g = LoginGuard::with_slots(4);
        for i in 0..FREE_FAILURES {
            assert!(g.admit(&format!("u{i}"), ip("10.0.0.1")).is_ok());
            g.failed(&format!("u{i}"), ip("10.0.0.1"));
        }
        match g.admit("other", ip("10.0.0.1")) {
            Err(Refusal::Backoff(d)) => assert!(d <= BASE_DELAY && d > Duration::ZERO, "{d:?}"),
            r => panic!("{r:?}"),
        }
        // Another address is heard; an IPv6 /64 is one address.
        assert!(g.admit("other", ip("10.0.0.2")).is_ok());
        for _ in 0..FREE_FAILURES + 10 {
            g.failed("x", ip("2001:db8::1"));
        }
        match g.admit("x", ip("2001:db8::ffff")) {
            Err(Refusal::Backoff(d)) => assert!(d <= MAX_DELAY && d > BASE_DELAY, "{d:?}"),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_user_in_backoff_is_still_heard_from_a_clean_address() {
        let g = LoginGuard::with_slots(4);
        for i in 0..=FREE_FAILURES {
            g.failed("admin", ip(&format!("10.0.1.{i}")));
        }
        // An address that failed (once) is refused for that user, not for others.
        assert!(matches!(
            g.admit("admin", ip("10.0.1.1")),
            Err(Refusal::Backoff(_))
        ));
        assert!(g.admit("bob", ip("10.0.1.1")).is_ok());
        // A clean address is heard, and a success clears the user's count.
        assert!(g.admit("admin", ip("192.168.0.9")).is_ok());
        g.succeeded("admin");
        assert!(g.admit("admin", ip("10.0.1.1")).is_ok());
    }

    /// Logins a standby forwards count against the user only: a flood through one standby does
    /// not refuse the others who log in through it, and the standby refuses its flooding caller
    /// itself.
    #[test]
    fn a_standby_is_not_its_callers() {
        let active = LoginGuard::with_slots(4);
        let standby: IpAddr = [10, 0, 0, 2].into();
        for i in 0..20 {
            active.failed(&format!("ghost{i}"), Source::Standby(standby));
        }
        assert!(active.admit("bob", Source::Standby(standby)).is_ok());
        // A caller at the standby's address that does not come as forwarded is counted.
        for _ in 0..FREE_FAILURES {
            active.failed("x", Source::Client(standby));
        }
        assert!(active.admit("bob", Source::Client(standby)).is_err());
        let on_standby = LoginGuard::with_slots(1);
        let caller: IpAddr = [192, 168, 1, 9].into();
        for _ in 0..FREE_FAILURES {
            assert_eq!(on_standby.address_refusal(caller), None);
            on_standby.failed_at_active("admin", caller);
        }
        assert!(matches!(
            on_standby.address_refusal(caller),
            Some(Refusal::Backoff(_))
        ));
        assert_eq!(on_standby.address_refusal([192, 168, 1, 10].into()), None);
    }

    #[test]
    fn tables_stay_bounded() {
        let g = LoginGuard::with_slots(1);
        for i in 0..(MAX_ENTRIES + 500) {
            let a = std::net::Ipv4Addr::from(u32::try_from(i).unwrap_or(0));
            g.failed(&format!("user{i}"), Source::Client(IpAddr::V4(a)));
        }
        let (users, addresses) = g.entries();
        assert!(users <= MAX_ENTRIES && addresses <= MAX_ENTRIES);
    }

    #[test]
    fn names_in_logs_cannot_forge_lines() {
        assert_eq!(loggable("bob"), "bob");
        assert_eq!(loggable("a\nb"), "a\\nb");
        assert!(loggable(&"x".repeat(500)).chars().count() <= 65);
    }
}
