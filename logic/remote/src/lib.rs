//! The logic API over the network: in the scaled-out shape, logic nodes serve
//! [`logic_api::LogicApi`] ([`serve`]) and every gateway calls them through [`RemoteLogic`],
//! which implements the same trait, so the gateway cannot tell a remote logic tier from an
//! in-process one.
//!
//! - [`wire`]: the frames and messages.
//! - [`policy`]: which node a call goes to, and what to do when a call fails (sans-IO).
//! - [`serve`]: the node side.
//! - [`RemoteLogic`]: the gateway side, with a deadline on every call, failover between nodes
//!   and retries that repeat the same request (same client msg ids and request ids), never a
//!   new one.

mod client;
pub mod policy;
mod server;
pub mod wire;

pub use client::{RemoteLogic, RemoteOptions};
pub use server::serve;
