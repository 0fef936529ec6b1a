//! Device-mapper naming and table arithmetic for VPMem multi-mapping (docs/gcs-reference.md §6.3): a
//! zero-based dm-linear device over a byte range of `/dev/pmem<N>`. The ioctls are in
//! [`crate::sys::dm`].

use rgcs_protocol::message::VpMemMappingInfo;

use super::StorageError;

/// Sector size of device-mapper tables.
pub const SECTOR: u64 = 512;

/// `dm-linear-pmem<N>-<offset>-<size>`, hcsshim's name for the linear device.
pub fn linear_name(device: u32, m: &VpMemMappingInfo) -> String {
    format!(
        "dm-linear-pmem{device}-{}-{}",
        m.device_offset_in_bytes, m.device_size_in_bytes
    )
}

/// `(start sector, length in sectors)` of a mapping; both must be whole, non-empty sectors.
pub fn linear_sectors(m: &VpMemMappingInfo) -> Result<(u64, u64), StorageError> {
    let bad = |reason: &str| StorageError::BadSetting {
        field: "MappingInfo",
        reason: reason.to_owned(),
    };
    if m.device_size_in_bytes == 0 {
        return Err(bad("DeviceSizeInBytes is 0"));
    }
    if !m.device_offset_in_bytes.is_multiple_of(SECTOR) || !m.device_size_in_bytes.is_multiple_of(SECTOR) {
        return Err(bad("offset and size must be multiples of 512"));
    }
    if m.device_offset_in_bytes
        .checked_add(m.device_size_in_bytes)
        .is_none()
    {
        return Err(bad("offset + size overflows"));
    }
    Ok((m.device_offset_in_bytes / SECTOR, m.device_size_in_bytes / SECTOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sectors_follow_hcsshim() {
        let m = VpMemMappingInfo {
            device_offset_in_bytes: 4096,
            device_size_in_bytes: 1 << 20,
        };
        assert_eq!(linear_name(3, &m), "dm-linear-pmem3-4096-1048576");
        assert_eq!(linear_sectors(&m).unwrap(), (8, 2048));
        for bad in [(0, 0), (1, 512), (512, 100), (u64::MAX - 511, 1024)] {
            let m = VpMemMappingInfo {
                device_offset_in_bytes: bad.0,
                device_size_in_bytes: bad.1,
            };
            assert!(linear_sectors(&m).is_err(), "{bad:?}");
        }
    }
}
