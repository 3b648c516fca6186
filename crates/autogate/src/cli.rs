//! Command-line grammar in the product family's verb–noun style (`autogate <verb> <noun> …`),
//! global flags accepted anywhere on the line, and the mapping of every outcome to an exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use autogate_config::Role;
use clap::{Arg, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

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

/// Flags every command accepts. `--raw` and `--profile` only matter to the operator CLI, so the
/// daemon roles' help does not list them (see [`command`]).
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
    /// Run a core node: resources, the operator API and, when active, the link to the manager.
    #[command(long_about = SERVER_ABOUT, after_help = role_help(Role::Server))]
    Server(ServerArgs),
    /// Run a runner: an execution-only node taking jobs through the cluster's etcd.
    #[command(long_about = RUNNER_ABOUT, after_help = role_help(Role::Runner))]
    Runner,
    /// Run the manager, or administer it (`autogate manager cluster …`).
    #[command(long_about = MANAGER_ABOUT, after_help = role_help(Role::Manager))]
    Manager(cmd::manager::ManagerArgs),
    /// High availability: status, switchover, maintenance.
    Ha(cmd::ha::HaArgs),
    /// The SSH host keys checkouts trust: add, scan, list, delete.
    Hostkeys(cmd::hostkeys::HostkeysArgs),
    /// Make certificates: a CA, the manager's server certificate, a key pair per core node or runner.
    CertGen(cmd::certgen::CertGenArgs),
    /// Log in to a core node (client mode) and keep the API key for later commands.
    Login(cmd::login::LoginArgs),
    /// Log out of a core node: revoke the API key in use and remove its file.
    Logout,
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
    /// Inspect the cluster: health and activity (exit 1 when unhealthy), or one of them.
    Inspect(cmd::cluster::InspectArgs),
    /// Print a shell completion script (bash, zsh or fish) to standard output.
    Completion {
        /// Shell to complete for.
        #[arg(value_enum)]
        shell: cmd::completion::Shell,
    },
}

/// The options of `autogate server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Instead of starting the node: give the admin user a new password (typed twice without
    /// echo), make it an admin again and revoke its API keys, on the store directly. The node
    /// of this configuration must be stopped; with etcd, any core node's configuration works.
    #[arg(long)]
    pub recover_admin_user: bool,
    /// With --recover-admin-user: read the new password as one line of standard input.
    #[arg(long, requires = "recover_admin_user")]
    pub password_stdin: bool,
}

const SERVER_ABOUT: &str = "\
Run a core node until SIGTERM or Ctrl-C. A core node keeps the automation resources, serves the \
operator API (HTTP/JSON) and, when it is its cluster's active node, holds the cluster's one \
connection to the manager. Core nodes that share an etcd store and a cluster id form a cluster; \
with high availability one of them is active at a time.";

const RUNNER_ABOUT: &str = "\
Run a runner until SIGTERM or Ctrl-C. A runner is an execution-only node: it registers in its \
cluster's etcd store and runs the jobs the active core node hands it when the core nodes run \
with distributed execution. It needs the store only: no port, no certificate.";

const MANAGER_ABOUT: &str = "\
Run the manager until SIGTERM or Ctrl-C: the controller side that gateway clusters connect to \
over mutual-TLS WebSocket, with its REST API and web page on the same port. Its first start \
creates its data directory and the admin token. With a command (cluster, service, status), \
administer a running manager instead.";

/// The help after a daemon role's options: its key settings from the configuration schema, and
/// where to see or read the rest.
fn role_help(role: Role) -> String {
    format!(
        "{}
Each setting comes from its environment variable, else from the one config file (--config, \
$GATEWAY_CONFIG, ~/.gateway.d/gateway.conf, /etc/gateway/gateway.conf), else its default.
Every setting's effective value and where it came from: autogate version --show-config
Every setting and what it means: the configuration reference.

Exit status of the running role: 0 after a clean stop (SIGTERM, Ctrl-C); 64 when the
configuration is not valid (nothing was started); 69 when a port or the store is unavailable;
130 when a second signal forces the exit.",
        autogate_config::role_settings(role)
    )
}

/// The global options only the operator CLI uses.
const CLIENT_ONLY: &[&str] = &["raw", "profile"];

/// The command line. The daemon roles get hidden copies of the client-only global options:
/// clap does not propagate a global option to a command that has its own, so their help does
/// not list options that do nothing there, while a command line that passes them still parses.
/// The manager's admin commands print JSON with `--raw`, so they show it again.
pub fn command() -> clap::Command {
    let cmd = Cli::command();
    let client_only: Vec<Arg> = cmd
        .get_arguments()
        .filter(|a| CLIENT_ONLY.contains(&a.get_id().as_str()))
        .cloned()
        .collect();
    let raw = client_only.iter().find(|a| a.get_id() == "raw").cloned();
    let hidden = |c: clap::Command, global: bool| {
        client_only
            .iter()
            .fold(c, |c, a| c.arg(a.clone().hide(true).global(global)))
    };
    cmd.mut_subcommand("server", |c| hidden(c, false))
        .mut_subcommand("runner", |c| hidden(c, false))
        .mut_subcommand("manager", |m| {
            let m = hidden(m, true);
            match raw {
                Some(raw) => m
                    .mut_subcommand("cluster", |c| c.arg(raw.clone()))
                    .mut_subcommand("service", |c| c.arg(raw.clone()))
                    .mut_subcommand("status", |c| c.arg(raw)),
                None => m,
            }
        })
}

/// Parse, run, and map the outcome to an exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let parsed = command()
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
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
        Command::Server(args) if args.recover_admin_user => {
            cmd::recover::run(&cli.global, args.password_stdin)
        }
        Command::Server(_) => cmd::server::run(&cli.global),
        Command::Runner => cmd::runner::run(&cli.global),
        Command::Manager(args) => cmd::manager::run(&cli.global, args),
        Command::CertGen(args) => cmd::certgen::run(&cli.global, args),
        Command::Ha(args) => cmd::ha::run(&cli.global, args),
        Command::Hostkeys(args) => cmd::hostkeys::run(&cli.global, args),
        Command::Completion { shell } => cmd::completion::run(shell),
        Command::Login(args) => cmd::login::run(&cli.global, args),
        Command::Logout => cmd::login::logout(&cli.global),
        Command::Create(args) => cmd::resource::create(&cli.global, args),
        Command::Get(args) => cmd::resource::get(&cli.global, args),
        Command::Describe(args) => cmd::resource::describe(&cli.global, args),
        Command::Delete(args) => cmd::resource::delete(&cli.global, args),
        Command::Run(args) => cmd::run::run(&cli.global, args),
        Command::Db(args) => cmd::db::run(&cli.global, args),
        Command::Inspect(args) => cmd::cluster::inspect(&cli.global, args),
    }
}
