//! The guest's container statistics (containerd's cgroup-v1 `Metrics` as JSON, §4.12) as the
//! protobuf message containerd 1.6 decodes from a task's `Stats`: the same fields, one to one.
//! (Block I/O, RDMA and network counters the Linux guest leaves empty; so do we.)

use containerd_shim_protos::cgroups::metrics as pb;
use containerd_shim_protos::protobuf::MessageField;
use rgcs_protocol::message::metrics as json;

/// The `Any` type URL containerd 1.6 resolves (bare name, no `type.googleapis.com/`).
pub const TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

macro_rules! copy {
    ($dst:expr, $src:expr, $($f:ident),+ $(,)?) => { $( $dst.$f = $src.$f.clone(); )+ };
}

fn entry(e: Option<&json::MemoryEntry>) -> MessageField<pb::MemoryEntry> {
    e.map(|e| pb::MemoryEntry {
        limit: e.limit,
        usage: e.usage,
        max: e.max,
        failcnt: e.failcnt,
        ..Default::default()
    })
    .into()
}

/// Converts the guest's statistics.
pub fn to_proto(m: &json::Metrics) -> pb::Metrics {
    let mut out = pb::Metrics::new();
    out.hugetlb = m
        .hugetlb
        .iter()
        .map(|h| {
            let mut o = pb::HugetlbStat::new();
            copy!(o, h, usage, max, failcnt, pagesize);
            o
        })
        .collect();
    out.pids = m
        .pids
        .as_ref()
        .map(|p| pb::PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        })
        .into();
    out.cpu = m
        .cpu
        .as_ref()
        .map(|c| pb::CPUStat {
            usage: c
                .usage
                .as_ref()
                .map(|u| {
                    let mut o = pb::CPUUsage::new();
                    copy!(o, u, total, kernel, user, per_cpu);
                    o
                })
                .into(),
            throttling: c
                .throttling
                .as_ref()
                .map(|t| {
                    let mut o = pb::Throttle::new();
                    copy!(o, t, periods, throttled_periods, throttled_time);
                    o
                })
                .into(),
            ..Default::default()
        })
        .into();
    out.memory = m
        .memory
        .as_ref()
        .map(|s| {
            let mut o = pb::MemoryStat::new();
            copy!(
                o,
                s,
                cache,
                rss,
                rss_huge,
                mapped_file,
                dirty,
                writeback,
                pg_pg_in,
                pg_pg_out,
                pg_fault,
                pg_maj_fault,
                inactive_anon,
                active_anon,
                inactive_file,
                active_file,
                unevictable,
                hierarchical_memory_limit,
                hierarchical_swap_limit,
                total_cache,
                total_rss,
                total_rss_huge,
                total_mapped_file,
                total_dirty,
                total_writeback,
                total_pg_pg_in,
                total_pg_pg_out,
                total_pg_fault,
                total_pg_maj_fault,
                total_inactive_anon,
                total_active_anon,
                total_inactive_file,
                total_active_file,
                total_unevictable,
            );
            o.usage = entry(s.usage.as_ref());
            o.swap = entry(s.swap.as_ref());
            o.kernel = entry(s.kernel.as_ref());
            o.kernel_tcp = entry(s.kernel_tcp.as_ref());
            o
        })
        .into();
    out.cgroup_stats = m
        .cgroup_stats
        .as_ref()
        .map(|c| {
            let mut o = pb::CgroupStats::new();
            copy!(
                o,
                c,
                nr_sleeping,
                nr_running,
                nr_stopped,
                nr_uninterruptible,
                nr_io_wait
            );
            o
        })
        .into();
    out.memory_oom_control = m
        .memory_oom_control
        .as_ref()
        .map(|c| {
            let mut o = pb::MemoryOomControl::new();
            copy!(o, c, oom_kill_disable, under_oom, oom_kill);
            o
        })
        .into();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn guest_statistics_become_containerds_message() {
        let guest: json::Metrics = serde_json::from_value(serde_json::json!({
            "pids": {"current": 3, "limit": 100},
            "cpu": {"usage": {"total": 5000, "kernel": 1000, "user": 4000, "per_cpu": [5000]}},
            "memory": {"rss": 4096, "total_inactive_file": 12, "usage": {"usage": 1048576, "limit": 2097152}},
            "memory_oom_control": {"oom_kill": 2}
        }))
        .unwrap();
        let m = to_proto(&guest);
        let back = pb::Metrics::parse_from_bytes(&m.write_to_bytes().unwrap()).unwrap();
        assert_eq!(back.pids.current, 3);
        assert_eq!(back.cpu.usage.per_cpu, [5000]);
        assert_eq!(back.memory.usage.usage, 1_048_576);
        assert_eq!(back.memory.usage.limit, 2_097_152);
        assert_eq!(back.memory.total_inactive_file, 12);
        assert_eq!(back.memory_oom_control.oom_kill, 2);
        assert!(back.blkio.is_none());
    }
}
