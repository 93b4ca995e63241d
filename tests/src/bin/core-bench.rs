//! The core benchmark (`cargo xtask bench`): the automerge-paper trace
//! through raw Automerge and through mycel end to end, and seal/open
//! throughput. Every figure is measured in the same run as its baseline
//! and printed as a ratio; the last line is one JSON object.
//!
//! Usage: core-bench [--trace PATH] [--edits N] [--seal-open-only]

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ReadDoc, TextEncoding};
use mycel_core::crypto::{DocKey, DocKeys, Identity, Rng};
use mycel_core::doc::{ApplyPacer, Replica};
use mycel_core::id::DocId;
use mycel_core::node::{DocAccess, Input, LinkId, LinkKind, NodeConfig, Output};
use mycel_core::time::Timestamp;
use mycel_core::wire::{Envelope, EnvelopeKind};
use mycel_tests::trace::{self, Patch};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut path = trace::default_path();
    let mut limit = usize::MAX;
    let mut seal_open_only = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--trace" => path = args.next().expect("--trace PATH").into(),
            "--edits" => limit = args.next().and_then(|n| n.parse().ok()).expect("--edits N"),
            "--seal-open-only" => seal_open_only = true,
            other => {
                eprintln!(
                    "unknown argument {other}; usage: core-bench [--trace PATH] [--edits N] [--seal-open-only]"
                );
                std::process::exit(2);
            }
        }
    }
    if seal_open_only {
        let sizes = seal_open_all();
        println!("{{{}}}", seal_open_json(&sizes));
        return;
    }
    let trace = match trace::load(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("core-bench: {e}");
            std::process::exit(1);
        }
    };
    let full = limit >= trace.patches.len();
    let patches = &trace.patches[..limit.min(trace.patches.len())];
    let expected = if full {
        Some(trace.end_content.as_str())
    } else {
        None
    };
    println!(
        "core-bench: automerge-paper trace, {} edits{}",
        patches.len(),
        if full { "" } else { " (prefix)" }
    );

    // (a) raw Automerge, one commit per keystroke.
    let (raw, raw_text) = raw_automerge(patches);
    check("raw automerge", &raw_text, expected);
    println!(
        "(a) raw automerge, one commit per edit:       {:>8.2} s",
        raw.as_secs_f64()
    );

    // (b) through mycel end to end, one change per keystroke.
    let unbatched = through_mycel(patches, None, expected);
    println!(
        "(b) mycel end to end, one change per edit:    {:>8.2} s  b/a = {:.2}  ({} envelopes, {:.1} MB on the link)",
        unbatched.time.as_secs_f64(),
        ratio(unbatched.time, raw),
        unbatched.envelopes,
        unbatched.link_bytes as f64 / 1e6
    );
    // (b') batched as an editor does: one change per 16 ms frame of typing.
    let batched = through_mycel(patches, Some(Duration::from_millis(16)), expected);
    println!(
        "(b') mycel end to end, one change per 16 ms: {:>8.2} s  b'/a = {:.2}  ({} envelopes)",
        batched.time.as_secs_f64(),
        ratio(batched.time, raw),
        batched.envelopes
    );
    println!(
        "     (b) replica A local work {:.2} s, replica B receive+apply {:.2} s in {} applies",
        unbatched.sender.as_secs_f64(),
        unbatched.receiver.as_secs_f64(),
        unbatched.flushes
    );

    let sizes = seal_open_all();

    println!(
        "{{\"edits\":{},\"raw_automerge_s\":{:.3},\"mycel_unbatched_s\":{:.3},\"ratio_unbatched\":{:.3},\"mycel_batched_16ms_s\":{:.3},\"ratio_batched\":{:.3},\"batched_envelopes\":{},{}}}",
        patches.len(),
        raw.as_secs_f64(),
        unbatched.time.as_secs_f64(),
        ratio(unbatched.time, raw),
        batched.time.as_secs_f64(),
        ratio(batched.time, raw),
        batched.envelopes,
        seal_open_json(&sizes)
    );
}

/// Envelopes per batch in (c)'s batched runs.
const BATCH: usize = 32;

/// (c) seal + open throughput at each size: each envelope signed alone
/// and in batches of [`BATCH`], streamed; and at the largest size, batches
/// with every envelope kept in memory.
fn seal_open_all() -> Vec<(String, Throughput)> {
    println!(
        "(c) AES-256-GCM backend: {}",
        mycel_core::aead::GcmKey::backend()
    );
    let mut runs = Vec::new();
    let floor = aead_floor(16 * 1024);
    println!(
        "(c) baseline: AES-256-GCM alone, 16384 B (copy in, seal, copy out, open): {:.1} MiB/s",
        floor.mib_s
    );
    runs.push(("aead_only_16384B_mib_s".to_string(), floor));
    for size in [64usize, 1024, 16 * 1024] {
        let mut cases = vec![
            ("", 1, Keep::Streamed, "each signed alone".to_string()),
            (
                "_batch32",
                BATCH,
                Keep::Streamed,
                format!("batches of {BATCH} (Merkle)"),
            ),
        ];
        if size == 16 * 1024 {
            cases.push((
                "_batch32_kept",
                BATCH,
                Keep::Kept,
                format!("batches of {BATCH}, all kept"),
            ));
        }
        for (key, batch, keep, what) in cases {
            let t = seal_open(size, batch, keep);
            println!(
                "(c) seal+open {size:>6} B payloads, {what:<27}: {:>8.1} MiB/s  (seal {:.2} µs, open {:.2} µs per envelope)",
                t.mib_s, t.seal_us, t.open_us
            );
            if size == 16 * 1024 && batch > 1 {
                println!(
                    "    = {:.2} of the AES-256-GCM baseline",
                    t.mib_s / floor.mib_s
                );
            }
            runs.push((format!("seal_open{key}_{size}B_mib_s"), t));
        }
    }
    runs
}

fn seal_open_json(runs: &[(String, Throughput)]) -> String {
    runs.iter()
        .map(|(key, t)| format!("\"{key}\":{:.1}", t.mib_s))
        .collect::<Vec<_>>()
        .join(",")
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn check(what: &str, text: &str, expected: Option<&str>) {
    if let Some(e) = expected
        && text != e
    {
        eprintln!("core-bench: {what}: final text differs from the trace's endContent");
        std::process::exit(1);
    }
}

fn raw_automerge(patches: &[Patch]) -> (Duration, String) {
    let start = Instant::now();
    let mut doc = Automerge::new_with_encoding(TextEncoding::UnicodeCodePoint);
    let text = {
        let mut tx = doc.transaction();
        let t = tx.put_object(ROOT, "text", ObjType::Text).expect("text");
        tx.commit();
        t
    };
    for p in patches {
        let mut tx = doc.transaction();
        tx.splice_text(&text, p.pos, p.del as isize, &p.ins)
            .expect("splice");
        tx.commit();
    }
    let elapsed = start.elapsed();
    (elapsed, doc.text(&text).expect("text"))
}

struct Run {
    time: Duration,
    sender: Duration,
    receiver: Duration,
    envelopes: u64,
    link_bytes: u64,
    flushes: u64,
}

/// Replica A types the trace; every output moves at once to replica B over
/// an in-process direct link (storage acknowledges at once: this measures
/// the engine, not a disk). With `frame`, keystrokes arriving within one
/// frame of wall time go into one change, as an editor batches input per
/// animation frame.
fn through_mycel(patches: &[Patch], frame: Option<Duration>, expected: Option<&str>) -> Run {
    let mut rng = Rng::from_seed([1; 32]);
    let doc = DocId(rng.array());
    let key = DocKey::generate(&mut rng);
    let mut a = Replica::new(
        Identity::generate(&mut rng),
        NodeConfig::default(),
        rng.array(),
    );
    let mut b = Replica::new(
        Identity::generate(&mut rng),
        NodeConfig::default(),
        rng.array(),
    );
    let now = Timestamp(0);
    let link = LinkId(1);
    // The receiving editor applies what arrived when its pacer says so (at
    // most once per frame; see `ApplyPacer` for why).
    b.set_deferred_apply(true);
    let mut pacer = ApplyPacer::default();
    let clock = Instant::now();
    let us = || clock.elapsed().as_micros() as u64;
    for r in [&mut a, &mut b] {
        r.open(now, doc, DocAccess::Full(key.clone()), [])
            .expect("open");
        r.handle(
            now,
            Input::LinkUp {
                link,
                kind: LinkKind::Direct,
            },
        )
        .expect("link");
    }
    let mut run = Run {
        time: Duration::ZERO,
        sender: Duration::ZERO,
        receiver: Duration::ZERO,
        envelopes: 0,
        link_bytes: 0,
        flushes: 0,
    };
    let start = Instant::now();
    let text = a
        .change(now, doc, |tx| tx.put_object(ROOT, "text", ObjType::Text))
        .expect("text");
    pump(&mut a, &mut b, &mut run);
    let mut i = 0;
    while i < patches.len() {
        let t0 = Instant::now();
        let end = match frame {
            None => i + 1,
            Some(f) => {
                // Keystrokes keep arriving while the frame lasts.
                let mut j = i;
                let frame_start = Instant::now();
                a.change(now, doc, |tx| {
                    while j < patches.len() && (j == i || frame_start.elapsed() < f) {
                        let p = &patches[j];
                        tx.splice_text(&text, p.pos, p.del as isize, &p.ins)?;
                        j += 1;
                    }
                    Ok(())
                })
                .expect("batched change");
                j
            }
        };
        if frame.is_none() {
            let p = &patches[i];
            a.change(now, doc, |tx| {
                tx.splice_text(&text, p.pos, p.del as isize, &p.ins)
            })
            .expect("change");
        }
        run.sender += t0.elapsed();
        i = end;
        pump(&mut a, &mut b, &mut run);
        if pacer.due(us()) || i == patches.len() {
            let t1 = Instant::now();
            b.flush();
            pump(&mut a, &mut b, &mut run);
            let took = t1.elapsed();
            run.receiver += took;
            run.flushes += 1;
            pacer.flushed(us(), took.as_micros() as u64);
        }
    }
    run.time = start.elapsed();
    let a_text = a
        .doc(doc)
        .expect("doc")
        .automerge()
        .text(&text)
        .expect("text");
    let b_text = b
        .doc(doc)
        .expect("doc")
        .automerge()
        .text(&text)
        .expect("text");
    check("replica A", &a_text, expected);
    check("replica B", &b_text, expected);
    if a_text != b_text {
        eprintln!("core-bench: replicas differ");
        std::process::exit(1);
    }
    run
}

/// Moves every output between the two replicas until both are quiet,
/// charging each replica's handling to its side.
fn pump(a: &mut Replica, b: &mut Replica, run: &mut Run) {
    let now = Timestamp(0);
    loop {
        let mut moved = false;
        let mut t = Instant::now();
        while let Some(out) = a.poll() {
            moved = true;
            match out {
                Output::Send { link, bytes } => {
                    run.link_bytes += bytes.len() as u64;
                    let t1 = Instant::now();
                    run.sender += t1 - t;
                    b.handle(now, Input::Received { link, bytes })
                        .expect("b receives");
                    t = Instant::now();
                    run.receiver += t - t1;
                }
                Output::Persist {
                    doc,
                    batch,
                    records,
                } => {
                    run.envelopes += records.len() as u64;
                    a.handle(now, Input::Persisted { doc, batch }).expect("ack");
                }
                _ => {}
            }
        }
        run.sender += t.elapsed();
        let mut t = Instant::now();
        while let Some(out) = b.poll() {
            moved = true;
            match out {
                Output::Send { link, bytes } => {
                    let t1 = Instant::now();
                    run.receiver += t1 - t;
                    a.handle(now, Input::Received { link, bytes })
                        .expect("a receives");
                    t = Instant::now();
                    run.sender += t - t1;
                }
                Output::Persist { doc, batch, .. } => {
                    b.handle(now, Input::Persisted { doc, batch }).expect("ack");
                }
                _ => {}
            }
        }
        run.receiver += t.elapsed();
        if !moved {
            return;
        }
    }
}

#[derive(Clone, Copy)]
struct Throughput {
    mib_s: f64,
    seal_us: f64,
    open_us: f64,
}

/// (c)'s baseline: the cipher alone on `size`-byte payloads, with the
/// copies a sealer and an opener make (plaintext into the envelope, body
/// out into the plaintext), no hashing, no signature. Best of 3 rounds.
fn aead_floor(size: usize) -> Throughput {
    let key = mycel_core::aead::GcmKey::new(&[7; 32]);
    let payload = vec![0x5a; size];
    let n = (64 * 1024 * 1024 / size).clamp(200, 20_000);
    let mut best: Option<Throughput> = None;
    for _ in 0..3 {
        let (mut seal, mut open) = (Duration::ZERO, Duration::ZERO);
        for i in 0..n {
            let nonce = [i as u8; 12];
            let t = Instant::now();
            let mut body = payload.clone();
            let tag = key
                .seal_in_place(&nonce, b"header", &mut body)
                .expect("seal");
            seal += t.elapsed();
            let t = Instant::now();
            let mut plain = body.clone();
            key.open_in_place(&nonce, b"header", &mut plain, &tag)
                .expect("open");
            open += t.elapsed();
            assert_eq!(plain.len(), size);
        }
        let t = Throughput {
            mib_s: (n * size) as f64 / (seal + open).as_secs_f64() / (1024.0 * 1024.0),
            seal_us: seal.as_secs_f64() * 1e6 / n as f64,
            open_us: open.as_secs_f64() * 1e6 / n as f64,
        };
        if best.as_ref().is_none_or(|b| t.mib_s > b.mib_s) {
            best = Some(t);
        }
    }
    best.expect("three rounds")
}

/// Where (c) keeps what it sealed.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// Each batch is opened and dropped before the next is sealed, as in a
    /// pipeline that writes envelopes out: the allocator recycles the
    /// buffers, so this measures the crypto path.
    Streamed,
    /// Every envelope of the round is sealed first and kept (≈64 MiB), then
    /// all are opened: each envelope lands in memory fresh from the kernel,
    /// whose page faults (zeroing pages) the figure includes.
    Kept,
}

/// Seals envelopes of `size` bytes `batch` at a time and opens each from
/// its bytes (decode, verify, decrypt) with a fresh receiver's keys, as a
/// peer does. Best of 3 rounds: the machine may be shared.
fn seal_open(size: usize, batch: usize, keep: Keep) -> Throughput {
    let mut rng = Rng::from_seed([2; 32]);
    let author = Identity::generate(&mut rng);
    let doc = DocId(rng.array());
    let key = DocKey::generate(&mut rng);
    let payload = vec![0x5a; size];
    let payloads = vec![payload.as_slice(); batch];
    // Bounded: about 64 MiB or 20,000 envelopes per round, whichever is fewer.
    let n = (64 * 1024 * 1024 / size).clamp(200, 20_000) / batch * batch;
    let mut best: Option<Throughput> = None;
    for _ in 0..3 {
        let mut keys = DocKeys::new(doc, key.clone());
        let mut receiver = DocKeys::new(doc, key.clone());
        let mut sealed = Vec::with_capacity(n);
        let (mut seal, mut open) = (Duration::ZERO, Duration::ZERO);
        let mut open_all = |sealed: &mut Vec<Envelope>| {
            let t = Instant::now();
            for env in sealed.drain(..) {
                let env = Envelope::decode(env.bytes()).expect("decode");
                let plain = receiver.open(&env).expect("open");
                assert_eq!(plain.len(), size);
            }
            t.elapsed()
        };
        let mut seq = 1;
        while seq <= n as u64 {
            let t = Instant::now();
            if batch == 1 {
                sealed.push(
                    keys.seal(&author, EnvelopeKind::Change, seq, &payload, &mut rng)
                        .expect("seal"),
                );
            } else {
                sealed.extend(
                    keys.seal_batch(&author, EnvelopeKind::Change, seq, &payloads, &mut rng)
                        .expect("seal batch"),
                );
            }
            seal += t.elapsed();
            seq += batch as u64;
            if keep == Keep::Streamed && (sealed.len() >= BATCH || seq > n as u64) {
                open += open_all(&mut sealed);
            }
        }
        open += open_all(&mut sealed);
        let total = seal + open;
        let t = Throughput {
            mib_s: (n * size) as f64 / total.as_secs_f64() / (1024.0 * 1024.0),
            seal_us: seal.as_secs_f64() * 1e6 / n as f64,
            open_us: open.as_secs_f64() * 1e6 / n as f64,
        };
        if best.as_ref().is_none_or(|b| t.mib_s > b.mib_s) {
            best = Some(t);
        }
    }
    best.expect("three rounds")
}
