//! Test support for Concord's integration tests: the real server as a child process
//! ([`server::Server`]) and a y-websocket client with a real `yrs` document
//! ([`client::YClient`]).

pub mod client;
pub mod cluster;
pub mod server;
pub mod tls;

pub use client::{WAIT, YClient};
pub use server::{
    Server, assert_contains, concord_bin, http_get, mint, server_doc, upgrade_status,
};
