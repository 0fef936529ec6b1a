//! The zygote's process and channel: a `SOCK_SEQPACKET` socket pair whose messages carry JSON
//! plus file descriptors (`SCM_RIGHTS`), and the `fork` that creates the zygote before the agent
//! starts any thread (docs/adr/0004-executor.md).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::{fork, ForkResult, Pid};

/// Largest message either side sends (a reply with a process list or metrics stays far below).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// One end of the zygote channel.
#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    /// Sends one message with `fds` attached (the descriptors stay open on this side).
    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        super::scm::send_with_fds(self.0.as_fd(), data, fds).map(|_| ())
    }

    /// Receives one message and its descriptors; `None` when the peer closed its end.
    pub fn recv(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let got = super::scm::recv_with_fds(self.0.as_fd(), &mut buf)?;
        if got.truncated {
            return Err(io::Error::other("zygote message truncated"));
        }
        if got.len == 0 && got.fds.is_empty() {
            return Ok(None);
        }
        buf.truncate(got.len);
        Ok(Some((buf, got.fds)))
    }
}

/// Which side of the fork this is.
#[derive(Debug)]
pub enum Forked {
    /// The agent: the zygote's PID and the agent's end of the channel.
    Agent {
        /// The zygote.
        pid: Pid,
        /// Our end.
        channel: Channel,
    },
    /// The zygote: its end of the channel.
    Zygote(Channel),
}

/// Number of threads of this process, from `/proc/self/status`.
fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Forks the zygote. Refuses unless this process has exactly one thread, so the child is a
/// complete copy (no lock held by a vanished thread). In the child, SIGPIPE is reset to its
/// default (Rust ignores it, and an ignored signal would be inherited by every container process
/// across `execve`) and the zygote dies with the agent (`PR_SET_PDEATHSIG`).
pub fn fork_zygote() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork the zygote from a process with {threads} threads"
        )));
    }
    let (agent, zygote) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let parent = nix::unistd::getpid();
    // SAFETY: the process has exactly one thread (checked just above), so the child is a full
    // copy of a consistent address space: no other thread can hold the allocator's or any other
    // lock at the instant of the fork, and the child may run arbitrary code.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(zygote);
            Ok(Forked::Agent {
                pid: child,
                channel: Channel(agent),
            })
        }
        ForkResult::Child => {
            drop(agent);
            // SAFETY: setting a signal's disposition to SIG_DFL installs no handler and cannot
            // break any invariant of this single-threaded process.
            let _ = unsafe {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGPIPE,
                    nix::sys::signal::SigHandler::SigDfl,
                )
            };
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            if nix::unistd::getppid() != parent {
                std::process::exit(0);
            }
            Ok(Forked::Zygote(Channel(zygote)))
        }
    }
}

/// Starts a replacement zygote from the agent's own binary: `exe --zygote STATE_ROOT`, with its
/// end of a new channel as stdin and the agent's stderr as its stderr. Safe from the
/// multi-threaded agent (the new process execs at once). Returns its PID and our end.
pub fn spawn_zygote(exe: &Path, state_root: &Path) -> io::Result<(Pid, Channel)> {
    let (agent, zygote) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let pid = super::spawn::spawn(super::spawn::Spawn {
        program: cstr(exe.as_os_str().as_bytes())?,
        argv: vec![
            cstr(b"gcs")?,
            cstr(b"--zygote")?,
            cstr(state_root.as_os_str().as_bytes())?,
        ],
        envp: std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                cstr(&kv)
            })
            .collect::<io::Result<_>>()?,
        cwd: None,
        stdio: [Some(zygote), None, Some(stderr)],
        controlling_tty: false,
    })?;
    Ok((pid, Channel(agent)))
}

/// In a zygote started by [`spawn_zygote`]: takes the channel from stdin (moved to a
/// close-on-exec descriptor above 2, so no container process can inherit it), puts `/dev/null`
/// on stdin, and makes this process die with the agent.
pub fn channel_from_stdin() -> io::Result<Channel> {
    let high = nix::fcntl::fcntl(0, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC just created `high`; nothing else owns it.
    let channel = Channel(unsafe { OwnedFd::from_raw_fd(high) });
    let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
    nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0)?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn messages_carry_descriptors() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (a, b) = (Channel(a), Channel(b));
        let (r, w) = nix::unistd::pipe().unwrap();
        a.send(b"hello", &[r.as_fd(), w.as_fd()]).unwrap();
        let (data, fds) = b.recv().unwrap().unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(fds.len(), 2);
        a.send(b"x", &[]).unwrap();
        assert_eq!(b.recv().unwrap().unwrap().1.len(), 0);
        drop(a);
        assert!(b.recv().unwrap().is_none());
    }
}
