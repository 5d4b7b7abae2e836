//! Process resource figures for `/health` and `/metrics`. Linux reads `/proc`; elsewhere
//! the figures are absent rather than guessed.

/// Resident set size in bytes.
#[cfg(target_os = "linux")]
pub fn rss_bytes() -> Option<u64> {
    // `VmRSS` in /proc/self/status is in kB, so no page-size assumption is needed
    // (unlike /proc/self/statm, which counts pages).
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(not(target_os = "linux"))]
pub fn rss_bytes() -> Option<u64> {
    None
}

/// User plus system CPU time of this process, in seconds.
#[cfg(target_os = "linux")]
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after its closing paren are
    // plain. utime and stime are fields 14 and 15, in USER_HZ ticks (100 per second in
    // the kernel's /proc ABI).
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(not(target_os = "linux"))]
pub fn cpu_seconds() -> Option<f64> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn linux_figures_are_present_and_plausible() {
        let rss = super::rss_bytes().unwrap();
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
        let cpu = super::cpu_seconds().unwrap();
        assert!(cpu >= 0.0, "{cpu}");
    }
}
