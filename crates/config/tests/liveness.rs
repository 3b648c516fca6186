//! The manager link's liveness and frame-rate settings: defaults, the `[commander]` spelling,
//! and the rule that a link's dead-after time exceeds its ping interval.

mod common;

use std::time::Duration;

use autogate_config::ConfigError;
use common::Sandbox;

#[test]
fn defaults_notice_a_silent_link_within_seconds() {
    let c = Sandbox::new().load();
    assert_eq!(c.connect.link_ping_interval, Duration::from_secs(1));
    assert_eq!(c.connect.link_dead_after, Duration::from_secs(5));
    assert_eq!(c.manager.ping_interval, Duration::from_secs(1));
    assert_eq!(c.manager.silence_limit, Duration::from_secs(5));
    assert_eq!(c.manager.session_frame_rate, 200);
    assert_eq!(c.manager.session_frame_burst, 400);
}

#[test]
fn settings_from_file_env_and_the_older_section_name() {
    let mut sb = Sandbox::new();
    sb.config("[commander]\nlink_ping_interval = 500ms\nlink_dead_after = 3s\n[manager]\nsession_frame_rate = 50\n");
    sb.env("GATEWAY_MANAGER_PING_INTERVAL", "2s")
        .env("GATEWAY_MANAGER_SILENCE_LIMIT", "10s")
        .env("GATEWAY_MANAGER_SESSION_FRAME_BURST", "1000");
    let c = sb.load();
    assert_eq!(c.connect.link_ping_interval, Duration::from_millis(500));
    assert_eq!(c.connect.link_dead_after, Duration::from_secs(3));
    assert_eq!(c.manager.ping_interval, Duration::from_secs(2));
    assert_eq!(c.manager.silence_limit, Duration::from_secs(10));
    assert_eq!(c.manager.session_frame_rate, 50);
    assert_eq!(c.manager.session_frame_burst, 1000);

    // Both names for one setting is a conflict, as for every [commander] key.
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_COMMANDER_LINK_DEAD_AFTER", "3s")
        .env("GATEWAY_CONNECT_LINK_DEAD_AFTER", "4s");
    sb.err_with(&["commander.link_dead_after", "connect.link_dead_after"]);
}

#[test]
fn a_dead_after_time_not_above_the_ping_interval_is_refused_naming_both_keys() {
    for (env, fragments) in [
        (
            [
                ("GATEWAY_CONNECT_LINK_PING_INTERVAL", "5s"),
                ("GATEWAY_CONNECT_LINK_DEAD_AFTER", "5s"),
            ],
            [
                "connect.link_dead_after = 5s",
                "connect.link_ping_interval = 5s",
                "must be longer than",
            ],
        ),
        (
            [
                ("GATEWAY_MANAGER_PING_INTERVAL", "10s"),
                ("GATEWAY_MANAGER_SILENCE_LIMIT", "5s"),
            ],
            [
                "manager.silence_limit = 5s",
                "manager.ping_interval = 10s",
                "must be longer than",
            ],
        ),
    ] {
        let mut sb = Sandbox::new();
        for (k, v) in env {
            sb.env(k, v);
        }
        let e = sb.err_with(&fragments);
        assert!(matches!(e, ConfigError::Conflict { .. }), "{e}");
    }

    // Under the older name the message names the key as it was set.
    let mut sb = Sandbox::new();
    sb.config("[commander]\nlink_dead_after = 1s\nlink_ping_interval = 2s\n");
    sb.err_with(&["commander.link_dead_after", "commander.link_ping_interval"]);

    // Below the floors the values themselves are refused.
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_MANAGER_SILENCE_LIMIT", "500ms");
    sb.err_with(&["manager.silence_limit", "at least 1s"]);
    let mut sb = Sandbox::new();
    sb.env("GATEWAY_CONNECT_LINK_PING_INTERVAL", "10ms");
    sb.err_with(&["connect.link_ping_interval", "at least 100ms"]);
}
