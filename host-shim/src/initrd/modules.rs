//! Kernel module selection for the initrd: resolves module names against a module tree's
//! `modules.dep`, `modules.softdep`, `modules.alias` and `modules.builtin`, closes over hard
//! and `pre:` soft dependencies, and orders the result dependencies-first.
//!
//! Names are compared the way kmod does: `-` and `_` are equivalent. A soft dependency may name
//! an alias (`ext4 pre: crypto-crc32c`); it resolves to every module providing that alias
//! (`crc32c_generic`, `crc32c_intel`). Modules reached only through soft dependencies or
//! optional requests are optional for the guest; everything a required module needs through
//! `modules.dep` is required.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// How much a requested module matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// Must exist in the tree (or be built in); the guest fails if it cannot load it.
    Required,
    /// Skipped when absent from the tree; a load failure in the guest is not fatal
    /// (e.g. `crc32c-intel`, which fails with ENODEV without SSE4.2).
    Optional,
    /// Skipped when absent from the tree; required when present.
    IfPresent,
}

/// One requested module.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleRequest {
    /// Module name as in `modules.dep` (`dm-mod` and `dm_mod` are the same).
    pub name: Cow<'static, str>,
    /// How much it matters.
    pub need: Need,
}

impl ModuleRequest {
    /// A required module.
    pub const fn required(name: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            need: Need::Required,
        }
    }
    /// An optional module.
    pub const fn optional(name: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            need: Need::Optional,
        }
    }
    /// A module that is required when the tree has it.
    pub const fn if_present(name: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            need: Need::IfPresent,
        }
    }
}

/// When the guest loads a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Before the bridge connects: the virtio PCI transport and vsock.
    Early,
    /// After the bridge is up, in the background.
    Late,
}

impl Phase {
    /// The word used in `/etc/rgcs/modules`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Early => "early",
            Self::Late => "late",
        }
    }
}

/// A module chosen for the initrd, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedModule {
    /// Normalised name (`_` for `-`).
    pub name: String,
    /// Path relative to the module tree, as in `modules.dep` (may end in `.ko.xz`).
    pub rel_path: String,
    /// Load phase.
    pub phase: Phase,
    /// Whether a load failure is fatal for the guest.
    pub required: bool,
}

/// A requested module that is not copied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedModule {
    /// The requested name.
    pub name: String,
    /// `"built-in"` or `"not in the module tree"`.
    pub reason: &'static str,
}

/// The resolved selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulePlan {
    /// Modules in load order (early ones first).
    pub modules: Vec<PlannedModule>,
    /// Requests that were skipped.
    pub skipped: Vec<SkippedModule>,
}

/// Errors of module resolution.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// An index file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A required module is neither in `modules.dep` nor built in.
    #[error("module {name} is neither in {dir}/modules.dep nor built in")]
    NotFound {
        /// The requested name.
        name: String,
        /// The module tree.
        dir: PathBuf,
    },
    /// A `modules.dep` path is unusable (whitespace, absolute, `..`).
    #[error("unusable module path {path:?} in {dir}/modules.dep")]
    BadPath {
        /// The path.
        path: String,
        /// The module tree.
        dir: PathBuf,
    },
}

/// The parsed index files of one module tree.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// rel path → its dependencies (rel paths), as listed.
    deps: HashMap<String, Vec<String>>,
    /// normalised name → rel path.
    by_name: HashMap<String, String>,
    /// normalised name → `pre:` soft dependencies (names or aliases).
    softdeps: HashMap<String, Vec<String>>,
    /// normalised alias → normalised module names (exact aliases only).
    aliases: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

/// `-` → `_`, as kmod compares names.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a tree path: `kernel/crypto/crc32c-intel.ko.xz` → `crc32c_intel`.
pub fn name_of(rel_path: &str) -> String {
    let base = rel_path.rsplit('/').next().unwrap_or(rel_path);
    let stem = base.split_once(".ko").map_or(base, |(s, _)| s);
    normalize(stem)
}

impl ModuleIndex {
    /// Reads `modules.dep` (required) and `modules.softdep`, `modules.alias`,
    /// `modules.builtin` (each optional) from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModuleError> {
        let read = |name: &str, required: bool| -> Result<String, ModuleError> {
            let path = dir.join(name);
            match fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(ModuleError::Read { path, source }),
            }
        };
        let mut index = Self {
            dir: dir.to_path_buf(),
            ..Self::default()
        };
        for line in read("modules.dep", true)?.lines() {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(ModuleError::BadPath {
                    path: path.into(),
                    dir: dir.into(),
                });
            }
            index.by_name.insert(name_of(path), path.to_owned());
            index.deps.insert(
                path.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            );
        }
        for line in read("modules.softdep", false)?.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            // kmod: words before the first `pre:`/`post:` are ignored; we only need `pre:`.
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    dep if in_pre => index
                        .softdeps
                        .entry(normalize(module))
                        .or_default()
                        .push(dep.to_owned()),
                    _ => {}
                }
            }
        }
        for line in read("modules.alias", false)?.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) = (words.next(), words.next(), words.next()) {
                if !alias.contains(['*', '?', '[']) {
                    index
                        .aliases
                        .entry(normalize(alias))
                        .or_default()
                        .push(normalize(module));
                }
            }
        }
        index.builtin = read("modules.builtin", false)?.lines().map(name_of).collect();
        Ok(index)
    }

    /// The module tree directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// The tree path of a module name, if it is a loadable module.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(&normalize(name)).map(String::as_str)
    }

    /// Names a soft-dependency word resolves to: the module itself, else every module that
    /// provides it as an exact alias. Built-in targets resolve to nothing.
    fn resolve_soft(&self, word: &str) -> Vec<String> {
        let n = normalize(word);
        if self.by_name.contains_key(&n) {
            return vec![n];
        }
        let mut out: Vec<String> = self
            .aliases
            .get(&n)
            .into_iter()
            .flatten()
            .filter(|m| self.by_name.contains_key(*m))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Resolves `early` then `late` into one dependencies-first load order. A module needed by
    /// both phases is loaded early only.
    pub fn plan(&self, early: &[ModuleRequest], late: &[ModuleRequest]) -> Result<ModulePlan, ModuleError> {
        let mut plan = ModulePlan::default();
        let mut roots: Vec<(Phase, String, bool)> = Vec::new();
        for (phase, requests) in [(Phase::Early, early), (Phase::Late, late)] {
            for req in requests {
                let name = normalize(&req.name);
                if self.builtin.contains(&name) {
                    plan.skipped.push(SkippedModule {
                        name: req.name.to_string(),
                        reason: "built-in",
                    });
                    continue;
                }
                if !self.by_name.contains_key(&name) {
                    if req.need == Need::Required {
                        return Err(ModuleError::NotFound {
                            name: req.name.to_string(),
                            dir: self.dir.clone(),
                        });
                    }
                    plan.skipped.push(SkippedModule {
                        name: req.name.to_string(),
                        reason: "not in the module tree",
                    });
                    continue;
                }
                roots.push((phase, name, req.need != Need::Optional));
            }
        }
        // Required = the hard-dependency closure of the required roots.
        let mut required: BTreeSet<&str> = BTreeSet::new();
        for (_, name, req) in &roots {
            if let (true, Some(path)) = (*req, self.by_name.get(name)) {
                required.insert(path);
                required.extend(self.deps.get(path).into_iter().flatten().map(String::as_str));
            }
        }
        let mut emitted: BTreeMap<String, ()> = BTreeMap::new();
        for (phase, name, _) in &roots {
            let mut visiting = HashSet::new();
            self.visit(
                name,
                *phase,
                &required,
                &mut visiting,
                &mut emitted,
                &mut plan.modules,
            );
        }
        Ok(plan)
    }

    /// Depth-first: soft `pre:` targets, then hard dependencies, then the module itself.
    fn visit(
        &self,
        name: &str,
        phase: Phase,
        required: &BTreeSet<&str>,
        visiting: &mut HashSet<String>,
        emitted: &mut BTreeMap<String, ()>,
        out: &mut Vec<PlannedModule>,
    ) {
        let Some(path) = self.by_name.get(name) else {
            return;
        };
        if emitted.contains_key(path) || !visiting.insert(path.clone()) {
            return;
        }
        for word in self.softdeps.get(name).into_iter().flatten() {
            for target in self.resolve_soft(word) {
                self.visit(&target, phase, required, visiting, emitted, out);
            }
        }
        for dep in self.deps.get(path).into_iter().flatten() {
            self.visit(&name_of(dep), phase, required, visiting, emitted, out);
        }
        emitted.insert(path.clone(), ());
        out.push(PlannedModule {
            name: name.to_owned(),
            rel_path: path.clone(),
            phase,
            required: required.contains(path.as_str()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const DEP: &str = "\
kernel/a/virtio.ko:
kernel/a/virtio_ring.ko:
kernel/a/virtio_pci.ko: kernel/a/virtio_ring.ko kernel/a/virtio.ko
kernel/v/vsock.ko:
kernel/v/vmw_vsock_virtio_transport_common.ko: kernel/v/vsock.ko
kernel/v/vmw_vsock_virtio_transport.ko: kernel/v/vmw_vsock_virtio_transport_common.ko kernel/v/vsock.ko kernel/a/virtio.ko kernel/a/virtio_ring.ko
kernel/fs/jbd2.ko:
kernel/fs/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2.ko
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/x86/crc32c-intel.ko:
kernel/md/dm-mod.ko:
kernel/odd/opt_only.ko: kernel/odd/opt_dep.ko
kernel/odd/opt_dep.ko:
";
    const SOFTDEP: &str = "softdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c post: nothing\n";
    const ALIAS: &str =
        "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v*d* virtio_pci\n";
    const BUILTIN: &str = "kernel/drivers/scsi/sd_mod.ko\n";

    fn index() -> (tempfile::TempDir, ModuleIndex) {
        let dir = tree(&[
            ("modules.dep", DEP),
            ("modules.softdep", SOFTDEP),
            ("modules.alias", ALIAS),
            ("modules.builtin", BUILTIN),
        ]);
        let index = ModuleIndex::load(dir.path()).unwrap();
        (dir, index)
    }

    fn pos(plan: &ModulePlan, name: &str) -> usize {
        plan.modules
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing: {plan:?}"))
    }

    #[test]
    fn orders_dependencies_first_and_dedups_across_phases() {
        let (_d, index) = index();
        let early = [
            ModuleRequest::required("virtio_pci"),
            ModuleRequest::required("vmw_vsock_virtio_transport"),
        ];
        let late = [
            ModuleRequest::required("ext4"),
            ModuleRequest::required("dm_mod"),
            ModuleRequest::required("virtio-pci"),
        ];
        let plan = index.plan(&early, &late).unwrap();
        let names: Vec<_> = plan.modules.iter().map(|m| (m.name.as_str(), m.phase)).collect();
        assert!(pos(&plan, "virtio") < pos(&plan, "virtio_pci"));
        assert!(pos(&plan, "virtio_ring") < pos(&plan, "virtio_pci"));
        assert!(pos(&plan, "vsock") < pos(&plan, "vmw_vsock_virtio_transport_common"));
        assert!(pos(&plan, "vmw_vsock_virtio_transport_common") < pos(&plan, "vmw_vsock_virtio_transport"));
        // virtio_pci is requested in both phases: early only, exactly once.
        assert_eq!(plan.modules.iter().filter(|m| m.name == "virtio_pci").count(), 1);
        assert_eq!(plan.modules[pos(&plan, "virtio_pci")].phase, Phase::Early);
        // Early modules all come before late ones.
        let first_late = names.iter().position(|(_, p)| *p == Phase::Late).unwrap();
        assert!(
            names[first_late..].iter().all(|(_, p)| *p == Phase::Late),
            "{names:?}"
        );
        // dm-mod resolved through `_`/`-` equivalence.
        assert_eq!(plan.modules[pos(&plan, "dm_mod")].rel_path, "kernel/md/dm-mod.ko");
    }

    #[test]
    fn soft_dependencies_resolve_aliases_and_come_first_as_optional() {
        let (_d, index) = index();
        let late = [
            ModuleRequest::required("crc32c_generic"),
            ModuleRequest::required("ext4"),
        ];
        let plan = index.plan(&[], &late).unwrap();
        for m in ["crc32c_generic", "crc32c_intel", "crc16", "jbd2"] {
            assert!(pos(&plan, m) < pos(&plan, "ext4"), "{m} after ext4: {plan:?}");
        }
        assert!(pos(&plan, "crc32c_intel") < pos(&plan, "jbd2"));
        let req = |n: &str| plan.modules[pos(&plan, n)].required;
        assert!(req("crc32c_generic") && req("ext4") && req("jbd2") && req("crc16"));
        // Only reached through the softdep alias: optional.
        assert!(!req("crc32c_intel"));
        assert_eq!(plan.modules.len(), 5);
    }

    #[test]
    fn needs_decide_skips_and_errors() {
        let (_d, index) = index();
        let late = [
            ModuleRequest::required("sd_mod"),
            ModuleRequest::optional("nonexistent"),
            ModuleRequest::if_present("virtio_pmem"),
            ModuleRequest::optional("opt_only"),
        ];
        let plan = index.plan(&[], &late).unwrap();
        let skipped: Vec<_> = plan.skipped.iter().map(|s| (s.name.as_str(), s.reason)).collect();
        assert_eq!(
            skipped,
            [
                ("sd_mod", "built-in"),
                ("nonexistent", "not in the module tree"),
                ("virtio_pmem", "not in the module tree")
            ]
        );
        // An optional module's own dependencies are optional too.
        assert!(!plan.modules[pos(&plan, "opt_dep")].required);
        assert!(!plan.modules[pos(&plan, "opt_only")].required);
        let err = index.plan(&[ModuleRequest::required("nope")], &[]).unwrap_err();
        assert!(
            matches!(err, ModuleError::NotFound { ref name, .. } if name == "nope"),
            "{err}"
        );
    }

    #[test]
    fn names_of_paths() {
        assert_eq!(name_of("kernel/arch/x86/crypto/crc32c-intel.ko"), "crc32c_intel");
        assert_eq!(name_of("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(name_of("kernel/drivers/md/dm-mod.ko.zst"), "dm_mod");
    }
}
