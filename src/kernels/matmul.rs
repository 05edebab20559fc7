//! `matmul`: tiled C = act(A·B + bias) (`shaders/matmul.wgsl`) for projections and FFNs —
//! any M, K, N ≥ 1, optional bias, optional fused GELU — and the engine's measure of how fast
//! an adapter does dense math. The f64 oracle is [`matmul_f64`].

use crate::error::{Error, Result};
use crate::kernels::lowering::STORAGE;
use crate::kernels::{GELU, lanes};
use crate::runtime::Gpu;
use crate::runtime::shader::{
    BindGroupFields, Bound, Compiled, Shader, ShaderVariant, Snippet, bind_group, header_consts,
};

const NAME: &str = "matmul";
/// `Dims`, its uniform and the activation of every matmul kernel.
const COMMON: Snippet =
    Snippet { name: "matmul_common", source: include_str!("../../shaders/matmul_common.wgsl") };
/// The f32 bindings and per-element epilogue of the tiled and cooperative-matrix kernels.
const SCALAR: Snippet =
    Snippet { name: "matmul_scalar", source: include_str!("../../shaders/matmul_scalar.wgsl") };
bind_group! {
    /// The bindings every matmul kernel declares (`dims` in `shaders/matmul_common.wgsl`; the
    /// rest as f32 arrays in `shaders/matmul_scalar.wgsl`, as vec4 arrays in
    /// `shaders/matmul_blocked.wgsl`).
    struct MatmulBinds { 0 dims: Uniform, 1 a: Read, 2 b: Read, 3 bias: Read, 4 c: ReadWrite }
}
/// The register-blocked kernel (`shaders/matmul_blocked.wgsl`): same bindings, as vec4 arrays.
const BLOCKED_SHADER: Shader = Shader {
    stem: "matmul_blocked",
    source: include_str!("../../shaders/matmul_blocked.wgsl"),
    bindings: MatmulBinds::SLOTS,
};
/// The vec4 kernel (matmul.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/matmul.wgsl"), bindings: MatmulBinds::SLOTS };
/// The cooperative-matrix variant (`shaders/matmul_coop.wgsl`): same bindings.
const COOP_SHADER: Shader = Shader {
    stem: "matmul_coop",
    source: include_str!("../../shaders/matmul_coop.wgsl"),
    bindings: MatmulBinds::SLOTS,
};

header_consts! {
    /// The vec4 matmul kernel's constants (matmul.wgsl).
    struct MatmulConsts {
        /// Rows of C per workgroup.
        TM,
        /// Columns of C per workgroup (4 per invocation; 4·SG on the shuffle path).
        TN,
        /// Depth of each A and B tile.
        TK,
        /// Rows of C per invocation.
        RM,
        /// Subgroup width of the shuffle path (0: plain loads).
        SG,
        /// The activation fused into the epilogue (`Activation::code`).
        ACT,
    }
}

header_consts! {
    /// The register-blocked kernel's constants (matmul_blocked.wgsl).
    struct BlockedConsts {
        /// Invocations across a workgroup (each CV vec4 columns).
        WX,
        /// Invocations down a workgroup (each RM rows).
        WY,
        /// Rows of C per invocation.
        RM,
        /// vec4 columns of C per invocation.
        CV,
        /// The activation fused into the epilogue (`Activation::code`).
        ACT,
        /// A is stored transposed (Aᵀ, `[K, M]`).
        TA,
        /// B is stored transposed (Bᵀ, `[N, K]`).
        TB,
    }
}

/// The register-blocked kernel's block: 8 rows × 8 columns per invocation, 8 × 8 invocations
/// (a 64 × 64 block of C per workgroup). Measured on llvmpipe at 1024³ and 2048³ (one run,
/// medians of 3): 8 × 8 per invocation 13.0–14.5 GFLOP/s, 4 × 16 12.0, 8 × 16 9.9, 4 × 8
/// 10.5, 16 × 8 7.3 (spills), 8 × 32 2.7; the workgroup's shape within 10 %.
const BLOCKED: BlockedConsts = BlockedConsts { WX: 8, WY: 8, RM: 8, CV: 2, ACT: 0, TA: 0, TB: 0 };

/// The register-blocked variant for `act`, reading A and B as `layout` stores them.
pub fn blocked_variant(act: Activation, layout: Layout) -> ShaderVariant {
    let consts = BlockedConsts { ACT: act.code(), TA: layout.a_t as u32, TB: layout.b_t as u32, ..BLOCKED };
    BLOCKED_SHADER.variant("main", &[GELU, COMMON], consts.header())
}

/// How a matmul's operands are stored: as the product reads them (`A [M, K]`, `B [K, N]`), or
/// transposed (`Aᵀ [K, M]`, `Bᵀ [N, K]`) — the gradients' `xᵀ·dy` and `dy·Wᵀ` without a
/// transpose pass. Only the register-blocked kernel reads transposed operands
/// ([`Matmul::with_layout`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Layout {
    /// A stored as Aᵀ `[K, M]` (M a multiple of 4).
    pub a_t: bool,
    /// B stored as Bᵀ `[N, K]`.
    pub b_t: bool,
}

/// A cooperative-matrix configuration: S×S matrices, f16 or f32 inputs (f32 accumulation),
/// one subgroup of `subgroup` invocations per workgroup owning 2 × 2 accumulators (a 2S × 2S
/// block of C).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Coop {
    /// Matrix side: 8 or 16.
    pub size: u32,
    /// Inputs rounded to f16 (else f32).
    pub f16: bool,
    /// The subgroup width the workgroup is made of.
    pub subgroup: u32,
    /// The matrix operations rewritten into plain WGSL ([`Coop::emulated`]).
    pub emulated: bool,
}

impl Coop {
    /// The configuration for `props` (the adapter's cooperative-matrix properties) on a
    /// device whose subgroups are `subgroup` wide: square S×S×S with f32 accumulation and
    /// inputs of the asked type (f16 or f32), the larger side preferred; `None` if none
    /// qualifies.
    pub fn choose(
        props: &[wgpu::CooperativeMatrixProperties],
        subgroup: Option<u32>,
        f16: bool,
    ) -> Option<Self> {
        use wgpu::CooperativeScalarType as T;
        let subgroup = subgroup?;
        let ab = if f16 { T::F16 } else { T::F32 };
        let size = props
            .iter()
            .filter(|p| p.ab_type == ab && p.cr_type == T::F32)
            .filter(|p| p.m_size == p.n_size && p.n_size == p.k_size && matches!(p.m_size, 8 | 16))
            .map(|p| p.m_size)
            .max()?;
        Some(Self { size, f16, subgroup, emulated: false })
    }

    /// The same kernels with every cooperative-matrix operation rewritten into plain WGSL
    /// (S×S arrays per invocation, f32 arithmetic in k order): they run on any adapter,
    /// slowly. What checks the tensor-core kernels' indexing, layouts and control flow against
    /// the oracle where no adapter has the feature (the software adapter in CI); never a
    /// choice for speed. With `f16`, inputs are rounded to f16 as on the real path.
    pub fn emulated(size: u32, f16: bool, workgroup: u32) -> Self {
        Self { size, f16, subgroup: workgroup, emulated: true }
    }

    /// The variant's constants common to every cooperative-matrix kernel.
    pub fn consts(&self) -> Vec<(&'static str, u32)> {
        let mut c = vec![("COOP_S", self.size), ("F16_U", self.f16 as u32), ("SGW", self.subgroup)];
        if self.emulated {
            c.push(("COOP_EMULATE_U", 1));
        }
        c
    }

    /// Workgroup memory: A and B slabs in the input type, the f32 block of C.
    pub fn workgroup_bytes(&self) -> u64 {
        let (s, bm, bn) = (self.size as u64, 2 * self.size as u64, 2 * self.size as u64);
        let elem = if self.f16 { 2 } else { 4 };
        (bm * s + s * bn) * elem + bm * bn * 4
    }

    /// The shader variant for `act`.
    pub fn variant(&self, act: Activation) -> ShaderVariant {
        COOP_SHADER
            .variant(
                "main",
                &[GELU, COMMON, SCALAR],
                self.consts().into_iter().chain([("ACT", act.code())]).collect(),
            )
            .lowered(STORAGE)
    }
}

/// Whether a matmul may run on cooperative matrices (tensor cores).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TensorCores {
    /// f32 inputs and f32 accumulation where the adapter offers them — the same numbers as
    /// the vec4 kernel, so models and tests keep their bounds; else the vec4 kernel.
    #[default]
    Exact,
    /// Inputs rounded to f16, products accumulated in f32 (the tensor-core rate; relative
    /// error ≈ 1e-3): required — a typed error where the adapter has no such configuration.
    F16,
    /// Never.
    Off,
    /// The cooperative-matrix kernel with its matrix operations emulated in plain WGSL
    /// ([`Coop::emulated`]): S×S matrices, f16 or f32 inputs, on any adapter — for checking
    /// the tensor-core kernel where none is at hand, never for speed.
    Emulated {
        /// Matrix side: 8 or 16.
        size: u32,
        /// Inputs rounded to f16.
        f16: bool,
    },
}

/// How a [`Matmul`] may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulOptions {
    /// Subgroup operations (shuffles, cooperative matrices) where the device has them.
    pub subgroups: bool,
    /// Cooperative matrices.
    pub tensor_cores: TensorCores,
    /// The register-blocked kernel (`matmul_blocked.wgsl`) where the device's profile prefers
    /// it (`Profile::per_lane_loads`: CPU adapters) and K and N are multiples of 4; `false`
    /// keeps the tiled kernel.
    pub blocked: bool,
}

impl Default for MatmulOptions {
    fn default() -> Self {
        Self { subgroups: true, tensor_cores: TensorCores::Exact, blocked: true }
    }
}

impl Coop {
    /// The configuration `use_` asks for on `gpu`: `None` when it need not or cannot use
    /// cooperative matrices, an error when it must (`F16`) and cannot.
    pub fn for_device(gpu: &Gpu, use_: TensorCores) -> Result<Option<Self>> {
        let subgroup = gpu.fixed_subgroup();
        let props = gpu.cooperative_matrices();
        let found = match use_ {
            TensorCores::Off => return Ok(None),
            TensorCores::Emulated { size, f16 } => return Ok(Some(Self::emulated(size, f16, 32))),
            TensorCores::Exact => Self::choose(props, subgroup, false),
            TensorCores::F16 => Self::choose(props, subgroup, true),
        };
        if found.is_none() && use_ == TensorCores::F16 {
            return Err(Error::Config {
                kernel: "matmul",
                config: "f16 inputs on cooperative matrices".into(),
                reason: format!(
                    "the device offers no square f16×f16→f32 cooperative matrix with a fixed subgroup width (configurations: {:?}; fixed subgroup: {:?}; EXPERIMENTAL_COOPERATIVE_MATRIX: {})",
                    props,
                    subgroup,
                    gpu.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
                ),
            });
        }
        Ok(found)
    }
}

/// Every cooperative-matrix variant the engine can build (both sides, both input types, the
/// subgroup widths of real hardware, every activation): what CI validates with naga.
pub fn coop_variants() -> Vec<ShaderVariant> {
    let mut out = Vec::new();
    for size in [8, 16] {
        for f16 in [false, true] {
            for subgroup in [32, 64] {
                for act in Activation::ALL {
                    out.push(Coop { size, f16, subgroup, emulated: false }.variant(act));
                }
            }
        }
    }
    out
}

/// Tile of C per workgroup, K slab depth, rows per invocation.
const TM: u32 = 64;
const TN: u32 = 32;
const TK: u32 = 16;
const RM: u32 = 8;

/// Fused epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// No activation: `C = A·B + bias`.
    None,
    /// GELU, tanh approximation (GPT-2, CoLT5 here).
    Gelu,
    /// GELU with the exact erf (BERT's `gelu`): 0.5·x·(1 + erf(x/√2)).
    GeluErf,
}

impl Activation {
    /// Every activation, for the variants CI validates and the checks.
    pub const ALL: [Activation; 3] = [Activation::None, Activation::Gelu, Activation::GeluErf];

    fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::GeluErf => 2,
        }
    }

    /// The activation in f64 (the oracle's).
    pub(crate) fn apply_f64(self, v: f64) -> f64 {
        match self {
            Activation::None => v,
            Activation::Gelu => crate::kernels::train::gelu_f64(v).0,
            Activation::GeluErf => 0.5 * v * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2)),
        }
    }
}

/// The shader variant for an activation and subgroup width `sg` (0: no shuffles; else
/// `TN = 4·sg` and TK a multiple of `sg`).
pub fn variant(act: Activation, sg: u32) -> ShaderVariant {
    let tn = if sg > 0 { 4 * sg } else { TN };
    SHADER.variant(
        "main",
        &[lanes(sg), GELU, COMMON, SCALAR],
        MatmulConsts { TM, TN: tn, TK: TK.max(sg), RM, SG: sg, ACT: act.code() }.header(),
    )
}

/// The subgroup width to use: the device's fixed subgroup size if it has SUBGROUP and the
/// size suits the tiles (8 or 16), else 0.
fn subgroup_width(gpu: &Gpu) -> u32 {
    gpu.fixed_subgroup().filter(|w| matches!(w, 8 | 16)).unwrap_or(0)
}

/// A prepared matmul of fixed sizes.
pub struct Matmul {
    /// Per dispatch: the dims uniform, first row, rows, and the (offset, size) byte ranges of
    /// A and C (`None`: whole buffers).
    chunks: Vec<Chunk>,
    chunk_rows: usize,
    whole: bool,
    /// The slices of K one dispatch sums: one, or several where one invocation's loops over
    /// all of K would pass the adapter's cap (the later ones accumulate into C).
    k_parts: Vec<(usize, usize)>,
    /// Rows and columns of C per workgroup.
    tm: u32,
    tn: u32,
    /// The cooperative-matrix configuration in use (`None`: the plain or shuffle kernel).
    coop: Option<Coop>,
    /// The register-blocked kernel runs (else the tiled or cooperative-matrix one).
    blocked: bool,
    /// How it reads A and B (transposed only on the register-blocked kernel).
    layout: Layout,
    m: usize,
    k: usize,
    n: usize,
    kernel: Compiled,
    no_bias: wgpu::Buffer,
    has_bias: bool,
}

impl Matmul {
    /// Prepares `C [m, n] = act(A [m, k]·B [k, n] + bias)` (`bias [n]` when `has_bias`), with
    /// subgroup shuffles where the device's width suits.
    pub fn new(gpu: &Gpu, m: usize, k: usize, n: usize, has_bias: bool, act: Activation) -> Result<Self> {
        Self::with_options(gpu, m, k, n, has_bias, act, MatmulOptions::default())
    }

    /// [`Matmul::new`], choosing whether subgroup operations (shuffles, cooperative
    /// matrices) may be used.
    pub fn with_subgroups(
        gpu: &Gpu,
        m: usize,
        k: usize,
        n: usize,
        has_bias: bool,
        act: Activation,
        subgroups: bool,
    ) -> Result<Self> {
        let tensor_cores = if subgroups { TensorCores::Exact } else { TensorCores::Off };
        Self::with_options(
            gpu,
            m,
            k,
            n,
            has_bias,
            act,
            MatmulOptions { subgroups, tensor_cores, ..Default::default() },
        )
    }

    /// [`Matmul::new`] with explicit paths.
    #[allow(clippy::too_many_arguments)]
    pub fn with_options(
        gpu: &Gpu,
        m: usize,
        k: usize,
        n: usize,
        has_bias: bool,
        act: Activation,
        options: MatmulOptions,
    ) -> Result<Self> {
        Self::with_layout(gpu, [m, k, n], has_bias, act, options, Layout::default())
    }

    /// [`Matmul::with_options`] with A and/or B stored transposed: an error
    /// ([`Error::Invalid`]) unless the register-blocked kernel runs it in one dispatch (a CPU
    /// adapter, K and N multiples of 4, A and C within one binding, and M a multiple of 4 for
    /// Aᵀ) — callers that get one transpose the operand themselves.
    pub fn with_layout(
        gpu: &Gpu,
        [m, k, n]: [usize; 3],
        has_bias: bool,
        act: Activation,
        options: MatmulOptions,
        layout: Layout,
    ) -> Result<Self> {
        let subgroups = options.subgroups;
        if m == 0 || k == 0 || n == 0 {
            return Err(Error::Empty { what: "matmul (M, K, N)".into(), shape: vec![m, k, n] });
        }
        gpu.check_binding("matmul B", (k * n) as u64 * 4)?;
        let limits = gpu.limits();
        for (what, len) in [("A", m * k), ("C", m * n)] {
            let bytes = len as u64 * 4;
            if bytes > limits.max_buffer_size {
                return Err(Error::BufferTooLarge {
                    what: format!("matmul {what}"),
                    bytes,
                    limit: limits.max_buffer_size,
                });
            }
        }
        // rows per dispatch so that A's and C's rows (plus alignment slack) fit one binding
        let (limit, align) =
            (limits.max_storage_buffer_binding_size, limits.min_storage_buffer_offset_alignment as u64);
        let whole = ((m * k).max(m * n) as u64) * 4 <= limit;
        let chunk_rows =
            if whole { m } else { (limit.saturating_sub(align) / (4 * k.max(n) as u64)) as usize };
        if chunk_rows == 0 {
            return Err(Error::BindingTooLarge {
                what: format!("matmul: one row of A ({k} values) or C ({n} values)"),
                bytes: 4 * k.max(n) as u64 + align,
                limit,
            });
        }
        let coop = if subgroups { Coop::for_device(gpu, options.tensor_cores)? } else { None };
        let sg = if subgroups { subgroup_width(gpu) } else { 0 };
        // the register-blocked kernel binds vec4 arrays: K, N and the bound ranges' offsets
        // in whole vec4s
        let blocked = coop.is_none()
            && options.blocked
            && gpu.profile().0.per_lane_loads
            && k.is_multiple_of(4)
            && n.is_multiple_of(4)
            && align.is_multiple_of(16);
        if layout != Layout::default() && !(blocked && whole && (!layout.a_t || m.is_multiple_of(4))) {
            let kernel = match (blocked, coop) {
                (true, _) => "register-blocked kernel",
                (false, Some(_)) => "cooperative-matrix kernel",
                (false, None) => "tiled kernel",
            };
            return Err(Error::Invalid(format!(
                "matmul [{m}×{k}]·[{k}×{n}] with {layout:?}: transposed operands need the register-blocked kernel in one dispatch (and M a multiple of 4 for Aᵀ); here the {kernel} runs{}",
                if whole { "" } else { " in chunks of rows" }
            )));
        }
        // (rows, columns) of C per workgroup, the variant, and one invocation's loop
        // iterations per `step` values of K (the staging loops, the inner loops, slack)
        let per_slab = (TM * TK).div_ceil(64) as u64 + TK as u64 * (1 + RM as u64) + 16;
        let (tm, tn, variant, step, per_step) = match coop {
            Some(c) => {
                gpu.check_workgroup("matmul (cooperative matrices)", c.workgroup_bytes(), c.subgroup)?;
                (2 * c.size, 2 * c.size, c.variant(act), TK, per_slab)
            }
            None if blocked => {
                let BlockedConsts { WX: wx, WY: wy, RM: rm, CV: cv, .. } = BLOCKED;
                gpu.check_workgroup("matmul (register-blocked)", 0, wx * wy)?;
                (wy * rm, wx * 4 * cv, blocked_variant(act, layout), 4, (rm + cv * (1 + rm) + 4) as u64)
            }
            None => {
                let (tn, tk) = if sg > 0 { (4 * sg, TK.max(sg)) } else { (TN, TK) };
                gpu.check_workgroup(NAME, (TM * tk + tk * tn) as u64 * 4, (tn / 4) * (TM / RM))?;
                (TM, tn, variant(act, sg), TK, per_slab)
            }
        };
        gpu.check_dispatch(NAME, [n.div_ceil(tn as usize) as u64, m.div_ceil(tm as usize) as u64, 1])?;
        let mut k_parts = vec![(0, k)];
        if let Some(limit) = gpu.loop_iteration_limit() {
            let needed = (k as u64).div_ceil(step as u64) * per_step;
            if needed > limit {
                // K in slices that each fit, summed into C: exact for a linear epilogue only
                if act != Activation::None {
                    return Err(Error::LoopLimit {
                        kernel: NAME,
                        needed,
                        limit,
                        hint: "K is split into slices summed into C, which needs the activation applied after the sum (Activation::None)",
                    });
                }
                let slice = ((limit / per_step).max(1) * step as u64) as usize;
                k_parts = (0..k).step_by(slice).map(|k0| (k0, (k0 + slice).min(k))).collect();
            }
        }
        let kernel = gpu.compile(&variant)?;
        Ok(Self {
            tm,
            tn,
            coop,
            blocked,
            layout,
            m,
            k,
            n,
            kernel,
            chunks: Self::chunks(gpu, [m, k, n], has_bias, false, chunk_rows, whole, &k_parts),
            k_parts,
            chunk_rows,
            whole,
            no_bias: gpu.storage("matmul no bias", 16)?,
            has_bias,
        })
    }

    /// This matmul adding its result to C instead of overwriting it.
    pub(crate) fn accumulating(mut self, gpu: &Gpu) -> Self {
        self.chunks = Self::chunks(
            gpu,
            [self.m, self.k, self.n],
            self.has_bias,
            true,
            self.chunk_rows,
            self.whole,
            &self.k_parts,
        );
        self
    }

    /// How it reads A and B.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The cooperative-matrix configuration in use (`None`: plain loads or shuffles).
    pub fn coop(&self) -> Option<Coop> {
        self.coop
    }

    /// Which kernel runs, for reports: `coop 16×16 f16`, `coop 8×8 f32`, `vec4 tiles` or
    /// `register-blocked`.
    pub fn path(&self) -> String {
        match self.coop {
            Some(c) => format!(
                "coop {0}×{0} {1}{2}",
                c.size,
                if c.f16 { "f16" } else { "f32" },
                if c.emulated { " (emulated)" } else { "" }
            ),
            None if self.blocked => "register-blocked".into(),
            None => "vec4 tiles".into(),
        }
    }

    /// Dispatches (rows in chunks when A or C exceed one binding).
    pub fn dispatches(&self) -> usize {
        self.chunks.len()
    }

    /// One dispatch per (chunk of `rows` rows, slice of K); the first slice adds the bias
    /// (and C when `acc`), the later ones add to C.
    fn chunks(
        gpu: &Gpu,
        [m, k, n]: [usize; 3],
        has_bias: bool,
        acc: bool,
        rows: usize,
        whole: bool,
        k_parts: &[(usize, usize)],
    ) -> Vec<Chunk> {
        let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
        let range = |offset: u64, size: u64| {
            let aligned = offset - offset % align;
            (aligned, offset + size - aligned)
        };
        (0..m)
            .step_by(rows)
            .flat_map(|r0| k_parts.iter().enumerate().map(move |(part, &(k0, k1))| (r0, part, k0, k1)))
            .map(|(r0, part, k0, k1)| {
                let r1 = (r0 + rows).min(m);
                let (a, c) = if whole {
                    (None, None)
                } else {
                    (
                        Some(range((r0 * k * 4) as u64, ((r1 - r0) * k * 4) as u64)),
                        Some(range((r0 * n * 4) as u64, ((r1 - r0) * n * 4) as u64)),
                    )
                };
                let shift = |r: Option<(u64, u64)>| r.map_or(0, |(off, _)| (off / 4) as u32);
                let dims = [
                    m as u32,
                    k as u32,
                    n as u32,
                    (has_bias && part == 0) as u32,
                    (acc || part > 0) as u32,
                    r0 as u32,
                    r1 as u32,
                    shift(a),
                    shift(c),
                    k0 as u32,
                    k1 as u32,
                    0,
                ];
                Chunk { dims: gpu.uniform("matmul dims", &dims), rows: r1 - r0, a, c }
            })
            .collect()
    }

    /// FLOPs of one call: 2·M·K·N.
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64
    }

    /// Records C = act(A·B + bias) into `encoder` (`bias` of N values when built with one).
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        c: &wgpu::Buffer,
    ) -> Result<()> {
        if bias.is_some() != self.has_bias {
            return Err(Error::Invalid(format!(
                "matmul built {} a bias",
                if self.has_bias { "with" } else { "without" }
            )));
        }
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        for ch in &self.chunks {
            let binds = MatmulBinds {
                dims: (&ch.dims).into(),
                a: Bound::range(a, ch.a),
                b: b.into(),
                bias: bias.unwrap_or(&self.no_bias).into(),
                c: Bound::range(c, ch.c),
            };
            let bind = self.kernel.bind(gpu, &binds);
            let groups =
                [self.n.div_ceil(self.tn as usize) as u32, ch.rows.div_ceil(self.tm as usize) as u32, 1];
            self.kernel.dispatch(&mut pass, &bind, groups);
        }
        Ok(())
    }

    /// Uploads host matrices, runs, reads C back.
    pub fn run(&self, gpu: &Gpu, a: &[f32], b: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>> {
        if a.len() != self.m * self.k || b.len() != self.k * self.n || bias.is_some_and(|x| x.len() != self.n)
        {
            return Err(Error::Shape(format!(
                "matmul [{}×{}]·[{}×{}]: got A {}, B {}, bias {:?} values",
                self.m,
                self.k,
                self.k,
                self.n,
                a.len(),
                b.len(),
                bias.map(<[f32]>::len)
            )));
        }
        crate::contract::spec::check_finite("A", a)?;
        crate::contract::spec::check_finite("B", b)?;
        if let Some(x) = bias {
            crate::contract::spec::check_finite("bias", x)?;
        }
        let (ab, bb) = (gpu.upload_ranged("matmul A", a)?, gpu.upload("matmul B", b)?);
        let biasb = bias.map(|x| gpu.upload("matmul bias", x)).transpose()?;
        let cb = gpu.storage_ranged("matmul C", (self.m * self.n * 4) as u64)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.encode(gpu, &mut enc, &ab, &bb, biasb.as_ref(), &cb)?;
        gpu.queue.submit([enc.finish()]);
        gpu.read(&cb, self.m * self.n)
    }
}

/// One dispatch of a matmul: its dims, rows, and the bound byte ranges of A and C.
struct Chunk {
    dims: wgpu::Buffer,
    rows: usize,
    a: Option<(u64, u64)>,
    c: Option<(u64, u64)>,
}

/// The oracle: act(A·B + bias) in f64.
pub fn matmul_f64(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    act: Activation,
) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for kk in 0..k {
            let av = a[i * k + kk] as f64;
            for j in 0..n {
                c[i * n + j] += av * b[kk * n + j] as f64;
            }
        }
        for j in 0..n {
            c[i * n + j] = act.apply_f64(c[i * n + j] + bias.map_or(0.0, |x| x[j] as f64));
        }
    }
    c
}
