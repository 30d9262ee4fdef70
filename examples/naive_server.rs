//! The tutorial's broadcast chat, kept as the reference `bench/compare.sh`
//! measures the real server against. Deliberately naive, as the tutorials
//! write it: a broadcast channel of 16, one send-and-flush per message per
//! client, a log line per message, and a client that lags is disconnected.
//! Do not use it for anything else.
//!
//! `cargo run --release --example naive_server -- --port 8081`

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_websockets::{Message, ServerBuilder};
use tracing_subscriber::EnvFilter;

/// The tutorial chat server.
#[derive(Debug, Parser)]
struct Cli {
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8081)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let listener = TcpListener::bind(("127.0.0.1", cli.port)).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    let (tx, _) = broadcast::channel::<String>(16);
    loop {
        let (socket, addr) = listener.accept().await?;
        tokio::spawn(handle(socket, addr, tx.clone()));
    }
}

async fn handle(socket: TcpStream, addr: SocketAddr, tx: broadcast::Sender<String>) {
    let Ok((_, mut ws)) = ServerBuilder::new().accept(socket).await else {
        return;
    };
    let mut rx = tx.subscribe();
    if ws.send(Message::text(format!("* you are {addr}"))).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(msg)) => {
                    if let Some(text) = msg.as_text() {
                        tracing::info!("{addr}: {text}");
                        let _ = tx.send(format!("{addr}: {text}"));
                    }
                }
                _ => return,
            },
            received = rx.recv() => match received {
                // `send` writes and flushes this one message.
                Ok(text) => if ws.send(Message::text(text)).await.is_err() { return },
                // Lagged or closed: the tutorial just drops the client.
                Err(_) => return,
            },
        }
    }
}
