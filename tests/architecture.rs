//! The layering rules, checked on the source tree so that a back-edge fails the build instead
//! of waiting for a review: top-level modules of the crate import each other without a cycle,
//! and only `src/hsm/` names `cryptoki` (PKCS#11 is blocking FFI with its own error model; one
//! owner keeps the classification of its errors and its threading rules in one place).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for lib.rs, main.rs and the
/// binary's own modules).
fn top_module(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "cli" => None,
        n => Some(n.to_owned()),
    }
}

/// Every `crate::<name>` a file mentions outside comments.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = top_module(f) else { continue };
        let text = std::fs::read_to_string(f).expect("read source");
        let edges = g.entry(m.clone()).or_default();
        for r in crate_refs(&text) {
            if r != m && modules.contains(&r) {
                edges.insert(r);
            }
        }
    }
    g
}

/// A path from `from` back to itself, if there is one.
fn cycle_through(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        target: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == target {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, target, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_owned()];
    walk(g, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let g = graph();
    assert!(g.len() > 10, "the source tree was not read: {g:?}");
    let cycles: Vec<String> = g
        .keys()
        .filter_map(|m| cycle_through(&g, m))
        .map(|p| p.join(" -> "))
        .collect();
    assert!(
        cycles.is_empty(),
        "top-level modules form import cycles (imports must only point down):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn only_the_hsm_layer_names_cryptoki() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let hsm = src().join("hsm");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&hsm))
        .filter(|f| {
            std::fs::read_to_string(f)
                .expect("read source")
                .lines()
                .any(|l| l.split("//").next().unwrap_or("").contains("cryptoki"))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "cryptoki is used outside src/hsm/: {offenders:?}"
    );
}

#[test]
fn the_checker_sees_a_planted_cycle() {
    // The checker itself must be able to fail: a two-module loop is reported.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle_through(&g, "a"),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    assert_eq!(cycle_through(&g, "c"), None);
    assert_eq!(
        crate_refs("use crate::hsm::Token; // crate::metrics\nlet x = crate::xks::Operation::Health;"),
        ["hsm", "xks"].into_iter().map(String::from).collect()
    );
}
