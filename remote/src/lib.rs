//! plugvm's API client and the `plugvm-remote` command line.
//!
//! A crate of its own so that the client links no KVM code: it depends on serde, clap and
//! thiserror only. It also holds what both ends of the API must agree on, in one place:
//! [`wire`] (the path prefix, the request bodies, the reason phrases) and [`size`] (the
//! byte-size syntax of `512M`, shared with `plugvm`'s own command line). The VMM's server
//! imports them from here.
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//! use plugvm_remote::{client, wire::API_PREFIX};
//!
//! let target = format!("{API_PREFIX}/vmm.ping");
//! let socket = Path::new("/run/plugvm.sock");
//! let response = client::request(socket, "GET", &target, None, Duration::from_secs(5));
//! match response {
//!     Ok(r) => println!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
//!     Err(e) => eprintln!("{e}"),
//! }
//! ```
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod size;
pub mod watch;
pub mod wire;
