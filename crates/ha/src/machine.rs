//! The election state machine of one core node: events in, commands out, no I/O.
//!
//! Time is an input (a monotonic [`Millis`] passed with every event) and nothing here reads a
//! clock, touches the network or draws random numbers, so every rule can be tested by feeding
//! events and looking at commands, and a whole cluster can be simulated deterministically. The
//! [driver](crate::driver) turns store responses, watches, keep-alives, probes and timers into
//! [`Event`]s and executes the [`Command`]s.
//!
//! The rules, in short:
//! * leader = the candidate with the lowest create revision; `term` = that create revision. A node
//!   acts only while its own key is the lowest *and* its lease is fresh: it stops at (send time of
//!   its last acknowledged keep-alive) + TTL − margin, margin = max(2 s, TTL/3), capped at TTL/2 so
//!   that TTLs under 4 s still leave a window in which to act. etcd only ends a lease TTL after it
//!   processed the renewal, which is later than its send time, so the node stops before anyone
//!   else can be elected.
//! * graceful hand-overs (shutdown, pause, switchover, preemption, lost manager) delete the key
//!   first and stop leader work in the same step, so the successor starts within a watch round trip.
//! * preferred successors: the active node names a target in its published node record
//!   (`handover_to`); standbys queued ahead of the target delete and re-create their keys, which
//!   puts them behind it; once the target is directly behind the active node, the active resigns.
//!   Keys are only ever created at the end of the queue, so "leader = lowest create revision" (what
//!   `etcdctl elect -l` shows) stays true throughout.
//! * crash proof: a standby probes the active node's advertised address; once that address has
//!   answered with the active node's id, refusals across the probe window prove the process gone,
//!   and so does an answer with another node id of the same host (a new process of a restarted
//!   node holds the port now). Timeouts prove nothing (a frozen process or a partition also time
//!   out), nor does an answer from another host (the address moved).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A lease id as the store reports it.
pub type LeaseId = i64;

/// A point on the node's monotonic clock, in milliseconds from an arbitrary origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// One hour: the window of the preemption flap budget.
const HOUR_MS: u64 = 3_600_000;
/// How long a switchover asked of the primary keeps it from taking the role back (it ends
/// earlier when the primary restarts or becomes active again). An hour, like the flap budget's
/// window: long enough for planned work on the primary's side; `ha pause` holds it longer.
pub const SWITCHOVER_HOLD_MS: u64 = HOUR_MS;
/// How long an active node waits for the outcome of its last attempt to reach the manager
/// (connect and hello timeouts, plus an attempt in flight when the retry was asked for) before
/// it hands over without it.
const MANAGER_RETRY_WAIT_MS: u64 = 35_000;
/// A standby's "I can reach the manager" counts against the active node's failure only if it
/// was said within that failure: it became true after the failure began, or it has stood for
/// this long since. Standbys check every second while the active node reports that it cannot
/// reach the manager (the server's leader work), so by then each has checked again.
pub const FRESH_REACHABILITY_MS: u64 = 2_000;
/// A probe whose result never came back is forgotten after this long.
const PROBE_LOST_MS: u64 = 5_000;
/// Shortest lease TTL the machine accepts (etcd counts whole seconds).
const MIN_TTL_MS: u64 = 1_000;

/// Settings of one node's election (the HA part of the `[connect]` section, in milliseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    pub node_id: String,
    pub is_primary: bool,
    pub lease_ttl_ms: u64,
    pub preempt_delay_ms: u64,
    pub connect_grace_ms: u64,
    /// Preemption hand-overs per hour; 0 disables preemption.
    pub max_transitions: u32,
    /// Refusals must span this long to prove the active node dead; 0 disables probing.
    pub probe_window_ms: u64,
    /// Probe period while the active node answers.
    pub probe_interval_ms: u64,
    /// `host:port` other nodes use to reach this node's API.
    pub advertise_address: Option<String>,
}

impl MachineConfig {
    /// The documented defaults for `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        MachineConfig {
            node_id: node_id.into(),
            is_primary: false,
            lease_ttl_ms: 10_000,
            preempt_delay_ms: 10_000,
            connect_grace_ms: 15_000,
            max_transitions: 6,
            probe_window_ms: 300,
            probe_interval_ms: 1_000,
            advertise_address: None,
        }
    }

    fn ttl(&self) -> u64 {
        self.lease_ttl_ms.max(MIN_TTL_MS)
    }

    /// How long before the lease's earliest possible expiry the active node stops acting.
    pub fn step_down_margin_ms(&self) -> u64 {
        let ttl = self.ttl();
        (ttl / 3).max(2_000).min(ttl / 2)
    }

    /// How long after the send time of an acknowledged keep-alive the node may act.
    pub fn acting_window_ms(&self) -> u64 {
        self.ttl() - self.step_down_margin_ms()
    }

    /// Keep-alive period: TTL/3, and at most half the acting window so one lost renewal is
    /// survived.
    pub fn keepalive_interval_ms(&self) -> u64 {
        (self.ttl() / 3).min(self.acting_window_ms() / 2).max(1)
    }

    fn fast_probe_ms(&self) -> u64 {
        (self.probe_window_ms / 3).max(20)
    }

    fn handover_timeout_ms(&self) -> u64 {
        (2 * self.ttl()).max(5_000)
    }
}

/// One election key as the election prefix lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The key's value.
    pub node_id: String,
    pub key: String,
    pub create_revision: i64,
    pub lease: LeaseId,
}

/// Role a node publishes in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Standby,
    Paused,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Active => "active",
            Role::Standby => "standby",
            Role::Paused => "paused",
        })
    }
}

/// What a node tells the others about itself (`/autogate/<cluster>/nodes/<id>`, bound to its lease).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// Advertised API address (`host:port`).
    pub address: Option<String>,
    pub is_primary: bool,
    pub role: Role,
    pub manager_reachable: bool,
    pub paused: bool,
    /// Campaigning, not paused, and able to reach the manager: fit to take over.
    pub healthy: bool,
    /// Set by the active node: the candidate it is handing over to. Standbys queued ahead of it
    /// re-queue behind it.
    #[serde(default)]
    pub handover_to: Option<String>,
    /// A primary that was switched away from on purpose: no other node hands the role back to
    /// it while this holds (see [`SWITCHOVER_HOLD_MS`]).
    #[serde(default)]
    pub preempt_hold: bool,
}

/// Result of one probe of the active node's API address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// Connection refused: nothing listens there.
    Refused,
    /// `GET /api/v1/health` answered with this node id.
    Answered { node_id: String },
    /// No answer in time, or an answer that is not a health document: proves nothing.
    Timeout,
}

/// Why a node stopped acting as the active node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Shutdown,
    Paused,
    Switchover,
    Resigned,
    Preempted,
    ManagerUnreachable,
    /// No acknowledged keep-alive in time: the store may be lost.
    LeaseExpiring,
    LeaseLost,
    KeyDeleted,
    FencedWriteRejected,
    /// Another key is the lowest (not expected while the lease is held; kept for safety).
    Superseded,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Shutdown => "shutdown",
            StopReason::Paused => "paused",
            StopReason::Switchover => "switchover",
            StopReason::Resigned => "resigned",
            StopReason::Preempted => "handed over to the primary node",
            StopReason::ManagerUnreachable => "manager unreachable",
            StopReason::LeaseExpiring => "lease not renewed in time",
            StopReason::LeaseLost => "lease lost",
            StopReason::KeyDeleted => "election key deleted",
            StopReason::FencedWriteRejected => "fenced write rejected",
            StopReason::Superseded => "another candidate leads",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
}

/// Everything the machine reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// First event: ask for a lease.
    Start,
    /// A lease was granted for a request sent at `sent_at`.
    LeaseGranted {
        lease: LeaseId,
        sent_at: Millis,
    },
    /// A keep-alive sent at `sent_at` was acknowledged by the store.
    KeepAliveAcked {
        lease: LeaseId,
        sent_at: Millis,
    },
    KeepAliveFailed {
        lease: LeaseId,
        error: String,
    },
    /// The store says the lease no longer exists.
    LeaseLost {
        lease: LeaseId,
    },
    /// Our key for `lease` exists with this create revision (answer to campaign `attempt`).
    OwnKeyCreated {
        lease: LeaseId,
        attempt: u64,
        create_revision: i64,
    },
    /// The election prefix as of store revision `revision`.
    ElectionView {
        revision: i64,
        candidates: Vec<Candidate>,
    },
    /// Every node record currently stored.
    NodeRecords(Vec<NodeRecord>),
    /// This node can (still) reach the manager, or not: the manager link when active, a
    /// reachability check when standby.
    ManagerReachable(bool),
    /// An attempt to reach the manager that began after [`LocalCommand::RetryManager`] number
    /// `retry` was asked for has failed.
    ManagerRetryFailed {
        retry: u64,
    },
    ProbeResult {
        node_id: String,
        address: String,
        result: ProbeResult,
    },
    Tick,
    Pause,
    Resume,
    /// Operator switchover; answered with [`LocalCommand::SwitchoverOutcome`].
    Switchover {
        to: Option<String>,
    },
    /// Give up the active role now and queue again (no health check of the others).
    Resign,
    Shutdown,
    /// A fenced write made with `term` was refused by the store.
    FencedWriteRejected {
        term: u64,
    },
}

/// Everything the machine asks the driver to do, in the order it must happen: store calls go
/// to the store worker, which makes them one at a time in that order; local commands are
/// carried out by the machine's owner at once (they never wait on the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Store(StoreCommand),
    Local(LocalCommand),
}

/// Calls the store worker makes for the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreCommand {
    /// Grant a new lease (retrying until the store answers) and report [`Event::LeaseGranted`].
    GrantLease,
    /// Create `<prefix>/<lease hex>` = node id if absent; report [`Event::OwnKeyCreated`] with the
    /// same `attempt`.
    Campaign {
        lease: LeaseId,
        attempt: u64,
    },
    /// Delete our key (best effort; the lease bounds its life anyway).
    Resign {
        lease: LeaseId,
    },
    /// Revoke our own lease (best effort).
    RevokeLease {
        lease: LeaseId,
    },
    /// Revoke the lease of an active node proven dead.
    RevokePeerLease {
        node_id: String,
        lease: LeaseId,
    },
    PublishRecord {
        lease: LeaseId,
        record: NodeRecord,
    },
}

/// What the machine's owner does itself: follow the role, probe, log, set the timer, answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalCommand {
    /// Act as the active node with this fencing term (open the manager link).
    StartLeaderWork {
        term: u64,
        /// How long no other node led before this start, as seen here.
        waited_ms: Option<u64>,
    },
    StopLeaderWork {
        term: u64,
        reason: StopReason,
    },
    Probe {
        node_id: String,
        address: String,
    },
    Log {
        level: LogLevel,
        text: String,
    },
    /// Dial the manager once more at once (reset the back-off), and report a failure of that
    /// attempt with [`Event::ManagerRetryFailed`] and the same `retry`.
    RetryManager {
        retry: u64,
    },
    /// Deliver [`Event::Tick`] at `at` (replaces the previous timer).
    SetTimer {
        at: Millis,
    },
    /// Answer to [`Event::Switchover`].
    SwitchoverOutcome(Result<(), String>),
    /// Shutdown done: nothing more will be emitted.
    Finished,
}

impl From<StoreCommand> for Command {
    fn from(c: StoreCommand) -> Self {
        Command::Store(c)
    }
}

impl From<LocalCommand> for Command {
    fn from(c: LocalCommand) -> Self {
        Command::Local(c)
    }
}

/// The node's view of its role, for the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Leadership {
    Active { term: u64 },
    Standby { leader: Option<String> },
    Paused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    None,
    Granting,
    Held {
        id: LeaseId,
        /// Send time of the last acknowledged renewal (or of the grant).
        acked_sent: Millis,
        deadline: Millis,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Absent,
    /// Campaign attempt number in flight.
    Creating(u64),
    Created(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HandoverKind {
    Preempt,
    Switchover,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Handover {
    target: String,
    kind: HandoverKind,
    deadline: Millis,
}

/// Crash-proof bookkeeping for the current leader candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProbeTrack {
    node_id: String,
    address: String,
    lease: LeaseId,
    answered: bool,
    refused_since: Option<Millis>,
    revoked: bool,
    next_at: Millis,
}

/// A read-only picture of the machine for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineSnapshot {
    pub leadership: Leadership,
    pub lease: Option<LeaseId>,
    /// Lower bound of the lease's remaining life at the store.
    pub lease_remaining_ms: Option<u64>,
    /// Time left in which this node may act without another acknowledged keep-alive.
    pub acting_remaining_ms: Option<u64>,
    pub own_create_revision: Option<i64>,
    pub candidates: Vec<Candidate>,
    pub records: Vec<NodeRecord>,
    pub handover_to: Option<String>,
    pub manager_reachable: bool,
    pub preemptions_last_hour: usize,
    /// Time until a returning primary takes the active role back: on the primary while it
    /// counts down, on the active node that will hand over.
    pub preempt_in_ms: Option<u64>,
    /// Time left of the hold a switchover on this primary set.
    pub preempt_hold_ms: Option<u64>,
    /// The active node this standby watches for a crash, and whether its address has answered
    /// with its id (only then can refusals there prove it dead).
    pub crash_probe: Option<CrashProbe>,
}

/// What a standby knows about probing the active node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashProbe {
    pub node_id: String,
    pub address: String,
    pub verified: bool,
}

/// The election state machine of one node.
#[derive(Debug)]
pub struct Machine {
    cfg: MachineConfig,
    lease: Lease,
    key: Key,
    view_revision: i64,
    view: Vec<Candidate>,
    records: BTreeMap<String, NodeRecord>,
    acting: Option<u64>,
    paused: bool,
    finished: bool,
    manager_reachable: bool,
    manager_failing_since: Option<Millis>,
    /// The last attempt asked of the link before resigning for lack of the manager: its number,
    /// when it was asked for, and whether it failed.
    manager_retry: Option<(u64, Millis, bool)>,
    manager_retries: u64,
    /// Since when (on our clock) each other node's record has said it reaches the manager.
    reachable_since: BTreeMap<String, Millis>,
    active_since: Option<Millis>,
    leader_logged: Option<String>,
    no_leader_since: Option<Millis>,
    handover: Option<Handover>,
    preemptions: VecDeque<Millis>,
    primary_healthy_since: BTreeMap<String, Millis>,
    /// On a primary standby: since when it has been waiting to take the role back.
    countdown_since: Option<Millis>,
    /// On a primary: until when a switchover keeps it from taking the role back.
    preempt_hold_until: Option<Millis>,
    budget_warned: bool,
    two_primaries_warned: bool,
    keepalive_failing: bool,
    probe: Option<ProbeTrack>,
    probe_in_flight: Option<Millis>,
    published: Option<(LeaseId, NodeRecord)>,
    timer: Option<Millis>,
    attempts: u64,
    /// Election views received so far, and for each lease of ours given up whose key is still
    /// in the view: the view count when its revoke was last asked for.
    views_seen: u64,
    stale_revokes: BTreeMap<LeaseId, u64>,
}

impl Machine {
    pub fn new(cfg: MachineConfig) -> Self {
        Machine {
            cfg,
            lease: Lease::None,
            key: Key::Absent,
            view_revision: 0,
            view: Vec::new(),
            records: BTreeMap::new(),
            acting: None,
            paused: false,
            finished: false,
            manager_reachable: false,
            manager_failing_since: None,
            manager_retry: None,
            manager_retries: 0,
            reachable_since: BTreeMap::new(),
            active_since: None,
            leader_logged: None,
            no_leader_since: None,
            handover: None,
            preemptions: VecDeque::new(),
            primary_healthy_since: BTreeMap::new(),
            countdown_since: None,
            preempt_hold_until: None,
            budget_warned: false,
            two_primaries_warned: false,
            keepalive_failing: false,
            probe: None,
            probe_in_flight: None,
            published: None,
            timer: None,
            attempts: 0,
            views_seen: 0,
            stale_revokes: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// The lease the driver should keep alive (`None` while there is none or it was dropped).
    pub fn current_lease(&self) -> Option<LeaseId> {
        match self.lease {
            Lease::Held { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The term this node acts with, if it acts.
    pub fn term(&self) -> Option<u64> {
        self.acting
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn leadership(&self) -> Leadership {
        if let Some(term) = self.acting {
            Leadership::Active { term }
        } else if self.paused {
            Leadership::Paused
        } else {
            Leadership::Standby {
                leader: self
                    .view
                    .first()
                    .filter(|c| c.node_id != self.cfg.node_id)
                    .map(|c| c.node_id.clone()),
            }
        }
    }

    pub fn snapshot(&self, now: Millis) -> MachineSnapshot {
        let (lease, lease_remaining_ms, acting_remaining_ms) = match self.lease {
            Lease::Held {
                id,
                acked_sent,
                deadline,
            } => (
                Some(id),
                Some(acked_sent.plus(self.cfg.ttl()).since(now)),
                Some(deadline.since(now)),
            ),
            _ => (None, None, None),
        };
        MachineSnapshot {
            leadership: self.leadership(),
            lease,
            lease_remaining_ms,
            acting_remaining_ms,
            own_create_revision: match self.key {
                Key::Created(r) => Some(r),
                _ => None,
            },
            candidates: self.view.clone(),
            records: self.records.values().cloned().collect(),
            handover_to: self.handover.as_ref().map(|h| h.target.clone()),
            manager_reachable: self.manager_reachable,
            preemptions_last_hour: self.preemptions.len(),
            preempt_in_ms: self.preempt_in(now),
            preempt_hold_ms: self.preempt_hold_until.map(|t| t.since(now)),
            crash_probe: self.probe.as_ref().map(|t| CrashProbe {
                node_id: t.node_id.clone(),
                address: t.address.clone(),
                verified: t.answered,
            }),
        }
    }

    /// Applies one event at time `now` and returns what to do, in order.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        if self.finished {
            if let Event::Switchover { .. } = event {
                out.push(Command::Local(LocalCommand::SwitchoverOutcome(Err(
                    "node is shutting down".into(),
                ))));
            }
            return out;
        }
        // A deadline that passed while this node was not scheduled must win over whatever the
        // event says, so check it before applying the event.
        self.check_deadline(now, &mut out);
        self.apply(now, event, &mut out);
        if !self.finished {
            self.reconcile(now, &mut out);
        }
        out
    }

    fn log(out: &mut Vec<Command>, level: LogLevel, text: String) {
        out.push(Command::Local(LocalCommand::Log { level, text }));
    }

    fn apply(&mut self, now: Millis, event: Event, out: &mut Vec<Command>) {
        match event {
            Event::Start => {
                if self.lease == Lease::None {
                    self.lease = Lease::Granting;
                    out.push(Command::Store(StoreCommand::GrantLease));
                }
            }
            Event::LeaseGranted { lease, sent_at } => {
                if self.lease == Lease::Granting {
                    self.lease = Lease::Held {
                        id: lease,
                        acked_sent: sent_at,
                        deadline: sent_at.plus(self.cfg.acting_window_ms()),
                    };
                    self.key = Key::Absent;
                    self.published = None;
                    self.keepalive_failing = false;
                } else {
                    // Not asked for (any more): do not leave it running.
                    out.push(Command::Store(StoreCommand::RevokeLease { lease }));
                }
            }
            Event::KeepAliveAcked { lease, sent_at } => {
                if let Lease::Held {
                    id,
                    acked_sent,
                    deadline,
                } = &mut self.lease
                {
                    if *id == lease {
                        *acked_sent = (*acked_sent).max(sent_at);
                        *deadline = (*deadline).max(sent_at.plus(self.cfg.acting_window_ms()));
                        if self.keepalive_failing {
                            self.keepalive_failing = false;
                            Self::log(out, LogLevel::Info, "lease keep-alive works again".into());
                        }
                    }
                }
            }
            Event::KeepAliveFailed { lease, error } => {
                if self.current_lease() == Some(lease) && !self.keepalive_failing {
                    self.keepalive_failing = true;
                    Self::log(
                        out,
                        LogLevel::Warn,
                        format!("lease {lease:x} keep-alive failed: {error}"),
                    );
                }
            }
            Event::LeaseLost { lease } => {
                if self.current_lease() == Some(lease) {
                    Self::log(
                        out,
                        LogLevel::Warn,
                        format!("lease {lease:x} no longer exists; campaigning with a new lease"),
                    );
                    self.drop_lease(StopReason::LeaseLost, false, out);
                }
            }
            Event::OwnKeyCreated {
                lease,
                attempt,
                create_revision,
            } => {
                if self.current_lease() == Some(lease) {
                    if self.key == Key::Creating(attempt) {
                        self.key = Key::Created(create_revision);
                    } else if self.key != Key::Created(create_revision) {
                        // Paused or re-queued meanwhile: that key must not stand in the queue.
                        out.push(Command::Store(StoreCommand::Resign { lease }));
                    }
                }
            }
            Event::ElectionView {
                revision,
                mut candidates,
            } => {
                candidates.sort_by_key(|c| c.create_revision);
                self.view = candidates;
                self.view_revision = revision;
                self.views_seen += 1;
                if let (Key::Created(r), Some(lease)) = (self.key, self.current_lease()) {
                    let present = self
                        .view
                        .iter()
                        .any(|c| c.lease == lease && c.create_revision == r);
                    if revision >= r && !present {
                        // Someone deleted our key (an operator, a revoke): queue again.
                        self.stop_acting(StopReason::KeyDeleted, out);
                        self.key = Key::Absent;
                    }
                }
            }
            Event::NodeRecords(records) => {
                self.records = records
                    .into_iter()
                    .map(|r| (r.node_id.clone(), r))
                    .collect();
                let records = &self.records;
                self.reachable_since
                    .retain(|node, _| records.get(node).is_some_and(|r| r.manager_reachable));
                for r in self.records.values().filter(|r| r.manager_reachable) {
                    self.reachable_since.entry(r.node_id.clone()).or_insert(now);
                }
                if self.cfg.is_primary && !self.two_primaries_warned {
                    if let Some(other) = self
                        .records
                        .values()
                        .find(|r| r.is_primary && r.node_id != self.cfg.node_id)
                    {
                        self.two_primaries_warned = true;
                        Self::log(
                            out,
                            LogLevel::Warn,
                            format!(
                                "core node '{}' is also configured as primary; primaries rank equally and do not preempt each other",
                                other.node_id
                            ),
                        );
                    }
                }
            }
            Event::ManagerReachable(reachable) => {
                if reachable {
                    self.manager_reachable = true;
                    self.manager_failing_since = None;
                    self.manager_retry = None;
                } else if self.manager_reachable || self.manager_failing_since.is_none() {
                    self.manager_reachable = false;
                    self.manager_failing_since = Some(now);
                }
            }
            Event::ManagerRetryFailed { retry } => {
                if let Some((asked, _, failed)) = &mut self.manager_retry {
                    if *asked == retry {
                        *failed = true;
                    }
                }
            }
            Event::ProbeResult {
                node_id,
                address,
                result,
            } => {
                self.probe_in_flight = None;
                self.on_probe(now, &node_id, &address, result, out);
            }
            Event::Tick => {}
            Event::Pause => {
                if !self.paused {
                    self.paused = true;
                    Self::log(
                        out,
                        LogLevel::Info,
                        "election paused: not campaigning".into(),
                    );
                    if self.acting.is_some() {
                        self.requeue(StopReason::Paused, out);
                    } else if let (Key::Created(_) | Key::Creating(_), Some(lease)) =
                        (self.key, self.current_lease())
                    {
                        out.push(Command::Store(StoreCommand::Resign { lease }));
                        self.key = Key::Absent;
                    }
                }
            }
            Event::Resume => {
                if self.paused {
                    self.paused = false;
                    Self::log(out, LogLevel::Info, "election resumed: campaigning".into());
                }
            }
            Event::Switchover { to } => {
                let outcome = self.switchover(now, to, out);
                out.push(Command::Local(LocalCommand::SwitchoverOutcome(outcome)));
            }
            Event::Resign => {
                if self.acting.is_some() {
                    self.requeue(StopReason::Resigned, out);
                }
            }
            Event::Shutdown => {
                let lease = self.current_lease();
                if let Some(lease) = lease {
                    if self.key != Key::Absent {
                        out.push(Command::Store(StoreCommand::Resign { lease }));
                    }
                }
                self.stop_acting(StopReason::Shutdown, out);
                if let Some(lease) = lease {
                    out.push(Command::Store(StoreCommand::RevokeLease { lease }));
                }
                self.key = Key::Absent;
                self.lease = Lease::None;
                self.finished = true;
                out.push(Command::Local(LocalCommand::Finished));
            }
            Event::FencedWriteRejected { term } => {
                if self.acting == Some(term) {
                    Self::log(
                        out,
                        LogLevel::Warn,
                        format!("a write fenced with term {term} was rejected: another node leads; campaigning again"),
                    );
                    self.drop_lease(StopReason::FencedWriteRejected, true, out);
                }
            }
        }
    }

    /// An accepted switchover on the primary also holds off its preemption: otherwise the new
    /// active node would hand the role straight back after the preemption delay. The hold is
    /// published before the key is deleted, so the successor knows of it when it is elected.
    fn hold_preemption(&mut self, now: Millis, out: &mut Vec<Command>) {
        if !self.cfg.is_primary {
            return;
        }
        self.preempt_hold_until = Some(now.plus(SWITCHOVER_HOLD_MS));
        Self::log(
            out,
            LogLevel::Info,
            format!(
                "primary: not taking the role back for {} after this switchover (or until this node restarts); `autogate ha pause` holds it away longer",
                fmt_ms(SWITCHOVER_HOLD_MS)
            ),
        );
        self.publish(out);
    }

    fn switchover(
        &mut self,
        now: Millis,
        to: Option<String>,
        out: &mut Vec<Command>,
    ) -> Result<(), String> {
        if self.acting.is_none() {
            return Err(match self.view.first() {
                Some(l) => format!("not the active node; the active node is '{}'", l.node_id),
                None => "not the active node".into(),
            });
        }
        match to {
            Some(target) => {
                if target == self.cfg.node_id {
                    return Err("already the active node".into());
                }
                if !self.is_healthy_candidate(&target) {
                    return Err(format!(
                        "'{target}' is not a healthy candidate (campaigning, not paused, manager reachable)"
                    ));
                }
                Self::log(
                    out,
                    LogLevel::Info,
                    format!("switchover requested: handing over to '{target}'"),
                );
                self.handover = Some(Handover {
                    target,
                    kind: HandoverKind::Switchover,
                    deadline: now.plus(self.cfg.handover_timeout_ms()),
                });
                self.hold_preemption(now, out);
                Ok(())
            }
            None => {
                let any = self
                    .view
                    .iter()
                    .skip(1)
                    .any(|c| self.is_healthy_candidate(&c.node_id));
                if !any {
                    return Err("no healthy standby to hand over to".into());
                }
                Self::log(
                    out,
                    LogLevel::Info,
                    "switchover requested: resigning".into(),
                );
                self.hold_preemption(now, out);
                self.requeue(StopReason::Switchover, out);
                Ok(())
            }
        }
    }

    fn is_healthy_candidate(&self, node: &str) -> bool {
        self.view.iter().any(|c| c.node_id == node)
            && self
                .records
                .get(node)
                .is_some_and(|r| r.healthy && !r.paused && r.manager_reachable)
    }

    /// Stops leader work (if acting) with `reason`.
    fn stop_acting(&mut self, reason: StopReason, out: &mut Vec<Command>) {
        if let Some(term) = self.acting.take() {
            self.active_since = None;
            self.manager_retry = None;
            self.handover = None;
            out.push(Command::Local(LocalCommand::StopLeaderWork {
                term,
                reason,
            }));
            Self::log(
                out,
                LogLevel::Info,
                format!(
                    "node {} stops acting as the active node (term {term}): {reason}",
                    self.cfg.node_id
                ),
            );
        }
    }

    /// Deletes our key first, then stops leader work; the key is re-created (behind the others)
    /// by the next reconcile unless paused.
    fn requeue(&mut self, reason: StopReason, out: &mut Vec<Command>) {
        if let Some(lease) = self.current_lease() {
            if self.key != Key::Absent {
                out.push(Command::Store(StoreCommand::Resign { lease }));
            }
        }
        self.key = Key::Absent;
        self.stop_acting(reason, out);
    }

    /// Gives up the current lease (and with it the key) and asks for a new one.
    fn drop_lease(&mut self, reason: StopReason, revoke: bool, out: &mut Vec<Command>) {
        self.stop_acting(reason, out);
        if let (true, Some(lease)) = (revoke, self.current_lease()) {
            out.push(Command::Store(StoreCommand::RevokeLease { lease }));
        }
        self.key = Key::Absent;
        self.published = None;
        self.lease = Lease::Granting;
        out.push(Command::Store(StoreCommand::GrantLease));
    }

    fn check_deadline(&mut self, now: Millis, out: &mut Vec<Command>) {
        if let Lease::Held { id, deadline, .. } = self.lease {
            if now >= deadline {
                Self::log(
                    out,
                    LogLevel::Warn,
                    format!("lease {id:x} was not renewed in time (store unreachable?); stepping down and campaigning with a new lease"),
                );
                self.drop_lease(StopReason::LeaseExpiring, true, out);
            }
        }
    }

    fn on_probe(
        &mut self,
        now: Millis,
        node_id: &str,
        address: &str,
        result: ProbeResult,
        out: &mut Vec<Command>,
    ) {
        let window = self.cfg.probe_window_ms;
        let fast = self.cfg.fast_probe_ms();
        let interval = self.cfg.probe_interval_ms;
        let own_id = self.cfg.node_id.clone();
        let Some(track) = self.probe.as_mut() else {
            return;
        };
        if track.node_id != node_id || track.address != address {
            return;
        }
        match result {
            ProbeResult::Answered { node_id: answered } if answered == track.node_id => {
                track.answered = true;
                track.refused_since = None;
                track.next_at = now.plus(interval);
            }
            ProbeResult::Answered { node_id: answered }
                if track.answered
                    && answered != own_id
                    && host_part(&answered) == host_part(&track.node_id) =>
            {
                // A port is held by one process of a host at a time: another process of the
                // same host answering where the active node answered before means that node's
                // process is gone (typically restarted at once by its supervisor). An answer
                // from another host only says the address moved (a virtual IP, NAT), and one
                // from this node says the address leads here: neither proves anything.
                track.refused_since = None;
                track.next_at = now.plus(interval);
                if !track.revoked {
                    track.revoked = true;
                    let (node, lease) = (track.node_id.clone(), track.lease);
                    Self::log(
                        out,
                        LogLevel::Warn,
                        format!(
                            "core node '{answered}' answers at {address}, where active core node '{node}' answered before: its process is gone; revoking its lease"
                        ),
                    );
                    out.push(Command::Store(StoreCommand::RevokePeerLease {
                        node_id: node,
                        lease,
                    }));
                }
            }
            ProbeResult::Answered { .. } => {
                track.answered = false;
                track.refused_since = None;
                track.next_at = now.plus(interval);
            }
            ProbeResult::Timeout => {
                track.refused_since = None;
                track.next_at = now.plus(interval);
            }
            ProbeResult::Refused => {
                if !track.answered {
                    track.next_at = now.plus(interval);
                    return;
                }
                let since = *track.refused_since.get_or_insert(now);
                track.next_at = now.plus(fast);
                if now.since(since) >= window && !track.revoked {
                    track.revoked = true;
                    let (node, lease) = (track.node_id.clone(), track.lease);
                    Self::log(
                        out,
                        LogLevel::Warn,
                        format!(
                            "active core node '{node}' refuses connections at {address} for {} ms after answering there before: its process is gone; revoking its lease",
                            now.since(since)
                        ),
                    );
                    out.push(Command::Store(StoreCommand::RevokePeerLease {
                        node_id: node,
                        lease,
                    }));
                }
            }
        }
    }

    fn own_host(&self) -> &str {
        host_part(&self.cfg.node_id)
    }

    fn reconcile(&mut self, now: Millis, out: &mut Vec<Command>) {
        self.check_deadline(now, out);
        self.revoke_stale_keys(out);
        self.standby_yield(out);
        self.campaign(out);
        self.update_acting(now, out);
        self.log_leader(out);
        self.expire_hold(now, out);
        self.track_primaries(now, out);
        self.primary_countdown(now, out);
        if self.acting.is_some() {
            self.active_duties(now, out);
            // A hand-over re-queues: the new key goes in right behind the resignation.
            self.campaign(out);
        }
        self.plan_probe(now, out);
        self.publish(out);
        self.set_timer(now, out);
    }

    /// A key of ours under a lease this node gave up stays in the queue until that lease ends.
    /// The step-down revokes it, but when the store was unreachable then, the revoke failed, and
    /// etcd restarts every lease's full TTL when it regains a leader: the stale key would lead
    /// the queue, with nobody acting, for a whole TTL after the store is back. So revoke such a
    /// lease again each time a fresh election view still shows its key.
    fn revoke_stale_keys(&mut self, out: &mut Vec<Command>) {
        let current = self.current_lease();
        let stale: Vec<LeaseId> = self
            .view
            .iter()
            .filter(|c| c.node_id == self.cfg.node_id && Some(c.lease) != current)
            .map(|c| c.lease)
            .collect();
        self.stale_revokes.retain(|lease, _| stale.contains(lease));
        for lease in stale {
            if self.stale_revokes.get(&lease) == Some(&self.views_seen) {
                continue;
            }
            self.stale_revokes.insert(lease, self.views_seen);
            Self::log(
                out,
                LogLevel::Debug,
                format!("election key of given-up lease {lease:x} is still queued: revoking it"),
            );
            out.push(Command::Store(StoreCommand::RevokeLease { lease }));
        }
    }

    fn campaign(&mut self, out: &mut Vec<Command>) {
        if let Some(lease) = self.current_lease() {
            if self.key == Key::Absent && !self.paused {
                self.attempts += 1;
                self.key = Key::Creating(self.attempts);
                out.push(Command::Store(StoreCommand::Campaign {
                    lease,
                    attempt: self.attempts,
                }));
            }
        }
    }

    /// A standby queued ahead of the active node's hand-over target re-queues behind it.
    fn standby_yield(&mut self, out: &mut Vec<Command>) {
        let (Key::Created(own), Some(lease), None) = (self.key, self.current_lease(), self.acting)
        else {
            return;
        };
        let Some(leader) = self.view.first() else {
            return;
        };
        if leader.create_revision == own {
            return;
        }
        let Some(target) = self
            .records
            .get(&leader.node_id)
            .filter(|r| r.role == Role::Active)
            .and_then(|r| r.handover_to.clone())
        else {
            return;
        };
        if target == self.cfg.node_id {
            return;
        }
        let behind = self
            .view
            .iter()
            .any(|c| c.node_id == target && c.create_revision > own);
        if behind {
            Self::log(
                out,
                LogLevel::Debug,
                format!("re-queueing behind '{target}', to whom the active node hands over"),
            );
            out.push(Command::Store(StoreCommand::Resign { lease }));
            self.key = Key::Absent;
        }
    }

    fn update_acting(&mut self, now: Millis, out: &mut Vec<Command>) {
        let own = match (self.key, self.lease) {
            (Key::Created(r), Lease::Held { id, deadline, .. }) if now < deadline => Some((r, id)),
            _ => None,
        };
        let head = self.view.first();
        let leads = own
            .is_some_and(|(r, id)| head.is_some_and(|h| h.create_revision == r && h.lease == id))
            && !self.paused;
        let other_leads = head.is_some_and(|h| h.node_id != self.cfg.node_id);
        if other_leads {
            self.no_leader_since = None;
        } else if self.no_leader_since.is_none() {
            self.no_leader_since = Some(now);
        }
        match (leads, self.acting) {
            (true, None) => {
                let term = own.map_or(0, |(r, _)| u64::try_from(r).unwrap_or(0));
                self.acting = Some(term);
                self.active_since = Some(now);
                // Active again (asked back, or nobody else left): the hold has done its work.
                self.preempt_hold_until = None;
                self.leader_logged = Some(self.cfg.node_id.clone());
                let waited_ms = self.no_leader_since.map(|t| now.since(t));
                Self::log(
                    out,
                    LogLevel::Info,
                    format!(
                        "node {} is elected as the leader. About to start commander connection...",
                        self.cfg.node_id
                    ),
                );
                out.push(Command::Local(LocalCommand::StartLeaderWork {
                    term,
                    waited_ms,
                }));
            }
            (false, Some(_)) => {
                let reason = if own.is_none() {
                    StopReason::KeyDeleted
                } else {
                    StopReason::Superseded
                };
                self.stop_acting(reason, out);
            }
            _ => {}
        }
    }

    fn log_leader(&mut self, out: &mut Vec<Command>) {
        if self.acting.is_some() {
            return;
        }
        let Some(leader) = self.view.first() else {
            return;
        };
        if leader.node_id == self.cfg.node_id
            || self.leader_logged.as_deref() == Some(&leader.node_id)
        {
            return;
        }
        self.leader_logged = Some(leader.node_id.clone());
        Self::log(
            out,
            LogLevel::Debug,
            format!(
                "this core node with Id of '{}' is not the active node. The current active core node is '{}'",
                self.cfg.node_id, leader.node_id
            ),
        );
    }

    /// Remembers since when each other primary has been seen healthy (on our own clock: node
    /// clocks are not comparable).
    fn track_primaries(&mut self, now: Millis, out: &mut Vec<Command>) {
        let healthy: Vec<String> = self
            .records
            .values()
            .filter(|r| r.is_primary && r.node_id != self.cfg.node_id && !r.preempt_hold)
            .filter(|r| self.is_healthy_candidate(&r.node_id))
            .map(|r| r.node_id.clone())
            .collect();
        self.primary_healthy_since
            .retain(|node, _| healthy.contains(node));
        let preempts =
            self.acting.is_some() && !self.cfg.is_primary && self.cfg.max_transitions > 0;
        for node in healthy {
            if !self.primary_healthy_since.contains_key(&node) && preempts {
                Self::log(
                    out,
                    LogLevel::Info,
                    format!(
                        "primary core node '{node}' is healthy: handing the active role over to it in {}",
                        fmt_ms(self.cfg.preempt_delay_ms)
                    ),
                );
            }
            self.primary_healthy_since.entry(node).or_insert(now);
        }
    }

    /// A primary standby says when it will take the role back (the active node decides, after
    /// `preempt_delay` of this node's health as it sees it), and when it did.
    fn primary_countdown(&mut self, now: Millis, out: &mut Vec<Command>) {
        if !self.cfg.is_primary {
            return;
        }
        let leader = self
            .view
            .first()
            .filter(|l| l.node_id != self.cfg.node_id)
            .filter(|l| self.records.get(&l.node_id).is_some_and(|r| !r.is_primary))
            .map(|l| l.node_id.clone());
        let waiting = self.acting.is_none()
            && !self.paused
            && self.cfg.max_transitions > 0
            && self.preempt_hold_until.is_none()
            && matches!(self.key, Key::Created(_))
            && self.manager_reachable;
        match (waiting, leader, self.countdown_since) {
            (true, Some(leader), None) => {
                self.countdown_since = Some(now);
                Self::log(
                    out,
                    LogLevel::Info,
                    format!(
                        "primary: taking the role back from core node '{leader}' in {} (server_ha_preempt_delay)",
                        fmt_ms(self.cfg.preempt_delay_ms)
                    ),
                );
            }
            (true, Some(_), Some(_)) => {}
            (_, _, Some(since)) => {
                self.countdown_since = None;
                if self.acting.is_some() {
                    Self::log(
                        out,
                        LogLevel::Info,
                        format!(
                            "primary: took the role back, {} after the countdown began",
                            fmt_ms(now.since(since))
                        ),
                    );
                } else {
                    Self::log(
                        out,
                        LogLevel::Info,
                        "primary: not taking the role back for now (this node or the active node changed)".into(),
                    );
                }
            }
            _ => {}
        }
    }

    /// Time until the active role goes back to a primary, as this node sees it.
    fn preempt_in(&self, now: Millis) -> Option<u64> {
        let delay = self.cfg.preempt_delay_ms;
        if self.acting.is_some() {
            if self.cfg.is_primary || self.cfg.max_transitions == 0 || self.handover.is_some() {
                return None;
            }
            self.primary_healthy_since
                .values()
                .map(|since| since.plus(delay).since(now))
                .min()
        } else {
            self.countdown_since
                .map(|since| since.plus(delay).since(now))
        }
    }

    /// The hold a switchover on this primary set ends after its time.
    fn expire_hold(&mut self, now: Millis, out: &mut Vec<Command>) {
        if self.preempt_hold_until.is_some_and(|t| now >= t) {
            self.preempt_hold_until = None;
            Self::log(
                out,
                LogLevel::Info,
                "primary: the hold after the switchover ended; taking the role back when healthy"
                    .into(),
            );
        }
    }

    fn budget_left(&mut self, now: Millis) -> bool {
        while self
            .preemptions
            .front()
            .is_some_and(|t| now.since(*t) >= HOUR_MS)
        {
            self.preemptions.pop_front();
        }
        self.preemptions.len() < self.cfg.max_transitions as usize
    }

    fn active_duties(&mut self, now: Millis, out: &mut Vec<Command>) {
        // Lost manager: move leadership if another candidate can reach it — and this node
        // still cannot once it tried again after seeing that. An outage of the manager itself
        // hits every node alike; the node that happens to be asleep in its back-off when the
        // manager returns must not lose the role to a standby that checked first.
        let mut retry = None;
        if !self.manager_reachable {
            if let (Some(failing), Some(active)) = (self.manager_failing_since, self.active_since) {
                let since = failing.max(active);
                if now.since(since) >= self.cfg.connect_grace_ms {
                    // Only a standby that reached the manager within this failure proves that
                    // this node's path is the broken one.
                    let fresh = |node: &str| {
                        self.reachable_since.get(node).is_some_and(|t| {
                            *t >= since || now.since(since) >= FRESH_REACHABILITY_MS
                        })
                    };
                    let other = self
                        .view
                        .iter()
                        .skip(1)
                        .find(|c| {
                            self.records
                                .get(&c.node_id)
                                .is_some_and(|r| r.manager_reachable && !r.paused)
                                && fresh(&c.node_id)
                        })
                        .map(|c| c.node_id.clone());
                    if let Some(other) = other {
                        retry = Some((since, other));
                    }
                }
            }
        }
        match (retry, self.manager_retry) {
            (None, _) => self.manager_retry = None,
            (Some((since, other)), None) => {
                self.manager_retries += 1;
                let n = self.manager_retries;
                self.manager_retry = Some((n, now, false));
                Self::log(
                    out,
                    LogLevel::Warn,
                    format!(
                        "cannot reach the manager for {} ms while core node '{other}' can: trying once more at once before handing over",
                        now.since(since)
                    ),
                );
                out.push(Command::Local(LocalCommand::RetryManager { retry: n }));
            }
            (Some((since, other)), Some((_, asked, failed))) => {
                if failed || now.since(asked) >= MANAGER_RETRY_WAIT_MS {
                    Self::log(
                        out,
                        LogLevel::Warn,
                        format!(
                            "cannot reach the manager for {} ms while core node '{other}' can, {}: resigning",
                            now.since(since),
                            if failed {
                                "and the attempt made since failed too"
                            } else {
                                "and the attempt made since has not got through"
                            }
                        ),
                    );
                    self.manager_retry = None;
                    self.requeue(StopReason::ManagerUnreachable, out);
                    return;
                }
            }
        }
        // Preemption by a healthy primary.
        if self.handover.is_none() && !self.cfg.is_primary && self.cfg.max_transitions > 0 {
            let delay = self.cfg.preempt_delay_ms;
            let target = self
                .view
                .iter()
                .find(|c| {
                    self.primary_healthy_since
                        .get(&c.node_id)
                        .is_some_and(|t| now.since(*t) >= delay)
                })
                .map(|c| c.node_id.clone());
            if let Some(target) = target {
                if self.budget_left(now) {
                    self.budget_warned = false;
                    Self::log(
                        out,
                        LogLevel::Info,
                        format!(
                            "primary core node '{target}' has been healthy for {}: handing the active role over to it",
                            fmt_ms(delay)
                        ),
                    );
                    self.handover = Some(Handover {
                        target,
                        kind: HandoverKind::Preempt,
                        deadline: now.plus(self.cfg.handover_timeout_ms()),
                    });
                } else if !self.budget_warned {
                    self.budget_warned = true;
                    Self::log(
                        out,
                        LogLevel::Warn,
                        format!(
                            "flap budget of {} preemptions per hour is used up: staying active although primary core node '{target}' is healthy",
                            self.cfg.max_transitions
                        ),
                    );
                }
            }
        }
        // Hand-over in progress.
        if let Some(h) = self.handover.clone() {
            if !self.is_healthy_candidate(&h.target) {
                Self::log(
                    out,
                    LogLevel::Warn,
                    format!(
                        "hand-over to '{}' cancelled: it is no longer a healthy candidate",
                        h.target
                    ),
                );
                self.handover = None;
            } else if now >= h.deadline {
                Self::log(
                    out,
                    LogLevel::Warn,
                    format!("hand-over to '{}' cancelled: the standbys ahead of it did not re-queue in time", h.target),
                );
                self.handover = None;
            } else if self.view.get(1).is_some_and(|c| c.node_id == h.target) {
                let reason = match h.kind {
                    HandoverKind::Preempt => {
                        self.preemptions.push_back(now);
                        StopReason::Preempted
                    }
                    HandoverKind::Switchover => StopReason::Switchover,
                };
                self.requeue(reason, out);
            }
        }
    }

    fn plan_probe(&mut self, now: Millis, out: &mut Vec<Command>) {
        if self
            .probe_in_flight
            .is_some_and(|t| now.since(t) >= PROBE_LOST_MS)
        {
            self.probe_in_flight = None;
        }
        let target = if self.acting.is_some() || self.cfg.probe_window_ms == 0 {
            None
        } else {
            self.view
                .first()
                .filter(|c| c.node_id != self.cfg.node_id)
                .and_then(|c| {
                    let address = self.records.get(&c.node_id)?.address.clone()?;
                    // A loopback address means "the host of whoever dials it": only proof
                    // between nodes of the same host.
                    if is_loopback(&address) && host_part(&c.node_id) != self.own_host() {
                        return None;
                    }
                    Some((c.node_id.clone(), address, c.lease))
                })
        };
        let Some((node_id, address, lease)) = target else {
            self.probe = None;
            return;
        };
        let same = self
            .probe
            .as_ref()
            .is_some_and(|t| t.node_id == node_id && t.address == address && t.lease == lease);
        if !same {
            self.probe = Some(ProbeTrack {
                node_id,
                address,
                lease,
                answered: false,
                refused_since: None,
                revoked: false,
                next_at: now,
            });
        }
        if let Some(track) = &self.probe {
            if self.probe_in_flight.is_none() && now >= track.next_at && !track.revoked {
                self.probe_in_flight = Some(now);
                out.push(Command::Local(LocalCommand::Probe {
                    node_id: track.node_id.clone(),
                    address: track.address.clone(),
                }));
            }
        }
    }

    fn own_record(&self) -> NodeRecord {
        let role = if self.acting.is_some() {
            Role::Active
        } else if self.paused {
            Role::Paused
        } else {
            Role::Standby
        };
        NodeRecord {
            node_id: self.cfg.node_id.clone(),
            address: self.cfg.advertise_address.clone(),
            is_primary: self.cfg.is_primary,
            role,
            manager_reachable: self.manager_reachable,
            paused: self.paused,
            healthy: matches!(self.key, Key::Created(_)) && self.manager_reachable && !self.paused,
            handover_to: self.handover.as_ref().map(|h| h.target.clone()),
            preempt_hold: self.preempt_hold_until.is_some(),
        }
    }

    fn publish(&mut self, out: &mut Vec<Command>) {
        let Some(lease) = self.current_lease() else {
            return;
        };
        let record = self.own_record();
        if self
            .published
            .as_ref()
            .is_some_and(|(l, r)| *l == lease && *r == record)
        {
            return;
        }
        self.published = Some((lease, record.clone()));
        out.push(Command::Store(StoreCommand::PublishRecord {
            lease,
            record,
        }));
    }

    /// Forget what was published so it is sent again (after a failed write).
    pub fn republish(&mut self) {
        self.published = None;
    }

    fn set_timer(&mut self, now: Millis, out: &mut Vec<Command>) {
        let mut next: Option<Millis> = None;
        let mut consider = |t: Millis| {
            if t > now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Lease::Held { deadline, .. } = self.lease {
            consider(deadline);
        }
        match (&self.probe, self.probe_in_flight) {
            (Some(track), None) if !track.revoked => consider(track.next_at.max(now.plus(1))),
            (_, Some(sent)) => consider(sent.plus(PROBE_LOST_MS)),
            _ => {}
        }
        if let Some(h) = &self.handover {
            consider(h.deadline);
        }
        if let Some(until) = self.preempt_hold_until {
            consider(until);
        }
        if self.acting.is_some() {
            if let (Some(failing), Some(active)) = (self.manager_failing_since, self.active_since) {
                if !self.manager_reachable {
                    consider(failing.max(active).plus(self.cfg.connect_grace_ms));
                }
            }
            if let Some((_, asked, false)) = self.manager_retry {
                consider(asked.plus(MANAGER_RETRY_WAIT_MS));
            }
            if let (Some(failing), Some(active), false) = (
                self.manager_failing_since,
                self.active_since,
                self.manager_reachable,
            ) {
                consider(failing.max(active).plus(FRESH_REACHABILITY_MS));
            }
            for since in self.primary_healthy_since.values() {
                consider(since.plus(self.cfg.preempt_delay_ms));
            }
            if let Some(first) = self.preemptions.front() {
                consider(first.plus(HOUR_MS));
            }
        }
        if let Some(at) = next {
            if self.timer != Some(at) || self.timer.is_some_and(|t| t <= now) {
                self.timer = Some(at);
                out.push(Command::Local(LocalCommand::SetTimer { at }));
            }
        }
    }
}

/// A duration for log lines: whole seconds as `10 s`, whole minutes as `60 min`, else
/// milliseconds.
pub fn fmt_ms(ms: u64) -> String {
    if ms >= 60_000 && ms % 60_000 == 0 {
        format!("{} min", ms / 60_000)
    } else if ms >= 1_000 && ms % 1_000 == 0 {
        format!("{} s", ms / 1_000)
    } else {
        format!("{ms} ms")
    }
}

/// The host part of a node id (`<host>_<uuid>`).
pub fn host_part(node_id: &str) -> &str {
    node_id.split_once('_').map_or(node_id, |(h, _)| h)
}

/// True for `localhost`, `127.0.0.0/8` and `::1` addresses (`host:port` or `[v6]:port`).
pub fn is_loopback(address: &str) -> bool {
    let host = if let Some(rest) = address.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        address.rsplit_once(':').map_or(address, |(h, _)| h)
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
