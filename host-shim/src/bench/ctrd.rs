//! A private containerd for the containerd benchmark and the shim's tests: its own config,
//! root, state and sockets under a temporary directory, optionally inside a network namespace
//! (for CRI's CNI bridge), with `containerd-shim-rgcs-v1` on its PATH and both `runc` and `rgcs`
//! registered with the CRI plugin. Stopped (and its mounts undone) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The runtime type the shim implements.
pub const RUNTIME: &str = "io.containerd.rgcs.v1";
/// runc's runtime type (the baseline).
pub const RUNC: &str = "io.containerd.runc.v2";

/// Errors of the private containerd.
#[derive(Debug, thiserror::Error)]
pub enum CtrdError {
    /// A file or process could not be made.
    #[error("{what}")]
    Io {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{cmd} failed: {stderr}")]
    Command {
        /// The command.
        cmd: String,
        /// Its stderr.
        stderr: String,
    },
    /// containerd did not answer.
    #[error("containerd did not start within 30 s; its log:\n{0}")]
    NoStart(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CtrdError {
    let what = what.into();
    move |source| CtrdError::Io { what, source }
}

/// Lossy UTF-8.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A network namespace made here and deleted on drop.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    /// Creates `name` with `lo` up.
    pub fn new(name: &str) -> Result<Self, CtrdError> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self(name.to_owned());
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// Its links' names.
    pub fn links(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-n", &self.0, "-o", "link"]).output();
        out.map(|o| {
            text(&o.stdout)
                .lines()
                .filter_map(|l| {
                    l.split(": ")
                        .nth(1)
                        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &mut Command) -> Result<Output, CtrdError> {
    let out = cmd.output().map_err(io(format!("{cmd:?}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(CtrdError::Command {
            cmd: format!("{cmd:?}"),
            stderr: text(&out.stderr),
        })
    }
}

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    /// Its directory (config, root, state, sockets, log).
    pub dir: tempfile::TempDir,
    child: Child,
    /// Echo each `ctr` call on stderr (tests).
    pub verbose: bool,
}

/// The CNI network of the CRI tier: a bridge with addresses inside the namespace containerd
/// runs in.
pub const CNI_CONFLIST: &str = r#"{"cniVersion": "0.4.0", "name": "rgcs", "plugins": [{"type": "bridge", "bridge": "rgcs0",
  "isGateway": true, "ipMasq": false, "ipam": {"type": "host-local",
  "ranges": [[{"subnet": "10.233.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}"#;

impl Containerd {
    /// Starts containerd (in `netns` when given) with `shim_dir` first on its PATH and `initrd`
    /// as `RGCS_INITRD`. The CRI plugin uses `docker.io/rgcs/pause:local` as its sandbox image
    /// and the bridge network [`CNI_CONFLIST`].
    pub fn start(netns: Option<&str>, shim_dir: &Path, initrd: &Path) -> Result<Self, CtrdError> {
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir_in("/tmp")
            .map_err(io("temporary directory"))?;
        let d = dir.path().display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "docker.io/rgcs/pause:local"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "{RUNC}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rgcs]
    runtime_type = "{RUNTIME}"
"#
        );
        std::fs::write(dir.path().join("config.toml"), config).map_err(io("write config.toml"))?;
        std::fs::create_dir_all(dir.path().join("cni")).map_err(io("cni dir"))?;
        std::fs::write(dir.path().join("cni/10-rgcs.conflist"), CNI_CONFLIST).map_err(io("cni config"))?;
        let log = std::fs::File::create(dir.path().join("containerd.log")).map_err(io("containerd.log"))?;
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = match netns {
            // Only the network namespace: `ip netns exec` would also give containerd a mount
            // namespace with a fresh /sys, without the cgroup mount runc needs (and hide the
            // shims' mounts from the host).
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .env("PATH", path)
            .env(crate::session::ENV_INITRD, initrd)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("start containerd (scripts/setup.sh installs it)"))?;
        let c = Self {
            dir,
            child,
            verbose: false,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).is_ok_and(|o| o.status.success()) {
            if Instant::now() > deadline {
                return Err(CtrdError::NoStart(c.log()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(c)
    }

    /// The gRPC socket.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's log (with the shims' logs in it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, CtrdError> {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(self.sock())
            .args(args)
            .output()
            .map_err(io("run ctr"))?;
        if self.verbose {
            eprintln!(
                "ctr {args:?} -> {:?}\n  stdout {:?}\n  stderr {:?}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Runs `ctr`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String, CtrdError> {
        let out = self.ctr(args)?;
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(CtrdError::Command {
                cmd: format!("ctr {args:?}"),
                stderr: text(&out.stderr),
            })
        }
    }

    /// Builds the busybox demo image (with `extra` layers on top) and imports it into
    /// containerd namespace `ns` as `name`.
    pub fn import(&self, ns: &str, name: &str, extra: usize) -> Result<(), CtrdError> {
        self.import_built(ns, name, &format!("image-{extra}"), extra, &["/hello.sh"])
    }

    /// Imports the CRI sandbox image `docker.io/rgcs/pause:local` into `k8s.io`: the demo image
    /// whose command sleeps for good (runc's sandboxes run it; rgcs runs its own `/pause`).
    pub fn import_pause(&self) -> Result<(), CtrdError> {
        self.import_built(
            "k8s.io",
            "docker.io/rgcs/pause:local",
            "pause",
            0,
            &["sleep", "2147483647"],
        )
    }

    fn import_built(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        extra: usize,
        cmd: &[&str],
    ) -> Result<(), CtrdError> {
        let layout = self.dir.path().join(key);
        if !layout.exists() {
            crate::image::demo::build_with_cmd(&layout, Path::new("/bin/busybox"), extra, cmd).map_err(
                |e| CtrdError::Command {
                    cmd: "build the demo image".into(),
                    stderr: rgcs_protocol::error_chain(&e),
                },
            )?;
        }
        let tar = self.dir.path().join(format!("{key}.tar"));
        if !tar.exists() {
            run(Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&tar)
                .arg("."))?;
        }
        let tar = tar.display().to_string();
        self.ok(&["-n", ns, "image", "import", "--index-name", name, &tar])
            .map(drop)
    }

    /// `(id, pid, status)` of every task in namespace `default`.
    pub fn tasks(&self) -> Result<Vec<(String, u32, String)>, CtrdError> {
        Ok(self
            .ok(&["task", "ls"])?
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.to_string(),
                ))
            })
            .collect())
    }

    /// The task bundles that exist in namespace `ns`.
    pub fn bundles(&self, ns: &str) -> Vec<String> {
        std::fs::read_dir(
            self.dir
                .path()
                .join("state/io.containerd.runtime.v2.task")
                .join(ns),
        )
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for ns in ["default", "k8s.io"] {
            let ids = self
                .ctr(&["-n", ns, "task", "ls", "-q"])
                .map(|o| text(&o.stdout))
                .unwrap_or_default();
            for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["-n", ns, "task", "kill", "-a", "-s", "KILL", id]);
                std::thread::sleep(Duration::from_millis(500));
                let _ = self.ctr(&["-n", ns, "task", "rm", "-f", id]);
            }
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.child.wait();
        // containerd leaves its snapshot mounts and its CRI sandboxes' shm and netns mounts for
        // its next start (and a test that failed half-way left a pod): ours go now.
        unmount_below(self.dir.path());
    }
}

/// Unmounts every mount point below `dir`, deepest first, detached (a busy one goes once
/// unused), so that the directory can be removed.
pub fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A mountinfo path with its octal escapes (`\040` for a space…) undone.
fn unescape_mount_path(p: &str) -> String {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/x\\9"), "/x\\9");
    }

    #[test]
    fn mounts_below_a_directory_are_all_undone() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("state/a");
        let b = a.join("b");
        std::fs::create_dir_all(&a).unwrap();
        let tmpfs = |target: &Path| {
            nix::mount::mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
        };
        tmpfs(&a);
        std::fs::create_dir_all(&b).unwrap();
        tmpfs(&b);
        unmount_below(dir.path());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !info.contains(dir.path().to_str().unwrap()),
            "mounts left below {}",
            dir.path().display()
        );
    }
}
