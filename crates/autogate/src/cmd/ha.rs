//! `autogate ha status|switchover|pause|resume`: the HA operator commands, talking to a core
//! node's API (`[client] host`/`port`, or a `--profile`).

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use reqwest::Method;

use super::term::outln;
use crate::api::ApiClient;
use crate::cli::Global;
use crate::exit::Failure;

#[derive(Debug, Args)]
pub struct HaArgs {
    #[command(subcommand)]
    pub command: HaCommand,
}

#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// This node's view of the election: role, term, active node, candidates in order.
    Status,
    /// Planned hand-over: the active node resigns (to NODE, when given).
    Switchover {
        /// The node to hand over to (must be a healthy candidate).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
    },
    /// Maintenance: stop standing for election (an active node hands over first).
    Pause,
    /// Stand for election again after a pause.
    Resume,
}

pub fn run(global: &Global, args: HaArgs) -> Result<(), Failure> {
    let config = super::load_config(global, None)?;
    let client = ApiClient::from_config(&config, global)?;
    let (method, path, body) = match &args.command {
        HaCommand::Status => (Method::GET, "/api/v1/ha/status", None),
        HaCommand::Switchover { to } => (
            Method::POST,
            "/api/v1/ha/switchover",
            Some(json!({ "to": to })),
        ),
        HaCommand::Pause => (Method::POST, "/api/v1/ha/pause", None),
        HaCommand::Resume => (Method::POST, "/api/v1/ha/resume", None),
    };
    let rt = super::runtime()?;
    let value = rt.block_on(client.call(method, path, body.as_ref()))?;
    if global.raw {
        outln!("{value}");
        return Ok(());
    }
    match args.command {
        HaCommand::Status => print_status(&value),
        HaCommand::Switchover { .. } => outln!("switchover accepted"),
        HaCommand::Pause => outln!("paused: this node no longer stands for election"),
        HaCommand::Resume => outln!("resumed: this node stands for election"),
    }
    Ok(())
}

fn print_status(v: &Value) {
    let s = |k: &str| match &v[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    outln!("Node:        {}", s("node_id"));
    outln!("Role:        {}", s("role"));
    outln!("Term:        {}", s("term"));
    outln!("Active node: {}", s("active_node_id"));
    outln!("Primary:     {}", s("is_primary"));
    outln!(
        "Lease TTL:   {} ms (remaining {} ms)",
        s("lease_ttl_ms"),
        s("lease_ttl_remaining_ms")
    );
    outln!();
    outln!(
        "{:<4} {:<52} {:<8} {:<8} {:<10}",
        "#",
        "CANDIDATE",
        "PRIMARY",
        "MANAGER",
        "ADDRESS"
    );
    if let Some(cands) = v["candidates"].as_array() {
        for (i, c) in cands.iter().enumerate() {
            let yn = |b: &Value| match b.as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            };
            outln!(
                "{:<4} {:<52} {:<8} {:<8} {:<10}",
                i + 1,
                c["node_id"].as_str().unwrap_or("-"),
                yn(&c["is_primary"]),
                yn(&c["manager_reachable"]),
                c["address"].as_str().unwrap_or("-"),
            );
        }
    }
}
