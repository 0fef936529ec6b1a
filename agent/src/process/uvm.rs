//! Processes run in the UVM itself (null container ID, docs/gcs-reference.md §6.11): root, the agent's
//! namespaces and cgroup, the program looked up in the agent's own PATH, exactly the given
//! environment, `CommandArgs` preferred over `CommandLine` (shell word rules), the sockets handed
//! to the child as its stdio, or a pty with `EmulateConsole`. A signalled UVM process reports
//! `4294967295` (Go's −1).

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rgcs_protocol::message::ExecuteProcessRequest;

use super::stdio::{self, Relays};
use super::table::ProcessEntry;
use crate::error::GcsError;
use crate::host::Host;
use crate::reaper::ExitStatus;
use crate::sys::spawn::{spawn, Spawn};

/// Splits a command line with POSIX shell word rules (quotes and backslashes; no expansion).
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// `program` as given when it has a slash, else the first executable match in `path`.
pub fn lookup(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn cstring(s: impl Into<Vec<u8>>, what: &str) -> Result<CString, GcsError> {
    CString::new(s).map_err(|_| GcsError::Unsupported(format!("a NUL byte in the {what}")))
}

/// The exit code a UVM process reports.
pub fn exit_code(s: ExitStatus) -> u32 {
    match s {
        ExitStatus::Exited(c) => u32::try_from(c).unwrap_or(u32::MAX),
        ExitStatus::Signaled(_) => u32::MAX,
    }
}

/// Runs a process in the UVM.
pub async fn execute(host: &Arc<Host>, req: &ExecuteProcessRequest) -> Result<u32, GcsError> {
    let exec = host.executor()?;
    let p = &req.settings.process_parameters;
    let argv = if p.command_args.is_empty() {
        split_words(&p.command_line).map_err(|e| GcsError::Unsupported(format!("CommandLine: {e}")))?
    } else {
        p.command_args.clone()
    };
    let first = argv
        .first()
        .ok_or_else(|| GcsError::Unsupported("an empty command".into()))?;
    let agent_path = std::env::var("PATH").unwrap_or_else(|_| "/sbin:/usr/sbin:/bin:/usr/bin".into());
    let program = lookup(first, &agent_path).ok_or_else(|| {
        GcsError::io(
            format!("find {first:?} in the agent's PATH"),
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    let argv = argv
        .iter()
        .map(|a| cstring(a.as_str(), "arguments"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = p
        .environment
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}"), "environment"))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = match p.working_directory.as_str() {
        "" => None,
        d => Some(cstring(d, "working directory")?),
    };
    let [s_in, s_out, s_err] = stdio::dial_all(
        &exec.stdio,
        stdio::ports(p, &req.settings.vsock_stdio_relay_settings),
    )
    .await?;
    let (stdio, master, relays): ([Option<OwnedFd>; 3], _, _) = if p.emulate_console {
        let (master, slave) = crate::sys::pty::open().map_err(|e| GcsError::io("open a pty", e))?;
        if let [rows, cols] = p.console_size[..] {
            if let (Ok(rows), Ok(cols)) = (u16::try_from(rows), u16::try_from(cols)) {
                let _ = crate::sys::pty::set_size(std::os::fd::AsFd::as_fd(&master), rows, cols);
            }
        }
        let dup = || {
            slave
                .try_clone()
                .map_err(|e| GcsError::io("duplicate the pty", e))
        };
        let stdio = [Some(dup()?), Some(dup()?), Some(dup()?)];
        let relays = Relays::tty(&master, s_in, s_out, None)?;
        drop(s_err);
        (stdio, Some(Arc::new(master)), relays)
    } else {
        ([s_in, s_out, s_err], None, Relays::default())
    };
    let spawned_at = Instant::now();
    let pid = spawn(Spawn {
        program: cstring(program.as_os_str().as_encoded_bytes(), "program path")?,
        argv,
        envp,
        cwd,
        stdio,
        controlling_tty: master.is_some(),
    })
    .map_err(|e| GcsError::io(format!("start {first:?} in the UVM"), e))?;
    let pid = crate::sys::pid::ProcessId::from(pid);
    let watch = host.reaper.watch(pid, spawned_at);
    let entry = ProcessEntry::new(pid);
    if let Some(m) = master {
        entry.set_tty(m);
    }
    host.uvm_processes.insert(Arc::clone(&entry));
    tokio::spawn(async move {
        let status = watch.wait().await.unwrap_or(ExitStatus::Signaled(9));
        entry.mark_reaped();
        relays.finish().await;
        entry.publish(exit_code(status));
    });
    Ok(pid.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(
            split_words(r#"a "b c" 'd e' f\ g"#).unwrap(),
            ["a", "b c", "d e", "f g"]
        );
        assert_eq!(
            split_words(r#"echo "x\"y" '' z"#).unwrap(),
            ["echo", "x\"y", "", "z"]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
    }

    #[test]
    fn lookup_in_path_and_exit_codes() {
        assert_eq!(lookup("sh", "/nonexistent:/bin"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(lookup("/x/y", ""), Some(PathBuf::from("/x/y")));
        assert_eq!(lookup("no-such-program-x", "/bin"), None);
        assert_eq!(exit_code(ExitStatus::Exited(3)), 3);
        assert_eq!(exit_code(ExitStatus::Signaled(9)), 4294967295);
    }
}
