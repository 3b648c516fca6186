//! `autogate login USER [--password-stdin]`: exchanges a user's password for an API key at the
//! core node and keeps the key in `<working_dir>/api-keys/<host>_<port>.key` (mode 0600,
//! replaced atomically), where every later command talking to that node finds it; a login to
//! another node keeps its own file. Local mode needs no login, and says how to name a
//! node to log in to (client mode or `--profile`).
//!
//! `--change-password` changes the user's password with the login (the current one, then the
//! new one twice, as `create user` asks): the node revokes every key the user had and hands
//! out the new one. A user whose password is temporary (`create user --temp-password`) is told
//! so at login and asked for a new password the same way; no key exists until it is changed.
//! With `--password-stdin`, the first line is the password and the second the new one.
//!
//! `autogate logout` revokes the key in use at the node (`POST /api/v1/logout`) and removes the
//! file that kept it; a key the node no longer knows (expired, revoked) is removed all the
//! same.

use autogate_automation::api_types::IssuedKey;
use clap::Args;
use reqwest::Method;
use serde_json::json;

use super::backend;
use super::db::write_private;
use super::resource::print_json;
use super::term::{self, outln};
use crate::api::{legacy_key_path, ApiClient, NOPERM};
use crate::cli::Global;
use crate::exit::{Failure, FAILURE, USAGE};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name.
    pub user: String,
    /// Read the password as one line of standard input instead of prompting (with a new
    /// password to set: on the second line).
    #[arg(long)]
    pub password_stdin: bool,
    /// Change the password with this login; every other API key of the user is revoked.
    #[arg(long)]
    pub change_password: bool,
}

/// The new password: prompted twice and compared, or the next line of standard input.
fn read_new_password(from_stdin: bool) -> Result<String, Failure> {
    if from_stdin || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return term::read_secret("", true).map_err(|f| {
            Failure::new(
                f.code,
                format!(
                    "the new password: {} (expected on the second line)",
                    f.message
                ),
            )
        });
    }
    let first = term::read_secret("Enter new password: ", false)?;
    let again = term::read_secret("Re-enter new password for verification: ", false)?;
    if first != again {
        return Err(Failure::new(USAGE, "the passwords do not match"));
    }
    eprintln!("Password verified successfully!");
    Ok(first)
}

/// The node's answer to a login with a temporary password (the only 403 of the login route).
fn change_required(f: &Failure) -> bool {
    f.code == NOPERM && f.message.contains("(HTTP 403)")
}

pub fn run(global: &Global, args: LoginArgs) -> Result<(), Failure> {
    let config = backend::load_for_node_or(global, || {
        Failure::new(
            USAGE,
            "local mode needs no login: the resource, run and db commands work on this \
             machine's store directly. To log in to a core node, name it: set \
             GATEWAY_APPLICATION_MODE=client (and GATEWAY_CLIENT_HOST/GATEWAY_CLIENT_PORT, \
             default 127.0.0.1:50051), or pass --profile NAME for a [client:NAME] section; \
             then run `autogate login USER` again",
        )
    })?;
    let client = ApiClient::for_login(&config, global)?;
    let password = term::read_secret("Enter password for user: ", args.password_stdin)?;
    let mut new_password = if args.change_password {
        Some(read_new_password(args.password_stdin)?)
    } else {
        None
    };
    let rt = super::runtime()?;
    let login = |new: Option<&String>| {
        let mut body = json!({ "username": args.user, "password": password });
        if let Some(new) = new {
            body["new_password"] = json!(new);
        }
        rt.block_on(client.call(Method::POST, "/api/v1/login", Some(&body)))
    };
    let answer = match login(new_password.as_ref()) {
        Err(f) if new_password.is_none() && change_required(&f) => {
            eprintln!(
                "The password of user {} is temporary and must be changed: choose a new one (at least {} characters).",
                args.user,
                autogate_server::auth::MIN_PASSWORD_LEN
            );
            new_password = Some(read_new_password(args.password_stdin)?);
            login(new_password.as_ref())?
        }
        other => other?,
    };
    let issued: IssuedKey = serde_json::from_value(answer).map_err(backend::unexpected)?;
    let key = issued.api_key;
    if key.is_empty() {
        return Err(Failure::new(
            FAILURE,
            "the core node answered the login without an api_key",
        ));
    }
    let path = client.key_file().to_path_buf();
    if let Some(dir) = path.parent() {
        // The directory of keys is the operator's alone, like the keys in it.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Failure::new(FAILURE, format!("cannot create {}: {e}", dir.display())))?;
    }
    write_private(&path, format!("{key}\n").as_bytes()).map_err(|e| {
        Failure::new(
            FAILURE,
            format!(
                "logged in, but the API key could not be saved to {}: {e}",
                path.display()
            ),
        )
    })?;
    if global.raw {
        let mut v = json!({ "api_key": key });
        if new_password.is_some() {
            v["password_changed"] = json!(true);
        }
        print_json(&v);
    } else {
        if new_password.is_some() {
            outln!(
                "Password changed; every other API key of user {} was revoked.",
                args.user
            );
        }
        outln!("Successfully logged in!");
    }
    Ok(())
}

fn local_mode_logout() -> Failure {
    Failure::new(
        USAGE,
        "local mode has no login to end: the commands work on this machine's store as the \
         local OS user. To log out of a core node, name it: GATEWAY_APPLICATION_MODE=client \
         or --profile NAME",
    )
}

/// `autogate logout`.
pub fn logout(global: &Global) -> Result<(), Failure> {
    let config = backend::load_for_node_or(global, local_mode_logout)?;
    let client = ApiClient::from_config(&config, global)?;
    let in_config = config
        .client_profile(global.profile.as_deref())
        .is_some_and(|c| c.api_key.is_some());
    // The file the key sent came from (as `ApiClient` looks: the node's own, else the single
    // file of earlier versions).
    let file = [client.key_file().to_path_buf(), legacy_key_path(&config)]
        .into_iter()
        .find(|p| p.exists());
    if !in_config && file.is_none() {
        return Err(Failure::new(
            USAGE,
            format!(
                "not logged in to {}: no API key is kept in {}",
                client.base(),
                client.key_file().display()
            ),
        ));
    }
    let rt = super::runtime()?;
    let revoked = match rt.block_on(client.call(Method::POST, "/api/v1/logout", None)) {
        Ok(_) => true,
        // Expired or revoked already: nothing left to revoke, the file goes all the same.
        Err(f) if f.code == NOPERM => false,
        Err(f) => return Err(f),
    };
    if in_config {
        outln!(
            "The API key was revoked{}; it is set in the configuration ([client] api_key): \
             remove it there",
            if revoked { "" } else { " already" }
        );
        return Ok(());
    }
    if let Some(file) = &file {
        std::fs::remove_file(file).map_err(|e| {
            Failure::new(
                FAILURE,
                format!(
                    "the API key was revoked, but {} could not be removed: {e}",
                    file.display()
                ),
            )
        })?;
    }
    if global.raw {
        print_json(&json!({ "revoked": revoked }));
    } else if revoked {
        outln!("Successfully logged out!");
    } else {
        outln!("The API key was no longer valid; removed it. Logged out.");
    }
    Ok(())
}
