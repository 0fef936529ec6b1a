//! Overlay root file systems (docs/gcs-reference.md §6.5): `lowerdir` is the layer paths in the order
//! received (entry 0 top-most) joined with `:`; with `ScratchPath`, `upper` and `work` under it;
//! without, a read-only overlay. Each layer the agent mounted is held until the overlay goes.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use rgcs_protocol::message::CombinedLayers;

use super::mount::Kind;
use super::{Storage, StorageError};

/// The overlay mount data: `lowerdir=L0:L1…[,upperdir=S/upper,workdir=S/work]`. The paths passed
/// the path policy, so none holds `,` or `:`.
pub fn mount_data(layers: &[PathBuf], scratch: Option<&Path>) -> String {
    let lower: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    let mut data = format!("lowerdir={}", lower.join(":"));
    if let Some(s) = scratch {
        data.push_str(&format!(
            ",upperdir={},workdir={}",
            s.join("upper").display(),
            s.join("work").display()
        ));
    }
    data
}

impl Storage {
    pub(super) fn add_overlay(&self, c: &CombinedLayers) -> Result<(), StorageError> {
        let policy = &self.cfg.policy;
        let target = policy.check("ContainerRootPath", &c.container_root_path)?;
        if c.layers.is_empty() {
            return Err(StorageError::BadSetting {
                field: "Layers",
                reason: "no layers".into(),
            });
        }
        let layers = c
            .layers
            .iter()
            .map(|l| policy.check("Layers[].Path", &l.path))
            .collect::<Result<Vec<_>, _>>()?;
        let scratch = (!c.scratch_path.is_empty())
            .then(|| policy.check("ScratchPath", &c.scratch_path))
            .transpose()?;
        let data = mount_data(&layers, scratch.as_deref());
        let id = format!("overlay {data}");
        let mut table = self.lock();
        if table.share(&target, &id)? {
            return Ok(());
        }
        for l in &layers {
            policy.check_no_symlinks(l, false)?;
        }
        let mut created = Vec::new();
        let res = (|| {
            if let Some(s) = &scratch {
                for d in [s.join("upper"), s.join("work")] {
                    if self.prepare_dir(&d, 0o755)? {
                        created.push(d);
                    }
                }
            }
            if self.prepare_dir(&target, 0o755)? {
                created.push(target.clone());
            }
            let flags = if scratch.is_some() {
                MsFlags::empty()
            } else {
                MsFlags::MS_RDONLY
            };
            self.mount_at(Path::new("overlay"), &target, "overlay", flags, Some(&data))
        })();
        if let Err(e) = res {
            for d in created.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            return Err(e);
        }
        tracing::info!(container_id = %c.container_id, target = %target.display(), "overlay mounted");
        table.insert(target, id, Kind::Overlay(layers));
        Ok(())
    }

    pub(super) fn remove_overlay(&self, c: &CombinedLayers) -> Result<(), StorageError> {
        let target = self
            .cfg
            .policy
            .check("ContainerRootPath", &c.container_root_path)?;
        self.remove_mount(&target, Kind::Plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_keeps_the_order_received() {
        let layers = vec![PathBuf::from("/run/layers/p1"), PathBuf::from("/run/layers/p0")];
        assert_eq!(
            mount_data(&layers, None),
            "lowerdir=/run/layers/p1:/run/layers/p0"
        );
        assert_eq!(
            mount_data(&layers, Some(Path::new("/run/gcs/c/x/scratch/x"))),
            "lowerdir=/run/layers/p1:/run/layers/p0,upperdir=/run/gcs/c/x/scratch/x/upper,\
             workdir=/run/gcs/c/x/scratch/x/work"
        );
    }
}
