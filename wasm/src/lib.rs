//! mycel-wasm: mycel in the browser.
//!
//! This crate is the browser host of [`mycel_core`]: it compiles to
//! WebAssembly and becomes the npm package `mycel` (`cargo xtask dist`
//! writes it to `wasm/pkg/`). It will own the wasm-bindgen API
//! (`Repo`, documents, durability events), the IndexedDB store, and the
//! WebSocket and WebRTC links, and do nothing a host should not: every
//! protocol decision stays in the core's `Node`.
//!
//! Today it re-exports the core, so the browser build and the native build
//! share one state machine from the first commit:
//!
//! ```
//! use mycel_wasm::core::id::ShareLink;
//! let link: Result<ShareLink, _> = "http://127.0.0.1:8080/".parse();
//! assert!(link.is_err(), "a link without its #d=…&k=… part is refused");
//! ```
#![forbid(unsafe_code)]

pub use mycel_core as core;
