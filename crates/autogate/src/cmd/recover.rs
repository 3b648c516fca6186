//! `autogate server --recover-admin-user [--password-stdin]`: gives the `admin` user a new
//! password when nobody can log in any more, working on the cluster's store directly instead
//! of through a node's API (there is no key left to call it with).
//!
//! The core node of this configuration must be stopped: the command takes the node's working
//! directory lock (`<working_dir>/server.lock`) for as long as it works, so a running node is
//! found at once and a node started meanwhile waits for nothing half-done. With the local
//! store that lock is also what keeps the store file to one process. With etcd, any core
//! node's configuration works (the other core nodes may keep running: the change is one
//! compare-and-swap on the user record, and every node reads users from the store).
//!
//! `admin` gets the new password and the admin role again, and its API keys are revoked; when
//! it was deleted it is created again. The password is typed twice without echo, or read as
//! one line of standard input with `--password-stdin`; it never reaches the argument list, the
//! log or the output.

use std::io::IsTerminal;

use autogate_config::{BackendKind, Role};
use serde_json::json;

use super::resource::print_json;
use super::term::{self, outln};
use crate::cli::Global;
use crate::exit::{Failure, FAILURE, USAGE};

/// Exit code when the node's working directory is held by a running core node.
const UNAVAILABLE: u8 = 69;

/// The new password: one line of standard input, or typed twice at the terminal.
fn read_password(from_stdin: bool) -> Result<String, Failure> {
    if from_stdin {
        return term::read_secret("", true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            USAGE,
            "--recover-admin-user prompts for the new password on a terminal; without one, \
             pass --password-stdin and give the password as one line of standard input",
        ));
    }
    let first = term::read_secret("Enter new password for user admin: ", false)?;
    let again = term::read_secret("Re-enter the password for verification: ", false)?;
    if first != again {
        return Err(Failure::new(USAGE, "the passwords do not match"));
    }
    eprintln!("Password verified successfully!");
    Ok(first)
}

pub fn run(global: &Global, password_stdin: bool) -> Result<(), Failure> {
    let config = super::load_config(global, Some(Role::Server))?;
    if config.store.backend == BackendKind::Memory {
        return Err(Failure::new(
            USAGE,
            "store.backend = memory: the users of a memory store live and die with the node's \
             process; there is nothing to recover (restart the node: it creates admin again)",
        ));
    }
    let min = autogate_server::auth::MIN_PASSWORD_LEN;
    let password = read_password(password_stdin)?;
    if password.chars().count() < min {
        return Err(Failure::new(
            USAGE,
            format!("password too short: at least {min} characters"),
        ));
    }
    let dir = config.application.working_dir.clone();
    let rt = super::runtime()?;
    let recovered = rt.block_on(async {
        let (lock, _) = autogate_ha::WorkdirLock::acquire_with(
            &dir,
            "server",
            config.server.service_user.is_some(),
        )
        .await
        .map_err(|e| match e {
            autogate_ha::WorkdirError::InUse { .. } => Failure::new(
                UNAVAILABLE,
                format!(
                    "a core node is running with this configuration: {e}. Stop it first \
                     (--recover-admin-user works on the store directly); with etcd, the \
                     configuration of any stopped core node of the cluster works too"
                ),
            ),
            other => Failure::new(USAGE, other.to_string()),
        })?;
        let store = autogate_server::open_store(&config)
            .await
            .map_err(|e| Failure::new(UNAVAILABLE, format!("cannot open the store: {e}")))?;
        let auth = autogate_server::auth::Auth::new(
            store,
            &config.application.cluster_id,
            config.server.api_key_expiration,
        );
        let recovered = auth.recover_admin(&password).await.map_err(|e| {
            use autogate_server::auth::AuthError;
            let code = match &e {
                AuthError::Invalid(_) => USAGE,
                AuthError::Store(_) => UNAVAILABLE,
                _ => FAILURE,
            };
            Failure::new(code, format!("the admin user was not recovered: {e}"))
        })?;
        drop(lock);
        Ok::<_, Failure>(recovered)
    })?;
    // The temporary password of the first start no longer opens anything: its file goes.
    let temporary = dir.join(autogate_server::TEMPORARY_PASSWORD_FILE);
    let removed = std::fs::remove_file(&temporary).is_ok();
    if global.raw {
        print_json(&json!({
            "user": autogate_server::auth::ADMIN,
            "created": recovered.created,
            "role_restored": recovered.role_restored,
            "revoked_keys": recovered.revoked_keys,
        }));
        return Ok(());
    }
    if recovered.created {
        outln!("User admin did not exist: created it again with the role admin.");
    } else if recovered.role_restored {
        outln!("User admin has the role admin again.");
    }
    outln!(
        "Successfully reset the password of user admin ({} API key{} revoked).",
        recovered.revoked_keys,
        if recovered.revoked_keys == 1 { "" } else { "s" }
    );
    if removed {
        outln!(
            "Removed {}: it held the first start's password.",
            temporary.display()
        );
    }
    Ok(())
}
