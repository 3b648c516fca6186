//! Runs with an `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header-06): the same key
//! with the same service and body is one run, executed once, and every request carrying the
//! key gets its answer; the key with another request is refused (422).
//!
//! The key's record is the node's run record ([`crate::run_records`], kind `api`, id
//! `api-<SHA-256 of the key>`), in the cluster's store: it outlives a node restart and a
//! fail-over, is fenced by the HA term, and is kept for `[connect] run_retention`. Its answer is
//! the HTTP answer (status and body) the first request got.
//!
//! - Local execution: the run belongs to the node, not to the request: it goes on when the
//!   caller disconnects (the caller comes back with the key for its answer), and a node that
//!   stops gives it `connect.server_ha_drain_timeout` to finish, as it does a manager's run.
//! - Distributed execution: the record names the job the run was queued as; a repeat waits for
//!   that job (whichever node is active), and the first to see it end keeps its answer in the
//!   record, which lives longer than the job (`job_retention`).
//! - A repeat while the first request is still running waits for the same run (the draft also
//!   allows 409; waiting makes a repeat look like the request it repeats).

use std::time::{Duration, Instant};

use autogate_automation::api_types::{RunResponse, RunStatus};
use autogate_automation::RunRequest;
use autogate_jobs::JobOutcome;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jobs::{jobs_error, moved, DISPATCHER_WAIT};
use super::runs::finished_answer;
use super::{ApiError, ApiState};
use crate::run_records::{api_run_id, HttpAnswer, Keyed, RecordError, Writer};

/// The request header.
pub(super) const HEADER: &str = "idempotency-key";
/// Longest key accepted (the draft sets no limit; a UUID is 36), as the manager's API.
const MAX_KEY_LEN: usize = 255;
/// How long a repeat waits for another node to finish queuing the run as a job (the time of a
/// store write and the inputs' check) before it is answered 503.
const QUEUING_WAIT: Duration = Duration::from_secs(30);
/// How often a repeat looks again while another node queues the run.
const QUEUING_POLL: Duration = Duration::from_millis(100);

/// The request's key: `None` without the header, a 400 naming the header for a bad one.
pub(super) fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, format!("Idempotency-Key: {m}"));
    if values.next().is_some() {
        return Err(bad("given more than once; send one key".to_owned()));
    }
    let key = value
        .to_str()
        .map_err(|_| bad("only visible ASCII characters are allowed".to_owned()))?;
    check_key(key).map_err(bad)?;
    Ok(Some(key.to_owned()))
}

/// 1–255 visible ASCII characters (and spaces inside, as the manager's API accepts).
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "must be 1 to {MAX_KEY_LEN} characters, got {}",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err("only visible ASCII characters are allowed".to_owned());
    }
    Ok(())
}

/// What makes two requests the same run: the service and the body, as canonical JSON (object
/// keys sorted, no spaces), so that key order and formatting do not matter.
pub(super) fn digest(service: &str, body: &Map<String, Value>) -> String {
    let mut text = String::new();
    canonical(&Value::Object(body.clone()), &mut text);
    let mut h = Sha256::new();
    h.update(service.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn respond(answer: HttpAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(answer.body)).into_response()
}

fn completed(result: autogate_exec::RunResult, job_id: Option<String>) -> HttpAnswer {
    let body = RunResponse {
        status: RunStatus::Completed,
        result,
        job_id,
    };
    HttpAnswer {
        status: 200,
        body: serde_json::to_value(body).unwrap_or(Value::Null),
    }
}

/// A run of service `req.service` under `key`, whose request digest is `digest`.
pub(super) async fn run(s: &ApiState, key: &str, req: RunRequest, digest: &str) -> Response {
    let records = &s.node.runs;
    let run_id = api_run_id(key);
    let writer = Writer {
        node_id: s.node.id.to_string(),
        ha: s.node.ha.clone(),
    };
    let queued = s.node.jobs.enabled();
    let mut queuing_since: Option<Instant> = None;
    loop {
        if records.draining() {
            // Nothing started under the key: the next active node (or this one, restarted)
            // takes the same key.
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node is stopping; send the request again (with the same Idempotency-Key)",
            )
            .into_response();
        }
        let keyed = match records.begin_api(&run_id, digest, &writer, queued).await {
            Ok(k) => k,
            Err(RecordError::Mismatch(_)) => {
                return ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "Idempotency-Key {key:?} was used for a different request (another service or body); use a new key for a new request"
                    ),
                )
                .into_response()
            }
            Err(e @ RecordError::Store(_)) => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .into_response()
            }
        };
        match keyed {
            Keyed::NotNow => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node may not start runs now (it is not the active node, or its term is being renewed); retry",
                )
                .into_response()
            }
            Keyed::Answered(answer) => return respond(HttpAnswer::decode(&answer)),
            Keyed::Wait(rx) => {
                // Only the caller going away ends this wait: the run itself always ends with an
                // answer (a stopping node kills what outlasts its drain, answered interrupted).
                let forever = tokio_util::sync::CancellationToken::new();
                match crate::run_records::wait_answer(rx, &forever).await {
                    Some(answer) => return respond(HttpAnswer::decode(&answer)),
                    // Queued as a job or abandoned meanwhile: the record says which.
                    None => continue,
                }
            }
            Keyed::Job(job) => return follow_job(s, &run_id, &job).await,
            Keyed::Queuing => {
                let since = *queuing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > QUEUING_WAIT {
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the run of this Idempotency-Key is still being queued by another node; ask again",
                    )
                    .into_response();
                }
                tokio::time::sleep(QUEUING_POLL).await;
            }
            // Cloned: a loop that comes round again (the record was abandoned meanwhile) may
            // start it again.
            Keyed::Start(started) if queued => return queue(s, started, req.clone()).await,
            Keyed::Start(started) => {
                let rx = started.answer();
                let node = s.node.clone();
                let stop = records.stop_token();
                let req = req.clone();
                records.spawn(async move {
                    let answer = execute(&node, &req, &stop).await;
                    node.runs.finish(started, fit(answer).encode()).await;
                });
                let forever = tokio_util::sync::CancellationToken::new();
                if let Some(answer) = crate::run_records::wait_answer(rx, &forever).await {
                    return respond(HttpAnswer::decode(&answer));
                }
            }
        }
    }
}

/// Runs `req` in this process; killed when a stop's drain is over.
async fn execute(
    node: &crate::Node,
    req: &RunRequest,
    stop: &tokio_util::sync::CancellationToken,
) -> HttpAnswer {
    match node.automation.run(req, stop).await {
        Ok(result) => completed(result, None),
        Err(_) if stop.is_cancelled() => HttpAnswer {
            status: 503,
            body: serde_json::json!({
                "error": format!(
                    "interrupted: the node running service {} stopped before it finished; it may have partially run; send it with a new Idempotency-Key to run it again",
                    req.service
                ),
                "detail": {"reason": "interrupted", "node_id": node.id.as_str()},
            }),
        },
        Err(e) => ApiError::from(e).into_answer(),
    }
}

/// Queues a run this node started under a key as a job, and answers when the job ends.
async fn queue(s: &ApiState, started: crate::run_records::Started, req: RunRequest) -> Response {
    let records = &s.node.runs;
    let run_id = started.run_id.clone();
    let Some(dispatcher) = s.node.jobs.wait_current(DISPATCHER_WAIT).await else {
        records.abandon(started).await;
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node does not dispatch jobs now (it is not the active node, or it is starting); retry",
        )
        .into_response();
    };
    let (job, done) = match dispatcher
        .submit(&s.node.automation, req, autogate_jobs::Origin::Api)
        .await
    {
        Ok(submitted) => submitted,
        Err(autogate_jobs::JobsError::Automation(e)) => {
            // The request itself is refused (unknown service, inputs the decorator refuses):
            // the same request under the same key is refused the same way.
            let answer = ApiError::from(e).into_answer();
            records.finish(started, answer.encode()).await;
            return respond(answer);
        }
        Err(e) => {
            // Nothing was queued and asking again may work: the key is free again.
            records.abandon(started).await;
            return jobs_error(e).into_response();
        }
    };
    if let Err(e) = records.queued(started, &job).await {
        tracing::warn!("cannot record that run {run_id} is job {job}: {e}");
    }
    answer_job(s, &run_id, &job, done.await.ok().map(|d| d.outcome)).await
}

/// A repeat of a run queued as `job`: the job's answer, waited for on the active node.
async fn follow_job(s: &ApiState, run_id: &str, job: &str) -> Response {
    let cid = &s.node.config.application.cluster_id;
    let outcome = match autogate_jobs::lookup(&*s.node.store, cid, job).await {
        Ok(Some((record, outcome))) if record.state.is_final() => outcome,
        Ok(Some(_)) => {
            let Some(dispatcher) = s.node.jobs.wait_current(DISPATCHER_WAIT).await else {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node does not dispatch jobs now (no active node, or it is starting); retry",
                )
                .with_job(job)
                .into_response();
            };
            match dispatcher.wait(job).await {
                Ok(done) => Some(done.outcome),
                Err(e) => return jobs_error(e).with_job(job).into_response(),
            }
        }
        Ok(None) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the run of this Idempotency-Key was job {job}, which is no longer kept (server.job_retention), and its answer was not recorded"),
            )
            .with_job(job)
            .into_response()
        }
        Err(e) => return jobs_error(e).with_job(job).into_response(),
    };
    answer_job(s, run_id, job, outcome).await
}

/// The answer of a job that ended (kept in the record), or the 503 of a caller whose node
/// stopped dispatching meanwhile (not kept: the job goes on, and a repeat gets its end).
async fn answer_job(
    s: &ApiState,
    run_id: &str,
    job: &str,
    outcome: Option<JobOutcome>,
) -> Response {
    let answer = match outcome {
        None | Some(JobOutcome::Released) => return moved(job).into_response(),
        Some(outcome) => match finished_answer(job, outcome) {
            Ok(Json(r)) => completed(r.result, r.job_id),
            Err(e) => e.into_answer(),
        },
    };
    let answer = fit(answer);
    s.node.runs.settle(run_id, answer.encode()).await;
    respond(answer)
}

/// An answer small enough for its record (the store refuses large values): past
/// [`RECORD_FRAME_LIMIT`](crate::run_records::RECORD_FRAME_LIMIT), the result keeps the ends of
/// its stdout and stderr and says `"truncated": true`. Every caller gets this same answer.
fn fit(mut answer: HttpAnswer) -> HttpAnswer {
    let limit = crate::run_records::RECORD_FRAME_LIMIT;
    if answer.encode().len() <= limit {
        return answer;
    }
    let Some(result) = answer.body.get_mut("result").and_then(Value::as_object_mut) else {
        return answer;
    };
    result.remove("stdout_json");
    result.insert("truncated".into(), Value::Bool(true));
    let take =
        |r: &Map<String, Value>, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (stdout, stderr) = (take(result, "stdout"), take(result, "stderr"));
    let mut keep = limit / 2;
    // Escaping can make text longer in JSON than in memory: shrink until it fits.
    for _ in 0..12 {
        let mut candidate = answer.clone();
        if let Some(r) = candidate
            .body
            .get_mut("result")
            .and_then(Value::as_object_mut)
        {
            r.insert("stdout".into(), Value::String(tail(&stdout, keep / 2)));
            r.insert("stderr".into(), Value::String(tail(&stderr, keep / 2)));
        }
        if candidate.encode().len() <= limit {
            return candidate;
        }
        keep /= 2;
    }
    answer
}

/// The last `keep` bytes of `s`, on a character boundary.
fn tail(s: &str, keep: usize) -> String {
    if s.len() <= keep {
        return s.to_owned();
    }
    let mut start = s.len() - keep;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_one_to_255_visible_characters() {
        let headers = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for v in v {
                h.append(HEADER, v.parse().unwrap());
            }
            h
        };
        assert_eq!(key(&headers(&[])).unwrap(), None);
        assert_eq!(
            key(&headers(&["0190b2c4-7d3e-7a1b"])).unwrap().as_deref(),
            Some("0190b2c4-7d3e-7a1b")
        );
        assert!(key(&headers(&[&"k".repeat(255)])).is_ok());
        for bad in [
            vec![""],
            vec![&*"k".repeat(256)],
            vec!["a\tb"],
            vec!["a", "b"],
        ] {
            let e = key(&headers(&bad)).unwrap_err().into_answer();
            assert_eq!(e.status, 400, "{bad:?}");
            assert!(
                e.body["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("Idempotency-Key: "),
                "{e:?}"
            );
        }
    }

    #[test]
    fn the_digest_is_of_the_service_and_the_canonical_body() {
        let a = json!({"inputs": {"b": 1, "a": [1, {"y": 2, "x": 3}]}, "set": ["k=v"]});
        let b = json!({"set": ["k=v"], "inputs": {"a": [1, {"x": 3, "y": 2}], "b": 1}});
        let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
        assert_eq!(digest("svc", a), digest("svc", b));
        assert_ne!(digest("svc", a), digest("other", a));
        let c = json!({"inputs": {"b": 2, "a": [1, {"y": 2, "x": 3}]}, "set": ["k=v"]});
        assert_ne!(digest("svc", a), digest("svc", c.as_object().unwrap()));
        let mut text = String::new();
        canonical(&json!({"b": "\"", "a": null}), &mut text);
        assert_eq!(text, r#"{"a":null,"b":"\""}"#);
    }

    #[test]
    fn a_large_answer_is_kept_with_the_ends_of_its_output() {
        let big = "x".repeat(crate::run_records::RECORD_FRAME_LIMIT);
        let answer = HttpAnswer {
            status: 200,
            body: json!({"status": "completed", "result": {"stdout": format!("{big}END"), "stderr": "e", "return_code": 0}}),
        };
        let kept = fit(answer);
        assert!(kept.encode().len() <= crate::run_records::RECORD_FRAME_LIMIT);
        assert_eq!(kept.body["result"]["truncated"], true);
        assert!(kept.body["result"]["stdout"]
            .as_str()
            .unwrap()
            .ends_with("END"));
        assert_eq!(kept.body["result"]["stderr"], "e");
        let small = HttpAnswer {
            status: 200,
            body: json!({"result": {"stdout": "ok"}}),
        };
        assert_eq!(fit(small.clone()), small);
    }
}
