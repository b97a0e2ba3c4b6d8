//! The development outboxes: without SMTP or Twilio, each message becomes
//! one file (`<delivery id>.eml` under `MAIL_DIR`, `.sms` under `SMS_DIR`)
//! that tests and the benchmark seeder read.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Serialises the writes of this process: concurrent file creations in one
/// directory contend for its lock, and the kernel spins on it (overlapped
/// sends made file writes 38 % of the notifier's CPU under a login load;
/// docs/performance.md, "login-http"). A send to a file needs no overlap.
static WRITES: Mutex<()> = Mutex::new(());

/// Writes `content` to `dir/<stem>.<extension>` so that a reader sees
/// the whole file or none: first `<stem>.<extension>.tmp`, then a rename.
/// Creates `dir` when missing. The whole write is one blocking task.
///
/// # Errors
/// Any I/O error (the directory cannot be created, the disk is full, …).
pub(crate) async fn write_whole(
    dir: &Path,
    stem: &str,
    extension: &str,
    content: Vec<u8>,
) -> std::io::Result<()> {
    let dir: PathBuf = dir.to_owned();
    let name = format!("{stem}.{extension}");
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    tokio::task::spawn_blocking(move || {
        let _serial = WRITES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The directory is made when a write finds it missing, not before
        // every write (two system calls fewer per message).
        match std::fs::write(&tmp, &content) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
                std::fs::write(&tmp, &content)?;
            }
            written => written?,
        }
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}
