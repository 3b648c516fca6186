//! The `autogate` binary: one executable for every role (core node, runner, manager) and the
//! operator CLI. `main` only hands the arguments to [`cli::run`] and turns its result into the
//! process exit code.
#![forbid(unsafe_code)]

mod api;
mod cli;
mod cmd;
mod exit;
mod output;

fn main() -> std::process::ExitCode {
    cli::run(std::env::args_os())
}
