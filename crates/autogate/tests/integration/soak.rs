//! The short chaos soak of `make test` (`make soak` is the long one): callers through a real
//! manager while the active core node is stopped, killed and frozen, runners are killed and the
//! manager restarts, in both execution modes, with the checker's verdict asserted.

use autogate_testkit::soak::{run, SoakConfig};

fn short(distributed: bool) {
    let report = run(SoakConfig::new(7, 8, distributed));
    let detail = format!(
        "{}\nfailed: {:?}\nunanswered: {:?}\ntwice: {:?}\nwhile failed: {:?}\nnot executed: {:?}",
        report.table(),
        report.failed,
        report.unanswered,
        report.executed_twice,
        report.executed_while_failed,
        report.completed_not_executed
    );
    assert_eq!(report.faults.values().sum::<usize>(), 8, "{detail}");
    assert!(report.completed >= 50, "{detail}");
    assert_eq!(report.violations(), 0, "{detail}");
    println!("{}", report.table());
}

#[test]
fn a_short_soak_with_local_execution_loses_and_doubles_nothing() {
    short(false);
}

#[test]
fn a_short_soak_with_distributed_execution_loses_and_doubles_nothing() {
    short(true);
}
