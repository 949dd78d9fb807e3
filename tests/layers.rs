//! The shape of the source tree, checked: no two modules of `src/` import each other,
//! directly or round a longer circle, and the top-level modules form the layers
//! `docs/ARCHITECTURE.md` draws, each importing only from its own layer or those below.
//! A new import that breaks either fails here, naming the modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules of the library, lowest layer first.
const LAYERS: &[&[&str]] = &[
    &["process", "config"],
    &[
        "geo",
        "health",
        "acme",
        "steer",
        "cache",
        "probe",
        "metrics",
        "test_support",
    ],
    &["control"],
    &["dns", "proxy", "origin"],
    &["demo"],
];

type Module = Vec<String>;

/// Every module file under `src/` (the binary's `main.rs` aside), keyed by module path,
/// with its text and whether it is a tests file: `x_tests.rs` holds the tests of module
/// `x` (its `super` is `x`) and counts as `x`.
fn module_files(src: &Path) -> BTreeMap<Module, Vec<(String, bool)>> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let last = module.pop().unwrap();
            let tests_of = last.strip_suffix("_tests");
            match last.as_str() {
                "lib" | "main" if module.is_empty() => continue,
                "mod" => {}
                name => module.push(tests_of.unwrap_or(name).to_string()),
            }
            let text = std::fs::read_to_string(&path).unwrap();
            found
                .entry(module)
                .or_insert_with(Vec::new)
                .push((text, tests_of.is_some()));
        }
    }
    found
}

/// The code without comments, so paths named in prose do not count.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts with `crate` or `super`, with `use` groups (`a::{b, c::d}`)
/// expanded, as lists of segments.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::"]
            .iter()
            .any(|p| bytes[i..].starts_with(p.as_bytes()))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let (found, end) = expand(code, i, Vec::new());
            paths.extend(found);
            i = end;
        } else {
            i += 1;
        }
    }
    paths
}

/// Reads one path (and any group after it) from `at`; returns the paths and where it ended.
fn expand(code: &str, mut at: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let bytes = code.as_bytes();
    let mut segments = prefix;
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < bytes.len() && bytes[at] == b'{' {
            let mut out = Vec::new();
            at += 1;
            loop {
                while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    return (out, at + 1);
                }
                let (inner, end) = expand(code, at, segments.clone());
                out.extend(inner);
                at = end;
            }
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        if start == at {
            return (vec![segments], at);
        }
        segments.push(code[start..at].to_string());
        if bytes[at..].starts_with(b"::") {
            at += 2;
        } else {
            return (vec![segments], at);
        }
    }
}

/// The module a path names: `super` taken from `from` (from inside it when the path is
/// in `from`'s tests file), then the longest prefix that is a module.
fn resolve(
    path: &[String],
    from: &Module,
    in_tests_file: bool,
    modules: &BTreeSet<Module>,
) -> Option<Module> {
    let mut base: Module = Vec::new();
    let mut rest = path;
    if rest.first().is_some_and(|s| s == "crate") {
        rest = &rest[1..];
    } else {
        base = from.clone();
        if !in_tests_file {
            base.pop();
        }
        while rest.first().is_some_and(|s| s == "super") {
            rest = &rest[1..];
            if rest.first().is_some_and(|s| s == "super") {
                base.pop();
            }
        }
    }
    let mut full = base;
    full.extend(rest.iter().cloned());
    (1..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|m| modules.contains(m))
}

fn is_prefix(a: &Module, b: &Module) -> bool {
    a.len() <= b.len() && b[..a.len()] == a[..]
}

/// Module -> the modules it imports, leaving out its own ancestors and descendants
/// (a parent declares and re-exports its children; that is no circle).
fn import_graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = module_files(&src);
    let modules: BTreeSet<Module> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, texts) in &files {
        let mut deps = BTreeSet::new();
        for (text, is_tests_file) in texts {
            for path in paths_in(&code_of(text)) {
                if let Some(target) = resolve(&path, module, *is_tests_file, &modules) {
                    if !is_prefix(&target, module) && !is_prefix(module, &target) {
                        deps.insert(target);
                    }
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, m: &'a Module) {
            let n = self.index.len();
            self.index.insert(m, n);
            self.low.insert(m, n);
            self.stack.push(m);
            self.on_stack.insert(m);
            for d in self.graph.get(m).into_iter().flatten() {
                if !self.index.contains_key(d) {
                    self.visit(d);
                    let low = self.low[m].min(self.low[d]);
                    self.low.insert(m, low);
                } else if self.on_stack.contains(d) {
                    let low = self.low[m].min(self.index[d]);
                    self.low.insert(m, low);
                }
            }
            if self.low[m] == self.index[m] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top.clone());
                    if top == m {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for m in graph.keys() {
        if !walk.index.contains_key(m) {
            walk.visit(m);
        }
    }
    walk.found
}

#[test]
fn no_modules_import_each_other() {
    let graph = import_graph();
    assert!(graph.len() > 50, "found only {} modules", graph.len());
    let found: Vec<String> = circles(&graph)
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" <-> ")
        })
        .collect();
    assert!(found.is_empty(), "import circles: {found:#?}");
}

#[test]
fn top_level_modules_import_only_their_layer_or_below() {
    let layer_of = |top: &str| LAYERS.iter().position(|l| l.contains(&top));
    let mut wrong = Vec::new();
    for (module, deps) in import_graph() {
        let Some(own) = layer_of(&module[0]) else {
            wrong.push(format!("{} is in no layer: add it to LAYERS", module[0]));
            continue;
        };
        for dep in deps {
            if layer_of(&dep[0]).is_some_and(|l| l > own) {
                wrong.push(format!("{} imports {}", module.join("::"), dep.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

#[test]
fn the_checker_sees_a_circle_and_a_group() {
    let code = "use crate::a::{b::{C, D}, e};\nfn f() { super::g::h(); }";
    let paths = paths_in(code);
    assert!(paths.contains(&vec!["crate".into(), "a".into(), "b".into(), "C".into()]));
    assert!(paths.contains(&vec!["crate".into(), "a".into(), "e".into()]));
    assert!(paths.contains(&vec!["super".into(), "g".into(), "h".into()]));
    let m = |s: &str| s.split("::").map(String::from).collect::<Module>();
    let graph = BTreeMap::from([
        (m("x::a"), BTreeSet::from([m("x::b")])),
        (m("x::b"), BTreeSet::from([m("x::c")])),
        (m("x::c"), BTreeSet::from([m("x::a")])),
        (m("y"), BTreeSet::from([m("x::a")])),
    ]);
    let found = circles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);
}
