//! Event-in / command-out tests, one group per rule of the machine.
#![allow(clippy::unwrap_used)]

use super::*;

const ME: &str = "hosta_0001";
const B: &str = "hostb_0002";
const C: &str = "hostc_0003";

fn cfg(id: &str) -> MachineConfig {
    let mut c = MachineConfig::new(id);
    c.advertise_address = Some(format!("{id}.example:8080"));
    c
}

fn cand(node: &str, rev: i64, lease: LeaseId) -> Candidate {
    Candidate {
        node_id: node.into(),
        key: format!("/autogate/c/election/{lease:x}"),
        create_revision: rev,
        lease,
    }
}

fn rec(node: &str) -> NodeRecord {
    NodeRecord {
        node_id: node.into(),
        address: Some(format!("{node}.example:8080")),
        is_primary: false,
        role: Role::Standby,
        manager_reachable: true,
        paused: false,
        healthy: true,
        handover_to: None,
        preempt_hold: false,
    }
}

fn view(rev: i64, c: Vec<Candidate>) -> Event {
    Event::ElectionView {
        revision: rev,
        candidates: c,
    }
}

/// A machine holding lease `lease` (granted at t=0) with its key at create revision `rev`.
fn booted(c: MachineConfig, lease: LeaseId, rev: i64) -> Machine {
    let mut m = Machine::new(c);
    assert_eq!(
        m.handle(Millis(0), Event::Start),
        vec![Command::Store(StoreCommand::GrantLease)]
    );
    let out = m.handle(
        Millis(0),
        Event::LeaseGranted {
            lease,
            sent_at: Millis(0),
        },
    );
    assert!(
        out.contains(&Command::Store(StoreCommand::Campaign {
            lease,
            attempt: 1
        })),
        "{out:?}"
    );
    m.handle(
        Millis(1),
        Event::OwnKeyCreated {
            lease,
            attempt: 1,
            create_revision: rev,
        },
    );
    m
}

fn has(out: &[Command], f: impl Fn(&Command) -> bool) -> bool {
    out.iter().any(f)
}

fn pos(out: &[Command], f: impl Fn(&Command) -> bool) -> usize {
    out.iter()
        .position(f)
        .unwrap_or_else(|| panic!("not found in {out:?}"))
}

fn starts(out: &[Command]) -> bool {
    has(out, |c| {
        matches!(c, Command::Local(LocalCommand::StartLeaderWork { .. }))
    })
}

fn stops(out: &[Command]) -> Option<StopReason> {
    out.iter().find_map(|c| match c {
        Command::Local(LocalCommand::StopLeaderWork { reason, .. }) => Some(*reason),
        _ => None,
    })
}

fn logs(out: &[Command]) -> Vec<(LogLevel, String)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Local(LocalCommand::Log { level, text }) => Some((*level, text.clone())),
            _ => None,
        })
        .collect()
}

/// ME active with term 10 on lease 0xa, B standby (rev 11), C standby (rev 12), all healthy.
fn active_three() -> Machine {
    let mut m = booted(cfg(ME), 0xa, 10);
    m.handle(Millis(2), Event::ManagerReachable(true));
    m.handle(Millis(2), Event::NodeRecords(vec![rec(B), rec(C)]));
    let out = m.handle(
        Millis(3),
        view(
            12,
            vec![cand(ME, 10, 0xa), cand(B, 11, 0xb), cand(C, 12, 0xc)],
        ),
    );
    assert!(starts(&out), "{out:?}");
    m
}

#[test]
fn timing_follows_the_ttl() {
    let c = MachineConfig::new(ME);
    assert_eq!(c.step_down_margin_ms(), 3_333);
    assert_eq!(c.acting_window_ms(), 6_667);
    assert_eq!(c.keepalive_interval_ms(), 3_333);
    let mut short = MachineConfig::new(ME);
    short.lease_ttl_ms = 6_000;
    assert_eq!(short.step_down_margin_ms(), 2_000);
    short.lease_ttl_ms = 2_000;
    // Capped at TTL/2 so that a 2 s lease still leaves time to act.
    assert_eq!(short.acting_window_ms(), 1_000);
    assert_eq!(short.keepalive_interval_ms(), 500);
}

#[test]
fn lowest_create_revision_leads_with_its_term_and_log_line() {
    let mut m = booted(cfg(ME), 0xa, 10);
    let out = m.handle(
        Millis(5),
        view(11, vec![cand(B, 11, 0xb), cand(ME, 10, 0xa)]),
    );
    assert!(has(&out, |c| matches!(
        c,
        Command::Local(LocalCommand::StartLeaderWork { term: 10, .. })
    )));
    assert!(logs(&out).contains(&(
        LogLevel::Info,
        format!("node {ME} is elected as the leader. About to start commander connection...")
    )));
    assert_eq!(m.leadership(), Leadership::Active { term: 10 });
}

#[test]
fn standby_logs_the_active_node_once_per_change() {
    let mut m = booted(cfg(ME), 0xa, 12);
    let line = |a: &str| {
        (
            LogLevel::Debug,
            format!("this core node with Id of '{ME}' is not the active node. The current active core node is '{a}'"),
        )
    };
    let out = m.handle(
        Millis(5),
        view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    assert!(!starts(&out));
    assert!(logs(&out).contains(&line(B)));
    let out = m.handle(
        Millis(6),
        view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    assert!(logs(&out).is_empty(), "{out:?}");
    let out = m.handle(
        Millis(7),
        view(13, vec![cand(C, 11, 0xc), cand(ME, 12, 0xa)]),
    );
    assert!(logs(&out).contains(&line(C)));
    assert_eq!(
        m.leadership(),
        Leadership::Standby {
            leader: Some(C.into())
        }
    );
}

#[test]
fn not_lowest_or_stale_lease_never_acts() {
    let mut m = booted(cfg(ME), 0xa, 10);
    // Own key is lowest but the view is of another lease with the same node id: not ours.
    let out = m.handle(Millis(5), view(10, vec![cand(ME, 9, 0xf)]));
    assert!(!starts(&out));
    // Lease stale: the deadline (6667) passed before the view arrives.
    let out = m.handle(Millis(7_000), view(10, vec![cand(ME, 10, 0xa)]));
    assert!(!starts(&out), "{out:?}");
    assert!(out.contains(&Command::Store(StoreCommand::GrantLease)));
}

#[test]
fn step_down_at_send_time_of_last_ack_plus_window() {
    let mut m = active_three();
    m.handle(
        Millis(1_000),
        Event::KeepAliveAcked {
            lease: 0xa,
            sent_at: Millis(900),
        },
    );
    let out = m.handle(
        Millis(1_500),
        Event::KeepAliveFailed {
            lease: 0xa,
            error: "unavailable".into(),
        },
    );
    assert!(stops(&out).is_none());
    // Deadline = 900 + 6667.
    let out = m.handle(Millis(7_566), Event::Tick);
    assert!(stops(&out).is_none(), "{out:?}");
    let out = m.handle(Millis(7_567), Event::Tick);
    assert_eq!(stops(&out), Some(StopReason::LeaseExpiring));
    assert!(out.contains(&Command::Store(StoreCommand::RevokeLease { lease: 0xa })));
    assert!(out.contains(&Command::Store(StoreCommand::GrantLease)));
    // Rejoins with a new lease and a new key.
    let out = m.handle(
        Millis(9_000),
        Event::LeaseGranted {
            lease: 0xd,
            sent_at: Millis(8_000),
        },
    );
    assert!(out.contains(&Command::Store(StoreCommand::Campaign {
        lease: 0xd,
        attempt: 2
    })));
}

#[test]
fn the_deadline_is_a_timer() {
    let mut m = active_three();
    let out = m.handle(
        Millis(100),
        Event::KeepAliveAcked {
            lease: 0xa,
            sent_at: Millis(100),
        },
    );
    assert!(
        out.contains(&Command::Local(LocalCommand::SetTimer {
            at: Millis(6_767)
        })),
        "{out:?}"
    );
}

#[test]
fn a_late_event_after_a_freeze_steps_down_first() {
    let mut m = active_three();
    // Frozen past the deadline; the first thing it processes is an ack of a keep-alive sent
    // before the freeze: it must still stop.
    let out = m.handle(
        Millis(20_000),
        Event::KeepAliveAcked {
            lease: 0xa,
            sent_at: Millis(50),
        },
    );
    assert_eq!(stops(&out), Some(StopReason::LeaseExpiring));
}

#[test]
fn graceful_shutdown_resigns_before_stopping() {
    let mut m = active_three();
    let out = m.handle(Millis(100), Event::Shutdown);
    let resign = pos(&out, |c| {
        *c == Command::Store(StoreCommand::Resign { lease: 0xa })
    });
    let stop = pos(&out, |c| {
        matches!(
            c,
            Command::Local(LocalCommand::StopLeaderWork {
                reason: StopReason::Shutdown,
                ..
            })
        )
    });
    let revoke = pos(&out, |c| {
        *c == Command::Store(StoreCommand::RevokeLease { lease: 0xa })
    });
    assert!(resign < stop && stop < revoke, "{out:?}");
    assert_eq!(out.last(), Some(&Command::Local(LocalCommand::Finished)));
    assert!(m.handle(Millis(200), Event::Tick).is_empty());
}

#[test]
fn pause_hands_over_and_resume_campaigns_again() {
    let mut m = active_three();
    let out = m.handle(Millis(100), Event::Pause);
    let resign = pos(&out, |c| {
        *c == Command::Store(StoreCommand::Resign { lease: 0xa })
    });
    let stop = pos(&out, |c| {
        matches!(
            c,
            Command::Local(LocalCommand::StopLeaderWork {
                reason: StopReason::Paused,
                ..
            })
        )
    });
    assert!(resign < stop);
    assert!(!has(&out, |c| matches!(
        c,
        Command::Store(StoreCommand::Campaign { .. })
    )));
    assert_eq!(m.leadership(), Leadership::Paused);
    let out = m.handle(
        Millis(200),
        view(14, vec![cand(B, 11, 0xb), cand(C, 12, 0xc)]),
    );
    assert!(!has(&out, |c| matches!(
        c,
        Command::Store(StoreCommand::Campaign { .. })
    )));
    let out = m.handle(Millis(300), Event::Resume);
    assert!(out.contains(&Command::Store(StoreCommand::Campaign {
        lease: 0xa,
        attempt: 2
    })));
}

#[test]
fn switchover_checks_the_target_and_hands_over_when_it_is_next() {
    let mut m = active_three();
    let mut sick = rec(C);
    sick.manager_reachable = false;
    sick.healthy = false;
    m.handle(Millis(10), Event::NodeRecords(vec![rec(B), sick]));
    let out = m.handle(Millis(11), Event::Switchover { to: Some(C.into()) });
    assert!(
        matches!(
            out.last(),
            Some(Command::Local(LocalCommand::SwitchoverOutcome(Err(_))))
        ),
        "{out:?}"
    );
    let out = m.handle(
        Millis(12),
        Event::Switchover {
            to: Some("nobody_1".into()),
        },
    );
    assert!(matches!(
        out.last(),
        Some(Command::Local(LocalCommand::SwitchoverOutcome(Err(_))))
    ));
    m.handle(Millis(13), Event::NodeRecords(vec![rec(B), rec(C)]));
    let out = m.handle(Millis(14), Event::Switchover { to: Some(C.into()) });
    assert!(out.contains(&Command::Local(LocalCommand::SwitchoverOutcome(Ok(())))));
    // B is still ahead of C: the record names C, nothing is resigned yet.
    assert!(has(
        &out,
        |c| matches!(c, Command::Store(StoreCommand::PublishRecord { record, .. }) if record.handover_to.as_deref() == Some(C))
    ));
    assert!(stops(&out).is_none());
    // B re-queued behind C.
    let out = m.handle(
        Millis(20),
        view(
            13,
            vec![cand(ME, 10, 0xa), cand(C, 12, 0xc), cand(B, 13, 0xb)],
        ),
    );
    let resign = pos(&out, |c| {
        *c == Command::Store(StoreCommand::Resign { lease: 0xa })
    });
    let stop = pos(&out, |c| {
        matches!(
            c,
            Command::Local(LocalCommand::StopLeaderWork {
                reason: StopReason::Switchover,
                ..
            })
        )
    });
    let campaign = pos(&out, |c| {
        matches!(c, Command::Store(StoreCommand::Campaign { lease: 0xa, .. }))
    });
    assert!(resign < stop && stop < campaign, "{out:?}");
}

#[test]
fn switchover_without_target_needs_a_healthy_standby_and_standbys_refuse() {
    let mut m = booted(cfg(ME), 0xa, 10);
    m.handle(Millis(2), view(10, vec![cand(ME, 10, 0xa)]));
    let out = m.handle(Millis(3), Event::Switchover { to: None });
    assert!(matches!(
        out.last(),
        Some(Command::Local(LocalCommand::SwitchoverOutcome(Err(_))))
    ));
    let mut s = booted(cfg(ME), 0xa, 12);
    s.handle(
        Millis(2),
        view(12, vec![cand(B, 11, 0xb), cand(ME, 12, 0xa)]),
    );
    let out = s.handle(Millis(3), Event::Switchover { to: None });
    assert_eq!(
        out.last(),
        Some(&Command::Local(LocalCommand::SwitchoverOutcome(Err(
            format!("not the active node; the active node is '{B}'")
        ))))
    );
    let mut m = active_three();
    let out = m.handle(Millis(10), Event::Switchover { to: None });
    assert_eq!(stops(&out), Some(StopReason::Switchover));
}

#[test]
fn standby_ahead_of_the_handover_target_requeues() {
    let mut m = booted(cfg(ME), 0xa, 11);
    let mut active = rec(B);
    active.role = Role::Active;
    active.handover_to = Some(C.into());
    m.handle(Millis(2), Event::NodeRecords(vec![active.clone(), rec(C)]));
    let out = m.handle(
        Millis(3),
        view(
            12,
            vec![cand(B, 10, 0xb), cand(ME, 11, 0xa), cand(C, 12, 0xc)],
        ),
    );
    let resign = pos(&out, |c| {
        *c == Command::Store(StoreCommand::Resign { lease: 0xa })
    });
    let campaign = pos(&out, |c| {
        matches!(c, Command::Store(StoreCommand::Campaign { lease: 0xa, .. }))
    });
    assert!(resign < campaign);
    // Once behind the target: stays.
    m.handle(
        Millis(4),
        Event::OwnKeyCreated {
            lease: 0xa,
            attempt: 2,
            create_revision: 14,
        },
    );
    let out = m.handle(
        Millis(5),
        view(
            14,
            vec![cand(B, 10, 0xb), cand(C, 12, 0xc), cand(ME, 14, 0xa)],
        ),
    );
    assert!(
        !has(&out, |c| matches!(
            c,
            Command::Store(StoreCommand::Resign { .. })
        )),
        "{out:?}"
    );
}

fn standby_probing(probe_window_ms: u64, leader: &str, leader_addr: &str) -> Machine {
    let mut c = cfg(ME);
    c.probe_window_ms = probe_window_ms;
    let mut m = booted(c, 0xa, 12);
    let mut r = rec(leader);
    r.role = Role::Active;
    r.address = Some(leader_addr.into());
    m.handle(Millis(2), Event::NodeRecords(vec![r]));
    m
}

fn probe_result(node: &str, addr: &str, result: ProbeResult) -> Event {
    Event::ProbeResult {
        node_id: node.into(),
        address: addr.into(),
        result,
    }
}

#[test]
fn refusals_across_the_window_after_an_answer_prove_the_active_dead() {
    let addr = "10.0.0.2:8080";
    let mut m = standby_probing(300, B, addr);
    let out = m.handle(
        Millis(10),
        view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    assert!(out.contains(&Command::Local(LocalCommand::Probe {
        node_id: B.into(),
        address: addr.into()
    })));
    m.handle(
        Millis(20),
        probe_result(B, addr, ProbeResult::Answered { node_id: B.into() }),
    );
    let mut t = 1_020;
    let out = m.handle(Millis(t), Event::Tick);
    assert!(has(&out, |c| matches!(
        c,
        Command::Local(LocalCommand::Probe { .. })
    )));
    // Refused at 1020, 1120, 1220: not yet across 300 ms.
    for _ in 0..3 {
        let out = m.handle(Millis(t), probe_result(B, addr, ProbeResult::Refused));
        assert!(
            !has(&out, |c| matches!(
                c,
                Command::Store(StoreCommand::RevokePeerLease { .. })
            )),
            "{out:?}"
        );
        t += 100;
        let out = m.handle(Millis(t), Event::Tick);
        assert!(
            has(&out, |c| matches!(
                c,
                Command::Local(LocalCommand::Probe { .. })
            )),
            "t={t} {out:?}"
        );
    }
    let out = m.handle(Millis(t), probe_result(B, addr, ProbeResult::Refused));
    assert!(
        out.contains(&Command::Store(StoreCommand::RevokePeerLease {
            node_id: B.into(),
            lease: 0xb
        })),
        "{out:?}"
    );
    // Only once.
    let out = m.handle(Millis(t + 500), probe_result(B, addr, ProbeResult::Refused));
    assert!(!has(&out, |c| matches!(
        c,
        Command::Store(StoreCommand::RevokePeerLease { .. })
    )));
}

#[test]
fn timeouts_wrong_ids_and_never_answered_addresses_prove_nothing() {
    let addr = "10.0.0.2:8080";
    for first in [
        None,
        Some(ProbeResult::Answered { node_id: C.into() }),
        Some(ProbeResult::Timeout),
    ] {
        let mut m = standby_probing(300, B, addr);
        m.handle(
            Millis(10),
            view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
        );
        if let Some(r) = first.clone() {
            m.handle(Millis(20), probe_result(B, addr, r));
        }
        for i in 0..50u64 {
            let out = m.handle(
                Millis(100 + i * 200),
                probe_result(B, addr, ProbeResult::Refused),
            );
            assert!(
                !has(&out, |c| matches!(
                    c,
                    Command::Store(StoreCommand::RevokePeerLease { .. })
                )),
                "{first:?}"
            );
        }
    }
    // A timeout in between restarts the window.
    let mut m = standby_probing(300, B, addr);
    m.handle(
        Millis(10),
        view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    m.handle(
        Millis(20),
        probe_result(B, addr, ProbeResult::Answered { node_id: B.into() }),
    );
    m.handle(Millis(100), probe_result(B, addr, ProbeResult::Refused));
    m.handle(Millis(300), probe_result(B, addr, ProbeResult::Timeout));
    let out = m.handle(Millis(450), probe_result(B, addr, ProbeResult::Refused));
    assert!(!has(&out, |c| matches!(
        c,
        Command::Store(StoreCommand::RevokePeerLease { .. })
    )));
    let out = m.handle(Millis(750), probe_result(B, addr, ProbeResult::Refused));
    assert!(has(&out, |c| matches!(
        c,
        Command::Store(StoreCommand::RevokePeerLease { .. })
    )));
}

fn revokes(out: &[Command]) -> Vec<(String, LeaseId)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Store(StoreCommand::RevokePeerLease { node_id, lease }) => {
                Some((node_id.clone(), *lease))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_identity_of_the_same_host_at_the_verified_address_proves_the_active_dead() {
    let addr = "10.0.0.2:8080";
    let restarted = "hostb_0009";
    // Straight after an answer, and after refusals shorter than the window (the restart took
    // less than the window): either way the next answer under another id is the proof.
    for refused_first in [false, true] {
        let mut m = standby_probing(300, B, addr);
        m.handle(
            Millis(10),
            view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
        );
        m.handle(
            Millis(20),
            probe_result(B, addr, ProbeResult::Answered { node_id: B.into() }),
        );
        if refused_first {
            let out = m.handle(Millis(1_020), probe_result(B, addr, ProbeResult::Refused));
            assert!(revokes(&out).is_empty(), "{out:?}");
        }
        let out = m.handle(
            Millis(1_100),
            probe_result(
                B,
                addr,
                ProbeResult::Answered {
                    node_id: restarted.into(),
                },
            ),
        );
        assert_eq!(revokes(&out), vec![(B.to_owned(), 0xb)], "{out:?}");
        let warned = logs(&out);
        assert!(
            warned.iter().any(|(level, text)| *level == LogLevel::Warn
                && text
                    == &format!(
                        "core node '{restarted}' answers at {addr}, where active core node '{B}' answered before: its process is gone; revoking its lease"
                    )),
            "{warned:?}"
        );
        // Once: no more probes of that lease, and a late answer changes nothing.
        let out = m.handle(Millis(1_400), Event::Tick);
        assert!(
            !has(&out, |c| matches!(
                c,
                Command::Local(LocalCommand::Probe { .. })
            )),
            "{out:?}"
        );
        let out = m.handle(
            Millis(1_500),
            probe_result(
                B,
                addr,
                ProbeResult::Answered {
                    node_id: restarted.into(),
                },
            ),
        );
        assert!(revokes(&out).is_empty(), "{out:?}");
        // The restarted node's own key is behind ours: once B's lease is gone, ME leads.
        let out = m.handle(
            Millis(1_510),
            view(14, vec![cand(ME, 12, 0xa), cand(restarted, 13, 0x9)]),
        );
        assert!(starts(&out), "{out:?}");
    }
}

#[test]
fn other_identities_prove_nothing_unless_the_address_was_verified_and_of_the_same_host() {
    let addr = "10.0.0.2:8080";
    let answer = |id: &str| ProbeResult::Answered { node_id: id.into() };
    // Never verified: another id of B's host proves nothing.
    let mut m = standby_probing(300, B, addr);
    m.handle(
        Millis(10),
        view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    let out = m.handle(Millis(20), probe_result(B, addr, answer("hostb_0009")));
    assert!(revokes(&out).is_empty(), "{out:?}");
    // Verified, then answered by another host (the address moved) or by this very node (the
    // address leads here): no proof, and the address is no longer verified, so refusals that
    // follow prove nothing either.
    for other in [C, ME] {
        let mut m = standby_probing(300, B, addr);
        m.handle(
            Millis(10),
            view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
        );
        m.handle(Millis(20), probe_result(B, addr, answer(B)));
        let out = m.handle(Millis(220), probe_result(B, addr, answer(other)));
        assert!(revokes(&out).is_empty(), "{other}: {out:?}");
        assert_eq!(
            m.snapshot(Millis(221)).crash_probe.map(|p| p.verified),
            Some(false)
        );
        for i in 0..10u64 {
            let out = m.handle(
                Millis(300 + i * 100),
                probe_result(B, addr, ProbeResult::Refused),
            );
            assert!(revokes(&out).is_empty(), "{other}: {out:?}");
        }
    }
    // Timeouts around a restart still prove nothing: verified, timeouts, then B answers again.
    let mut m = standby_probing(300, B, addr);
    m.handle(
        Millis(10),
        view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    m.handle(Millis(20), probe_result(B, addr, answer(B)));
    for i in 0..10u64 {
        let out = m.handle(
            Millis(300 + i * 900),
            probe_result(B, addr, ProbeResult::Timeout),
        );
        assert!(revokes(&out).is_empty(), "{out:?}");
    }
    let out = m.handle(Millis(9_500), probe_result(B, addr, answer(B)));
    assert!(revokes(&out).is_empty(), "{out:?}");
}

#[test]
fn loopback_addresses_are_probed_only_from_the_same_host() {
    let mut m = standby_probing(300, B, "127.0.0.1:8080");
    let out = m.handle(
        Millis(10),
        view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    assert!(
        !has(&out, |c| matches!(
            c,
            Command::Local(LocalCommand::Probe { .. })
        )),
        "{out:?}"
    );
    let same_host = "hosta_0009";
    let mut m = standby_probing(300, same_host, "127.0.0.1:8080");
    let out = m.handle(
        Millis(10),
        view(12, vec![cand(same_host, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    assert!(has(&out, |c| matches!(
        c,
        Command::Local(LocalCommand::Probe { .. })
    )));
    // Zero window: no probing at all.
    let mut m = standby_probing(0, B, "10.0.0.2:8080");
    let out = m.handle(
        Millis(10),
        view(12, vec![cand(B, 10, 0xb), cand(ME, 12, 0xa)]),
    );
    assert!(!has(&out, |c| matches!(
        c,
        Command::Local(LocalCommand::Probe { .. })
    )));
    assert!(is_loopback("[::1]:80") && is_loopback("localhost:1") && !is_loopback("10.1.1.1:80"));
}

#[test]
fn active_without_manager_resigns_only_if_a_standby_reaches_it() {
    let mut m = active_three();
    let mut b = rec(B);
    b.manager_reachable = false;
    let mut c = rec(C);
    c.manager_reachable = false;
    m.handle(Millis(10), Event::NodeRecords(vec![b, c.clone()]));
    m.handle(Millis(1_000), Event::ManagerReachable(false));
    let out = keep(&mut m, 16_100);
    assert!(stops(&out).is_none(), "{out:?}");
    c.manager_reachable = true;
    let out = m.handle(Millis(16_200), Event::NodeRecords(vec![rec(B), c]));
    // First one more attempt of its own, at once.
    assert!(stops(&out).is_none(), "{out:?}");
    assert!(out.contains(&Command::Local(LocalCommand::RetryManager { retry: 1 })));
    let out = m.handle(Millis(16_300), Event::ManagerRetryFailed { retry: 1 });
    let resign = pos(&out, |c| {
        *c == Command::Store(StoreCommand::Resign { lease: 0xa })
    });
    let stop = pos(&out, |c| {
        matches!(
            c,
            Command::Local(LocalCommand::StopLeaderWork {
                reason: StopReason::ManagerUnreachable,
                ..
            })
        )
    });
    assert!(resign < stop);
}

#[test]
fn manager_grace_counts_from_the_start_of_leadership_and_resets_on_success() {
    let mut m = active_three();
    m.handle(Millis(10), Event::ManagerReachable(false));
    keep(&mut m, 14_000);
    m.handle(Millis(14_000), Event::ManagerReachable(true));
    m.handle(Millis(14_500), Event::ManagerReachable(false));
    let out = keep(&mut m, 16_000);
    assert!(stops(&out).is_none());
    let out = keep(&mut m, 29_400);
    assert!(stops(&out).is_none());
    let out = keep(&mut m, 29_500);
    assert!(out.contains(&Command::Local(LocalCommand::RetryManager { retry: 1 })));
    let out = m.handle(Millis(29_600), Event::ManagerRetryFailed { retry: 1 });
    assert_eq!(stops(&out), Some(StopReason::ManagerUnreachable));
}

/// The manager was down for everyone and came back; the standby's check reached it first
/// while the active node slept in its back-off. The active node dials at once and keeps the
/// role when that gets through.
#[test]
fn a_manager_outage_that_hit_everyone_moves_no_role() {
    let mut m = active_three();
    let mut b = rec(B);
    b.manager_reachable = false;
    let mut c = rec(C);
    c.manager_reachable = false;
    m.handle(Millis(10), Event::NodeRecords(vec![b.clone(), c]));
    m.handle(Millis(1_000), Event::ManagerReachable(false));
    let out = keep(&mut m, 66_000);
    assert!(stops(&out).is_none(), "{out:?}");
    assert!(!has(&out, |c| matches!(
        c,
        Command::Local(LocalCommand::RetryManager { .. })
    )));
    // The manager is back: the standby's check gets there first.
    let out = m.handle(Millis(66_100), Event::NodeRecords(vec![b.clone(), rec(C)]));
    assert!(stops(&out).is_none(), "{out:?}");
    assert!(out.contains(&Command::Local(LocalCommand::RetryManager { retry: 1 })));
    assert!(
        logs(&out).contains(&(
            LogLevel::Warn,
            format!("cannot reach the manager for 65100 ms while core node '{C}' can: trying once more at once before handing over")
        )),
        "{out:?}"
    );
    // Asked once, not at every event.
    let out = m.handle(Millis(66_150), Event::Tick);
    assert!(!has(&out, |c| matches!(
        c,
        Command::Local(LocalCommand::RetryManager { .. })
    )));
    // A failure of an attempt begun before the request proves nothing.
    let out = m.handle(Millis(66_160), Event::ManagerRetryFailed { retry: 0 });
    assert!(stops(&out).is_none(), "{out:?}");
    // The fresh attempt gets through.
    let out = m.handle(Millis(66_200), Event::ManagerReachable(true));
    assert!(stops(&out).is_none(), "{out:?}");
    let out = keep(&mut m, 200_000);
    assert!(stops(&out).is_none(), "{out:?}");
    assert_eq!(m.term(), Some(10));
}

/// A retry whose outcome never comes back does not keep the node in place for ever.
#[test]
fn a_retry_without_an_outcome_hands_over_after_its_wait() {
    let mut m = active_three();
    m.handle(Millis(1_000), Event::ManagerReachable(false));
    let out = keep(&mut m, 16_000);
    assert!(out.contains(&Command::Local(LocalCommand::RetryManager { retry: 1 })));
    assert!(has(
        &out,
        |c| matches!(c, Command::Local(LocalCommand::SetTimer { at }) if *at <= Millis(16_000 + MANAGER_RETRY_WAIT_MS))
    ));
    let out = keep(&mut m, 16_000 + MANAGER_RETRY_WAIT_MS - 100);
    assert!(stops(&out).is_none(), "{out:?}");
    let out = m.handle(Millis(16_000 + MANAGER_RETRY_WAIT_MS), Event::Tick);
    assert_eq!(stops(&out), Some(StopReason::ManagerUnreachable), "{out:?}");
}

fn primary(node: &str) -> NodeRecord {
    let mut r = rec(node);
    r.is_primary = true;
    r
}

/// Keep-alives every 2 s from the last one up to `t`; returns the commands of all of them.
fn keep(m: &mut Machine, t: u64) -> Vec<Command> {
    let from = m
        .snapshot(Millis(0))
        .lease_remaining_ms
        .map_or(0, |r| r.saturating_sub(10_000));
    let mut out = Vec::new();
    let mut at = from + 2_000;
    while at < t {
        out.extend(m.handle(
            Millis(at),
            Event::KeepAliveAcked {
                lease: 0xa,
                sent_at: Millis(at),
            },
        ));
        at += 2_000;
    }
    out.extend(m.handle(
        Millis(t),
        Event::KeepAliveAcked {
            lease: 0xa,
            sent_at: Millis(t),
        },
    ));
    out
}

#[test]
fn a_healthy_primary_takes_over_after_the_preempt_delay() {
    let mut m = active_three();
    m.handle(Millis(100), Event::NodeRecords(vec![primary(B), rec(C)]));
    let out = keep(&mut m, 9_000);
    assert!(stops(&out).is_none());
    let out = keep(&mut m, 10_100);
    // B is directly behind: hand over at once.
    assert_eq!(stops(&out), Some(StopReason::Preempted), "{out:?}");
    assert!(
        pos(&out, |c| *c
            == Command::Store(StoreCommand::Resign { lease: 0xa }))
            < pos(&out, |c| matches!(
                c,
                Command::Local(LocalCommand::StopLeaderWork { .. })
            ))
    );
}

#[test]
fn an_unhealthy_primary_resets_its_delay() {
    let mut m = active_three();
    m.handle(Millis(100), Event::NodeRecords(vec![primary(B), rec(C)]));
    let mut sick = primary(B);
    sick.manager_reachable = false;
    sick.healthy = false;
    m.handle(Millis(5_000), Event::NodeRecords(vec![sick, rec(C)]));
    m.handle(Millis(6_000), Event::NodeRecords(vec![primary(B), rec(C)]));
    let out = keep(&mut m, 15_000);
    assert!(stops(&out).is_none());
    let out = keep(&mut m, 16_000);
    assert_eq!(stops(&out), Some(StopReason::Preempted));
}

#[test]
fn flap_budget_pins_the_active_and_warns() {
    let mut c = cfg(ME);
    c.max_transitions = 1;
    c.preempt_delay_ms = 1_000;
    let mut m = booted(c, 0xa, 10);
    m.handle(Millis(2), Event::ManagerReachable(true));
    m.handle(Millis(3), Event::NodeRecords(vec![primary(B)]));
    m.handle(
        Millis(4),
        view(11, vec![cand(ME, 10, 0xa), cand(B, 11, 0xb)]),
    );
    let out = keep(&mut m, 1_100);
    assert_eq!(stops(&out), Some(StopReason::Preempted));
    // The primary leaves; this node leads again, the primary comes back.
    m.handle(
        Millis(1_200),
        Event::OwnKeyCreated {
            lease: 0xa,
            attempt: 2,
            create_revision: 12,
        },
    );
    let out = m.handle(Millis(1_300), view(13, vec![cand(ME, 12, 0xa)]));
    assert!(starts(&out));
    m.handle(
        Millis(1_400),
        view(14, vec![cand(ME, 12, 0xa), cand(B, 14, 0xb)]),
    );
    let out = keep(&mut m, 3_000);
    assert!(stops(&out).is_none());
    assert!(
        logs(&out)
            .iter()
            .any(|(l, t)| *l == LogLevel::Warn && t.contains("flap budget")),
        "{out:?}"
    );
    let out = keep(&mut m, 4_000);
    assert!(logs(&out).is_empty(), "warned once: {out:?}");
    // An hour after the first preemption the budget is back.
    for t in (5_000..3_601_200).step_by(3_000) {
        let out = keep(&mut m, t);
        assert!(stops(&out).is_none());
    }
    let out = keep(&mut m, 3_601_200);
    assert_eq!(stops(&out), Some(StopReason::Preempted));
}

#[test]
fn primaries_rank_equally_and_warn() {
    let mut c = cfg(ME);
    c.is_primary = true;
    let mut m = booted(c, 0xa, 10);
    m.handle(Millis(2), Event::ManagerReachable(true));
    let out = m.handle(Millis(3), Event::NodeRecords(vec![primary(B)]));
    assert!(logs(&out)
        .iter()
        .any(|(l, t)| *l == LogLevel::Warn && t.contains("also configured as primary")));
    m.handle(
        Millis(4),
        view(11, vec![cand(ME, 10, 0xa), cand(B, 11, 0xb)]),
    );
    let out = keep(&mut m, 60_000);
    assert!(stops(&out).is_none());
}

#[test]
fn fenced_rejection_and_lost_lease_step_down_and_rejoin() {
    let mut m = active_three();
    let out = m.handle(Millis(100), Event::FencedWriteRejected { term: 9 });
    assert!(stops(&out).is_none(), "stale term ignored");
    let out = m.handle(Millis(100), Event::FencedWriteRejected { term: 10 });
    assert_eq!(stops(&out), Some(StopReason::FencedWriteRejected));
    assert!(out.contains(&Command::Store(StoreCommand::GrantLease)));
    let mut m = active_three();
    let out = m.handle(Millis(100), Event::LeaseLost { lease: 0xa });
    assert_eq!(stops(&out), Some(StopReason::LeaseLost));
    assert!(out.contains(&Command::Store(StoreCommand::GrantLease)));
}

#[test]
fn a_stale_key_of_a_given_up_lease_is_revoked_again_on_each_fresh_view() {
    // Active under lease a; the store becomes unreachable and the acting window ends.
    let mut m = active_three();
    let out = m.handle(Millis(60_000), Event::Tick);
    assert_eq!(stops(&out), Some(StopReason::LeaseExpiring));
    let revokes = |out: &[Command]| {
        out.iter()
            .filter(|c| matches!(c, Command::Store(StoreCommand::RevokeLease { lease: 0xa })))
            .count()
    };
    // Revoked once by the step-down, once more because the view still shows the key: that
    // second revoke is queued behind the new grant, i.e. runs once the store answers again.
    assert_eq!(revokes(&out), 2, "{out:?}");
    let g = pos(&out, |c| {
        matches!(c, Command::Store(StoreCommand::GrantLease))
    });
    let last = out
        .iter()
        .rposition(|c| matches!(c, Command::Store(StoreCommand::RevokeLease { lease: 0xa })))
        .unwrap();
    assert!(g < last, "{out:?}");
    // Nothing new from the store: no repeated revokes.
    assert_eq!(revokes(&m.handle(Millis(60_100), Event::Tick)), 0);
    // The store is back (watchers list again) and the stale key still leads: revoke again.
    let stale = vec![cand(ME, 10, 0xa), cand(B, 11, 0xb), cand(C, 12, 0xc)];
    let out = m.handle(Millis(61_000), view(20, stale.clone()));
    assert_eq!(revokes(&out), 1, "{out:?}");
    assert!(!starts(&out));
    assert_eq!(revokes(&m.handle(Millis(61_001), Event::Tick)), 0);
    // Still there on the next view (the revoke failed again): once more.
    let out = m.handle(Millis(62_000), view(20, stale));
    assert_eq!(revokes(&out), 1, "{out:?}");
    // Our new lease's key is never taken for a stale one.
    m.handle(
        Millis(62_001),
        Event::LeaseGranted {
            lease: 0xd,
            sent_at: Millis(62_001),
        },
    );
    let out = m.handle(
        Millis(62_002),
        view(
            21,
            vec![cand(B, 11, 0xb), cand(C, 12, 0xc), cand(ME, 21, 0xd)],
        ),
    );
    assert!(
        !has(&out, |c| matches!(
            c,
            Command::Store(StoreCommand::RevokeLease { .. })
        )),
        "{out:?}"
    );
}

#[test]
fn a_deleted_own_key_is_noticed_and_recreated() {
    let mut m = active_three();
    let out = m.handle(
        Millis(100),
        view(20, vec![cand(B, 11, 0xb), cand(C, 12, 0xc)]),
    );
    assert_eq!(stops(&out), Some(StopReason::KeyDeleted));
    assert!(has(&out, |c| matches!(
        c,
        Command::Store(StoreCommand::Campaign { lease: 0xa, .. })
    )));
    // A view older than our key does not count.
    let mut m = booted(cfg(ME), 0xa, 10);
    let out = m.handle(Millis(5), view(9, vec![cand(B, 9, 0xb)]));
    assert!(!has(&out, |c| matches!(
        c,
        Command::Store(StoreCommand::Campaign { .. })
    )));
}

#[test]
fn records_are_published_on_change_only() {
    let mut m = booted(cfg(ME), 0xa, 10);
    let out = m.handle(Millis(5), Event::ManagerReachable(true));
    let record = out.iter().find_map(|c| match c {
        Command::Store(StoreCommand::PublishRecord { record, .. }) => Some(record.clone()),
        _ => None,
    });
    let record = record.unwrap();
    assert!(record.healthy && record.manager_reachable && !record.is_primary);
    assert_eq!(record.address.as_deref(), Some("hosta_0001.example:8080"));
    let out = m.handle(Millis(6), Event::Tick);
    assert!(!has(&out, |c| matches!(
        c,
        Command::Store(StoreCommand::PublishRecord { .. })
    )));
}

#[test]
fn a_stale_campaign_answer_is_not_taken_for_the_current_one() {
    let mut m = booted(cfg(ME), 0xa, 10);
    m.handle(Millis(2), Event::Pause);
    m.handle(Millis(3), Event::Resume);
    // Answer of attempt 1 arrives late while attempt 2 is in flight.
    let out = m.handle(
        Millis(4),
        Event::OwnKeyCreated {
            lease: 0xa,
            attempt: 1,
            create_revision: 10,
        },
    );
    assert!(out.contains(&Command::Store(StoreCommand::Resign { lease: 0xa })));
    m.handle(
        Millis(5),
        Event::OwnKeyCreated {
            lease: 0xa,
            attempt: 2,
            create_revision: 13,
        },
    );
    let out = m.handle(Millis(6), view(13, vec![cand(ME, 13, 0xa)]));
    assert!(
        has(&out, |c| matches!(
            c,
            Command::Local(LocalCommand::StartLeaderWork { term: 13, .. })
        )),
        "{out:?}"
    );
}

#[test]
fn a_returning_primary_counts_down_and_says_when_it_took_the_role_back() {
    let mut c = cfg(ME);
    c.is_primary = true;
    let mut m = booted(c, 0xa, 12);
    m.handle(Millis(2), Event::ManagerReachable(true));
    let mut active = rec(B);
    active.role = Role::Active;
    m.handle(Millis(3), Event::NodeRecords(vec![active, primary(ME)]));
    let out = m.handle(
        Millis(4),
        view(12, vec![cand(B, 11, 0xb), cand(ME, 12, 0xa)]),
    );
    assert!(
        logs(&out).contains(&(
            LogLevel::Info,
            format!("primary: taking the role back from core node '{B}' in 10 s (server_ha_preempt_delay)")
        )),
        "{out:?}"
    );
    assert_eq!(m.snapshot(Millis(4_004)).preempt_in_ms, Some(6_000));
    // Said once, not at every event.
    let out = keep(&mut m, 6_000);
    assert!(
        logs(&out).iter().all(|(_, t)| !t.contains("primary:")),
        "{out:?}"
    );
    // The active node hands over: this node leads.
    let out = m.handle(Millis(10_050), view(13, vec![cand(ME, 12, 0xa)]));
    assert!(starts(&out));
    assert!(
        logs(&out).contains(&(
            LogLevel::Info,
            "primary: took the role back, 10046 ms after the countdown began".into()
        )),
        "{out:?}"
    );
    assert_eq!(m.snapshot(Millis(10_051)).preempt_in_ms, None);
}

#[test]
fn the_active_node_announces_the_hand_over_to_a_returning_primary() {
    let mut m = active_three();
    let out = m.handle(Millis(100), Event::NodeRecords(vec![primary(B), rec(C)]));
    assert!(
        logs(&out).contains(&(
            LogLevel::Info,
            format!(
                "primary core node '{B}' is healthy: handing the active role over to it in 10 s"
            )
        )),
        "{out:?}"
    );
    assert_eq!(m.snapshot(Millis(2_100)).preempt_in_ms, Some(8_000));
    let out = keep(&mut m, 10_100);
    assert_eq!(stops(&out), Some(StopReason::Preempted));
    assert!(logs(&out).iter().any(|(_, t)| t
        == &format!(
            "primary core node '{B}' has been healthy for 10 s: handing the active role over to it"
        )));
}

#[test]
fn a_switchover_on_the_primary_holds_off_its_preemption_for_the_stated_time() {
    // The primary, active, is switched away from.
    let mut c = cfg(ME);
    c.is_primary = true;
    let mut p = booted(c, 0xa, 10);
    p.handle(Millis(2), Event::ManagerReachable(true));
    p.handle(Millis(2), Event::NodeRecords(vec![rec(B)]));
    let out = p.handle(
        Millis(3),
        view(11, vec![cand(ME, 10, 0xa), cand(B, 11, 0xb)]),
    );
    assert!(starts(&out));
    let out = p.handle(Millis(100), Event::Switchover { to: None });
    assert_eq!(stops(&out), Some(StopReason::Switchover));
    // The hold is published before the key goes, so the successor sees it when elected.
    let published_held = pos(
        &out,
        |c| matches!(c, Command::Store(StoreCommand::PublishRecord { record, .. }) if record.preempt_hold),
    );
    assert!(
        published_held
            < pos(&out, |c| matches!(
                c,
                Command::Store(StoreCommand::Resign { .. })
            )),
        "{out:?}"
    );
    assert!(
        logs(&out).contains(&(
            LogLevel::Info,
            "primary: not taking the role back for 60 min after this switchover (or until this node restarts); `autogate ha pause` holds it away longer".into()
        )),
        "{out:?}"
    );
    let held = |out: &[Command]| {
        out.iter().find_map(|c| match c {
            Command::Store(StoreCommand::PublishRecord { record, .. }) => Some(record.preempt_hold),
            _ => None,
        })
    };
    assert_eq!(held(&out), Some(true), "{out:?}");
    assert_eq!(
        p.snapshot(Millis(1_100)).preempt_hold_ms,
        Some(SWITCHOVER_HOLD_MS - 1_000)
    );
    p.handle(
        Millis(120),
        Event::OwnKeyCreated {
            lease: 0xa,
            attempt: 2,
            create_revision: 12,
        },
    );
    // No countdown while held.
    let mut active = rec(B);
    active.role = Role::Active;
    p.handle(Millis(150), Event::NodeRecords(vec![active]));
    let out = p.handle(
        Millis(200),
        view(12, vec![cand(B, 11, 0xb), cand(ME, 12, 0xa)]),
    );
    assert!(
        logs(&out)
            .iter()
            .all(|(_, t)| !t.contains("taking the role back")),
        "{out:?}"
    );

    // The new active node does not hand the role back to a held primary.
    let mut b = active_three();
    let mut held_primary = primary(B);
    held_primary.preempt_hold = true;
    b.handle(Millis(100), Event::NodeRecords(vec![held_primary, rec(C)]));
    let out = keep(&mut b, 60_000);
    assert!(stops(&out).is_none(), "{out:?}");
    assert_eq!(b.snapshot(Millis(60_000)).preempt_in_ms, None);

    // The hold ends after its time (a timer is set for it): the primary says so, publishes it
    // and counts down.
    for t in (2_000..=SWITCHOVER_HOLD_MS).step_by(2_000) {
        let out = p.handle(
            Millis(t),
            Event::KeepAliveAcked {
                lease: 0xa,
                sent_at: Millis(t),
            },
        );
        assert_eq!(held(&out), None, "{out:?}");
    }
    let out = p.handle(Millis(SWITCHOVER_HOLD_MS + 100), Event::Tick);
    assert_eq!(held(&out), Some(false), "{out:?}");
    let said: Vec<String> = logs(&out).into_iter().map(|(_, t)| t).collect();
    assert!(
        said.iter()
            .any(|t| t.contains("the hold after the switchover ended")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|t| t.contains("taking the role back from core node")),
        "{said:?}"
    );
}

/// A standby's reachability said before the active node's failure began is stale: it counts
/// only once it has stood for FRESH_REACHABILITY_MS of that failure (standbys check every
/// second meanwhile), or when it became true within it.
#[test]
fn only_reachability_said_within_the_failure_counts() {
    let mut c = cfg(ME);
    c.connect_grace_ms = 1_000;
    let mut m = booted(c, 0xa, 10);
    m.handle(Millis(2), Event::ManagerReachable(true));
    m.handle(Millis(2), Event::NodeRecords(vec![rec(B)]));
    let out = m.handle(
        Millis(3),
        view(11, vec![cand(ME, 10, 0xa), cand(B, 11, 0xb)]),
    );
    assert!(starts(&out));
    m.handle(Millis(1_000), Event::ManagerReachable(false));
    // Past the grace, but B's word is from before the failure.
    let out = keep(&mut m, 2_900);
    assert!(
        !has(&out, |c| matches!(
            c,
            Command::Local(LocalCommand::RetryManager { .. })
        )),
        "{out:?}"
    );
    // B checked again and failed too (the manager is down for everyone).
    let mut b = rec(B);
    b.manager_reachable = false;
    b.healthy = false;
    m.handle(Millis(2_950), Event::NodeRecords(vec![b]));
    let out = keep(&mut m, 20_000);
    assert!(
        !has(&out, |c| matches!(
            c,
            Command::Local(LocalCommand::RetryManager { .. })
        )),
        "{out:?}"
    );
    // The manager is back and B says so first: that is within the failure, so it counts at
    // once — and this node tries again before anything else.
    let out = m.handle(Millis(20_100), Event::NodeRecords(vec![rec(B)]));
    assert!(
        out.contains(&Command::Local(LocalCommand::RetryManager { retry: 1 })),
        "{out:?}"
    );
}
