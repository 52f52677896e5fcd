//! The chart rendered by Helm's own template engine: Go's `text/template` with the sprig
//! library, configured as Helm configures it (`tests/helm-render/main.go`), built here with
//! Debian's Go and sprig packages in GOPATH mode (`scripts/deps.sh` installs them as root).
//! Objects are then checked by `kubernetes-validate --strict` from the test virtualenv.
//! Without Go, or without the validator, the caller skips and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// Where Debian's Go packages live (golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v2-dev).
const GOPATH: &str = "/usr/share/gocode";

/// The renderer, built once per test run; Err says why it cannot be.
pub fn renderer() -> Result<&'static Path, &'static str> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("helm-render");
        let out = crate::target_dir().join("helm-render");
        let build = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", GOPATH)
            .env("GOCACHE", crate::target_dir().join("go-cache"))
            .output();
        match build {
            Err(_) => Err("Go is not installed (scripts/deps.sh installs golang-go and sprig as root)".into()),
            Ok(o) if !o.status.success() => Err(format!(
                "tests/helm-render does not build (are golang-github-masterminds-sprig-dev and golang-gopkg-yaml.v2-dev installed?): {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Ok(_) => Ok(out),
        }
    });
    built.as_deref().map_err(|e| e.as_str())
}

/// Every template of `chart` rendered with `root` (`Values`, `Release`, `Chart`, `KubeVersion`,
/// and `Lookup`: what `lookup` finds, keyed `apiVersion/kind/namespace/name`): file name ->
/// text, or Go's error (which names the template and line).
pub fn render(renderer: &Path, chart: &Path, root: &Value) -> Result<BTreeMap<String, String>, String> {
    let dir = crate::TempDir::new("helm");
    let file = dir.path().join("root.json");
    std::fs::write(&file, serde_json::to_vec(root).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let out = Command::new(renderer).arg(chart).arg(&file).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("helm-render printed no JSON: {e}"))
}

/// `kubernetes-validate --strict` of `objects` for Kubernetes `version`: the problems it names,
/// or Err when the validator is not installed.
pub fn validate(objects: &[Value], version: &str) -> Result<Vec<String>, &'static str> {
    let venv = crate::venv_bin("kubernetes-validate");
    if !venv.exists() {
        return Err("kubernetes-validate is not in .venv (scripts/deps.sh installs it)");
    }
    let dir = crate::TempDir::new("kvalidate");
    let mut files = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let file = dir.path().join(format!(
            "{i}-{}-{}.json",
            o["kind"].as_str().unwrap_or("?"),
            o["metadata"]["name"].as_str().unwrap_or("?")
        ));
        std::fs::write(&file, serde_json::to_vec(o).expect("json")).expect("write object");
        files.push(file);
    }
    // One run for every object: the validator names each file it refuses.
    let run = Command::new(&venv)
        .args(["--strict", "--quiet", "-k", version])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    if run.status.success() {
        return Ok(Vec::new());
    }
    let said = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    Ok(said.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
}

/// The values checked against the chart's `values.schema.json`, as Helm checks them before
/// rendering (here with Python's jsonschema, from the test virtualenv): Ok(Err(problems)) when
/// they do not conform, Err when the checker is not installed.
pub fn check_values(chart: &Path, values: &Value) -> Result<Result<(), String>, &'static str> {
    let python = crate::venv_bin("python");
    let ready = Command::new(&python).args(["-c", "import jsonschema"]).output().is_ok_and(|o| o.status.success());
    if !ready {
        return Err("jsonschema is not in .venv (scripts/deps.sh installs kubernetes-validate, which brings it)");
    }
    let dir = crate::TempDir::new("values");
    let file = dir.path().join("values.json");
    std::fs::write(&file, serde_json::to_vec(values).expect("json")).expect("write values");
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1])); values = json.load(open(sys.argv[2]))\n\
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: list(e.path))\n\
        for e in errors: print('/'.join(str(p) for p in e.path) + ': ' + e.message)\n\
        sys.exit(1 if errors else 0)\n";
    let run = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(chart.join("values.schema.json"))
        .arg(&file)
        .output()
        .expect("run python");
    Ok(if run.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr)))
    })
}
