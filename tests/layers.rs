//! Layering guard: the library's modules import only from their own layer or the layers
//! below it, and no group of modules depends on itself in a cycle.
//!
//! It reads `src/` as text (std only: no `longctx` import, no parser crate), so it is cheap
//! to run and fails with a list that names the file and line of every offending import.
//!
//! * A module is a `.rs` file under `src/` other than `src/lib.rs` (the crate root only
//!   declares modules and re-exports), `src/main.rs`, `src/cli/**` and `src/bin/**` (binary
//!   code). `src/runtime/device.rs` is `runtime::device`, `src/contract/mod.rs` is `contract`.
//! * Its layer is the one [`LAYERS`] gives its first path segment. A new top-level module
//!   fails the test until it is added to the table.
//! * Its imports are the `crate::…`, `super::…` and `self::…` paths in its code (comments,
//!   doc comments and literals removed; `use crate::{a::X, b::{c::Y, Z}}` expanded; names the
//!   crate root re-exports followed to their module), each resolved to the deepest module file
//!   it names. A path into a higher layer fails.
//! * Edges between a module and its own ancestors or descendants (a `mod.rs` declaring or
//!   re-exporting its children, a child naming its parent's re-export) are left out of the
//!   cycle search; any other strongly connected group of modules fails.
//!
//! `cargo test --test layers -- --nocapture` prints the module graph by layer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// A layer: its rank (a module may import only from ranks at or below its own), a name for
/// messages, and the top-level modules (first path segments) it holds.
struct Layer {
    rank: u8,
    name: &'static str,
    modules: &'static [&'static str],
}

/// The layers, lowest first. Add a new top-level module here, in the layer whose description
/// fits it.
#[allow(unused_doc_comments)] // the doc comments document the rows
const LAYERS: &[Layer] = &[
    /// Base: the crate's error type and tensor file I/O. Imports nothing from the crate.
    Layer { rank: 0, name: "base", modules: &["error", "io"] },
    /// Contract: what an attention call means, with no GPU: shapes and specs, masks, block
    /// maps, FLOP counts, the f64 CPU oracle.
    Layer { rank: 1, name: "contract", modules: &["contract"] },
    /// Runtime: devices owned or borrowed, buffers, shader assembly, pipeline and layout
    /// caches, timing, on-disk caches, device profiles and tuned winners as plain data. It
    /// names no kernel.
    Layer { rank: 2, name: "runtime", modules: &["runtime"] },
    /// Kernels: one WGSL file and one Rust module per kernel family.
    Layer { rank: 3, name: "kernels", modules: &["kernels"] },
    /// Models, measurement and distribution: BERT, CoLT5, bench, tune, plan; ring attention
    /// over ranks.
    Layer { rank: 4, name: "models, measurement, distribution", modules: &["models", "measure", "parallel"] },
    /// App: the visualiser.
    Layer { rank: 5, name: "app", modules: &["app"] },
];

#[test]
fn source_tree_is_layered() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&src);
    let graph = Graph::build(&files);
    println!("{}", graph.summary(LAYERS));
    assert!(!graph.modules.is_empty(), "no library modules found under {}", src.display());
    let problems = graph.problems(LAYERS);
    assert!(
        problems.is_empty(),
        "the module layering is broken ({} problems):\n  {}\n",
        problems.len(),
        problems.join("\n  ")
    );
}

// ----------------------------------------------------------------------------------------
// Reading the tree.

/// Every `.rs` file under `dir`, as (path relative to `dir` with `/` separators, text).
fn read_tree(dir: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &rel, out);
            } else if name.ends_with(".rs") {
                let text =
                    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                out.push((rel, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

/// The module path of a file (relative to `src/`), or `None` for the crate root and binary code.
fn module_path(rel: &str) -> Option<String> {
    let stem = rel.strip_suffix(".rs")?;
    let mut parts: Vec<&str> = stem.split('/').collect();
    if matches!(parts[..], ["lib"] | ["main"]) || matches!(parts[0], "cli" | "bin") {
        return None;
    }
    if parts.len() > 1 && parts.last() == Some(&"mod") {
        parts.pop();
    }
    Some(parts.join("::"))
}

fn layer_of<'a>(module: &str, table: &'a [Layer]) -> Option<&'a Layer> {
    let top = module.split("::").next().unwrap_or(module);
    table.iter().find(|l| l.modules.contains(&top))
}

// ----------------------------------------------------------------------------------------
// Lexing: blank out what is not code.

/// `src` with comments (line, nested block, doc), string, byte-string, raw-string and char
/// literals replaced by spaces. Newlines are kept, so line numbers stay right.
fn strip(src: &str) -> String {
    let s: Vec<char> = src.chars().collect();
    let mut out: Vec<char> = s.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        let prev_ident = i > 0 && is_ident_char(s[i - 1]);
        if c == '/' && next == Some('/') {
            let end = s[i..].iter().position(|&c| c == '\n').map_or(s.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j] == '/' && s.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if s[j] == '*' && s.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if !prev_ident && let Some(end) = raw_string_end(&s, i) {
            blank(&mut out, i, end);
            i = end;
        } else if c == '"' || (!prev_ident && matches!(c, 'b' | 'c') && next == Some('"')) {
            let mut j = if c == '"' { i + 1 } else { i + 2 };
            while j < s.len() && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c == '\'' || (!prev_ident && c == 'b' && next == Some('\'')) {
            let q = if c == '\'' { i } else { i + 1 };
            if s.get(q + 1) == Some(&'\\') {
                // An escaped char: '\n', '\'', '\u{1F600}'.
                let mut j = q + 3;
                while j < s.len() && s[j] != '\'' && s[j] != '\n' {
                    j += 1;
                }
                blank(&mut out, i, j + 1);
                i = j + 1;
            } else if s.get(q + 2) == Some(&'\'') {
                blank(&mut out, i, q + 3);
                i = q + 3;
            } else {
                i = q + 1; // a lifetime or a label
            }
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br#"…"#`, `cr"…"`) starting at `i` ends, if one does.
fn raw_string_end(s: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(s.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if s.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = s[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if s.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < s.len() {
        if s[j] == '"' && s[j + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(s.len())
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn read_ident(s: &[char], i: usize) -> (String, usize) {
    let end = s[i..].iter().position(|&c| !is_ident_char(c)).map_or(s.len(), |p| i + p);
    (s[i..end].iter().collect(), end)
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

fn at_path_sep(s: &[char], i: usize) -> bool {
    s.get(i) == Some(&':') && s.get(i + 1) == Some(&':')
}

// ----------------------------------------------------------------------------------------
// Parsing paths.

/// One path a use tree or an expression names: its segments as written (leading `crate`,
/// `self`, `super` kept), the name it is imported as, and the (1-based) line of its last
/// segment.
#[derive(Clone, Debug, PartialEq)]
struct Leaf {
    segments: Vec<String>,
    alias: Option<String>,
    line: usize,
}

/// Line numbers by char index.
struct Lines(Vec<usize>);

impl Lines {
    fn new(s: &[char]) -> Lines {
        Lines(s.iter().enumerate().filter(|(_, c)| **c == '\n').map(|(i, _)| i).collect())
    }
    fn at(&self, i: usize) -> usize {
        self.0.partition_point(|&nl| nl < i) + 1
    }
}

/// Parses the path or use tree starting at `i` (an identifier or `{`) below `prefix`, pushing
/// every leaf it names; returns where it stopped. `a::{self, b::{C, D as E}, *}` gives `a`,
/// `a::b::C`, `a::b::D` (as `E`) and `a` (the glob).
fn parse_tree(s: &[char], mut i: usize, prefix: &[String], lines: &Lines, out: &mut Vec<Leaf>) -> usize {
    let mut segments = prefix.to_vec();
    let mut line = lines.at(i);
    loop {
        i = skip_ws(s, i);
        match s.get(i) {
            Some('{') => {
                i += 1;
                loop {
                    i = skip_ws(s, i);
                    match s.get(i) {
                        None => return i,
                        Some('}') => return i + 1,
                        Some(',') => i += 1,
                        Some(_) => {
                            let before = i;
                            i = parse_tree(s, i, &segments, lines, out);
                            if i == before {
                                i += 1; // not a path: step over it
                            }
                        }
                    }
                }
            }
            Some('*') => {
                out.push(Leaf { segments, alias: None, line: lines.at(i) });
                return i + 1;
            }
            Some(&c) if is_ident_start(c) => {
                let (word, end) = read_ident(s, i);
                // `self` inside a group names the group's prefix itself.
                if !(word == "self" && segments.len() == prefix.len() && !prefix.is_empty()) {
                    segments.push(word);
                }
                line = lines.at(i);
                i = end;
                let k = skip_ws(s, i);
                if at_path_sep(s, k) && s.get(skip_ws(s, k + 2)) != Some(&'<') {
                    i = k + 2;
                    continue;
                }
                let mut alias = None;
                if s.get(k).is_some_and(|&c| is_ident_start(c)) {
                    let (word, end) = read_ident(s, k);
                    if word == "as" {
                        let a = skip_ws(s, end);
                        if s.get(a).is_some_and(|&c| is_ident_start(c)) {
                            let (name, end) = read_ident(s, a);
                            alias = Some(name);
                            i = end;
                        }
                    }
                }
                out.push(Leaf { segments, alias, line });
                return i;
            }
            _ => {
                if segments.len() > prefix.len() {
                    out.push(Leaf { segments, alias: None, line });
                }
                return i;
            }
        }
    }
}

/// Every `crate::`, `super::` and `self::` path in the code of a file whose module is
/// `module`, made absolute (segments from the crate root), with its line. Paths inside inline
/// modules (`mod tests { use super::*; }`) are resolved from those modules.
fn crate_paths(module: &[String], src: &str) -> Vec<(Vec<String>, usize)> {
    let stripped = strip(src);
    let s: Vec<char> = stripped.chars().collect();
    let lines = Lines::new(&s);
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut inline: Vec<(String, usize)> = Vec::new(); // (name, depth of its body)
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '{' {
            depth += 1;
        } else if c == '}' {
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
        } else if is_ident_start(c) && (i == 0 || !is_ident_char(s[i - 1])) {
            let (word, end) = read_ident(&s, i);
            if word == "mod" {
                let n = skip_ws(&s, end);
                if s.get(n).is_some_and(|&c| is_ident_start(c)) {
                    let (name, end) = read_ident(&s, n);
                    let b = skip_ws(&s, end);
                    if s.get(b) == Some(&'{') {
                        depth += 1;
                        inline.push((name, depth));
                        i = b + 1;
                        continue;
                    }
                }
            } else if matches!(word.as_str(), "crate" | "super" | "self") && at_path_sep(&s, skip_ws(&s, end))
            {
                let mut leaves = Vec::new();
                i = parse_tree(&s, i, &[], &lines, &mut leaves);
                let here: Vec<String> =
                    module.iter().cloned().chain(inline.iter().map(|(n, _)| n.clone())).collect();
                for leaf in leaves {
                    if let Some(abs) = absolute(&leaf.segments, &here) {
                        out.push((abs, leaf.line));
                    }
                }
                continue;
            }
            i = end;
            continue;
        }
        i += 1;
    }
    out
}

/// `segments` (starting with `crate`, `self` or `super`) as a path from the crate root, seen
/// from module `here`; `None` where `super` climbs above the root.
fn absolute(segments: &[String], here: &[String]) -> Option<Vec<String>> {
    let (first, rest) = segments.split_first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => {
            let mut b = here.to_vec();
            b.pop()?;
            b
        }
        _ => return None,
    };
    let mut rest = rest;
    while let Some((s, tail)) = rest.split_first()
        && s == "super"
    {
        base.pop()?;
        rest = tail;
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The names the crate root brings in with `use` (`pub use error::{Error, Result}` maps
/// `Error` to `error::Error`), so that `crate::Error` resolves to module `error`.
fn root_reexports(lib: &str) -> HashMap<String, Vec<String>> {
    let stripped = strip(lib);
    let s: Vec<char> = stripped.chars().collect();
    let lines = Lines::new(&s);
    let mut map = HashMap::new();
    let mut i = 0;
    while i < s.len() {
        if is_ident_start(s[i]) && (i == 0 || !is_ident_char(s[i - 1])) {
            let (word, end) = read_ident(&s, i);
            i = end;
            if word == "use" {
                let mut leaves = Vec::new();
                i = parse_tree(&s, skip_ws(&s, end), &[], &lines, &mut leaves);
                for leaf in leaves {
                    let mut path = leaf.segments;
                    if path.first().is_some_and(|f| f == "crate" || f == "self") {
                        path.remove(0);
                    }
                    if let Some(name) = leaf.alias.or_else(|| path.last().cloned())
                        && path.len() > 1
                    {
                        map.insert(name, path);
                    }
                }
            }
        } else {
            i += 1;
        }
    }
    map
}

/// The deepest module that `path` (from the crate root) lies in, following root re-exports.
fn resolve(
    path: &[String],
    modules: &BTreeSet<String>,
    reexports: &HashMap<String, Vec<String>>,
) -> Option<String> {
    let mut path = path.to_vec();
    for _ in 0..8 {
        for k in (1..=path.len()).rev() {
            let candidate = path[..k].join("::");
            if modules.contains(&candidate) {
                return Some(candidate);
            }
        }
        let target = reexports.get(path.first()?)?;
        path = target.iter().chain(&path[1..]).cloned().collect();
    }
    None
}

// ----------------------------------------------------------------------------------------
// The graph.

struct Graph {
    /// Module path → file (relative to `src/`).
    modules: BTreeMap<String, String>,
    /// (from, to) → the lines of `from`'s file that name `to`. No module → itself.
    edges: BTreeMap<(String, String), Vec<usize>>,
    /// (module, path, line) for `crate::` paths that resolve to no module.
    unresolved: Vec<(String, String, usize)>,
}

impl Graph {
    /// The graph of `files` (paths relative to `src/`, with their text).
    fn build(files: &[(String, String)]) -> Graph {
        let modules: BTreeMap<String, String> =
            files.iter().filter_map(|(rel, _)| module_path(rel).map(|m| (m, rel.clone()))).collect();
        let names: BTreeSet<String> = modules.keys().cloned().collect();
        let reexports =
            files.iter().find(|(rel, _)| rel == "lib.rs").map(|(_, t)| root_reexports(t)).unwrap_or_default();
        let mut edges: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut unresolved = Vec::new();
        for (rel, text) in files {
            let Some(from) = module_path(rel) else { continue };
            let here: Vec<String> = from.split("::").map(String::from).collect();
            for (path, line) in crate_paths(&here, text) {
                match resolve(&path, &names, &reexports) {
                    Some(to) if to == from => {}
                    Some(to) => {
                        let lines = edges.entry((from.clone(), to)).or_default();
                        if !lines.contains(&line) {
                            lines.push(line);
                        }
                    }
                    None => unresolved.push((from.clone(), format!("crate::{}", path.join("::")), line)),
                }
            }
        }
        Graph { modules, edges, unresolved }
    }

    fn site(&self, from: &str, lines: &[usize]) -> String {
        let mut site = format!("src/{}:{}", self.modules[from], lines[0]);
        if lines.len() > 1 {
            let more: Vec<String> = lines[1..].iter().map(|l| format!(":{l}")).collect();
            let _ = write!(site, " (also {})", more.join(", "));
        }
        site
    }

    /// Top-level modules no layer holds, as messages.
    fn unlayered(&self, table: &[Layer]) -> Vec<String> {
        let listing: Vec<String> =
            table.iter().map(|l| format!("{} {} = {}", l.rank, l.name, l.modules.join(", "))).collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (module, file) in &self.modules {
            let top = module.split("::").next().unwrap_or(module);
            if layer_of(module, table).is_none() && seen.insert(top.to_string()) {
                out.push(format!(
                    "src/{file}: top-level module `{top}` is in no layer; add it to LAYERS at the top of \
                     tests/layers.rs ({})",
                    listing.join("; ")
                ));
            }
        }
        out
    }

    /// Imports into a higher layer, as messages.
    fn upward(&self, table: &[Layer]) -> Vec<String> {
        let mut out = Vec::new();
        for ((from, to), lines) in &self.edges {
            if let (Some(a), Some(b)) = (layer_of(from, table), layer_of(to, table))
                && b.rank > a.rank
            {
                out.push(format!(
                    "{from} imports {to} (layer {} > {}) at {}",
                    b.rank,
                    a.rank,
                    self.site(from, lines)
                ));
            }
        }
        out
    }

    /// The edges that count for cycles: between modules neither of which contains the other.
    fn cycle_edges(&self) -> BTreeMap<&str, Vec<&str>> {
        let related = |a: &str, b: &str| b.starts_with(&format!("{a}::")) || a.starts_with(&format!("{b}::"));
        let mut adj: BTreeMap<&str, Vec<&str>> =
            self.modules.keys().map(|m| (m.as_str(), Vec::new())).collect();
        for (from, to) in self.edges.keys() {
            if !related(from, to) {
                adj.entry(from).or_default().push(to);
            }
        }
        adj
    }

    /// Strongly connected groups of two or more modules (Tarjan), each sorted.
    fn cycles(&self) -> Vec<Vec<String>> {
        struct Tarjan<'a> {
            adj: &'a BTreeMap<&'a str, Vec<&'a str>>,
            index: HashMap<&'a str, usize>,
            low: HashMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            sccs: Vec<Vec<String>>,
        }
        impl<'a> Tarjan<'a> {
            fn visit(&mut self, v: &'a str) {
                let n = self.index.len();
                self.index.insert(v, n);
                self.low.insert(v, n);
                self.stack.push(v);
                self.on_stack.insert(v);
                for &w in self.adj.get(v).map(Vec::as_slice).unwrap_or(&[]) {
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let low = self.low[v].min(self.low[w]);
                        self.low.insert(v, low);
                    } else if self.on_stack.contains(w) {
                        let low = self.low[v].min(self.index[w]);
                        self.low.insert(v, low);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut scc = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack.remove(w);
                        scc.push(w.to_string());
                        if w == v {
                            break;
                        }
                    }
                    if scc.len() > 1 {
                        scc.sort();
                        self.sccs.push(scc);
                    }
                }
            }
        }
        let adj = self.cycle_edges();
        let mut t = Tarjan {
            adj: &adj,
            index: HashMap::new(),
            low: HashMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            sccs: Vec::new(),
        };
        for &v in adj.keys() {
            if !t.index.contains_key(v) {
                t.visit(v);
            }
        }
        t.sccs.sort();
        t.sccs
    }

    /// A shortest cycle through the first member of `scc`, as `a -> b -> a`.
    fn cycle_path(&self, scc: &[String]) -> String {
        let adj = self.cycle_edges();
        let members: BTreeSet<&str> = scc.iter().map(String::as_str).collect();
        let start = scc[0].as_str();
        let mut parent: HashMap<&str, &str> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for &w in &adj[v] {
                if !members.contains(w) {
                    continue;
                }
                if w == start {
                    let mut path = vec![start];
                    let mut at = v;
                    while at != start {
                        path.push(at);
                        at = parent[at];
                    }
                    path.push(start);
                    let last = path.len() - 1;
                    path[1..last].reverse();
                    return path.join(" -> ");
                }
                if !parent.contains_key(w) && w != start {
                    parent.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        scc.join(", ")
    }

    /// Cycles, as messages.
    fn cycle_problems(&self) -> Vec<String> {
        self.cycles()
            .iter()
            .map(|scc| {
                let inner: Vec<String> = self
                    .edges
                    .iter()
                    .filter(|((a, b), _)| {
                        scc.contains(a)
                            && scc.contains(b)
                            && self.cycle_edges()[a.as_str()].contains(&b.as_str())
                    })
                    .map(|((a, b), lines)| format!("{a} -> {b} at {}", self.site(a, lines)))
                    .collect();
                format!(
                    "cycle among {} modules [{}]: {}; its edges: {}",
                    scc.len(),
                    scc.join(", "),
                    self.cycle_path(scc),
                    inner.join("; ")
                )
            })
            .collect()
    }

    fn problems(&self, table: &[Layer]) -> Vec<String> {
        let mut out = self.unlayered(table);
        out.extend(self.upward(table));
        out.extend(self.cycle_problems());
        out
    }

    /// Counts, then every module's imports grouped by its layer.
    fn summary(&self, table: &[Layer]) -> String {
        let mut s = String::new();
        let upward = self.upward(table).len();
        let cycles = self.cycles().len();
        let _ = writeln!(
            s,
            "layers: {} modules, {} edges ({} counted for cycles), {} upward, {} cycles, {} unresolved crate paths",
            self.modules.len(),
            self.edges.len(),
            self.cycle_edges().values().map(Vec::len).sum::<usize>(),
            upward,
            cycles,
            self.unresolved.len()
        );
        let mut groups: Vec<(String, Option<u8>)> =
            table.iter().map(|l| (format!("layer {} {}", l.rank, l.name), Some(l.rank))).collect();
        groups.push(("no layer".to_string(), None));
        for (title, rank) in groups {
            let members: Vec<&String> =
                self.modules.keys().filter(|m| layer_of(m, table).map(|l| l.rank) == rank).collect();
            if members.is_empty() {
                continue;
            }
            let _ = writeln!(s, "{title}");
            for m in members {
                let targets: Vec<String> = self
                    .edges
                    .keys()
                    .filter(|(a, _)| a == m)
                    .map(|(a, b)| {
                        let up = matches!((layer_of(a, table), layer_of(b, table)), (Some(x), Some(y)) if y.rank > x.rank);
                        if up { format!("{b} [UP]") } else { b.clone() }
                    })
                    .collect();
                let targets = if targets.is_empty() { "-".to_string() } else { targets.join(", ") };
                let _ = writeln!(s, "  {m} -> {targets}");
            }
        }
        for (m, path, line) in &self.unresolved {
            let _ = writeln!(s, "unresolved: {path} in {m} at src/{}:{line}", self.modules[m]);
        }
        s
    }
}

// ----------------------------------------------------------------------------------------
// The parser's own tests, on in-memory sources.

#[cfg(test)]
mod parser {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split("::").map(String::from).collect()
    }

    fn paths(module: &str, src: &str) -> Vec<String> {
        crate_paths(&segs(module), src).into_iter().map(|(p, _)| p.join("::")).collect()
    }

    fn graph(files: &[(&str, &str)]) -> Graph {
        let files: Vec<(String, String)> =
            files.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        Graph::build(&files)
    }

    #[test]
    fn module_paths() {
        assert_eq!(module_path("runtime/device.rs").as_deref(), Some("runtime::device"));
        assert_eq!(module_path("contract/mod.rs").as_deref(), Some("contract"));
        assert_eq!(module_path("error.rs").as_deref(), Some("error"));
        assert_eq!(module_path("lib.rs"), None);
        assert_eq!(module_path("main.rs"), None);
        assert_eq!(module_path("cli/tune.rs"), None);
        assert_eq!(module_path("cli/mod.rs"), None);
    }

    #[test]
    fn parses_grouped_imports() {
        let src = "use crate::{a::X, b::{c::Y, Z}};\nuse crate::d::{self, W as V, *};\n";
        assert_eq!(paths("m", src), ["a::X", "b::c::Y", "b::Z", "d", "d::W", "d"]);
    }

    #[test]
    fn multi_line_groups_keep_their_lines() {
        let src = "use crate::kernels::{\n    flash::FlashConfig,\n    Kernel,\n};\nfn f() { crate::spec::check(1); }\n";
        let got = crate_paths(&segs("m"), src);
        let got: Vec<(String, usize)> = got.into_iter().map(|(p, l)| (p.join("::"), l)).collect();
        assert_eq!(
            got,
            [
                ("kernels::flash::FlashConfig".to_string(), 2),
                ("kernels::Kernel".to_string(), 3),
                ("spec::check".to_string(), 5)
            ]
        );
    }

    #[test]
    fn expression_paths_stop_at_generics_and_struct_literals() {
        let src =
            "let x = crate::a::f::<u32>(1); let y = crate::b::S { v: 1 }; let e: crate::Result<()> = Ok(());";
        assert_eq!(paths("m", src), ["a::f", "b::S", "Result"]);
    }

    #[test]
    fn strips_comments_and_strings() {
        let src = concat!(
            "// use crate::a::X;\n",
            "/// see [`crate::b::Y`]\n",
            "//! and [`crate::c`]\n",
            "/* crate::d::Z /* nested crate::e */ still crate::f */\n",
            "let s = \"crate::g::H\"; let r = r#\"crate::h \"quoted\" \"#; let b = b\"crate::i\";\n",
            "let q = '\"'; let p = '\\''; fn f<'a>(x: &'a str) -> &'a str { x }\n",
            "use crate::real::Thing; // crate::k\n",
        );
        let stripped = strip(src);
        assert_eq!(stripped.lines().count(), src.lines().count(), "newlines are kept");
        assert!(stripped.contains("'a str"), "lifetimes stay: {stripped}");
        assert_eq!(paths("m", src), ["real::Thing"]);
        assert_eq!(crate_paths(&segs("m"), src)[0].1, 7);
    }

    #[test]
    fn resolves_super() {
        // In contract::spec (contract/spec.rs), super is contract.
        assert_eq!(paths("contract::spec", "use super::mask::Mask;"), ["contract::mask::Mask"]);
        // In contract (contract/mod.rs), super is the crate root.
        assert_eq!(paths("contract", "use super::error::Error;"), ["error::Error"]);
        assert_eq!(paths("a::b::c", "use super::super::x::Y;"), ["a::x::Y"]);
        // Climbing above the root names nothing.
        assert!(paths("a", "use super::super::x;").is_empty());
    }

    #[test]
    fn resolves_self() {
        assert_eq!(paths("kernels", "pub use self::flash::FlashConfig;"), ["kernels::flash::FlashConfig"]);
        assert_eq!(paths("kernels::flash", "fn f(&self) { self.g(); Self::h(); }"), Vec::<String>::new());
    }

    #[test]
    fn inline_test_modules_resolve_from_themselves() {
        let src = "fn f() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::mask::Mask;\n}\nuse super::blockmap::B;\n";
        assert_eq!(
            paths("contract::spec", src),
            ["contract::spec", "contract::mask::Mask", "contract::blockmap::B"]
        );
    }

    #[test]
    fn follows_root_reexports() {
        let g = graph(&[
            (
                "lib.rs",
                "pub mod error;\npub mod kernels;\npub use error::{Error, Result};\npub use kernels::{Attention as Attn};\n",
            ),
            ("error.rs", "pub enum Error {}"),
            ("kernels/mod.rs", "pub struct Attention;"),
            ("contract/spec.rs", "fn f() -> crate::Result<()> { let _: crate::Attn; Err(crate::Error::X) }"),
        ]);
        let edges: Vec<(&str, &str)> = g.edges.keys().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(edges, [("contract::spec", "error"), ("contract::spec", "kernels")]);
        assert!(
            g.upward(LAYERS)[0]
                .starts_with("contract::spec imports kernels (layer 3 > 1) at src/contract/spec.rs:1")
        );
    }

    #[test]
    fn resolves_to_the_deepest_module_file() {
        let g = graph(&[
            ("contract/mod.rs", "pub mod spec;\npub use spec::AttnSpec;"),
            ("contract/spec.rs", "pub struct AttnSpec;"),
            (
                "runtime/device.rs",
                "use crate::contract::spec::AttnSpec;\nuse crate::contract::AttnSpec as A;\n",
            ),
        ]);
        let edges: Vec<(&str, &str)> = g.edges.keys().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(edges, [("runtime::device", "contract"), ("runtime::device", "contract::spec")]);
        assert!(g.problems(LAYERS).is_empty(), "{:?}", g.problems(LAYERS));
    }

    #[test]
    fn flags_an_upward_import() {
        let g = graph(&[
            (
                "kernels/flash.rs",
                "use crate::runtime::Gpu;\n\nfn f() {\n    let _ = crate::measure::tune::cached();\n}\n",
            ),
            ("runtime/mod.rs", "pub struct Gpu;"),
            ("measure/tune.rs", "pub fn cached() {}"),
        ]);
        assert_eq!(
            g.problems(LAYERS),
            ["kernels::flash imports measure::tune (layer 4 > 3) at src/kernels/flash.rs:4"]
        );
    }

    #[test]
    fn flags_a_module_in_no_layer() {
        let g = graph(&[
            ("bench.rs", "use crate::error::Error;"),
            ("error.rs", ""),
            ("cli/mod.rs", "use crate::app::X;"),
        ]);
        let problems = g.problems(LAYERS);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("top-level module `bench` is in no layer; add it to LAYERS"),
            "{problems:?}"
        );
    }

    #[test]
    fn finds_cycles_but_not_parent_child_pairs() {
        let g = graph(&[
            // A parent re-exporting its child and the child naming the parent: no cycle.
            ("kernels/mod.rs", "pub mod flash;\npub use flash::FlashConfig;\nuse self::flash::X;\n"),
            ("kernels/flash.rs", "use super::ShaderVariant;\nuse crate::kernels::Kernel;\n"),
            // Two siblings naming each other: a cycle.
            ("runtime/device.rs", "use super::cache::Cache;"),
            ("runtime/cache.rs", "use crate::runtime::device::Gpu;"),
        ]);
        assert_eq!(g.cycles(), [vec!["runtime::cache".to_string(), "runtime::device".to_string()]]);
        let problems = g.problems(LAYERS);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("cycle among 2 modules [runtime::cache, runtime::device]: runtime::cache -> runtime::device -> runtime::cache"),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("runtime::device -> runtime::cache at src/runtime/device.rs:1"),
            "{problems:?}"
        );
    }

    #[test]
    fn finds_longer_cycles() {
        let g = graph(&[
            ("error.rs", ""),
            ("contract/a.rs", "use crate::contract::b::X;"),
            ("contract/b.rs", "use crate::contract::c::X;"),
            ("contract/c.rs", "use crate::contract::a::X;\nuse crate::error::Error;"),
        ]);
        assert_eq!(g.cycles().len(), 1);
        assert_eq!(g.cycle_path(&g.cycles()[0]), "contract::a -> contract::b -> contract::c -> contract::a");
    }
}
