//! The CLI as a person or a script uses it: real processes, real files.

mod support;
use support::{bin, data_dir, node, ok};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fails(data: &Path, args: &[&str]) -> String {
    let out = node(data, args);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(out.stdout.is_empty(), "nothing on stdout when failing");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn documents_are_created_written_read_exported_and_imported() {
    let d = data_dir("basic");
    let peer = ok(&d, &["init"]);
    assert_eq!(peer.len(), 43);
    assert_eq!(ok(&d, &["init"]), peer, "init is idempotent");
    let link = ok(&d, &["new"]);
    assert!(link.starts_with("http://127.0.0.1:8080/#d="), "{link}");
    let custom = ok(&d, &["new", "--base", "https://notes.example/"]);
    assert!(custom.starts_with("https://notes.example/#d="));
    ok(&d, &["set", &link, "title", "\"groceries\""]);
    ok(
        &d,
        &[
            "set",
            &link,
            "items",
            r#"[{"name":"milk","done":false},{"name":"eggs","done":true}]"#,
        ],
    );
    ok(&d, &["set", &link, "count", "2"]);
    assert_eq!(ok(&d, &["get", &link, "title"]), "\"groceries\"");
    let all: serde_json::Value = serde_json::from_str(&ok(&d, &["get", &link])).unwrap();
    assert_eq!(all["items"][1]["name"], "eggs");
    assert_eq!(all["count"], 2);
    let pin = ok(&d, &["pin-link", &link]);
    assert!(pin.contains("&r=") && !pin.contains("&k="));

    let file = d.join("doc.automerge");
    ok(&d, &["export", &link, file.to_str().unwrap()]);
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        automerge::Automerge::load(&bytes).is_ok(),
        "plain .automerge bytes"
    );
    let imported = ok(&d, &["import", file.to_str().unwrap()]);
    assert_ne!(imported, link);
    assert_eq!(ok(&d, &["get", &imported]), ok(&d, &["get", &link]));
}

#[test]
fn bad_input_gets_a_clear_error_and_a_nonzero_exit() {
    let d = data_dir("errors");
    assert!(fails(&d, &["new"]).contains("run `mycel-node init` first"));
    ok(&d, &["init"]);
    let link = ok(&d, &["new"]);
    assert!(fails(&d, &["get", "http://x/"]).contains("no '#' part"));
    assert!(fails(&d, &["get", "http://x/#d=AAAA&k=BBBB"]).contains("must be 16 bytes"));
    assert!(fails(&d, &["set", &link, "k", "not json"]).contains("not JSON"));
    assert!(fails(&d, &["get", &link, "missing"]).contains("no key"));
    // A link to a stored document with another key.
    let wrong = format!("{}{}", &link[..link.len() - 4], "AAAA");
    assert!(fails(&d, &["get", &wrong]).contains("key is wrong"));
    assert!(fails(&d, &["import", "/nonexistent.automerge"]).contains("cannot read"));
    let garbage = d.join("garbage");
    std::fs::write(&garbage, b"not automerge").unwrap();
    assert!(
        fails(&d, &["import", garbage.to_str().unwrap()]).contains("not an Automerge document")
    );
}

#[test]
fn damage_in_the_store_is_reported_and_a_missing_file_is_clear() {
    let d = data_dir("damage");
    ok(&d, &["init"]);
    let link = ok(&d, &["new"]);
    for i in 0..5 {
        ok(&d, &["set", &link, &format!("k{i}"), &i.to_string()]);
    }
    let room = std::fs::read_dir(d.join("rooms"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&room).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&room, &bytes).unwrap();
    let err = fails(&d, &["get", &link]);
    assert!(err.contains("is damaged at byte"), "{err}");
    // A missing identity file says what to do.
    std::fs::remove_file(d.join("identity.key")).unwrap();
    assert!(fails(&d, &["get", &link]).contains("init"));
}

/// Kills `set` with SIGKILL at random moments: every set that exited 0 must
/// be there afterwards, and the store must always open.
fn crash_trials(trials: usize) {
    let d = data_dir("crash");
    ok(&d, &["init"]);
    let link = ok(&d, &["new"]);
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    for trial in 0..trials {
        assert!(Instant::now() < deadline, "crash trials took too long");
        // A few writes that run to the end...
        for j in 0..3u64 {
            let key = format!("t{trial}_{j}");
            ok(&d, &["set", &link, &key, &j.to_string()]);
            acknowledged.push((key, j));
        }
        // ...and one killed at a random moment of its run.
        let key = format!("t{trial}_killed");
        let mut child = Command::new(bin())
            .args(["set", &link, &key, "99"])
            .env("MYCEL_DATA", &d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rand::random::<u64>() % 15_000));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            acknowledged.push((key, 99));
        } else {
            killed += 1;
        }
        // The store always opens, and every acknowledged write is there.
        let doc: serde_json::Value = serde_json::from_str(&ok(&d, &["get", &link])).unwrap();
        for (k, v) in &acknowledged {
            assert_eq!(
                doc[k], *v,
                "acknowledged write {k} lost after trial {trial}"
            );
        }
    }
    eprintln!(
        "{trials} crash trials: {killed} writes killed, {} acknowledged, none lost",
        acknowledged.len()
    );
}

#[test]
fn acknowledged_writes_survive_kill_9_in_20_trials() {
    crash_trials(20);
}

#[test]
#[ignore = "long: 100 trials; run with --ignored"]
fn acknowledged_writes_survive_kill_9_in_100_trials() {
    crash_trials(100);
}
