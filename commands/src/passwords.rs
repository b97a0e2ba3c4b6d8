//! Password hashing: argon2id m=19 MiB, t=2, p=1 (OWASP Password Storage
//! cheat sheet; ASVS Appendix C), run on a dedicated pool of one thread per
//! core so hashing never blocks the async workers and never runs more work
//! at once than the CPUs can do (ARCHITECTURE decided 9).
//!
//! **The pool.** Callers queue jobs (FIFO) on a channel that the pool's
//! threads (`argon2-<n>`) take from directly: a thread that finishes a hash
//! starts the next queued one at once. (Before, `spawn_blocking` behind a
//! semaphore of the same size: the permit went back only once the caller's
//! task was polled on an async worker, and the next caller's hash started
//! only after its task was polled in turn — two thread wake-ups between
//! hashes, while both cores were busy hashing; the permits stood idle ~15 %
//! of a login benchmark, docs/performance.md "login".) A job whose caller is
//! gone (request cancelled) is skipped; a job that panics answers
//! [`HashError::Pool`] and leaves its thread running. The threads end when
//! the last clone of the [`PasswordHasher`] is dropped.
//!
//! **Memory.** Each hash needs its m KiB of argon2 blocks. Allocating and
//! freeing 19 MiB per hash costs page faults and a `memset` per hash, and
//! glibc, once such a buffer is freed, raises its mmap threshold and keeps
//! later ones resident in its heaps (RSS grew to 490–990 MiB under logins;
//! docs/performance.md "login"). So every hash and verification runs into a
//! block buffer taken from a small pool owned by the [`PasswordHasher`] and
//! given back afterwards: at most one buffer per hashing thread exists while
//! the async API is used (2 × 19 MiB on 2 cores), allocated once, never freed.
//! A buffer is not cleared between uses, as `argon2` itself does not clear
//! the blocks it frees; argon2 overwrites every block before reading it.
//!
//! **Verification** parses the PHC string and checks its parameters exactly
//! as `argon2::PasswordVerifier` does (algorithm, version, m/t/p, salt and
//! output length), computes the hash with the PHC's salt and parameters into
//! the pooled buffer, and compares it with the PHC's hash in constant time
//! (`password_hash::Output`'s equality). An unknown account is verified
//! against a dummy hash with the production parameters through the same
//! code, so both cost the same (SECURITY.md "Enumeration").

use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use async_trait::async_trait;
use uuid::Uuid;

use crate::vault::Vault;

/// argon2id memory cost in KiB (19 MiB).
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;
/// argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;
/// Largest memory cost a stored hash may ask for, in KiB (256 MiB): a PHC
/// string asking for more is refused as malformed instead of allocating it.
pub const MAX_VERIFY_M_COST_KIB: u32 = 256 * 1024;

/// Errors from hashing.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// argon2 refused the parameters or inputs (message from `argon2`).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The hashing pool is gone or the job panicked.
    #[error("the hashing pool is gone")]
    Pool,
}

/// A job for the hashing threads.
type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads' queue (see the module docs). Dropping it (with the
/// last [`PasswordHasher`] clone) disconnects the channel and ends the
/// threads once the queued jobs are done.
struct HashPool {
    jobs: flume::Sender<Job>,
}

impl HashPool {
    /// Starts `threads` threads named `argon2-<n>`.
    fn start(threads: usize) -> Result<Self, HashError> {
        let (jobs, queue) = flume::unbounded::<Job>();
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                })
                .map_err(|e| HashError::Hash(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `f` on a hashing thread and waits for its result.
    ///
    /// # Errors
    /// [`HashError::Pool`] when the threads are gone or `f` panicked.
    async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, HashError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if done.is_closed() {
                return; // the caller is gone: skip the work
            }
            if let Ok(value) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let _ = done.send(value);
            }
        });
        self.jobs.send(job).map_err(|_| HashError::Pool)?;
        result.await.map_err(|_| HashError::Pool)
    }
}

/// Reusable argon2 block buffers (see the module docs). Keeps at most
/// `keep` idle buffers; a buffer beyond that (only when more threads hash
/// at once than the pool has, i.e. through
/// [`PasswordHasher::verify_phc_blocking`]) is freed after use.
struct MemoryPool {
    free: Mutex<Vec<Vec<Block>>>,
    keep: usize,
}

impl MemoryPool {
    fn new(keep: usize) -> Self {
        Self { free: Mutex::new(Vec::with_capacity(keep)), keep }
    }

    /// An idle buffer (possibly shorter than `blocks`; callers grow it), or
    /// a new empty one.
    fn take(&self) -> Vec<Block> {
        self.free.lock().ok().and_then(|mut f| f.pop()).unwrap_or_default()
    }

    fn give(&self, memory: Vec<Block>) {
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.keep {
                free.push(memory);
            }
        }
    }

    /// Runs `f` with a pooled buffer of at least `blocks` blocks.
    fn with<R>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
        let mut memory = self.take();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let result = f(&mut memory[..blocks]);
        self.give(memory);
        result
    }
}

/// Argon2id hasher/verifier on its own pool of hashing threads. Cheap to
/// clone (clones share the threads and the buffers).
#[derive(Clone)]
pub struct PasswordHasher {
    pool: Arc<HashPool>,
    params: Params,
    /// A real hash of a random password, verified when the account does not
    /// exist so both paths cost the same (SECURITY.md "Enumeration").
    dummy_hash: Arc<String>,
    memory: Arc<MemoryPool>,
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

/// Hashes `password` with a new random salt into PHC string form, using `memory`.
fn hash_with(params: &Params, password: &[u8], memory: &mut [Block]) -> Result<String, HashError> {
    let err = |e: &dyn std::fmt::Display| HashError::Hash(e.to_string());
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).map_err(|e| err(&e))?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(output_len, |out| {
        argon2(params)
            .hash_password_into_with_memory(password, salt_bytes, out, &mut *memory)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|e| err(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| err(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// What a PHC string asks for, parsed and checked.
struct Parsed<'a> {
    argon: Argon2<'static>,
    blocks: usize,
    salt: argon2::password_hash::Salt<'a>,
    expected: Output,
}

/// Parses and checks `phc` as `argon2::PasswordVerifier` does, plus the
/// [`MAX_VERIFY_M_COST_KIB`] bound; `None` when anything is wrong.
fn parse(phc: &PasswordHash<'_>) -> Option<(Argon2<'static>, usize, Output)> {
    let expected = phc.hash?;
    let algorithm = Algorithm::try_from(phc.algorithm).ok()?;
    let version = match phc.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(phc).ok()?;
    if params.m_cost() > MAX_VERIFY_M_COST_KIB {
        return None;
    }
    let blocks = params.block_count();
    Some((Argon2::new(algorithm, version, params), blocks, expected))
}

impl Parsed<'_> {
    fn from_phc<'a>(phc: &'a PasswordHash<'a>) -> Option<Parsed<'a>> {
        let (argon, blocks, expected) = parse(phc)?;
        Some(Parsed { argon, blocks, salt: phc.salt?, expected })
    }

    /// Computes the candidate's hash into `memory` (≥ `self.blocks`) and
    /// compares it with the expected output in constant time.
    fn matches(&self, candidate: &[u8], memory: &mut [Block]) -> bool {
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = self.salt.decode_b64(&mut salt_buf) else { return false };
        let mut out = [0u8; Output::MAX_LENGTH];
        let Some(out) = out.get_mut(..self.expected.len()) else { return false };
        if self.argon.hash_password_into_with_memory(candidate, salt, out, memory).is_err() {
            return false;
        }
        // `Output`'s equality is constant-time (subtle).
        Output::new(out).is_ok_and(|computed| computed == self.expected)
    }
}

impl PasswordHasher {
    /// `concurrency` = parallel hashes allowed (use the core count).
    ///
    /// # Errors
    /// [`HashError`] if the parameters are rejected (they are constants).
    pub fn new(concurrency: usize) -> Result<Self, HashError> {
        Self::with_params(concurrency, ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST)
    }

    /// Custom parameters (tests and benchmarks only).
    ///
    /// # Errors
    /// [`HashError`] if argon2 rejects the parameters.
    pub fn with_params(concurrency: usize, m_kib: u32, t: u32, p: u32) -> Result<Self, HashError> {
        let params = Params::new(m_kib, t, p, None).map_err(|e| HashError::Hash(e.to_string()))?;
        let concurrency = concurrency.max(1);
        let memory = Arc::new(MemoryPool::new(concurrency));
        let random = Secret::random();
        let dummy = memory.with(params.block_count(), |m| hash_with(&params, random.0.as_bytes(), m))?;
        Ok(Self {
            pool: Arc::new(HashPool::start(concurrency)?),
            params,
            dummy_hash: Arc::new(dummy),
            memory,
        })
    }

    /// Jobs waiting for a hashing thread (not counting those running): what
    /// the api sheds load by (`PASSWORD_HASH_QUEUE`).
    pub fn queued(&self) -> usize {
        self.pool.jobs.len()
    }

    /// Hashes a password into PHC string form (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    ///
    /// # Errors
    /// [`HashError`] when the pool is closed or hashing fails.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let (params, memory) = (self.params.clone(), self.memory.clone());
        let password = password.to_owned();
        self.pool
            .run(move || memory.with(params.block_count(), |m| hash_with(&params, password.as_bytes(), m)))
            .await?
    }

    /// Verifies `candidate` against a PHC hash (its own parameters apply)
    /// on the hashing threads. `false` on mismatch, malformed hash or pool
    /// failure. An empty `phc` verifies against the dummy hash (same cost as
    /// a real account) and answers `false`.
    pub async fn verify_phc(&self, phc: &str, candidate: &str) -> bool {
        let (memory, dummy) = (self.memory.clone(), self.dummy_hash.clone());
        let phc = phc.to_owned();
        let candidate = candidate.to_owned();
        self.pool.run(move || verify_with(&memory, &dummy, &phc, &candidate)).await.unwrap_or(false)
    }

    /// The work of [`PasswordHasher::verify_phc`] on the calling thread,
    /// outside the hashing threads: what they run, exposed for
    /// callers that are already on a dedicated thread (the `bench login`
    /// measure of H uses it so that H and logins run the same code). Never
    /// call it from an async task: it blocks for a full argon2 computation.
    pub fn verify_phc_blocking(&self, phc: &str, candidate: &str) -> bool {
        verify_with(&self.memory, &self.dummy_hash, phc, candidate)
    }

    /// Spends the same work as a real verification and returns `false`;
    /// for unknown accounts.
    pub async fn verify_dummy(&self, candidate: &str) -> bool {
        let _ = self.verify_phc("", candidate).await;
        false
    }
}

/// [`PasswordHasher::verify_phc_blocking`] given the hasher's parts (what a
/// job takes with it).
fn verify_with(memory: &MemoryPool, dummy_hash: &str, phc: &str, candidate: &str) -> bool {
    let (phc, is_dummy) = if phc.is_empty() { (dummy_hash, true) } else { (phc, false) };
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let Some(parsed) = Parsed::from_phc(&hash) else { return false };
    let matched = memory.with(parsed.blocks, |m| parsed.matches(candidate.as_bytes(), m));
    matched && !is_dummy
}

struct Secret(String);
impl Secret {
    fn random() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(hex::encode(b))
    }
}

/// The `User` aggregate's password check: opens the sealed hash with the
/// subject's key ([`Vault::open_hash`]), then verifies on the hashing pool.
/// An unopenable hash (erased subject) costs a dummy verification and fails.
#[derive(Clone)]
pub struct SealedHashVerifier {
    pub hasher: PasswordHasher,
    pub vault: Arc<Vault>,
}

impl SealedHashVerifier {
    /// `true` when `candidate` matches `subject`'s stored (sealed or plain)
    /// hash; the one check behind login, step-up and PIN sign-in.
    pub async fn check(&self, subject: Uuid, stored: &str, candidate: &str) -> bool {
        match self.vault.open_hash(subject, stored).await {
            Some(phc) => self.hasher.verify_phc(&phc, candidate).await,
            None => self.hasher.verify_dummy(candidate).await,
        }
    }
}

#[async_trait]
impl domain::services::PasswordVerifier for SealedHashVerifier {
    async fn verify(&self, subject: Uuid, stored: &str, candidate: &str) -> bool {
        self.check(subject, stored, candidate).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::new(2).unwrap();
        let phc = h.hash("correct horse battery").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify_phc(&phc, "correct horse battery").await);
        assert!(!h.verify_phc(&phc, "correct horse batterY").await);
        assert!(!h.verify_phc("garbage", "x").await);
        assert!(!h.verify_dummy("correct horse battery").await);
    }

    #[tokio::test]
    async fn the_pool_runs_at_most_its_threads_at_once_on_named_threads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = Arc::new(HashPool::start(2).unwrap());
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let (running, most, pool) = (running.clone(), most.clone(), pool.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(30));
                        running.fetch_sub(1, Ordering::SeqCst);
                        (i, std::thread::current().name().unwrap_or_default().to_owned())
                    })
                    .await
                })
            })
            .collect();
        for (i, job) in jobs.into_iter().enumerate() {
            let (j, thread) = job.await.unwrap().unwrap();
            assert_eq!(i, j);
            assert!(thread.starts_with("argon2-"), "{thread}");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_answers_pool_and_a_cancelled_one_is_skipped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let pool = HashPool::start(1).unwrap();
        assert!(matches!(pool.run(|| -> u8 { panic!("boom") }).await, Err(HashError::Pool)));
        assert_eq!(pool.run(|| 7).await.unwrap(), 7, "the thread survives a panic");

        // One thread busy; a second job queued behind it, then its caller gives up.
        let busy = pool.run(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        let ran = Arc::new(AtomicBool::new(false));
        let queued = {
            let ran = ran.clone();
            pool.run(move || ran.store(true, Ordering::SeqCst))
        };
        let (busy, gave_up) = tokio::join!(busy, async {
            tokio::time::timeout(std::time::Duration::from_millis(50), queued).await.is_err()
        });
        busy.unwrap();
        assert!(gave_up);
        assert_eq!(pool.run(|| 8).await.unwrap(), 8);
        assert!(!ran.load(Ordering::SeqCst), "the cancelled job ran");
    }

    #[test]
    fn compatible_with_the_stock_argon2_verifier_both_ways() {
        let h = PasswordHasher::with_params(1, 1024, 1, 1).unwrap();
        let ours = h.memory.with(h.params.block_count(), |m| hash_with(&h.params, b"pw one", m)).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"pw one", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"pw two", &parsed).is_err());
        // Hashes made elsewhere, with other parameters and algorithms, verify
        // with their own parameters through the same (larger) pooled buffer.
        for (alg, m, t, p) in [(Algorithm::Argon2id, 2048, 2, 1), (Algorithm::Argon2i, 512, 3, 2)] {
            let params = Params::new(m, t, p, Some(24)).unwrap();
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            let stock =
                Argon2::new(alg, Version::V0x13, params).hash_password(b"pw", &salt).unwrap().to_string();
            assert!(h.verify_phc_blocking(&stock, "pw"), "{stock}");
            assert!(!h.verify_phc_blocking(&stock, "pX"), "{stock}");
        }
        // A buffer left by a bigger hash does not disturb a smaller one.
        assert!(h.verify_phc_blocking(&ours, "pw one"));
    }

    #[test]
    fn malformed_or_oversized_hashes_are_refused_without_work() {
        let h = PasswordHasher::with_params(1, 1024, 1, 1).unwrap();
        let good = h.memory.with(h.params.block_count(), |m| hash_with(&h.params, b"pw", m)).unwrap();
        assert!(h.verify_phc_blocking(&good, "pw"));
        let huge = good.replace("m=1024", &format!("m={}", MAX_VERIFY_M_COST_KIB + 1));
        assert!(!h.verify_phc_blocking(&huge, "pw"), "no 256 MiB allocation for a bad hash");
        for bad in [
            "",
            "$argon2id$v=19$m=1024,t=1,p=1$",
            "$argon2id$v=7$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            "$scrypt$ln=1,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            "$argon2id$v=19$m=1024,t=1,p=1,x=3$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        ] {
            // `""` is the dummy: it costs a verify, and never matches.
            assert!(!h.verify_phc_blocking(bad, "pw"), "{bad}");
        }
    }

    #[test]
    fn the_dummy_never_matches_even_its_own_password() {
        let h = PasswordHasher::with_params(1, 1024, 1, 1).unwrap();
        // Whatever the candidate, an unknown account is refused.
        assert!(!h.verify_phc_blocking("", ""));
        assert!(!h.verify_phc_blocking("", "anything"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn buffers_are_bounded_by_the_hashing_threads() {
        let h = PasswordHasher::with_params(2, 1024, 1, 1).unwrap();
        let phc = h.hash("pw").await.unwrap();
        let checks: Vec<_> = (0..8)
            .map(|i| {
                let (h, phc) = (h.clone(), phc.clone());
                tokio::spawn(async move { h.verify_phc(&phc, if i % 2 == 0 { "pw" } else { "no" }).await })
            })
            .collect();
        for (i, c) in checks.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), i % 2 == 0);
        }
        let idle = h.memory.free.lock().unwrap();
        assert!(!idle.is_empty() && idle.len() <= 2, "{} idle buffers", idle.len());
        assert!(idle.iter().all(|b| b.len() == h.params.block_count()));
    }
}
