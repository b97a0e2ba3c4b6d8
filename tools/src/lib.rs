//! What measures and tortures streamforge, kept out of the production
//! `api` crate (ARCHITECTURE decided 15); the `streamforge` binary still
//! offers it as subcommands:
//!
//! - [`bench`]: `streamforge bench <name>` (every figure beside a baseline
//!   measured in the same run, docs/performance.md) and `streamforge seed`,
//!   the dataset generator ([`bench::data`]).
//! - [`chaos`]: `streamforge chaos load | verify | replay-check`, the two
//!   ends of `scripts/chaos` (fault tests).

pub mod bench;
pub mod chaos;
