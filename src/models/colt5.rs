//! CoLT5 conditional computation (Ainslie et al. 2023, arXiv 2303.09752) on the GPU: every
//! token takes a light branch (local attention with few heads, a small FFN); learned routers
//! pick `route_q` query tokens and `route_kv` key/value tokens for a heavy attention among
//! them, and `route_ffn` tokens for a heavy FFN. Heavy outputs are scaled by the router score
//! (the cosine similarity of the token with the router weight, as in lucidrains'
//! CoLT5-attention with hard top-k; the soft coordinate-descent top-k is not implemented) and
//! added back at the routed positions. Pre-norm, parallel branches, one residual:
//!
//! `out = x + light_attn(xn) + light_ffn(xn) + Σ_routed s·heavy_attn(xn) + Σ_routed s·heavy_ffn(xn)`,
//! `xn = LayerNorm(x)`.
//!
//! [`Colt5Layer::forward`] runs it; `Colt5Layer::dense` is the reference where every token
//! takes both heavy branches (same kernels, no top-k); [`colt5_f64`] is the CPU oracle.

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::contract::spec::{AttnShape, AttnSpec, Window};
use crate::error::{Error, Result};
use crate::kernels::layer::{LayerOp, Op};
use crate::kernels::matmul::{Activation, Matmul};
use crate::kernels::route::Router;
use crate::kernels::{Attention, AttnBuffers, Kernel};
use crate::runtime::timing::time_submission_async;
use crate::runtime::{Gpu, block_on};

/// Sizes of one CoLT5 layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Colt5Config {
    /// Sequence length N (tokens).
    pub n: usize,
    /// Model width d.
    pub d_model: usize,
    /// Heavy attention heads and the head dim shared by both attentions.
    pub heads: usize,
    /// Per-head width of both the light and the heavy attention.
    pub head_dim: usize,
    /// Light (local) attention heads.
    pub light_heads: usize,
    /// Light attention sees keys p − window ..= p + window.
    pub window: usize,
    /// Inner width of the light FFN, which every token takes.
    pub ffn_light: usize,
    /// Inner width of the heavy FFN, which only routed tokens take.
    pub ffn_heavy: usize,
    /// Query tokens the router sends to heavy attention (at most N).
    pub route_q: usize,
    /// Key/value tokens the router sends to heavy attention (at most N).
    pub route_kv: usize,
    /// Tokens the router sends to the heavy FFN (at most N).
    pub route_ffn: usize,
}

impl Colt5Config {
    /// Host bytes of the layer's weights and of one forward's activations (inputs, outputs,
    /// the widest intermediate), saturating: what to check against the host before
    /// allocating any of it.
    pub fn host_bytes(&self) -> u64 {
        let (n, d) = (self.n as u64, self.d_model as u64);
        let width = 4u64
            .saturating_mul(d)
            .saturating_add(2 * self.ffn_light as u64)
            .saturating_add(2 * self.ffn_heavy as u64)
            .saturating_add(8 * self.head_dim as u64);
        let params = d.saturating_mul(width);
        let activations = n.saturating_mul(8u64.saturating_mul(d).saturating_add(2 * self.ffn_heavy as u64));
        params.saturating_add(activations).saturating_mul(4)
    }

    /// The paper's proportions at width `d_model`: heavy heads of 64 (d_model/64 of them),
    /// one light head, light FFN d/2, heavy FFN 4d, each router taking `fraction` of N.
    pub fn standard(n: usize, d_model: usize, window: usize, fraction: f64) -> Self {
        let k = ((n as f64 * fraction).round() as usize).clamp(1, n.max(1));
        Self {
            n,
            d_model,
            heads: (d_model / 64).max(1),
            head_dim: 64.min(d_model),
            light_heads: 1,
            window,
            ffn_light: (d_model / 2).max(1),
            ffn_heavy: 4 * d_model,
            route_q: k,
            route_kv: k,
            route_ffn: k,
        }
    }

    fn check(&self) -> Result<()> {
        let dims = [
            self.n,
            self.d_model,
            self.heads,
            self.head_dim,
            self.light_heads,
            self.ffn_light,
            self.ffn_heavy,
        ];
        if dims.contains(&0) || [self.route_q, self.route_kv, self.route_ffn].contains(&0) {
            return Err(Error::Empty { what: "CoLT5 config".into(), shape: dims.to_vec() });
        }
        for (name, k) in
            [("route_q", self.route_q), ("route_kv", self.route_kv), ("route_ffn", self.route_ffn)]
        {
            if k > self.n {
                return Err(Error::OutOfRange {
                    what: format!("{name} (routed tokens)"),
                    value: k as u64,
                    min: 1,
                    max: self.n as u64,
                });
            }
        }
        Ok(())
    }

    /// Each weight's name and `[in, out]` shape (biases `[out]`, routers `[d_model]`).
    pub fn weight_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (d, l, h, fl, fh) = (
            self.d_model,
            self.light_heads * self.head_dim,
            self.heads * self.head_dim,
            self.ffn_light,
            self.ffn_heavy,
        );
        vec![
            ("light.wq", vec![d, l]),
            ("light.wk", vec![d, l]),
            ("light.wv", vec![d, l]),
            ("light.wo", vec![l, d]),
            ("heavy.wq", vec![d, h]),
            ("heavy.wk", vec![d, h]),
            ("heavy.wv", vec![d, h]),
            ("heavy.wo", vec![h, d]),
            ("light_ffn.w1", vec![d, fl]),
            ("light_ffn.b1", vec![fl]),
            ("light_ffn.w2", vec![fl, d]),
            ("light_ffn.b2", vec![d]),
            ("heavy_ffn.w1", vec![d, fh]),
            ("heavy_ffn.b1", vec![fh]),
            ("heavy_ffn.w2", vec![fh, d]),
            ("heavy_ffn.b2", vec![d]),
            ("router.q", vec![d]),
            ("router.kv", vec![d]),
            ("router.ffn", vec![d]),
        ]
    }
}

/// All weights, in the order of [`Colt5Config::weight_shapes`], row-major `[in, out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Colt5Weights {
    /// One flat tensor per entry of [`Colt5Config::weight_shapes`].
    pub tensors: Vec<Vec<f32>>,
}

impl Colt5Weights {
    /// Uniform in ±1/sqrt(fan-in) from a seed (routers in ±1).
    pub fn random(cfg: &Colt5Config, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let tensors = cfg
            .weight_shapes()
            .iter()
            .map(|(_, shape)| {
                let a = 1.0 / (shape[0] as f32).sqrt();
                let a = if shape.len() == 1 { 1.0 } else { a };
                (0..shape.iter().product::<usize>()).map(|_| rng.random_range(-a..a)).collect()
            })
            .collect();
        Self { tensors }
    }

    /// Reads every tensor of [`Colt5Config::weight_shapes`] by name from a `.safetensors` file.
    pub fn from_safetensors(cfg: &Colt5Config, path: &Path) -> Result<Self> {
        let tensors = cfg
            .weight_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let t = crate::io::read_safetensors(path, name)?;
                if t.shape != shape {
                    return Err(Error::Shape(format!(
                        "{}: tensor `{name}` has shape {:?}, the config needs {shape:?}",
                        path.display(),
                        t.shape
                    )));
                }
                Ok(t.data)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { tensors })
    }

    fn get(&self, cfg: &Colt5Config, name: &str) -> &[f32] {
        let i = cfg.weight_shapes().iter().position(|(n, _)| *n == name).expect("known weight");
        &self.tensors[i]
    }
}

/// Time and FLOPs of one branch of one forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchTiming {
    /// Branch name, e.g. `light attention`, `heavy FFN`, `norm + residual`.
    pub branch: &'static str,
    /// Host-clock time of its submission, in ms.
    pub ms: f64,
    /// Floating-point operations counted for it, 2 per multiply-add (0 for `norm + residual`).
    pub flops: f64,
}

struct Buffers {
    x: wgpu::Buffer,
    out: wgpu::Buffer,
    xn: wgpu::Buffer,
}

/// A prepared CoLT5 layer (or, with `dense`, its dense reference) on the GPU.
pub struct Colt5Layer {
    cfg: Colt5Config,
    dense: bool,
    w: Vec<wgpu::Buffer>,
    norm: LayerOp,
    copy: LayerOp,
    light: AttnBranch,
    heavy: AttnBranch,
    light_ffn: FfnBranch,
    heavy_ffn: FfnBranch,
}

/// Projections, permutes and attention of one attention branch over `rows_q` queries and
/// `rows_kv` keys/values (gathered first when routed).
struct AttnBranch {
    rows_q: usize,
    rows_kv: usize,
    router_q: Option<Router>,
    router_kv: Option<Router>,
    proj_q: Matmul,
    proj_k: Matmul,
    proj_v: Matmul,
    proj_o: Matmul,
    q_heads: LayerOp,
    kv_heads: LayerOp,
    o_tokens: LayerOp,
    attn: Attention,
    bufs: Vec<wgpu::Buffer>, // xq, xkv, q_tok, k_tok, v_tok, q, k, v, o, o_tok, y, lse
    flops: f64,
}

struct FfnBranch {
    rows: usize,
    router: Option<Router>,
    up: Matmul,
    down: Matmul,
    bufs: Vec<wgpu::Buffer>, // xr, hidden, y
    flops: f64,
}

impl Colt5Layer {
    /// The CoLT5 layer; with `dense` every token takes the heavy branches (no top-k).
    pub fn new(gpu: &Gpu, cfg: &Colt5Config, weights: &Colt5Weights, dense: bool) -> Result<Self> {
        cfg.check()?;
        if weights.tensors.len() != cfg.weight_shapes().len() {
            return Err(Error::Invalid(format!(
                "{} weight tensors given, {} needed",
                weights.tensors.len(),
                cfg.weight_shapes().len()
            )));
        }
        for ((name, shape), t) in cfg.weight_shapes().iter().zip(&weights.tensors) {
            if t.len() != shape.iter().product::<usize>() {
                return Err(Error::Shape(format!(
                    "weight `{name}` has {} values, shape {shape:?} needs {}",
                    t.len(),
                    shape.iter().product::<usize>()
                )));
            }
            crate::contract::spec::check_finite(name, t)?;
        }
        let (n, d) = (cfg.n, cfg.d_model);
        let w: Vec<wgpu::Buffer> = weights
            .tensors
            .iter()
            .zip(cfg.weight_shapes())
            .map(|(t, (name, _))| gpu.upload(name, t))
            .collect::<Result<_>>()?;
        let (kq, kkv, kf) = if dense { (n, n, n) } else { (cfg.route_q, cfg.route_kv, cfg.route_ffn) };
        let light = AttnBranch::new(
            gpu,
            cfg,
            n,
            n,
            cfg.light_heads,
            Some(Window::new(cfg.window, cfg.window)),
            false,
        )?;
        let heavy = AttnBranch::new(gpu, cfg, kq, kkv, cfg.heads, None, true)?;
        let light_ffn = FfnBranch::new(gpu, d, cfg.ffn_light, n, None)?;
        let heavy_ffn = FfnBranch::new(gpu, d, cfg.ffn_heavy, kf, Some(Router::new(gpu, n, d, kf)?))?;
        Ok(Self {
            cfg: cfg.clone(),
            dense,
            w,
            norm: LayerOp::new(gpu, Op::LayerNorm { rows: n, d })?,
            copy: LayerOp::new(gpu, Op::Copy { rows: n, d })?,
            light,
            heavy,
            light_ffn,
            heavy_ffn,
        })
    }

    fn weight(&self, name: &str) -> &wgpu::Buffer {
        let i = self.cfg.weight_shapes().iter().position(|(n, _)| *n == name).expect("known weight");
        &self.w[i]
    }

    /// Runs the layer on `x` `[N, d_model]`; returns the output and per-branch time and FLOPs
    /// (each branch submitted and waited for on its own, host clock).
    pub fn forward(&self, gpu: &Gpu, x: &[f32]) -> Result<(Vec<f32>, Vec<BranchTiming>)> {
        block_on("Colt5Layer::forward", "await Colt5Layer::forward_async", self.forward_async(gpu, x))
    }

    /// [`Colt5Layer::forward`] without blocking the browser.
    pub(crate) async fn forward_async(&self, gpu: &Gpu, x: &[f32]) -> Result<(Vec<f32>, Vec<BranchTiming>)> {
        let (n, d) = (self.cfg.n, self.cfg.d_model);
        if x.len() != n * d {
            return Err(Error::Length { what: "x".into(), got: x.len(), shape: vec![n, d], expected: n * d });
        }
        crate::contract::spec::check_finite("x", x)?;
        let b = Buffers {
            x: gpu.upload("colt5 x", x)?,
            out: gpu.storage("colt5 out", (n * d * 4) as u64)?,
            xn: gpu.storage("colt5 xn", (n * d * 4) as u64)?,
        };
        // each branch in its own command buffer, timed on its own
        let record = |record: &dyn Fn(&mut wgpu::CommandEncoder) -> Result<()>| {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            record(&mut enc).map(|()| enc.finish())
        };
        let heavy_names = ["heavy.wq", "heavy.wk", "heavy.wv", "heavy.wo"];
        let branches = [
            (
                "norm + residual",
                0.0,
                record(&|enc| {
                    self.copy.encode(gpu, enc, &b.x, &b.out);
                    self.norm.encode(gpu, enc, &b.x, &b.xn);
                    Ok(())
                })?,
            ),
            (
                "light attention",
                self.light.flops,
                record(&|enc| {
                    self.light.encode(
                        gpu,
                        enc,
                        self,
                        &b,
                        ["light.wq", "light.wk", "light.wv", "light.wo"],
                        None,
                    )
                })?,
            ),
            (
                "light FFN",
                self.light_ffn.flops,
                record(&|enc| self.light_ffn.encode(gpu, enc, self, &b, "light_ffn"))?,
            ),
            (
                "heavy attention",
                self.heavy.flops,
                record(&|enc| {
                    self.heavy.encode(gpu, enc, self, &b, heavy_names, Some(("router.q", "router.kv")))
                })?,
            ),
            (
                "heavy FFN",
                self.heavy_ffn.flops,
                record(&|enc| self.heavy_ffn.encode(gpu, enc, self, &b, "heavy_ffn"))?,
            ),
        ];
        let mut timings = Vec::with_capacity(branches.len());
        for (branch, flops, commands) in branches {
            let ms = time_submission_async(gpu, commands).await?;
            timings.push(BranchTiming { branch, ms, flops });
        }
        Ok((gpu.read_async(&b.out, n * d).await?, timings))
    }

    /// The tokens the routers picked in the last forward pass: (q, kv, ffn) indices.
    pub fn routed(&self, gpu: &Gpu) -> Result<[Vec<u32>; 3]> {
        block_on("Colt5Layer::routed", "await Colt5Layer::routed_async", self.routed_async(gpu))
    }

    /// [`Colt5Layer::routed`] without blocking the browser.
    pub(crate) async fn routed_async(&self, gpu: &Gpu) -> Result<[Vec<u32>; 3]> {
        // a branch that takes every token has no router: it picked all of them, in order
        async fn read(gpu: &Gpu, r: Option<&Router>, k: usize) -> Result<Vec<u32>> {
            match r {
                Some(r) => gpu.read_async::<u32>(&r.idx, k).await,
                None => Ok((0..k as u32).collect()),
            }
        }
        Ok([
            read(gpu, self.heavy.router_q.as_ref(), self.heavy.rows_q).await?,
            read(gpu, self.heavy.router_kv.as_ref(), self.heavy.rows_kv).await?,
            read(gpu, self.heavy_ffn.router.as_ref(), self.heavy_ffn.rows).await?,
        ])
    }

    /// The sizes it was built for.
    pub fn config(&self) -> &Colt5Config {
        &self.cfg
    }
}

impl AttnBranch {
    fn new(
        gpu: &Gpu,
        cfg: &Colt5Config,
        rows_q: usize,
        rows_kv: usize,
        heads: usize,
        window: Option<Window>,
        routed: bool,
    ) -> Result<Self> {
        let (n, d, dh) = (cfg.n, cfg.d_model, cfg.head_dim);
        let hd = heads * dh;
        let f = |len: usize, what: &str| gpu.storage(what, (len * 4) as u64);
        let spec = AttnSpec::new(AttnShape {
            batch: 1,
            heads,
            kv_heads: heads,
            n: rows_q,
            m: rows_kv,
            head_dim: dh,
        })
        .window(window);
        let visible = spec.visible_pairs() as f64;
        let flops = 2.0 * (rows_q * d * hd + 2 * rows_kv * d * hd + rows_q * hd * d) as f64
            + 4.0 * dh as f64 * visible;
        Ok(Self {
            rows_q,
            rows_kv,
            router_q: routed.then(|| Router::new(gpu, n, d, rows_q)).transpose()?,
            router_kv: routed.then(|| Router::new(gpu, n, d, rows_kv)).transpose()?,
            proj_q: Matmul::new(gpu, rows_q, d, hd, false, Activation::None)?,
            proj_k: Matmul::new(gpu, rows_kv, d, hd, false, Activation::None)?,
            proj_v: Matmul::new(gpu, rows_kv, d, hd, false, Activation::None)?,
            proj_o: {
                let proj = Matmul::new(gpu, rows_q, hd, d, false, Activation::None)?;
                if routed { proj } else { proj.accumulating(gpu) }
            },
            q_heads: LayerOp::new(gpu, Op::ToHeads { rows: rows_q, heads, d: dh })?,
            kv_heads: LayerOp::new(gpu, Op::ToHeads { rows: rows_kv, heads, d: dh })?,
            o_tokens: LayerOp::new(gpu, Op::ToTokens { rows: rows_q, heads, d: dh })?,
            attn: Attention::new(gpu, Kernel::Flash, &spec)?,
            bufs: vec![
                f(rows_q * d, "xq")?,
                f(rows_kv * d, "xkv")?,
                f(rows_q * hd, "q tokens")?,
                f(rows_kv * hd, "k tokens")?,
                f(rows_kv * hd, "v tokens")?,
                f(rows_q * hd, "q heads")?,
                f(rows_kv * hd, "k heads")?,
                f(rows_kv * hd, "v heads")?,
                f(rows_q * hd, "o heads")?,
                f(rows_q * hd, "o tokens")?,
                f(rows_q * d, "branch out")?,
                f(heads * rows_q, "lse")?,
            ],
            flops,
        })
    }

    fn encode(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        layer: &Colt5Layer,
        b: &Buffers,
        w: [&str; 4],
        routers: Option<(&str, &str)>,
    ) -> Result<()> {
        let [xq, xkv, qt, kt, vt, qh, kh, vh, oh, ot, y, lse] = &self.bufs[..] else {
            unreachable!("12 buffers")
        };
        let (src_q, src_kv) = match (routers, &self.router_q, &self.router_kv) {
            (Some((rq, rkv)), Some(router_q), Some(router_kv)) => {
                if layer.dense {
                    router_q.encode_scores(gpu, enc, &b.xn, layer.weight(rq), xq);
                    router_kv.encode_scores(gpu, enc, &b.xn, layer.weight(rkv), xkv);
                } else {
                    router_q.encode_select(gpu, enc, &b.xn, layer.weight(rq), xq);
                    router_kv.encode_select(gpu, enc, &b.xn, layer.weight(rkv), xkv);
                }
                router_q.encode_gather(gpu, enc, &b.xn, layer.weight(rq), xq);
                router_kv.encode_gather(gpu, enc, &b.xn, layer.weight(rkv), xkv);
                (xq, xkv)
            }
            _ => (&b.xn, &b.xn),
        };
        self.proj_q.encode(gpu, enc, src_q, layer.weight(w[0]), None, qt)?;
        self.proj_k.encode(gpu, enc, src_kv, layer.weight(w[1]), None, kt)?;
        self.proj_v.encode(gpu, enc, src_kv, layer.weight(w[2]), None, vt)?;
        self.q_heads.encode(gpu, enc, qt, qh);
        self.kv_heads.encode(gpu, enc, kt, kh);
        self.kv_heads.encode(gpu, enc, vt, vh);
        self.attn.encode(gpu, enc, &AttnBuffers { q: qh, k: kh, v: vh, o: oh, lse })?;
        self.o_tokens.encode(gpu, enc, oh, ot);
        match &self.router_q {
            Some(router_q) => {
                self.proj_o.encode(gpu, enc, ot, layer.weight(w[3]), None, y)?;
                router_q.encode_scatter(gpu, enc, &b.xn, layer.weight("router.q"), y, &b.out);
            }
            // unrouted: the output projection accumulates straight into the residual
            None => self.proj_o.encode(gpu, enc, ot, layer.weight(w[3]), None, &b.out)?,
        }
        Ok(())
    }
}

impl FfnBranch {
    fn new(gpu: &Gpu, d: usize, hidden: usize, rows: usize, router: Option<Router>) -> Result<Self> {
        let f = |len: usize, what: &str| gpu.storage(what, (len * 4) as u64);
        let down = Matmul::new(gpu, rows, hidden, d, true, Activation::None)?;
        Ok(Self {
            rows,
            down: if router.is_some() { down } else { down.accumulating(gpu) },
            router,
            up: Matmul::new(gpu, rows, d, hidden, true, Activation::Gelu)?,
            bufs: vec![f(rows * d, "ffn rows")?, f(rows * hidden, "ffn hidden")?, f(rows * d, "ffn out")?],
            flops: 4.0 * (rows * d * hidden) as f64,
        })
    }

    fn encode(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        layer: &Colt5Layer,
        b: &Buffers,
        prefix: &str,
    ) -> Result<()> {
        let [xr, hid, y] = &self.bufs[..] else { unreachable!("3 buffers") };
        let w = |s: &str| layer.weight(&format!("{prefix}.{s}"));
        match &self.router {
            Some(r) => {
                let rw = layer.weight("router.ffn");
                if layer.dense {
                    r.encode_scores(gpu, enc, &b.xn, rw, xr);
                } else {
                    r.encode_select(gpu, enc, &b.xn, rw, xr);
                }
                r.encode_gather(gpu, enc, &b.xn, rw, xr);
                self.up.encode(gpu, enc, xr, w("w1"), Some(w("b1")), hid)?;
                self.down.encode(gpu, enc, hid, w("w2"), Some(w("b2")), y)?;
                r.encode_scatter(gpu, enc, &b.xn, rw, y, &b.out);
            }
            None => {
                self.up.encode(gpu, enc, &b.xn, w("w1"), Some(w("b1")), hid)?;
                self.down.encode(gpu, enc, hid, w("w2"), Some(w("b2")), &b.out)?;
            }
        }
        Ok(())
    }
}

/// Each router's score for every token (q, kv, ffn), on the CPU in f64 — for plots.
pub fn router_scores_cpu(cfg: &Colt5Config, weights: &Colt5Weights, x: &[f32]) -> [Vec<f64>; 3] {
    let d = cfg.d_model;
    let xn: Vec<Vec<f64>> = x
        .chunks(d)
        .map(|row| {
            let row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            row.iter().map(|v| (v - mean) / (var + 1e-5).sqrt()).collect()
        })
        .collect();
    ["router.q", "router.kv", "router.ffn"].map(|name| {
        let w: Vec<f64> = weights.get(cfg, name).iter().map(|&v| v as f64).collect();
        let wn = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        xn.iter()
            .map(|row| {
                row.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()
                    / (row.iter().map(|v| v * v).sum::<f64>().sqrt() * wn).max(1e-12)
            })
            .collect()
    })
}

/// The CPU oracle of the CoLT5 layer in f64 (top-k by the same rule: score descending, then
/// lower index; `dense` routes every token).
pub fn colt5_f64(cfg: &Colt5Config, weights: &Colt5Weights, x: &[f32], dense: bool) -> Vec<f64> {
    let (n, d, dh) = (cfg.n, cfg.d_model, cfg.head_dim);
    let w = |name: &str| weights.get(cfg, name).iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let xn: Vec<f64> = (0..n)
        .flat_map(|i| {
            let row: Vec<f64> = x[i * d..(i + 1) * d].iter().map(|&v| v as f64).collect();
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            row.into_iter().map(move |v| (v - mean) / (var + 1e-5).sqrt())
        })
        .collect();
    let matmul = |a: &[f64],
                  rows: usize,
                  k: usize,
                  b: &[f64],
                  cols: usize,
                  bias: Option<&[f64]>,
                  gelu: bool|
     -> Vec<f64> {
        let mut c = vec![0f64; rows * cols];
        for i in 0..rows {
            for kk in 0..k {
                let av = a[i * k + kk];
                for j in 0..cols {
                    c[i * cols + j] += av * b[kk * cols + j];
                }
            }
            for j in 0..cols {
                let mut v = c[i * cols + j] + bias.map_or(0.0, |b| b[j]);
                if gelu {
                    v = 0.5 * v * (1.0 + (0.7978845608028654 * (v + 0.044715 * v * v * v)).tanh());
                }
                c[i * cols + j] = v;
            }
        }
        c
    };
    // attention of token-major q [rq, heads·dh] over k, v [rkv, heads·dh]; window if given
    let attend = |q: &[f64],
                  k: &[f64],
                  v: &[f64],
                  rq: usize,
                  rkv: usize,
                  heads: usize,
                  window: Option<usize>|
     -> Vec<f64> {
        let hd = heads * dh;
        let mut o = vec![0f64; rq * hd];
        let scale = 1.0 / (dh as f64).sqrt();
        for h in 0..heads {
            for i in 0..rq {
                let pos = (rkv as i64 - rq as i64) + i as i64;
                let s: Vec<f64> = (0..rkv)
                    .map(|j| {
                        if window.is_some_and(|w| (pos - j as i64).unsigned_abs() as usize > w) {
                            return f64::NEG_INFINITY;
                        }
                        scale * (0..dh).map(|x| q[i * hd + h * dh + x] * k[j * hd + h * dh + x]).sum::<f64>()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> =
                    s.iter().map(|&v| if v == f64::NEG_INFINITY { 0.0 } else { (v - mx).exp() }).collect();
                let sum: f64 = p.iter().sum();
                for j in 0..rkv {
                    for x in 0..dh {
                        o[i * hd + h * dh + x] += p[j] / sum * v[j * hd + h * dh + x];
                    }
                }
            }
        }
        o
    };
    let route = |rname: &str, k: usize| -> Vec<(usize, f64)> {
        let rw = w(rname);
        let wn = rw.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut s: Vec<(usize, f64)> = (0..n)
            .map(|i| {
                let row = &xn[i * d..(i + 1) * d];
                let xnrm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                (i, row.iter().zip(&rw).map(|(a, b)| a * b).sum::<f64>() / (xnrm * wn).max(1e-12))
            })
            .collect();
        if !dense {
            s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            s.truncate(k);
        }
        s
    };
    let gather = |sel: &[(usize, f64)]| -> Vec<f64> {
        sel.iter().flat_map(|&(i, _)| xn[i * d..(i + 1) * d].to_vec()).collect()
    };
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    // light attention
    let lhd = cfg.light_heads * dh;
    let (q, k, v) = (
        matmul(&xn, n, d, &w("light.wq"), lhd, None, false),
        matmul(&xn, n, d, &w("light.wk"), lhd, None, false),
        matmul(&xn, n, d, &w("light.wv"), lhd, None, false),
    );
    let o = attend(&q, &k, &v, n, n, cfg.light_heads, Some(cfg.window));
    for (acc, add) in out.iter_mut().zip(matmul(&o, n, lhd, &w("light.wo"), d, None, false)) {
        *acc += add;
    }
    // light FFN
    let h1 = matmul(&xn, n, d, &w("light_ffn.w1"), cfg.ffn_light, Some(&w("light_ffn.b1")), true);
    for (acc, add) in out.iter_mut().zip(matmul(
        &h1,
        n,
        cfg.ffn_light,
        &w("light_ffn.w2"),
        d,
        Some(&w("light_ffn.b2")),
        false,
    )) {
        *acc += add;
    }
    // heavy attention among routed queries and keys/values
    let hhd = cfg.heads * dh;
    let (sq, skv) = (route("router.q", cfg.route_q), route("router.kv", cfg.route_kv));
    let (xq, xkv) = (gather(&sq), gather(&skv));
    let q = matmul(&xq, sq.len(), d, &w("heavy.wq"), hhd, None, false);
    let k = matmul(&xkv, skv.len(), d, &w("heavy.wk"), hhd, None, false);
    let v = matmul(&xkv, skv.len(), d, &w("heavy.wv"), hhd, None, false);
    let o = attend(&q, &k, &v, sq.len(), skv.len(), cfg.heads, None);
    let y = matmul(&o, sq.len(), hhd, &w("heavy.wo"), d, None, false);
    for (r, &(i, s)) in sq.iter().enumerate() {
        for e in 0..d {
            out[i * d + e] += s * y[r * d + e];
        }
    }
    // heavy FFN
    let sf = route("router.ffn", cfg.route_ffn);
    let xf = gather(&sf);
    let h1 = matmul(&xf, sf.len(), d, &w("heavy_ffn.w1"), cfg.ffn_heavy, Some(&w("heavy_ffn.b1")), true);
    let y = matmul(&h1, sf.len(), cfg.ffn_heavy, &w("heavy_ffn.w2"), d, Some(&w("heavy_ffn.b2")), false);
    for (r, &(i, s)) in sf.iter().enumerate() {
        for e in 0..d {
            out[i * d + e] += s * y[r * d + e];
        }
    }
    out
}
