//! The gossip simulator (`mycel_tests::gossip_sim`): one swarm of N peers,
//! one measured broadcast after the overlay has formed. The last line of
//! output is one JSON object (docs/gossip.md §4).

use std::time::Instant;

use clap::Parser;
use mycel_tests::gossip_sim::{GossipSimConfig, run};

/// Plays one gossip swarm deterministically and prints its figures.
#[derive(Parser)]
#[command(name = "gossip-sim")]
struct Args {
    /// Peers in the swarm.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..))]
    peers: u64,
    /// Seed of every random choice: a run is reproducible from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that a frame is lost, 0 ≤ P < 1.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    loss: f64,
    /// Share of peers that crash (and as many newcomers), around the
    /// measured broadcast, 0 ≤ R < 1.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    churn: f64,
    /// Also measure plain push gossip at fan-out 3 in the same run.
    #[arg(long)]
    baseline: bool,
    /// Run every frame through the real codec (Ed25519 + AES-GCM; slow,
    /// for small swarms).
    #[arg(long)]
    sealed: bool,
    /// With --sealed: probability that the relay replays a delivered frame.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    replay: f64,
    /// One-way latency range in ms, LO-HI.
    #[arg(long, default_value = "20-120", value_parser = latency)]
    latency: (u64, u64),
    /// Warm-up broadcasts before the measured one.
    #[arg(long, default_value_t = 2)]
    warmups: usize,
    /// Active view size (default: the gossip default).
    #[arg(long)]
    active_view: Option<usize>,
    /// Plumtree tree optimisation threshold in hops (0: off).
    #[arg(long)]
    opt_threshold: Option<u8>,
    /// Turn off the simulated relay's departure notices (failures are then
    /// found by heartbeats only).
    #[arg(long)]
    heartbeats_only: bool,
    /// Print diagnostics to stderr.
    #[arg(long)]
    verbose: bool,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not in [0, 1)"))
    }
}

fn latency(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u64 = lo.parse().map_err(|e| format!("{lo}: {e}"))?;
    let hi: u64 = hi.parse().map_err(|e| format!("{hi}: {e}"))?;
    if lo > hi {
        return Err(format!("{lo} > {hi}"));
    }
    Ok((lo, hi))
}

fn main() {
    let args = Args::parse();
    let mut cfg = GossipSimConfig {
        peers: args.peers as usize,
        seed: args.seed,
        loss: args.loss,
        churn: args.churn,
        baseline: args.baseline,
        sealed: args.sealed,
        replay: args.replay,
        latency_ms: args.latency,
        warmups: args.warmups,
        verbose: args.verbose,
        ..GossipSimConfig::default()
    };
    if let Some(a) = args.active_view {
        cfg.gossip.active_view = a;
    }
    if let Some(t) = args.opt_threshold {
        cfg.gossip.optimization_threshold = t;
    }
    if args.heartbeats_only {
        cfg.relay_notice_ms = None;
    }
    let start = Instant::now();
    let report = run(&cfg);
    let wall = start.elapsed();
    let b = &report.broadcast;
    eprintln!(
        "gossip-sim: {} peers, seed {}, loss {}, churn {}{}: coverage {:.4} ({} of {} live), \
         {} rounds, {:.3} msgs/peer, full after {} ms, {} frames, {:.2} s wall",
        cfg.peers,
        cfg.seed,
        cfg.loss,
        cfg.churn,
        if cfg.sealed { ", sealed" } else { "" },
        b.coverage,
        b.delivered,
        b.live_peers,
        b.rounds,
        b.msgs_per_peer,
        b.time_to_full_ms
            .map_or_else(|| "never".to_string(), |t| t.to_string()),
        report.frames,
        wall.as_secs_f64()
    );
    let mut json = report.to_json();
    json["wall_ms"] = (wall.as_millis() as u64).into();
    println!("{json}");
}
