//! `pause`: the process of a pod's sandbox container (the same static binary, hard-linked into a
//! tiny root as `/pause`). It holds the pod's namespaces, reaps what is re-parented to it (it is
//! PID 1 of the pod's PID namespace) and exits 0 on SIGINT or SIGTERM, like Kubernetes' pause.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// Runs until SIGINT or SIGTERM; never returns.
pub fn main() -> ! {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        set.add(s);
    }
    if nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGINT | Signal::SIGTERM) => std::process::exit(0),
            Ok(Signal::SIGCHLD) => reap(),
            _ => {}
        }
    }
}

fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
