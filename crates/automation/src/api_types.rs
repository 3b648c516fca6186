//! The core node's answers that the CLI reads, defined once: the node serializes these types and
//! the CLI deserializes the same ones (and builds them itself in local mode), so a field renamed
//! on one side is a compile error on the other instead of an empty column.
//!
//! Resources are not here: they travel as the resource model's JSON, which the model checks.
//! The schemas of the node's OpenAPI document are derived from these types as well.

use autogate_exec::RunResult;
use autogate_resources::ImportOutcome;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a user of the core node API may do. Ordered: each role may do what the ones before it
/// may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads resources, runs, jobs, the cluster's and the election's state.
    Viewer,
    /// A viewer that also runs services.
    Operator,
    /// Everything: users, HA control, creating and deleting every resource, secrets, import
    /// and export.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown role {s:?}: use admin, operator or viewer"))
    }
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = User)]
pub struct UserView {
    pub name: String,
    /// What the user may do. A user recorded by an earlier version, which had no roles, shows
    /// the role it is treated as.
    pub role: Role,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; null before the first login.
    pub last_login: Option<String>,
    /// RFC 3339; null until the password is first changed.
    pub password_changed: Option<String>,
    /// The password is temporary (`create user --temp-password`, or set by an admin with
    /// `temporary`): the next login must change it and gets no key until it does. Absent in
    /// an earlier version's answer, which had no temporary passwords.
    #[serde(default)]
    pub password_change_required: bool,
}

/// `GET /api/v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

/// A freshly issued API key (`POST /api/v1/login`): shown once to whoever logged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = ApiKey)]
pub struct IssuedKey {
    pub api_key: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// A run's answer (`POST /api/v1/services/{name}/run`): it ran, whatever the program's exit
/// code, and this is its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunResponse {
    pub status: RunStatus,
    pub result: RunResult,
    /// The job that ran it (distributed execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Failures are error answers, so a run's answer has one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Completed,
}

/// What an import did (or would do, in check mode), item by item in file order
/// (`POST /api/v1/db/import`, and `db import --raw` in both modes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    pub items: Vec<ImportedItem>,
    /// False in check mode and when every item was unchanged or a conflict.
    pub written: bool,
}

/// One item of an [`ImportReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportedItem {
    /// The kind's singular name (`executable-object`).
    pub kind: String,
    pub name: String,
    pub outcome: Imported,
}

/// What became of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Imported {
    /// New; created.
    Add,
    /// Exists with the same content (the store's timestamps aside); nothing written.
    Unchanged,
    /// Exists with other content; skipped (no `force`).
    Conflict,
    /// Exists with other content; overwritten (`force`).
    Replacement,
    /// Valid on its own (`validate`): the store was neither read nor written.
    Valid,
}

impl From<ImportOutcome> for Imported {
    fn from(o: ImportOutcome) -> Self {
        match o {
            ImportOutcome::Add => Imported::Add,
            ImportOutcome::Unchanged => Imported::Unchanged,
            ImportOutcome::Conflict => Imported::Conflict,
            ImportOutcome::Replacement => Imported::Replacement,
            ImportOutcome::Valid => Imported::Valid,
        }
    }
}

impl From<autogate_resources::ImportReport> for ImportReport {
    fn from(r: autogate_resources::ImportReport) -> Self {
        ImportReport {
            items: r
                .items
                .into_iter()
                .map(|i| ImportedItem {
                    kind: i.kind.as_str().to_owned(),
                    name: i.name,
                    outcome: i.outcome.into(),
                })
                .collect(),
            written: r.written,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn import_report_keeps_the_api_shape() {
        let report = autogate_resources::ImportReport {
            items: vec![autogate_resources::ImportItem {
                kind: autogate_resources::model::Kind::ExecutableObject,
                name: "sh".into(),
                outcome: ImportOutcome::Replacement,
            }],
            written: true,
        };
        assert_eq!(
            serde_json::to_value(ImportReport::from(report)).unwrap(),
            json!({
                "items": [{"kind": "executable-object", "name": "sh", "outcome": "replacement"}],
                "written": true
            })
        );
    }

    #[test]
    fn a_run_answer_without_a_job_has_no_job_id() {
        let v = json!({
            "status": "completed",
            "result": {
                "stdout": "", "stderr": "", "return_code": 0, "start_time": "s",
                "end_time": "e", "elapsed_time": "0.1s", "timed_out": false
            }
        });
        let answer: RunResponse = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(answer.job_id, None);
        assert_eq!(serde_json::to_value(&answer).unwrap(), v);
        assert!(serde_json::from_value::<RunResponse>(json!({"status": "failed"})).is_err());
    }
}
