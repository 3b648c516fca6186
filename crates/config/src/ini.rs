//! The INI dialect of the product family's `gateway.conf`.
//!
//! Only syntax is checked here (headers, `key = value`, quotes, comments); whether a section or
//! key exists is decided by the caller against the schema, so this module stays small and its
//! line numbers are the single source for error locations.
//!
//! Comments: a line whose first non-blank character is `#` or `;`, and in a bare (unquoted)
//! value a `#` that starts the value or follows whitespace. A `#` inside a word (`a#b`) or inside
//! quotes is part of the value, so URLs and passwords survive.

use std::path::Path;

use crate::error::ConfigError;

/// One meaningful line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// `[name]`, as written between the brackets (trimmed).
    Section { name: String, line: usize },
    /// `key = value`; the value unquoted and trimmed.
    Pair {
        key: String,
        value: String,
        line: usize,
    },
}

/// Parses `text` read from `path` (used in messages only).
pub(crate) fn parse(text: &str, path: &Path) -> Result<Vec<Item>, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut items = Vec::new();
    let mut in_section = false;
    for (idx, raw_line) in text.lines().enumerate() {
        let line = idx + 1;
        let syntax = |message: String| ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            message,
        };
        let trimmed = raw_line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let (name, after) = rest.split_once(']').ok_or_else(|| {
                syntax(format!("section header \"{trimmed}\" has no closing ']'"))
            })?;
            let after = after.trim();
            if !(after.is_empty() || after.starts_with('#') || after.starts_with(';')) {
                return Err(syntax(format!(
                    "unexpected text \"{after}\" after section header [{name}]"
                )));
            }
            let name = name.trim();
            if name.is_empty() {
                return Err(syntax("empty section name \"[]\"".to_string()));
            }
            items.push(Item::Section {
                name: name.to_string(),
                line,
            });
            in_section = true;
            continue;
        }
        let (key, rest) = trimmed.split_once('=').ok_or_else(|| {
            syntax(format!(
                "expected \"key = value\", a [section] header or a # comment, found \"{trimmed}\""
            ))
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(syntax("missing key before '='".to_string()));
        }
        if !in_section {
            return Err(ConfigError::KeyOutsideSection {
                path: path.to_path_buf(),
                line,
                key: key.to_string(),
            });
        }
        let value = parse_value(rest).map_err(syntax)?;
        items.push(Item::Pair {
            key: key.to_string(),
            value,
            line,
        });
    }
    Ok(items)
}

/// The value part after `=`: quoted (`'…'` or `"…"`, taken literally) or bare.
fn parse_value(rest: &str) -> Result<String, String> {
    let v = rest.trim_start();
    let Some(quote) = v.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return Ok(strip_comment(rest).trim().to_string());
    };
    let body = &v[1..];
    let end = body
        .find(quote)
        .ok_or_else(|| format!("the value has no closing {quote}"))?;
    let after = body[end + 1..].trim();
    if !(after.is_empty() || after.starts_with('#')) {
        // The text is not echoed: it may be part of a secret.
        return Err("unexpected text after the quoted value; quote the whole value".to_string());
    }
    Ok(body[..end].to_string())
}

/// Cuts a bare value at a `#` that starts it or follows whitespace.
fn strip_comment(rest: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in rest.char_indices() {
        if c == '#' && prev_space {
            return &rest[..i];
        }
        prev_space = c.is_whitespace();
    }
    rest
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text, Path::new("t.conf"))
            .unwrap()
            .into_iter()
            .filter_map(|i| match i {
                Item::Pair { key, value, .. } => Some((key, value)),
                Item::Section { .. } => None,
            })
            .collect()
    }

    #[test]
    fn values_quotes_and_comments() {
        let got = pairs(
            "\u{feff}# head\n; also a comment\n[s] # c\na = bare value # trailing\nb = \"dq # kept\" # c\nc = 'sq'\nd =\ne = x#y\nf = # only comment\ng=\"\"\n",
        );
        let want: Vec<(String, String)> = [
            ("a", "bare value"),
            ("b", "dq # kept"),
            ("c", "sq"),
            ("d", ""),
            ("e", "x#y"),
            ("f", ""),
            ("g", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("[s]\n\nnot a pair\n", Path::new("t.conf")).unwrap_err();
        assert!(e.to_string().starts_with("t.conf line 3: expected"), "{e}");
        let e = parse("[s\n", Path::new("t.conf")).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse("[s]\na = \"open\n", Path::new("t.conf")).unwrap_err();
        assert!(e.to_string().contains("no closing"), "{e}");
        let e = parse("[s]\na = \"x\" y\n", Path::new("t.conf")).unwrap_err();
        assert!(e.to_string().contains("after the quoted value"), "{e}");
        let e = parse("a = 1\n[s]\n", Path::new("t.conf")).unwrap_err();
        assert!(
            matches!(e, ConfigError::KeyOutsideSection { line: 1, .. }),
            "{e}"
        );
    }
}
