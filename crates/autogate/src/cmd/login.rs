//! `autogate login USER [--password-stdin]`: exchanges a user's password for an API key at the
//! core node and keeps the key in `<working_dir>/api-keys/<host>_<port>.key` (mode 0600,
//! replaced atomically), where every later command talking to that node finds it; a login to
//! another node keeps its own file. Local mode needs no login, and says how to name a
//! node to log in to (client mode or `--profile`).

use autogate_automation::api_types::IssuedKey;
use clap::Args;
use reqwest::Method;
use serde_json::json;

use super::backend;
use super::db::write_private;
use super::resource::print_json;
use super::term::{self, outln};
use crate::api::ApiClient;
use crate::cli::Global;
use crate::exit::{Failure, FAILURE, USAGE};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name.
    pub user: String,
    /// Read the password as one line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
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
    let rt = super::runtime()?;
    let body = json!({ "username": args.user, "password": password });
    let answer = rt.block_on(client.call(Method::POST, "/api/v1/login", Some(&body)))?;
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
        print_json(&json!({ "api_key": key }));
    } else {
        outln!("Successfully logged in!");
    }
    Ok(())
}
