//! libcgroups statistics (v1 or v2) → containerd's cgroup-v1 `Metrics` JSON shape
//! (`LCOWMetrics`, docs/gcs-reference.md §4.12). `blkio`, `rdma` and `network` stay empty, as hcsshim
//! blanks them to keep the reply small. v2's `memory.stat` keys are renamed to their v1
//! equivalents (hcsshim `cgroups2.Metrics` → `cgroups1.Metrics` conversion).

use libcgroups::stats::Stats;
use rgcs_protocol::message::metrics::{
    CpuStat, CpuUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat, Throttle,
};

/// Largest per-CPU list reported (keeps the reply far below 64 KiB on big VMs).
const MAX_PER_CPU: usize = 256;

fn key(stats: &std::collections::HashMap<String, u64>, v1: &str, v2: &str) -> u64 {
    stats.get(v1).or_else(|| stats.get(v2)).copied().unwrap_or(0)
}

fn entry(d: &libcgroups::stats::MemoryData) -> Option<MemoryEntry> {
    Some(MemoryEntry {
        limit: d.limit,
        usage: d.usage,
        max: d.max_usage,
        failcnt: d.fail_count,
    })
}

/// Parses `memory.events` (v2: `oom`, `oom_kill`, ...) or `memory.oom_control` (v1:
/// `oom_kill_disable`, `under_oom`, `oom_kill`) into `memory_oom_control`; `None` when nothing
/// in it is non-zero (the field is omitted, as containerd's omitempty does).
pub fn parse_oom(text: &str) -> Option<MemoryOomControl> {
    let mut oom = MemoryOomControl::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "oom_kill" => oom.oom_kill = v,
            "under_oom" => oom.under_oom = v,
            "oom_kill_disable" => oom.oom_kill_disable = v,
            _ => {}
        }
    }
    (oom != MemoryOomControl::default()).then_some(oom)
}

/// Reads the OOM counters of the cgroup at `path` (absolute cgroup path, v2 or v1 layout).
pub fn oom_control(path: &str) -> Option<MemoryOomControl> {
    let rel = path.trim_start_matches('/');
    [
        "/sys/fs/cgroup/{}/memory.events",
        "/sys/fs/cgroup/memory/{}/memory.oom_control",
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f.replace("{}", rel)).ok())
    .and_then(|t| parse_oom(&t))
}

/// Converts cgroup statistics into the v1 `Metrics` shape.
pub fn from_cgroup_stats(s: &Stats) -> Metrics {
    let m = &s.memory.stats;
    let total = |name: &str, v2: &str| key(m, &format!("total_{name}"), v2);
    let memory = MemoryStat {
        cache: key(m, "cache", "file"),
        rss: key(m, "rss", "anon"),
        rss_huge: key(m, "rss_huge", "anon_thp"),
        mapped_file: key(m, "mapped_file", "file_mapped"),
        dirty: key(m, "dirty", "file_dirty"),
        writeback: key(m, "writeback", "file_writeback"),
        pg_pg_in: key(m, "pgpgin", "pgpgin"),
        pg_pg_out: key(m, "pgpgout", "pgpgout"),
        pg_fault: key(m, "pgfault", "pgfault"),
        pg_maj_fault: key(m, "pgmajfault", "pgmajfault"),
        inactive_anon: key(m, "inactive_anon", "inactive_anon"),
        active_anon: key(m, "active_anon", "active_anon"),
        inactive_file: key(m, "inactive_file", "inactive_file"),
        active_file: key(m, "active_file", "active_file"),
        unevictable: key(m, "unevictable", "unevictable"),
        hierarchical_memory_limit: key(m, "hierarchical_memory_limit", "__none"),
        hierarchical_swap_limit: key(m, "hierarchical_memsw_limit", "__none"),
        total_cache: total("cache", "file"),
        total_rss: total("rss", "anon"),
        total_rss_huge: total("rss_huge", "anon_thp"),
        total_mapped_file: total("mapped_file", "file_mapped"),
        total_dirty: total("dirty", "file_dirty"),
        total_writeback: total("writeback", "file_writeback"),
        total_pg_pg_in: total("pgpgin", "pgpgin"),
        total_pg_pg_out: total("pgpgout", "pgpgout"),
        total_pg_fault: total("pgfault", "pgfault"),
        total_pg_maj_fault: total("pgmajfault", "pgmajfault"),
        total_inactive_anon: total("inactive_anon", "inactive_anon"),
        total_active_anon: total("active_anon", "active_anon"),
        total_inactive_file: total("inactive_file", "inactive_file"),
        total_active_file: total("active_file", "active_file"),
        total_unevictable: total("unevictable", "unevictable"),
        usage: entry(&s.memory.memory),
        swap: entry(&s.memory.memswap),
        kernel: entry(&s.memory.kernel),
        kernel_tcp: entry(&s.memory.kernel_tcp),
    };
    let u = &s.cpu.usage;
    let mut per_cpu = u.per_core_usage_total.clone();
    per_cpu.truncate(MAX_PER_CPU);
    Metrics {
        pids: Some(PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
        }),
        cpu: Some(CpuStat {
            usage: Some(CpuUsage {
                total: u.usage_total,
                kernel: u.usage_kernel,
                user: u.usage_user,
                per_cpu,
            }),
            throttling: Some(Throttle {
                periods: s.cpu.throttling.periods,
                throttled_periods: s.cpu.throttling.throttled_periods,
                throttled_time: s.cpu.throttling.throttled_time,
            }),
        }),
        memory: Some(memory),
        ..Metrics::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counters_from_v2_events_and_v1_oom_control() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom(v2).map(|o| o.oom_kill), Some(1));
        let v1 = "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n";
        let o = parse_oom(v1).unwrap();
        assert_eq!((o.under_oom, o.oom_kill), (1, 3));
        assert_eq!(parse_oom("oom_kill 0\n"), None);
    }

    #[test]
    fn v2_memory_keys_become_v1_names() {
        let mut s = Stats::default();
        s.memory.stats.insert("anon".into(), 4096);
        s.memory.stats.insert("file".into(), 8192);
        s.memory.stats.insert("file_mapped".into(), 12);
        s.memory.stats.insert("pgfault".into(), 7);
        s.memory.memory.usage = 100;
        s.memory.memory.limit = 1 << 20;
        s.pids.current = 3;
        s.cpu.usage.usage_total = 99;
        s.cpu.usage.per_core_usage_total = vec![1; 1000];
        let m = from_cgroup_stats(&s);
        let mem = m.memory.as_ref().unwrap();
        assert_eq!(
            (mem.rss, mem.cache, mem.mapped_file, mem.pg_fault),
            (4096, 8192, 12, 7)
        );
        assert_eq!((mem.total_rss, mem.total_cache), (4096, 8192));
        assert_eq!(mem.usage.as_ref().unwrap().limit, 1 << 20);
        assert_eq!(m.pids.as_ref().unwrap().current, 3);
        let cpu = m.cpu.as_ref().unwrap().usage.as_ref().unwrap();
        assert_eq!((cpu.total, cpu.per_cpu.len()), (99, MAX_PER_CPU));
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"rss\":4096"), "{json}");
        assert!(!json.contains("blkio") && !json.contains("network"), "{json}");
    }

    #[test]
    fn v1_keys_win_over_v2() {
        let mut s = Stats::default();
        s.memory.stats.insert("rss".into(), 1);
        s.memory.stats.insert("total_rss".into(), 2);
        s.memory.stats.insert("hierarchical_memory_limit".into(), 5);
        let m = from_cgroup_stats(&s);
        let mem = m.memory.unwrap();
        assert_eq!((mem.rss, mem.total_rss, mem.hierarchical_memory_limit), (1, 2, 5));
    }
}
