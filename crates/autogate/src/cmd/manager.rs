//! `autogate manager`: run the manager, or administer one over its REST API
//! (`autogate manager cluster add|list|show|set-state|rm|sessions`).

use clap::Args;

use crate::cli::Global;
use crate::exit::Failure;

#[derive(Debug, Args)]
pub struct ManagerArgs {}

pub fn run(_global: &Global, _args: ManagerArgs) -> Result<(), Failure> {
    Err(Failure::new(
        1,
        "the manager is not available in this build yet",
    ))
}
