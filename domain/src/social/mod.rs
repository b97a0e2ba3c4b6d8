//! The social context (ARCHITECTURE decided 15): the graph between users —
//! follows, blocks and mutes — kept on one aggregate per pair of users;
//! likes and reposts (one aggregate per user and track); comments.

pub mod comment;
pub mod engagement;
pub mod inbox;
pub mod relationship;
