//! The source tree keeps its shape: each module of `src/` imports only
//! from its own layer and those below it, and no two modules import each
//! other, however indirectly.  Read from the sources, as a reviewer would.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first.  A top-level file of `src/` is a process-wide
/// piece, below everything; `lib.rs` and `main.rs` are above everything.
const LAYERS: [&str; 7] = ["http", "tls", "cache", "proxy", "status", "models", "demo"];

fn rank(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or("");
    match top {
        "crate" => LAYERS.len() + 1,
        _ => LAYERS.iter().position(|&l| l == top).map_or(0, |at| at + 1),
    }
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            all.push(path);
        }
    }
    all
}

/// `http::body` for src/http/body.rs, `proxy` for src/proxy/mod.rs,
/// `crate` for lib.rs and main.rs.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    match parts.as_slice() {
        [one] if one == "lib" || one == "main" => "crate".into(),
        _ => parts.join("::"),
    }
}

/// The longest known module that `path` (words after `crate::`) names.
fn resolve(path: &[&str], modules: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// The modules `text` (the source of `module`) refers to: `crate::a::b`,
/// `super::a` and `self::a` paths and paths to the module's own children
/// (`child::item`), in `use` lines and in code, and the log's macros.
fn references(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    // Comments, `mod` declarations (which import nothing) and unit tests
    // (the `#[cfg(test)]` module every file ends with, where `super` is
    // the file's own module) left out.
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("mod ") && !l.trim_start().starts_with("pub mod "))
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .collect();
    let parent = module.rsplit_once("::").map(|(p, _)| p);
    for word in words {
        let path: Vec<&str> = word.split("::").filter(|p| !p.is_empty()).collect();
        let target = match path.as_slice() {
            ["crate", "diag" | "notice", ..] => Some("log".to_string()),
            ["crate", rest @ ..] => resolve(rest, modules),
            ["super", rest @ ..] => parent.and_then(|p| {
                let mut full: Vec<&str> = p.split("::").collect();
                full.extend_from_slice(rest);
                resolve(&full, modules).or_else(|| Some(p.to_string()))
            }),
            ["self", rest @ ..] => resolve(&[&[module], rest].concat(), modules),
            [first, _, ..] if modules.contains(&format!("{module}::{first}")) => {
                let mut full = vec![module];
                full.extend_from_slice(&path);
                resolve(&full, modules)
            }
            _ => None,
        };
        if let Some(target) = target.filter(|t| t != module) {
            found.insert(target);
        }
    }
    if code.contains("diag!(") || code.contains("notice!(") {
        found.insert("log".into());
    }
    found.remove(module);
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    files
        .iter()
        .map(|f| {
            let module = module_of(&src, f);
            let text = fs::read_to_string(f).unwrap();
            let refs = references(&module, &text, &modules);
            (module, refs)
        })
        .collect()
}

#[test]
fn every_module_imports_only_from_its_layer_and_below() {
    let mut upward = Vec::new();
    for (module, refs) in graph() {
        for target in refs {
            if rank(&target) > rank(&module) {
                upward.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports from a layer above: {upward:#?}");
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = graph();
    // Depth-first search for a back edge, with the path that closes it.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" -> ")
        );
    }
}

#[test]
fn the_checker_sees_imports() {
    // A guard on the two tests above: they would pass on a graph with no
    // edges.
    let graph = graph();
    assert!(graph["proxy::forward"].contains("http"));
    assert!(graph["models::parent"].contains("models::fork"));
    assert!(graph["http::head"].contains("http::wire"));
    assert!(graph["cache::store"].contains("log"));
    assert!(
        graph["proxy"].contains("proxy::balancer"),
        "a child, by its own name"
    );
}
