//! plugvm: a KVM microVM monitor whose CPU and memory hotplug runs as transactions.
//!
//! This crate wires the others together: KVM, guest memory, the boot path, vCPU threads,
//! devices, the event loop, the API server and the `plugvm` binary (the client is `plugvm-remote`).
#![warn(missing_docs)]

pub mod api;
pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod console;
pub mod control;
pub mod counters;
pub mod cpu_manager;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod fuzzing_props;
mod guest_observations;
pub mod host_faults;
pub mod hotplug_service;
pub mod info;
mod journal_stream;
pub mod kernel_cache;
pub mod logging;
pub mod memory;
pub mod memory_backing;
pub mod memory_manager;
pub mod metrics;
pub mod request_handler;
pub mod signals;
pub mod slot_publisher;
pub mod vcpu;
pub mod vm;
