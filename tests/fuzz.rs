//! Fuzzing in CI (issue 17): the `.npy` reader, the `.safetensors` reader, the cache readers,
//! the tuned-winner validation and the command line's size, window and mask arguments, each
//! over a committed corpus (`tests/data/fuzz/`) and over `proptest`-generated inputs — a
//! bounded number of cases per run (`PROPTEST_CASES` raises it). The property everywhere:
//! `Ok` with consistent data or a typed error; never a panic, an abort, a hang or a
//! wrong answer.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use longctx::io::{SafetensorsFile, element_count, read_npy, read_npy_numbers};
use proptest::prelude::*;

/// Cases per target: `default` in CI, `PROPTEST_CASES` for a longer campaign.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", root.display());
    files
}

/// Reads an `.npy` both ways; whatever comes back must be consistent with its shape.
fn read_npy_any(path: &Path) -> bool {
    let f32s = read_npy(path);
    if let Ok(t) = &f32s {
        assert_eq!(Some(t.data.len()), element_count(&t.shape), "{}", path.display());
    }
    if let Ok((shape, data)) = read_npy_numbers(path) {
        assert_eq!(Some(data.len()), element_count(&shape), "{}", path.display());
    }
    f32s.is_ok()
}

/// Opens a `.safetensors` file and reads every tensor it names.
fn read_safetensors_any(path: &Path) -> usize {
    let Ok(file) = SafetensorsFile::open(path) else { return 0 };
    let mut ok = 0;
    for name in file.names() {
        if let Ok(t) = file.tensor(&name) {
            assert_eq!(Some(t.data.len()), element_count(&t.shape), "{} {name}", path.display());
            ok += 1;
        }
    }
    ok
}

#[test]
fn npy_corpus() {
    let mut valid = Vec::new();
    for path in corpus("npy") {
        if read_npy_any(&path) {
            valid.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    // exactly the float32 files that are whole and honest read as float32
    assert_eq!(valid, ["nan_inf.npy", "trailing_junk.npy", "valid_empty_dim.npy", "valid_f32.npy"]);
}

#[test]
fn safetensors_corpus() {
    let mut read = Vec::new();
    for path in corpus("safetensors") {
        if read_safetensors_any(&path) > 0 {
            read.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert_eq!(read, ["nan.safetensors", "valid.safetensors", "valid_f16.safetensors"]);
}

fn scratch(bytes: &[u8], name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// A byte string mutated: some bytes overwritten, then cut or extended.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len();
    (
        proptest::collection::vec((0..len.max(1), any::<u8>()), 0..12),
        prop_oneof![Just(None), (0..=len).prop_map(Some)],
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut b = seed.clone();
            for (i, v) in flips {
                if i < b.len() {
                    b[i] = v;
                }
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            b.extend(tail);
            b
        })
}

fn corpus_bytes(dir: &str, name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz").join(dir).join(name)).unwrap()
}

/// An `.npy` header with arbitrary shape numbers and dtype text.
fn npy_with_header(shape: &[u64], descr: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {tuple}, }}",
        if fortran { "True" } else { "False" }
    );
    while (header.len() + 11) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn npy_mutations(bytes in mutated(corpus_bytes("npy", "valid_f32.npy"))) {
        let (_dir, path) = scratch(&bytes, "x.npy");
        read_npy_any(&path);
    }

    #[test]
    fn npy_headers(
        shape in proptest::collection::vec(prop_oneof![0u64..8, any::<u64>(), Just(u64::MAX), Just(1 << 32)], 0..5),
        descr in prop_oneof![Just("<f4".to_string()), Just("<f8".to_string()), Just("|b1".to_string()), Just(">f4".to_string()), "[<>|][a-z][0-9]{1,3}"],
        fortran in any::<bool>(),
        data in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let (_dir, path) = scratch(&npy_with_header(&shape, &descr, fortran, &data), "h.npy");
        // bounded by the file: never reads or allocates past what the header's data could be
        read_npy_any(&path);
    }

    #[test]
    fn safetensors_mutations(bytes in mutated(corpus_bytes("safetensors", "valid.safetensors"))) {
        let (_dir, path) = scratch(&bytes, "x.safetensors");
        read_safetensors_any(&path);
    }
}

fn longctx(args: &[&str], cache: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longctx"));
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    if let Some(c) = cache {
        cmd.env("XDG_CACHE_HOME", c);
    }
    cmd.env("RUST_BACKTRACE", "0").args(args);
    // a run that does not end within the deadline is a hang: killed, and a failure
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn longctx");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |r: &mut dyn std::io::Read| {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    };
    let stdout = std::thread::spawn(move || read(&mut out));
    let stderr = std::thread::spawn(move || read(&mut err));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("longctx {args:?} still running after 90 s (a hang)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// A finished run that neither panicked nor died of a signal or an abort: exit 0, or an
/// error (1, or clap's 2) whose first stderr line says `error:`.
fn clean(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    match out.status.code() {
        Some(0) => {}
        Some(1 | 2) => {
            assert!(stderr.lines().any(|l| l.starts_with("error")), "no error line for {args:?}: {stderr}")
        }
        other => panic!("{args:?} ended with {other:?} (signal or abort): {stderr}"),
    }
}

#[test]
fn cache_corpus_is_ignored_with_a_warning() {
    // every corrupt cache file as tune.json and as peak.json: `mask` (no GPU) and `info`
    // (reads the tuned winners and the peak) still run, exit 0
    for path in corpus("cache") {
        for file in ["tune.json", "peak.json"] {
            let home = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(home.path().join("longctx")).unwrap();
            std::fs::copy(&path, home.path().join("longctx").join(file)).unwrap();
            let args = ["info"];
            let out = longctx(&args, Some(home.path()));
            clean(&args, &out);
            assert!(
                out.status.success(),
                "{} as {file}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mask_arguments(
        // valid sizes stay below 100K: this checks the arguments' handling, not how long a
        // legal map takes (a BigBird map at 144K with hundreds of random blocks per row takes
        // over a minute to classify on the CPU — work, not a hang; big sizes are for benches)
        n in prop_oneof!["[0-9]{1,4}", "[0-9]{1,2}[kK]", "[0-9]{8,21}[kKmM]?", Just("-1".to_string())],
        m in prop_oneof![Just(None), "[0-9]{1,5}".prop_map(Some)],
        pattern in prop_oneof![
            Just(vec!["--causal".to_string()]),
            "-?[0-9]{1,20},-?[0-9]{1,20}".prop_map(|w| vec!["--window".to_string(), w]),
            "[0-9]{1,21}".prop_map(|g| vec!["--global".to_string(), g, "--causal".to_string()]),
            "global=[0-9]{1,3},window=[0-9]{1,3},random=[0-9]{1,2},block=[0-9]{1,4},seed=[0-9]{1,20}"
                .prop_map(|b| vec!["--bigbird".to_string(), b]),
            "[a-z=,0-9]{0,24}".prop_map(|b| vec!["--bigbird".to_string(), b]),
        ],
        block in prop_oneof![Just(None), (0usize..300).prop_map(Some)],
    ) {
        let mut args: Vec<String> = vec!["mask".into(), "--n".into(), n];
        if let Some(m) = m {
            args.extend(["--m".into(), m]);
        }
        args.extend(pattern);
        if let Some(b) = block {
            args.extend(["--block".into(), b.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = longctx(&args, None);
        clean(&args, &out);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn tuned_winners_never_break_a_kernel(
        flash in proptest::collection::vec(prop_oneof![0u32..4, 1u32..300, Just(u32::MAX)], 0..6),
        split in proptest::collection::vec(prop_oneof![0u32..4, 1u32..100_000, Just(u32::MAX)], 0..3),
    ) {
        // any numbers under the kernels' tuning keys, as a corrupt or hostile tune.json holds
        // them: the kernels run their preset instead, or refuse with a typed error; never a
        // panic, never a wrong answer
        use longctx::contract::reference::{attention_f64, rel_error};
        use longctx::kernels::attention::decode::{Decoder, DecoderConfig, tuning_key};
        use longctx::runtime::Tuned;
        use longctx::{Attention, AttnShape, AttnSpec, FlashConfig, Kernel};
        let g = common::gpu();
        let mut tuned = Tuned::for_adapter(g.info());
        tuned.winners.insert(FlashConfig::tuning_key(32), flash.clone());
        tuned.winners.insert(tuning_key(32, 2), split.clone());
        let g = g.clone().with_tuned(Some(tuned));
        let spec = AttnSpec::new(AttnShape { batch: 1, heads: 2, kv_heads: 1, n: 19, m: 45, head_dim: 32 }).causal(true);
        let (q, k, v) = common::inputs(&spec, 5);
        if let Ok(out) = Attention::new(&g, Kernel::Flash, &spec).and_then(|a| a.run(&g, &q, &k, &v)) {
            let (o_ref, _) = attention_f64(&spec, &q, &k, &v).unwrap();
            prop_assert!(rel_error(&out.o, &o_ref) < 1e-5, "winner {flash:?}");
        }
        let mut dec = match Decoder::new(&g, DecoderConfig::new(2, 1, 32, 64)) {
            Ok(d) => d,
            Err(_) => return Ok(()),
        };
        // one step: row 0 of each head against the 45 keys
        let q1: Vec<f32> = [&q[..32], &q[19 * 32..20 * 32]].concat();
        dec.prefill(&g, 0, &k[..44 * 32], &v[..44 * 32]).unwrap();
        dec.step(&g, 0, &q1, &k[44 * 32..], &v[44 * 32..]).unwrap();
        let got = dec.output(&g).unwrap();
        let one = AttnSpec::new(AttnShape { batch: 1, heads: 2, kv_heads: 1, n: 1, m: 45, head_dim: 32 }).causal(true);
        let (o_ref, _) = attention_f64(&one, &q1, &k, &v).unwrap();
        prop_assert!(rel_error(&got.o, &o_ref) < 1e-5, "split {split:?}");
    }
}

/// Fragments a hostile or careless mod holds, spliced into the corpus of mods.
const MOD_FRAGMENTS: &[&str] = &[
    "loop { }",
    "for (var i = 0u; i < 4294967295u; i++) { }",
    "while true { }",
    "}",
    "{",
    "(",
    ";",
    "var<private> big: array<f32, 99999999>;",
    "var<workgroup> w: array<f32, 65536>;",
    "@group(1) @binding(0) var<storage, read> t: array<f32>;",
    "@group(0) @binding(0) var<uniform> u: f32;",
    "@group(1) @binding(4294967295) var<storage, read> z: array<u32>;",
    "enable f16;",
    "override o: u32 = 1u;",
    "diagnostic(off, derivative_uniformity);",
    "fn mods_nan() -> f32 { return 0.0; }",
    "let mod_overrun = 1u;",
    "const N_Q: u32 = 1u;",
    "// fn mask_mod(",
    "/* fn score_mod( */",
    "@compute @workgroup_size(1) fn main() {}",
    "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 { return score; }",
    "fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool { return false; }",
    "return 0.0 / 0.0;",
    "return bitcast<f32>(0x7f800000u);",
    "struct Contract { x: f32 }",
    "const BR = 3;",
    "fn f(x: f32) -> f32 { return f(x); }",
    "score_mod(score, b, h, q_idx, kv_idx)",
    "\u{0}",
    "é",
];

/// A mod from the corpus with fragments spliced in at char boundaries and bytes mutated.
fn mod_text() -> impl Strategy<Value = String> {
    let texts: Vec<String> = corpus("mods").iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    (
        proptest::sample::select(texts),
        proptest::collection::vec(
            (any::<prop::sample::Index>(), proptest::sample::select(MOD_FRAGMENTS)),
            0..4,
        ),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    )
        .prop_map(|(text, splices, flips)| {
            let mut s = text;
            for (at, frag) in splices {
                let mut i = at.index(s.len() + 1);
                while !s.is_char_boundary(i) {
                    i -= 1;
                }
                s.insert_str(i, frag);
            }
            let mut bytes = s.into_bytes();
            for (at, v) in flips {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = v;
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mod_ingestion(text in mod_text(), values in proptest::collection::vec(prop_oneof![any::<f64>(), -3.0..3.0, Just(f64::NAN), Just(4e9)], 0..6)) {
        // WGSL text and buffer values in: an accepted module whose kernel source writes back,
        // or a typed error; never a panic (the fragments above reach the step budget, the
        // resource checks, the reserved names and the binding checks)
        use longctx::contract::mods::Mods;
        let t = std::time::Instant::now();
        if let Ok(m) = Mods::wgsl("fuzz.wgsl", &text) {
            prop_assert!(m.has_score_mod() || m.has_mask_mod());
            let _ = m.kernel_source(7, 9, 1000);
            let _ = m.kernel_source_per_dispatch(1000);
            for b in m.buffers().to_vec() {
                let _ = m.clone().with_buffer(&b.name, &values);
            }
        }
        prop_assert!(t.elapsed().as_secs() < 10, "took {:?} on {text}", t.elapsed());
    }

    #[test]
    fn compound_flags(
        named in "(causal|window|alibi|softcap|prefix|sinks|dilated|t5|documents|x)(=(-?[0-9]{1,11}|[0-9.e+-]{1,8}|inf|NaN))?(,(window|dilation|sinks|dilated|x)=?(-?[0-9]{0,11})){0,3}",
        rope in "(theta|base|offset|interleaved|half|x)(=(-?[0-9]{1,21}|[0-9.e+-]{1,8}|inf|NaN))?(,(theta|base|offset|interleaved|half)(=[0-9e.-]{0,21})?){0,3}",
        window in "-?[0-9]{0,21},?-?[0-9]{0,21}",
        bigbird in "((global|window|random|block|seed|x)=-?[0-9]{0,21},?){0,6}",
        heads in 0usize..70,
    ) {
        // the library's parsers behind --mod, --rope/--sinusoidal, --window and --bigbird:
        // a value in range or a typed error, never a panic; what parses builds
        use longctx::contract::mask::BigBird;
        use longctx::contract::mods::Named;
        use longctx::contract::positions::Positions;
        if let Ok(n) = Named::parse(&named, heads) {
            let _ = Named::compose(&[n.clone(), n]);
        }
        for is_rope in [true, false] {
            if let Ok(p) = Positions::parse(&rope, is_rope) {
                let _ = p.validate(64);
                let _ = p.span(0, 100, 100);
            }
        }
        let _ = longctx::Window::parse(&window);
        let _ = BigBird::parse(&bigbird);
    }
}
