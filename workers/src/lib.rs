//! streamforge's background workers: the relay that publishes the event
//! store to Kafka ([`relay`]), with its Kafka plumbing ([`kafka`]), and the
//! jobs that react to events.
//!
//! Workers may depend on `domain`, `commands` (for services) and
//! `projections` (feeds and runtime); they must never depend on `api`.

mod dev_files;
pub mod kafka;
pub mod notify;
pub mod relay;
pub mod send_error;
pub mod sms;
