//! The zygote's process and channel: a `SOCK_SEQPACKET` socket pair whose messages carry JSON
//! plus file descriptors (`SCM_RIGHTS`), and the `fork` that creates the zygote before the agent
//! starts any thread (docs/adr/0004-executor.md).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType,
};
use nix::unistd::{fork, ForkResult, Pid};

/// Largest message either side sends (a reply with a process list or metrics stays far below).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Most descriptors one message carries (stdin, stdout, stderr).
pub const MAX_FDS: usize = 8;

/// One end of the zygote channel.
#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    /// Sends one message with `fds` attached (the descriptors stay open on this side).
    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let iov = [IoSlice::new(data)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        loop {
            match sendmsg::<()>(self.0.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one message and its descriptors; `None` when the peer closed its end.
    pub fn recv(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(list) = c {
                            // SAFETY: the kernel just installed these descriptors in this process
                            // for this message (SCM_RIGHTS); nothing else owns them, so each is
                            // wrapped exactly once.
                            fds.extend(list.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    break (msg.bytes, fds, truncated);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if truncated {
            return Err(io::Error::other("zygote message truncated"));
        }
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        buf.truncate(len);
        Ok(Some((buf, fds)))
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
