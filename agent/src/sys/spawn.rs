//! fork + exec of processes run in the UVM itself (null container ID), safe to call from the
//! multi-threaded agent: the child runs only async-signal-safe calls on data prepared before the
//! fork, and reports an exec failure through a close-on-exec pipe. Nobody waits here: the exit
//! goes to the reaper.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::unistd::{fork, ForkResult, Pid};

/// What to run.
#[derive(Debug)]
pub struct Spawn {
    /// Absolute path of the program.
    pub program: CString,
    /// argv.
    pub argv: Vec<CString>,
    /// The exact environment (`K=V`).
    pub envp: Vec<CString>,
    /// Working directory, or the agent's.
    pub cwd: Option<CString>,
    /// Descriptors for 0, 1 and 2 (`None`: `/dev/null`).
    pub stdio: [Option<OwnedFd>; 3],
    /// Make the child a session leader with stdin as its controlling terminal.
    pub controlling_tty: bool,
}

fn null_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Starts the process and returns its PID once it has exec'ed (or the exec error).
pub fn spawn(s: Spawn) -> io::Result<Pid> {
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let fds: [RawFd; 3] = [0, 1, 2].map(|i| {
        s.stdio[i]
            .as_ref()
            .map_or(devnull.as_raw_fd(), AsRawFd::as_raw_fd)
    });
    let argv = null_terminated(&s.argv);
    let envp = null_terminated(&s.envp);
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child only makes async-signal-safe calls (sigprocmask, signal, setsid, ioctl,
    // dup/dup2, chdir, execve, write, _exit) on memory prepared before the fork (the CStrings and
    // pointer arrays above stay alive in the parent and are copied into the child), so locks held
    // by other agent threads at the fork cannot be touched.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(err_w);
            let mut errno = [0u8; 4];
            let n = loop {
                match nix::unistd::read(err_r.as_raw_fd(), &mut errno) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other?,
                }
            };
            if n == 4 {
                return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
            }
            Ok(child)
        }
        ForkResult::Child => {
            // SAFETY: async-signal-safe calls only, see above; every pointer is valid and
            // NUL-terminated, and the process ends in execve or _exit.
            unsafe { child(&s, fds, &argv, &envp, err_w.as_raw_fd()) }
        }
    }
}

/// # Safety
/// Must be called only in the child of `fork`, with valid descriptors and NUL-terminated,
/// null-ended pointer arrays; never returns.
unsafe fn child(
    s: &Spawn,
    fds: [RawFd; 3],
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err: RawFd,
) -> ! {
    let fail = |err_fd: RawFd| -> ! {
        let e = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
            .to_ne_bytes();
        // SAFETY: write and _exit are async-signal-safe; `e` is a live 4-byte buffer.
        unsafe {
            libc::write(err_fd, e.as_ptr().cast(), e.len());
            libc::_exit(127)
        }
    };
    // SAFETY: all calls are async-signal-safe and take valid arguments: the signal set is
    // initialised by sigemptyset; fds are open descriptors of this process; the strings are
    // NUL-terminated and the arrays null-terminated (caller's contract).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Move the sources above 2 first, so dup2 onto 0..2 cannot clobber one still needed.
        let mut high = [0; 3];
        for (i, fd) in fds.iter().enumerate() {
            high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
            if high[i] < 0 {
                fail(err);
            }
        }
        if s.controlling_tty && libc::setsid() < 0 {
            fail(err);
        }
        for (target, fd) in (0..).zip(high.iter()) {
            if libc::dup2(*fd, target) < 0 {
                fail(err);
            }
        }
        if s.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail(err);
        }
        if let Some(cwd) = &s.cwd {
            if libc::chdir(cwd.as_ptr()) < 0 {
                fail(err);
            }
        }
        libc::execve(s.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(err)
    }
}
