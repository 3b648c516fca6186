//! `autogate ha status|switchover|pause|resume`: the HA operator commands, talking to a core
//! node's API (`[client] host`/`port` in client mode, or a `--profile`). In local mode without a
//! profile there is no node to ask, and the command says how to name one.

use autogate_ha::HaStatus;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use super::backend;
use super::term::outln;
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
    let (what, method, path, body) = match &args.command {
        HaCommand::Status => ("ha status", Method::GET, "/api/v1/ha/status", None),
        HaCommand::Switchover { to } => (
            "ha switchover",
            Method::POST,
            "/api/v1/ha/switchover",
            Some(json!({ "to": to })),
        ),
        HaCommand::Pause => ("ha pause", Method::POST, "/api/v1/ha/pause", None),
        HaCommand::Resume => ("ha resume", Method::POST, "/api/v1/ha/resume", None),
    };
    let value = backend::with_node(global, what, async |client, _| {
        client.call(method, path, body.as_ref()).await
    })?;
    if global.raw {
        outln!("{value}");
        return Ok(());
    }
    match args.command {
        HaCommand::Status => {
            let status: HaStatus = serde_json::from_value(value).map_err(backend::unexpected)?;
            print_status(&status);
        }
        HaCommand::Switchover { .. } => print_switchover(&value),
        HaCommand::Pause => outln!("paused: this node no longer stands for election"),
        HaCommand::Resume => outln!("resumed: this node stands for election"),
    }
    Ok(())
}

/// The answer to a switchover; on the primary it says how long the role stays away.
fn print_switchover(value: &serde_json::Value) {
    match value["preemption_hold_ms"].as_u64() {
        Some(ms) => outln!(
            "switchover accepted: this node is the primary and will not take the role back for {} (or until it restarts); use `autogate ha pause` to hold it away longer",
            autogate_ha::machine::fmt_ms(ms)
        ),
        None => outln!("switchover accepted"),
    }
}

fn print_status(st: &HaStatus) {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    outln!("Node:        {}", st.node_id);
    outln!("Role:        {}", st.role);
    outln!("Term:        {}", or_dash(st.term.map(|t| t.to_string())));
    outln!("Active node: {}", or_dash(st.active_node_id.clone()));
    outln!("Primary:     {}", st.is_primary);
    if let Some(ms) = st.preempt_in_ms {
        let who = if st.is_primary {
            "this node takes the role back"
        } else {
            "hands the role to the primary"
        };
        outln!("Preemption:  {who} in {}.{} s", ms / 1000, ms % 1000 / 100);
    }
    if let Some(ms) = st.preempt_hold_ms {
        outln!(
            "Preemption:  held after a switchover, {} min left (`ha pause` holds longer)",
            ms.div_ceil(60_000)
        );
    }
    outln!(
        "Lease TTL:   {} ms (remaining {} ms)",
        st.lease_ttl_ms,
        or_dash(st.lease_ttl_remaining_ms.map(|t| t.to_string()))
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
    // A candidate whose record is not published yet has no flags to show.
    let yn = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    };
    for (i, c) in st.candidates.iter().enumerate() {
        outln!(
            "{:<4} {:<52} {:<8} {:<8} {:<10}",
            i + 1,
            c.node_id,
            yn(c.is_primary),
            yn(c.manager_reachable),
            c.address.as_deref().unwrap_or("-"),
        );
    }
}
