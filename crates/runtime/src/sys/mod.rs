//! Thin, typed wrappers around the system calls the runtime needs, one module per concern.
//!
//! Every kernel entry point the runtime uses goes through this module exactly once, so each
//! failure carries the call's name and its context, and every `unsafe` block lives here with the
//! invariant that makes it sound. Higher modules never call `libc` directly.
//!
//! - [`mount`](mod@mount): `mount`, `pivot_root`, the detached-mount API (idmapped mounts);
//! - [`ns`]: namespace flags, `unshare`, `setns`, hostname, loopback, credential changes;
//! - [`process`]: `clone`, wait, pidfds, exec, `_exit`, per-process flags;
//! - [`signals`]: `kill`, the signal mask, synchronous waits;
//! - [`sched`]: CPU affinity and scheduling policy;
//! - [`helper`]: `CLONE_VM` helper processes (the network namespace maker, the idmapping
//!   user namespace holder);
//! - [`fd`]: pipes, duplication, close-on-exec, polling, `flock`;
//! - [`fs`]: `*at` calls under a directory descriptor, ownership, modes, atomic replacement;
//! - [`procfs`]: readers of `/proc` and `/sys`;
//! - [`syscalls`]: the [`Syscalls`] trait over the calls the sandbox's setup makes, with the
//!   real implementation ([`LinuxSyscalls`]) and, for unit tests, a recording one.
//!
//! Every item is re-exported here, so callers write `sys::mount(..)`, `sys::pipe()`.

mod error;
pub mod fd;
pub mod fs;
pub mod helper;
pub mod mount;
pub mod ns;
pub mod process;
pub mod procfs;
#[cfg(test)]
pub mod recording;
pub mod sched;
pub mod signals;
pub mod syscalls;

pub use error::{SysError, SysResult};
pub use fd::*;
pub use fs::*;
pub use helper::{idmap_userns, NetnsHandle, NetnsHelper};
pub use mount::*;
pub use ns::{become_user, enter_netns, loopback_up, set_dumpable, sethostname, unshare};
pub use process::*;
pub use procfs::*;
pub use sched::*;
pub use signals::*;
pub use syscalls::{LinuxSyscalls, Syscalls};

#[cfg(test)]
mod tests;
