//! The end-to-end tests, in one binary: each module is what used to be its
//! own `tests/*.rs` binary, so that the library and the helpers are compiled
//! and linked once. `common` runs a server in-process and speaks to it;
//! `redis_nodes` runs `redis-server` and `server` binaries joined to it.
//!
//! None needs a process of its own: no test sets environment variables
//! (`common::command` removes the settings' ones from each child only) or
//! resource limits, the library keeps no process-wide state, and the
//! per-address limits belong to each test's own server. `bench_counts` reports this process's RSS and CPU
//! time but checks only that they were read; `memory_bounds` measures the RSS
//! of a child `server` process, not of this one.

mod common;
mod redis_nodes;

mod api;
mod auth_throttle;
mod bad_frames;
mod bench_counts;
mod binaries;
mod broadcast;
mod browser;
mod cluster;
mod cluster_bounds;
mod cluster_data_loss;
mod cluster_history;
mod cluster_moderation;
mod cluster_people;
mod connect_errors;
mod durable_history;
mod history;
mod http_details;
mod http_refusals;
mod identity;
mod join_rate;
mod json_and_resume;
mod keepalive;
mod memory_bounds;
mod moderation;
mod names_and_commands;
mod no_forgery;
mod origin_and_host;
mod parsers_prop;
mod ping_flood;
mod pipe_client;
mod request_heads;
mod request_ids;
mod session_return;
mod shutdown;
mod slots_per_address;
mod slow_client;
#[cfg(unix)]
mod terminal;
mod tls;
mod trusted_proxy;
