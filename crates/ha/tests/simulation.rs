//! Randomised simulation of a cluster of election machines over a small model of the store.
//!
//! Each seed runs several rounds of chaos (crashes, restarts at once in the same place with a new
//! id — the new process revokes its predecessor's lease a moment into its start-up, and may
//! answer probes at the old address before that —, SIGSTOP-like freezes during which time moves
//! on, partitions from the store, operator pauses and switchovers, manager reachability flips)
//! followed by a heal phase. After every step it checks:
//! * safety: at most one running node believes it is active, and every fenced write that commits
//!   was made with the term of the store's current leader key (lowest create revision), with
//!   committed terms never going back;
//! * liveness: after a heal, exactly one node is active, and it is the store's leader, within a
//!   bound.
//!
//! The seed is printed on failure; `HA_SIM_SEED=<n>` reruns one seed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use autogate_ha::machine::{
    Candidate, Command, Event, Leadership, LocalCommand, Machine, MachineConfig, Millis,
    NodeRecord, ProbeResult, StoreCommand,
};

const TTL: u64 = 3_000;

/// splitmix64: small, seedable, good enough for choosing faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Debug)]
struct StoreKey {
    node: String,
    create_revision: i64,
    lease: i64,
}

#[derive(Debug, Default)]
struct Store {
    revision: i64,
    next_lease: i64,
    leases: BTreeMap<i64, u64>,
    keys: BTreeMap<i64, StoreKey>,
    records: BTreeMap<String, (NodeRecord, i64)>,
}

impl Store {
    fn expire(&mut self, now: u64) {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, exp)| **exp <= now)
            .map(|(l, _)| *l)
            .collect();
        for l in dead {
            self.revoke(l);
        }
    }

    fn revoke(&mut self, lease: i64) {
        if self.leases.remove(&lease).is_some() {
            self.revision += 1;
            self.keys.remove(&lease);
            self.records.retain(|_, (_, l)| *l != lease);
        }
    }

    fn view(&self) -> Vec<Candidate> {
        let mut v: Vec<Candidate> = self
            .keys
            .values()
            .map(|k| Candidate {
                node_id: k.node.clone(),
                key: format!("/e/{:x}", k.lease),
                create_revision: k.create_revision,
                lease: k.lease,
            })
            .collect();
        v.sort_by_key(|c| c.create_revision);
        v
    }

    fn leader_revision(&self) -> Option<i64> {
        self.keys.values().map(|k| k.create_revision).min()
    }
}

#[derive(Debug)]
struct Node {
    slot: usize,
    id: String,
    machine: Machine,
    crashed: bool,
    frozen: bool,
    partitioned: bool,
    lease: Option<i64>,
    next_keepalive: u64,
    timer: Option<u64>,
    /// Store commands not yet carried out (the driver retries them).
    pending: Vec<Command>,
    /// Events to deliver at the next turn.
    inbox: Vec<Event>,
    seen_revision: i64,
    seen_records: Vec<NodeRecord>,
    manager_ok: bool,
    /// The lease of the process this one replaced, and when its start-up revokes it.
    predecessor: Option<(i64, u64)>,
}

struct Sim {
    rng: Rng,
    now: u64,
    store: Store,
    nodes: Vec<Node>,
    generation: u64,
    last_committed_term: u64,
    primary_slot: Option<usize>,
    fenced_commits: u64,
    /// Peer leases revoked while a new process of the dead node's host ran at its address.
    successor_proofs: u64,
}

fn address(slot: usize) -> String {
    format!("10.0.0.{slot}:8080")
}

fn host_of(id: &str) -> &str {
    id.split_once('_').map_or(id, |(h, _)| h)
}

impl Sim {
    fn new(seed: u64, n: usize) -> Sim {
        let mut rng = Rng(seed);
        let primary_slot = if rng.chance(500) {
            Some(rng.below(n as u64) as usize)
        } else {
            None
        };
        let mut sim = Sim {
            rng,
            now: 0,
            store: Store::default(),
            nodes: Vec::new(),
            generation: 0,
            last_committed_term: 0,
            primary_slot,
            fenced_commits: 0,
            successor_proofs: 0,
        };
        for slot in 0..n {
            let node = sim.spawn(slot);
            sim.nodes.push(node);
        }
        sim
    }

    fn spawn(&mut self, slot: usize) -> Node {
        self.generation += 1;
        let id = format!("host{slot}_{:04}", self.generation);
        let mut cfg = MachineConfig::new(&id);
        cfg.lease_ttl_ms = TTL;
        cfg.preempt_delay_ms = 2_000;
        cfg.connect_grace_ms = 4_000;
        cfg.max_transitions = 3;
        cfg.probe_window_ms = 300;
        cfg.probe_interval_ms = 500;
        cfg.is_primary = self.primary_slot == Some(slot);
        cfg.advertise_address = Some(address(slot));
        let mut node = Node {
            slot,
            id,
            machine: Machine::new(cfg),
            crashed: false,
            frozen: false,
            partitioned: false,
            lease: None,
            next_keepalive: 0,
            timer: None,
            pending: Vec::new(),
            inbox: vec![Event::Start, Event::ManagerReachable(true)],
            seen_revision: -1,
            seen_records: Vec::new(),
            manager_ok: true,
            predecessor: None,
        };
        node.next_keepalive = self.now;
        node
    }

    /// A new process in slot `i`'s place (same address and working directory). Like the core
    /// node's start-up, it revokes its predecessor's lease, named by the working directory's
    /// state file, once its start-up got that far (0–300 ms); its port may answer before.
    fn restart(&mut self, i: usize) {
        let (slot, old_lease) = (self.nodes[i].slot, self.nodes[i].lease);
        self.nodes[i] = self.spawn(slot);
        let at = self.now + self.rng.below(300);
        self.nodes[i].predecessor = old_lease.map(|lease| (lease, at));
    }

    fn running(&self, i: usize) -> bool {
        !self.nodes[i].crashed && !self.nodes[i].frozen
    }

    fn faults(&mut self, heal: bool) {
        for i in 0..self.nodes.len() {
            if heal {
                let n = &mut self.nodes[i];
                if n.crashed {
                    self.restart(i);
                }
                let n = &mut self.nodes[i];
                n.frozen = false;
                n.partitioned = false;
                if !n.manager_ok {
                    n.manager_ok = true;
                    n.inbox.push(Event::ManagerReachable(true));
                }
                if n.machine.leadership() == Leadership::Paused {
                    n.inbox.push(Event::Resume);
                }
                continue;
            }
            let r = self.rng.below(10_000);
            let n = &mut self.nodes[i];
            match r {
                0..=14 if !n.crashed => n.crashed = true,
                15..=39 if n.crashed => self.restart(i),
                40..=59 => n.frozen = !n.frozen,
                60..=84 => n.partitioned = !n.partitioned,
                85..=94 => n.inbox.push(Event::Pause),
                95..=124 => n.inbox.push(Event::Resume),
                125..=134 => {
                    let to = if self.rng.chance(500) {
                        None
                    } else {
                        let s = self.rng.below(self.nodes.len() as u64) as usize;
                        Some(self.nodes[s].id.clone())
                    };
                    self.nodes[i].inbox.push(Event::Switchover { to });
                }
                135..=154 => {
                    n.manager_ok = !n.manager_ok;
                    let ok = n.manager_ok;
                    n.inbox.push(Event::ManagerReachable(ok));
                }
                // Killed and restarted at once by its supervisor: a new process (new id) at
                // the same address.
                155..=169 if !n.crashed => self.restart(i),
                _ => {}
            }
        }
    }

    fn step(&mut self, heal: bool) {
        self.now += 10 + self.rng.below(90);
        self.store.expire(self.now);
        self.faults(heal);
        for i in 0..self.nodes.len() {
            if self.running(i) {
                self.turn(i);
            }
        }
        self.check_safety();
    }

    fn turn(&mut self, i: usize) {
        let now = self.now;
        let mut events = std::mem::take(&mut self.nodes[i].inbox);
        // Timers first: a node waking from a freeze checks its deadline before anything else.
        events.insert(0, Event::Tick);
        let n = &mut self.nodes[i];
        if let (Some((lease, at)), false) = (n.predecessor, n.partitioned) {
            if now >= at {
                n.predecessor = None;
                self.store.revoke(lease);
            }
        }
        let n = &mut self.nodes[i];
        if let (Some(lease), false) = (n.lease, n.partitioned) {
            if now >= n.next_keepalive {
                n.next_keepalive = now + n.machine.config().keepalive_interval_ms();
                if let Some(expiry) = self.store.leases.get_mut(&lease) {
                    *expiry = now + TTL;
                    events.push(Event::KeepAliveAcked {
                        lease,
                        sent_at: Millis(now),
                    });
                } else {
                    events.push(Event::LeaseLost { lease });
                }
            }
        }
        if !n.partitioned {
            if n.seen_revision != self.store.revision {
                n.seen_revision = self.store.revision;
                events.push(Event::ElectionView {
                    revision: self.store.revision,
                    candidates: self.store.view(),
                });
            }
            let records: Vec<NodeRecord> = self
                .store
                .records
                .values()
                .map(|(r, _)| r.clone())
                .collect();
            if records != n.seen_records {
                n.seen_records = records.clone();
                events.push(Event::NodeRecords(records));
            }
        }
        let pending = std::mem::take(&mut self.nodes[i].pending);
        let mut queue: Vec<Command> = pending;
        for e in events {
            let out = self.nodes[i].machine.handle(Millis(now), e);
            queue.extend(out);
        }
        // Carry out commands; answers become events handled right away.
        let mut rounds = 0;
        while !queue.is_empty() {
            rounds += 1;
            assert!(rounds < 50, "command loop does not settle");
            let mut answers = Vec::new();
            for c in std::mem::take(&mut queue) {
                self.execute(i, c, &mut answers);
            }
            for e in answers {
                let out = self.nodes[i].machine.handle(Millis(now), e);
                queue.extend(out);
            }
        }
        self.nodes[i].lease = self.nodes[i].machine.current_lease();
        // The active node writes, fenced by its term.
        if let Leadership::Active { term } = self.nodes[i].machine.leadership() {
            if !self.nodes[i].partitioned {
                self.fenced_write(i, term);
            }
        }
    }

    fn fenced_write(&mut self, i: usize, term: u64) {
        let Some(lease) = self.nodes[i].lease else {
            return;
        };
        let holds = self
            .store
            .keys
            .get(&lease)
            .is_some_and(|k| k.create_revision as u64 == term);
        if holds {
            let leader = self.store.leader_revision().unwrap() as u64;
            assert_eq!(
                term, leader,
                "fenced write of {} committed with term {term} while the leader key is {leader}",
                self.nodes[i].id
            );
            assert!(term >= self.last_committed_term, "committed term went back");
            self.last_committed_term = term;
            self.fenced_commits += 1;
        } else {
            let out = self.nodes[i]
                .machine
                .handle(Millis(self.now), Event::FencedWriteRejected { term });
            self.nodes[i].pending.extend(out);
        }
    }

    fn execute(&mut self, i: usize, c: Command, answers: &mut Vec<Event>) {
        let now = self.now;
        let partitioned = self.nodes[i].partitioned;
        let store = &mut self.store;
        match c {
            Command::Store(
                StoreCommand::GrantLease
                | StoreCommand::Campaign { .. }
                | StoreCommand::PublishRecord { .. },
            ) if partitioned => {
                // Retried by the driver until the store answers.
                self.nodes[i].pending.push(c);
            }
            Command::Store(StoreCommand::GrantLease) => {
                store.next_lease += 1;
                let lease = store.next_lease;
                store.leases.insert(lease, now + TTL);
                self.nodes[i].lease = Some(lease);
                self.nodes[i].next_keepalive =
                    now + self.nodes[i].machine.config().keepalive_interval_ms();
                answers.push(Event::LeaseGranted {
                    lease,
                    sent_at: Millis(now),
                });
            }
            Command::Store(StoreCommand::Campaign { lease, attempt }) => {
                if self.nodes[i].machine.current_lease() != Some(lease) {
                    return;
                }
                if !store.leases.contains_key(&lease) {
                    answers.push(Event::LeaseLost { lease });
                    return;
                }
                let rev = if let Some(k) = store.keys.get(&lease) {
                    k.create_revision
                } else {
                    store.revision += 1;
                    let rev = store.revision;
                    store.keys.insert(
                        lease,
                        StoreKey {
                            node: self.nodes[i].id.clone(),
                            create_revision: rev,
                            lease,
                        },
                    );
                    rev
                };
                answers.push(Event::OwnKeyCreated {
                    lease,
                    attempt,
                    create_revision: rev,
                });
            }
            Command::Store(StoreCommand::PublishRecord { lease, record }) => {
                if store.leases.contains_key(&lease) {
                    store
                        .records
                        .insert(record.node_id.clone(), (record, lease));
                }
            }
            Command::Store(StoreCommand::Resign { lease }) => {
                if !partitioned && store.keys.remove(&lease).is_some() {
                    store.revision += 1;
                }
            }
            Command::Store(StoreCommand::RevokeLease { lease }) => {
                if !partitioned {
                    store.revoke(lease);
                }
            }
            Command::Store(StoreCommand::RevokePeerLease { node_id, lease }) => {
                let victim = self.nodes.iter().find(|n| n.id == node_id);
                assert!(
                    victim.is_none_or(|n| n.crashed),
                    "{} revoked the lease of {node_id}, which is alive",
                    self.nodes[i].id
                );
                // Proven by a successor answering at the dead node's address.
                if self
                    .nodes
                    .iter()
                    .any(|n| !n.crashed && n.id != node_id && host_of(&n.id) == host_of(&node_id))
                {
                    self.successor_proofs += 1;
                }
                if !partitioned {
                    self.store.revoke(lease);
                }
            }
            Command::Local(LocalCommand::Probe {
                node_id,
                address: addr,
            }) => {
                let target = self
                    .nodes
                    .iter()
                    .find(|n| address(n.slot) == addr && !n.crashed);
                let result = match target {
                    None => ProbeResult::Refused,
                    Some(n) if n.frozen => ProbeResult::Timeout,
                    Some(n) => ProbeResult::Answered {
                        node_id: n.id.clone(),
                    },
                };
                answers.push(Event::ProbeResult {
                    node_id,
                    address: addr,
                    result,
                });
            }
            Command::Local(LocalCommand::SetTimer { at }) => self.nodes[i].timer = Some(at.0),
            Command::Local(LocalCommand::RetryManager { retry }) => {
                // The link dials at once: it gets through exactly when this node's path to
                // the manager works.
                answers.push(if self.nodes[i].manager_ok {
                    Event::ManagerReachable(true)
                } else {
                    Event::ManagerRetryFailed { retry }
                });
            }
            Command::Local(
                LocalCommand::StartLeaderWork { .. }
                | LocalCommand::StopLeaderWork { .. }
                | LocalCommand::Log { .. }
                | LocalCommand::SwitchoverOutcome(_)
                | LocalCommand::Finished,
            ) => {}
        }
    }

    fn actives(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.running(*i))
            .filter(|i| {
                matches!(
                    self.nodes[*i].machine.leadership(),
                    Leadership::Active { .. }
                )
            })
            .collect()
    }

    fn check_safety(&self) {
        let actives = self.actives();
        assert!(
            actives.len() <= 1,
            "t={} several nodes act: {:?}",
            self.now,
            actives
                .iter()
                .map(|i| (&self.nodes[*i].id, self.nodes[*i].machine.leadership()))
                .collect::<Vec<_>>()
        );
    }

    /// After a heal: exactly one active node, the store's leader, within `bound` ms.
    fn check_liveness(&mut self, bound: u64) {
        let start = self.now;
        loop {
            self.step(true);
            let actives = self.actives();
            if actives.len() == 1 {
                let Leadership::Active { term } = self.nodes[actives[0]].machine.leadership()
                else {
                    unreachable!()
                };
                if self.store.leader_revision() == Some(term as i64) {
                    return;
                }
            }
            assert!(
                self.now - start <= bound,
                "no single active node {bound} ms after healing (actives {actives:?}, view {:?})",
                self.store.view()
            );
        }
    }
}

/// Runs one seed; returns how many peer leases were revoked while a successor process ran at
/// the dead node's address.
fn run(seed: u64) -> u64 {
    let n = 3 + (seed % 3) as usize;
    let mut sim = Sim::new(seed, n);
    for _round in 0..6 {
        for _ in 0..300 {
            sim.step(false);
        }
        // TTL for leftovers of crashed nodes, plus a hand-over to a primary.
        sim.check_liveness(2 * TTL + 6_000);
        // Hand-overs to a primary may still happen, but only as gaps of a step or two.
        let mut gap_since = None;
        for _ in 0..100 {
            sim.step(true);
            if sim.actives().is_empty() {
                let since = *gap_since.get_or_insert(sim.now);
                assert!(
                    sim.now - since <= 300,
                    "t={} no active node while healthy",
                    sim.now
                );
            } else {
                gap_since = None;
            }
        }
    }
    assert!(sim.fenced_commits > 0);
    sim.successor_proofs
}

#[test]
fn simulated_clusters_keep_one_active_node() {
    let seeds: Vec<u64> = match std::env::var("HA_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("HA_SIM_SEED must be a number")],
        Err(_) => (1..=40).collect(),
    };
    let all = seeds.len() > 1;
    let mut successor_proofs = 0;
    for seed in seeds {
        match std::panic::catch_unwind(|| run(seed)) {
            Ok(n) => successor_proofs += n,
            Err(e) => {
                eprintln!("simulation failed with seed {seed} (rerun: HA_SIM_SEED={seed})");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("peer leases revoked with a successor process at the address: {successor_proofs}");
    // The restart-at-once fault is exercised: over all seeds some active node was restarted in
    // place and proven dead while its successor ran.
    assert!(!all || successor_proofs > 0);
}
