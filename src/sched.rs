//! How the processes and threads that serve connections are scheduled.
//!
//! With `sched_batch` (the default) they run under SCHED_BATCH, the policy
//! sched(7) gives "workloads that want a deterministic scheduling policy
//! without interactivity causing extra preemptions (between the
//! workload's tasks)".  Fifty connections are fifty children or threads,
//! each woken by a client's request or a backend's answer: under
//! SCHED_OTHER every such wake-up may preempt whoever runs — often another
//! of pibl's, which then comes back only to go to sleep — so the CPUs go
//! to switching.  A SCHED_BATCH task runs when the running one blocks or
//! its slice ends.  Its nice value is kept, and it is still preempted by
//! ordinary tasks (the backends, say).  What it gains is measured in
//! docs/performance.md.
//!
//! Only SCHED_OTHER and SCHED_BATCH are switched between: a policy pibl
//! was started with by chrt(1) or systemd's CPUSchedulingPolicy= (FIFO,
//! RR, IDLE) is the administrator's, and left alone.
//!
//! The policy belongs to a thread.  Each task that serves connections sets
//! its own as it starts (the fork model's child, a prefork worker) or
//! takes a configuration (a thread of the thread model).  The parent, the
//! thread model's main thread and the helpers keep theirs: the parent must
//! run as soon as connections arrive, to fork for them or grow the pool —
//! made to wait, it had the first requests of a burst wait with it.

use std::io;

/// Puts the calling thread under SCHED_BATCH when `batch`, or back under
/// SCHED_OTHER when not; any other policy stays.  A failure is said and
/// changes nothing else: the policy is a matter of speed only.
pub fn apply(batch: bool) {
    if let Err(e) = set(batch) {
        crate::diag!(
            "cannot set the scheduling policy: {}",
            crate::error::describe_io(&e)
        );
    }
}

fn set(batch: bool) -> io::Result<()> {
    let current = policy()?;
    let wanted = if batch {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    if current == wanted || !matches!(current, libc::SCHED_OTHER | libc::SCHED_BATCH) {
        return Ok(());
    }
    // Both policies take priority 0; the nice value is kept.
    crate::sys::set_scheduler(wanted)
}

/// The calling thread's policy.
fn policy() -> io::Result<libc::c_int> {
    crate::sys::scheduler()
}

#[cfg(test)]
mod tests {
    use super::*;

    // In a thread of its own: the policy is per thread, and the test
    // harness's threads must keep theirs.
    #[test]
    fn switches_between_other_and_batch_only() {
        std::thread::spawn(|| {
            let now = || policy().unwrap();
            apply(true);
            assert_eq!(now(), libc::SCHED_BATCH);
            apply(true);
            assert_eq!(now(), libc::SCHED_BATCH);
            apply(false);
            assert_eq!(now(), libc::SCHED_OTHER);
            // SCHED_IDLE needs no privilege to enter; pibl leaves it be.
            crate::sys::set_scheduler(libc::SCHED_IDLE).unwrap();
            apply(true);
            assert_eq!(now(), libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
    }
}
