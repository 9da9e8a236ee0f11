//! Parent programs and vsock from the shell (E9xx): `cloister exec` runs an unmodified host
//! program whose `AF_VSOCK` sockets reach enclaves through the host fabric, and
//! `cloister vsock connect|listen` carry standard input and output over one vsock stream (the
//! socat of vsock).
//!
//! `exec` installs the notification filter of [`cloister_confine::notify`] on the child
//! before it execs the program (no other confinement: the program keeps its privileges) and
//! serves it with [`cloister_supervisor`] against the host fabric (`<run>/vsock`): the
//! program's `connect` to `(cid, port)` is the fabric's `CONNECT <port>` on `<cid>.sock`, its
//! `bind` + `listen` on `(VMADDR_CID_ANY or 3, port)` makes the host listener `3_<port>.sock`,
//! and its `accept` reads the broker's `CONNECT-FROM` preamble, so the program reads and
//! writes only its own bytes on native Unix streams.

use crate::codes;
use crate::errors::{CliError, CliResult, Coded};
use clap::{Args, Subcommand};
use cloister_vsock::{Transport, VsockAddr, VsockListener, VsockStream};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum VsockCommand {
    /// Run a host program whose AF_VSOCK sockets reach enclaves by (cid, port) and listen for
    /// them as cid 3, unchanged.
    Exec(ExecArgs),
    /// Carry standard input and output over one vsock stream.
    #[command(subcommand)]
    Vsock(VsockVerb),
}

/// `cloister exec [--] CMD [ARGS]`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

/// `cloister vsock ...`.
#[derive(Debug, Subcommand)]
pub enum VsockVerb {
    /// Connect to (cid, port) and relay stdin/stdout until both directions end.
    Connect(ConnectArgs),
    /// Listen on a port (as cid 3 on the host, or inside an enclave), accept one connection
    /// and relay stdin/stdout over it.
    Listen(ListenArgs),
}

/// `cloister vsock connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The peer's cid (an enclave's from the host; 3 from inside an enclave).
    #[arg(long)]
    pub cid: u32,
    /// The peer's port.
    #[arg(long)]
    pub port: u32,
}

/// `cloister vsock listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The port.
    #[arg(long)]
    pub port: u32,
}

pub use crate::codes::vsock::CODES;

/// Runs one command of this area.
pub fn run(cmd: VsockCommand) -> CliResult<()> {
    match cmd {
        VsockCommand::Exec(a) => exec(a),
        VsockCommand::Vsock(VsockVerb::Connect(a)) => {
            let s = VsockStream::connect_with(&Transport::detect(), VsockAddr::new(a.cid, a.port))
                .code(codes::E902)?;
            relay(s)
        }
        VsockCommand::Vsock(VsockVerb::Listen(a)) => {
            let l = VsockListener::bind_with(&Transport::detect(), a.port).code(codes::E903)?;
            let (s, _) = l.accept().code(codes::E902)?;
            relay(s)
        }
    }
}

/// Copies stdin to the stream (then shuts its write side) and the stream to stdout.
fn relay(stream: VsockStream) -> CliResult<()> {
    let mut up = stream.try_clone().code(codes::E904)?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stdin = std::io::stdin().lock();
        let copied = std::io::copy(&mut stdin, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
        copied.map(drop)
    });
    let mut down = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = down.read(&mut buf).code(codes::E904)?;
        if n == 0 {
            break;
        }
        stdout.write_all(&buf[..n]).code(codes::E904)?;
        stdout.flush().code(codes::E904)?;
    }
    // The peer closed: whatever stdin still has has nowhere to go.
    if writer.is_finished() {
        if let Ok(r) = writer.join() {
            r.code(codes::E904)?;
        }
    }
    Ok(())
}

/// `cloister exec`: the program under the notification filter, served against the host
/// fabric; exits with the program's status.
fn exec(args: ExecArgs) -> CliResult<()> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| CliError::msg(codes::E003, "no program to run"))?;
    let filter = cloister_confine::notify::build().code(codes::E901)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().code(codes::E901)?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    let chan = theirs.as_fd().try_clone_to_owned().code(codes::E901)?;
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (prctl, seccomp, sendmsg): no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            let listener = match cloister_confine::notify::install(&filter) {
                Ok(l) => l,
                // Without CAP_SYS_ADMIN the kernel wants no_new_privs first.
                Err(_) => {
                    cloister_confine::caps::set_no_new_privs().map_err(std::io::Error::other)?;
                    cloister_confine::notify::install(&filter).map_err(std::io::Error::other)?
                }
            };
            cloister_supervisor::send_listener(chan.as_fd(), listener.as_fd())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::new(codes::E901, e).context_program(program))?;
    drop(cmd);
    drop(theirs);
    let listener = cloister_supervisor::recv_listener(ours.as_fd())
        .code(codes::E901)?
        .ok_or_else(|| CliError::msg(codes::E901, "the program sent no notification listener"))?;
    let fabric = std::sync::Arc::new(cloister_supervisor::HostFabric::new(
        cloister_vsock::stream::fabric_dir(),
    ));
    let supervisor = cloister_supervisor::Supervisor::spawn(listener, fabric).code(codes::E901)?;
    let status = child.wait().code(codes::E901)?;
    supervisor.stop();
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    if code != 0 {
        crate::errors::exit_with(code);
    }
    Ok(())
}

trait ProgramContext {
    fn context_program(self, program: &OsString) -> Self;
}

impl ProgramContext for CliError {
    fn context_program(self, program: &OsString) -> Self {
        CliError {
            code: self.code,
            error: self
                .error
                .context(format!("cannot run {}", program.to_string_lossy())),
        }
    }
}
