//! Shared memory: who the executors are, what they hold, and how to wake and
//! interrupt them.
//!
//! A transaction that makes work runnable (a send that starts runs, a resume)
//! asks for a wake-up; at commit, when the work is visible, the commit hook sets
//! the latch of idle executors. No LISTEN/NOTIFY, no global lock at commit.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};

use crate::gucs::MAX_WORKERS;

/// Most work items an executor claims at once (the upper bound of `jobs.batch_size`).
pub const MAX_BATCH: usize = 64;
/// Most roles the registry of function owners holds.
pub const MAX_OWNERS: usize = 1024;

/// A run id as shared memory keeps it.
pub type RunId = [u8; 16];

/// A claimed work item, as other executors see it: a run and a hash of its
/// step id ('' for the run itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub run: RunId,
    pub step_hash: u64,
}

/// FNV-1a of a text (a step id, a key): stable across processes.
pub fn hash64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

const UNSTARTED: u8 = 0;
const STARTED: u8 = 1;
const STOLEN: u8 = 2;

#[derive(Default)]
struct AtomicRunId([AtomicU64; 2]);

impl AtomicRunId {
    fn store(&self, id: &RunId) {
        let (high, low) = id.split_at(8);
        self.0[0].store(
            u64::from_be_bytes(high.try_into().unwrap()),
            Ordering::SeqCst,
        );
        self.0[1].store(
            u64::from_be_bytes(low.try_into().unwrap()),
            Ordering::SeqCst,
        );
    }

    fn load(&self) -> RunId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.0[0].load(Ordering::SeqCst).to_be_bytes());
        id[8..].copy_from_slice(&self.0[1].load(Ordering::SeqCst).to_be_bytes());
        id
    }
}

#[derive(Default)]
struct BatchEntry {
    run: AtomicRunId,
    step_hash: AtomicU64,
    state: AtomicU8,
}

/// A tiny lock for sections of a few loads and stores: spinning is cheaper
/// than any lock PostgreSQL offers, and nothing inside can fail.
#[derive(Default)]
struct SpinLock(AtomicBool);

impl SpinLock {
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        while self
            .0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let result = f();
        self.0.store(false, Ordering::Release);
        result
    }
}

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
    /// and the run it is executing (valid while `running`).
    heartbeat_ms: AtomicI64,
    running: AtomicBool,
    run: AtomicRunId,
    /// When the user code the executor is in began (Unix ms), 0 outside user code.
    busy_since_ms: AtomicI64,
    /// The work it claimed, so that idle executors can take over what it has
    /// not started while it is stuck in user code.
    batch_lock: SpinLock,
    batch_len: AtomicUsize,
    batch: [BatchEntry; MAX_BATCH],
    /// A run whose code `jobs.cancel_run` asks this executor to interrupt.
    cancel: AtomicRunId,
}

impl Default for WorkerSlot {
    fn default() -> Self {
        WorkerSlot {
            pid: AtomicI32::new(0),
            last_pid: AtomicI32::new(0),
            latch: AtomicUsize::new(0),
            idle: AtomicBool::new(false),
            heartbeat_ms: AtomicI64::new(0),
            running: AtomicBool::new(false),
            run: AtomicRunId::default(),
            busy_since_ms: AtomicI64::new(0),
            batch_lock: SpinLock::default(),
            batch_len: AtomicUsize::new(0),
            batch: std::array::from_fn(|_| BatchEntry::default()),
            cancel: AtomicRunId::default(),
        }
    }
}

/// Which roles own how many functions in `jobs.database`, kept by the
/// launcher, so that `DROP ROLE` in any database can refuse to drop one.
/// Written by one process (a seqlock: `version` is odd while it writes).
struct OwnerRegistry {
    version: AtomicU64,
    /// The launcher filled it from jobs.functions at least once.
    ready: AtomicBool,
    /// Something changed ownership since the last fill.
    stale: AtomicBool,
    /// More owners than it holds: the ones beyond are unknown.
    overflow: AtomicBool,
    len: AtomicUsize,
    roles: [AtomicU32; MAX_OWNERS],
    counts: [AtomicU32; MAX_OWNERS],
}

impl Default for OwnerRegistry {
    fn default() -> Self {
        OwnerRegistry {
            version: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            roles: std::array::from_fn(|_| AtomicU32::new(0)),
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// Slots of the rate-limit table.
pub const RATE_SLOTS: usize = 4096;
/// Slots looked at for a key, from its hash on.
const RATE_PROBES: usize = 8;

/// `rate_limit` state (GCRA), decided in the sender's transaction without
/// making concurrent senders of a key wait for each other's commits: a
/// table of key hashes and their TAT. A key whose TAT has passed holds no
/// state; when all the slots a key may use are taken, the one whose TAT
/// comes first is reused (the limit may then let a few more through).
/// Restarting the server forgets it.
struct RateTable {
    lock: SpinLock,
    keys: [AtomicU64; RATE_SLOTS],
    tats: [AtomicI64; RATE_SLOTS],
}

impl Default for RateTable {
    fn default() -> Self {
        RateTable {
            lock: SpinLock::default(),
            keys: std::array::from_fn(|_| AtomicU64::new(0)),
            tats: std::array::from_fn(|_| AtomicI64::new(0)),
        }
    }
}

impl RateTable {
    fn admit(&self, key: u64, now_us: i64, gcra: &crate::flow::gcra::Gcra) -> bool {
        let key = key.max(1);
        self.lock.with(|| {
            let slots = (0..RATE_PROBES).map(|i| (key as usize + i) % RATE_SLOTS);
            let found = slots
                .clone()
                .find(|&i| self.keys[i].load(Ordering::Relaxed) == key);
            let slot = found.unwrap_or_else(|| {
                slots
                    .min_by_key(|&i| self.tats[i].load(Ordering::Relaxed))
                    .expect("probes")
            });
            let tat = (found.is_some()).then(|| self.tats[slot].load(Ordering::Relaxed));
            match gcra.admit(tat.filter(|t| *t > now_us), now_us) {
                Some(next) => {
                    self.keys[slot].store(key, Ordering::Relaxed);
                    self.tats[slot].store(next, Ordering::Relaxed);
                    true
                }
                None => false,
            }
        })
    }
}

/// What the registry says of a role.
pub enum Ownership {
    Functions(u32),
    None,
    /// The registry cannot tell (not filled yet, or full).
    Unknown,
}

pub struct Shared {
    launcher_pid: AtomicI32,
    launcher_heartbeat_ms: AtomicI64,
    launcher_latch: AtomicUsize,
    /// The fetcher's latch, set when a commit queued requests for it.
    fetcher_latch: AtomicUsize,
    /// How many executors the launcher wants and could not start.
    wanted_workers: AtomicI32,
    missing_workers: AtomicI32,
    owners: OwnerRegistry,
    /// Counts commits that changed function definitions.
    functions_epoch: AtomicU64,
    /// When shared memory was set up: at server start, and again when the
    /// server restarts after a crash. The instant @reboot schedules run for.
    started_at_us: AtomicI64,
    /// The launcher has started this start's @reboot runs.
    reboot_fired: AtomicBool,
    rates: RateTable,
    pub workers: [WorkerSlot; MAX_WORKERS],
}

/// What jobs.workers shows of an executor.
pub struct WorkerStatus {
    pub pid: i32,
    pub run: Option<RunId>,
    pub heartbeat_ms: i64,
}

pub fn now_ms() -> i64 {
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
            launcher_latch: AtomicUsize::new(0),
            fetcher_latch: AtomicUsize::new(0),
            wanted_workers: AtomicI32::new(0),
            missing_workers: AtomicI32::new(0),
            owners: OwnerRegistry::default(),
            functions_epoch: AtomicU64::new(0),
            started_at_us: AtomicI64::new(now_us()),
            reboot_fired: AtomicBool::new(false),
            rates: RateTable::default(),
            workers: std::array::from_fn(|_| WorkerSlot::default()),
        }
    }
}

static SHARED: PgAtomic<Shared> = unsafe { PgAtomic::new(c"pg_jobs shared state") };
static INITIALIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
        self.clear_batch();
        self.busy_since_ms.store(0, Ordering::SeqCst);
        self.cancel.store(&[0; 16]);
        self.last_pid
            .store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
        self.pid
            .store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    }

    pub fn vacate(&self) {
        self.idle.store(false, Ordering::SeqCst);
        self.clear_batch();
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
    pub fn set_run(&self, run: Option<RunId>) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(bytes) = run {
            self.run.store(&bytes);
            self.running.store(true, Ordering::SeqCst);
        }
    }

    pub fn status(&self) -> Option<WorkerStatus> {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid == 0 {
            return None;
        }
        let running = self.running.load(Ordering::SeqCst);
        let bytes = self.run.load();
        // A run id changing under the read is shown as no run rather than a mix of two.
        let run = (running && self.running.load(Ordering::SeqCst)).then_some(bytes);
        Some(WorkerStatus {
            pid,
            run,
            heartbeat_ms: self.heartbeat_ms.load(Ordering::Relaxed),
        })
    }

    /// The executor enters (`true`) or leaves user code.
    pub fn set_busy(&self, busy: bool) {
        let since = if busy { now_ms().max(1) } else { 0 };
        self.busy_since_ms.store(since, Ordering::SeqCst);
    }

    /// Publishes the items of a new claim, none started yet.
    pub fn publish_batch(&self, items: &[Item]) {
        self.batch_lock.with(|| {
            let count = items.len().min(MAX_BATCH);
            for (entry, item) in self.batch.iter().zip(&items[..count]) {
                entry.run.store(&item.run);
                entry.step_hash.store(item.step_hash, Ordering::SeqCst);
                entry.state.store(UNSTARTED, Ordering::SeqCst);
            }
            self.batch_len.store(count, Ordering::SeqCst);
        });
    }

    pub fn clear_batch(&self) {
        self.batch_lock
            .with(|| self.batch_len.store(0, Ordering::SeqCst));
    }

    /// Marks item `index` of the batch started, unless another executor took
    /// it over (then returns false, and the item is not this executor's any more).
    pub fn start(&self, index: usize) -> bool {
        self.batch_lock.with(|| {
            if index >= self.batch_len.load(Ordering::SeqCst) {
                return true;
            }
            let state = &self.batch[index].state;
            if state.load(Ordering::SeqCst) == STOLEN {
                return false;
            }
            state.store(STARTED, Ordering::SeqCst);
            true
        })
    }

    /// Since when the executor has been in user code with items it has not
    /// started, if it has.
    pub fn stuck_since_ms(&self) -> Option<i64> {
        let since = self.busy_since_ms.load(Ordering::SeqCst);
        if since == 0 {
            return None;
        }
        let waiting = self.batch_lock.with(|| {
            let len = self.batch_len.load(Ordering::SeqCst);
            self.batch[..len]
                .iter()
                .any(|e| e.state.load(Ordering::SeqCst) == UNSTARTED)
        });
        waiting.then_some(since)
    }

    /// Takes over up to `max` items the executor has not started: they are
    /// marked stolen, so that it skips them.
    pub fn steal_unstarted(&self, max: usize) -> Vec<Item> {
        self.batch_lock.with(|| {
            let len = self.batch_len.load(Ordering::SeqCst);
            let mut taken = Vec::new();
            for entry in &self.batch[..len] {
                if taken.len() == max {
                    break;
                }
                if entry.state.load(Ordering::SeqCst) == UNSTARTED {
                    entry.state.store(STOLEN, Ordering::SeqCst);
                    taken.push(Item {
                        run: entry.run.load(),
                        step_hash: entry.step_hash.load(Ordering::SeqCst),
                    });
                }
            }
            taken
        })
    }

    /// Asks the executor to interrupt the code of `run`, if it is running it.
    pub fn request_cancel(&self, run: &RunId) {
        self.cancel.store(run);
    }

    /// Whether the run it is executing is the one `jobs.cancel_run` asked to
    /// interrupt. Async-signal-safe: atomics only.
    pub fn cancel_requested(&self) -> bool {
        self.running.load(Ordering::SeqCst) && self.cancel.load() == self.run.load()
    }
}

impl OwnerRegistry {
    fn fill(&self, owners: &[(u32, u32)]) {
        self.version.fetch_add(1, Ordering::SeqCst);
        let count = owners.len().min(MAX_OWNERS);
        for (i, (role, functions)) in owners[..count].iter().enumerate() {
            self.roles[i].store(*role, Ordering::SeqCst);
            self.counts[i].store(*functions, Ordering::SeqCst);
        }
        self.len.store(count, Ordering::SeqCst);
        self.overflow
            .store(owners.len() > MAX_OWNERS, Ordering::SeqCst);
        self.ready.store(true, Ordering::SeqCst);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    fn lookup(&self, role: u32) -> Ownership {
        loop {
            let before = self.version.load(Ordering::SeqCst);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let found = (0..self.len.load(Ordering::SeqCst).min(MAX_OWNERS))
                .find(|&i| self.roles[i].load(Ordering::SeqCst) == role)
                .map(|i| self.counts[i].load(Ordering::SeqCst));
            let answer = match found {
                _ if !self.ready.load(Ordering::SeqCst) => Ownership::Unknown,
                Some(count) => Ownership::Functions(count),
                None if self.overflow.load(Ordering::SeqCst) => Ownership::Unknown,
                None => Ownership::None,
            };
            if self.version.load(Ordering::SeqCst) == before {
                return answer;
            }
        }
    }
}

impl Shared {
    pub fn set_launcher(&self, pid: i32) {
        self.launcher_latch
            .store(if pid == 0 { 0 } else { my_latch() }, Ordering::SeqCst);
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

    /// The fetcher says it runs (`true`, with its latch) or stops.
    pub fn set_fetcher(&self, running: bool) {
        self.fetcher_latch
            .store(if running { my_latch() } else { 0 }, Ordering::SeqCst);
    }

    fn wake_fetcher(&self) {
        set_latch(self.fetcher_latch.load(Ordering::SeqCst));
    }

    fn wake_launcher(&self) {
        set_latch(self.launcher_latch.load(Ordering::SeqCst));
    }

    /// The launcher says how many executors it wants and how many of those it
    /// could not start (max_worker_processes too low).
    pub fn set_workers_shortfall(&self, wanted: usize, missing: usize) {
        self.wanted_workers.store(wanted as i32, Ordering::SeqCst);
        self.missing_workers.store(missing as i32, Ordering::SeqCst);
    }

    /// (wanted, could not start)
    pub fn workers_shortfall(&self) -> (usize, usize) {
        (
            self.wanted_workers.load(Ordering::SeqCst).max(0) as usize,
            self.missing_workers.load(Ordering::SeqCst).max(0) as usize,
        )
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

    /// Whether `rate_limit` admits a run for key `key` (a hash) now.
    pub fn rate_admit(&self, key: u64, gcra: &crate::flow::gcra::Gcra) -> bool {
        self.rates.admit(key, now_us(), gcra)
    }

    /// Changes whenever a commit changed function definitions.
    pub fn functions_epoch(&self) -> u64 {
        self.functions_epoch.load(Ordering::SeqCst)
    }

    pub fn fill_owners(&self, owners: &[(u32, u32)]) {
        self.owners.fill(owners);
    }

    pub fn owners_stale(&self) -> bool {
        self.owners.stale.load(Ordering::SeqCst)
    }

    /// Takes the stale mark before the launcher reads the catalog, so that a
    /// change committed meanwhile marks it again.
    pub fn take_owners_stale(&self) -> bool {
        self.owners.stale.swap(false, Ordering::SeqCst)
    }

    pub fn ownership(&self, role: u32) -> Ownership {
        self.owners.lookup(role)
    }
}

/// An executor holding work of a run that `jobs.cancel_run` cancelled.
struct Interrupt {
    run: RunId,
    pid: i32,
}

thread_local! {
    /// Runs made runnable by the current transaction, to wake that many executors at commit.
    static RUNNABLE_AT_COMMIT: Cell<usize> = const { Cell::new(0) };
    /// Executors to interrupt once the cancellation commits.
    static INTERRUPTS_AT_COMMIT: RefCell<Vec<Interrupt>> = const { RefCell::new(Vec::new()) };
    /// The transaction changed who owns functions: the registry is refreshed at commit.
    static OWNERS_CHANGED: Cell<bool> = const { Cell::new(false) };
    /// The transaction queued HTTP requests: the fetcher is woken at commit.
    static FETCHES_AT_COMMIT: Cell<bool> = const { Cell::new(false) };
}

/// Asks for the fetcher to be woken when the current transaction commits.
pub fn wake_fetcher_at_commit() {
    FETCHES_AT_COMMIT.with(|c| c.set(true));
}

/// Asks for `count` executors to be woken when the current transaction commits.
pub fn wake_workers_at_commit(count: usize) {
    RUNNABLE_AT_COMMIT.with(|c| c.set(c.get().saturating_add(count)));
}

/// Asks executor `pid` to interrupt the code of `run` when the current
/// transaction (which cancelled the run) commits.
pub fn interrupt_at_commit(run: RunId, pid: i32) {
    INTERRUPTS_AT_COMMIT.with(|i| i.borrow_mut().push(Interrupt { run, pid }));
}

/// The current transaction changed function definitions (and maybe which
/// roles own functions).
pub fn owners_changed_at_commit() {
    OWNERS_CHANGED.with(|c| c.set(true));
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// SIGINT asks an executor to interrupt the user code it runs (worker/mod.rs).
pub fn signal_interrupt(pid: i32) {
    unsafe { kill(pid, pg_sys::SIGINT as i32) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    let committed = event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT;
    if !(committed || event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT) {
        return;
    }
    let runnable = RUNNABLE_AT_COMMIT.with(|c| c.replace(0));
    let interrupts = INTERRUPTS_AT_COMMIT.with(|i| std::mem::take(&mut *i.borrow_mut()));
    let owners_changed = OWNERS_CHANGED.with(|c| c.replace(false));
    let fetches = FETCHES_AT_COMMIT.with(|c| c.replace(false));
    if !committed || !is_initialized() {
        return;
    }
    let shared = shared();
    if runnable > 0 {
        shared.wake_idle_workers(runnable);
    }
    if fetches {
        shared.wake_fetcher();
    }
    for interrupt in interrupts {
        if let Some(slot) = shared
            .workers
            .iter()
            .find(|s| s.pid.load(Ordering::SeqCst) == interrupt.pid)
        {
            slot.request_cancel(&interrupt.run);
            signal_interrupt(interrupt.pid);
        }
    }
    if owners_changed {
        shared.functions_epoch.fetch_add(1, Ordering::SeqCst);
        shared.owners.stale.store(true, Ordering::SeqCst);
        shared.wake_launcher();
    }
}

pub fn register_commit_hook() {
    unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut()) };
}
