//! What another local user can read of a node: nothing. The working directory is 0700 and the
//! store, the log, the state file and the temporary admin password are 0600 — also when an older
//! version left them open (a 0755 directory, 0644 files), and in local mode, where a plain CLI
//! command creates the store.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use autogate_testkit::{free_port, Autogate};

const START: Duration = Duration::from_secs(30);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o777
}

fn open_to_others(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

#[test]
fn a_core_node_keeps_its_files_from_other_users_even_those_an_older_version_left_open() {
    let home = tempfile::tempdir().expect("tempdir");
    let work = home.path().join("work");
    // What an older version left: an open directory, a readable store and log.
    std::fs::create_dir_all(work.join("logs")).expect("mkdir");
    open_to_others(&work, 0o755);
    std::fs::write(work.join("gateway.db"), b"").expect("store file");
    open_to_others(&work.join("gateway.db"), 0o644);
    std::fs::write(work.join("logs/gateway.log"), b"").expect("log file");
    open_to_others(&work.join("logs/gateway.log"), 0o644);

    let port = free_port();
    let node = Autogate::new(["server"])
        .env("GATEWAY_SERVER_PORT", port.to_string())
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .env("GATEWAY_LOG_FILE_ENABLED", "true")
        .name("server")
        .spawn();
    // Also asserts the password file is 0600 in a 0700 directory, and not in the log.
    let password = autogate_testkit::auth::temporary_password(&node, START);
    node.wait_for_line("core node listening", START);
    node.wait_for_line("working directory", START);

    assert_eq!(mode(&work), 0o700);
    for f in [
        "gateway.db",
        "logs/gateway.log",
        "server.state",
        "server.lock",
    ] {
        assert_eq!(mode(&work.join(f)), 0o600, "{f}");
    }
    let log = std::fs::read_to_string(work.join("logs/gateway.log")).expect("log");
    assert!(log.contains("CREATED TEMPORARY ADMIN"), "{log}");
    assert!(
        !log.contains(&password),
        "the password reached the log file"
    );
    assert!(
        log.contains("was mode 755, readable by other users: it is 0700 now"),
        "the tightening is said: {log}"
    );
}

#[test]
fn a_local_mode_command_creates_a_private_store() {
    let home = tempfile::tempdir().expect("tempdir");
    let work = home.path().join("fresh/work");
    let out = Autogate::new(["get", "services"])
        .env(
            "GATEWAY_APPLICATION_WORKING_DIR",
            work.display().to_string(),
        )
        .output(START);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(mode(&work), 0o700);
    assert_eq!(mode(&work.join("gateway.db")), 0o600);
}
