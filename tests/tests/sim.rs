//! Convergence of the simulator's replicas under every kind of fault.

use mycel_tests::sim::{SimConfig, SimReport, Topology, run};

fn assert_converged(r: &SimReport) {
    assert!(r.converged, "no convergence: {r:?}");
    assert!(r.heads.windows(2).all(|w| w[0] == w[1]), "heads differ");
    assert!(
        r.contents.windows(2).all(|w| w[0] == w[1]),
        "contents differ: {:?}",
        r.contents
    );
    assert_eq!(r.equivocations, 0);
}

#[test]
fn mesh_converges_under_loss_duplication_reordering_partitions_and_crashes() {
    let r = run(SimConfig::default(), 1);
    assert_converged(&r);
    assert!(r.crashes > 0 && r.dropped > 0 && r.duplicated > 0, "{r:?}");
    eprintln!(
        "mesh: settle {} ms, {} messages, {} dropped",
        r.settle_ms, r.messages, r.dropped
    );
}

#[test]
fn relay_converges_under_loss_duplication_reordering_partitions_and_crashes() {
    let cfg = SimConfig {
        topology: Topology::Relay,
        ..SimConfig::default()
    };
    let r = run(cfg, 2);
    assert_converged(&r);
    assert!(r.crashes > 0, "{r:?}");
}
