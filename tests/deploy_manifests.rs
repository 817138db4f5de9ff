//! The Kubernetes manifests under `deploy/` must be valid objects of the Kubernetes API: checked
//! offline against its published schemas (Python's `kubernetes-validate`, strict: unknown fields
//! are errors). Pins down a manifest that a cluster would refuse. That the series the
//! prometheus-adapter rules name are ones the server exports is checked by
//! tests/serve_metrics.rs against a live scrape.
//!
//! Needs `kubernetes-validate` in `QUIVER_PYTHON`: the README's test command installs it and
//! sets `QUIVER_REQUIRE_PYARROW=1`, so a missing module fails instead of skipping.

use std::path::Path;
use std::process::Command;

#[test]
fn the_deploy_manifests_validate_against_the_kubernetes_schemas() {
    let Some(py) = quiver_testkit::python_with("kubernetes_validate") else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "deploy/ holds the manifests: {files:?}");
    let out = Command::new(&py)
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "manifests refused:\n{stdout}\n{stderr}");
    for f in &files {
        let name = f.display().to_string();
        assert!(stdout.contains(&name) || stderr.contains(&name), "{name} was not checked");
    }
}
