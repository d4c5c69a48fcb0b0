//! Cost of a process, from /proc: CPU time (utime + stime, all threads) and memory (VmRSS,
//! VmHWM). Linux only; elsewhere every figure is `None`.

use std::time::Duration;

/// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`; 100 on every Linux we run).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// CPU time a process has used so far (user + system, all its threads).
pub fn cpu_time(pid: u32, ticks: u64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// User and system CPU time of a process so far (all its threads) and its minor page faults
/// (a fresh page touched: the kernel zeroes it, counted in the system time).
pub fn cpu_split(pid: u32, ticks: u64) -> Option<(Duration, Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // From field 3: minflt is field 10, utime 14, stime 15.
    let minflt: u64 = f.get(7)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let secs = |t: u64| Duration::from_secs_f64(t as f64 / ticks as f64);
    Some((secs(utime), secs(stime), minflt))
}

/// The direct children of `pid` (e.g. nginx's workers under its master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // Field 4 (ppid), counted after the command name's closing ')'.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// [`cpu_time`] of `pid` plus its direct children (a process with workers: nginx with
/// `worker_processes` > 1). The same as `cpu_time` for a single process.
pub fn cpu_time_tree(pid: u32, ticks: u64) -> Option<Duration> {
    let own = cpu_time(pid, ticks)?;
    Some(
        children(pid)
            .into_iter()
            .filter_map(|c| cpu_time(c, ticks))
            .fold(own, |a, b| a + b),
    )
}

/// [`rss`] of `pid` plus its direct children (shared pages counted in each).
pub fn rss_tree(pid: u32) -> Option<u64> {
    let own = rss(pid)?;
    Some(own + children(pid).into_iter().filter_map(rss).sum::<u64>())
}

/// [`peak_rss`] of `pid` plus its direct children.
pub fn peak_rss_tree(pid: u32) -> Option<u64> {
    let own = peak_rss(pid)?;
    Some(own + children(pid).into_iter().filter_map(peak_rss).sum::<u64>())
}

/// A `Vm*` line of /proc/PID/status, in bytes.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
    })
}

/// Resident memory now, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS").map(|k| k * 1024)
}

/// Peak resident memory since the process started, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM").map(|k| k * 1024)
}

/// The soft RLIMIT_NOFILE of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        let ticks = clock_ticks();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(cpu_time(pid, ticks).is_some());
            assert!(rss(pid).unwrap() > 0);
            assert!(peak_rss(pid).unwrap() >= rss(pid).unwrap() / 2);
            assert!(open_files_limit().unwrap() > 0);
            // A child of ours is found, and its CPU counts in the tree's.
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            assert!(children(pid).contains(&child.id()));
            // Our own figures first: this process's CPU time only grows (other tests run on
            // other threads), so the tree's, read after, cannot be below it.
            let own_cpu = cpu_time(pid, ticks).unwrap();
            assert!(cpu_time_tree(pid, ticks).unwrap() >= own_cpu);
            let own_rss = rss(pid).unwrap();
            assert!(rss_tree(pid).unwrap() > own_rss);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
