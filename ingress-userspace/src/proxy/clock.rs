//! Clocks for bookkeeping that tolerates a few milliseconds of error (idle
//! deadlines, ejections, the `date` header): the kernel's coarse clocks,
//! which the vDSO answers from memory, without reading the TSC. Request
//! durations keep `Instant`.

/// Milliseconds on `CLOCK_MONOTONIC_COARSE` (advances once per tick, 1-4 ms).
pub fn coarse_ms() -> u64 {
    let ts = read(libc::CLOCK_MONOTONIC_COARSE);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Seconds since the Unix epoch on `CLOCK_REALTIME_COARSE`.
pub fn coarse_unix_secs() -> u64 {
    read(libc::CLOCK_REALTIME_COARSE).tv_sec as u64
}

fn read(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; both clocks
    // exist on every Linux since 2.6.32, so it cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clocks_follow_the_precise_ones() {
        let before = coarse_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let elapsed = coarse_ms() - before;
        assert!((20..200).contains(&elapsed), "{elapsed} ms");
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(unix.abs_diff(coarse_unix_secs()) <= 1);
    }
}
