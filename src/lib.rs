//! A broadcast chat over `WebSocket`s.
//!
//! Map of the crate:
//! - [`protocol`]: every wire type and text form, shared by server, client and tests.
//! - [`names`]: Unicode rules for user names (what is refused, which names look
//!   alike) and for escaping received text before a terminal shows it.
//! - [`config`]: command-line settings of both binaries, their defaults and bounds.
//! - [`server`]: the accept loop and graceful shutdown ([`server::run`]).
//! - [`handshake`]: reads and checks the HTTP upgrade request before tokio-websockets takes over.
//! - [`connection`]: one client: reads its frames, writes what its room broadcasts.
//! - [`hub`]: rooms, names and history.
//! - [`ring`]: each room's fan-out, bounded in slots and bytes, and the server's memory budget.
//! - [`cluster`]: the link to Redis that lets several nodes share rooms (`--redis`).
//! - [`limit`]: per-connection flood control.
//! - [`address`]: per-address bounds (handshakes, connections, joins, failed
//!   tokens) and who a trusted proxy says the client is.
//! - [`origin`]: the server's own origins and names, for the Origin and Host checks.
//! - [`logging`]: the binaries' log set-up.
//! - [`metrics`]: the counters behind `GET /metrics`.
//! - [`tls`]: rustls set-up for `wss://` on both ends.
//! - [`wire`]: the socket under tokio-websockets, which writes the frames rooms encode once.
//! - [`client`]: the terminal and pipe client ([`client::run`]).
//! - [`bench`]: the load generator behind `chat-bench`.

pub mod address;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod handshake;
pub mod hub;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod origin;
pub mod protocol;
pub mod ring;
pub mod server;
pub mod tls;
pub mod wire;
