//! `server`: the chat server. Flags in [`chat::server::config::ServerConfig`].

use anyhow::Context as _;
use clap::Parser;
use std::io::Write as _;
use tokio::net::TcpListener;

/// A WebSocket broadcast chat server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: chat::server::config::ServerConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    chat::logging::init("info");
    match serve(cli.config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: chat::server::config::ServerConfig) -> anyhow::Result<()> {
    // A file size limit (`ulimit -f`) must fail the store's writes, which
    // chat survives, rather than kill the server.
    #[cfg(unix)]
    let _file_too_large = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
        nix::sys::signal::Signal::SIGXFSZ as i32,
    ))
    .context("cannot handle SIGXFSZ")?;
    chat::protocol::check_token(config.token.as_deref()).map_err(anyhow::Error::msg)?;
    config.check_memory().map_err(anyhow::Error::msg)?;
    config.check_identity().map_err(anyhow::Error::msg)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(chat::tls::acceptor(cert, key)?),
        _ => None,
    };
    let backend = chat::server::Backend::connect(&config).await;
    let backend = match (backend, &config.redis) {
        (Ok(backend), _) => backend,
        (Err(error), Some(_)) => Err(error).context("cannot join the cluster (--redis)")?,
        // The store's error names its file.
        (Err(error), None) => Err(error)?,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let addr = (config.host.as_str(), config.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    // The one line of stdout: scripts read the real port from it.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {scheme}://{local}")?;
    stdout.flush()?;
    let web = if tls.is_some() { "https" } else { "http" };
    tracing::info!("web page: open {web}://{local}/ in a browser (a path names a room: /rust)");
    chat::server::run(listener, config, tls, backend, shutdown_signal()).await;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
