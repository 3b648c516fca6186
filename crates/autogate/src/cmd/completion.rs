//! `autogate completion <shell>`: print a shell completion script for the whole command line.

use clap::ValueEnum;
use clap_complete::Shell as Target;

use crate::exit::Failure;

/// Shells a completion script can be printed for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Write the script for `shell` to standard output.
pub fn run(shell: Shell) -> Result<(), Failure> {
    let target = match shell {
        Shell::Bash => Target::Bash,
        Shell::Zsh => Target::Zsh,
        Shell::Fish => Target::Fish,
    };
    let mut cmd = crate::cli::command();
    let mut script = Vec::new();
    clap_complete::generate(target, &mut cmd, "autogate", &mut script);
    crate::output::stdout_bytes(&script);
    Ok(())
}
