//! The catalog context (ARCHITECTURE decided 15): tracks (and, with later
//! issues, media, playlists and search).

pub mod track;
