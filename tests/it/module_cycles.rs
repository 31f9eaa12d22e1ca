//! The crate's modules import each other in one direction only: no two top-level modules, and
//! no two sibling modules (children of one module), reach each other, directly or round a
//! circle.
//!
//! The check reads the source: every `crate::` and `super::` path in `src/**/*.rs` outside
//! comments and `#[cfg(test)]` modules, `use` lines and paths in code alike. A path names the
//! module written in it, except through a facade, whose `use` lines are followed to the module
//! the item comes from: the crate root (`crate::Dub` is `client`'s) and, for a child, its parent
//! (`super::Why` re-exported by the parent from a sibling `y` is `y`'s). The code build.rs
//! generates is the module `generated`: the `crate::` paths build.rs writes into it are its own.
//!
//! Not checked: a child using its parent's items (the parent declares the child, so that is not
//! a circle between siblings), and the children of the modules in [`NOT_YET_CHECKED`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Modules whose children are not checked against each other yet (none: the tracker's storage
/// layer lost its circle in issue 19 §1).
const NOT_YET_CHECKED: &[&str] = &[];

type ModPath = Vec<String>;

/// One module's file, read.
struct Source {
    file: PathBuf,
    /// The code, with comments and test modules blanked (lines kept, for line numbers).
    code: String,
}

struct Crate {
    root: PathBuf,
    modules: BTreeMap<ModPath, Source>,
}

impl Crate {
    fn read(root: &Path) -> Self {
        let mut modules = BTreeMap::new();
        let src = root.join("src");
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let rel = path.strip_prefix(&src).unwrap();
                let mut segments: ModPath = rel
                    .iter()
                    .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned())
                    .collect();
                if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                    segments.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                modules.insert(
                    segments,
                    Source {
                        file: path.clone(),
                        code: code_lines(&text).join("\n"),
                    },
                );
            }
        }
        // Inline modules (`mod generated { include!(..) }`) are modules too; their code counts
        // as their parent's.
        let inline: Vec<ModPath> = modules
            .iter()
            .flat_map(|(path, source)| {
                source.code.lines().filter_map(move |line| {
                    let line = line.trim();
                    let rest = line
                        .strip_prefix("pub(crate) mod ")
                        .or_else(|| line.strip_prefix("pub mod "))
                        .or_else(|| line.strip_prefix("mod "))?;
                    let name = rest.strip_suffix('{')?.trim();
                    let mut child = path.clone();
                    child.push(name.to_owned());
                    Some(child)
                })
            })
            .collect();
        for path in inline {
            modules.entry(path).or_insert_with(|| Source {
                file: PathBuf::new(),
                code: String::new(),
            });
        }
        Self {
            root: root.to_owned(),
            modules,
        }
    }

    fn is_module(&self, path: &[String]) -> bool {
        self.modules.contains_key(path)
    }

    /// The module `path` (absolute, from the crate root) names: the module written in it,
    /// except through a facade (the crate root, or `facade`, the parent of the module the path
    /// is written in), whose `use` lines are followed to the module that defines the item.
    fn resolve(&self, path: &[String], facade: &[String], depth: usize) -> ModPath {
        let mut module: ModPath = vec![];
        for (i, segment) in path.iter().enumerate() {
            let mut next = module.clone();
            next.push(segment.clone());
            if self.is_module(&next) {
                module = next;
                continue;
            }
            if depth > 0
                && (module.is_empty() || module == facade)
                && let Some(target) = self.imported(&module, segment)
            {
                let mut full = target;
                full.extend(path[i + 1..].iter().cloned());
                return self.resolve(&full, facade, depth - 1);
            }
            return module;
        }
        module
    }

    /// Where `module`'s `use` lines take `name` from, as an absolute path.
    fn imported(&self, module: &[String], name: &str) -> Option<ModPath> {
        let source = self.modules.get(module)?;
        for tree in use_trees(&source.code) {
            for used in expand_use(&tree) {
                let (path, alias) = match used.split_once(" as ") {
                    Some((p, a)) => (p.trim().to_owned(), a.trim().to_owned()),
                    None => (used.clone(), used.rsplit("::").next().unwrap().to_owned()),
                };
                if alias == name {
                    return Some(absolute(module, &path, |child| {
                        let mut p = module.to_vec();
                        p.push(child.to_owned());
                        self.is_module(&p)
                    }));
                }
            }
        }
        None
    }
}

/// The trees of the `use` declarations in `code` (`a::{b, c}` of `pub use a::{b, c};`).
fn use_trees(code: &str) -> Vec<String> {
    let mut out = vec![];
    for statement in code.split(';') {
        // The declaration is the statement's last line that starts with `use` (attributes,
        // the end of a previous item and `pub`/`pub(crate)` may come before it).
        let Some(at) = statement.rfind("use ") else {
            continue;
        };
        let head = statement[..at].trim_end();
        let head = head
            .strip_suffix("pub(crate)")
            .or_else(|| head.strip_suffix("pub"))
            .unwrap_or(head)
            .trim_end();
        if head.is_empty() || head.ends_with(['}', ']', '{', ';']) {
            out.push(
                statement[at + 4..]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    out
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut out = vec![];
    let (mut level, mut start) = (0, 0);
    let bytes = inner.as_bytes();
    for i in 0..=bytes.len() {
        let c = bytes.get(i).copied().unwrap_or(b',');
        match c {
            b'{' => level += 1,
            b'}' => level -= 1,
            b',' if level == 0 => {
                let part = inner[start..i].trim();
                if !part.is_empty() {
                    for sub in expand_use(part) {
                        out.push(if sub == "self" {
                            prefix.trim_end_matches("::").to_owned()
                        } else {
                            format!("{prefix}{sub}")
                        });
                    }
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// A path written in `module` as a path from the crate root.
fn absolute(module: &[String], path: &str, is_child: impl Fn(&str) -> bool) -> ModPath {
    let mut segments: Vec<&str> = path.split("::").map(str::trim).collect();
    let mut base: ModPath = match segments.first().copied() {
        Some("crate") => {
            segments.remove(0);
            vec![]
        }
        Some("super") => {
            let mut base = module.to_vec();
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
            base
        }
        Some("self") => {
            segments.remove(0);
            module.to_vec()
        }
        Some(first) if is_child(first) => module.to_vec(),
        // An outside crate.
        _ => return vec!["<extern>".to_owned()],
    };
    base.extend(segments.into_iter().map(str::to_owned));
    base
}

/// The text of a file with comments and `#[cfg(test)]` modules blanked, line by line.
fn code_lines(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut skipping: Option<i32> = None;
    let mut test_attr = false;
    for line in text.lines() {
        let code = strip_comment(line);
        let trimmed = code.trim();
        if let Some(depth) = skipping.as_mut() {
            *depth += brace_balance(trimmed);
            if *depth <= 0 {
                skipping = None;
            }
            out.push(String::new());
            continue;
        }
        if trimmed == "#[cfg(test)]" {
            test_attr = true;
            out.push(String::new());
            continue;
        }
        if test_attr && trimmed.starts_with("mod ") {
            test_attr = false;
            let depth = brace_balance(trimmed);
            if depth > 0 {
                skipping = Some(depth);
            }
            out.push(String::new());
            continue;
        }
        if !trimmed.is_empty() && !trimmed.starts_with("#[") {
            test_attr = false;
        }
        out.push(code);
    }
    out
}

fn brace_balance(code: &str) -> i32 {
    code.chars()
        .map(|c| match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        })
        .sum()
}

/// A line without its `//` comment (a `//` inside a string literal stays).
fn strip_comment(line: &str) -> String {
    let mut in_string = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_string = !in_string,
            '/' if !in_string && prev == '/' => return line[..i - 1].to_owned(),
            _ => {}
        }
        prev = c;
    }
    line.to_owned()
}

/// Every `crate::…` and `super::…` path in `code`, as written (a `{…}` group expanded), with
/// where it starts.
fn paths_in(code: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start).map(|i| i + from) {
            from = at + start.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // The path runs over identifiers and `::`, and one balanced `{…}` group.
            let rest = &code[at..];
            let (mut end, mut level) = (0, 0);
            for (i, c) in rest.char_indices() {
                match c {
                    '{' => level += 1,
                    '}' if level == 0 => break,
                    '}' => level -= 1,
                    c if level == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => break,
                    _ => {}
                }
                end = i + c.len_utf8();
                if c == '}' && level == 0 {
                    break;
                }
            }
            let path = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
            for p in expand_use(path.trim_end_matches(':')) {
                let p = p.split(" as ").next().unwrap_or_default().to_owned();
                out.push((at, p));
            }
        }
    }
    out
}

fn line_of(code: &str, offset: usize) -> usize {
    code[..offset].matches('\n').count() + 1
}

/// An import from one module to another, with where it is written.
struct Edge {
    from: String,
    to: String,
    at: String,
}

/// The edges between the children of `scope` (the top-level modules for `[]`).
fn edges(krate: &Crate, scope: &[String]) -> Vec<Edge> {
    let mut out = vec![];
    let mut add = |from: &ModPath, target: &ModPath, at: String| {
        let (Some(f), Some(t)) = (from.get(scope.len()), target.get(scope.len())) else {
            return;
        };
        if from.starts_with(scope) && target.starts_with(scope) && f != t {
            out.push(Edge {
                from: f.clone(),
                to: t.clone(),
                at,
            });
        }
    };
    for (module, source) in &krate.modules {
        for (offset, path) in paths_in(&source.code) {
            let written = absolute(module, &path, |_| false);
            let parent = &module[..module.len().saturating_sub(1)];
            let target = krate.resolve(&written, parent, 8);
            let at = format!(
                "{}:{}",
                source.file.strip_prefix(&krate.root).unwrap().display(),
                line_of(&source.code, offset)
            );
            add(module, &target, at);
        }
    }
    // The code build.rs writes is the module `generated`; what it names, it imports.
    let build = krate.root.join("build.rs");
    let generated = vec!["generated".to_owned()];
    let code = code_lines(&std::fs::read_to_string(&build).unwrap()).join("\n");
    for (offset, path) in paths_in(&code) {
        let target = krate.resolve(&absolute(&[], &path, |_| false), &[], 8);
        add(
            &generated,
            &target,
            format!("build.rs:{}", line_of(&code, offset)),
        );
    }
    out
}

/// The circles among `edges`: each strongly connected set of two or more modules, with the
/// imports that close it.
fn circles(edges: &[Edge]) -> Vec<BTreeSet<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().insert(&e.to);
        graph.entry(&e.to).or_default();
    }
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(m) = stack.pop() {
            for &next in &graph[m] {
                if seen.insert(next) {
                    stack.push(next);
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&str, BTreeSet<&str>> = graph.keys().map(|&m| (m, reach(m))).collect();
    let mut out: Vec<BTreeSet<String>> = vec![];
    for (&m, from_m) in &reached {
        if !from_m.contains(m) {
            continue;
        }
        let set: BTreeSet<String> = from_m
            .iter()
            .filter(|&&other| reached[other].contains(m))
            .map(|s| s.to_string())
            .collect();
        if !out.contains(&set) {
            out.push(set);
        }
    }
    out
}

fn report(krate: &Crate, scope: &[String], failures: &mut String) {
    let edges = edges(krate, scope);
    for circle in circles(&edges) {
        let name = if scope.is_empty() {
            "top-level modules".to_owned()
        } else {
            format!("children of {}", scope.join("::"))
        };
        let _ = writeln!(failures, "import cycle among {name}: {circle:?}");
        let closing: BTreeSet<String> = edges
            .iter()
            .filter(|e| circle.contains(&e.from) && circle.contains(&e.to))
            .map(|e| format!("    {} -> {}   {}", e.from, e.to, e.at))
            .collect();
        for line in closing {
            let _ = writeln!(failures, "{line}");
        }
    }
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let krate = Crate::read(Path::new(env!("CARGO_MANIFEST_DIR")));
    let mut failures = String::new();
    report(&krate, &[], &mut failures);
    // Every module with children (each once).
    let parents: BTreeSet<ModPath> = krate
        .modules
        .keys()
        .filter(|m| !m.is_empty())
        .map(|m| m[..m.len() - 1].to_vec())
        .filter(|p| !p.is_empty())
        .collect();
    for parent in parents {
        if NOT_YET_CHECKED.contains(&parent.join("::").as_str()) {
            continue;
        }
        report(&krate, &parent, &mut failures);
    }
    assert!(failures.is_empty(), "\n{failures}");
}

/// The check finds what it is meant to find: a circle through `use` lines, through a path in
/// code, through a re-export, and through `super::`.
#[test]
fn the_check_sees_circles_written_every_way() {
    let dir = std::env::temp_dir().join(format!("dub-module-cycles-{}", std::process::id()));
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("build.rs", "fn main() { let _ = \"crate::b::Thing\"; }\n");
    write(
        "src/lib.rs",
        "mod a;\nmod b;\nmod generated;\npub use a::Api;\n",
    );
    write("src/a.rs", "pub struct Api;\nfn f() { crate::b::g(); }\n");
    // `crate::Api` is `a`'s, through the root's re-export.
    write(
        "src/b/mod.rs",
        "mod x;\nmod y;\npub use y::Why;\nuse crate::Api; // crate::generated in a comment\n",
    );
    write("src/b/x.rs", "use super::Why;\n");
    write(
        "src/b/y.rs",
        "pub struct Why;\nfn f() { let _ = super::x::F; }\n#[cfg(test)]\nmod tests {\n    use crate::generated::T;\n}\n",
    );
    write("src/generated.rs", "use crate::a::Api;\n");
    let krate = Crate::read(&dir);
    let top: Vec<_> = circles(&edges(&krate, &[])).into_iter().collect();
    let b = vec!["b".to_owned()];
    let inner: Vec<_> = circles(&edges(&krate, &b)).into_iter().collect();
    std::fs::remove_dir_all(&dir).unwrap();
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(top, [set(&["a", "b"])]);
    assert_eq!(inner, [set(&["x", "y"])]);
}
