//! meshgov's WebAssembly plugin host.
//!
//! Guild-written transforms and validators run here, never trusted: each is
//! compiled once when a bundle loads ([`Plugins::compile`]), and every call
//! runs in a fresh store from wasmtime's pooling allocator, with the fuel
//! and memory cap its manifest declares and no imports at all. A plugin that
//! traps, runs out of fuel, grows past its memory cap or answers outside the
//! ABI fails that call with a [`PluginFailure`](meshgov_anonymize::PluginFailure);
//! the host keeps serving.
//!
//! The sidecar, `meshgov check`/`test` and conformance all use this crate,
//! so a plugin behaves the same everywhere. The wire format is
//! `wasm-plugins/ABI.md`, implemented in [`abi`].

pub mod abi;
pub mod examples;
mod host;
mod set;

pub use host::{Kind, LoadError, Plugin, Runtime};
pub use set::{Inspector, Plugins};
