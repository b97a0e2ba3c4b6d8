//! argon2id verifications per second on every core, with the production
//! parameters (m = 19 MiB, t = 2, p = 1): the production code itself
//! (`PasswordHasher::verify_phc_blocking`, what `verify_phc` runs on the
//! blocking pool: RustCrypto's `argon2` into pooled, reused block memory),
//! the same crate through its stock `PasswordVerifier` (a fresh 19 MiB
//! buffer per hash, the former production path), and — with the
//! `argon2-compare` feature — the C reference implementation
//! (phc-winner-argon2 through `argon2-kdf`) and `rust-argon2`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use commands::passwords::{PasswordHasher, ARGON2_M_COST_KIB, ARGON2_P_COST, ARGON2_T_COST};

/// The password every measurement verifies.
const PASSWORD: &[u8] = b"correct horse battery staple";

/// An argon2 implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// The production path: `PasswordHasher::verify_phc_blocking` (RustCrypto
    /// `argon2` 0.5 into the hasher's pooled block buffers, constant-time
    /// compare), on the hasher given to [`measure_rates`].
    RustCrypto,
    /// RustCrypto `argon2` 0.5 through its stock `PasswordVerifier`: a fresh
    /// block buffer allocated and freed per hash (the production path before
    /// issue 5).
    RustCryptoFreshMemory,
    /// The C reference implementation (phc-winner-argon2 `opt.c`) via `argon2-kdf`.
    #[cfg(feature = "argon2-compare")]
    CReference,
    /// `rust-argon2` 3 (pure Rust).
    #[cfg(feature = "argon2-compare")]
    RustArgon2,
}

impl Implementation {
    /// Every implementation built into this binary.
    pub fn all() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut v = vec![Self::RustCrypto, Self::RustCryptoFreshMemory];
        #[cfg(feature = "argon2-compare")]
        {
            v.push(Self::CReference);
            v.push(Self::RustArgon2);
        }
        v
    }

    /// Human name for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::RustCrypto => "RustCrypto argon2 0.5 (production path, pooled memory)",
            Self::RustCryptoFreshMemory => "RustCrypto argon2 0.5, stock verifier, fresh memory per hash",
            #[cfg(feature = "argon2-compare")]
            Self::CReference => "C reference (phc-winner-argon2 via argon2-kdf)",
            #[cfg(feature = "argon2-compare")]
            Self::RustArgon2 => "rust-argon2 3",
        }
    }
}

fn params() -> anyhow::Result<Params> {
    Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, Some(32)).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A PHC hash of the benchmark password with the production parameters.
///
/// # Errors
/// When argon2 rejects the parameters.
pub fn production_phc() -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params()?)
        .hash_password(PASSWORD, &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// One verifier per thread; `verify` returns whether the password matched.
trait Verifier {
    fn verify(&mut self) -> bool;
}

/// The production code on this thread.
struct ProductionVerifier {
    hasher: PasswordHasher,
    phc: String,
    password: String,
}

impl Verifier for ProductionVerifier {
    fn verify(&mut self) -> bool {
        self.hasher.verify_phc_blocking(&self.phc, &self.password)
    }
}

/// The stock `PasswordVerifier` (fresh memory per hash).
struct FreshMemoryVerifier {
    phc: String,
}

impl Verifier for FreshMemoryVerifier {
    fn verify(&mut self) -> bool {
        PasswordHash::new(&self.phc)
            .map(|h| Argon2::default().verify_password(PASSWORD, &h).is_ok())
            .unwrap_or(false)
    }
}

#[cfg(feature = "argon2-compare")]
struct CReferenceVerifier {
    hash: argon2_kdf::Hash<'static>,
}

#[cfg(feature = "argon2-compare")]
impl Verifier for CReferenceVerifier {
    fn verify(&mut self) -> bool {
        self.hash.verify(PASSWORD)
    }
}

#[cfg(feature = "argon2-compare")]
struct RustArgon2Verifier {
    phc: String,
}

#[cfg(feature = "argon2-compare")]
impl Verifier for RustArgon2Verifier {
    fn verify(&mut self) -> bool {
        rust_argon2::verify_encoded(&self.phc, PASSWORD).unwrap_or(false)
    }
}

fn verifier(
    implementation: Implementation,
    phc: &str,
    hasher: &PasswordHasher,
) -> anyhow::Result<Box<dyn Verifier + Send>> {
    Ok(match implementation {
        Implementation::RustCrypto => Box::new(ProductionVerifier {
            hasher: hasher.clone(),
            phc: phc.to_owned(),
            password: String::from_utf8(PASSWORD.to_vec())?,
        }),
        Implementation::RustCryptoFreshMemory => Box::new(FreshMemoryVerifier { phc: phc.to_owned() }),
        #[cfg(feature = "argon2-compare")]
        Implementation::CReference => {
            let hash = <argon2_kdf::Hash<'static> as std::str::FromStr>::from_str(phc)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Box::new(CReferenceVerifier { hash })
        }
        #[cfg(feature = "argon2-compare")]
        Implementation::RustArgon2 => Box::new(RustArgon2Verifier { phc: phc.to_owned() }),
    })
}

/// Verifications per second of `implementation` on `threads` OS threads
/// for `duration` (after one unmeasured verification per thread);
/// [`Implementation::RustCrypto`] runs on `hasher` (pass the application's
/// own, so that H shares its block buffers as logins do).
///
/// # Errors
/// When the verifier cannot be built or a verification fails.
pub async fn verifies_per_second(
    implementation: Implementation,
    phc: &str,
    hasher: &PasswordHasher,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    Ok(measure_rates(implementation, phc, hasher, threads, duration).await?.wall)
}

/// Rates of one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    /// Verifications per second of wall time, all threads together.
    pub wall: f64,
    /// Verifications per second of CPU time the threads got (per core):
    /// what other processes take from the cores does not count.
    pub per_cpu_second: f64,
}

/// Like [`verifies_per_second`], also per CPU-second (from
/// `/proc/thread-self/schedstat`; 0 where that is unavailable).
///
/// # Errors
/// As [`verifies_per_second`].
pub async fn measure_rates(
    implementation: Implementation,
    phc: &str,
    hasher: &PasswordHasher,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<Rates> {
    let (phc, hasher) = (phc.to_owned(), hasher.clone());
    tokio::task::spawn_blocking(move || measure(implementation, &phc, &hasher, threads, duration)).await?
}

/// CPU time this thread has run, in nanoseconds (0 when unknown).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn measure(
    implementation: Implementation,
    phc: &str,
    hasher: &PasswordHasher,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<Rates> {
    let threads = threads.max(1);
    let verifiers =
        (0..threads).map(|_| verifier(implementation, phc, hasher)).collect::<anyhow::Result<Vec<_>>>()?;
    let count = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let start = Arc::new(std::sync::Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for mut v in verifiers {
        let (count, failed, start) = (count.clone(), failed.clone(), start.clone());
        handles.push(std::thread::spawn(move || {
            if !v.verify() {
                failed.store(true, Ordering::Relaxed);
            }
            start.wait();
            let cpu = thread_cpu_ns();
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline {
                if !v.verify() {
                    failed.store(true, Ordering::Relaxed);
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            (Instant::now(), thread_cpu_ns().saturating_sub(cpu))
        }));
    }
    start.wait();
    let began = Instant::now();
    let mut ended = began;
    let mut cpu_ns = 0u64;
    for h in handles {
        let (t, cpu) = h.join().map_err(|_| anyhow::anyhow!("an argon2 thread panicked"))?;
        ended = ended.max(t);
        cpu_ns += cpu;
    }
    anyhow::ensure!(!failed.load(Ordering::Relaxed), "{}: a verification failed", implementation.label());
    let n = count.load(Ordering::Relaxed);
    Ok(Rates {
        wall: super::per_second(n, ended - began),
        per_cpu_second: super::per_second(n, Duration::from_nanos(cpu_ns)),
    })
}
