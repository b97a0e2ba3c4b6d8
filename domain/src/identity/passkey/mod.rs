//! The `Passkeys` aggregate: the WebAuthn credentials (passkeys) of one
//! account. Aggregate type `passkeys`, aggregate id = the user id, which is
//! also the WebAuthn user handle.
//!
//! Only public data is kept: each credential as the relying-party library
//! serialises it (credential id, COSE public key, flags, sign counter) — no
//! private key ever reaches the server. The label a user gives a passkey is
//! personal data and travels sealed with the user's key (ARCHITECTURE
//! decided 7).
//!
//! Rules: a credential id is registered once; a sign counter must increase
//! whenever either the stored or the presented counter is non-zero
//! (WebAuthn §7.2 step 21). A counter that does not is a sign of a cloned
//! authenticator: the assertion is refused and `PasskeyCounterRegressed` is
//! recorded.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{PasskeyError, Passkeys, StoredPasskey, MAX_PASSKEYS};
pub use commands::PasskeyCommand;
pub use events::PasskeyEvent;
