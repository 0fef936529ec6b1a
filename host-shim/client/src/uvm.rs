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

/// The root of a pod sandbox: only `/pause`, the agent's own binary hard-linked (no copy, no
/// image), which runs as Kubernetes' pause does when called by that name.
pub const PAUSE_ROOTFS: &str = "/pause-rootfs";

/// Makes (once) [`PAUSE_ROOTFS`] in the UVM: a directory on the initrd's root file system, where
/// `/init` lives, so the link is free and the directory is executable (`/run` is `noexec`).
pub async fn prepare_pause_rootfs(client: &ContainerClient) -> Result<(), UvmShellError> {
    let script = format!(
        "set -e; R={PAUSE_ROOTFS}; [ -x $R/pause ] && exit 0; mkdir -p $R/proc $R/dev $R/sys; ln -f /init $R/pause"
    );
    uvm_sh_ok(client, &script).await.map(drop)
}

/// What the UVM holds that a leak would grow: counted by a UVM shell, so the numbers are the
/// guest's own. The shell itself adds one constant process.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    /// Mount points (`/proc/self/mountinfo` lines).
    pub mounts: u64,
    /// User processes (kernel threads, children of kthreadd, excluded: they come and go).
    pub processes: u64,
    /// The agent's open descriptors.
    pub agent_fds: u64,
    /// The agent's threads.
    pub agent_threads: u64,
    /// The agent's resident set, KiB.
    pub agent_rss_kib: u64,
    /// Container and pod cgroups: `c1` for `/sys/fs/cgroup/containers/c1`, `pods/p1` and
    /// `pods/p1/w1` for a pod and its members.
    pub cgroups: Vec<String>,
    /// Per-container state the agent keeps (`/run/gcs/runtime`, `/run/gcs/procs`).
    pub state: Vec<String>,
}

/// The census script: the agent is PID 1's child running PID 1's binary.
const CENSUS: &str = r#"
a=""
for p in /proc/[0-9]*; do
  if [ "$(readlink $p/exe)" = "$(readlink /proc/1/exe)" ] && grep -q '^PPid:[[:space:]]*1$' $p/status 2>/dev/null; then a=${p#/proc/}; fi
done
[ -n "$a" ] || { echo "no agent process" >&2; exit 1; }
n=0
for p in /proc/[0-9]*; do
  [ "${p#/proc/}" = 2 ] && continue
  grep -q '^PPid:[[:space:]]*2$' $p/status 2>/dev/null || n=$((n+1))
done
echo "mounts $(wc -l < /proc/self/mountinfo)"
echo "processes $n"
echo "agent_fds $(ls /proc/$a/fd | wc -l)"
sed -n 's/^Threads:[[:space:]]*/agent_threads /p; s/^VmRSS:[[:space:]]*\([0-9]*\).*/agent_rss_kib \1/p' /proc/$a/status
for d in /sys/fs/cgroup/containers/*/; do [ -d "$d" ] && echo "cgroup $(basename "$d")"; done
for d in /sys/fs/cgroup/pods/*/ /sys/fs/cgroup/pods/*/*/; do [ -d "$d" ] && d=${d%/} && echo "cgroup ${d#/sys/fs/cgroup/}"; done
for d in /run/gcs/runtime /run/gcs/procs; do for e in "$d"/*; do [ -e "$e" ] && echo "state ${e#/run/gcs/}"; done; done
true
"#;

/// Takes a [`Census`] of the UVM.
pub async fn census(client: &ContainerClient) -> Result<Census, UvmShellError> {
    let out = uvm_sh_ok(client, CENSUS).await?;
    Ok(parse_census(&out))
}

fn parse_census(out: &str) -> Census {
    let mut c = Census::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        let n = v.trim().parse::<u64>().unwrap_or(0);
        match k {
            "mounts" => c.mounts = n,
            "processes" => c.processes = n,
            "agent_fds" => c.agent_fds = n,
            "agent_threads" => c.agent_threads = n,
            "agent_rss_kib" => c.agent_rss_kib = n,
            "cgroup" => c.cgroups.push(v.to_owned()),
            "state" => c.state.push(v.to_owned()),
            _ => {}
        }
    }
    c.cgroups.sort();
    c.state.sort();
    c
}

#[cfg(test)]
mod census_tests {
    use super::*;

    #[test]
    fn census_lines_parse() {
        let c = parse_census(
            "mounts 12\nprocesses 7\nagent_fds 9\nagent_threads 4\nagent_rss_kib 3120\ncgroup c1\ncgroup pods/p1\nstate runtime/c1\nstate procs/c1\n",
        );
        assert_eq!(
            (
                c.mounts,
                c.processes,
                c.agent_fds,
                c.agent_threads,
                c.agent_rss_kib
            ),
            (12, 7, 9, 4, 3120)
        );
        assert_eq!(c.cgroups, ["c1", "pods/p1"]);
        assert_eq!(c.state, ["procs/c1", "runtime/c1"]);
    }
}
