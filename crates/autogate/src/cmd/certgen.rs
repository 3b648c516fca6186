//! `autogate cert-gen ca|server|client|node --output DIR [--name CN] [--san …] [--days N]`:
//! make the CA first, then certificates signed by it (the manager's server certificate, one key
//! pair per core node). Keys are written with mode 0600 and nothing is ever overwritten.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::term::outln;
use crate::cli::Global;
use crate::exit::Failure;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// A certificate authority (`ca.pem`, `ca-key.pem`).
    Ca,
    /// A TLS server certificate (e.g. the manager's).
    Server,
    /// A TLS client certificate.
    Client,
    /// A core node's key pair: server and client authentication.
    Node,
}

#[derive(Debug, Args)]
pub struct CertGenArgs {
    /// What to make.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Common name, also the file name (default: the kind).
    #[arg(long, value_name = "CN")]
    pub name: Option<String>,
    /// Subject alternative name: a DNS name or an IP address (repeatable).
    #[arg(long = "san", value_name = "NAME|IP")]
    pub sans: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Directory holding `ca.pem` and `ca-key.pem` (default: --output).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
}

pub fn run(global: &Global, args: CertGenArgs) -> Result<(), Failure> {
    let kind = match args.kind {
        Kind::Ca => "ca",
        Kind::Server => "server",
        Kind::Client => "client",
        Kind::Node => "node",
    };
    let written = autogate_tls::cert_gen(
        kind,
        &args.output,
        args.name.as_deref(),
        &args.sans,
        args.days,
        args.ca_dir.as_deref(),
    )
    .map_err(|e| Failure::new(if e.is_usage() { 64 } else { 1 }, e))?;
    if global.raw {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        outln!("{}", json!({ "files": files }));
    } else {
        for p in written {
            outln!("wrote {}", p.display());
        }
    }
    Ok(())
}
