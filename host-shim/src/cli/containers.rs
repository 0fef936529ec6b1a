//! `rgcs --uvm DIR create|start|exec|ps|stats|kill|rm|stacks`: clients of a served UVM's control
//! socket (see `rgcs_client::control`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use rgcs_host_shim::control::{request_async, stdio_from_fds, Answer, ProcessArgs, Request};
use rgcs_host_shim::stdio::relay_terminal;
use rgcs_host_shim::sys::term::terminal_size;

use super::say;

/// Options of a container process (`create` and `exec`).
#[derive(Args, Debug)]
pub struct ProcessOpts {
    /// Allocate a pseudo-terminal (puts the local terminal in raw mode; forwards resizes).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Attach the local stdin (implied by -t).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// User: uid, uid:gid, or a name from the container's /etc/passwd.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "CWD")]
    pub cwd: Option<String>,
    /// Container ID.
    pub id: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl ProcessOpts {
    fn process(&self) -> ProcessArgs {
        ProcessArgs {
            args: self.command.clone(),
            env: self.env.clone(),
            user: self.user.clone(),
            cwd: self.cwd.clone(),
            tty: self.tty,
            stdin: self.interactive || self.tty,
            console_size: self.tty.then(local_size).flatten().map(|(h, w)| [h, w]),
        }
    }
}

/// `create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Root filesystem directory in the UVM (default: a busybox rootfs the server prepares).
    #[arg(long)]
    pub rootfs: Option<String>,
    /// Memory limit in MiB.
    #[arg(short = 'm', long = "memory", value_name = "MIB")]
    pub memory_mib: Option<u64>,
    #[command(flatten)]
    pub process: ProcessOpts,
}

/// `kill`.
#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal number (default 9, SIGKILL).
    #[arg(short = 's', long)]
    pub signal: Option<i32>,
    /// Container ID.
    pub id: String,
    /// Process ID in the UVM (default: the container's init).
    pub pid: Option<u32>,
}

/// The local terminal's size (stdout, else stdin), if either is a terminal.
fn local_size() -> Option<(u16, u16)> {
    use std::os::fd::AsFd;
    terminal_size(std::io::stdout().as_fd()).or_else(|| terminal_size(std::io::stdin().as_fd()))
}

fn dir(uvm: Option<&Path>) -> Result<&Path> {
    uvm.context("no served UVM: pass --uvm DIR (or RGCS_UVM) naming the directory given to `rgcs uvm boot --serve-dir DIR`")
}

async fn ask(dir: &Path, req: Request) -> Result<Answer> {
    Ok(request_async(dir, req).await?.0)
}

/// `create`: Create + Start (the init process does not run until `start`).
pub async fn create(uvm: Option<&Path>, a: CreateArgs) -> Result<ExitCode> {
    let dir = dir(uvm)?;
    let id = a.process.id.clone();
    ask(
        dir,
        Request::Create {
            id: id.clone(),
            rootfs: a.rootfs,
            process: a.process.process(),
            memory_mib: a.memory_mib,
        },
    )
    .await
    .with_context(|| format!("cannot create container {id}"))?;
    say(&id)?;
    Ok(ExitCode::SUCCESS)
}

/// Relays a started process's stdio and exits with its exit code.
async fn attach(dir: &Path, id: &str, answer: Answer, fds: Vec<std::os::fd::OwnedFd>) -> Result<ExitCode> {
    let Some(pid) = answer.pid else {
        bail!("the server did not return a process ID");
    };
    let tty = answer.tty;
    let stdio = stdio_from_fds(&answer, fds)?;
    let wait = request_async(
        dir,
        Request::Wait {
            id: id.to_owned(),
            pid,
        },
    );
    let resize = |rows: u16, cols: u16| {
        let req = Request::Resize {
            id: id.to_owned(),
            pid,
            rows,
            cols,
        };
        async move {
            if let Err(e) = request_async(dir, req).await {
                tracing::debug!(error = %e, "resize failed");
            }
        }
    };
    let waited = relay_terminal(stdio, tty, wait, resize, Duration::from_secs(2)).await?;
    let (answer, _) = waited.with_context(|| format!("cannot wait for process {pid} of container {id}"))?;
    let code = answer.exit_code.unwrap_or(u32::MAX);
    tracing::debug!(pid, code, "process exited");
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
}

/// `start [-i] ID`: runs the init process attached; exits with its exit code.
pub async fn start(uvm: Option<&Path>, id: String, interactive: bool) -> Result<ExitCode> {
    let dir = dir(uvm)?;
    let (answer, fds) = request_async(
        dir,
        Request::Start {
            id: id.clone(),
            stdin: interactive,
        },
    )
    .await
    .with_context(|| format!("cannot start container {id}"))?;
    attach(dir, &id, answer, fds).await
}

/// `exec`: runs a process attached; exits with its exit code.
pub async fn exec(uvm: Option<&Path>, p: ProcessOpts) -> Result<ExitCode> {
    let dir = dir(uvm)?;
    let id = p.id.clone();
    let (answer, fds) = request_async(
        dir,
        Request::Exec {
            id: id.clone(),
            process: p.process(),
        },
    )
    .await
    .with_context(|| format!("cannot exec in container {id}"))?;
    attach(dir, &id, answer, fds).await
}

/// `ps ID`: one PID per line.
pub async fn ps(uvm: Option<&Path>, id: String) -> Result<ExitCode> {
    let a = ask(dir(uvm)?, Request::Ps { id: id.clone() })
        .await
        .with_context(|| format!("cannot list the processes of container {id}"))?;
    for pid in a.data.as_ref().and_then(|d| d.as_array()).into_iter().flatten() {
        say(pid)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `stats ID`: the container's statistics as JSON.
pub async fn stats(uvm: Option<&Path>, id: String) -> Result<ExitCode> {
    let a = ask(dir(uvm)?, Request::Stats { id: id.clone() })
        .await
        .with_context(|| format!("cannot read the statistics of container {id}"))?;
    say(serde_json::to_string_pretty(&a.data.unwrap_or_default())?)?;
    Ok(ExitCode::SUCCESS)
}

/// `kill [-s SIG] ID [PID]`.
pub async fn kill(uvm: Option<&Path>, k: KillArgs) -> Result<ExitCode> {
    ask(
        dir(uvm)?,
        Request::Kill {
            id: k.id.clone(),
            pid: k.pid,
            signal: k.signal,
        },
    )
    .await
    .with_context(|| format!("cannot signal container {}", k.id))?;
    Ok(ExitCode::SUCCESS)
}

/// `rm [-f] ID`.
pub async fn rm(uvm: Option<&Path>, id: String, force: bool) -> Result<ExitCode> {
    ask(
        dir(uvm)?,
        Request::Rm {
            id: id.clone(),
            force,
        },
    )
    .await
    .with_context(|| format!("cannot remove container {id}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `stacks`: the guest's DumpStacks text.
pub async fn stacks(uvm: Option<&Path>) -> Result<ExitCode> {
    let a = ask(dir(uvm)?, Request::Stacks)
        .await
        .context("cannot dump the guest's stacks")?;
    say(a.data.as_ref().and_then(|d| d.as_str()).unwrap_or_default())?;
    Ok(ExitCode::SUCCESS)
}
