//! `mycel-relay`: run the relay (see `mycel-relay --help`).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mycel_relay::{Config, init_logging, serve};

fn main() -> ExitCode {
    let config = Config::parse();
    if config.health_check {
        return health_check(config.listen);
    }
    if let Err(e) = init_logging(config.log_format, &config.log) {
        eprintln!("mycel-relay: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = config.validate() {
        eprintln!("mycel-relay: {e}");
        return ExitCode::from(2);
    }
    // Each connection is a file descriptor: use all the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mycel-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = mycel_relay::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        serve(config, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    // Do not wait for tasks that outlived the shutdown timeout.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mycel-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// `--health-check`: GET /healthz on the configured address (a wildcard
/// address is reached on loopback) and exit 0 on `200`. A scratch image has
/// no curl; the binary checks itself.
fn health_check(mut addr: SocketAddr) -> ExitCode {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let check = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    match check() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("mycel-relay: {addr} is not healthy");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mycel-relay: health check of {addr} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
