//! The dispatch rules as a pure state machine: events in, commands out, no I/O and no clock of
//! its own (time arrives in the events). The dispatcher on the active core node feeds it what
//! it sees in the store and carries out its commands with fenced transactions; a new active
//! node rebuilds it from the store (see [`Scheduler::adopt`]). Times are Tokio instants, so a
//! dispatcher under a paused Tokio clock (tests) times jobs out on that clock.
//!
//! Rules:
//! - A queued job goes to the least-loaded eligible runner (alive, not draining, carrying the
//!   service's required labels, below its capacity); load is assigned jobs over capacity, ties
//!   are broken round-robin so equal runners take turns.
//! - A job whose runner is lost before it finished is dispatched again while it has retries
//!   left (a new attempt), else it fails with `runner <id> lost while running job <id>`.
//! - A job a draining runner gives back is dispatched again at once without using a retry: it
//!   was not lost, it was handed back.
//! - A job that has no eligible runner for `queue_timeout` (counted only while none exists)
//!   fails with `no runner available in cluster <id>`; a job that waits for capacity on
//!   eligible but busy runners waits without limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::FailureKind;

/// What the scheduler knows of a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerInfo {
    pub id: String,
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
    pub draining: bool,
}

/// Inputs of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A runner registered or changed (capacity, labels, draining).
    RunnerUp(RunnerInfo),
    /// A runner's registration vanished (its lease ended: stopped, crashed or cut off).
    RunnerGone { id: String },
    /// A new job to dispatch.
    Submitted {
        job: String,
        labels: BTreeMap<String, String>,
        retries: u32,
        now: Instant,
    },
    /// The runner of `attempt` gave the job back without a result (draining).
    Released { job: String, attempt: u32 },
    /// A result of `attempt` was written.
    Finished { job: String, attempt: u32 },
    /// Time passes (queue timeouts).
    Tick { now: Instant },
}

/// Outputs: what the dispatcher must write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Assign attempt `attempt` of `job` to `runner`.
    Assign {
        job: String,
        runner: String,
        attempt: u32,
    },
    /// Attempt `attempt` was lost with its runner and the job goes back to the queue.
    Requeue {
        job: String,
        attempt: u32,
        reason: String,
    },
    /// The job ends without a result.
    Fail {
        job: String,
        attempt: u32,
        kind: FailureKind,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting; `unavailable_since` counts while no eligible runner exists.
    Queued {
        unavailable_since: Option<Instant>,
    },
    Assigned {
        runner: String,
    },
}

#[derive(Debug, Clone)]
struct Job {
    labels: BTreeMap<String, String>,
    retries_left: u32,
    /// The last attempt handed out (0 before the first).
    attempt: u32,
    phase: Phase,
}

#[derive(Debug, Clone)]
struct Runner {
    info: RunnerInfo,
    assigned: BTreeSet<String>,
}

/// The dispatch state of one cluster.
#[derive(Debug)]
pub struct Scheduler {
    cluster_id: String,
    queue_timeout: Duration,
    runners: BTreeMap<String, Runner>,
    /// Unfinished jobs only: a finished or failed job leaves the scheduler.
    jobs: BTreeMap<String, Job>,
    /// Submission order of queued jobs (fairness: first come, first dispatched).
    queue: Vec<String>,
    /// Round-robin cursor among equally loaded runners.
    turn: usize,
    /// The latest time an event brought; events without a time happen "now" by this clock.
    clock: Instant,
}

impl Scheduler {
    pub fn new(cluster_id: impl Into<String>, queue_timeout: Duration, now: Instant) -> Self {
        Self {
            clock: now,
            cluster_id: cluster_id.into(),
            queue_timeout,
            runners: BTreeMap::new(),
            jobs: BTreeMap::new(),
            queue: Vec::new(),
            turn: 0,
        }
    }

    /// A job found assigned when a new active node takes over: it keeps its runner and attempt.
    /// Feed the runners first; a job whose runner is not known is treated as lost with it.
    pub fn adopt(
        &mut self,
        job: &str,
        labels: BTreeMap<String, String>,
        retries_left: u32,
        attempt: u32,
        runner: &str,
        now: Instant,
    ) -> Vec<Command> {
        self.jobs.insert(
            job.to_owned(),
            Job {
                labels,
                retries_left,
                attempt,
                phase: Phase::Assigned {
                    runner: runner.to_owned(),
                },
            },
        );
        match self.runners.get_mut(runner) {
            Some(r) => {
                r.assigned.insert(job.to_owned());
                Vec::new()
            }
            None => {
                let mut out = self.lose(job, runner);
                out.extend(self.dispatch(now));
                out
            }
        }
    }

    /// A job found queued when a new active node takes over (`attempt` attempts already made).
    pub fn adopt_queued(
        &mut self,
        job: &str,
        labels: BTreeMap<String, String>,
        retries_left: u32,
        attempt: u32,
        now: Instant,
    ) -> Vec<Command> {
        self.jobs.insert(
            job.to_owned(),
            Job {
                labels,
                retries_left,
                attempt,
                phase: Phase::Queued {
                    unavailable_since: None,
                },
            },
        );
        self.queue.push(job.to_owned());
        self.dispatch(now)
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        match event {
            Event::RunnerUp(info) => {
                let id = info.id.clone();
                match self.runners.get_mut(&id) {
                    Some(r) => r.info = info,
                    None => {
                        self.runners.insert(
                            id,
                            Runner {
                                info,
                                assigned: BTreeSet::new(),
                            },
                        );
                    }
                }
                self.dispatch(self.clock)
            }
            Event::RunnerGone { id } => {
                let Some(runner) = self.runners.remove(&id) else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                for job in runner.assigned {
                    out.extend(self.lose(&job, &id));
                }
                out.extend(self.dispatch(self.clock));
                out
            }
            Event::Submitted {
                job,
                labels,
                retries,
                now,
            } => {
                if self.jobs.contains_key(&job) {
                    return Vec::new();
                }
                self.jobs.insert(
                    job.clone(),
                    Job {
                        labels,
                        retries_left: retries,
                        attempt: 0,
                        phase: Phase::Queued {
                            unavailable_since: None,
                        },
                    },
                );
                self.queue.push(job);
                self.dispatch(now)
            }
            Event::Released { job, attempt } => {
                let Some(j) = self.jobs.get_mut(&job) else {
                    return Vec::new();
                };
                if j.attempt != attempt {
                    return Vec::new();
                }
                if let Phase::Assigned { runner } = &j.phase {
                    if let Some(r) = self.runners.get_mut(runner) {
                        r.assigned.remove(&job);
                    }
                }
                j.phase = Phase::Queued {
                    unavailable_since: None,
                };
                // Handed back jobs go first: they were dispatched before anything queued now.
                self.queue.insert(0, job);
                self.dispatch(self.clock)
            }
            Event::Finished { job, attempt } => {
                let current = self.jobs.get(&job).map(|j| j.attempt);
                if current != Some(attempt) {
                    // A stale attempt's result (written before it was fenced off): ignored.
                    return Vec::new();
                }
                if let Some(Job {
                    phase: Phase::Assigned { runner },
                    ..
                }) = self.jobs.remove(&job)
                {
                    if let Some(r) = self.runners.get_mut(&runner) {
                        r.assigned.remove(&job);
                    }
                }
                self.queue.retain(|q| q != &job);
                self.dispatch(self.clock)
            }
            Event::Tick { now } => self.dispatch(now),
        }
    }

    /// Jobs not yet finished.
    pub fn pending(&self) -> usize {
        self.jobs.len()
    }

    /// Jobs waiting for a runner.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Assigned jobs per runner (for the operator view).
    pub fn load(&self) -> BTreeMap<String, (usize, u32)> {
        self.runners
            .iter()
            .map(|(id, r)| (id.clone(), (r.assigned.len(), r.info.capacity)))
            .collect()
    }

    fn lose(&mut self, job: &str, runner: &str) -> Vec<Command> {
        let Some(j) = self.jobs.get_mut(job) else {
            return Vec::new();
        };
        let reason = format!("runner {runner} lost while running job {job}");
        if j.retries_left > 0 {
            j.retries_left -= 1;
            j.phase = Phase::Queued {
                unavailable_since: None,
            };
            self.queue.insert(0, job.to_owned());
            vec![Command::Requeue {
                job: job.to_owned(),
                attempt: j.attempt,
                reason,
            }]
        } else {
            let attempt = j.attempt;
            self.jobs.remove(job);
            vec![Command::Fail {
                job: job.to_owned(),
                attempt,
                kind: FailureKind::RunnerLost,
                reason,
            }]
        }
    }

    /// Assigns what can be assigned; fails what waited too long without any eligible runner.
    fn dispatch(&mut self, now: Instant) -> Vec<Command> {
        self.clock = self.clock.max(now);
        let now = self.clock;
        let mut out = Vec::new();
        let mut still = Vec::with_capacity(self.queue.len());
        let queue = std::mem::take(&mut self.queue);
        for id in queue {
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let labels = job.labels.clone();
            let eligible: Vec<&String> = self
                .runners
                .iter()
                .filter(|(_, r)| !r.info.draining && matches(&r.info.labels, &labels))
                .map(|(id, _)| id)
                .collect();
            if eligible.is_empty() {
                let Some(job) = self.jobs.get_mut(&id) else {
                    continue;
                };
                let since = match &mut job.phase {
                    Phase::Queued { unavailable_since } => *unavailable_since.get_or_insert(now),
                    Phase::Assigned { .. } => now,
                };
                if now.saturating_duration_since(since) >= self.queue_timeout {
                    let attempt = job.attempt;
                    self.jobs.remove(&id);
                    out.push(Command::Fail {
                        job: id,
                        attempt,
                        kind: FailureKind::NoRunner,
                        reason: format!("no runner available in cluster {}", self.cluster_id),
                    });
                } else {
                    still.push(id);
                }
                continue;
            }
            // Least loaded with room; round-robin among equals.
            let n = eligible.len();
            let mut best: Option<(String, u64)> = None;
            for k in 0..n {
                let rid = eligible[(self.turn + k) % n];
                let r = &self.runners[rid];
                let cap = u64::from(r.info.capacity.max(1));
                let used = r.assigned.len() as u64;
                if used >= cap {
                    continue;
                }
                // Compare used/cap as fractions scaled to avoid floats.
                let load = used * 1_000_000 / cap;
                if best.as_ref().is_none_or(|(_, l)| load < *l) {
                    best = Some((rid.clone(), load));
                }
            }
            let Some((runner, _)) = best else {
                // Eligible runners exist but are full: wait, no timeout.
                if let Some(Job {
                    phase: Phase::Queued { unavailable_since },
                    ..
                }) = self.jobs.get_mut(&id)
                {
                    *unavailable_since = None;
                }
                still.push(id);
                continue;
            };
            self.turn = self.turn.wrapping_add(1);
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            job.attempt += 1;
            job.phase = Phase::Assigned {
                runner: runner.clone(),
            };
            let attempt = job.attempt;
            if let Some(r) = self.runners.get_mut(&runner) {
                r.assigned.insert(id.clone());
            }
            out.push(Command::Assign {
                job: id,
                runner,
                attempt,
            });
        }
        self.queue = still;
        out
    }
}

/// Whether a runner carrying `have` satisfies every required label.
fn matches(have: &BTreeMap<String, String>, need: &BTreeMap<String, String>) -> bool {
    need.iter().all(|(k, v)| have.get(k) == Some(v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn runner(id: &str, capacity: u32) -> Event {
        Event::RunnerUp(RunnerInfo {
            id: id.into(),
            capacity,
            labels: BTreeMap::new(),
            draining: false,
        })
    }

    fn submit(s: &mut Scheduler, job: &str, retries: u32, now: Instant) -> Vec<Command> {
        s.handle(Event::Submitted {
            job: job.into(),
            labels: BTreeMap::new(),
            retries,
            now,
        })
    }

    fn assigned_to(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Assign { runner, .. } => Some(runner.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn least_loaded_then_round_robin() {
        let now = Instant::now();
        let mut s = Scheduler::new("c1", Duration::from_secs(60), now);
        s.handle(runner("a", 4));
        s.handle(runner("b", 4));
        let mut to = Vec::new();
        for i in 0..6 {
            to.extend(assigned_to(&submit(&mut s, &format!("j{i}"), 0, now)));
        }
        let a = to.iter().filter(|r| *r == "a").count();
        assert_eq!((a, to.len() - a), (3, 3), "{to:?}");
        // A bigger runner takes more.
        s.handle(runner("c", 100));
        let mut more = Vec::new();
        for i in 6..12 {
            more.extend(assigned_to(&submit(&mut s, &format!("j{i}"), 0, now)));
        }
        assert!(more.iter().filter(|r| *r == "c").count() >= 5, "{more:?}");
    }

    #[test]
    fn full_runners_make_jobs_wait_without_timeout() {
        let now = Instant::now();
        let mut s = Scheduler::new("c1", Duration::from_secs(1), now);
        s.handle(runner("a", 1));
        assert_eq!(assigned_to(&submit(&mut s, "j1", 0, now)), ["a"]);
        assert!(submit(&mut s, "j2", 0, now).is_empty());
        assert!(s
            .handle(Event::Tick {
                now: now + Duration::from_secs(10)
            })
            .is_empty());
        assert_eq!(s.queued(), 1);
        let cmds = s.handle(Event::Finished {
            job: "j1".into(),
            attempt: 1,
        });
        assert_eq!(
            cmds,
            [Command::Assign {
                job: "j2".into(),
                runner: "a".into(),
                attempt: 1
            }]
        );
    }

    #[test]
    fn no_eligible_runner_fails_after_the_timeout() {
        let now = Instant::now();
        let mut s = Scheduler::new("c1", Duration::from_secs(60), now);
        assert!(submit(&mut s, "j1", 0, now).is_empty());
        assert!(s
            .handle(Event::Tick {
                now: now + Duration::from_secs(59)
            })
            .is_empty());
        let cmds = s.handle(Event::Tick {
            now: now + Duration::from_secs(60),
        });
        assert_eq!(
            cmds,
            [Command::Fail {
                job: "j1".into(),
                attempt: 0,
                kind: FailureKind::NoRunner,
                reason: "no runner available in cluster c1".into()
            }]
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn labels_select_runners() {
        let now = Instant::now();
        let mut s = Scheduler::new("c1", Duration::from_secs(60), now);
        s.handle(runner("plain", 8));
        s.handle(Event::RunnerUp(RunnerInfo {
            id: "gpu".into(),
            capacity: 1,
            labels: [("gpu".to_owned(), "yes".to_owned())].into(),
            draining: false,
        }));
        let cmds = s.handle(Event::Submitted {
            job: "j".into(),
            labels: [("gpu".to_owned(), "yes".to_owned())].into(),
            retries: 0,
            now,
        });
        assert_eq!(assigned_to(&cmds), ["gpu"]);
    }

    #[test]
    fn lost_runner_requeues_retryable_and_fails_the_rest() {
        let now = Instant::now();
        let mut s = Scheduler::new("c1", Duration::from_secs(60), now);
        s.handle(runner("a", 1));
        s.handle(runner("b", 1));
        let first = submit(&mut s, "retry", 1, now);
        let second = submit(&mut s, "once", 0, now);
        let on_a = if assigned_to(&first) == ["a"] {
            "retry"
        } else {
            "once"
        };
        let gone = s.handle(Event::RunnerGone { id: "a".into() });
        if on_a == "retry" {
            // Requeued, then waits: b is busy with "once".
            assert_eq!(
                gone,
                [Command::Requeue {
                    job: "retry".into(),
                    attempt: 1,
                    reason: "runner a lost while running job retry".into()
                }]
            );
            let cmds = s.handle(Event::Finished {
                job: "once".into(),
                attempt: 1,
            });
            assert_eq!(
                cmds,
                [Command::Assign {
                    job: "retry".into(),
                    runner: "b".into(),
                    attempt: 2
                }]
            );
            // The first attempt's late result is ignored; the second one counts.
            assert!(s
                .handle(Event::Finished {
                    job: "retry".into(),
                    attempt: 1
                })
                .is_empty());
            assert_eq!(s.pending(), 1);
        } else {
            assert_eq!(
                gone,
                [Command::Fail {
                    job: "once".into(),
                    attempt: 1,
                    kind: FailureKind::RunnerLost,
                    reason: "runner a lost while running job once".into()
                }]
            );
        }
        let _ = second;
    }

    #[test]
    fn drained_jobs_go_back_first_without_using_a_retry() {
        let now = Instant::now();
        let mut s = Scheduler::new("c1", Duration::from_secs(60), now);
        s.handle(runner("a", 1));
        submit(&mut s, "j1", 0, now);
        submit(&mut s, "j2", 0, now);
        s.handle(Event::RunnerUp(RunnerInfo {
            id: "a".into(),
            capacity: 1,
            labels: BTreeMap::new(),
            draining: true,
        }));
        // The waiting job takes the new runner at once; the handed-back one follows.
        assert_eq!(
            s.handle(runner("b", 2)),
            [Command::Assign {
                job: "j2".into(),
                runner: "b".into(),
                attempt: 1
            }]
        );
        let cmds = s.handle(Event::Released {
            job: "j1".into(),
            attempt: 1,
        });
        assert_eq!(
            cmds,
            [Command::Assign {
                job: "j1".into(),
                runner: "b".into(),
                attempt: 2
            }]
        );
    }

    #[test]
    fn adopted_jobs_keep_their_runner_or_are_lost_with_it() {
        let now = Instant::now();
        let mut s = Scheduler::new("c1", Duration::from_secs(60), now);
        s.handle(runner("a", 2));
        assert!(s.adopt("j1", BTreeMap::new(), 0, 1, "a", now).is_empty());
        assert_eq!(s.load()["a"], (1, 2));
        let lost = s.adopt("j2", BTreeMap::new(), 1, 1, "vanished", now);
        assert_eq!(
            lost[0],
            Command::Requeue {
                job: "j2".into(),
                attempt: 1,
                reason: "runner vanished lost while running job j2".into()
            }
        );
        assert_eq!(
            lost[1],
            Command::Assign {
                job: "j2".into(),
                runner: "a".into(),
                attempt: 2
            }
        );
    }
}
