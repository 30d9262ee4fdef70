//! A broadcast chat over `WebSocket`s.
//!
//! Map of the crate:
//! - [`protocol`]: the wire protocol shared by all: requests, events, close
//!   codes, and the rules for names.
//! - [`server`]: the chat server ([`server::run`]): accept and shutdown, HTTP,
//!   connections, commands, the local hub, the backends for what nodes
//!   share, per-address limits, metrics.
//! - [`client`]: the terminal and pipe client ([`client::run`]).
//! - [`bench`](mod@bench): the load generator behind `chat-bench`.
//! - [`tls`]: rustls set-up for `wss://` on both ends.
//! - [`logging`]: the binaries' log set-up.

pub mod bench;
pub mod client;
pub mod logging;
pub mod protocol;
pub mod server;
pub mod tls;
mod util;
