//! The shape of the crate, checked: modules import each other in one
//! direction only (the layers of docs/architecture.md), and the files of a
//! folder module import each other without a circle. A module that reaches
//! up a layer, or two files that import each other, fail this test with
//! the path that does it.
//!
//! It reads the `use` paths of `src/` (`crate::a::b`, `super::b`): no
//! compiler, no tool to install. Test modules (`#[cfg(test)] mod tests`)
//! are left out: a test may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may import only modules of lower
/// layers; modules of one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    &["model", "tasks"],
    &["config", "metrics"],
    &["telemetry"],
    &["bus", "store"],
    &["error", "search"],
    &["protocol", "hub", "auth", "server", "presence"],
    &["chat"],
    &["assistant", "transport"],
    &["http"],
    &["node"],
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The module path of a file: `src/hub/rooms.rs` is `[hub, rooms]`,
/// `src/hub/mod.rs` is `[hub]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file without its test module and its comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file's code names: `crate::a::b::Item` gives
/// `[a, b, Item]`; `super::b` in module `[a, c]` gives `[a, b]`.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    // `super` of `[a, c]` (a/c.rs) is `[a]`; of `[a]` (a.rs or a/mod.rs), the root.
    let parent = module[..module.len() - 1].to_vec();
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let path: Vec<String> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let mut full = base.clone();
            full.extend(path);
            out.push(full);
        }
    }
    out
}

struct Crate {
    /// Top-level module -> the top-level modules it imports.
    top: BTreeMap<String, BTreeSet<String>>,
    /// Folder module -> (its file -> the sibling files it imports).
    inner: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Where each top-level edge comes from, for the failure message.
    evidence: BTreeMap<(String, String), String>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut krate = Crate {
        top: BTreeMap::new(),
        inner: BTreeMap::new(),
        evidence: BTreeMap::new(),
    };
    for file in sources(&src) {
        let module = module_of(&src, &file);
        // The binary is wiring for the CLI, not part of the library; a
        // module's tests may use anything.
        if module.is_empty() || module == ["main"] || module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        let top = module[0].clone();
        krate.top.entry(top.clone()).or_default();
        for path in references(&module, &code(&text)) {
            let Some(first) = path.first() else { continue };
            if first != &top {
                krate
                    .top
                    .entry(top.clone())
                    .or_default()
                    .insert(first.clone());
                krate
                    .evidence
                    .entry((top.clone(), first.clone()))
                    .or_insert_with(|| file.strip_prefix(&src).unwrap().display().to_string());
            } else if module.len() == 2 && path.len() >= 2 && path[1] != module[1] {
                // A file of a folder module naming a sibling file's module.
                let siblings = krate.inner.entry(top.clone()).or_default();
                if src.join(&top).join(format!("{}.rs", path[1])).exists()
                    || src.join(&top).join(&path[1]).join("mod.rs").exists()
                {
                    siblings
                        .entry(module[1].clone())
                        .or_default()
                        .insert(path[1].clone());
                }
            }
        }
    }
    krate
}

/// A circle in `graph`, as the path that closes it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| {
            panic!("module `{module}` is in no layer: add it to LAYERS and to docs/architecture.md")
        })
}

#[test]
fn modules_import_only_lower_layers() {
    let krate = read_crate();
    let mut wrong = Vec::new();
    for (from, tos) in &krate.top {
        for to in tos.iter().filter(|to| krate.top.contains_key(*to)) {
            if layer_of(to) >= layer_of(from) {
                let at = &krate.evidence[&(from.clone(), to.clone())];
                wrong.push(format!("{from} imports {to} ({at})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
    assert_eq!(find_cycle(&krate.top), None);
}

#[test]
fn the_files_of_a_module_import_each_other_without_a_circle() {
    let krate = read_crate();
    for (module, files) in &krate.inner {
        assert_eq!(find_cycle(files), None, "a circle in `{module}`");
    }
}

#[test]
fn the_check_sees_imports_and_finds_circles() {
    // It reads what it should: `chat` uses `store` and `hub`.
    let krate = read_crate();
    assert!(krate.top["chat"].contains("store"));
    assert!(krate.top["chat"].contains("hub"));
    assert!(krate.inner["hub"]["rooms"].contains("room"));
    // And it finds a circle where there is one.
    let circle: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(
        find_cycle(&circle),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
