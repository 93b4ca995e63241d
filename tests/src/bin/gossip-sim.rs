//! The gossip simulator (`mycel_tests::gossip_sim`): one swarm of N peers,
//! one measured broadcast after the overlay has formed. The last line of
//! output is one JSON object.
//!
//! Usage: gossip-sim --peers N --seed S [--loss P] [--churn R] [--baseline]
//!                   [--sealed] [--replay P] [--latency LO-HI] [--warmups K]
//!                   [--active-view A] [--opt-threshold T]
//!                   [--heartbeats-only] [--verbose]
//!
//! `--sealed` runs every frame through the real codec (Ed25519 + AES-GCM;
//! slow, for small swarms); `--replay P` (sealed only) makes the relay
//! replay delivered frames; `--heartbeats-only` turns off the simulated
//! relay's departure notices (failures are then found by heartbeats only);
//! `--verbose` prints diagnostics to stderr.

use std::time::Instant;

use mycel_tests::gossip_sim::{GossipSimConfig, run};

const USAGE: &str = "usage: gossip-sim --peers N --seed S [--loss P] [--churn R] [--baseline] \
                     [--sealed] [--replay P] [--latency LO-HI] [--warmups K] [--active-view A] \
                     [--opt-threshold T] [--heartbeats-only] [--verbose]";

fn main() {
    let mut cfg = GossipSimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> String {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value; {USAGE}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--peers" => cfg.peers = parse(&value("--peers")),
            "--seed" => cfg.seed = parse(&value("--seed")),
            "--loss" => cfg.loss = parse(&value("--loss")),
            "--churn" => cfg.churn = parse(&value("--churn")),
            "--replay" => cfg.replay = parse(&value("--replay")),
            "--latency" => {
                let v = value("--latency");
                let (lo, hi) = v.split_once('-').unwrap_or((&v, &v));
                cfg.latency_ms = (parse(lo), parse(hi));
            }
            "--warmups" => cfg.warmups = parse(&value("--warmups")),
            "--active-view" => cfg.gossip.active_view = parse(&value("--active-view")),
            "--opt-threshold" => {
                cfg.gossip.optimization_threshold = parse(&value("--opt-threshold"))
            }
            "--baseline" => cfg.baseline = true,
            "--sealed" => cfg.sealed = true,
            "--verbose" => cfg.verbose = true,
            "--heartbeats-only" => cfg.relay_notice_ms = None,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other}; {USAGE}");
                std::process::exit(2);
            }
        }
    }
    if cfg.peers < 2 || !(0.0..1.0).contains(&cfg.loss) || !(0.0..1.0).contains(&cfg.churn) {
        eprintln!("need --peers >= 2, 0 <= --loss < 1, 0 <= --churn < 1; {USAGE}");
        std::process::exit(2);
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

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("cannot parse {s:?}; {USAGE}");
        std::process::exit(2)
    })
}
