//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds
//! `../migrations` at compile time but cannot track the folder on stable Rust.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
