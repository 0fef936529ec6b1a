//! Where PID 1's own log lines go.
//!
//! This module owns the destination of init's [`LogLine`]s: buffered in memory until the port-109
//! socket exists (the early steps run before vsock is loaded), then written to the socket as JSON, or
//! to `/dev/kmsg` if there is no socket or it stops accepting data. Writes to the socket never block
//! PID 1 for longer than [`SEND_TIMEOUT`]: a host that stops reading costs log lines, not the VM.
//!
//! **One writer per stream.** While the agent runs it owns the socket (it is its stderr): two
//! writers could interleave or cut lines, and hcsshim's host stops parsing the log stream at the
//! first broken JSON object. So, from the agent's start to its exit, init's lines go through a pipe
//! that the agent relays into its own log queue ([`Journal::relay_through`]); each line is one
//! atomic pipe write (at most `PIPE_BUF` bytes) or, if it cannot be, goes to `/dev/kmsg`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};

use crate::kmsg;
use crate::log::{Level, LogLine};

/// Longest time one line may take to be accepted by the socket.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Lines kept while no destination is chosen; later ones are counted and dropped.
const MAX_PENDING: usize = 256;

enum Sink {
    Buffer,
    Socket(OwnedFd),
    /// The agent runs: lines go to `pipe`, which it relays; `socket` is kept for after it exits.
    Relay {
        pipe: OwnedFd,
        socket: Option<OwnedFd>,
    },
    Kmsg,
}

/// Largest write the kernel keeps atomic on a pipe.
const PIPE_BUF: usize = libc::PIPE_BUF;

/// PID 1's log destination (see the module docs).
pub(crate) struct Journal {
    sink: Sink,
    pending: Vec<LogLine>,
    dropped: usize,
    kmsg_path: PathBuf,
}

impl Journal {
    /// A journal that buffers until [`Journal::attach`] or [`Journal::use_kmsg`].
    pub(crate) fn new() -> Self {
        Journal::with_kmsg_path(PathBuf::from(kmsg::KMSG_PATH))
    }

    /// Like [`Journal::new`], with another kmsg-like path (a seam for tests).
    pub(crate) fn with_kmsg_path(kmsg_path: PathBuf) -> Self {
        Journal {
            sink: Sink::Buffer,
            pending: Vec::new(),
            dropped: 0,
            kmsg_path,
        }
    }

    /// Records one line.
    pub(crate) fn emit(&mut self, line: LogLine) {
        match &self.sink {
            Sink::Buffer if self.pending.len() < MAX_PENDING => self.pending.push(line),
            Sink::Buffer => self.dropped += 1,
            Sink::Socket(sock) => {
                if let Err(e) = send_line(sock.as_fd(), line.to_json().as_bytes(), SEND_TIMEOUT) {
                    self.to_kmsg(
                        &LogLine::new(Level::Warning, "log stream write failed; logging to /dev/kmsg")
                            .field("error", e.to_string()),
                    );
                    self.sink = Sink::Kmsg;
                    self.to_kmsg(&line);
                }
            }
            Sink::Relay { pipe, .. } => {
                let json = line.to_json();
                let written = json.len() <= PIPE_BUF
                    && matches!(nix::unistd::write(pipe.as_fd(), json.as_bytes()), Ok(n) if n == json.len());
                if !written {
                    // pipe full (the agent is not relaying), broken, or the line too long to be atomic
                    self.to_kmsg(&line);
                }
            }
            Sink::Kmsg => self.to_kmsg(&line),
        }
    }

    /// While the agent runs, sends lines to `pipe` (the write end of the pipe the agent relays;
    /// it must be non-blocking) instead of the socket, which the agent then writes alone.
    pub(crate) fn relay_through(&mut self, pipe: OwnedFd) {
        let socket = match std::mem::replace(&mut self.sink, Sink::Kmsg) {
            Sink::Socket(sock) => Some(sock),
            Sink::Relay { socket, .. } => socket,
            Sink::Buffer | Sink::Kmsg => None,
        };
        self.sink = Sink::Relay { pipe, socket };
        self.flush();
    }

    /// The agent exited: init is the only writer again; back to the socket (or kmsg).
    pub(crate) fn end_relay(&mut self) {
        if let Sink::Relay {
            socket: Some(sock), ..
        } = std::mem::replace(&mut self.sink, Sink::Kmsg)
        {
            self.sink = Sink::Socket(sock);
        }
    }

    /// Records `line` on the socket (if any) *and* in the kernel log, flushing anything still buffered
    /// to the kernel log first. For fatal errors and the agent's exit.
    pub(crate) fn emit_everywhere(&mut self, line: LogLine) {
        if matches!(self.sink, Sink::Buffer) {
            self.use_kmsg();
        }
        if matches!(self.sink, Sink::Socket(_) | Sink::Relay { .. }) {
            self.emit(line.clone());
        }
        self.to_kmsg(&line);
    }

    /// Sends every buffered line, then all later ones, to `sock`.
    pub(crate) fn attach(&mut self, sock: OwnedFd) {
        self.sink = Sink::Socket(sock);
        self.flush();
    }

    /// Sends every buffered line, then all later ones, to the kernel log.
    pub(crate) fn use_kmsg(&mut self) {
        self.sink = Sink::Kmsg;
        self.flush();
    }

    /// The log socket, while it is the destination.
    pub(crate) fn socket(&self) -> Option<BorrowedFd<'_>> {
        match &self.sink {
            Sink::Socket(sock)
            | Sink::Relay {
                socket: Some(sock), ..
            } => Some(sock.as_fd()),
            _ => None,
        }
    }

    fn flush(&mut self) {
        for line in std::mem::take(&mut self.pending) {
            self.emit(line);
        }
        if self.dropped > 0 {
            let dropped = std::mem::take(&mut self.dropped);
            self.emit(LogLine::new(Level::Warning, "early log lines dropped").field("count", dropped));
        }
    }

    fn to_kmsg(&self, line: &LogLine) {
        kmsg::log_to(&self.kmsg_path, line.level(), &line.to_text());
    }
}

/// Sends all of `buf` on the stream socket `sock` without ever blocking longer than `timeout` in
/// total, and without raising `SIGPIPE`.
pub(crate) fn send_line(sock: BorrowedFd<'_>, mut buf: &[u8], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !buf.is_empty() {
        match send(
            sock.as_raw_fd(),
            buf,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(sock, PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::TimedOut, "log socket stayed full")),
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::sandbox::TempDir;

    fn journal() -> (TempDir, Journal) {
        let dir = TempDir::new();
        let path = dir.path().join("kmsg");
        std::fs::write(&path, b"").expect("kmsg file");
        let j = Journal::with_kmsg_path(path);
        (dir, j)
    }

    fn kmsg_text(dir: &TempDir) -> String {
        std::fs::read_to_string(dir.path().join("kmsg")).expect("read kmsg")
    }

    #[test]
    fn relays_through_the_pipe_while_the_agent_runs_then_back_to_the_socket() {
        use nix::fcntl::OFlag;
        let (dir, mut j) = journal();
        let (ours, mut host) = UnixStream::pair().expect("pair");
        j.attach(OwnedFd::from(ours));
        j.emit(LogLine::new(Level::Info, "before"));
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).expect("pipe");
        j.relay_through(w);
        j.emit(LogLine::new(Level::Info, "during"));
        // a line too long to be one atomic pipe write goes to kmsg, never half into the pipe
        j.emit(LogLine::new(Level::Info, "x".repeat(PIPE_BUF)));
        j.end_relay();
        j.emit(LogLine::new(Level::Info, "after"));
        drop(j);
        let mut piped = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut piped)
            .expect("read pipe");
        assert_eq!(piped.lines().count(), 1, "{piped}");
        assert!(piped.contains("\"msg\":\"during\""), "{piped}");
        let mut sock = String::new();
        host.read_to_string(&mut sock).expect("read socket");
        let msgs: Vec<&str> = sock.lines().collect();
        assert_eq!(msgs.len(), 2, "{sock}");
        assert!(msgs[0].contains("before") && msgs[1].contains("after"), "{sock}");
        assert!(kmsg_text(&dir).contains("xxxx"), "the long line went to kmsg");
    }

    #[test]
    fn buffers_then_flushes_to_the_socket_in_order() {
        let (dir, mut j) = journal();
        j.emit(LogLine::new(Level::Info, "one"));
        j.emit(LogLine::new(Level::Info, "two").field("n", 2));
        let (ours, mut host) = UnixStream::pair().expect("pair");
        j.attach(OwnedFd::from(ours));
        assert!(j.socket().is_some());
        j.emit(LogLine::new(Level::Warning, "three"));
        drop(j);
        let mut text = String::new();
        host.read_to_string(&mut text).expect("read");
        let msgs: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["msg"]
                    .as_str()
                    .unwrap_or("")
                    .into()
            })
            .collect();
        assert_eq!(msgs, ["one", "two", "three"]);
        assert_eq!(kmsg_text(&dir), "", "nothing went to kmsg");
    }

    #[test]
    fn falls_back_to_kmsg_when_there_is_no_socket_or_it_breaks() {
        let (dir, mut j) = journal();
        j.emit(LogLine::new(Level::Info, "early"));
        let (ours, host) = UnixStream::pair().expect("pair");
        drop(host);
        j.attach(OwnedFd::from(ours));
        assert!(j.socket().is_none(), "a broken socket is dropped");
        j.emit(LogLine::new(Level::Error, "later").field("k", 1));
        assert_eq!(
            kmsg_text(&dir),
            "<4>rgcs-init: log stream write failed; logging to /dev/kmsg error=\"Broken pipe (os error 32)\"\n\
             <6>rgcs-init: early\n\
             <3>rgcs-init: later k=1\n"
        );
    }

    #[test]
    fn emit_everywhere_reaches_both() {
        let (dir, mut j) = journal();
        j.emit(LogLine::new(Level::Info, "buffered"));
        j.emit_everywhere(LogLine::new(Level::Error, "fatal"));
        assert_eq!(kmsg_text(&dir), "<6>rgcs-init: buffered\n<3>rgcs-init: fatal\n");

        let (dir, mut j) = journal();
        let (ours, mut host) = UnixStream::pair().expect("pair");
        j.attach(OwnedFd::from(ours));
        j.emit_everywhere(LogLine::new(Level::Info, "agent exited").field("exit_code", 0));
        drop(j);
        let mut text = String::new();
        host.read_to_string(&mut text).expect("read");
        assert!(
            text.contains("\"msg\":\"agent exited\",\"exit_code\":0}"),
            "{text}"
        );
        assert_eq!(kmsg_text(&dir), "<6>rgcs-init: agent exited exit_code=0\n");
    }

    #[test]
    fn a_full_socket_times_out_instead_of_blocking() {
        let (ours, _host) = UnixStream::pair().expect("pair");
        let fd = OwnedFd::from(ours);
        let chunk = vec![b'x'; 64 * 1024];
        let start = Instant::now();
        let err = loop {
            if let Err(e) = send_line(fd.as_fd(), &chunk, Duration::from_millis(50)) {
                break e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the buffer never filled"
            );
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn buffer_is_bounded() {
        let (dir, mut j) = journal();
        for i in 0..(MAX_PENDING + 5) {
            j.emit(LogLine::new(Level::Debug, format!("l{i}")));
        }
        j.use_kmsg();
        let text = kmsg_text(&dir);
        assert_eq!(text.lines().count(), MAX_PENDING + 1);
        assert!(
            text.ends_with("<4>rgcs-init: early log lines dropped count=5\n"),
            "{text}"
        );
    }
}
