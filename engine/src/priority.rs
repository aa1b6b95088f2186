//! CPU and IO priority of threads: the engine lowers its background threads (flush,
//! compaction, value-log GC) so that an owner's foreground work comes first
//! (`Options::background_nice`). Linux-only syscalls through `libc`.

use std::io;

/// `ioprio_set`/`ioprio_get` target: one thread (`IOPRIO_WHO_PROCESS` with a thread id).
const IOPRIO_WHO_PROCESS: libc::c_long = 1;
/// The best-effort IO scheduling class.
pub const IOPRIO_CLASS_BE: u32 = 2;
/// The lowest level of a class.
pub const IOPRIO_LOWEST_LEVEL: u32 = 7;
/// Bits of the level below the class in an IO priority value.
const IOPRIO_CLASS_SHIFT: u32 = 13;

/// The calling thread's kernel thread id.
pub fn current_tid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The nice value of thread `tid` of this process.
pub fn thread_nice(tid: i32) -> io::Result<i32> {
    // getpriority can return -1 legitimately: clear errno first and check it after.
    // SAFETY: __errno_location returns this thread's errno slot; getpriority only reads.
    let v = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t)
    };
    let err = io::Error::last_os_error();
    if v == -1 && err.raw_os_error().unwrap_or(0) != 0 {
        return Err(err);
    }
    Ok(v)
}

/// The IO priority of thread `tid` as (class, level).
pub fn thread_io_priority(tid: i32) -> io::Result<(u32, u32)> {
    // SAFETY: ioprio_get takes two integers and only reads.
    let v = unsafe {
        libc::syscall(
            libc::SYS_ioprio_get,
            IOPRIO_WHO_PROCESS,
            tid as libc::c_long,
        )
    };
    if v < 0 {
        return Err(io::Error::last_os_error());
    }
    let v = v as u32;
    Ok((v >> IOPRIO_CLASS_SHIFT, v & ((1 << IOPRIO_CLASS_SHIFT) - 1)))
}

/// Lowers the calling thread: its nice value becomes `nice` if that is higher (less
/// important) than the one it has (a thread is never made more important: that would
/// need privileges, and an operator who started the process niced meant it), and its IO
/// priority becomes best-effort, lowest level (effective under IO schedulers that honour
/// priorities, e.g. BFQ). Returns the nice value the thread now runs at; an error says
/// which call failed, with the thread left as it was for that part.
pub fn lower_current_thread(nice: i32) -> io::Result<i32> {
    let tid = current_tid();
    let now = thread_nice(tid)?;
    let mut result = Ok(now);
    if nice > now {
        // SAFETY: setpriority on our own thread id with an int value.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
        result = if r == 0 {
            Ok(nice)
        } else {
            Err(io::Error::other(format!(
                "setpriority(nice {nice}): {}",
                io::Error::last_os_error()
            )))
        };
    }
    let value = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | IOPRIO_LOWEST_LEVEL;
    // SAFETY: ioprio_set on our own thread id with an integer priority.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid as libc::c_long,
            value as libc::c_long,
        )
    };
    if r != 0 && result.is_ok() {
        result = Err(io::Error::other(format!(
            "ioprio_set(best effort, level {IOPRIO_LOWEST_LEVEL}): {}",
            io::Error::last_os_error()
        )));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_itself_and_never_raises_itself() {
        std::thread::spawn(|| {
            let tid = current_tid();
            let before = thread_nice(tid).expect("nice");
            let target = (before + 3).min(19);
            assert_eq!(lower_current_thread(target).expect("lower"), target);
            assert_eq!(thread_nice(tid).expect("nice"), target);
            // Asking for something more important changes nothing.
            assert_eq!(lower_current_thread(target - 2).expect("lower"), target);
            assert_eq!(thread_nice(tid).expect("nice"), target);
            if let Ok(p) = thread_io_priority(tid) {
                assert_eq!(p, (IOPRIO_CLASS_BE, IOPRIO_LOWEST_LEVEL));
            }
        })
        .join()
        .expect("thread");
    }
}
