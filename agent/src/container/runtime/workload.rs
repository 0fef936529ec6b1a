//! The last step inside a container process, right before its program runs: libcontainer's
//! default executor, with two things runc does that libcontainer 0.7 does not.
//!
//! * **The pty has its size before the program starts.** libcontainer opens the container's pty
//!   without a size and hands the master to the agent while the process goes on, so a resize
//!   from the agent raced the program (`stty size` saw 0×0 now and then, and always for an init).
//!   Here `process.consoleSize` is applied to the slave (our stdin) first, as runc's init does.
//! * **An `execve` that fails exits 127 or 126** with the reason on stderr, the shell's and
//!   docker's codes: 127 when the program does not exist, 126 when it cannot be run. libcontainer
//!   would return an error and the process would exit with an opaque code. (`validate` still
//!   refuses a program missing from `PATH` at create time, as runc does.)

use std::ffi::CString;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError};
use nix::errno::Errno;

/// Exit code of a program that does not exist (`ENOENT`).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code of a program that exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;

/// libcontainer's default executor plus the pty size and the exit codes above.
#[derive(Debug, Clone, Copy, Default)]
pub struct Workload;

impl Executor for Workload {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(p) = spec.process() {
            if p.terminal() == Some(true) {
                if let Some(size) = p.console_size() {
                    let rows = u16::try_from(size.height()).unwrap_or(u16::MAX);
                    let cols = u16::try_from(size.width()).unwrap_or(u16::MAX);
                    // fd 0 is the pty slave (libcontainer connected stdio to it).
                    let _ =
                        crate::sys::pty::set_size(std::os::fd::AsFd::as_fd(&std::io::stdin()), rows, cols);
                }
            }
        }
        let args: Vec<String> = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        let Some(program) = args.first() else {
            return Err(ExecutorError::InvalidArg);
        };
        let cargs = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        // As runc: look the program up in PATH, then execve it (execvp would run a file the
        // kernel cannot execute through /bin/sh instead of failing with ENOEXEC).
        let path = lookup(program).unwrap_or_else(|| cargs[0].clone());
        let errno = match nix::unistd::execv(&path, &cargs) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        let (code, why) = match errno {
            Errno::ENOENT => (EXIT_NOT_FOUND, "no such file or directory"),
            Errno::EACCES => (EXIT_CANNOT_EXECUTE, "permission denied"),
            Errno::ENOEXEC => (EXIT_CANNOT_EXECUTE, "exec format error"),
            _ => (EXIT_CANNOT_EXECUTE, errno.desc()),
        };
        eprintln!("rgcs: exec {program:?}: {why}");
        std::process::exit(code)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }

    fn setup_envs(
        &self,
        envs: std::collections::HashMap<String, String>,
    ) -> Result<(), ExecutorSetEnvsError> {
        libcontainer::workload::default::get_executor().setup_envs(envs)
    }
}

/// `program` itself when it has a slash, else the first executable regular file of that name in
/// `PATH` (the container's environment is already in place).
fn lookup(program: &str) -> Option<CString> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return CString::new(program).ok();
    }
    let path = std::env::var("PATH").ok()?;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .and_then(|p| CString::new(p.into_os_string().into_encoded_bytes()).ok())
}
