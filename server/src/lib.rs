//! The single-process server: wires the gateway, the logic tier and the embedded store
//! together. Nothing here decides anything about the protocol or the business rules; it only
//! chooses the parts and their settings (see [`app::ServerOptions`]).

pub mod app;
pub mod cli;
pub mod config_file;
pub mod hooks;
pub mod offline_push;
pub mod webhook_policy;
