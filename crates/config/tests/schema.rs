//! The schema table: complete for the product family's keys, consistent env names, defaults that
//! parse.

use std::collections::BTreeSet;

use autogate_config::{env_name, keys, DefaultValue, SECTIONS};

/// Every key of the family's variable table (listed with its `GATEWAY_*` variable in
/// docs/configuration.md), so family files load.
const FAMILY_KEYS: &[&str] = &[
    "application.ca_certificate_file",
    "application.cluster_id",
    "application.mode",
    "application.working_dir",
    "application.venv_retention_period",
    "application.venv_sweep_interval",
    "application.auto_accept_eula",
    "client.certificate_file",
    "client.host",
    "client.port",
    "client.private_key_file",
    "client.use_tls",
    "client.api_key",
    "connect.certificate_file",
    "connect.private_key_file",
    "connect.enabled",
    "connect.hosts",
    "connect.insecure_tls",
    "connect.proxy_url",
    "connect.proxy_username",
    "connect.proxy_password",
    "connect.server_ha_enabled",
    "connect.server_ha_is_primary",
    "commander.certificate_file",
    "commander.private_key_file",
    "commander.enabled",
    "commander.host",
    "commander.port",
    "commander.insecure_tls",
    "commander.server_ha_enabled",
    "commander.server_ha_is_primary",
    "features.ansible_enabled",
    "features.hostkeys_enabled",
    "features.mcp_enabled",
    "features.opentofu_enabled",
    "features.python_enabled",
    "log.console_json",
    "log.file_enabled",
    "log.file_json",
    "log.level",
    "log.server_dir",
    "log.timestamp_timezone",
    "python-script.requirements_file",
    "registry.default_overridable",
    "runner.announcement_address",
    "runner.listen_address",
    "runner.port",
    "runner.use_tls",
    "runner.certificate_file",
    "runner.private_key_file",
    "runner.client_cert_auth",
    "runner.runtime_data_dir",
    "secrets.encrypt_key_file",
    "server.api_key_expiration",
    "server.listen_address",
    "server.port",
    "server.distributed_execution",
    "server.use_tls",
    "server.certificate_file",
    "server.private_key_file",
    "server.grpc_max_recv_msg_size",
    "server.client_cert_auth",
    "server.runtime_data_dir",
    "store.backend",
    "store.etcd_hosts",
    "store.etcd_use_tls",
    "store.etcd_client_cert_auth",
    "store.etcd_ca_certificate_file",
    "store.etcd_certificate_file",
    "store.etcd_private_key_file",
    "store.dynamodb_table_name",
    "terminal.no_color",
    "terminal.timestamp_timezone",
];

#[test]
fn every_family_key_is_in_the_schema() {
    let ids: BTreeSet<String> = keys().iter().map(|k| k.id()).collect();
    for k in FAMILY_KEYS {
        assert!(ids.contains(*k), "missing family key {k}");
    }
    let server_cca = keys()
        .iter()
        .find(|k| k.id() == "server.client_cert_auth")
        .unwrap();
    assert!(server_cca.file_aliases.contains(&"client_certif_auth"));
}

#[test]
fn keys_are_unique_and_env_names_follow_the_rule() {
    let mut ids = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for k in keys() {
        assert!(ids.insert(k.id()), "duplicate key {}", k.id());
        assert!(envs.insert(k.env_name()), "duplicate env {}", k.env_name());
        assert!(
            SECTIONS.iter().any(|(s, _)| *s == k.section),
            "{} has no section",
            k.id()
        );
        assert!(!k.doc.is_empty(), "{} is undocumented", k.id());
        if k.secret {
            assert!(
                matches!(k.default, DefaultValue::None),
                "secret {} has a default",
                k.id()
            );
        }
        if let Some(target) = k.alias_of {
            assert_eq!(k.section, "commander");
            assert!(
                ids_contains(&format!("connect.{target}")),
                "{} aliases nothing",
                k.id()
            );
        }
    }
    assert_eq!(
        env_name("python-script", "requirements_file"),
        "GATEWAY_PYTHON_SCRIPT_REQUIREMENTS_FILE"
    );
    assert_eq!(env_name("application", "mode"), "GATEWAY_APPLICATION_MODE");
    assert_eq!(env_name("client:prod", "host"), "GATEWAY_CLIENT_PROD_HOST");
}

fn ids_contains(id: &str) -> bool {
    keys().iter().any(|k| k.id() == id)
}

#[test]
fn every_commander_key_but_port_has_a_connect_twin_without_default_shadowing() {
    for k in keys().iter().filter(|k| k.section == "commander") {
        assert!(k.alias_of.is_some(), "{} maps nowhere", k.id());
        if k.key != "port" {
            // A default here would always collide with the [connect] key.
            assert_eq!(k.default, DefaultValue::None, "{}", k.id());
        }
    }
}
