//! Container statistics in containerd's cgroup-v1 `Metrics` JSON (`cgroup1/stats/metrics.pb.go`),
//! the `LCOWMetrics` member of GetProperties' `Properties` (docs/gcs-reference.md §4.12).
//!
//! Keys are the protobuf Go structs' `json` tags (snake_case), in field order, and every field is
//! `omitempty`: zero numbers, empty strings and lists, and absent sub-messages are left out.

use serde::{Deserialize, Serialize};

use super::omit::is_zero;

/// The root `Metrics` message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Per page size hugetlb usage.
    #[serde(rename = "hugetlb", skip_serializing_if = "Vec::is_empty")]
    pub hugetlb: Vec<HugetlbStat>,
    /// Pids controller.
    #[serde(rename = "pids", skip_serializing_if = "Option::is_none")]
    pub pids: Option<PidsStat>,
    /// CPU accounting.
    #[serde(rename = "cpu", skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStat>,
    /// Memory controller.
    #[serde(rename = "memory", skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStat>,
    /// Block I/O (the Linux guest blanks it out).
    #[serde(rename = "blkio", skip_serializing_if = "Option::is_none")]
    pub blkio: Option<BlkIoStat>,
    /// RDMA (the Linux guest blanks it out).
    #[serde(rename = "rdma", skip_serializing_if = "Option::is_none")]
    pub rdma: Option<RdmaStat>,
    /// Per interface counters (the Linux guest blanks them out).
    #[serde(rename = "network", skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<NetworkStat>,
    /// Task state counts.
    #[serde(rename = "cgroup_stats", skip_serializing_if = "Option::is_none")]
    pub cgroup_stats: Option<CgroupStats>,
    /// `memory.oom_control`.
    #[serde(rename = "memory_oom_control", skip_serializing_if = "Option::is_none")]
    pub memory_oom_control: Option<MemoryOomControl>,
}

/// One hugetlb page size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HugetlbStat {
    /// Bytes in use.
    #[serde(rename = "usage", skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Maximum bytes used.
    #[serde(rename = "max", skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Allocation failures.
    #[serde(rename = "failcnt", skip_serializing_if = "is_zero")]
    pub failcnt: u64,
    /// Page size, e.g. `2MB`.
    #[serde(rename = "pagesize", skip_serializing_if = "String::is_empty")]
    pub pagesize: String,
}

/// Pids controller values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PidsStat {
    /// Tasks now.
    #[serde(rename = "current", skip_serializing_if = "is_zero")]
    pub current: u64,
    /// Task limit.
    #[serde(rename = "limit", skip_serializing_if = "is_zero")]
    pub limit: u64,
}

/// CPU statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuStat {
    /// Time used.
    #[serde(rename = "usage", skip_serializing_if = "Option::is_none")]
    pub usage: Option<CpuUsage>,
    /// CFS throttling.
    #[serde(rename = "throttling", skip_serializing_if = "Option::is_none")]
    pub throttling: Option<Throttle>,
}

/// CPU time in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    /// Total time.
    #[serde(rename = "total", skip_serializing_if = "is_zero")]
    pub total: u64,
    /// Kernel time.
    #[serde(rename = "kernel", skip_serializing_if = "is_zero")]
    pub kernel: u64,
    /// User time.
    #[serde(rename = "user", skip_serializing_if = "is_zero")]
    pub user: u64,
    /// Total time per CPU.
    #[serde(rename = "per_cpu", skip_serializing_if = "Vec::is_empty")]
    pub per_cpu: Vec<u64>,
}

/// CFS throttling counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Throttle {
    /// Enforcement periods.
    #[serde(rename = "periods", skip_serializing_if = "is_zero")]
    pub periods: u64,
    /// Periods throttled.
    #[serde(rename = "throttled_periods", skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    /// Nanoseconds throttled.
    #[serde(rename = "throttled_time", skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

/// Memory controller statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryStat {
    /// Page cache bytes.
    #[serde(rename = "cache", skip_serializing_if = "is_zero")]
    pub cache: u64,
    /// Anonymous and swap cache bytes.
    #[serde(rename = "rss", skip_serializing_if = "is_zero")]
    pub rss: u64,
    /// Transparent huge page bytes.
    #[serde(rename = "rss_huge", skip_serializing_if = "is_zero")]
    pub rss_huge: u64,
    /// Mapped file bytes.
    #[serde(rename = "mapped_file", skip_serializing_if = "is_zero")]
    pub mapped_file: u64,
    /// Dirty bytes.
    #[serde(rename = "dirty", skip_serializing_if = "is_zero")]
    pub dirty: u64,
    /// Writeback bytes.
    #[serde(rename = "writeback", skip_serializing_if = "is_zero")]
    pub writeback: u64,
    /// Pages charged.
    #[serde(rename = "pg_pg_in", skip_serializing_if = "is_zero")]
    pub pg_pg_in: u64,
    /// Pages uncharged.
    #[serde(rename = "pg_pg_out", skip_serializing_if = "is_zero")]
    pub pg_pg_out: u64,
    /// Page faults.
    #[serde(rename = "pg_fault", skip_serializing_if = "is_zero")]
    pub pg_fault: u64,
    /// Major page faults.
    #[serde(rename = "pg_maj_fault", skip_serializing_if = "is_zero")]
    pub pg_maj_fault: u64,
    /// Inactive anonymous bytes.
    #[serde(rename = "inactive_anon", skip_serializing_if = "is_zero")]
    pub inactive_anon: u64,
    /// Active anonymous bytes.
    #[serde(rename = "active_anon", skip_serializing_if = "is_zero")]
    pub active_anon: u64,
    /// Inactive file bytes.
    #[serde(rename = "inactive_file", skip_serializing_if = "is_zero")]
    pub inactive_file: u64,
    /// Active file bytes.
    #[serde(rename = "active_file", skip_serializing_if = "is_zero")]
    pub active_file: u64,
    /// Unevictable bytes.
    #[serde(rename = "unevictable", skip_serializing_if = "is_zero")]
    pub unevictable: u64,
    /// Hierarchical memory limit.
    #[serde(rename = "hierarchical_memory_limit", skip_serializing_if = "is_zero")]
    pub hierarchical_memory_limit: u64,
    /// Hierarchical memory+swap limit.
    #[serde(rename = "hierarchical_swap_limit", skip_serializing_if = "is_zero")]
    pub hierarchical_swap_limit: u64,
    /// Hierarchical total: page cache bytes.
    #[serde(rename = "total_cache", skip_serializing_if = "is_zero")]
    pub total_cache: u64,
    /// Hierarchical total: anonymous and swap cache bytes.
    #[serde(rename = "total_rss", skip_serializing_if = "is_zero")]
    pub total_rss: u64,
    /// Hierarchical total: transparent huge page bytes.
    #[serde(rename = "total_rss_huge", skip_serializing_if = "is_zero")]
    pub total_rss_huge: u64,
    /// Hierarchical total: mapped file bytes.
    #[serde(rename = "total_mapped_file", skip_serializing_if = "is_zero")]
    pub total_mapped_file: u64,
    /// Hierarchical total: dirty bytes.
    #[serde(rename = "total_dirty", skip_serializing_if = "is_zero")]
    pub total_dirty: u64,
    /// Hierarchical total: writeback bytes.
    #[serde(rename = "total_writeback", skip_serializing_if = "is_zero")]
    pub total_writeback: u64,
    /// Hierarchical total: pages charged.
    #[serde(rename = "total_pg_pg_in", skip_serializing_if = "is_zero")]
    pub total_pg_pg_in: u64,
    /// Hierarchical total: pages uncharged.
    #[serde(rename = "total_pg_pg_out", skip_serializing_if = "is_zero")]
    pub total_pg_pg_out: u64,
    /// Hierarchical total: page faults.
    #[serde(rename = "total_pg_fault", skip_serializing_if = "is_zero")]
    pub total_pg_fault: u64,
    /// Hierarchical total: major page faults.
    #[serde(rename = "total_pg_maj_fault", skip_serializing_if = "is_zero")]
    pub total_pg_maj_fault: u64,
    /// Hierarchical total: inactive anonymous bytes.
    #[serde(rename = "total_inactive_anon", skip_serializing_if = "is_zero")]
    pub total_inactive_anon: u64,
    /// Hierarchical total: active anonymous bytes.
    #[serde(rename = "total_active_anon", skip_serializing_if = "is_zero")]
    pub total_active_anon: u64,
    /// Hierarchical total: inactive file bytes.
    #[serde(rename = "total_inactive_file", skip_serializing_if = "is_zero")]
    pub total_inactive_file: u64,
    /// Hierarchical total: active file bytes.
    #[serde(rename = "total_active_file", skip_serializing_if = "is_zero")]
    pub total_active_file: u64,
    /// Hierarchical total: unevictable bytes.
    #[serde(rename = "total_unevictable", skip_serializing_if = "is_zero")]
    pub total_unevictable: u64,
    /// Memory usage.
    #[serde(rename = "usage", skip_serializing_if = "Option::is_none")]
    pub usage: Option<MemoryEntry>,
    /// Memory+swap usage.
    #[serde(rename = "swap", skip_serializing_if = "Option::is_none")]
    pub swap: Option<MemoryEntry>,
    /// Kernel memory.
    #[serde(rename = "kernel", skip_serializing_if = "Option::is_none")]
    pub kernel: Option<MemoryEntry>,
    /// Kernel TCP buffer memory.
    #[serde(rename = "kernel_tcp", skip_serializing_if = "Option::is_none")]
    pub kernel_tcp: Option<MemoryEntry>,
}

/// One memory counter group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryEntry {
    /// Limit in bytes.
    #[serde(rename = "limit", skip_serializing_if = "is_zero")]
    pub limit: u64,
    /// Usage in bytes.
    #[serde(rename = "usage", skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Maximum usage in bytes.
    #[serde(rename = "max", skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Times the limit was hit.
    #[serde(rename = "failcnt", skip_serializing_if = "is_zero")]
    pub failcnt: u64,
}

/// `memory.oom_control` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryOomControl {
    /// OOM killer disabled.
    #[serde(rename = "oom_kill_disable", skip_serializing_if = "is_zero")]
    pub oom_kill_disable: u64,
    /// Under OOM now.
    #[serde(rename = "under_oom", skip_serializing_if = "is_zero")]
    pub under_oom: u64,
    /// OOM kills.
    #[serde(rename = "oom_kill", skip_serializing_if = "is_zero")]
    pub oom_kill: u64,
}

/// Block I/O statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkIoStat {
    /// Bytes transferred.
    #[serde(rename = "io_service_bytes_recursive", skip_serializing_if = "Vec::is_empty")]
    pub io_service_bytes_recursive: Vec<BlkIoEntry>,
    /// I/O operations.
    #[serde(rename = "io_serviced_recursive", skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkIoEntry>,
    /// Queued operations.
    #[serde(rename = "io_queued_recursive", skip_serializing_if = "Vec::is_empty")]
    pub io_queued_recursive: Vec<BlkIoEntry>,
    /// Service time.
    #[serde(rename = "io_service_time_recursive", skip_serializing_if = "Vec::is_empty")]
    pub io_service_time_recursive: Vec<BlkIoEntry>,
    /// Wait time.
    #[serde(rename = "io_wait_time_recursive", skip_serializing_if = "Vec::is_empty")]
    pub io_wait_time_recursive: Vec<BlkIoEntry>,
    /// Merged operations.
    #[serde(rename = "io_merged_recursive", skip_serializing_if = "Vec::is_empty")]
    pub io_merged_recursive: Vec<BlkIoEntry>,
    /// Device time.
    #[serde(rename = "io_time_recursive", skip_serializing_if = "Vec::is_empty")]
    pub io_time_recursive: Vec<BlkIoEntry>,
    /// Sectors transferred.
    #[serde(rename = "sectors_recursive", skip_serializing_if = "Vec::is_empty")]
    pub sectors_recursive: Vec<BlkIoEntry>,
}

/// One block I/O counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkIoEntry {
    /// Operation (`Read`, `Write`, ...).
    #[serde(rename = "op", skip_serializing_if = "String::is_empty")]
    pub op: String,
    /// Device name.
    #[serde(rename = "device", skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// Device major.
    #[serde(rename = "major", skip_serializing_if = "is_zero")]
    pub major: u64,
    /// Device minor.
    #[serde(rename = "minor", skip_serializing_if = "is_zero")]
    pub minor: u64,
    /// Counter value.
    #[serde(rename = "value", skip_serializing_if = "is_zero")]
    pub value: u64,
}

/// RDMA statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RdmaStat {
    /// Current usage.
    #[serde(rename = "current", skip_serializing_if = "Vec::is_empty")]
    pub current: Vec<RdmaEntry>,
    /// Limits.
    #[serde(rename = "limit", skip_serializing_if = "Vec::is_empty")]
    pub limit: Vec<RdmaEntry>,
}

/// One RDMA device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RdmaEntry {
    /// Device name.
    #[serde(rename = "device", skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// HCA handles.
    #[serde(rename = "hca_handles", skip_serializing_if = "is_zero")]
    pub hca_handles: u32,
    /// HCA objects.
    #[serde(rename = "hca_objects", skip_serializing_if = "is_zero")]
    pub hca_objects: u32,
}

/// One interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkStat {
    /// Interface name.
    #[serde(rename = "name", skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Bytes received.
    #[serde(rename = "rx_bytes", skip_serializing_if = "is_zero")]
    pub rx_bytes: u64,
    /// Packets received.
    #[serde(rename = "rx_packets", skip_serializing_if = "is_zero")]
    pub rx_packets: u64,
    /// Receive errors.
    #[serde(rename = "rx_errors", skip_serializing_if = "is_zero")]
    pub rx_errors: u64,
    /// Receive drops.
    #[serde(rename = "rx_dropped", skip_serializing_if = "is_zero")]
    pub rx_dropped: u64,
    /// Bytes sent.
    #[serde(rename = "tx_bytes", skip_serializing_if = "is_zero")]
    pub tx_bytes: u64,
    /// Packets sent.
    #[serde(rename = "tx_packets", skip_serializing_if = "is_zero")]
    pub tx_packets: u64,
    /// Send errors.
    #[serde(rename = "tx_errors", skip_serializing_if = "is_zero")]
    pub tx_errors: u64,
    /// Send drops.
    #[serde(rename = "tx_dropped", skip_serializing_if = "is_zero")]
    pub tx_dropped: u64,
}

/// Task state counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupStats {
    /// Sleeping tasks.
    #[serde(rename = "nr_sleeping", skip_serializing_if = "is_zero")]
    pub nr_sleeping: u64,
    /// Running tasks.
    #[serde(rename = "nr_running", skip_serializing_if = "is_zero")]
    pub nr_running: u64,
    /// Stopped tasks.
    #[serde(rename = "nr_stopped", skip_serializing_if = "is_zero")]
    pub nr_stopped: u64,
    /// Tasks in uninterruptible sleep.
    #[serde(rename = "nr_uninterruptible", skip_serializing_if = "is_zero")]
    pub nr_uninterruptible: u64,
    /// Tasks waiting on I/O.
    #[serde(rename = "nr_io_wait", skip_serializing_if = "is_zero")]
    pub nr_io_wait: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_are_omitted_and_keys_are_snake_case() {
        let m = Metrics {
            pids: Some(PidsStat { current: 3, limit: 0 }),
            memory: Some(MemoryStat {
                total_rss: 7,
                usage: Some(MemoryEntry {
                    usage: 10,
                    ..MemoryEntry::default()
                }),
                ..MemoryStat::default()
            }),
            cpu: Some(CpuStat::default()),
            ..Metrics::default()
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"pids":{"current":3},"cpu":{},"memory":{"total_rss":7,"usage":{"usage":10}}}"#
        );
        let back: Metrics = crate::gojson::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(serde_json::to_string(&Metrics::default()).unwrap(), "{}");
    }
}
