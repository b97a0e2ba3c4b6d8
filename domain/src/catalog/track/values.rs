use serde::{Deserialize, Serialize};

use crate::values::InvalidValue;

/// Most tags per track.
pub const MAX_TAGS: usize = 10;
/// Longest track: 24 h, in milliseconds.
pub const MAX_DURATION_MS: i64 = 24 * 3_600_000;

/// Who may see a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Everyone (except users it is hidden from by a block).
    Public,
    /// Its owner and holders of its secret token only; never in lists,
    /// counts of others, search or feeds.
    Private,
}

impl Visibility {
    /// `public` / `private`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
        }
    }

    /// # Errors
    /// [`InvalidValue`] (field `visibility`) for anything but the two names.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "public" => Ok(Self::Public),
            "private" => Ok(Self::Private),
            _ => Err(InvalidValue::new("visibility", "must be public or private")),
        }
    }
}

/// Where the track's audio is. Only `no_audio` exists until the media
/// issue adds uploads and transcoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Processing {
    /// Metadata only, no audio file yet.
    #[default]
    NoAudio,
}

impl Processing {
    /// The state's API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoAudio => "no_audio",
        }
    }
}

/// A track's validated metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackMetadata {
    /// 1–100 characters, no control characters.
    pub title: String,
    /// At most 4,000 characters; newlines and tabs allowed.
    pub description: String,
    /// At most 50 characters; may be empty.
    pub genre: String,
    /// At most [`MAX_TAGS`], each 1–30 characters, case kept, duplicates
    /// (case-insensitive) dropped.
    pub tags: Vec<String>,
    /// 0 < duration ≤ [`MAX_DURATION_MS`] (milliseconds).
    pub duration_ms: i64,
}

impl TrackMetadata {
    /// # Errors
    /// [`InvalidValue`] naming the first field out of bounds.
    pub fn parse(
        title: &str,
        description: &str,
        genre: &str,
        tags: &[String],
        duration_ms: i64,
    ) -> Result<Self, InvalidValue> {
        Ok(Self {
            title: parse_title(title)?,
            description: parse_description(description)?,
            genre: parse_genre(genre)?,
            tags: parse_tags(tags)?,
            duration_ms: parse_duration(duration_ms)?,
        })
    }
}

/// # Errors
/// [`InvalidValue`] (field `title`).
pub(crate) fn parse_title(raw: &str) -> Result<String, InvalidValue> {
    let s = raw.trim();
    if s.is_empty() || s.chars().count() > 100 {
        return Err(InvalidValue::new("title", "must be 1 to 100 characters"));
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidValue::new("title", "must not contain control characters"));
    }
    Ok(s.to_owned())
}

pub(crate) fn parse_description(raw: &str) -> Result<String, InvalidValue> {
    let s = raw.trim();
    if s.chars().count() > 4_000 {
        return Err(InvalidValue::new("description", "must be at most 4,000 characters"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(InvalidValue::new("description", "must not contain control characters"));
    }
    Ok(s.to_owned())
}

pub(crate) fn parse_genre(raw: &str) -> Result<String, InvalidValue> {
    let s = raw.trim();
    if s.chars().count() > 50 || s.chars().any(char::is_control) {
        return Err(InvalidValue::new("genre", "must be at most 50 characters, no control characters"));
    }
    Ok(s.to_owned())
}

pub(crate) fn parse_tags(raw: &[String]) -> Result<Vec<String>, InvalidValue> {
    if raw.len() > MAX_TAGS {
        return Err(InvalidValue::new("tags", format!("at most {MAX_TAGS} tags")));
    }
    let mut tags: Vec<String> = Vec::with_capacity(raw.len());
    for tag in raw {
        let t = tag.trim();
        if t.is_empty() || t.chars().count() > 30 || t.chars().any(char::is_control) {
            return Err(InvalidValue::new(
                "tags",
                "each tag must be 1 to 30 characters, no control characters",
            ));
        }
        if !tags.iter().any(|x| x.to_lowercase() == t.to_lowercase()) {
            tags.push(t.to_owned());
        }
    }
    Ok(tags)
}

pub(crate) fn parse_duration(ms: i64) -> Result<i64, InvalidValue> {
    if ms <= 0 || ms > MAX_DURATION_MS {
        return Err(InvalidValue::new("duration_ms", "must be above 0 and at most 24 h (86,400,000 ms)"));
    }
    Ok(ms)
}

/// The URL slug of a title: lower-case ASCII letters and digits, runs of
/// anything else as one `-`, at most 80 characters; `track` if nothing is
/// left (a title of emoji only).
pub fn slugify(title: &str) -> String {
    let mut slug = String::with_capacity(title.len());
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 80 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() {
        "track".to_owned()
    } else {
        slug
    }
}
