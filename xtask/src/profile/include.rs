//! `include = ["node1"]`: a profile built on shared files, so that what
//! several profiles share (node1's root and its packages) is written once.
//!
//! A name is a file in `include/` beside the profile, or else in the
//! project's `profiles/include/` (`node1` is `profiles/include/node1.toml`),
//! so a profile copied anywhere still finds it; a path (with a `/`, or
//! ending in `.toml`) is taken from the profile's directory. The included files are merged in order, then the profile
//! over them: a table merges key by key, any other value replaces the one
//! before. An included file includes nothing itself.
//!
//! Errors name the file that holds the key, and its line: the merged
//! profile is read by its dotted key, and each key belongs to the last
//! file that sets it.

use std::path::{Path, PathBuf};

use super::spans::plain_words;
use super::ProfileError;

/// One file of a profile: an included file, or the profile itself (last).
pub(super) struct Part {
    pub(super) file: PathBuf,
    pub(super) text: String,
    table: toml::Table,
}

/// Where included files named without a path are.
pub(crate) const INCLUDE_DIR: &str = "profiles/include";

/// The profile's parts: its included files, in order, then itself. None
/// when it includes nothing, or is not TOML: the caller then parses it
/// alone (and reports a syntax error at its place).
pub(super) fn parts(text: &str, file: &Path) -> Result<Vec<Part>, ProfileError> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(Vec::new());
    };
    let Some(names) = table.get("include") else {
        return Ok(Vec::new());
    };
    let at = |message: String| ProfileError::at_key(text, file, "include", message);
    let names: Vec<&str> = names
        .as_array()
        .map(|a| {
            a.iter()
                .map(toml::Value::as_str)
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or_default()
        .ok_or_else(|| at("expected a list of file names, like [\"node1\"]".into()))?;
    let mut parts = Vec::new();
    for name in names {
        let path = resolve(name, file);
        let included = std::fs::read_to_string(&path).map_err(|e| {
            at(format!(
                "cannot read the included `{name}` ({}): {e}",
                path.display()
            ))
        })?;
        let table = included.parse::<toml::Table>().map_err(|e| {
            ProfileError::at_span(&included, &path, e.span(), plain_words(e.message().trim()))
        })?;
        if table.contains_key("include") {
            return Err(ProfileError::at_key(
                &included,
                &path,
                "include",
                "an included file cannot include another: list both in the profile".into(),
            ));
        }
        parts.push(Part {
            file: path,
            text: included,
            table,
        });
    }
    parts.push(Part {
        file: file.to_owned(),
        text: text.to_owned(),
        table,
    });
    Ok(parts)
}

fn resolve(name: &str, profile: &Path) -> PathBuf {
    let dir = profile.parent().unwrap_or(Path::new("."));
    if name.contains('/') || name.ends_with(".toml") {
        return dir.join(name);
    }
    let file = format!("{name}.toml");
    let beside = dir.join("include").join(&file);
    if beside.is_file() {
        beside
    } else {
        crate::project_root().join(INCLUDE_DIR).join(file)
    }
}

/// The parts merged into one TOML text, for the profile's parser.
pub(super) fn merged(parts: &[Part]) -> String {
    let mut all = toml::Table::new();
    for part in parts {
        merge(&mut all, &part.table);
    }
    all.to_string()
}

fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// An error at `key` of the merged profile, in the file that sets it: the
/// last one that has the key, or else its nearest parent (a missing field
/// belongs to the table that lacks it).
pub(super) fn error_for_key(parts: &[Part], key: &str, message: String) -> ProfileError {
    if let (true, Some(profile)) = (key.is_empty(), parts.last()) {
        // About the document as a whole ("missing field `nodes`").
        return ProfileError {
            file: profile.file.clone(),
            key: String::new(),
            line: 1,
            message,
        };
    }
    let names: Vec<&str> = key
        .split('.')
        .map(|n| n.split('[').next().unwrap_or(n))
        .collect();
    let owner = (1..=names.len())
        .rev()
        .find_map(|len| parts.iter().rev().find(|p| has(&p.table, &names[..len])))
        .or(parts.last());
    match owner {
        Some(p) => ProfileError::at_key(&p.text, &p.file, key, message),
        None => ProfileError {
            file: PathBuf::new(),
            key: key.to_owned(),
            line: 0,
            message,
        },
    }
}

/// Whether `table` has the key path `names` (an array, replaced whole
/// when merged, has all that is under it).
fn has(table: &toml::Table, names: &[&str]) -> bool {
    let Some((first, rest)) = names.split_first() else {
        return true;
    };
    match table.get(*first) {
        Some(toml::Value::Table(t)) => has(t, rest),
        Some(_) => true,
        None => false,
    }
}
