//! Unit and property tests of the history: the ring, the caps and the memory bound.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::registry::State;
use crate::registry::table::{Activity, Figures};

/// An instance in a sample: id (its address is derived), connections, state.
type Inst = (String, u64, State);

fn figures(instances: &[Inst], hand_outs: u64) -> Figures {
    let mut f = Figures {
        activity: Activity {
            hand_outs,
            shed_hints: 0,
            shed_connections: 0,
        },
        ..Figures::default()
    };
    for (_, connections, state) in instances {
        match state {
            State::Up => f.up += 1,
            State::Draining => f.draining += 1,
            State::Expired => f.expired += 1,
        }
        if *state != State::Expired {
            f.connections += connections;
        }
    }
    f
}

fn record(h: &History, at: u64, fleet: &[(String, Vec<Inst>)]) {
    h.record(at, |tick| {
        for (name, instances) in fleet {
            let mut service = tick.service(name);
            for (id, connections, state) in instances {
                service.instance(id, &format!("{id}.local:6666"), *connections, *state);
            }
            service.finish(&figures(instances, 1));
        }
    });
}

fn up(id: &str, connections: u64) -> Inst {
    (id.to_owned(), connections, State::Up)
}

fn history(samples: usize) -> History {
    History::new(Duration::from_secs(5), samples)
}

#[test]
fn a_scale_out_converging_and_a_drain_are_in_the_series() {
    let h = history(4);
    let svc = |list: Vec<Inst>| vec![("svc".to_owned(), list)];
    record(&h, 1000, &svc(vec![up("a", 100), up("b", 100)]));
    record(&h, 2000, &svc(vec![up("a", 80), up("b", 80), up("c", 0)]));
    record(&h, 3000, &svc(vec![up("a", 70), up("b", 70), up("c", 60)]));
    let drained = ("a".to_owned(), 10, State::Draining);
    record(&h, 4000, &svc(vec![drained, up("b", 90), up("c", 90)]));
    record(&h, 5000, &svc(vec![up("b", 100), up("c", 100)]));
    h.assert_aligned();

    let snap = h.snapshot(None);
    assert_eq!(snap.samples, 4);
    assert_eq!(
        snap.times_ms,
        vec![2000, 3000, 4000, 5000],
        "the oldest went"
    );
    let s = &snap.services[0];
    assert_eq!(s.name, "svc");
    assert_eq!(
        s.connections,
        vec![Some(160), Some(200), Some(190), Some(200)]
    );
    assert_eq!(s.up, vec![Some(3), Some(3), Some(2), Some(2)]);
    assert_eq!(s.draining, vec![Some(0), Some(0), Some(1), Some(0)]);
    assert_eq!(s.hand_outs, vec![Some(1); 4]);
    let by_id = |id: &str| s.instances.iter().find(|i| i.id == id).expect(id);
    assert_eq!(
        by_id("a").connections,
        vec![Some(80), Some(70), Some(10), None]
    );
    assert_eq!(by_id("a").states, "uud-");
    assert_eq!(
        by_id("c").connections,
        vec![Some(0), Some(60), Some(90), Some(100)]
    );
    assert_eq!(by_id("c").address, "c.local:6666");
    let addresses: Vec<&str> = s.instances.iter().map(|i| i.address.as_str()).collect();
    assert_eq!(addresses, ["a.local:6666", "b.local:6666", "c.local:6666"]);
    assert_eq!(h.snapshot(Some("nope")).services, vec![]);
    assert_eq!(h.snapshot(Some("svc")).services.len(), 1);
}

#[test]
fn a_late_service_is_absent_before_it_came_and_a_gone_one_is_dropped_after_a_window() {
    let h = history(3);
    let one = |name: &str| vec![(name.to_owned(), vec![up("x", 5)])];
    record(&h, 1, &one("early"));
    record(&h, 2, &[]);
    record(&h, 3, &one("late"));
    h.assert_aligned();
    let snap = h.snapshot(None);
    let names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["early", "late"]);
    assert_eq!(snap.services[0].up, vec![Some(1), None, None]);
    assert_eq!(snap.services[1].up, vec![None, None, Some(1)]);
    assert_eq!(snap.services[1].instances[0].states, "--u");
    // `early` has been absent for three samples, the whole window: dropped.
    record(&h, 4, &one("late"));
    h.assert_aligned();
    let names: Vec<String> = h
        .snapshot(None)
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["late"]);
}

#[test]
fn expired_instances_have_a_state_but_no_connections() {
    let h = history(2);
    let fleet = vec![("s".to_owned(), vec![("e".to_owned(), 40, State::Expired)])];
    record(&h, 1, &fleet);
    let snap = h.snapshot(None);
    assert_eq!(snap.services[0].instances[0].connections, vec![None]);
    assert_eq!(snap.services[0].instances[0].states, "e");
    assert_eq!(snap.services[0].connections, vec![Some(0)]);
    assert_eq!(snap.services[0].expired, vec![Some(1)]);
}

#[test]
fn services_and_instances_over_the_caps_are_counted_not_kept() {
    let h = history(2);
    let mut fleet = Vec::new();
    for s in 0..MAX_SERVICES + 6 {
        let n = if s == 0 {
            MAX_INSTANCES_PER_SERVICE + 8
        } else {
            3
        };
        let instances = (0..n)
            .map(|k| up(&format!("s{s}-i{k}"), k as u64))
            .collect();
        fleet.push((format!("svc-{s:03}"), instances));
    }
    record(&h, 1, &fleet);
    h.assert_aligned();
    let snap = h.snapshot(None);
    assert_eq!(snap.services.len(), MAX_SERVICES);
    assert_eq!(snap.untracked_services, 6);
    let first = &snap.services[0];
    assert_eq!(first.instances.len(), MAX_INSTANCES_PER_SERVICE);
    assert_eq!(first.untracked_instances, 8);
    // The service's totals still count every instance.
    assert_eq!(first.up, vec![Some((MAX_INSTANCES_PER_SERVICE + 8) as u64)]);
}

#[test]
fn the_total_instance_cap_holds_across_services() {
    let h = history(2);
    let per = MAX_INSTANCES_PER_SERVICE;
    let services = MAX_INSTANCES / per + 2;
    let fleet: Vec<(String, Vec<Inst>)> = (0..services)
        .map(|s| {
            let list = (0..per).map(|k| up(&format!("{s}-{k}"), 1)).collect();
            (format!("s{s:02}"), list)
        })
        .collect();
    record(&h, 1, &fleet);
    h.assert_aligned();
    let snap = h.snapshot(None);
    let tracked: usize = snap.services.iter().map(|s| s.instances.len()).sum();
    let untracked: u64 = snap.services.iter().map(|s| s.untracked_instances).sum();
    assert_eq!(tracked, MAX_INSTANCES);
    assert_eq!(untracked, (2 * per) as u64);
}

#[test]
fn a_new_instance_takes_the_place_of_the_one_gone_longest_when_full() {
    let h = history(10);
    let per = MAX_INSTANCES_PER_SERVICE;
    let fleet = |ids: &[String]| vec![("svc".to_owned(), ids.iter().map(|id| up(id, 1)).collect())];
    let mut ids: Vec<String> = (0..per).map(|k| format!("old-{k}")).collect();
    record(&h, 1, &fleet(&ids));
    // Two leave, one after the other; then two new ones come.
    ids.retain(|id| id != "old-3");
    record(&h, 2, &fleet(&ids));
    ids.retain(|id| id != "old-7");
    record(&h, 3, &fleet(&ids));
    ids.push("new-a".to_owned());
    record(&h, 4, &fleet(&ids));
    h.assert_aligned();
    let snap = h.snapshot(None);
    let kept: Vec<&str> = snap.services[0]
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    assert!(kept.contains(&"new-a") && !kept.contains(&"old-3") && kept.contains(&"old-7"));
    let new = snap.services[0]
        .instances
        .iter()
        .find(|i| i.id == "new-a")
        .expect("new-a");
    assert_eq!(new.states, "---u", "a fresh series, aligned");
    ids.push("new-b".to_owned());
    record(&h, 5, &fleet(&ids));
    let snap = h.snapshot(None);
    let kept: Vec<&str> = snap.services[0]
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    assert!(kept.contains(&"new-b") && !kept.contains(&"old-7"));
    assert_eq!(snap.services[0].untracked_instances, 0);
    ids.push("new-c".to_owned());
    record(&h, 6, &fleet(&ids));
    assert_eq!(
        h.snapshot(None).services[0].untracked_instances,
        1,
        "no room left"
    );
    h.assert_aligned();
}

#[test]
fn counts_saturate_instead_of_wrapping() {
    let h = history(1);
    let fleet = vec![("s".to_owned(), vec![up("big", u64::MAX)])];
    record(&h, 1, &fleet);
    let snap = h.snapshot(None);
    assert_eq!(
        snap.services[0].instances[0].connections,
        vec![Some(INSTANCE_CONNECTIONS_MAX)]
    );
    assert_eq!(snap.services[0].connections, vec![Some(u64::MAX)]);
}

#[test]
fn a_service_handed_over_twice_in_one_sample_keeps_the_first() {
    let h = history(3);
    h.record(1, |tick| {
        for connections in [5, 9] {
            let mut s = tick.service("s");
            s.instance("a", "a:1", connections, State::Up);
            s.finish(&figures(&[up("a", connections)], 0));
        }
        // One never finished: absent, still aligned.
        let mut t = tick.service("t");
        t.instance("b", "b:1", 1, State::Up);
    });
    h.assert_aligned();
    let snap = h.snapshot(Some("s"));
    assert_eq!(snap.services[0].connections, vec![Some(5)]);
    assert_eq!(snap.services[0].instances[0].connections, vec![Some(5)]);
}

#[test]
fn full_at_every_cap_it_holds_no_more_than_the_bound() {
    let samples = 8;
    let h = history(samples);
    let fleet: Vec<(String, Vec<Inst>)> = (0..MAX_SERVICES)
        .map(|s| {
            let list = (0..MAX_INSTANCES_PER_SERVICE)
                .map(|k| {
                    // Ids and addresses at their longest.
                    let id = format!("{s:02}{k:02}{}", "x".repeat(ID_MAX - 4));
                    (id, 1, State::Up)
                })
                .collect();
            (format!("{s:02}{}", "n".repeat(SERVICE_NAME_MAX - 2)), list)
        })
        .collect();
    for at in 0..2 * samples as u64 {
        h.record(at, |tick| {
            for (name, instances) in &fleet {
                let mut service = tick.service(name);
                for (id, c, state) in instances {
                    let address = format!("{id}{}", "a".repeat(ADDRESS_MAX - ID_MAX));
                    service.instance(id, &address, *c, *state);
                }
                service.finish(&figures(instances, 0));
            }
        });
    }
    h.assert_aligned();
    let held = h.held_bytes();
    let bound = bound_bytes(samples);
    assert!(held <= bound, "{held} > {bound}");
    assert!(
        held * 10 >= bound * 9,
        "the bound is tight: {held} of {bound}"
    );
}

/// `1816432` as `1,816,432`.
fn grouped(n: usize) -> String {
    let digits: Vec<char> = n.to_string().chars().collect();
    let mut out = String::new();
    for (k, c) in digits.iter().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(*c);
    }
    out
}

#[test]
fn the_readme_states_the_bound_at_the_defaults_and_at_most() {
    let text = include_str!("../../README.md");
    let (defaults, most) = (grouped(bound_bytes(360)), grouped(bound_bytes(MAX_SAMPLES)));
    assert!(
        text.contains(&format!("{defaults} bytes")) && text.contains(&format!("{most} bytes")),
        "README.md should state the history's bound: {defaults} bytes at the defaults \
         (360 samples), {most} bytes at {MAX_SAMPLES} samples"
    );
    assert_eq!(grouped(1_816_432), "1,816,432");
    assert_eq!(grouped(999), "999");
}

/// One step of a random workload: which services and instances are present.
fn arb_step() -> impl Strategy<Value = Vec<(u8, Vec<(u8, u16)>)>> {
    proptest::collection::vec(
        (
            0u8..80,
            proptest::collection::vec((0u8..40, any::<u16>()), 0..40),
        ),
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever comes and goes: every series stays aligned with the sample times,
    /// within the caps and within the bound, and the last sample says what was there.
    #[test]
    fn series_stay_aligned_and_bounded(
        samples in 1usize..12,
        steps in proptest::collection::vec(arb_step(), 1..30),
    ) {
        let h = history(samples);
        for (at, step) in steps.iter().enumerate() {
            let mut fleet: Vec<(String, Vec<Inst>)> = Vec::new();
            for (s, list) in step {
                let name = format!("s{s}");
                if fleet.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                let mut instances: Vec<Inst> = Vec::new();
                for (i, c) in list {
                    let id = format!("{name}-i{i}");
                    if !instances.iter().any(|x| x.0 == id) {
                        instances.push(up(&id, u64::from(*c)));
                    }
                }
                fleet.push((name, instances));
            }
            record(&h, at as u64, &fleet);
            h.assert_aligned();
            prop_assert!(h.held_bytes() <= bound_bytes(samples));
            let snap = h.snapshot(None);
            prop_assert_eq!(snap.times_ms.len(), (at + 1).min(samples));
            for service in &snap.services {
                let present = fleet.iter().find(|(n, _)| *n == service.name);
                let last_up = service.up.last().copied().flatten();
                prop_assert_eq!(last_up, present.map(|(_, l)| l.len() as u64));
                for instance in &service.instances {
                    let there = present.and_then(|(_, l)| l.iter().find(|x| x.0 == instance.id));
                    prop_assert_eq!(instance.connections.last().copied().flatten(), there.map(|x| x.1));
                }
            }
        }
    }
}
