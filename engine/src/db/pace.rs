//! How background work shares the CPU with searches and writes.
//!
//! The build pool's threads run in Linux's idle scheduling class (`SCHED_IDLE`): a search
//! thread that wakes from its disk read takes the core at once, where at a nice value it
//! waits for the build thread's slice (on 2 cores, a search's p99 during an index build was
//! 2.5–2.9× idle at nice 10 and 1.7–1.8× in the idle class). A thread of the idle class gets
//! almost nothing while the cores are saturated, so the worker paces it: every
//! [`PACE_PERIOD`] while a background step runs, it reads how much CPU the build threads got
//! (`/proc/self/task/TID/schedstat`); after a period with less than [`MIN_SHARE`] of a core,
//! the threads run the next period in the normal class at [`Options::background_nice`], then
//! return to the idle class. Background work is thus never starved, and takes only what
//! searches leave while they leave enough.
//!
//! A thread in the idle class may leave it only with `CAP_SYS_NICE` or an `RLIMIT_NICE` that
//! allows its nice value. Where it may not, the class is not used at all (checked once, on a
//! scratch thread), and the threads stay at their nice value.
//!
//! [`Options::background_nice`]: crate::Options::background_nice

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::inner::lock;

/// How often the worker samples the build threads' CPU time while a step runs.
pub(super) const PACE_PERIOD: Duration = Duration::from_millis(500);
/// The least share of one core the build threads are given over a period: below it, the next
/// period runs in the normal class.
pub(super) const MIN_SHARE: f64 = 0.25;

/// The build threads' scheduling, and what the pacing has done.
#[derive(Debug)]
pub(super) struct Pace {
    /// Whether the idle class is used (asked for, and the process may leave it again).
    idle: bool,
    /// The nice value of the normal class: the process's own plus `Options::background_nice`.
    nice: i32,
    /// The build pool's threads.
    threads: Mutex<Vec<libc::pid_t>>,
    /// Whether the threads run the current period in the normal class.
    raised: AtomicBool,
    /// Periods run in the normal class because the idle class got too little.
    raises: AtomicU64,
}

/// The last sample of the build threads' CPU time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sample {
    at: Instant,
    cpu_ns: u64,
}

impl Pace {
    /// Pacing for threads at `increment` above the process's nice value, in the idle class if
    /// `idle` and the process may leave that class again.
    pub(super) fn new(idle: bool, increment: i32) -> Pace {
        // SAFETY: `getpriority` reads the calling thread's nice value and touches no memory.
        let base = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let nice = (base + increment).clamp(-20, 19);
        let idle = idle && idle_class_reversible(nice);
        Pace {
            idle,
            nice,
            threads: Mutex::new(Vec::new()),
            raised: AtomicBool::new(false),
            raises: AtomicU64::new(0),
        }
    }

    /// Whether the idle class is in use.
    pub(super) fn uses_idle_class(&self) -> bool {
        self.idle
    }

    /// Periods run in the normal class because the idle class got too little CPU.
    pub(super) fn raises(&self) -> u64 {
        self.raises.load(Ordering::Relaxed)
    }

    /// Registers the calling thread (a build pool thread, as it starts) and puts it in its
    /// class.
    pub(super) fn enter(&self) {
        // SAFETY: `gettid` has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        lock(&self.threads).push(tid);
        let idle = self.idle && !self.raised.load(Ordering::Relaxed);
        set_class(tid, idle, self.nice);
    }

    /// Puts the calling thread (the background worker, which waits for the steps it hands the
    /// build pool) at the build threads' nice value, in the normal class.
    pub(super) fn lower_worker(&self) {
        // SAFETY: `gettid` has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        set_class(tid, false, self.nice);
    }

    /// The build threads' CPU time now.
    pub(super) fn sample(&self) -> Sample {
        let cpu_ns = lock(&self.threads).iter().map(|&tid| thread_cpu_ns(tid)).sum();
        Sample { at: Instant::now(), cpu_ns }
    }

    /// One period's decision, from the sample at its start: a raised period always returns to
    /// the idle class; an idle one whose threads got less than [`MIN_SHARE`] of a core is
    /// followed by a raised one. Returns the sample that starts the next period.
    pub(super) fn tick(&self, since: Sample) -> Sample {
        let now = self.sample();
        if !self.idle {
            return now;
        }
        let raise = !self.raised.load(Ordering::Relaxed) && starved(since, now);
        self.set_raised(raise);
        if raise {
            self.raises.fetch_add(1, Ordering::Relaxed);
        }
        now
    }

    /// The step is over: the threads go back to the idle class.
    pub(super) fn step_done(&self) {
        if self.idle {
            self.set_raised(false);
        }
    }

    fn set_raised(&self, raised: bool) {
        if self.raised.swap(raised, Ordering::Relaxed) == raised {
            return;
        }
        for &tid in lock(&self.threads).iter() {
            set_class(tid, !raised, self.nice);
        }
    }
}

/// Whether the threads got less than [`MIN_SHARE`] of a core between the two samples.
fn starved(since: Sample, now: Sample) -> bool {
    let wall = now.at.saturating_duration_since(since.at).as_nanos() as f64;
    let cpu = now.cpu_ns.saturating_sub(since.cpu_ns) as f64;
    wall > 0.0 && cpu < MIN_SHARE * wall
}

/// Nanoseconds thread `tid` of this process has run (the first field of its `schedstat`); 0 if
/// it cannot be read (the thread has ended).
fn thread_cpu_ns(tid: libc::pid_t) -> u64 {
    let path = format!("/proc/self/task/{tid}/schedstat");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(0)
}

/// Puts thread `tid` in the idle class, or in the normal class at `nice`. A failure costs only
/// scheduling: it is logged, not returned.
fn set_class(tid: libc::pid_t, idle: bool, nice: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    // SAFETY: `sched_setscheduler` reads `param`, a live local, and changes only the
    // scheduling of thread `tid` of this process.
    let failed = unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0;
    // SAFETY: `setpriority` takes integers and touches no memory; on Linux `PRIO_PROCESS` with
    // a thread id sets that thread's nice value.
    let failed = failed || unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as u32, nice) } != 0;
    if failed {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, tid, idle, "could not set a background thread's scheduling");
    }
}

/// Whether a thread of this process that enters the idle class may leave it for the normal
/// class at `nice`: tried on a scratch thread, which then ends.
fn idle_class_reversible(nice: i32) -> bool {
    std::thread::spawn(move || {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: as in `set_class`, for the calling (scratch) thread (id 0).
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0
                && libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
                && libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0
        }
    })
    .join()
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, cpu_ms: u64) -> Sample {
        let at = Instant::now() + Duration::from_millis(ms);
        Sample { at, cpu_ns: cpu_ms * 1_000_000 }
    }

    #[test]
    fn a_period_below_a_quarter_core_is_starved_and_above_it_is_not() {
        let start = sample(0, 0);
        assert!(starved(start, sample(500, 100)), "0.2 core");
        assert!(!starved(start, sample(500, 200)), "0.4 core");
        assert!(!starved(start, sample(500, 900)), "1.8 cores across two threads");
        assert!(!starved(start, start), "no time passed: nothing to judge");
    }

    #[test]
    fn a_starved_thread_is_raised_for_one_period_then_idles_again() {
        let pace = Pace::new(true, 10);
        if !pace.uses_idle_class() {
            // Without CAP_SYS_NICE the idle class is not used; the README's test command runs
            // as root, where it is.
            // SAFETY: `geteuid` has no arguments and cannot fail.
            let euid = unsafe { libc::geteuid() };
            assert_ne!(euid, 0, "root may always leave the idle class");
            return;
        }
        let parked = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (entered, registered) = std::sync::mpsc::channel();
        let pace = std::sync::Arc::new(pace);
        let worker = {
            let (pace, parked) = (pace.clone(), parked.clone());
            std::thread::spawn(move || {
                pace.enter();
                entered.send(()).unwrap();
                parked.wait(); // no CPU at all meanwhile, so every period is starved
            })
        };
        registered.recv().unwrap();
        let tid = lock(&pace.threads)[0];
        // SAFETY: reads thread `tid`'s policy.
        let policy = || unsafe { libc::sched_getscheduler(tid) };
        assert_eq!(policy(), libc::SCHED_IDLE, "a build thread starts in the idle class");
        let start = Sample { at: Instant::now() - Duration::from_millis(500), cpu_ns: 0 };
        let next = pace.tick(start);
        assert_eq!(policy(), libc::SCHED_OTHER, "starved: raised for the next period");
        assert_eq!(pace.raises(), 1);
        pace.tick(next);
        assert_eq!(policy(), libc::SCHED_IDLE, "a raised period is followed by an idle one");
        pace.tick(Sample { at: Instant::now() - Duration::from_millis(500), cpu_ns: 0 });
        pace.step_done();
        assert_eq!(policy(), libc::SCHED_IDLE, "the step's end returns the threads to idle");
        parked.wait();
        worker.join().unwrap();
    }
}
