//! Job and runner records and their place in the store (the layout is also in docs/runners.md).
//! Everything is JSON under the cluster prefix `/autogate/<cluster_id>/`:
//!
//! | key | value | written by | lifetime |
//! |---|---|---|---|
//! | `runners/<node id>` | [`RunnerRecord`] | the runner | its lease |
//! | `jobs/<job id>` | [`JobRecord`] | the active core node, fenced by its term | retention after it ends |
//! | `assign/<node id>/<job id>` | [`Assignment`] | the active core node, fenced | until the job ends or moves |
//! | `claims/<job id>` | [`Claim`] | the runner, once per attempt | the runner's lease |
//! | `results/<job id>/<attempt>/<part>` | chunks of a [`JobOutcome`] | the runner, only while its claim holds | retention |
//!
//! A runner watches only `assign/<its id>/`. The claim binds an attempt to the runner's lease:
//! when the runner dies the claim vanishes with its registration, and the result write of an
//! attempt compares the claim, so a runner that was cut off and comes back cannot write over a
//! newer attempt.

use std::collections::BTreeMap;

use autogate_automation::RunRequest;
use autogate_exec::RunResult;
use serde::{Deserialize, Serialize};

/// Largest result chunk: etcd refuses requests over 1.5 MiB by default, and a chunk travels
/// with its claim compare in one transaction.
pub const CHUNK: usize = 512 * 1024;

/// Key layout of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster_id: &str) -> Self {
        Self {
            prefix: autogate_store::cluster_prefix(cluster_id),
        }
    }
    pub fn runners(&self) -> String {
        format!("{}runners/", self.prefix)
    }
    pub fn runner(&self, id: &str) -> String {
        format!("{}runners/{id}", self.prefix)
    }
    pub fn jobs(&self) -> String {
        format!("{}jobs/", self.prefix)
    }
    pub fn job(&self, id: &str) -> String {
        format!("{}jobs/{id}", self.prefix)
    }
    pub fn assignments(&self) -> String {
        format!("{}assign/", self.prefix)
    }
    pub fn assignments_of(&self, runner: &str) -> String {
        format!("{}assign/{runner}/", self.prefix)
    }
    pub fn assignment(&self, runner: &str, job: &str) -> String {
        format!("{}assign/{runner}/{job}", self.prefix)
    }
    pub fn claims(&self) -> String {
        format!("{}claims/", self.prefix)
    }
    pub fn claim(&self, job: &str) -> String {
        format!("{}claims/{job}", self.prefix)
    }
    pub fn results(&self) -> String {
        format!("{}results/", self.prefix)
    }
    pub fn results_of(&self, job: &str) -> String {
        format!("{}results/{job}/", self.prefix)
    }
    pub fn result_attempt(&self, job: &str, attempt: u32) -> String {
        format!("{}results/{job}/{attempt:06}/", self.prefix)
    }
    /// Chunk `part` of `total` (the name carries the total, so a reader knows when it has all).
    pub fn result_part(&self, job: &str, attempt: u32, part: usize, total: usize) -> String {
        format!(
            "{}results/{job}/{attempt:06}/{part:04}-of-{total:04}",
            self.prefix
        )
    }

    /// `(job, attempt, part, total)` of a result key.
    pub fn parse_result_part(&self, key: &str) -> Option<(String, u32, usize, usize)> {
        let rest = key.strip_prefix(&self.results())?;
        let mut it = rest.split('/');
        let job = it.next()?.to_owned();
        let attempt = it.next()?.parse().ok()?;
        let (part, total) = it.next()?.split_once("-of-")?;
        Some((job, attempt, part.parse().ok()?, total.parse().ok()?))
    }

    /// The job id of a `jobs/`, `claims/` key, or the (runner, job) of an `assign/` key.
    pub fn strip<'a>(&self, base: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(base)
    }
}

/// A runner's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub node_id: String,
    /// The runner's stable name (`[application] node_name`): the id changes at every start,
    /// the name does not. Absent from records of older runners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub host: String,
    pub version: String,
    pub capacity: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Jobs running now.
    pub running: u32,
    /// Stopping: takes no new jobs.
    #[serde(default)]
    pub draining: bool,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, rewritten with every change of `running`.
    pub last_seen: String,
}

/// Where a job came from, so its result can be delivered after a fail-over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// An operator API call (the caller may come back with the job id).
    #[default]
    Api,
    /// A manager request: the JSON-RPC id to answer.
    Manager { request_id: serde_json::Value },
}

/// State of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Assigned,
    Completed,
    Failed,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed)
    }
}

/// One try of a job on one runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub runner: String,
    pub assigned_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// `completed`, `failed: …`, `lost: …`, `released`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// A job, as the active core node keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub service: String,
    #[serde(rename = "type")]
    pub service_type: String,
    pub request: RunRequest,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Retries allowed when the runner is lost.
    pub retries: u32,
    pub state: JobState,
    /// The current (last) attempt number, 0 before the first.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it failed (no result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure `error` is; absent in records written before kinds existed (read
    /// as [`FailureKind::ServiceFailed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<FailureKind>,
    #[serde(default)]
    pub origin: Origin,
    /// The outcome reached its requester (the manager: sent on a live session).
    #[serde(default)]
    pub delivered: bool,
}

/// `assign/<runner>/<job>`: run this attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub job: String,
    pub attempt: u32,
    pub service: String,
    pub request: RunRequest,
}

/// `claims/<job>`: this runner runs this attempt (bound to the runner's lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub runner: String,
    pub attempt: u32,
}

/// What an attempt produced: a result (whatever the program's exit code), a failure to run, or
/// nothing because it was handed back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
#[allow(
    clippy::large_enum_variant,
    reason = "one outcome per job, read and written once: a box would only add an allocation"
)]
pub enum JobOutcome {
    Completed {
        result: RunResult,
    },
    Error {
        /// Outcomes written before kinds existed have none: they read as `service_failed`.
        #[serde(default)]
        kind: FailureKind,
        message: String,
    },
    /// A draining runner handed the attempt back unfinished: dispatch it again.
    Released,
}

/// Why a job ended without a result, shaped by what its requester does next: the first two are
/// the cluster's fault and asking again later may succeed; the last one is this run's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No eligible runner appeared within the queue timeout.
    NoRunner,
    /// The runner running it was lost and no retry was left.
    RunnerLost,
    /// The runner could not run the service (or what it wrote back cannot be read).
    #[default]
    ServiceFailed,
}

impl JobRecord {
    /// The failure a failed job's record holds (`None` for a job that did not fail this way:
    /// its outcome, if any, is with its results).
    pub fn failure(&self) -> Option<JobOutcome> {
        match (&self.state, &self.error) {
            (JobState::Failed, Some(message)) => Some(JobOutcome::Error {
                kind: self.error_kind.unwrap_or_default(),
                message: message.clone(),
            }),
            _ => None,
        }
    }
}

/// RFC 3339 now.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A new job id: time-ordered (UUID v7), so listing `jobs/` gives submission order.
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Outcomes and records written before failure kinds existed still read, as a failure of
    /// the run.
    #[test]
    fn failures_without_a_kind_read_as_service_failed() {
        let old: JobOutcome =
            serde_json::from_str(r#"{"status":"error","message":"boom"}"#).unwrap();
        assert_eq!(
            old,
            JobOutcome::Error {
                kind: FailureKind::ServiceFailed,
                message: "boom".into()
            }
        );
        let new = JobOutcome::Error {
            kind: FailureKind::NoRunner,
            message: "no runner".into(),
        };
        let text = serde_json::to_string(&new).unwrap();
        assert!(text.contains(r#""kind":"no_runner""#), "{text}");
        assert_eq!(serde_json::from_str::<JobOutcome>(&text).unwrap(), new);
    }

    #[test]
    fn result_keys_round_trip() {
        let k = Keys::new("c1");
        let key = k.result_part("j1", 3, 2, 5);
        assert_eq!(key, "/autogate/c1/results/j1/000003/0002-of-0005");
        assert_eq!(k.parse_result_part(&key), Some(("j1".into(), 3, 2, 5)));
        assert!(key.starts_with(&k.result_attempt("j1", 3)));
    }
}
