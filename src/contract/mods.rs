//! Attention modifications (FlexAttention's `score_mod` and `mask_mod`), written in WGSL
//! and compiled into the kernels, with the same rule in Rust for the oracle.
//!
//! A module defines any of ([`SIGNATURES`]; indices as FlexAttention's: `q_idx` is the query
//! row 0..N, `kv_idx` the key 0..M; the constants `N_Q` and `N_KV` are N and M, so
//! bottom-right-aligned causal is `q_idx + N_KV - N_Q >= kv_idx`):
//!
//! ```wgsl
//! fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32
//! fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool
//! fn score_mod_grad(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32
//! ```
//!
//! `score_mod` applies to the scaled score (after the built-in ALiBi bias) before the
//! softmax; `mask_mod` is ANDed with every other rule (causal, window, sparse masks); a
//! function left out is the identity (`score`, `true`, `1`). [`Mods::wgsl`] parses and
//! validates a module with naga before any kernel sees it, so a mistake is reported against
//! the user's own file and lines. The named mods ([`Named`]) carry their Rust rule; a module
//! from a file gets one with [`Mods::with_rule`] (the oracle refuses mods without one).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::error::{Error, Result};

/// The three functions a mod module may define, as the kernels call them.
pub const SIGNATURES: [&str; 3] = [
    "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32",
    "fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool",
    "fn score_mod_grad(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32",
];

/// Where a rule is evaluated: batch, query head, query row `q` (0..N), key `kv` (0..M), and
/// N, M (WGSL's `N_Q`, `N_KV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// Batch.
    pub b: usize,
    /// Query head.
    pub h: usize,
    /// Query row, 0..N.
    pub q: usize,
    /// Key, 0..M.
    pub kv: usize,
    /// Query rows N.
    pub n: usize,
    /// Keys M.
    pub m: usize,
}

impl At {
    /// The query's position − the key's: `q + M − N − kv` (bottom-right aligned; ≥ 0 is causal).
    pub fn distance(&self) -> i64 {
        self.q as i64 + self.m as i64 - self.n as i64 - self.kv as i64
    }
}

/// A mod's rule in Rust, evaluated by the oracle in f64.
pub trait ModRule: Send + Sync {
    /// `score_mod`.
    fn score(&self, score: f64, _at: At) -> f64 {
        score
    }
    /// `mask_mod`.
    fn mask(&self, _at: At) -> bool {
        true
    }
    /// `score_mod_grad`: d score_mod / d score.
    fn score_grad(&self, _score: f64, _at: At) -> f64 {
        1.0
    }
}

/// The closure type of [`RuleFns::score`].
pub(crate) type ScoreFn = Box<dyn Fn(f64, At) -> f64 + Send + Sync>;
/// The closure type of [`RuleFns::mask`].
pub(crate) type MaskFn = Box<dyn Fn(At) -> bool + Send + Sync>;

/// A Rust rule from closures (for a WGSL file's rule written beside it).
pub struct RuleFns {
    /// `score_mod`; `None`: the identity.
    pub score: Option<ScoreFn>,
    /// `mask_mod`; `None`: every key visible.
    pub mask: Option<MaskFn>,
}

impl ModRule for RuleFns {
    fn score(&self, s: f64, at: At) -> f64 {
        self.score.as_ref().map_or(s, |f| f(s, at))
    }
    fn mask(&self, at: At) -> bool {
        self.mask.as_ref().is_none_or(|f| f(at))
    }
}

/// Score and mask modifications for one attention call: WGSL for the kernels, a Rust rule
/// for the oracle.
#[derive(Clone)]
pub struct Mods {
    name: String,
    source: Arc<str>,
    score: bool,
    mask: bool,
    grad: bool,
    mask_uses: [bool; 2],
    /// Whether any function has a loop (counted against a step budget in the kernels).
    loops: bool,
    rule: Option<Arc<dyn ModRule>>,
    hash: u64,
    buffers: Vec<ModBuffer>,
}

/// The element type of a mod buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Element {
    /// `f32`.
    F32,
    /// `u32` (given as whole numbers ≥ 0).
    U32,
    /// `i32` (given as whole numbers).
    I32,
}

/// A buffer a mod module reads, declared in the module as
/// `@group(1) @binding(N) var<storage, read> NAME: array<T>;` (T = f32, u32 or i32) — a bias
/// table, per-head parameters, document ids — and given its values with [`Mods::with_buffer`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModBuffer {
    /// Its name in the module.
    pub name: String,
    /// Its binding number in group 1.
    pub binding: u32,
    /// Its element type.
    pub element: Element,
    /// Its values as 32-bit words (`None` until given).
    pub words: Option<Arc<Vec<u32>>>,
}

impl fmt::Debug for Mods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mods")
            .field("name", &self.name)
            .field("score_mod", &self.score)
            .field("mask_mod", &self.mask)
            .field("score_mod_grad", &self.grad)
            .field("rule", &self.rule.is_some())
            .finish()
    }
}

impl PartialEq for Mods {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.source == other.source
    }
}

/// Most bytes of WGSL a mod module may have.
pub const MOD_SOURCE_BYTES: usize = 256 << 10;
/// Most bytes of private memory (`var<private>` and function variables, all functions
/// together) a mod module may declare: every invocation of a kernel holds its own copy.
pub const MOD_PRIVATE_BYTES: u64 = 16 << 10;
/// Most IR operations a mod module may expand to once every call is inlined (drivers inline
/// all calls: a chain of functions each calling the previous twice doubles per level).
pub const MOD_EXPANDED_OPS: u64 = 200_000;

/// The names the engine declares beside a mod (the step budget, the score check, the sizes)
/// and the ones it gives the user's functions.
const RESERVED: [&str; 8] =
    ["N_Q", "N_KV", "MOD_STEPS", "mod_steps", "mod_overrun", "mod_bad_score", "mods_nan", "user_score_mod"];

/// What the user's module-level names are prefixed with in the kernels (see `count_steps`),
/// so they cannot collide with a kernel's own (`BR`, `tile_visible`, …).
const USER_PREFIX: &str = "umod_";

/// `name:line: ` for a span of the user's text (which comes first in every assembled module).
fn at(name: &str, source: &str, span: naga::Span) -> String {
    if span.is_defined() && (span.to_range().is_some_and(|r| r.end <= source.len())) {
        format!("{name}:{}: ", span.location(source).line_number)
    } else {
        format!("{name}: ")
    }
}

/// A declaration in the user's text of a name the engine reserves (`RESERVED`), by its
/// tokens: used only to explain a parse error (a redefinition) against the user's line.
fn declares_reserved(source: &str) -> Option<(usize, &'static str)> {
    for (i, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let words: Vec<&str> =
            code.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
        for pair in words.windows(2) {
            if matches!(pair[0], "fn" | "var" | "const" | "let" | "struct" | "alias" | "override" | "private")
                && let Some(r) = RESERVED.iter().find(|r| pair[1] == **r)
            {
                return Some((i + 1, r));
            }
        }
    }
    None
}

/// What a mod module may declare, checked on its parsed module before any kernel compiles it
/// (errors name the file and line): no workgroup memory, no overrides, 32-bit types, at most
/// [`MOD_PRIVATE_BYTES`] of private memory and [`MOD_EXPANDED_OPS`] operations with calls
/// inlined.
fn check_resources(name: &str, source: &str, module: &naga::Module) -> Result<()> {
    let err = |span: naga::Span, message: String| Error::Shader {
        name: name.to_string(),
        message: format!("{}{message}", at(name, source, span)),
    };
    let gctx = module.to_ctx();
    let size =
        |ty: naga::Handle<naga::Type>| module.types[ty].inner.try_size(gctx).map_or(u64::MAX, u64::from);
    if let Some((h, _)) = module.overrides.iter().next() {
        return Err(err(
            module.overrides.get_span(h),
            "`override` declarations are not allowed in a mod (use `const`)".into(),
        ));
    }
    for (h, ty) in module.types.iter() {
        let scalar = match ty.inner {
            naga::TypeInner::Scalar(s) | naga::TypeInner::Vector { scalar: s, .. } => Some(s),
            naga::TypeInner::Matrix { scalar, .. } => Some(scalar),
            _ => None,
        };
        if scalar.is_some_and(|s| s.width != 4 && s.kind != naga::ScalarKind::Bool) {
            return Err(err(
                module.types.get_span(h),
                "a mod computes in 32-bit types (f32, u32, i32): f16 and other widths are not allowed".into(),
            ));
        }
    }
    // names inside functions and structs share one namespace when the module is written
    // back (naga's namer): a local `mod_overrun` would rename the engine's
    for (h, f) in module.functions.iter() {
        let names = f
            .arguments
            .iter()
            .filter_map(|a| a.name.as_deref())
            .chain(f.local_variables.iter().filter_map(|(_, v)| v.name.as_deref()))
            .chain(f.named_expressions.values().map(String::as_str));
        if let Some(r) = names.into_iter().find(|n| RESERVED.contains(n)) {
            return Err(err(
                module.functions.get_span(h),
                format!(
                    "`{r}` is a name the engine declares beside a mod (reserved: {})",
                    RESERVED.join(", ")
                ),
            ));
        }
    }
    for (h, ty) in module.types.iter() {
        if let naga::TypeInner::Struct { members, .. } = &ty.inner
            && let Some(r) = members.iter().filter_map(|m| m.name.as_deref()).find(|n| RESERVED.contains(n))
        {
            return Err(err(
                module.types.get_span(h),
                format!(
                    "`{r}` is a name the engine declares beside a mod (reserved: {})",
                    RESERVED.join(", ")
                ),
            ));
        }
    }
    // conversions and literals carry their width without a type
    for (h, f) in module.functions.iter() {
        if f.expressions.iter().any(|(_, e)| {
            matches!(e, naga::Expression::As { kind, convert: Some(w), .. } if *w != 4 && *kind != naga::ScalarKind::Bool)
                || matches!(e, naga::Expression::Literal(naga::Literal::F16(_) | naga::Literal::F64(_) | naga::Literal::I64(_) | naga::Literal::U64(_)))
        }) {
            return Err(err(
                module.functions.get_span(h),
                "a mod computes in 32-bit types (f32, u32, i32): f16 and other widths are not allowed".into(),
            ));
        }
    }
    let mut private = 0u64;
    for (h, g) in module.global_variables.iter() {
        match g.space {
            naga::AddressSpace::WorkGroup => {
                return Err(err(
                    module.global_variables.get_span(h),
                    format!(
                        "var<workgroup> `{}`: a mod runs per score, it may not declare workgroup memory",
                        g.name.as_deref().unwrap_or("?")
                    ),
                ));
            }
            naga::AddressSpace::Private => private = private.saturating_add(size(g.ty)),
            _ => {}
        }
    }
    for (_, f) in module.functions.iter() {
        for (_, v) in f.local_variables.iter() {
            private = private.saturating_add(size(v.ty));
        }
    }
    if private > MOD_PRIVATE_BYTES {
        return Err(err(
            naga::Span::UNDEFINED,
            format!(
                "declares {private} bytes of private memory (var<private> and function variables); a mod may declare at most {MOD_PRIVATE_BYTES} (every invocation holds its own copy)"
            ),
        ));
    }
    // operations with calls inlined, callees first (WGSL has no recursion: naga orders
    // functions so that a callee precedes its callers)
    let mut expanded: Vec<u64> = Vec::with_capacity(module.functions.len());
    for (h, f) in module.functions.iter() {
        let mut ops = f.expressions.len() as u64;
        count_ops(&f.body, &expanded, &mut ops);
        if ops > MOD_EXPANDED_OPS {
            return Err(err(
                module.functions.get_span(h),
                format!(
                    "`{}` expands to more than {MOD_EXPANDED_OPS} operations once its calls are inlined (drivers inline every call); call fewer functions, or loop",
                    f.name.as_deref().unwrap_or("?")
                ),
            ));
        }
        expanded.push(ops);
    }
    Ok(())
}

/// Adds to `ops` the statements of `block` and, for each call, its callee's expanded
/// operations (`expanded`, by function index).
fn count_ops(block: &naga::Block, expanded: &[u64], ops: &mut u64) {
    for stmt in block.iter() {
        *ops = ops.saturating_add(1);
        match stmt {
            naga::Statement::Call { function, .. } => {
                *ops = ops.saturating_add(expanded.get(function.index()).copied().unwrap_or(u64::MAX));
            }
            naga::Statement::Loop { body, continuing, .. } => {
                count_ops(body, expanded, ops);
                count_ops(continuing, expanded, ops);
            }
            naga::Statement::If { accept, reject, .. } => {
                count_ops(accept, expanded, ops);
                count_ops(reject, expanded, ops);
            }
            naga::Statement::Switch { cases, .. } => {
                for c in cases {
                    count_ops(&c.body, expanded, ops);
                }
            }
            naga::Statement::Block(inner) => count_ops(inner, expanded, ops),
            _ => {}
        }
    }
}

/// `full` (a module assembled around the user's text, which comes first, so naga's line
/// numbers are the user's) parsed and validated; errors name the file `name` and the line.
fn parse(name: &str, full: &str) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let err = |message: String| Error::Shader { name: name.to_string(), message };
    let module =
        naga::front::wgsl::parse_str(full).map_err(|e| err(e.emit_to_string_with_path(full, name)))?;
    let info =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| err(e.emit_to_string_with_path(full, name)))?;
    Ok((module, info))
}

/// The reserved globals of the step budget, as handles in one parsed module.
#[derive(Clone, Copy)]
struct StepBudget {
    steps: naga::Handle<naga::GlobalVariable>,
    overrun: naga::Handle<naga::GlobalVariable>,
    budget: naga::Handle<naga::Constant>,
}

/// `assembled` (a module with the reserved `MOD_STEPS`, `mod_steps` and `mod_overrun`) with
/// every loop of every function counting its iterations: each iteration first adds one to
/// `mod_steps` (per invocation, across calls) and, past `MOD_STEPS`, sets `mod_overrun` and
/// breaks. Adapters stop or reset on long loops (lavapipe silently leaves a loop after 65 535
/// iterations of a kernel's loop nest, real drivers' watchdogs reset the device): with the
/// budget below the adapter's, the engine knows when a mod did not finish. Rewritten on
/// naga's parsed module and written back as WGSL, so comments and strings cannot fool it.
fn count_steps(name: &str, assembled: &str) -> Result<String> {
    let (mut module, _) = parse(name, assembled)?;
    let global =
        |n: &str| module.global_variables.iter().find(|(_, g)| g.name.as_deref() == Some(n)).map(|(h, _)| h);
    let budget =
        module.constants.iter().find(|(_, c)| c.name.as_deref() == Some("MOD_STEPS")).map(|(h, _)| h);
    let (Some(steps), Some(overrun), Some(budget)) = (global("mod_steps"), global("mod_overrun"), budget)
    else {
        return Err(Error::Shader {
            name: name.into(),
            message: "the step budget's globals are missing".into(),
        });
    };
    let b = StepBudget { steps, overrun, budget };
    // the user's module-level names get a prefix, so that none collides with a kernel's
    let user = |n: &mut Option<String>, engine: &[&str]| {
        if let Some(x) = n.as_mut().filter(|x| !engine.contains(&x.as_str())) {
            *x = format!("{USER_PREFIX}{x}");
        }
    };
    for (_, f) in module.functions.iter_mut() {
        let naga::Function { body, expressions, .. } = f;
        count_loops(body, expressions, b);
        // the user's score_mod is called through the check below (calls name handles, so the
        // user's own calls to it stay right)
        if f.name.as_deref() == Some("score_mod") {
            f.name = Some("user_score_mod".into());
        }
        user(&mut f.name, &["user_score_mod", "mask_mod", "score_mod_grad", "mods_nan"]);
    }
    for (_, c) in module.constants.iter_mut() {
        user(&mut c.name, &["N_Q", "N_KV", "MOD_STEPS"]);
    }
    for (_, g) in module.global_variables.iter_mut() {
        user(&mut g.name, &["N_Q", "N_KV", "mod_steps", "mod_overrun", "mod_bad_score"]);
    }
    let named: Vec<_> =
        module.types.iter().filter(|(_, t)| t.name.is_some()).map(|(h, t)| (h, t.clone())).collect();
    for (h, mut t) in named {
        user(&mut t.name, &[]);
        module.types.replace(h, t);
    }
    let info =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| Error::Shader {
                name: name.into(),
                message: format!("with its step budget: {e}"),
            })?;
    let written = naga::back::wgsl::write_string(&module, &info, naga::back::wgsl::WriterFlags::empty())
        .map_err(|e| Error::Shader { name: name.into(), message: format!("written back: {e}") })?;
    Ok(written + CHECKED_SCORE)
}

/// `mods_nan`: NaN with the reason in its payload (1: loop budget, 2: score), as
/// `shaders/mods_none.wgsl` defines it for kernels without mods.
const MODS_NAN: &str =
    "fn mods_nan() -> f32 {\n    return bitcast<f32>(select(0x7fc00001u, 0x7fc00002u, mod_bad_score));\n}\n";

/// The kernels' `score_mod`: the user's, and a NaN or +inf result (not a score; −inf masks
/// the key) marks the invocation, which then writes `mods_nan()`. Tested on the bits: WGSL
/// lets an implementation assume floats are finite.
const CHECKED_SCORE: &str = "
fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    let s = user_score_mod(score, b, h, q_idx, kv_idx);
    let bits = bitcast<u32>(s);
    if (bits & 0x7f800000u) == 0x7f800000u && bits != 0xff800000u {
        mod_bad_score = true;
        mod_overrun = true;
    }
    return s;
}
";

/// The payload of `mods_nan()` for a score_mod that returned NaN or +inf.
pub(crate) const BAD_SCORE_NAN: u32 = 0x7fc0_0002;

/// Whether `block` has a loop, nested ones included.
fn has_loop(block: &naga::Block) -> bool {
    block.iter().any(|stmt| match stmt {
        naga::Statement::Loop { .. } => true,
        naga::Statement::If { accept, reject, .. } => has_loop(accept) || has_loop(reject),
        naga::Statement::Switch { cases, .. } => cases.iter().any(|c| has_loop(&c.body)),
        naga::Statement::Block(inner) => has_loop(inner),
        _ => false,
    })
}

/// Puts the budget's step at the start of every loop body in `block`, nested ones included.
fn count_loops(block: &mut naga::Block, ex: &mut naga::Arena<naga::Expression>, b: StepBudget) {
    for stmt in block.iter_mut() {
        match stmt {
            naga::Statement::Loop { body, continuing, .. } => {
                count_loops(body, ex, b);
                count_loops(continuing, ex, b);
                body.splice(0..0, step(ex, b));
            }
            naga::Statement::If { accept, reject, .. } => {
                count_loops(accept, ex, b);
                count_loops(reject, ex, b);
            }
            naga::Statement::Switch { cases, .. } => {
                for c in cases {
                    count_loops(&mut c.body, ex, b);
                }
            }
            naga::Statement::Block(inner) => count_loops(inner, ex, b),
            _ => {}
        }
    }
}

/// `mod_steps += 1u; if mod_steps > MOD_STEPS { mod_overrun = true; break; }`
fn step(ex: &mut naga::Arena<naga::Expression>, b: StepBudget) -> naga::Block {
    use naga::{BinaryOperator, Expression, Literal, Span, Statement};
    let sp = Span::UNDEFINED;
    // expressions that need no emitting first, then the emitted ones in one range
    let steps = ex.append(Expression::GlobalVariable(b.steps), sp);
    let overrun = ex.append(Expression::GlobalVariable(b.overrun), sp);
    let one = ex.append(Expression::Literal(Literal::U32(1)), sp);
    let yes = ex.append(Expression::Literal(Literal::Bool(true)), sp);
    let budget = ex.append(Expression::Constant(b.budget), sp);
    let load = ex.append(Expression::Load { pointer: steps }, sp);
    let next = ex.append(Expression::Binary { op: BinaryOperator::Add, left: load, right: one }, sp);
    let over = ex.append(Expression::Binary { op: BinaryOperator::Greater, left: next, right: budget }, sp);
    naga::Block::from_vec(vec![
        Statement::Emit(naga::Range::new_from_bounds(load, over)),
        Statement::Store { pointer: steps, value: next },
        Statement::If {
            condition: over,
            accept: naga::Block::from_vec(vec![
                Statement::Store { pointer: overrun, value: yes },
                Statement::Break,
            ]),
            reject: naga::Block::new(),
        },
    ])
}

impl Mods {
    /// Parses and validates a WGSL mod module named `name` (a file name, for messages):
    /// naga's parser and validator with `N_Q`, `N_KV` and the missing functions supplied
    /// after the user's text (so its line numbers are the file's), then each function
    /// against its signature. Errors name the file and line.
    pub fn wgsl(name: &str, source: &str) -> Result<Self> {
        let err = |message: String| Error::Shader { name: name.to_string(), message };
        if source.len() > MOD_SOURCE_BYTES {
            return Err(err(format!(
                "{} bytes of WGSL; a mod module may have at most {MOD_SOURCE_BYTES}",
                source.len()
            )));
        }
        // a redefinition of a reserved name is explained against the user's line
        let parse = |full: &str| {
            parse(name, full).map_err(|e| match declares_reserved(source) {
                Some((line, r)) => err(format!(
                    "{name}:{line}: `{r}` is a name the engine declares beside a mod (reserved: {})",
                    RESERVED.join(", ")
                )),
                None => e,
            })
        };
        // which of the three it defines, on its parsed module (comments cannot fool it)
        let (bare, _) = parse(&Self::assemble(source, true, true, true, Some((1, 1)), 1))?;
        let defined = |f: &str| bare.functions.iter().any(|(_, x)| x.name.as_deref() == Some(f));
        let (score, mask, grad) = (defined("score_mod"), defined("mask_mod"), defined("score_mod_grad"));
        if !score && !mask {
            return Err(err(format!(
                "defines neither score_mod nor mask_mod; a mod module defines at least one of:\n  {}",
                SIGNATURES.join("\n  ")
            )));
        }
        if grad && !score {
            return Err(err("defines score_mod_grad without score_mod".into()));
        }
        let (module, info) = parse(&Self::assemble(source, score, mask, grad, Some((1, 1)), 1))?;
        if !module.entry_points.is_empty() {
            return Err(err("a mod module may not declare entry points".into()));
        }
        check_resources(name, source, &module)?;
        let mut buffers = Vec::new();
        for (_, g) in module.global_variables.iter() {
            let Some(rb) = &g.binding else { continue };
            let name = g.name.clone().unwrap_or_default();
            let element = match (&g.space, &module.types[g.ty].inner) {
                (
                    naga::AddressSpace::Storage { access },
                    naga::TypeInner::Array { base, size: naga::ArraySize::Dynamic, .. },
                ) if !access.contains(naga::StorageAccess::STORE) && rb.group == 1 => {
                    match module.types[*base].inner {
                        naga::TypeInner::Scalar(naga::Scalar::F32) => Element::F32,
                        naga::TypeInner::Scalar(naga::Scalar::U32) => Element::U32,
                        naga::TypeInner::Scalar(naga::Scalar::I32) => Element::I32,
                        _ => return Err(err(format!("buffer `{name}`: elements must be f32, u32 or i32"))),
                    }
                }
                _ => {
                    return Err(err(format!(
                        "`{name}`: a mod module's only resources are buffers declared as `@group(1) @binding(N) var<storage, read> {name}: array<f32>;` (or u32, i32)"
                    )));
                }
            };
            if let Some(other) = buffers.iter().find(|b: &&ModBuffer| b.binding == rb.binding) {
                return Err(err(format!(
                    "`{name}` and `{}` are both @group(1) @binding({}): each buffer needs its own binding",
                    other.name, rb.binding
                )));
            }
            buffers.push(ModBuffer { name, binding: rb.binding, element, words: None });
        }
        let f32_ty = naga::TypeInner::Scalar(naga::Scalar::F32);
        let u32_ty = naga::TypeInner::Scalar(naga::Scalar::U32);
        let bool_ty = naga::TypeInner::Scalar(naga::Scalar::BOOL);
        let mut mask_uses = [false; 2];
        for (i, (fname, present)) in
            [("score_mod", score), ("mask_mod", mask), ("score_mod_grad", grad)].into_iter().enumerate()
        {
            if !present {
                continue;
            }
            let Some((handle, f)) = module.functions.iter().find(|(_, f)| f.name.as_deref() == Some(fname))
            else {
                return Err(err(format!("no function {fname}")));
            };
            let args: Vec<&naga::TypeInner> = f.arguments.iter().map(|a| &module.types[a.ty].inner).collect();
            let result = f.result.as_ref().map(|r| &module.types[r.ty].inner);
            let want_args: Vec<&naga::TypeInner> = if i == 1 {
                vec![&u32_ty; 4]
            } else {
                std::iter::once(&f32_ty).chain([&u32_ty; 4]).collect()
            };
            let want_result = if i == 1 { &bool_ty } else { &f32_ty };
            if args != want_args || result != Some(want_result) {
                return Err(err(format!("{fname} must be `{}`", SIGNATURES[i])));
            }
            if i == 1 {
                // naga makes an expression per argument up front: an argument is read when
                // something refers to its expression
                let uses = &info[handle];
                for (h, e) in f.expressions.iter() {
                    if let naga::Expression::FunctionArgument(a) = e
                        && (*a as usize) < 2
                        && uses[h].ref_count > 0
                    {
                        mask_uses[*a as usize] = true;
                    }
                }
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut hasher);
        let loops = module.functions.iter().any(|(_, f)| has_loop(&f.body));
        Ok(Self {
            name: name.to_string(),
            source: source.into(),
            score,
            mask,
            grad,
            mask_uses,
            loops,
            rule: None,
            hash: hasher.finish(),
            buffers,
        })
    }

    /// Gives buffer `name` its values (from a `.npy`, say): f32 as they are; u32 and i32
    /// must be whole numbers in range. An error names the buffer and the first bad value.
    pub fn with_buffer(mut self, name: &str, values: &[f64]) -> Result<Self> {
        let declared: Vec<String> = self.buffers.iter().map(|b| b.name.clone()).collect();
        let Some(b) = self.buffers.iter_mut().find(|b| b.name == name) else {
            return Err(Error::Invalid(format!(
                "mod buffer `{name}`: {} declares {}",
                self.name,
                if declared.is_empty() {
                    "no buffers".to_string()
                } else {
                    format!("only {}", declared.join(", "))
                }
            )));
        };
        if b.words.is_some() {
            // given twice, or a named mod's own table: replacing it would silently change the
            // rule the oracle checks against
            return Err(Error::Invalid(format!(
                "mod buffer `{name}` of {} already has its values (a buffer is given once; a named mod's table comes with it)",
                self.name
            )));
        }
        if values.is_empty() {
            return Err(Error::Invalid(format!("mod buffer `{name}` is empty")));
        }
        let bad = |i: usize, v: f64, what: &str| {
            Error::Invalid(format!("mod buffer `{name}`: value {v} at index {i} is not {what}"))
        };
        let words = values
            .iter()
            .enumerate()
            .map(|(i, &v)| match b.element {
                Element::F32 if v.is_finite() && v.abs() <= f32::MAX as f64 => Ok((v as f32).to_bits()),
                Element::F32 => Err(bad(i, v, "a finite f32")),
                Element::U32 if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) => Ok(v as u32),
                Element::U32 => Err(bad(i, v, "a whole number in 0..=4294967295")),
                Element::I32 if v.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(&v) => {
                    Ok(v as i32 as u32)
                }
                Element::I32 => Err(bad(i, v, "a whole number in the i32 range")),
            })
            .collect::<Result<Vec<u32>>>()?;
        b.words = Some(Arc::new(words));
        Ok(self)
    }

    /// The buffers the module declares (with their values once given).
    pub fn buffers(&self) -> &[ModBuffer] {
        &self.buffers
    }

    /// An error naming the first declared buffer without values.
    pub fn check_buffers(&self) -> Result<()> {
        match self.buffers.iter().find(|b| b.words.is_none()) {
            Some(b) => Err(Error::Invalid(format!(
                "{} reads buffer `{}` but no values were given for it (Mods::with_buffer)",
                self.name, b.name
            ))),
            None => Ok(()),
        }
    }

    /// The user's text with `N_Q`, `N_KV` and the missing functions after it.
    fn assemble(
        source: &str,
        score: bool,
        mask: bool,
        grad: bool,
        sizes: Option<(usize, usize)>,
        steps: u32,
    ) -> String {
        let mut s = match sizes {
            Some((n, m)) => format!("{source}\nconst N_Q: u32 = {n}u;\nconst N_KV: u32 = {m}u;\n"),
            None => format!("{source}\nvar<private> N_Q: u32;\nvar<private> N_KV: u32;\n"),
        };
        // the step budget and the score check (see `count_steps`): reserved names, declared
        // after the user's text
        s.push_str(&format!(
            "const MOD_STEPS: u32 = {steps}u;\nvar<private> mod_steps: u32;\nvar<private> mod_overrun: bool;\nvar<private> mod_bad_score: bool;\n"
        ));
        s.push_str(MODS_NAN);
        if !score {
            s.push_str("fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 { return score; }\n");
        }
        if !mask {
            s.push_str("fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool { return true; }\n");
        }
        if !grad && !score {
            s.push_str("fn score_mod_grad(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 { return 1.0; }\n");
        }
        s
    }

    /// Whether the module has loops: the kernels then leave half of an adapter's loop cap to
    /// them ([`Mods::kernel_source`] counts their iterations against what is left).
    pub fn has_loops(&self) -> bool {
        self.loops
    }

    /// The WGSL a kernel includes for an N × M call: the module, the constants, and the
    /// identity for what it leaves out, with every loop of the user's functions counted
    /// against `steps` loop iterations per invocation ([`count_steps`]): past them the loop
    /// breaks and `mod_overrun` is set, which the kernels turn into NaN outputs (never a
    /// plausible number, never a hang).
    pub fn kernel_source(&self, n: usize, m: usize, steps: u32) -> Result<String> {
        count_steps(
            &self.name,
            &Self::assemble(&self.source, self.score, self.mask, self.grad, Some((n, m)), steps),
        )
    }

    /// The same for a kernel whose N and M change per dispatch (decode: a step's T queries
    /// against the len positions cached): `N_Q` and `N_KV` are private variables the kernel
    /// sets before it calls the mods, so a module that uses them in a `const` does not
    /// compile there.
    pub fn kernel_source_per_dispatch(&self, steps: u32) -> Result<String> {
        count_steps(&self.name, &Self::assemble(&self.source, self.score, self.mask, self.grad, None, steps))
    }

    /// An error, against the user's file and line, when the module does not compile with
    /// sizes that change per dispatch ([`Mods::kernel_source_per_dispatch`]): `N_Q` or
    /// `N_KV` used in a `const`.
    pub(crate) fn check_per_dispatch(&self) -> Result<()> {
        let assembled = Self::assemble(&self.source, self.score, self.mask, self.grad, None, 1);
        parse(&self.name, &assembled).map(|_| ()).map_err(|e| match e {
            Error::Shader { name, message } => Error::Shader {
                name,
                message: format!(
                    "{message}\n(decode sets N_Q and N_KV per step: use them inside functions, not in a const)"
                ),
            },
            e => e,
        })
    }

    /// Attaches the rule the oracle evaluates (it must be the same rule as the WGSL).
    pub fn with_rule(mut self, rule: Arc<dyn ModRule>) -> Self {
        self.rule = Some(rule);
        self
    }

    /// The rule, if one is attached.
    pub fn rule(&self) -> Option<&Arc<dyn ModRule>> {
        self.rule.as_ref()
    }

    /// The name for messages (file name or the named mods).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the module defines `score_mod`.
    pub fn has_score_mod(&self) -> bool {
        self.score
    }

    /// Whether the module defines `mask_mod`.
    pub fn has_mask_mod(&self) -> bool {
        self.mask
    }

    /// Whether `score_mod_grad` is known (defined, or `score_mod` is absent): the backward
    /// needs it.
    pub(crate) fn has_grad(&self) -> bool {
        self.grad || !self.score
    }

    /// Whether `mask_mod` reads its batch (`b`) and head (`h`) arguments: a block map is
    /// built per head only when it reads `h`, over batches only when it reads `b`.
    pub fn mask_reads(&self) -> (bool, bool) {
        (self.mask_uses[0], self.mask_uses[1])
    }

    /// A hash of the source, which keys the compiled pipelines.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Every module of `all` as one ([`Mods::and`] in order); `None` when `all` is empty.
    pub fn all_of(all: Vec<Mods>) -> Result<Option<Self>> {
        let mut out: Option<Mods> = None;
        for m in all {
            out = Some(match out {
                Some(a) => a.and(m)?,
                None => m,
            });
        }
        Ok(out)
    }

    /// Two mod modules as one: the first's functions and the second's, which must not
    /// define the same function (e.g. a score file and a mask file). Rules combine likewise.
    pub fn and(self, other: Mods) -> Result<Self> {
        let name = format!("{} + {}", self.name, other.name);
        let both = [("score_mod", self.score && other.score), ("mask_mod", self.mask && other.mask)];
        if let Some((f, _)) = both.iter().find(|(_, b)| *b) {
            return Err(Error::Shader {
                name,
                message: format!(
                    "both define {f}: modules from files combine as one score_mod and one mask_mod (named mods compose among themselves, Named::compose: --mod alibi --mod softcap=30 --mod window=W); put both rules in one file"
                ),
            });
        }
        let source = format!("{}\n{}", self.source, other.source);
        let mut both = Mods::wgsl(&name, &source)?;
        for b in &mut both.buffers {
            b.words = self
                .buffers
                .iter()
                .chain(&other.buffers)
                .find(|x| x.name == b.name)
                .and_then(|x| x.words.clone());
        }
        let rule: Option<Arc<dyn ModRule>> = match (self.rule, other.rule) {
            (Some(a), Some(b)) => Some(Arc::new(Both(a, b))),
            _ => None,
        };
        Ok(Self { rule, ..both })
    }
}

/// Two rules: scores through the first then the second, masks ANDed.
struct Both(Arc<dyn ModRule>, Arc<dyn ModRule>);

impl ModRule for Both {
    fn score(&self, s: f64, at: At) -> f64 {
        self.1.score(self.0.score(s, at), at)
    }
    fn mask(&self, at: At) -> bool {
        self.0.mask(at) && self.1.mask(at)
    }
    fn score_grad(&self, s: f64, at: At) -> f64 {
        self.1.score_grad(self.0.score(s, at), at) * self.0.score_grad(s, at)
    }
}

/// The library of named mods, each WGSL plus its Rust rule. Positions are bottom-right
/// aligned like the contract's: query row `q` sits at `p = q + M − N`.
#[derive(Clone, Debug, PartialEq)]
pub enum Named {
    /// Causal: `kv ≤ p`.
    Causal,
    /// Causal sliding window: `p − window ≤ kv ≤ p`.
    Window(u32),
    /// ALiBi (the paper's slopes for `heads` query heads): `score − slope_h·|p − kv|`.
    Alibi(usize),
    /// Gemma 2's soft-capping: `cap·tanh(score / cap)`.
    Softcap(f32),
    /// Prefix-LM: the first `prefix` keys are visible to every query, the rest causally.
    PrefixLm(u32),
    /// StreamingLLM's attention sinks: the first `sinks` keys plus a causal window.
    Sinks {
        /// Keys always visible.
        sinks: u32,
        /// Causal window behind each query.
        window: u32,
    },
    /// A dilated causal window: keys `p − d·k` for `k = 0..=window / d`.
    Dilated {
        /// Reach of the window.
        window: u32,
        /// Step between visible keys.
        dilation: u32,
    },
    /// Packed documents: one id per key position (M of them); a query at position `p` sees
    /// the keys whose id is its own (the mod reads the ids from a buffer, `doc_ids`).
    Documents(Arc<Vec<u32>>),
    /// T5's relative-position bias: `score + table[h][bucket(kv − p)]` with T5's bidirectional
    /// buckets (32 buckets, max distance 128: exact up to 7 apart, then logarithmic), the
    /// table `[H, 32]` read from a buffer (`t5_bias`).
    T5(Arc<Vec<f32>>),
}

/// Buckets of [`Named::T5`].
pub const T5_BUCKETS: usize = 32;

/// T5's bidirectional relative-position bucket of `rel = kv − p` (32 buckets, max distance
/// 128), in integers: for |rel| ≥ 8 T5's `8 + ⌊ln(|rel|/8) / ln(16) · 8⌋` is
/// `8 + ⌊log₂(rel²)⌋ − 6`, which needs no floating point (no rounding at the boundaries).
pub(crate) fn t5_bucket(rel: i64) -> usize {
    let base = if rel > 0 { 16 } else { 0 };
    let n = rel.unsigned_abs();
    if n < 8 {
        return base + n as usize;
    }
    let log = 63 - (n * n).leading_zeros() as usize; // ⌊log₂(n²)⌋
    base + (8 + log - 6).min(15)
}

impl Named {
    /// Parses `causal`, `window=W`, `alibi`, `softcap=C`, `prefix=P`, `sinks=K,window=W`,
    /// `dilated=W,dilation=D` (`heads` is the call's query heads, for ALiBi's slopes).
    pub fn parse(text: &str, heads: usize) -> Result<Self> {
        let bad = |why: String| Error::Invalid(format!("named mod `{text}`: {why}"));
        let mut kv: Vec<(&str, Option<&str>)> = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            match part.split_once('=') {
                Some((k, v)) => kv.push((k.trim(), Some(v.trim()))),
                None => kv.push((part, None)),
            }
        }
        let get = |key: &str| kv.iter().find(|(k, _)| *k == key).and_then(|(_, v)| *v);
        let int = |key: &str, min: u32| -> Result<u32> {
            let v = get(key).ok_or_else(|| bad(format!("needs {key}=…")))?;
            let x: u32 = v.parse().map_err(|e| bad(format!("{key}={v}: {e}")))?;
            // the WGSL compares positions as i32
            if x < min || x > i32::MAX as u32 {
                return Err(bad(format!("{key}={x}: must be in {min}..={}", i32::MAX)));
            }
            Ok(x)
        };
        if let Some((_, (k, _))) =
            kv.iter().enumerate().find(|(i, (k, _))| kv[..*i].iter().any(|(j, _)| j == k))
        {
            return Err(bad(format!("`{k}` is given twice")));
        }
        let named = match kv.first().map(|(k, _)| *k) {
            Some("causal") => Named::Causal,
            Some("window") => Named::Window(int("window", 0)?),
            Some("alibi") => Named::Alibi(heads),
            Some("softcap") => {
                let v = get("softcap").ok_or_else(|| bad("needs softcap=CAP".into()))?;
                let cap: f32 = v.parse().map_err(|e| bad(format!("softcap={v}: {e}")))?;
                if !(cap.is_finite() && cap > 0.0) {
                    return Err(bad("the cap must be positive and finite".into()));
                }
                Named::Softcap(cap)
            }
            Some("prefix") => Named::PrefixLm(int("prefix", 0)?),
            Some("sinks") => Named::Sinks { sinks: int("sinks", 0)?, window: int("window", 0)? },
            Some("dilated") => Named::Dilated { window: int("dilated", 0)?, dilation: int("dilation", 1)? },
            Some("t5") => {
                return Err(bad("t5 needs its bias table, [H, 32] (Named::T5(table))".into()));
            }
            Some("documents") => {
                return Err(bad("documents needs its ids, one per key (Named::Documents(ids))".into()));
            }
            _ => {
                return Err(bad(
                    "choose causal, window=W, alibi, softcap=C, prefix=P, sinks=K,window=W, dilated=W,dilation=D"
                        .into(),
                ));
            }
        };
        let known: &[&str] = match named {
            Named::Sinks { .. } => &["sinks", "window"],
            Named::Dilated { .. } => &["dilated", "dilation"],
            _ => &[],
        };
        if let Some((k, _)) = kv.iter().skip(1).find(|(k, _)| !known.contains(k)) {
            return Err(bad(format!("unknown parameter `{k}`")));
        }
        Ok(named)
    }

    /// This mod as WGSL with its Rust rule.
    pub fn mods(&self) -> Mods {
        Named::compose(std::slice::from_ref(self)).expect("the named mods are valid WGSL")
    }

    /// Several named mods as one module (`--mod alibi --mod softcap=30 --mod window=512`):
    /// masks ANDed, scores applied in the order given (each one's result is the next one's
    /// score; their gradients multiply by the chain rule), each table at its own binding
    /// (group 1, from 0 in order). The rule composes the same way.
    pub fn compose(all: &[Named]) -> Result<Mods> {
        let mut source = String::new();
        let (mut masks, mut scores, mut names, mut tables) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, n) in all.iter().enumerate() {
            // one named mod keeps the plain names (`score_mod`, `doc_ids`); several get suffixes
            let sfx = if all.len() == 1 { String::new() } else { format!("_{i}") };
            let (name, text, table) = n.source(&sfx, tables.len() as u32);
            source.push_str(&text);
            names.push(name);
            tables.extend(table);
            if n.is_mask() {
                masks.push(format!("mask_mod{sfx}(b, h, q_idx, kv_idx)"));
            } else {
                scores.push(sfx);
            }
        }
        if names.is_empty() {
            return Err(Error::Invalid("no named mods to compose".into()));
        }
        if all.len() > 1 {
            const ARGS: &str = "b: u32, h: u32, q_idx: u32, kv_idx: u32";
            if !masks.is_empty() {
                source.push_str(&format!(
                    "fn mask_mod({ARGS}) -> bool {{\n    return {};\n}}\n",
                    masks.join(" && ")
                ));
            }
            if !scores.is_empty() {
                let (mut score, mut grad) = (String::new(), String::new());
                for sfx in &scores {
                    score.push_str(&format!("    s = score_mod{sfx}(s, b, h, q_idx, kv_idx);\n"));
                    grad.push_str(&format!(
                        "    g = g * score_mod_grad{sfx}(s, b, h, q_idx, kv_idx);\n    s = score_mod{sfx}(s, b, h, q_idx, kv_idx);\n"
                    ));
                }
                source.push_str(&format!(
                    "fn score_mod(score: f32, {ARGS}) -> f32 {{\n    var s = score;\n{score}    return s;\n}}\n\
                     fn score_mod_grad(score: f32, {ARGS}) -> f32 {{\n    var s = score;\n    var g = 1.0;\n{grad}    return g;\n}}\n"
                ));
            }
        }
        // as two named mods joined by `Mods::and` were named (the CLI shows them as flags)
        let label = names.iter().map(|n| format!("named mod {n}")).collect::<Vec<_>>().join(" + ");
        let mut mods = Mods::wgsl(&label, &source)?;
        for (buffer, values) in tables {
            mods = mods.with_buffer(&buffer, &values)?;
        }
        let rule: Arc<dyn ModRule> =
            all[1..].iter().fold(Arc::new(all[0].clone()), |acc, n| Arc::new(Both(acc, Arc::new(n.clone()))));
        Ok(mods.with_rule(rule))
    }

    /// Whether this mod is a mask (the others change scores).
    fn is_mask(&self) -> bool {
        !matches!(self, Named::Alibi(_) | Named::Softcap(_) | Named::T5(_))
    }

    /// This mod's name, its WGSL with `sfx` after every name it declares (its functions,
    /// helpers and table), and its table (buffer name and values) at group 1 `binding`.
    fn source(&self, sfx: &str, binding: u32) -> (String, String, Option<(String, Vec<f64>)>) {
        // p = q + N_KV - N_Q as i32; d = p - kv
        const DIST: &str = "let d = i32(q_idx) + i32(N_KV) - i32(N_Q) - i32(kv_idx);";
        let mask = |body: &str| {
            format!(
                "fn mask_mod{sfx}(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {{\n    {DIST}\n    return {body};\n}}\n"
            )
        };
        let mut table = None;
        let (name, source) = match self {
            Named::Causal => ("causal".to_string(), mask("d >= 0")),
            Named::Window(w) => (format!("window={w}"), mask(&format!("d >= 0 && d <= {w}"))),
            Named::PrefixLm(p) => (format!("prefix={p}"), mask(&format!("kv_idx < {p}u || d >= 0"))),
            Named::Sinks { sinks, window } => (
                format!("sinks={sinks},window={window}"),
                mask(&format!("d >= 0 && (kv_idx < {sinks}u || d <= {window})")),
            ),
            Named::Dilated { window, dilation } => (
                format!("dilated={window},dilation={dilation}"),
                mask(&format!("d >= 0 && d <= {window} && d % {dilation} == 0")),
            ),
            Named::T5(values) => {
                table = Some((format!("t5_bias{sfx}"), values.iter().map(|&x| x as f64).collect()));
                (
                    format!("t5({} heads)", values.len() / T5_BUCKETS),
                    format!(
                        "@group(1) @binding({binding}) var<storage, read> t5_bias{sfx}: array<f32>;\n\
                         fn t5_bucket{sfx}(rel: i32) -> u32 {{\n    let base = select(0u, 16u, rel > 0);\n    let n = u32(abs(rel));\n    if n < 8u {{\n        return base + n;\n    }}\n    if n >= 128u {{\n        return base + 15u;\n    }}\n    return base + min(8u + u32(firstLeadingBit(n * n)) - 6u, 15u);\n}}\n\
                         fn score_mod{sfx}(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {{\n    let p = i32(q_idx) + i32(N_KV) - i32(N_Q);\n    return score + t5_bias{sfx}[h * 32u + t5_bucket{sfx}(i32(kv_idx) - p)];\n}}\n\
                         fn score_mod_grad{sfx}(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {{\n    return 1.0;\n}}\n"
                    ),
                )
            }
            Named::Documents(ids) => {
                table = Some((format!("doc_ids{sfx}"), ids.iter().map(|&x| x as f64).collect()));
                (
                    format!("documents({})", ids.len()),
                    format!(
                        "@group(1) @binding({binding}) var<storage, read> doc_ids{sfx}: array<u32>;\n\
                         fn mask_mod{sfx}(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {{\n    let p = i32(q_idx) + i32(N_KV) - i32(N_Q);\n    return p >= 0 && doc_ids{sfx}[u32(p)] == doc_ids{sfx}[kv_idx];\n}}\n"
                    ),
                )
            }
            Named::Softcap(cap) => (
                format!("softcap={cap}"),
                format!(
                    "fn score_mod{sfx}(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {{\n    return {cap:?} * tanh(score / {cap:?});\n}}\n\
                     fn score_mod_grad{sfx}(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {{\n    let t = tanh(score / {cap:?});\n    return 1.0 - t * t;\n}}\n"
                ),
            ),
            Named::Alibi(heads) => {
                let slopes = crate::contract::shape::alibi_slopes(*heads);
                let list: Vec<String> = slopes.iter().map(|s| format!("{s:?}")).collect();
                (
                    "alibi".to_string(),
                    format!(
                        "var<private> ALIBI_SLOPES{sfx}: array<f32, {n}> = array<f32, {n}>({list});\n\
                         fn score_mod{sfx}(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {{\n    {DIST}\n    return score - ALIBI_SLOPES{sfx}[h] * f32(abs(d));\n}}\n\
                         fn score_mod_grad{sfx}(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {{\n    return 1.0;\n}}\n",
                        n = heads.max(&1),
                        list = list.join(", ")
                    ),
                )
            }
        };
        (name, source, table)
    }
}

impl ModRule for Named {
    fn score(&self, s: f64, at: At) -> f64 {
        match self {
            Named::Softcap(cap) => {
                let c = *cap as f64;
                c * (s / c).tanh()
            }
            Named::T5(table) => {
                let rel = -at.distance();
                s + table[at.h * T5_BUCKETS + t5_bucket(rel)] as f64
            }
            // the f32 slope, as the kernels (and the built-in ALiBi) use it
            Named::Alibi(heads) => {
                s - crate::contract::shape::alibi_slope(*heads, at.h) as f64
                    * at.distance().unsigned_abs() as f64
            }
            _ => s,
        }
    }
    fn mask(&self, at: At) -> bool {
        let (d, kv) = (at.distance(), at.kv as u64);
        match *self {
            Named::Causal => d >= 0,
            Named::Window(w) => d >= 0 && d <= w as i64,
            Named::PrefixLm(p) => kv < p as u64 || d >= 0,
            Named::Sinks { sinks, window } => d >= 0 && (kv < sinks as u64 || d <= window as i64),
            Named::Dilated { window, dilation } => d >= 0 && d <= window as i64 && d % dilation as i64 == 0,
            Named::Documents(ref ids) => {
                let p = at.q as i64 + at.m as i64 - at.n as i64;
                p >= 0 && ids.get(p as usize).is_some_and(|x| Some(x) == ids.get(at.kv))
            }
            Named::Softcap(_) | Named::Alibi(_) | Named::T5(_) => true,
        }
    }
    fn score_grad(&self, s: f64, _at: At) -> f64 {
        match self {
            Named::Softcap(cap) => {
                let t = (s / *cap as f64).tanh();
                1.0 - t * t
            }
            _ => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_line() {
        let e = Mods::wgsl("my_mod.wgsl", "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {\n    return score * 2.0 +;\n}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("my_mod.wgsl:2"), "{e}");
        let e =
            Mods::wgsl("m.wgsl", "fn mask_mod(b: u32, h: u32, q: u32) -> bool { return true; }").unwrap_err();
        assert!(e.to_string().contains("mask_mod must be"), "{e}");
        let e = Mods::wgsl("m.wgsl", "fn helper() {}").unwrap_err();
        assert!(e.to_string().contains("neither score_mod nor mask_mod"), "{e}");
    }

    #[test]
    fn what_a_mod_declares_is_bounded_and_checked_on_its_parsed_module() {
        const SCORE: &str = "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {";
        let refused = |text: &str, says: &str| {
            let t = std::time::Instant::now();
            let Err(e) = Mods::wgsl("m.wgsl", text) else { panic!("accepted: {text}") };
            let e = e.to_string();
            assert!(e.contains(says), "{e}");
            assert!(t.elapsed().as_secs() < 5, "{e}: took {:?}", t.elapsed());
        };
        // once: 3.9 GB for minutes, a segfault after 32 s, a 400 KB workgroup array accepted
        refused(
            &format!("var<private> big: array<f32, 4000000>;\n{SCORE} return score + big[0]; }}"),
            "16384",
        );
        refused(&format!("{SCORE}\n var t: array<f32, 8192>;\n return score + t[b]; }}"), "private memory");
        refused(
            &format!("var<workgroup> w: array<f32, 100000>;\n{SCORE}\n return score + w[0]; }}"),
            "m.wgsl:1: var<workgroup>",
        );
        let mut chain = String::from("fn f0(x: f32) -> f32 { return x * 1.01; }\n");
        for i in 1..24 {
            chain.push_str(&format!(
                "fn f{i}(x: f32) -> f32 {{ return f{}(x) + f{}(x * 0.5); }}\n",
                i - 1,
                i - 1
            ));
        }
        refused(&format!("{chain}{SCORE} return f23(score); }}"), "expands to more than");
        refused(&format!("enable f16;\n{SCORE} return f32(f16(score)); }}"), "32-bit types");
        refused(&format!("override k: f32 = 2.0;\n{SCORE} return score * k; }}"), "m.wgsl:1: `override`");
        refused(
            &format!("fn mods_nan() -> f32 {{ return 0.0; }}\n{SCORE} return score; }}"),
            "m.wgsl:1: `mods_nan` is a name",
        );
        refused(
            &format!("{SCORE}\n    let mod_overrun = 2.0;\n    return score * mod_overrun; }}"),
            "`mod_overrun` is a name",
        );
        refused(&"// padding\n".repeat(30_000), "at most 262144");
        // detection reads the parsed module: a commented-out mask_mod is not one, odd spacing is
        let m = Mods::wgsl(
            "m.wgsl",
            &format!(
                "// fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool\n{SCORE} return score; }}"
            ),
        )
        .unwrap();
        assert!(m.has_score_mod() && !m.has_mask_mod());
        let m = Mods::wgsl(
            "m.wgsl",
            "fn/**/score_mod (score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 { return score; }",
        )
        .unwrap();
        assert!(m.has_score_mod());
        // the built-in mods and a modest table fit
        let table = (0..1024).map(|i| format!("{i}.0")).collect::<Vec<_>>().join(", ");
        Mods::wgsl("m.wgsl", &format!("{SCORE}\n var t = array<f32, 1024>({table});\n return score + t[kv_idx % 1024u] + f32(bool(b)); }}")).unwrap();
    }

    #[test]
    fn named_mods_compose_and_files_say_what_combines() {
        let all = [Named::Alibi(4), Named::Softcap(30.0), Named::Window(7), Named::Causal];
        let m = Named::compose(&all).unwrap();
        assert!(m.has_score_mod() && m.has_mask_mod() && m.has_grad());
        let at = At { b: 0, h: 1, q: 9, kv: 4, n: 10, m: 10 };
        let want = 30.0 * ((2.0 - 0.0625 * 5.0) / 30.0f64).tanh(); // head 1 of 4: slope 1/16
        assert!((m.rule().unwrap().score(2.0, at) - want).abs() < 1e-6);
        let e = Named::Alibi(4).mods().and(Named::Softcap(3.0).mods()).unwrap_err().to_string();
        assert!(e.contains("both define score_mod") && e.contains("Named::compose"), "{e}");
    }

    #[test]
    fn mask_mods_say_which_arguments_they_read() {
        let m = Mods::wgsl("m", "fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool { return h == 0u || kv_idx <= q_idx; }").unwrap();
        assert_eq!(m.mask_reads(), (false, true));
        assert_eq!(Named::Causal.mods().mask_reads(), (false, false));
    }

    #[test]
    fn t5_buckets_are_t5s() {
        // T5's formula in floating point, away from its boundaries (where f32/f64 logs round)
        for rel in -1000i64..=1000 {
            let n = rel.unsigned_abs() as f64;
            let base = if rel > 0 { 16 } else { 0 };
            let want =
                if n < 8.0 { n as usize } else { (8 + (2.0 * (n / 8.0).log2()).floor() as usize).min(15) };
            assert_eq!(t5_bucket(rel), base + want, "rel {rel}");
        }
        assert_eq!(
            (t5_bucket(0), t5_bucket(-7), t5_bucket(7), t5_bucket(-128), t5_bucket(500)),
            (0, 7, 23, 15, 31)
        );
    }

    #[test]
    fn named_mods_parse_and_validate() {
        for text in [
            "causal",
            "window=7",
            "alibi",
            "softcap=30",
            "prefix=5",
            "sinks=4,window=16",
            "dilated=12,dilation=3",
        ] {
            let named = Named::parse(text, 6).unwrap();
            let mods = named.mods();
            assert!(mods.rule().is_some(), "{text}");
        }
        for bad in ["softcap=0", "sinks=4", "window=x", "nope", "dilated=4,dilation=0", "causal,extra=1"] {
            assert!(Named::parse(bad, 4).is_err(), "{bad}");
        }
    }
}
