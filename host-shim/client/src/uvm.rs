//! Processes run directly in the UVM (null container ID) with busybox: a shell helper, and the
//! busybox root filesystem containers run from when no image layers are mounted.

use std::time::Duration;

use rgcs_protocol::message::UVM_CONTAINER_ID;

use crate::containers::{ContainerClient, ContainerError};
use crate::spec::{uvm_process, Pipes};
use crate::stdio::{Captured, StdioError};

/// Where busybox lives in an initrd built with `--busybox`.
pub const UVM_BUSYBOX: &str = "/bin/busybox";
/// The default container root filesystem the CLI prepares in the UVM.
pub const BUSYBOX_ROOTFS: &str = "/run/rgcs/rootfs/busybox";

/// Errors of UVM shell commands.
#[derive(Debug, thiserror::Error)]
pub enum UvmShellError {
    /// The process could not be run or waited for.
    #[error("uvm shell command failed to run")]
    Call(#[from] ContainerError),
    /// Its stdio failed.
    #[error("uvm shell command output")]
    Stdio(#[from] StdioError),
    /// The output did not end in time.
    #[error("uvm shell command output did not end within {0:?}")]
    OutputTimeout(Duration),
    /// It exited non-zero.
    #[error("uvm shell command exited with {code}: {stderr}")]
    Failed {
        /// The exit code.
        code: u32,
        /// Its stderr (trimmed).
        stderr: String,
    },
}

/// The result of a UVM shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutput {
    /// Exit code.
    pub code: u32,
    /// What it wrote.
    pub output: Captured,
}

/// Runs `script` with `/bin/busybox sh -c` in the UVM, feeding `input` on stdin, and returns its
/// exit code and output.
pub async fn uvm_sh(
    client: &ContainerClient,
    script: &str,
    input: &[u8],
) -> Result<ShellOutput, UvmShellError> {
    let params = uvm_process([UVM_BUSYBOX, "sh", "-c", script], Pipes::ALL);
    let (pid, stdio) = client.execute_process(UVM_CONTAINER_ID, params).await?;
    let limit = Duration::from_secs(300);
    let (output, code) = tokio::join!(
        stdio.capture_for(input, limit),
        client.wait_for_process(UVM_CONTAINER_ID, pid, None)
    );
    let code = code?;
    let output = output?.ok_or(UvmShellError::OutputTimeout(limit))?;
    Ok(ShellOutput { code, output })
}

/// Like [`uvm_sh`], failing unless the exit code is 0; returns stdout as text.
pub async fn uvm_sh_ok(client: &ContainerClient, script: &str) -> Result<String, UvmShellError> {
    let out = uvm_sh(client, script, b"").await?;
    if out.code != 0 {
        return Err(UvmShellError::Failed {
            code: out.code,
            stderr: out.output.stderr_text().trim().to_owned(),
        });
    }
    Ok(out.output.stdout_text())
}

/// The script that makes a busybox root filesystem at `$R` (idempotent): its own tmpfs (the
/// UVM's `/run` and `/tmp` are `noexec`; a real container's rootfs is its own overlay mount too),
/// busybox with relative applet links, `/etc/passwd` (root, guest 1000, nobody) and
/// `/etc/group`, a sticky `/tmp`.
pub const BUSYBOX_ROOTFS_SCRIPT: &str = r#"set -e
[ -x "$R/bin/busybox" ] && exit 0
mkdir -p "$R"
grep -q " $R " /proc/mounts || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R"
mkdir -p "$R/bin" "$R/etc" "$R/tmp" "$R/proc" "$R/sys" "$R/dev" "$R/root" "$R/home/guest" "$R/work"
cp /bin/busybox "$R/bin/busybox.tmp"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nguest:x:1000:1000:guest:/home/guest:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\nguest:x:1000:\nnogroup:x:65534:\n' > "$R/etc/group"
chown 1000:1000 "$R/home/guest"
chmod 1777 "$R/tmp"
mv "$R/bin/busybox.tmp" "$R/bin/busybox"
"#;

/// Makes (once) a busybox root filesystem at `path` in the UVM, copying the initrd's busybox.
pub async fn prepare_busybox_rootfs(client: &ContainerClient, path: &str) -> Result<(), UvmShellError> {
    let script = format!("R='{}'\n{BUSYBOX_ROOTFS_SCRIPT}", path.replace('\'', ""));
    uvm_sh_ok(client, &script).await.map(drop)
}
