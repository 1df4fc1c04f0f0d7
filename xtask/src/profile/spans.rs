//! Where a key stands in the profile's text, for error messages: the
//! dotted key at a byte offset, the span of a dotted key, its line.

use std::ops::Range;

/// serde's messages name Rust types; say what a profile author would.
pub(super) fn plain_words(message: &str) -> String {
    let mut m = message.to_owned();
    for (rust, plain) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected a sequence", "expected a list [\"...\", ...]"),
    ] {
        m = m.replace(rust, plain);
    }
    m
}

/// 1-based line number of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Every key of a TOML document with its dotted path and where it stands.
pub(super) struct SpanIndex {
    entries: Vec<SpanEntry>,
}

struct SpanEntry {
    path: String,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

impl SpanIndex {
    pub(super) fn new(text: &str) -> SpanIndex {
        let mut entries = Vec::new();
        if let Ok(doc) = toml_edit::Document::parse(text) {
            walk_table(doc.as_table(), "", &mut entries);
        }
        SpanIndex { entries }
    }

    /// The innermost key whose key or value contains `span`.
    pub(super) fn key_at(&self, span: &Range<usize>) -> String {
        let within = |r: &Option<Range<usize>>| {
            r.as_ref()
                .is_some_and(|r| r.start <= span.start && span.start < r.end.max(r.start + 1))
        };
        self.entries
            .iter()
            .filter(|e| within(&e.key) || within(&e.value))
            .max_by_key(|e| e.path.len())
            .map(|e| e.path.clone())
            .unwrap_or_default()
    }

    /// Where a dotted key (or its nearest existing parent) stands.
    pub(super) fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut path = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == path) {
                return e.key.clone().or_else(|| e.value.clone());
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Standard and inline tables alike.
fn walk_table(table: &dyn toml_edit::TableLike, prefix: &str, out: &mut Vec<SpanEntry>) {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = join(prefix, name);
        out.push(SpanEntry {
            path: path.clone(),
            key: key.span(),
            value: item.span(),
        });
        walk_item(item, &path, out);
    }
}

fn walk_item(item: &toml_edit::Item, path: &str, out: &mut Vec<SpanEntry>) {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, out),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push(SpanEntry {
                    path: p.clone(),
                    key: None,
                    value: t.span(),
                });
                walk_table(t, &p, out);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => walk_table(t, path, out),
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push(SpanEntry {
                    path: p.clone(),
                    key: None,
                    value: v.span(),
                });
                walk_item(&toml_edit::Item::Value(v.clone()), &p, out);
            }
        }
        toml_edit::Item::Value(_) | toml_edit::Item::None => {}
    }
}
