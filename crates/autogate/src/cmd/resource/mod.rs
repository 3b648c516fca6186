//! `autogate create|get|describe|delete <noun>`: the automation resources (repositories,
//! services, decorators, secrets, executable-objects, registries) and, against a core node,
//! users — with the family's flags, tables and `Label:  value` layouts. Every command works the
//! same in local mode (in-process) and client mode (through the API): see [`Backend`].
//!
//! The grammar is in `args`, the request bodies the flags make in `request`, and what is
//! printed in `render`; this module runs the commands.

mod args;
mod render;
mod request;

use autogate_automation::api_types::{UserList, UserView};
use autogate_resources::model::Kind;
use reqwest::Method;
use serde_json::json;

use super::backend::{self, Backend};
use super::term::{self, out, outln};
use crate::cli::Global;
use crate::exit::{Failure, USAGE};

pub use args::{CreateArgs, GetArgs, NamedArgs};
pub use render::print_json;
pub use request::{json_arg, secret_ref_flag};

use args::{CreateNoun, CreateUser, Plural, Target};

/// Opens the backend of the configured mode and runs `f` on it.
fn with_backend<T>(
    global: &Global,
    f: impl AsyncFnOnce(&Backend, &autogate_config::Config) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let config = backend::load(global)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let backend = Backend::open(&config, global).await?;
        f(&backend, &config).await
    })
}

pub fn create(global: &Global, args: CreateArgs) -> Result<(), Failure> {
    // Values typed at a prompt are read before anything else happens, so that a mistake in the
    // configuration does not surface after the operator typed a password.
    let (kind, body) = match args.noun {
        CreateNoun::User(u) => return create_user(global, u),
        CreateNoun::Repository(r) => (Kind::Repository, request::repository_body(r)),
        CreateNoun::Service(s) => (Kind::Service, request::service_body(s.kind)?),
        CreateNoun::Decorator(d) => (Kind::Decorator, request::decorator_body(d)?),
        CreateNoun::Secret(s) => (Kind::Secret, request::secret_body(s)?),
        CreateNoun::ExecutableObject(e) => (Kind::ExecutableObject, request::exec_object_body(e)),
        CreateNoun::Registry(r) => (Kind::Registry, request::registry_body(r)),
    };
    let created = with_backend(global, async |b, _| b.create(kind, body).await)?;
    if global.raw {
        print_json(&created);
    } else {
        outln!("Successfully created {kind}");
        outln!("Name:   {}", term::text(&created["name"]));
    }
    Ok(())
}

pub fn get(global: &Global, args: GetArgs) -> Result<(), Failure> {
    if !args.types.is_empty() && !matches!(args.noun, Plural::Services) {
        return Err(Failure::new(
            USAGE,
            "--type filters services only: autogate get services --type TYPE",
        ));
    }
    if matches!(args.noun, Plural::Runners) {
        return super::cluster::get_runners(global);
    }
    let Target::Kind(kind) = Target::from(args.noun) else {
        return get_users(global);
    };
    let mut items = with_backend(global, async |b, _| b.list(kind).await)?;
    if !args.types.is_empty() {
        // Filtered here rather than by the node, so it works the same against a node of an
        // earlier version and in local mode.
        items.retain(|item| {
            args.types
                .iter()
                .any(|t| item["type"].as_str() == Some(t.as_str()))
        });
    }
    if global.raw {
        print_json(&json!({ kind.plural(): items }));
        return Ok(());
    }
    out!("{}", render::list_table(kind, &items));
    Ok(())
}

fn get_users(global: &Global) -> Result<(), Failure> {
    let list = backend::with_node(global, "get users", async |c, _| {
        let v = c.call(Method::GET, "/api/v1/users", None).await?;
        serde_json::from_value::<UserList>(v).map_err(backend::unexpected)
    })?;
    if global.raw {
        print_json(&json!(list));
        return Ok(());
    }
    out!("{}", render::user_table(&list.users));
    Ok(())
}

pub fn describe(global: &Global, args: NamedArgs) -> Result<(), Failure> {
    let name = args.name;
    let Target::Kind(kind) = Target::from(args.noun) else {
        return describe_user(global, &name);
    };
    let (item, tz) = with_backend(global, async |b, config| {
        Ok((b.get(kind, &name).await?, term::time_zone(config)?))
    })?;
    if global.raw {
        let out = match kind {
            Kind::Service => render::with_metadata(item),
            _ => item,
        };
        print_json(&out);
        return Ok(());
    }
    out!("{}", render::describe_text(kind, &item, &tz));
    Ok(())
}

fn describe_user(global: &Global, name: &str) -> Result<(), Failure> {
    let (user, tz) = backend::with_node(global, "describe user", async |c, config| {
        let path = format!("/api/v1/users/{}", backend::segment(name));
        let v = c.call(Method::GET, &path, None).await?;
        let user = serde_json::from_value::<UserView>(v).map_err(backend::unexpected)?;
        Ok((user, term::time_zone(config)?))
    })?;
    if global.raw {
        print_json(&json!(user));
        return Ok(());
    }
    out!("{}", render::user_text(&user, &tz));
    Ok(())
}

pub fn delete(global: &Global, args: NamedArgs) -> Result<(), Failure> {
    let target = Target::from(args.noun);
    let name = args.name;
    match target {
        Target::Kind(k) => with_backend(global, async |b, _| b.delete(k, &name).await)?,
        Target::User => backend::with_node(global, "delete user", async |c, _| {
            let path = format!("/api/v1/users/{}", backend::segment(&name));
            c.call(Method::DELETE, &path, None).await.map(|_| ())
        })?,
    }
    let kind = match target {
        Target::Kind(k) => k.as_str(),
        Target::User => "user",
    };
    if global.raw {
        print_json(&json!({ "kind": kind, "name": name, "deleted": true }));
    } else {
        outln!("Successfully deleted {kind} {name}");
    }
    Ok(())
}

/// `create user`: the family's prompts (twice, compared) unless `--password-stdin`.
fn create_user(global: &Global, u: CreateUser) -> Result<(), Failure> {
    // Refused in local mode before the prompts: there is no node to create the user on.
    let config = backend::load_for_node(global, "create user")?;
    let password = if u.password_stdin {
        term::read_secret("", true)?
    } else {
        let first = term::read_secret("Enter your password: ", false)?;
        let again = term::read_secret("Re-enter your password for verification: ", false)?;
        if first != again {
            return Err(Failure::new(USAGE, "the passwords do not match"));
        }
        eprintln!("Password verified successfully!");
        first
    };
    let client = crate::api::ApiClient::from_config(&config, global)?;
    let rt = super::runtime()?;
    let body = request::user_body(&u.name, &password, u.role, u.temp_password);
    let v = rt.block_on(client.call(Method::POST, "/api/v1/users", Some(&body)))?;
    let created: UserView = serde_json::from_value(v).map_err(backend::unexpected)?;
    if global.raw {
        print_json(&json!(created));
    } else {
        outln!("Successfully created user");
        outln!("Name:   {}", u.name);
        outln!("Role:   {}", created.role);
        if created.password_change_required {
            outln!(
                "The password is temporary: {} must change it at the first login.",
                u.name
            );
        }
    }
    Ok(())
}
