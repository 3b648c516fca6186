//! "Did you mean …?" for names that match nothing: the known names closest to a mistyped one.

/// The candidates closest to `name` by edit distance (a swap of two neighbouring letters counts
/// as one edit), when they are close enough to be a likely typo: at most a third of the length
/// of the part after `prefix` (`GATEWAY_`, which every candidate shares and which would
/// otherwise make any two long names look alike). Comparison ignores case. At most three, in
/// the order given.
pub(crate) fn closest<'a>(
    name: &str,
    prefix: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let name = name.to_ascii_uppercase();
    let rest = name.strip_prefix(prefix).unwrap_or(&name);
    let max = rest.chars().count().max(3) / 3;
    let mut best: Vec<&str> = Vec::new();
    let mut best_distance = max + 1;
    for candidate in candidates {
        let upper = candidate.to_ascii_uppercase();
        let other = upper.strip_prefix(prefix).unwrap_or(&upper);
        let d = strsim::damerau_levenshtein(rest, other);
        if d < best_distance {
            best_distance = d;
            best.clear();
        }
        if d == best_distance && !best.contains(&candidate) {
            best.push(candidate);
        }
    }
    best.truncate(3);
    best
}

/// `"; did you mean A?"`, `"; did you mean A or B?"`, or nothing.
pub(crate) fn did_you_mean(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        [rest @ .., last] => format!("; did you mean {} or {last}?", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: &[&str] = &[
        "GATEWAY_SERVER_PORT",
        "GATEWAY_SERVER_USE_TLS",
        "GATEWAY_CLIENT_PORT",
        "GATEWAY_LOG_LEVEL",
        "GATEWAY_STORE_ETCD_HOSTS",
    ];

    fn near(name: &str) -> Vec<&'static str> {
        closest(name, "GATEWAY_", VARS.iter().copied())
    }

    #[test]
    fn typos_find_their_variable() {
        assert_eq!(near("GATEWAY_SERVER_PROT"), ["GATEWAY_SERVER_PORT"]);
        assert_eq!(near("GATEWAY_SERVER_PORTS"), ["GATEWAY_SERVER_PORT"]);
        assert_eq!(near("GATEWAY_server_port"), ["GATEWAY_SERVER_PORT"]);
        assert_eq!(near("GATEWAY_LOG_LEVL"), ["GATEWAY_LOG_LEVEL"]);
        assert_eq!(
            near("GATEWAY_STORE_ETCD_HOST"),
            ["GATEWAY_STORE_ETCD_HOSTS"]
        );
    }

    #[test]
    fn unrelated_names_find_nothing() {
        assert!(near("GATEWAY_NOPE").is_empty());
        assert!(near("GATEWAY_DATABASE_URL").is_empty());
        assert!(near("GATEWAY_X").is_empty());
    }

    #[test]
    fn ties_are_all_offered() {
        // One edit from both.
        assert_eq!(
            near("GATEWAY_SERVEN_PORT"),
            ["GATEWAY_SERVER_PORT"],
            "a single closest one"
        );
        let both = closest("ab", "", ["aa", "bb", "zz"]);
        assert_eq!(both, ["aa", "bb"]);
    }

    #[test]
    fn the_hint() {
        assert_eq!(did_you_mean(&[]), "");
        assert_eq!(did_you_mean(&["A".into()]), "; did you mean A?");
        assert_eq!(
            did_you_mean(&["A".into(), "B".into(), "C".into()]),
            "; did you mean A, B or C?"
        );
    }
}
