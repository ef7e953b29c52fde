//! The README's flag table must list every flag flanneld accepts, with its environment variable,
//! so the documentation cannot drift from the parser.

use flanneld::cli::{env_name, flag_names};

#[test]
fn readme_documents_every_flag_and_env_var() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md at the repository root");
    for name in flag_names() {
        let row_start = if name.len() == 1 || name.contains('_') || name == "vmodule" {
            format!("| `-{name}`")
        } else {
            format!("| `--{name}`")
        };
        let row = readme
            .lines()
            .find(|l| l.starts_with(&row_start))
            .unwrap_or_else(|| panic!("README flag table has no row for {name}"));
        if name != "version" {
            assert!(
                row.contains(&format!("`{}`", env_name(name))),
                "README row for {name} lacks {}",
                env_name(name)
            );
        }
    }
}
