//! The cluster's presence registry and push routing, over Redis: which gateway holds which
//! user's devices, and getting each request's effects to those gateways.
//!
//! Keys (a deployment may share one Redis among clusters with distinct `prefix`es):
//! - `{prefix}:online:{user}`: a hash, device → gateway id. Written when a device
//!   authenticates (before its session reads the inbox head), removed when its last
//!   connection on that gateway ends, and cleaned lazily when it names a gateway whose lease
//!   ran out.
//! - `{prefix}:gateways`: a sorted set, gateway id → the Unix ms its lease ends at; each
//!   gateway renews its own every [`PresenceOptions::renew_every`].
//! - `{prefix}:lease:{gateway}`: the same lease as a key with a TTL. Renewing it tells a
//!   gateway whether Redis lost its data (the key was missing): the gateway then writes its
//!   devices again.
//! - Channel `{prefix}:push:{gateway}`: what other gateways send this one (inbox entries,
//!   typing events, kicks), as [`wire::GatewayMessage`] frames.
//!
//! Nothing here holds a message: Redis loses nothing that is not also in the store. While
//! Redis is down or empty, pushes to other gateways stop (the device gets the entries on its
//! next sync: a later push shows it the gap, and every reconnect syncs) and resume once the
//! gateways have written their devices again.

mod reader;
mod router;
pub mod wire;

pub use reader::PresenceReader;
pub use router::{ClusterRouter, PresenceError, PresenceOptions};
