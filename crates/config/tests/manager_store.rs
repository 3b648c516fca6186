//! The manager's store settings (`manager.store_*`, `replica_lease_ttl`, `advertise_address`):
//! defaults, parsing, and the rules checked when the manager starts, each naming its key.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use autogate_config::{BackendKind, HostPort, Role};
use common::{entry, Sandbox};

/// A manager run as etcd replicas with everything the rules ask for; each test then breaks one.
fn etcd_replica() -> Sandbox {
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_MANAGER_STORE_BACKEND", "etcd")
        .env(
            "GATEWAY_MANAGER_STORE_ETCD_HOSTS",
            "10.0.0.1:2379 10.0.0.2:2379",
        )
        .env("GATEWAY_MANAGER_CERTIFICATE_FILE", "/pki/manager.pem")
        .env("GATEWAY_MANAGER_PRIVATE_KEY_FILE", "/pki/manager-key.pem");
    sb
}

fn manager_err(sb: &Sandbox, fragments: &[&str]) -> String {
    let e = sb.load().validate_for(Role::Manager).unwrap_err();
    let msg = e.to_string();
    for f in fragments {
        assert!(msg.contains(f), "error {msg:?} lacks {f:?}");
    }
    assert_eq!(e.exit_code(), 64, "{msg}");
    msg
}

#[test]
fn defaults_keep_the_local_file() {
    let c = Sandbox::new().load();
    let m = &c.manager;
    assert_eq!(m.store_backend, BackendKind::Local);
    assert!(m.store_etcd_hosts.is_empty());
    assert_eq!(m.store_etcd_prefix, "/autogate-manager");
    assert!(!m.store_etcd_use_tls && !m.store_etcd_client_cert_auth);
    assert_eq!(m.store_etcd_dial_timeout, Duration::from_secs(2));
    assert_eq!(m.store_etcd_request_timeout, Duration::from_secs(5));
    assert_eq!(m.replica_lease_ttl, Duration::from_secs(5));
    assert_eq!(m.advertise_address, None);
    c.validate_for(Role::Manager).unwrap();
    // The derived address is shown where it is known without the host name.
    let entries = c.entries();
    let e = entry(&entries, "manager", "advertise_address");
    assert_eq!(e.value, "127.0.0.1:8443");
    assert_eq!(e.env, "GATEWAY_MANAGER_ADVERTISE_ADDRESS");
}

#[test]
fn settings_from_file_and_environment() {
    let mut sb = Sandbox::new();
    let ca = sb.write("pki/etcd-ca.pem", "pem");
    sb.config(&format!(
        "[manager]\nstore_backend = ETCD\nstore_etcd_hosts = e1:2379 e2:2379\nstore_etcd_prefix = /ops/manager-a\n\
         store_etcd_use_tls = true\nstore_etcd_client_cert_auth = yes\nstore_etcd_ca_certificate_file = {}\n\
         store_etcd_certificate_file = /pki/etcd.pem\nstore_etcd_private_key_file = /pki/etcd-key.pem\n\
         certificate_file = /pki/m.pem\nprivate_key_file = /pki/m-key.pem\n",
        ca.display()
    ));
    sb.env("GATEWAY_MANAGER_STORE_ETCD_DIAL_TIMEOUT", "3s")
        .env("GATEWAY_MANAGER_STORE_ETCD_REQUEST_TIMEOUT", "7s")
        .env("GATEWAY_MANAGER_REPLICA_LEASE_TTL", "10s")
        .env("GATEWAY_MANAGER_ADVERTISE_ADDRESS", "m1.example.com:9443");
    let c = sb.load();
    let m = &c.manager;
    assert_eq!(m.store_backend, BackendKind::Etcd);
    let hosts: Vec<String> = m.store_etcd_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["e1:2379", "e2:2379"]);
    assert_eq!(m.store_etcd_prefix, "/ops/manager-a");
    assert!(m.store_etcd_use_tls && m.store_etcd_client_cert_auth);
    assert_eq!(m.store_etcd_ca_certificate_file, Some(ca));
    assert_eq!(
        m.store_etcd_certificate_file,
        Some(PathBuf::from("/pki/etcd.pem"))
    );
    assert_eq!(
        m.store_etcd_private_key_file,
        Some(PathBuf::from("/pki/etcd-key.pem"))
    );
    assert_eq!(m.store_etcd_dial_timeout, Duration::from_secs(3));
    assert_eq!(m.store_etcd_request_timeout, Duration::from_secs(7));
    assert_eq!(m.replica_lease_ttl, Duration::from_secs(10));
    let advertised = HostPort {
        host: "m1.example.com".into(),
        port: 9443,
    };
    assert_eq!(m.advertise_address, Some(advertised.clone()));
    assert_eq!(m.advertised_address("ignored"), advertised);
    c.validate_for(Role::Manager).unwrap();
}

#[test]
fn advertised_address_replaces_an_unspecified_listen_address_with_the_host_name() {
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_MANAGER_LISTEN_ADDRESS", "0.0.0.0")
        .env("GATEWAY_MANAGER_PORT", "9000");
    let c = sb.load();
    assert_eq!(
        c.manager.advertised_address("mgr-2").to_string(),
        "mgr-2:9000"
    );
    // Nothing is shown as derived: the host name is the starting process's.
    let entries = c.entries();
    assert_eq!(entry(&entries, "manager", "advertise_address").value, "");

    let mut sb = Sandbox::new();
    sb.env("GATEWAY_MANAGER_LISTEN_ADDRESS", "10.1.2.3");
    let c = sb.load();
    assert_eq!(
        c.manager.advertised_address("mgr-2").to_string(),
        "10.1.2.3:8443"
    );
}

#[test]
fn memory_is_refused_for_the_manager() {
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_MANAGER_STORE_BACKEND", "memory");
    sb.err_with(&[
        "manager.store_backend",
        "memory is not supported",
        "local, etcd",
    ]);
}

#[test]
fn prefix_shape_is_checked() {
    for bad in [
        "autogate-manager",
        "/autogate-manager/",
        "/",
        "/with space",
        "/tab\there",
        "/é",
        &format!("/{}", "a".repeat(128)),
    ] {
        let mut sb = Sandbox::new();
        sb.env("GATEWAY_MANAGER_STORE_ETCD_PREFIX", bad);
        sb.err_with(&["manager.store_etcd_prefix", "etcd key prefix"]);
    }
    for reserved in ["/autogate", "/autogate/x", "/autogate-manager-index"] {
        let mut sb = Sandbox::new();
        sb.env("GATEWAY_MANAGER_STORE_ETCD_PREFIX", reserved);
        sb.err_with(&["manager.store_etcd_prefix", "choose another prefix"]);
    }
    for good in [
        "/m",
        "/autogate-manager-b",
        "/ops/mgr_1.prod",
        &format!("/{}", "a".repeat(127)),
    ] {
        let mut sb = Sandbox::new();
        sb.env("GATEWAY_MANAGER_STORE_ETCD_PREFIX", good);
        assert_eq!(sb.load().manager.store_etcd_prefix, good);
    }
}

#[test]
fn replica_lease_ttl_is_between_2s_and_60s() {
    for bad in ["1s", "1500ms", "61s", "2m"] {
        let mut sb = Sandbox::new();
        sb.env("GATEWAY_MANAGER_REPLICA_LEASE_TTL", bad);
        sb.err_with(&["manager.replica_lease_ttl", "from 2s to 1m"]);
    }
    for (good, want) in [("2s", 2), ("60s", 60), ("1m", 60)] {
        let mut sb = Sandbox::new();
        sb.env("GATEWAY_MANAGER_REPLICA_LEASE_TTL", good);
        assert_eq!(
            sb.load().manager.replica_lease_ttl,
            Duration::from_secs(want)
        );
    }
}

#[test]
fn etcd_backend_needs_hosts() {
    let mut sb = etcd_replica();
    sb.load().validate_for(Role::Manager).unwrap();
    sb.env("GATEWAY_MANAGER_STORE_ETCD_HOSTS", "");
    // An empty host list is itself a value error, as for `store.etcd_hosts`.
    sb.err_with(&["manager.store_etcd_hosts"]);
    sb.env.remove("GATEWAY_MANAGER_STORE_ETCD_HOSTS");
    manager_err(
        &sb,
        &[
            "manager.store_etcd_hosts",
            "GATEWAY_MANAGER_STORE_ETCD_HOSTS",
            "manager.store_backend = etcd",
        ],
    );
}

#[test]
fn etcd_backend_needs_the_shared_certificate() {
    let mut sb = etcd_replica();
    sb.env.remove("GATEWAY_MANAGER_CERTIFICATE_FILE");
    sb.env.remove("GATEWAY_MANAGER_PRIVATE_KEY_FILE");
    manager_err(
        &sb,
        &[
            "manager.certificate_file",
            "GATEWAY_MANAGER_CERTIFICATE_FILE",
            "manager.store_backend = etcd",
            "every replica presents the same certificate",
        ],
    );
    // One of the two alone is named by the certificate-and-key rule.
    for (drop, named) in [
        (
            "GATEWAY_MANAGER_CERTIFICATE_FILE",
            "manager.certificate_file",
        ),
        (
            "GATEWAY_MANAGER_PRIVATE_KEY_FILE",
            "manager.private_key_file",
        ),
    ] {
        let mut sb = etcd_replica();
        sb.env.remove(drop);
        manager_err(&sb, &[named]);
    }
    // The local backend runs without TLS as before.
    let mut sb = etcd_replica();
    sb.env("GATEWAY_MANAGER_STORE_BACKEND", "local");
    sb.env.remove("GATEWAY_MANAGER_CERTIFICATE_FILE");
    sb.env.remove("GATEWAY_MANAGER_PRIVATE_KEY_FILE");
    sb.load().validate_for(Role::Manager).unwrap();
}

#[test]
fn client_cert_auth_needs_the_etcd_client_certificate() {
    let mut sb = etcd_replica();
    sb.env("GATEWAY_MANAGER_STORE_ETCD_USE_TLS", "true")
        .env("GATEWAY_MANAGER_STORE_ETCD_CLIENT_CERT_AUTH", "true");
    manager_err(
        &sb,
        &[
            "manager.store_etcd_certificate_file",
            "manager.store_etcd_client_cert_auth = true",
            "mutual TLS",
        ],
    );
    sb.env(
        "GATEWAY_MANAGER_STORE_ETCD_CERTIFICATE_FILE",
        "/pki/etcd.pem",
    );
    manager_err(&sb, &["manager.store_etcd_private_key_file"]);
    sb.env(
        "GATEWAY_MANAGER_STORE_ETCD_PRIVATE_KEY_FILE",
        "/pki/etcd-key.pem",
    );
    sb.load().validate_for(Role::Manager).unwrap();
}

#[test]
fn tls_ca_file_must_exist() {
    let mut sb = etcd_replica();
    let missing = sb.dir.path().join("no-such-ca.pem");
    sb.env("GATEWAY_MANAGER_STORE_ETCD_USE_TLS", "true").env(
        "GATEWAY_MANAGER_STORE_ETCD_CA_CERTIFICATE_FILE",
        &missing.display().to_string(),
    );
    manager_err(
        &sb,
        &["manager.store_etcd_ca_certificate_file", "no-such-ca.pem"],
    );
    sb.write("no-such-ca.pem", "pem");
    sb.load().validate_for(Role::Manager).unwrap();
}

#[test]
fn manager_store_rules_do_not_concern_other_roles() {
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_MANAGER_STORE_BACKEND", "etcd");
    let c = sb.load();
    manager_err(&sb, &["manager.store_etcd_hosts"]);
    c.validate_for(Role::Server).unwrap();
    c.validate_for(Role::Client).unwrap();
    c.validate_for(Role::Local).unwrap();
}
