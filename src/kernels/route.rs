//! `route`: CoLT5-style routing on the GPU (`shaders/route.wgsl`) — router scores, top-k
//! by bitonic sort (ties to the lower token index, so deterministic), gather of the selected
//! rows and scatter-add of processed rows back to their positions, scaled by the router score.
//! No CPU round trip between the steps. The oracle is [`top_k_cpu`].

use crate::error::{Error, Result};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group};

const NAME: &str = "route";
/// params, x, router weights, scores, indices, rows, scatter target (see route.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/route.wgsl"), bindings: RouteBinds::SLOTS };
bind_group! {
    /// params, x, router weights, scores, indices, rows, scatter target.
    struct RouteBinds {
        0 rt: Uniform, 1 x: Read, 2 w: Read, 3 keys: ReadWrite, 4 idx: ReadWrite, 5 rows: ReadWrite,
        6 out: ReadWrite,
    }
}
const ENTRIES: [&str; 4] = ["scores", "sort_step", "gather", "scatter"];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RouteParams {
    n: u32,
    d: u32,
    k: u32,
    padded: u32,
    kk: u32,
    jj: u32,
    neg_inf: f32,
    pad: u32,
}

/// The shader variants (one per entry point).
pub fn variants() -> Vec<ShaderVariant> {
    ENTRIES.iter().map(|&entry| SHADER.variant(entry, &[], vec![])).collect()
}

/// The oracle: the `k` tokens with the highest router score (ties: lower index first),
/// in that order, with their scores. Scores are cosine similarities computed in f64.
pub fn top_k_cpu(x: &[f32], w: &[f32], n: usize, d: usize, k: usize) -> Vec<(usize, f64)> {
    let wn: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let mut s: Vec<(usize, f64)> = (0..n)
        .map(|i| {
            let row = &x[i * d..(i + 1) * d];
            let xn: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let dot: f64 = row.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
            (i, dot / (xn * wn).max(1e-12))
        })
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    s.truncate(k);
    s
}

/// A router for `n` tokens of width `d` selecting `k`.
pub struct Router {
    n: usize,
    d: usize,
    k: usize,
    padded: usize,
    pipelines: Vec<Compiled>,
    /// Parameters of the scores/gather/scatter passes, then one per sort step.
    base: wgpu::Buffer,
    steps: Vec<wgpu::Buffer>,
    /// `[P]` f32 router scores, P = N rounded up to a power of two (padding −inf); after
    /// [`Router::encode_select`] sorted best first, `keys[..k]` the selection's.
    pub keys: wgpu::Buffer,
    /// `[P]` u32 token index of each entry of `keys`; after selection `idx[..k]` are the
    /// selected tokens.
    pub idx: wgpu::Buffer,
    /// Bound where a pass leaves `rows` or `out` unused: WebGPU refuses one buffer bound
    /// writable twice in a bind group.
    spare: wgpu::Buffer,
}

impl Router {
    /// Prepares top-`k` routing of `n` tokens of width `d` (`1 ≤ k ≤ n`).
    pub fn new(gpu: &Gpu, n: usize, d: usize, k: usize) -> Result<Self> {
        if n == 0 || d == 0 || k == 0 {
            return Err(Error::Empty { what: "router (N, d, k)".into(), shape: vec![n, d, k] });
        }
        if k > n {
            return Err(Error::OutOfRange {
                what: "routed tokens k (top-k of N)".into(),
                value: k as u64,
                min: 1,
                max: n as u64,
            });
        }
        if let Some(limit) = gpu.loop_iteration_limit()
            && d as u64 + 1 > limit
        {
            return Err(Error::LoopLimit {
                kernel: NAME,
                needed: d as u64 + 1,
                limit,
                hint: "the router loops over d per token",
            });
        }
        let padded = n.next_power_of_two();
        gpu.check_dispatch(NAME, [padded.div_ceil(64) as u64, 1, 1])?;
        let params = |kk: usize, jj: usize| RouteParams {
            n: n as u32,
            d: d as u32,
            k: k as u32,
            padded: padded as u32,
            kk: kk as u32,
            jj: jj as u32,
            neg_inf: f32::NEG_INFINITY,
            pad: 0,
        };
        let mut steps = Vec::new();
        let mut kk = 2;
        while kk <= padded {
            let mut jj = kk / 2;
            while jj > 0 {
                steps.push(gpu.uniform("route sort step", &params(kk, jj)));
                jj /= 2;
            }
            kk *= 2;
        }
        let pipelines = variants().iter().map(|v| gpu.compile(v)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            n,
            d,
            k,
            padded,
            pipelines,
            base: gpu.uniform("route params", &params(0, 0)),
            steps,
            keys: gpu.storage("route scores", (padded * 4) as u64)?,
            idx: gpu.storage("route indices", (padded * 4) as u64)?,
            spare: gpu.storage("route unused binding", 4)?,
        })
    }

    fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        // every entry point shares one layout
        let binds = RouteBinds {
            rt: params.into(),
            x: x.into(),
            w: w.into(),
            keys: (&self.keys).into(),
            idx: (&self.idx).into(),
            rows: rows.into(),
            out: out.into(),
        };
        self.pipelines[0].bind(gpu, &binds)
    }

    /// One compute pass running `steps` (entry point index, parameters) over `groups`
    /// workgroups each, with rows buffer `rows` and scatter target `out`.
    #[allow(clippy::too_many_arguments)]
    fn passes(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        steps: &[(usize, &wgpu::Buffer)],
        groups: u32,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) {
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        for &(entry, params) in steps {
            let bind = self.bind(gpu, params, x, w, rows, out);
            self.pipelines[entry].dispatch(&mut pass, &bind, [groups, 1, 1]);
        }
    }

    /// Records scores and the sort: afterwards `keys[..k]`, `idx[..k]` hold the selection.
    pub fn encode_select(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
    ) {
        let mut steps = vec![(0, &self.base)];
        steps.extend(self.steps.iter().map(|p| (1, p)));
        self.passes(gpu, enc, &steps, self.padded.div_ceil(64) as u32, x, w, scratch, &self.spare);
    }

    /// Records the scores only, every token selected in its own order (`idx[i] = i`): the
    /// dense reference, which routes all tokens without sorting.
    pub(crate) fn encode_scores(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
    ) {
        self.passes(
            gpu,
            enc,
            &[(0, &self.base)],
            self.padded.div_ceil(64) as u32,
            x,
            w,
            scratch,
            &self.spare,
        );
    }

    /// Records `rows[r] = x[idx[r]]` for the k selected tokens.
    pub fn encode_gather(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        rows: &wgpu::Buffer,
    ) {
        self.passes(
            gpu,
            enc,
            &[(2, &self.base)],
            (self.k * self.d).div_ceil(64) as u32,
            x,
            w,
            rows,
            &self.spare,
        );
    }

    /// Records `out[idx[r]] += score[r] · rows[r]`.
    pub fn encode_scatter(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) {
        self.passes(gpu, enc, &[(3, &self.base)], (self.k * self.d).div_ceil(64) as u32, x, w, rows, out);
    }

    /// Host convenience: the selected (token, score) pairs, best first.
    pub fn select(&self, gpu: &Gpu, x: &[f32], w: &[f32]) -> Result<Vec<(usize, f32)>> {
        if x.len() != self.n * self.d || w.len() != self.d {
            return Err(Error::Shape(format!(
                "router: x must be [{}, {}] and w [{}]; got {} and {} values",
                self.n,
                self.d,
                self.d,
                x.len(),
                w.len()
            )));
        }
        crate::contract::spec::check_finite("x", x)?;
        crate::contract::spec::check_finite("w", w)?;
        let (xb, wb) = (gpu.upload("route x", x)?, gpu.upload("route w", w)?);
        let scratch = gpu.storage("route scratch", 4)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.encode_select(gpu, &mut enc, &xb, &wb, &scratch);
        gpu.queue.submit([enc.finish()]);
        let keys: Vec<f32> = gpu.read(&self.keys, self.k)?;
        let idx: Vec<u32> = gpu.read(&self.idx, self.k)?;
        Ok(idx.into_iter().map(|i| i as usize).zip(keys).collect())
    }
}
