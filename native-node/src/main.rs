//! `mycel-node`: the command-line tool and daemon (see the crate docs).
//!
//! Output on stdout is the value asked for; diagnostics go to stderr; every
//! failure exits non-zero with a message that says what to do.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::time::Duration;

use mycel_core::crypto::Rng;
use mycel_core::gossip::GossipConfig;
use mycel_core::id::{PinLink, ShareLink};
use mycel_core::node::NodeConfig;
use mycel_node::host::{Host, HostError, compact_doc, os_seed, to_json};
use mycel_node::net::{self, DirectOptions, Mode, Options, Outcome};
use mycel_node::store::DocEntry;
use mycel_node::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "mycel-node",
    version,
    about = "mycel's native node: documents on disk, synced end-to-end encrypted"
)]
struct Cli {
    /// Data directory (identity, documents, envelopes).
    #[arg(long, env = "MYCEL_DATA", global = true)]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create this node's identity (once); prints its peer id.
    Init,
    /// Create a document; prints its share link.
    New {
        /// Origin of the link (the web app that opens it).
        #[arg(long, default_value = "http://127.0.0.1:8080/")]
        base: String,
    },
    /// Print the pin link of a document (document and room id, no key).
    PinLink { link: String },
    /// Set top-level KEY to a JSON value. Exit 0 means the change is on disk.
    Set {
        link: String,
        key: String,
        json: String,
    },
    /// Print the document, or one top-level key, as JSON.
    Get { link: String, key: Option<String> },
    /// Write the document as plain `.automerge` bytes.
    Export { link: String, file: PathBuf },
    /// Sync one document through a relay until both sides hold the union.
    Sync {
        link: String,
        /// Relay WebSocket URL, e.g. ws://127.0.0.1:8080/ws; several
        /// (comma-separated or repeated) to fail over between.
        #[arg(long, env = "MYCEL_RELAY", value_delimiter = ',', required = true)]
        relay: Vec<String>,
        /// Peers of the document to meet (and sync with) before finishing.
        #[arg(long, default_value_t = 1)]
        wait_peers: usize,
        /// Give up (exit non-zero) after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Pin a document blindly (store and serve it without its key).
    Pin { pin_link: String },
    /// Keep every document and pin in sync until SIGTERM or Ctrl-C.
    Serve {
        /// Relay WebSocket URL; several (comma-separated or repeated) to
        /// fail over between.
        #[arg(long, env = "MYCEL_RELAY", value_delimiter = ',', required = true)]
        relay: Vec<String>,
        /// Also link directly with peers (WebRTC data channels over UDP);
        /// the relay carries the signaling and stays the fallback. Peers
        /// then learn this host's addresses.
        #[arg(long, env = "MYCEL_DIRECT")]
        direct: bool,
        /// Addresses offered for direct links (comma-separated or
        /// repeated); default: every interface's (loopback only if there
        /// is no other).
        #[arg(long, env = "MYCEL_DIRECT_IP", value_delimiter = ',')]
        direct_ip: Vec<std::net::IpAddr>,
        /// UDP port for direct links (0: a free one).
        #[arg(long, env = "MYCEL_DIRECT_PORT", default_value_t = 0)]
        direct_port: u16,
        /// Log each peer's bytes (direct, through the relay) this often,
        /// in seconds, and at exit; 0: only at exit.
        #[arg(long, env = "MYCEL_TRAFFIC_EVERY", default_value_t = 60)]
        traffic_every: u64,
    },
    /// Shrink the store: replace each document's envelopes with an
    /// encrypted snapshot (all documents with a key, or the one of LINK).
    /// Blind pins are skipped: they keep every envelope for their peers.
    Compact { link: Option<String> },
    /// Create a document from a `.automerge` file; prints its share link.
    Import {
        file: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:8080/")]
        base: String,
    },
}

fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("org", "mycel", "mycel")
        .map(|d| d.data_dir().to_owned())
        .unwrap_or_else(|| PathBuf::from(".mycel"))
}

fn parse_link(text: &str) -> Result<ShareLink, String> {
    text.parse::<ShareLink>()
        .map_err(|e| format!("cannot use this share link: {e}"))
}

fn run(cli: Cli) -> Result<(), String> {
    let dir = cli.data.unwrap_or_else(default_data_dir);
    let store = Store::open(&dir).map_err(|e| e.to_string())?;
    let err = |e: HostError| e.to_string();
    match cli.command {
        Command::Init => {
            let (identity, created) = store
                .init_identity(os_seed().map_err(err)?)
                .map_err(|e| e.to_string())?;
            if !created {
                eprintln!("identity already exists in {}", dir.display());
            }
            println!("{}", identity.peer_id());
        }
        Command::New { base } => {
            let mut host = Host::open(store, false).map_err(err)?;
            let link = host.create(&base).map_err(err)?;
            println!("{link}");
        }
        Command::PinLink { link } => {
            println!("{}", parse_link(&link)?.pin_link());
        }
        Command::Set { link, key, json } => {
            let link = parse_link(&link)?;
            let value: serde_json::Value = serde_json::from_str(&json)
                .map_err(|e| format!("the value is not JSON ({e}); quote strings: '\"text\"'"))?;
            let mut host = Host::open(store, false).map_err(err)?;
            let doc = host.open_link(&link).map_err(err)?;
            host.set(doc, &key, &value).map_err(err)?;
        }
        Command::Get { link, key } => {
            let link = parse_link(&link)?;
            let mut host = Host::open(store, false).map_err(err)?;
            let doc = host.open_link(&link).map_err(err)?;
            let am = host.automerge(doc).map_err(err)?;
            let value = to_json(am, key.as_deref())
                .ok_or_else(|| format!("the document has no key {:?}", key.unwrap_or_default()))?;
            println!("{value}");
        }
        Command::Export { link, file } => {
            let link = parse_link(&link)?;
            let mut host = Host::open(store, false).map_err(err)?;
            let doc = host.open_link(&link).map_err(err)?;
            let bytes = host.automerge(doc).map_err(err)?.save();
            std::fs::write(&file, bytes)
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        }
        Command::Sync {
            link,
            relay,
            wait_peers,
            timeout,
        } => {
            let link = parse_link(&link)?;
            let mut host = Host::open(store, false).map_err(err)?;
            let doc = host.open_link(&link).map_err(err)?;
            let mode = Mode::Sync {
                doc,
                wait_peers,
                timeout: Duration::from_secs(timeout),
            };
            let outcome = runtime()?
                .block_on(net::run(&mut host, &relay, mode, shutdown_signal()))
                .map_err(err)?;
            match outcome {
                Outcome::Synced { peers } => eprintln!("synced with {peers} peer(s)"),
                Outcome::Stopped => return Err("interrupted before the sync completed".into()),
            }
        }
        Command::Pin { pin_link } => {
            let pin = pin_link
                .parse::<PinLink>()
                .map_err(|e| format!("cannot use this pin link: {e}"))?;
            let mut host = Host::open(store, true).map_err(err)?;
            host.open_pin(&pin).map_err(err)?;
            eprintln!("pinned {}; `mycel-node serve` keeps it available", pin.doc);
        }
        Command::Serve {
            relay,
            direct,
            direct_ip,
            direct_port,
            traffic_every,
        } => {
            let config = NodeConfig {
                pinning: true,
                // Gossip picks the peers to link with (protocol.md §5.3).
                mesh: direct.then(GossipConfig::default),
                ..NodeConfig::default()
            };
            let mut host = Host::open_with(store, config).map_err(err)?;
            host.open_all().map_err(err)?;
            eprintln!(
                "serving {} document(s) through {}",
                host.store.docs().len(),
                relay.join(", ")
            );
            let options = Options {
                direct: direct.then_some(DirectOptions {
                    ips: direct_ip,
                    port: direct_port,
                }),
                traffic_every: (traffic_every > 0).then(|| Duration::from_secs(traffic_every)),
                ..Options::default()
            };
            runtime()?
                .block_on(net::run_with(
                    &mut host,
                    &relay,
                    Mode::Serve,
                    shutdown_signal(),
                    options,
                ))
                .map_err(err)?;
            eprintln!("stopped");
        }
        Command::Compact { link } => {
            store.lock_exclusive().map_err(|e| e.to_string())?;
            let explicit = link.is_some();
            let mut rng = Rng::from_seed(os_seed().map_err(err)?);
            let docs = match link {
                Some(text) => {
                    if text.parse::<ShareLink>().is_err() && text.parse::<PinLink>().is_ok() {
                        return Err("a blind pin cannot be compacted: it has no key, and it keeps every envelope for its peers".into());
                    }
                    let link = parse_link(&text)?;
                    match store.doc(link.doc) {
                        Some(DocEntry::Full { key, .. }) if *key != link.key => {
                            return Err(err(HostError::KeyMismatch(link.doc)));
                        }
                        _ => vec![link.doc],
                    }
                }
                None => store.docs().iter().map(DocEntry::doc).collect(),
            };
            for doc in docs {
                if !explicit && let Some(DocEntry::Pin { .. }) = store.doc(doc) {
                    eprintln!(
                        "skipped {doc}: a blind pin has no key and keeps every envelope for its peers"
                    );
                    continue;
                }
                let c = compact_doc(&store, doc, &mut rng).map_err(err)?;
                if c.rewritten {
                    println!(
                        "{doc}: {} -> {} bytes ({} envelopes in the snapshot, {} kept whole)",
                        c.before, c.after, c.covered, c.kept
                    );
                } else {
                    println!("{doc}: {} bytes, already compact", c.before);
                }
            }
        }
        Command::Import { file, base } => {
            let bytes =
                std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let imported = automerge::Automerge::load(&bytes)
                .map_err(|e| format!("{} is not an Automerge document: {e}", file.display()))?;
            let mut host = Host::open(store, false).map_err(err)?;
            let link = host.create(&base).map_err(err)?;
            let doc = host.open_link(&link).map_err(err)?;
            host.import_changes(doc, &imported).map_err(err)?;
            println!("{link}");
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mycel-node: {message}");
            ExitCode::FAILURE
        }
    }
}
