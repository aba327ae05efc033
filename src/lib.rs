//! blue-wireguard: the WireGuard tunnel lifecycle for the Sentinel dVPN JavaScript SDK on Linux.
//!
//! Everything except `js` takes and returns plain Rust types, so `cargo test` exercises it
//! without Node. `js` is the only module that knows napi.

pub mod backend;
pub mod cmd;
pub mod confdir;
pub mod config;
pub mod dns;
pub mod error;
pub mod handshake;
pub mod netdev;
pub mod netlink;
pub mod nft;
pub mod owner;
pub mod registry;
pub mod routing;
pub mod state;
pub mod teardown;
pub mod trust;
pub mod tunnel;
pub mod watchdog;

mod js;
