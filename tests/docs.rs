//! The documents stay with the code: every key the shipped configs use is in the
//! configuration reference, and every document the README points to exists.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Tables whose keys are names the operator chooses (`[upstreams.web]`), not keys.
const NAMED_BY_OPERATOR: [&str; 2] = ["upstreams", "sni"];

/// Every key of a TOML document, tables and arrays of tables included.
fn keys(value: &toml::Value, parent: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                if !NAMED_BY_OPERATOR.contains(&parent) {
                    out.push(k.clone());
                }
                keys(v, k, out);
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|v| keys(v, parent, out)),
        _ => {}
    }
}

#[test]
fn every_key_of_the_shipped_configs_is_in_the_reference() {
    let reference = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let doc = toml::Value::Table(table);
        let mut found = Vec::new();
        keys(&doc, "", &mut found);
        for key in found {
            checked += 1;
            let named = reference.contains(&format!("`{key}`"))
                || reference.contains(&format!("[{key}]"))
                || reference.contains(&format!("[[{key}]]"))
                || reference.contains(&format!(".{key}]"));
            if !named {
                missing.push(format!("{}: {key}", path.display()));
            }
        }
    }
    assert!(checked > 50, "read only {checked} keys");
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:#?}"
    );
}

#[test]
fn the_readme_links_to_documents_that_exist() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut linked = 0;
    for part in readme.split("](").skip(1) {
        let target = part.split(')').next().unwrap_or_default();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        linked += 1;
        assert!(
            root().join(target).exists(),
            "README links to {target}, which is not in the repository"
        );
    }
    assert!(linked >= 4, "README links to {linked} documents");
    assert!(
        readme.len() < 12 * 1024,
        "README is {} bytes: keep it the front door",
        readme.len()
    );
}
