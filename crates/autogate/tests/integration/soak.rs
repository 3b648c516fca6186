//! The short chaos soak of `make test` (`make soak` is the long one): callers through a real
//! manager while the active core node is stopped, killed and frozen, runners are killed and the
//! manager restarts, in both execution modes, with the checker's verdict asserted; and the same
//! against three manager replicas on a shared etcd, whose schedule also kills the replica
//! holding the cluster's session and one that does not.

use autogate_testkit::soak::{run, Fault, SoakConfig, SoakReport};

fn short(cfg: SoakConfig) -> SoakReport {
    let report = run(cfg);
    let detail = format!(
        "{}\nfailed: {:?}\nunanswered: {:?}\ntwice: {:?}\nwhile failed: {:?}\nnot executed: {:?}\ncrashes: {:?}",
        report.table(),
        report.failed,
        report.unanswered,
        report.executed_twice,
        report.executed_while_failed,
        report.completed_not_executed,
        report.crashes
    );
    assert_eq!(report.faults.values().sum::<usize>(), 8, "{detail}");
    assert!(report.completed >= 50, "{detail}");
    assert_eq!(report.violations(), 0, "{detail}");
    println!("{}", report.table());
    report
}

#[test]
fn a_short_soak_with_local_execution_loses_and_doubles_nothing() {
    short(SoakConfig::new(7, 8, false));
}

#[test]
fn a_short_soak_with_distributed_execution_loses_and_doubles_nothing() {
    short(SoakConfig::new(7, 8, true));
}

#[test]
fn a_short_soak_with_manager_replicas_loses_and_doubles_nothing() {
    // Seed 14 schedules every manager fault: a replica stopped and restarted, the session's
    // replica killed, another replica killed.
    let report = short(SoakConfig::new(14, 8, false).with_replicas());
    for fault in [
        Fault::RestartManager,
        Fault::KillSessionReplica,
        Fault::KillOtherReplica,
    ] {
        assert!(
            report.faults.contains_key(&fault),
            "{fault:?} not scheduled:\n{}",
            report.table()
        );
    }
    assert!(report.sessions >= 2, "{}", report.table());
}
