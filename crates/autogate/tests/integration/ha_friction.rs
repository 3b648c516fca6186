//! What a newcomer runs into with an HA pair and a manager, black box: real etcd, a real
//! manager, real core nodes. One line per failed manager attempt; the silent waits (a returning
//! primary's countdown, the stop of a core node) are said; a switchover on the primary holds; a
//! manager restart moves no role and is labelled as such.

use autogate_testkit::scenario::{core_node, Pki, START};
use autogate_testkit::{free_port, poll_until};

/// While the manager is down, each attempt is one line that names the next attempt and its
/// delay — not an "attempting" line and a "failed" line per attempt.
#[test]
fn ha_friction_one_line_per_failed_manager_attempt() {
    let pki = Pki::new(&["core-1"]);
    // Nobody listens on this port: every attempt is refused at once.
    let (cmd, _port) = core_node(&pki, "core-1", free_port());
    let core = cmd.name("core-1").spawn();
    let failed = |logs: &str| logs.lines().filter(|l| l.contains(" failed: ")).count();
    let logs = poll_until("four failed attempts", START, || {
        let logs = core.logs();
        (failed(&logs) >= 4).then_some(logs)
    });
    let link: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("commander at") || l.contains("attempting to connect"))
        .collect();
    // `creating`, the family's `attempting` once, then one line per failed attempt.
    assert!(
        link[0].contains(" INF creating connection to commander at "),
        "{logs}"
    );
    assert!(
        link[1].contains(" INF attempting to connect to wss://"),
        "{logs}"
    );
    let retries = &link[2..];
    assert!(retries.len() >= 4, "{logs}");
    for line in retries {
        assert!(line.contains(" WRN connection to commander at "), "{line}");
        assert!(line.contains(" failed: "), "{line}");
        let delay = line
            .split("/ws in ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(" ms"))
            .and_then(|ms| ms.parse::<u64>().ok());
        assert!(
            delay.is_some_and(|d| d <= 1000),
            "no next delay (cap 1 s): {line}"
        );
    }
}
