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

/// Eight peers with direct links chosen by gossip: the links stay within
/// the active view's bound, the peers converge, and once the links are
/// open the document's bytes travel over them, not the relay.
#[test]
fn gossip_mesh_carries_changes_over_bounded_direct_links() {
    let cfg = SimConfig {
        nodes: 8,
        topology: Topology::Gossip,
        edits: 200,
        edit_window_ms: 120_000,
        loss: 0.0,
        duplicate: 0.0,
        delay_ms: (5, 40),
        crashes: 0,
        partitions: 0,
        measure_from_ms: 30_000,
        ..SimConfig::default()
    };
    let r = run(cfg, 3);
    assert_converged(&r);
    let direct = r.bytes_direct as f64 / (r.bytes_direct + r.bytes_relay) as f64;
    eprintln!(
        "gossip mesh: first link at {:?} ms, {} links opened, max degree {}, \
         bytes direct {} relay {} ({:.1} % direct), settle {} ms",
        r.first_link_ms,
        r.links_opened,
        r.max_degree,
        r.bytes_direct,
        r.bytes_relay,
        direct * 100.0,
        r.settle_ms
    );
    assert!(r.max_degree <= 5, "{r:?}");
    assert!(r.links_opened >= 4, "{r:?}");
    assert!(direct >= 0.9, "only {:.1} % direct", direct * 100.0);
}

#[test]
fn gossip_mesh_converges_under_loss_partitions_and_crashes() {
    let cfg = SimConfig {
        nodes: 8,
        topology: Topology::Gossip,
        ..SimConfig::default()
    };
    let r = run(cfg, 4);
    assert_converged(&r);
    assert!(r.crashes > 0 && r.links_opened > 0, "{r:?}");
    eprintln!(
        "gossip mesh with faults: {} links opened, settle {} ms",
        r.links_opened, r.settle_ms
    );
}
