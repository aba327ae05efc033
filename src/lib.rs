//! blue-wireguard: the WireGuard tunnel lifecycle for the Sentinel dVPN JavaScript SDK on Linux.
//!
//! Everything except `js` takes and returns plain Rust types, so `cargo test` exercises it
//! without Node. `js` is the only module that knows napi.

mod alloc;
pub mod backend;
pub mod cmd;
pub mod confdir;
pub mod config;
pub mod dns;
pub mod error;
pub mod handshake;
pub mod netdev;
pub mod netlink;
pub mod netstack;
pub mod nft;
pub mod owner;
pub mod proxy;
pub mod registry;
pub mod routing;
pub mod state;
pub mod teardown;
pub mod trust;
pub mod tunnel;
pub mod watchdog;

mod js;

/// Large blocks as their own mappings (see `alloc`): every reconnect's handshake waited on
/// glibc clearing 25 MiB of receive buffers.
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;
