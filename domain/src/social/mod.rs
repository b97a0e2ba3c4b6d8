//! The social context (ARCHITECTURE decided 15): the graph between users —
//! follows, blocks and mutes — kept on one aggregate per pair of users.

pub mod relationship;
