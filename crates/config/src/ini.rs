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
#[derive(Debug)]
pub(crate) enum Item {
    /// `[name]`, as written between the brackets (trimmed).
    Section { name: String, line: usize },
    /// `key = value`; the value unquoted and trimmed.
    Pair {
        key: String,
        value: String,
        line: usize,
    },
    /// A line that cannot be read. Parsing goes on after it so that `version --show-config`
    /// can show the rest of the file; loading for real stops at the first one.
    Broken {
        /// What is wrong, with the line.
        error: ConfigError,
        /// The key, when the line is a `key = value` pair with a malformed value.
        key: Option<String>,
        /// The line is a malformed section header: the pairs after it belong to no known
        /// section until the next header.
        header: bool,
    },
}

/// Parses `text` read from `path` (used in messages only), one item per meaningful line.
pub(crate) fn parse(text: &str, path: &Path) -> Vec<Item> {
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
        let broken = |error: ConfigError, key: Option<&str>, header: bool| Item::Broken {
            error,
            key: key.map(str::to_string),
            header,
        };
        let trimmed = raw_line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            // Even a malformed header opens a section: the pairs after it are not "before any
            // header", they belong to a section that cannot be used.
            in_section = true;
            items.push(match header(rest, trimmed) {
                Ok(name) => Item::Section { name, line },
                Err(message) => broken(syntax(message), None, true),
            });
            continue;
        }
        let Some((key, rest)) = trimmed.split_once('=') else {
            items.push(broken(
                syntax(format!(
                    "expected \"key = value\", a [section] header or a # comment, found \"{trimmed}\""
                )),
                None,
                false,
            ));
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            items.push(broken(
                syntax("missing key before '='".to_string()),
                None,
                false,
            ));
            continue;
        }
        if !in_section {
            items.push(broken(
                ConfigError::KeyOutsideSection {
                    path: path.to_path_buf(),
                    line,
                    key: key.to_string(),
                },
                None,
                false,
            ));
            continue;
        }
        items.push(match parse_value(rest) {
            Ok(value) => Item::Pair {
                key: key.to_string(),
                value,
                line,
            },
            Err(message) => broken(syntax(message), Some(key), false),
        });
    }
    items
}

/// The name of a `[name]` header (`rest` follows the `[`), or what is wrong with it.
fn header(rest: &str, trimmed: &str) -> Result<String, String> {
    let (name, after) = rest
        .split_once(']')
        .ok_or_else(|| format!("section header \"{trimmed}\" has no closing ']'"))?;
    let after = after.trim();
    if !(after.is_empty() || after.starts_with('#') || after.starts_with(';')) {
        return Err(format!(
            "unexpected text \"{after}\" after section header [{name}]"
        ));
    }
    let name = name.trim();
    if name.is_empty() {
        return Err("empty section name \"[]\"".to_string());
    }
    Ok(name.to_string())
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
            .into_iter()
            .filter_map(|i| match i {
                Item::Pair { key, value, .. } => Some((key, value)),
                Item::Section { .. } => None,
                Item::Broken { error, .. } => panic!("{error}"),
            })
            .collect()
    }

    /// The first broken line's error.
    fn first_error(text: &str) -> ConfigError {
        parse(text, Path::new("t.conf"))
            .into_iter()
            .find_map(|i| match i {
                Item::Broken { error, .. } => Some(error),
                _ => None,
            })
            .unwrap()
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
        let e = first_error("[s]\n\nnot a pair\n");
        assert!(e.to_string().starts_with("t.conf line 3: expected"), "{e}");
        let e = first_error("[s\n");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = first_error("[s]\na = \"open\n");
        assert!(e.to_string().contains("no closing"), "{e}");
        let e = first_error("[s]\na = \"x\" y\n");
        assert!(e.to_string().contains("after the quoted value"), "{e}");
        let e = first_error("a = 1\n[s]\n");
        assert!(
            matches!(e, ConfigError::KeyOutsideSection { line: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn parsing_goes_on_after_a_broken_line() {
        let items = parse("[s\na = 1\n[t]\nb = \"open\nc = 2\n", Path::new("t.conf"));
        let summary: Vec<String> = items
            .iter()
            .map(|i| match i {
                Item::Section { name, line } => format!("{line}:[{name}]"),
                Item::Pair { key, line, .. } => format!("{line}:{key}"),
                Item::Broken { key, header, .. } => format!("broken:{key:?}:{header}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "broken:None:true",
                "2:a",
                "3:[t]",
                "broken:Some(\"b\"):false",
                "5:c"
            ]
        );
    }
}
