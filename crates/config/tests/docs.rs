//! `docs/configuration.md` is generated from the schema; this test keeps it in step.

use std::path::PathBuf;

use autogate_config::{keys, render_markdown};

fn docs_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md")
}

#[test]
fn docs_configuration_md_is_generated() {
    let want = render_markdown();
    let path = docs_path();
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date with the schema; regenerate it with: UPDATE_DOCS=1 cargo test -p autogate-config",
        path.display()
    );
}

#[test]
fn reference_lists_every_key_and_env() {
    let md = render_markdown();
    for def in keys() {
        assert!(
            md.contains(&format!("| `{}` | `{}` |", def.key, def.env_name())),
            "{}",
            def.id()
        );
    }
    for text in [
        "Precedence",
        "GATEWAY_CONFIG",
        "[commander]",
        "64",
        "74",
        "/etc/gateway/gateway.conf",
    ] {
        assert!(md.contains(text), "reference lacks {text}");
    }
}
