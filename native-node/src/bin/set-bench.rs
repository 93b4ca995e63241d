//! How long `mycel-node set` takes (median of a bounded number of runs),
//! beside a plain file write + fsync measured in the same run, and the
//! same `set` through the library (no process start).
//!
//! Usage: set-bench [--runs N]   (the mycel-node binary must be built beside it)

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mycel_node::host::Host;
use mycel_node::store::Store;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50)
        .clamp(5, 1000);
    let exe = std::env::current_exe().expect("own path");
    let node = exe.with_file_name("mycel-node");
    if !node.exists() {
        eprintln!("set-bench: build mycel-node first (cargo build --release -p mycel-node)");
        std::process::exit(2);
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("mycel-set-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |args: &[&str]| {
        let out = Command::new(&node)
            .args(args)
            .env("MYCEL_DATA", &dir)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    };
    run(&["init"]);
    let link = run(&["new"]);

    // Baseline: append ~300 bytes to a file and fsync it, as `set` must.
    let file = dir.join("baseline.bin");
    let mut plain = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .expect("open");
        f.write_all(&[0x5a; 300]).expect("write");
        f.sync_data().expect("fsync");
        plain.push(t.elapsed());
    }
    let mut process = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        run(&["set", &link, &format!("k{i}"), &i.to_string()]);
        process.push(t.elapsed());
    }
    let store = Store::open(&dir).expect("store");
    let mut host = Host::open(store, false).expect("host");
    let doc = host.open_link(&link.parse().expect("link")).expect("open");
    let mut library = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        host.set(doc, &format!("lib{i}"), &serde_json::json!(i))
            .expect("set");
        library.push(t.elapsed());
    }
    let (p, s, l) = (median(plain), median(process), median(library));
    println!("set-bench: {runs} runs each, medians");
    println!(
        "  plain write + fsync:        {:>8.2} ms",
        p.as_secs_f64() * 1e3
    );
    println!(
        "  mycel-node set (process):   {:>8.2} ms  ({:.1}x)",
        s.as_secs_f64() * 1e3,
        s.as_secs_f64() / p.as_secs_f64()
    );
    println!(
        "  Host::set (library):        {:>8.2} ms  ({:.1}x)",
        l.as_secs_f64() * 1e3,
        l.as_secs_f64() / p.as_secs_f64()
    );
    println!(
        "{{\"runs\":{runs},\"plain_fsync_ms\":{:.3},\"set_process_ms\":{:.3},\"set_library_ms\":{:.3}}}",
        p.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3,
        l.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}
