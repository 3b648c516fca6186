//! Command-line grammar in the product family's verb–noun style (`autogate <verb> <noun> …`),
//! global flags accepted anywhere on the line, and the mapping of every outcome to an exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::cmd;
use crate::exit::{Failure, USAGE};
use crate::output;

#[derive(Debug, Parser)]
#[command(
    name = "autogate",
    version,
    about = "Highly-available automation gateway: core nodes, runners, manager and CLI in one binary",
    propagate_version = true,
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Configuration file (else $GATEWAY_CONFIG, ~/.gateway.d/gateway.conf, /etc/gateway/gateway.conf).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Raw JSON output.
    #[arg(long, global = true)]
    pub raw: bool,
    /// Client profile (`[client:<name>]`), case-insensitive.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Verbose console logs (which configuration file and store were used).
    #[arg(long, global = true)]
    pub verbose: bool,
}

// Parsed once per process: the size of the largest variant (`create`, with every service
// flag) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version; with --show-config the effective configuration and where each value came from.
    Version {
        /// Print the effective configuration.
        #[arg(long)]
        show_config: bool,
    },
    /// Run a core node.
    Server,
    /// Run a runner: an execution-only node taking jobs through the cluster's etcd.
    Runner,
    /// Run the manager, or administer it (`autogate manager cluster …`).
    Manager(cmd::manager::ManagerArgs),
    /// High availability: status, switchover, maintenance.
    Ha(cmd::ha::HaArgs),
    /// Make certificates: a CA, the manager's server certificate, a key pair per core node.
    CertGen(cmd::certgen::CertGenArgs),
    /// Log in to a core node (client mode) and keep the API key for later commands.
    Login(cmd::login::LoginArgs),
    /// Create a resource: repository, service, decorator, secret, executable-object, registry, user.
    Create(cmd::resource::CreateArgs),
    /// List resources of one kind.
    Get(cmd::resource::GetArgs),
    /// Show one resource (secrets: metadata only).
    Describe(cmd::resource::NamedArgs),
    /// Delete one resource (refused while others use it).
    Delete(cmd::resource::NamedArgs),
    /// Run a service.
    #[command(after_help = cmd::run::EXIT_STATUS_HELP)]
    Run(cmd::run::RunArgs),
    /// Export or import every resource as a YAML file.
    Db(cmd::db::DbArgs),
    /// Inspect the cluster: `inspect cluster health` (exit 1 when unhealthy) or `activity`.
    Inspect(cmd::cluster::InspectArgs),
    /// Print a shell completion script (bash, zsh or fish) to standard output.
    Completion {
        /// Shell to complete for.
        #[arg(value_enum)]
        shell: cmd::completion::Shell,
    },
}

/// Parse, run, and map the outcome to an exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // Help goes to standard output: `autogate help server | head` must end quietly.
            if let Err(io) = e.print() {
                if output::is_closed_pipe(&io) {
                    return ExitCode::from(output::CLOSED_PIPE);
                }
            }
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::from(USAGE),
                _ => ExitCode::from(USAGE),
            };
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            output::stderr(&format!("error: {}\n", f.message));
            ExitCode::from(f.code)
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Version { show_config } => cmd::version::run(&cli.global, show_config),
        Command::Server => cmd::server::run(&cli.global),
        Command::Runner => cmd::runner::run(&cli.global),
        Command::Manager(args) => cmd::manager::run(&cli.global, args),
        Command::CertGen(args) => cmd::certgen::run(&cli.global, args),
        Command::Ha(args) => cmd::ha::run(&cli.global, args),
        Command::Completion { shell } => cmd::completion::run(shell),
        Command::Login(args) => cmd::login::run(&cli.global, args),
        Command::Create(args) => cmd::resource::create(&cli.global, args),
        Command::Get(args) => cmd::resource::get(&cli.global, args),
        Command::Describe(args) => cmd::resource::describe(&cli.global, args),
        Command::Delete(args) => cmd::resource::delete(&cli.global, args),
        Command::Run(args) => cmd::run::run(&cli.global, args),
        Command::Db(args) => cmd::db::run(&cli.global, args),
        Command::Inspect(args) => cmd::cluster::inspect(&cli.global, args),
    }
}
