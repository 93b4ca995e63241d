//! Sweeps many seeds of the simulator and prints any that fail to converge:
//! `cargo run --release -p mycel-tests --example simcheck -- [mesh|relay] FIRST COUNT`.
use mycel_tests::sim::{SimConfig, Topology, run};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let topo = if args.get(1).map(String::as_str) == Some("relay") {
        Topology::Relay
    } else {
        Topology::Mesh
    };
    let first: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let count: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let (mut ok, mut worst) = (0, 0);
    for seed in first..first + count {
        let r = run(
            SimConfig {
                topology: topo,
                crashes: 3,
                partitions: 2,
                ..SimConfig::default()
            },
            seed,
        );
        let same = r.contents.windows(2).all(|w| w[0] == w[1]);
        if r.converged && same && r.equivocations == 0 {
            ok += 1;
            worst = worst.max(r.settle_ms);
        } else {
            println!(
                "FAIL {topo:?} seed {seed}: {:?} {:?}",
                r.reject_reasons, r.vectors
            );
        }
    }
    println!("{topo:?}: {ok}/{count} converged; slowest settle {worst} ms");
}
