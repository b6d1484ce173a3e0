//! Shared memory: who the executors are and how to wake them.
//!
//! A transaction that makes work runnable (a send that starts runs, a resume)
//! asks for a wake-up; at commit, when the work is visible, the commit hook sets
//! the latch of idle executors. No LISTEN/NOTIFY, no global lock at commit.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};

use crate::gucs::MAX_WORKERS;

pub struct WorkerSlot {
    /// Process id of the executor in this slot, 0 when empty.
    pub pid: AtomicI32,
    /// Process id of the last executor that occupied the slot, kept after it
    /// exits so that the launcher can release what it had claimed.
    pub last_pid: AtomicI32,
    /// Address of the executor's latch (shared memory is mapped at the same
    /// address in every backend).
    latch: AtomicUsize,
    /// Set by the executor right before its last look for work; cleared by
    /// whoever wakes it, so that concurrent committers wake different executors.
    idle: AtomicBool,
    /// For the jobs.workers view: when the executor last went round its loop,
    /// and the run it is executing (its 16 bytes, valid while `running`).
    heartbeat_ms: AtomicI64,
    running: AtomicBool,
    run: [AtomicU64; 2],
}

pub struct Shared {
    launcher_pid: AtomicI32,
    launcher_heartbeat_ms: AtomicI64,
    /// When shared memory was set up: at server start, and again when the
    /// server restarts after a crash. The instant @reboot schedules run for.
    started_at_us: AtomicI64,
    /// The launcher has started this start's @reboot runs.
    reboot_fired: AtomicBool,
    pub workers: [WorkerSlot; MAX_WORKERS],
}

/// What jobs.workers shows of an executor.
pub struct WorkerStatus {
    pub pid: i32,
    pub run: Option<[u8; 16]>,
    pub heartbeat_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

unsafe impl PGRXSharedMemory for Shared {}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_pid: AtomicI32::new(0),
            launcher_heartbeat_ms: AtomicI64::new(0),
            started_at_us: AtomicI64::new(now_us()),
            reboot_fired: AtomicBool::new(false),
            workers: std::array::from_fn(|_| WorkerSlot {
                pid: AtomicI32::new(0),
                last_pid: AtomicI32::new(0),
                latch: AtomicUsize::new(0),
                idle: AtomicBool::new(false),
                heartbeat_ms: AtomicI64::new(0),
                running: AtomicBool::new(false),
                run: [AtomicU64::new(0), AtomicU64::new(0)],
            }),
        }
    }
}

static SHARED: PgAtomic<Shared> = unsafe { PgAtomic::new(c"pg_jobs shared state") };
static INITIALIZED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    pg_shmem_init!(SHARED = Shared::default());
    INITIALIZED.store(true, Ordering::Relaxed);
}

pub fn is_initialized() -> bool {
    INITIALIZED.load(Ordering::Relaxed)
}

pub fn shared() -> &'static Shared {
    SHARED.get()
}

fn my_latch() -> usize {
    unsafe { pg_sys::MyLatch as usize }
}

fn set_latch(address: usize) {
    if address != 0 {
        unsafe { pg_sys::SetLatch(address as *mut pg_sys::Latch) };
    }
}

impl WorkerSlot {
    pub fn occupy(&self) {
        self.latch.store(my_latch(), Ordering::SeqCst);
        self.idle.store(false, Ordering::SeqCst);
        self.last_pid
            .store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
        self.pid
            .store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    }

    pub fn vacate(&self) {
        self.idle.store(false, Ordering::SeqCst);
        self.pid.store(0, Ordering::SeqCst);
        self.latch.store(0, Ordering::SeqCst);
    }

    /// Called before the executor's last look for work, so that a commit that
    /// happens after that look began is sure to see it idle and wake it.
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::SeqCst);
    }

    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The run the executor is on, or none.
    pub fn set_run(&self, run: Option<[u8; 16]>) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(bytes) = run {
            let (high, low) = bytes.split_at(8);
            self.run[0].store(
                u64::from_be_bytes(high.try_into().unwrap()),
                Ordering::SeqCst,
            );
            self.run[1].store(
                u64::from_be_bytes(low.try_into().unwrap()),
                Ordering::SeqCst,
            );
            self.running.store(true, Ordering::SeqCst);
        }
    }

    pub fn status(&self) -> Option<WorkerStatus> {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid == 0 {
            return None;
        }
        let running = self.running.load(Ordering::SeqCst);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.run[0].load(Ordering::SeqCst).to_be_bytes());
        bytes[8..].copy_from_slice(&self.run[1].load(Ordering::SeqCst).to_be_bytes());
        // A run id changing under the read is shown as no run rather than a mix of two.
        let run = (running && self.running.load(Ordering::SeqCst)).then_some(bytes);
        Some(WorkerStatus {
            pid,
            run,
            heartbeat_ms: self.heartbeat_ms.load(Ordering::Relaxed),
        })
    }
}

impl Shared {
    pub fn set_launcher(&self, pid: i32) {
        self.launcher_pid.store(pid, Ordering::SeqCst);
    }

    pub fn launcher_beat(&self) {
        self.launcher_heartbeat_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// The launcher's pid and last heartbeat, when it runs.
    pub fn launcher(&self) -> Option<(i32, i64)> {
        let pid = self.launcher_pid.load(Ordering::SeqCst);
        (pid != 0).then(|| (pid, self.launcher_heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// This server start, in microseconds since 1970.
    pub fn started_at_us(&self) -> i64 {
        self.started_at_us.load(Ordering::SeqCst)
    }

    pub fn reboot_fired(&self) -> bool {
        self.reboot_fired.load(Ordering::SeqCst)
    }

    pub fn set_reboot_fired(&self) {
        self.reboot_fired.store(true, Ordering::SeqCst);
    }

    /// Wakes up to `count` idle executors.
    pub fn wake_idle_workers(&self, mut count: usize) {
        for slot in &self.workers {
            if count == 0 {
                return;
            }
            if slot.pid.load(Ordering::SeqCst) != 0
                && slot
                    .idle
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                set_latch(slot.latch.load(Ordering::SeqCst));
                count -= 1;
            }
        }
    }
}

thread_local! {
    /// Runs made runnable by the current transaction, to wake that many executors at commit.
    static RUNNABLE_AT_COMMIT: Cell<usize> = const { Cell::new(0) };
}

/// Asks for `count` executors to be woken when the current transaction commits.
pub fn wake_workers_at_commit(count: usize) {
    RUNNABLE_AT_COMMIT.with(|c| c.set(c.get().saturating_add(count)));
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if event == XACT_EVENT_COMMIT
        || event == XACT_EVENT_PARALLEL_COMMIT
        || event == XACT_EVENT_ABORT
        || event == XACT_EVENT_PARALLEL_ABORT
    {
        let runnable = RUNNABLE_AT_COMMIT.with(|c| c.replace(0));
        if runnable > 0 && (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT) {
            shared().wake_idle_workers(runnable);
        }
    }
}

pub fn register_commit_hook() {
    unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut()) };
}
