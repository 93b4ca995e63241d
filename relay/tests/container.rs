//! The container image end to end: build it (relay/container/build.sh),
//! run it with podman on the host network, check /healthz and one publish
//! through it, and that it stops on SIGTERM. Ignored in a plain `cargo
//! test` (it installs packages and takes minutes); `cargo xtask test` runs
//! it in a step of its own (`cargo test -p mycel-relay --test container --
//! --ignored`).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use mycel_core::wire::{RelayEvent, RelayRequest};
use support::{Client, http_get, room};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds the image with podman (minutes); `cargo xtask test` runs it in its own step"]
async fn container_image_serves_health_and_a_publish() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let image = "localhost/mycel-relay:test";
    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/container/build.sh"))
        .arg(image)
        .current_dir(root)
        .status()
        .expect("run build.sh");
    assert!(status.success(), "image build failed");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let name = format!("mycel-relay-test-{}", std::process::id());
    let run = Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "run",
            "-d",
            "--rm",
            "--network",
            "host",
        ])
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
        ])
        .args(["--name", &name])
        .args(["-e", &format!("MYCEL_RELAY_LISTEN=127.0.0.1:{port}")])
        .arg(image)
        .status()
        .expect("podman run");
    assert!(run.success(), "podman run failed");
    let stop = || {
        let _ = Command::new("podman")
            .args(["stop", "-t", "10", &name])
            .status();
    };

    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            stop();
            panic!("the container's relay did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (head, body) = http_get(addr, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");

    // The image's own health check command (what HEALTHCHECK runs).
    let hc = Command::new("podman")
        .args(["exec", &name, "/mycel-relay", "--health-check"])
        .status()
        .expect("podman exec");
    assert!(hc.success(), "--health-check inside the container failed");

    let url = format!("ws://{addr}/ws");
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    let (ta, _) = a.join(room(1)).await;
    b.join(room(1)).await;
    a.send(&RelayRequest::Publish {
        room: room(1),
        payload: b"through the container".to_vec().into(),
    })
    .await;
    match b.recv().await {
        RelayEvent::Message { from, payload, .. } => {
            assert_eq!(from, ta);
            assert_eq!(&payload[..], b"through the container");
        }
        other => panic!("{other:?}"),
    }

    // SIGTERM (podman stop): a going-away close, and the container exits.
    let t0 = Instant::now();
    stop();
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "stop took {:?}",
        t0.elapsed()
    );
    let frame = b.closed(Duration::from_secs(5)).await;
    if let Some(f) = frame {
        assert_eq!(u16::from(f.code), mycel_relay::close_code::GOING_AWAY);
    }
}
