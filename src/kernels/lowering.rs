//! The lowering of kernels' composed sources ([`STORAGE`]): their storage types and the
//! cooperative-matrix extension, declared from the variant's constants and, where the device
//! has no cooperative matrices, emulated in plain WGSL.
//!
//! Constants read: `F16_U` selects the storage types `in4` and `in1` (`vec4<f16>` and `f16`
//! with `enable f16;`, else f32). `COOP_S` (8 or 16) enables `wgpu_cooperative_matrix` and
//! declares `coop_a`, `coop_b` (S×S, storage type) and `coop_c` (S×S, f32); with
//! `COOP_EMULATE_U` the matrices are plain arrays and the operations are rewritten
//! ([`emulate_coop`]).

use crate::runtime::shader::Lowering;

/// The lowering every kernel with f16 storage or cooperative matrices uses.
pub(crate) const STORAGE: Lowering = Lowering { name: "storage", apply: lower };

fn lower(source: String, consts: &[(&'static str, u32)]) -> String {
    let f16 = consts.iter().find(|(n, _)| *n == "F16_U").map(|&(_, v)| v != 0);
    let coop = consts.iter().find(|(n, _)| *n == "COOP_S").map(|&(_, v)| v);
    let emulate = consts.iter().any(|&(n, v)| n == "COOP_EMULATE_U" && v != 0);
    let mut src = String::new();
    if f16 == Some(true) {
        src.push_str("enable f16;\n");
    }
    if coop.is_some() && !emulate {
        src.push_str("enable wgpu_cooperative_matrix;\n");
    }
    if let Some(f16) = f16 {
        let t = if f16 { "f16" } else { "f32" };
        src.push_str(&format!("alias in4 = vec4<{t}>;\nalias in1 = {t};\n"));
    }
    if let (Some(s), true) = (coop, emulate) {
        src.push_str(&format!(
            "alias coop_a = array<f32, {0}>;\nalias coop_b = array<f32, {0}>;\nalias coop_c = array<f32, {0}>;\n",
            s * s
        ));
    } else if let Some(s) = coop {
        // the cooperative-matrix types of this variant: inputs (A, B) of the storage type,
        // accumulator (C) f32
        let t = if f16 == Some(true) { "f16" } else { "f32" };
        src.push_str(&format!(
            "alias coop_a = coop_mat{s}x{s}<{t}, A>;\nalias coop_b = coop_mat{s}x{s}<{t}, B>;\nalias coop_c = coop_mat{s}x{s}<f32, C>;\n"
        ));
    }
    src.push_str(&source);
    match coop {
        Some(s) if emulate => emulate_coop(&src, s),
        _ => src,
    }
}

/// The arguments of the call whose `(` is at `open`, split at top-level commas, and the index
/// just past its `)`.
fn call_args(src: &str, open: usize) -> (Vec<&str>, usize) {
    let (mut depth, mut start, mut args) = (0usize, open + 1, Vec::new());
    for (i, ch) in src[open..].char_indices() {
        let at = open + i;
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' if depth > 1 => depth -= 1,
            ')' => {
                args.push(src[start..at].trim());
                return (args, at + 1);
            }
            ',' if depth == 1 => {
                args.push(src[start..at].trim());
                start = at + 1;
            }
            _ => {}
        }
    }
    (args, src.len())
}

/// `&name[index]` → (`name`, `index`).
fn element_pointer(arg: &str) -> Option<(&str, &str)> {
    let inner = arg.strip_prefix('&')?.strip_suffix(']')?;
    let (name, index) = inner.split_once('[')?;
    Some((name.trim(), index))
}

/// The cooperative-matrix operations of `src` rewritten into plain WGSL over S×S arrays (one
/// whole copy per invocation, f32 arithmetic, products summed in k order): the same kernel,
/// runnable on any adapter, slowly. Every invocation computes and stores the whole matrix
/// (the same values); a store is fenced by barriers on both sides, so that no invocation
/// overwrites a matrix another has yet to load (a real subgroup does each operation at once). `COOP_EMULATE_U` selects it; the engine uses it to run
/// its tensor-core kernels on adapters without the feature (the software adapter in CI),
/// which checks their indexing, layouts and control flow against the oracle. Loads and
/// stores address workgroup or storage arrays as `&name[index]`, as the kernels write them.
fn emulate_coop(src: &str, s: u32) -> String {
    let mut out = String::with_capacity(src.len());
    let (mut loads, mut stores) = (Vec::<String>::new(), Vec::<String>::new());
    let mut rest = src;
    while let Some(at) = rest.find("coop") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let op = ["coopLoadT<", "coopLoad<", "coopStoreT(", "coopStore(", "coopMultiplyAdd("]
            .into_iter()
            .find(|op| tail.starts_with(op));
        let Some(op) = op else {
            out.push_str("coop");
            rest = &tail[4..];
            continue;
        };
        let open = match op.ends_with('<') {
            true => tail.find('(').unwrap_or(tail.len() - 1),
            false => op.len() - 1,
        };
        let (args, end) = call_args(tail, open);
        let row_major = op.contains('T');
        let call = match (op, args.as_slice()) {
            ("coopMultiplyAdd(", [a, b, c]) => format!("emu_mma({a}, {b}, {c})"),
            (_, [ptr, stride]) if op.starts_with("coopLoad") => match element_pointer(ptr) {
                Some((name, index)) => {
                    if !loads.iter().any(|l| l == name) {
                        loads.push(name.to_string());
                    }
                    format!("emu_load_{name}({index}, {stride}, {row_major})")
                }
                None => tail[..end].to_string(),
            },
            (_, [value, ptr, stride]) => match element_pointer(ptr) {
                Some((name, index)) => {
                    if !stores.iter().any(|l| l == name) {
                        stores.push(name.to_string());
                    }
                    format!("emu_store_{name}({value}, {index}, {stride}, {row_major})")
                }
                None => tail[..end].to_string(),
            },
            _ => tail[..end].to_string(),
        };
        out.push_str(&call);
        rest = &tail[end..];
    }
    out.push_str(rest);
    let ss = s * s;
    let offset = "select(j * stride + i, i * stride + j, row_major)";
    for name in &loads {
        out.push_str(&format!(
            "\nfn emu_load_{name}(at: u32, stride: u32, row_major: bool) -> array<f32, {ss}> {{\n    var m: array<f32, {ss}>;\n    for (var i = 0u; i < {s}u; i++) {{\n        for (var j = 0u; j < {s}u; j++) {{\n            m[i * {s}u + j] = f32({name}[at + {offset}]);\n        }}\n    }}\n    return m;\n}}\n"
        ));
    }
    for name in &stores {
        out.push_str(&format!(
            "\nfn emu_store_{name}(m: array<f32, {ss}>, at: u32, stride: u32, row_major: bool) {{\n    var v = m;\n    workgroupBarrier();\n    for (var i = 0u; i < {s}u; i++) {{\n        for (var j = 0u; j < {s}u; j++) {{\n            {name}[at + {offset}] = v[i * {s}u + j];\n        }}\n    }}\n    workgroupBarrier();\n}}\n"
        ));
    }
    out.push_str(&format!(
        "\nfn emu_mma(a: array<f32, {ss}>, b: array<f32, {ss}>, c: array<f32, {ss}>) -> array<f32, {ss}> {{\n    var x = a;\n    var y = b;\n    var r = c;\n    for (var i = 0u; i < {s}u; i++) {{\n        for (var j = 0u; j < {s}u; j++) {{\n            var acc = r[i * {s}u + j];\n            for (var k = 0u; k < {s}u; k++) {{\n                acc += x[i * {s}u + k] * y[k * {s}u + j];\n            }}\n            r[i * {s}u + j] = acc;\n        }}\n    }}\n    return r;\n}}\n"
    ));
    out
}
