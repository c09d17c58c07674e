//! The deployment files in the repository (docker-compose.yml, Dockerfiles, `deploy/`), read
//! as the tools that use them would.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use serde_json::Value;

/// `relative` under the repository's root (the workspace).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new(".."))
        .join(relative)
}

/// The text of `relative` under the repository's root.
pub fn repo_text(relative: &str) -> anyhow::Result<String> {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A YAML file as JSON, parsed by PyYAML (Debian's python3-yaml): no YAML crate is in the
/// workspace, and PyYAML is the parser docker-compose v1 itself used.
pub fn yaml_file(path: &Path) -> anyhow::Result<Value> {
    let output = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .context("running python3 (apt-get install python3-yaml)")?;
    if !output.status.success() {
        bail!(
            "{} is not valid YAML: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("PyYAML's JSON")
}

/// Replaces `from` by `to` in `text`, which must hold `from` exactly `count` times: a test that
/// puts its own ports into a deployment file notices when the file changes under it.
pub fn replace_counted(text: &str, from: &str, to: &str, count: usize) -> anyhow::Result<String> {
    let found = text.matches(from).count();
    if found != count {
        bail!("expected {from:?} {count} times, found it {found} times");
    }
    Ok(text.replace(from, to))
}
