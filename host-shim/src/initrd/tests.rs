use std::collections::HashMap;

use super::cpio::{read_newc, CpioEntry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::*;

fn synthetic_tree(dir: &Path) -> PathBuf {
    let mods = dir.join("lib/modules/9.9.9");
    for (rel, body) in [
        ("kernel/v/vsock.ko", "vsock"),
        ("kernel/v/vmw_vsock_virtio_transport.ko", "transport"),
        ("kernel/fs/ext4.ko", "ext4"),
        ("kernel/crypto/crc32c_generic.ko", "crc"),
    ] {
        let p = mods.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
    fs::write(
        mods.join("modules.dep"),
        "kernel/v/vsock.ko:\nkernel/v/vmw_vsock_virtio_transport.ko: kernel/v/vsock.ko\n\
         kernel/fs/ext4.ko:\nkernel/crypto/crc32c_generic.ko:\n",
    )
    .unwrap();
    fs::write(mods.join("modules.softdep"), "softdep ext4 pre: crypto-crc32c\n").unwrap();
    fs::write(mods.join("modules.alias"), "alias crypto-crc32c crc32c_generic\n").unwrap();
    mods
}

fn by_name(entries: &[CpioEntry]) -> HashMap<&str, &CpioEntry> {
    entries.iter().map(|e| (e.name.as_str(), e)).collect()
}

#[test]
fn builds_the_layout_and_the_module_list() {
    let dir = tempfile::tempdir().unwrap();
    let mods = synthetic_tree(dir.path());
    let agent = dir.path().join("agent");
    fs::write(&agent, b"#!/bin/sh\nexit 0\n").unwrap();
    let extra = dir.path().join("bb");
    fs::write(&extra, b"busybox").unwrap();
    let spec = InitrdSpec {
        agent: agent.clone(),
        output: dir.path().join("out/initrd.img"),
        kernel_release: "9.9.9".into(),
        modules_dir: mods,
        early_modules: vec![ModuleRequest::required("vmw_vsock_virtio_transport")],
        late_modules: vec![
            ModuleRequest::required("ext4"),
            ModuleRequest::if_present("virtio_pmem"),
        ],
        extras: vec![
            ExtraEntry::File {
                source: extra,
                dest: "/bin/busybox".into(),
                mode: 0o755,
            },
            ExtraEntry::Symlink {
                dest: "/bin/sh".into(),
                target: "busybox".into(),
            },
            ExtraEntry::Dir {
                dest: "/mnt/x".into(),
                mode: 0o700,
            },
        ],
    };
    let report = build(&spec).unwrap();
    let bytes = fs::read(&spec.output).unwrap();
    assert_eq!(report.size, bytes.len() as u64);
    let entries = read_newc(&bytes).unwrap();
    let map = by_name(&entries);

    for d in BASE_DIRS {
        assert_eq!(map[&d[1..]].mode & S_IFMT, S_IFDIR, "{d}");
    }
    assert_eq!(map["init"].mode, S_IFREG | 0o755);
    assert_eq!(map["init"].data, fs::read(&agent).unwrap());
    assert_eq!(map["bin/gcs"].mode & S_IFMT, S_IFLNK);
    assert_eq!(map["bin/gcs"].data, b"/init");
    assert_eq!(
        (map["dev/console"].mode, map["dev/console"].rdev),
        (S_IFCHR | 0o600, (5, 1))
    );
    assert_eq!(map["bin/busybox"].data, b"busybox");
    assert_eq!(map["mnt/x"].mode, S_IFDIR | 0o700);
    assert_eq!(map["mnt"].mode, S_IFDIR | 0o755);
    assert_eq!(map["lib/modules/9.9.9/kernel/v/vsock.ko"].data, b"vsock");

    // Every parent is written before its children.
    for (i, e) in entries.iter().enumerate() {
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            let p = entries.iter().position(|x| x.name == parent).unwrap();
            assert!(p < i, "{parent} after {}", e.name);
        }
    }

    let list = String::from_utf8(map["etc/rgcs/modules"].data.clone()).unwrap();
    assert_eq!(list, report.module_list);
    let lines: Vec<_> = list.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "early required /lib/modules/9.9.9/kernel/v/vsock.ko",
            "early required /lib/modules/9.9.9/kernel/v/vmw_vsock_virtio_transport.ko",
            "late optional /lib/modules/9.9.9/kernel/crypto/crc32c_generic.ko",
            "late required /lib/modules/9.9.9/kernel/fs/ext4.ko",
        ]
    );
    // Every listed path is in the archive.
    for l in &lines {
        let path = l.split(' ').nth(2).unwrap();
        assert!(map.contains_key(&path[1..]), "{path}");
    }
    assert_eq!(report.skipped.len(), 1);

    // Reproducible.
    let again = build(&spec).unwrap();
    assert_eq!(fs::read(&again.output).unwrap(), bytes);
}

#[test]
fn compressed_modules_are_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let mods = dir.path().join("m");
    fs::create_dir_all(mods.join("kernel")).unwrap();
    let plain = b"\x7fELF module bytes".repeat(100);
    let out = std::process::Command::new("xz")
        .args(["-c", "--check=crc32"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(&plain)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    fs::write(mods.join("kernel/foo-bar.ko.xz"), &out.stdout).unwrap();
    fs::write(mods.join("modules.dep"), "kernel/foo-bar.ko.xz:\n").unwrap();
    let agent = dir.path().join("agent");
    fs::write(&agent, b"x").unwrap();
    let spec = InitrdSpec {
        agent,
        output: dir.path().join("i.img"),
        kernel_release: "1.0".into(),
        modules_dir: mods,
        early_modules: vec![ModuleRequest::required("foo_bar")],
        late_modules: vec![],
        extras: vec![],
    };
    let report = build(&spec).unwrap();
    assert_eq!(
        report.modules[0].initrd_path,
        "/lib/modules/1.0/kernel/foo-bar.ko"
    );
    let entries = read_newc(&fs::read(&spec.output).unwrap()).unwrap();
    assert_eq!(by_name(&entries)["lib/modules/1.0/kernel/foo-bar.ko"].data, plain);
}

#[test]
fn rejects_duplicates_relative_paths_and_dynamic_agents() {
    let dir = tempfile::tempdir().unwrap();
    let mods = synthetic_tree(dir.path());
    let agent = dir.path().join("agent");
    fs::write(&agent, b"x").unwrap();
    let mut spec = InitrdSpec {
        agent,
        output: dir.path().join("i.img"),
        kernel_release: "9.9.9".into(),
        modules_dir: mods,
        early_modules: vec![],
        late_modules: vec![],
        extras: vec![ExtraEntry::Symlink {
            dest: "/init".into(),
            target: "x".into(),
        }],
    };
    assert!(matches!(
        build(&spec),
        Err(InitrdError::BadEntry {
            reason: "declared twice",
            ..
        })
    ));
    spec.extras = vec![ExtraEntry::Dir {
        dest: "relative".into(),
        mode: 0o755,
    }];
    assert!(matches!(build(&spec), Err(InitrdError::BadEntry { .. })));
    spec.extras = vec![ExtraEntry::Dir {
        dest: "/init/sub".into(),
        mode: 0o755,
    }];
    assert!(matches!(build(&spec), Err(InitrdError::BadEntry { .. })));
    spec.extras.clear();
    // /bin/ls on Debian is dynamically linked; busybox-static is not.
    spec.agent = "/bin/ls".into();
    assert!(matches!(build(&spec), Err(InitrdError::AgentNotStatic { .. })));
    assert!(!is_dynamic_elf(&fs::read("/bin/busybox").unwrap()));
    assert!(!dir.path().join("i.img").exists(), "no output on failure");
}

/// Against the installed Debian module tree (scripts/setup.sh installs it).
#[test]
fn resolves_the_default_sets_against_the_real_tree() {
    let release = crate::kernel::newest_release(Path::new("/boot"), Path::new("/lib/modules")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kernel = KernelArtifacts {
        release: release.clone(),
        vmlinux: "/unused".into(),
        modules_dir: Path::new("/lib/modules").join(&release),
    };
    let spec = InitrdSpec::new("/bin/busybox", dir.path().join("initrd.img"), &kernel);
    let report = build(&spec).unwrap();
    let pos = |file: &str| {
        report
            .modules
            .iter()
            .position(|m| m.initrd_path.ends_with(&format!("/{file}")))
            .unwrap_or_else(|| panic!("{file} missing:\n{}", report.module_list))
    };
    assert!(pos("vsock.ko") < pos("vmw_vsock_virtio_transport.ko"));
    assert!(pos("virtio_ring.ko") < pos("virtio_pci.ko"));
    assert!(pos("crc32c_generic.ko") < pos("ext4.ko"));
    assert!(pos("crc32c_generic.ko") < pos("jbd2.ko"));
    assert!(pos("netfs.ko") < pos("fscache.ko") && pos("fscache.ko") < pos("9p.ko"));
    assert!(pos("scsi_mod.ko") < pos("virtio_scsi.ko"));
    let m = |file: &str| &report.modules[pos(file)];
    assert_eq!(
        (m("vmw_vsock_virtio_transport.ko").phase, m("virtio.ko").phase),
        (Phase::Early, Phase::Early)
    );
    assert_eq!(m("ext4.ko").phase, Phase::Late);
    assert!(m("crc32c_generic.ko").required && m("ext4.ko").required && m("9pnet_fd.ko").required);
    assert!(!m("crc32c-intel.ko").required);
    // No module twice; every early module precedes every late one.
    let mut seen = std::collections::HashSet::new();
    assert!(report.modules.iter().all(|m| seen.insert(&m.initrd_path)));
    let first_late = report
        .modules
        .iter()
        .position(|m| m.phase == Phase::Late)
        .unwrap();
    assert!(report.modules[first_late..]
        .iter()
        .all(|m| m.phase == Phase::Late));
    eprintln!("{}({} bytes)", report.module_list, report.size);
}
