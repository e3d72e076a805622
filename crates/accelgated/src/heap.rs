//! Giving freed heap memory back to the kernel.
//!
//! Some requests allocate in bursts: zbus answers GetManagedObjects by building every object's
//! properties into one map before it serializes the reply (about 15 MB at 4096 slices). glibc
//! returns freed memory on its own only from the top of the heap, so after such a burst most
//! of it stays resident behind a few long-lived allocations. A periodic `malloc_trim` hands
//! back the free pages inside the heap as well, as jemalloc's decay does; the daemon then
//! stays near what it uses (benches/accelgate.rs, item 5: 30 MiB right after five
//! GetManagedObjects at 4096 slices, 17.5 MiB two seconds later). It runs on a timer, outside
//! any request; the benchmark's 64-client read p99 showed no change with it on.

use std::time::Duration;

/// How often freed memory is given back.
pub const TRIM_PERIOD: Duration = Duration::from_secs(2);

/// Trims the heap every `period`, for as long as the runtime runs.
pub fn spawn_trimmer(period: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            trim();
        }
    });
}

/// Returns the free pages of every malloc arena to the kernel.
pub fn trim() {
    // SAFETY: malloc_trim only releases memory malloc itself holds free (madvise/brk under the
    // arena lock); it touches no memory of ours and is safe to call from any thread.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
