//! `autogate cert-gen ca|server|client|node|runner --output DIR [--name CN] [--san …]
//! [--days N] [--organization O …] [--key-type T]`: make the CA first, then certificates signed
//! by it (the manager's server certificate, one key pair per core node or runner). Keys are
//! written with mode 0600 and nothing is ever overwritten.

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
    /// A runner's key pair (as a node's: server and client authentication), named `runner`
    /// unless --name says otherwise; for an etcd that asks its clients for certificates.
    Runner,
}

/// The key algorithm of `--key-type`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyTypeArg {
    /// ECDSA on P-256 (the default: every TLS stack, cheap handshakes).
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// Ed25519 (TLS 1.3 peers only).
    Ed25519,
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
    #[arg(long, visible_alias = "common-name", value_name = "CN")]
    pub name: Option<String>,
    /// Subject alternative name: a DNS name or an IP address (repeatable).
    #[arg(long = "san", value_name = "NAME|IP")]
    pub sans: Vec<String>,
    /// Validity in days (the certificate expires this many days from now).
    #[arg(long, visible_alias = "expiry-days", default_value_t = 365)]
    pub days: u32,
    /// Subject organization (O).
    #[arg(long, value_name = "O")]
    pub organization: Option<String>,
    /// Subject organizational unit (OU).
    #[arg(long, value_name = "OU")]
    pub organizational_unit: Option<String>,
    /// Subject country (C): two letters.
    #[arg(long, value_name = "CC")]
    pub country: Option<String>,
    /// Subject state or province (ST).
    #[arg(long, value_name = "ST")]
    pub state: Option<String>,
    /// Subject locality (L).
    #[arg(long, value_name = "L")]
    pub locality: Option<String>,
    /// Algorithm of the new private key.
    #[arg(long, value_enum, default_value = "ecdsa-p256")]
    pub key_type: KeyTypeArg,
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
        Kind::Runner => "runner",
    };
    let options = autogate_tls::CertGenOptions {
        subject: autogate_tls::Subject {
            organization: args.organization,
            organizational_unit: args.organizational_unit,
            country: args.country,
            state: args.state,
            locality: args.locality,
        },
        key_type: match args.key_type {
            KeyTypeArg::EcdsaP256 => autogate_tls::KeyType::EcdsaP256,
            KeyTypeArg::EcdsaP384 => autogate_tls::KeyType::EcdsaP384,
            KeyTypeArg::Ed25519 => autogate_tls::KeyType::Ed25519,
        },
    };
    let written = autogate_tls::cert_gen_with(
        kind,
        &args.output,
        args.name.as_deref(),
        &args.sans,
        args.days,
        args.ca_dir.as_deref(),
        &options,
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
