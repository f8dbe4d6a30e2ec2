//! `concord-server`: the Concord server, as a library (for tests and embedding) and as the
//! `concord` binary (`main.rs`).
//!
//! How the parts relate:
//! - [`config`]: the command line and env vars.
//! - [`listen`]: the accept loop (plain or TLS, with the slowloris deadline); [`tls`]: the
//!   certificates served (reloaded on SIGHUP) and the TLS of dialed peer links.
//! - [`http`]: every route, in one function.
//! - [`auth`]: who may read, write and operate: tokens, the auth callback, the gate every request
//!   passes before any work; [`limits`]: how many connections, in all and per address.
//! - [`connection`]: one client socket (reader loop + writer task over a bounded queue).
//! - [`registry`]: the live documents (a `DashMap` of rooms), started on first use.
//! - [`room`]: the actor that owns one document: applies updates, stores them, broadcasts once
//!   they are durable, tracks presence.
//! - [`demo`]: `concord demo`, three meshed regions in one process; [`demo_console`]: the
//!   commands typed into it (cut and heal a link).
//! - [`delay_proxy`]: a latency-adding, cuttable TCP proxy simulating inter-region links.
//! - [`memory`]: returns freed memory to the OS after evictions (glibc for SQLite, and each
//!   worker's mimalloc heap: the `concord` binary's allocator).
//! - [`replication`]: peer links to other regions: authentication, log streaming with
//!   acknowledged cursors, loop prevention, gap repair.
//! - [`store`]: the `Store` trait and its embedded SQLite backend (update log, snapshots).
//! - [`metrics`]: the Prometheus metrics of a node; [`internal`]: the `--metrics-listen`
//!   listener.
//! - [`health`]: `/healthz` and `/readyz`; [`status_cli`], [`status_client`],
//!   [`status_table`]: `concord status`, the operator's view of a node and its peers.
//! - [`app`]: the state every route and connection shares ([`App`]); [`node`]: one node wired
//!   together, run until shutdown ([`serve`]), then stopped in order.
//!
//! Data flows client → connection reader → room inbox → room → member queues → writers.
//! Nothing holds a lock across an `.await`; each document has exactly one owner (its room).

pub mod app;
pub mod auth;
pub mod backup;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod control;
pub mod delay_proxy;
pub mod demo;
pub mod demo_console;
pub mod fragment;
pub mod handles;
pub mod health;
pub mod http;
pub mod internal;
pub mod limits;
pub mod linger;
pub mod listen;
pub mod log_format;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod node_id;
pub mod registry;
pub mod replication;
pub mod room;
pub mod status;
pub mod status_cli;
pub mod status_client;
pub mod status_table;
pub mod store;
pub mod tls;
pub mod upgrade;

pub use app::App;
pub use node::{node_span, room_config, serve, serve_on, shutdown_signal};
