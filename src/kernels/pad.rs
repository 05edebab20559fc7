//! `pad`: rows of `from` floats copied into rows of `to` floats on the device
//! (`shaders/pad.wgsl`) — how the attention kernels, which load vec4 lanes, run every head
//! dim from 1 to 256. A head dim that is not a multiple of 4 runs on zero-padded copies of
//! Q, K, V (and dO) at [`padded_dim`]; the results are cut back to the caller's shape. Zeros
//! in Q and K leave every score unchanged, zeros in V give output columns that are dropped,
//! so the padded run is the same attention. The oracle is [`repack_host`].

use crate::error::{Error, Result};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Bound, Compiled, Shader, ShaderVariant, bind_group};

const NAME: &str = "pad";
/// shape, source rows, destination rows (see pad.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/pad.wgsl"), bindings: PadBinds::SLOTS };
bind_group! {
    /// The copy's shape, its source and its destination.
    struct PadBinds { 0 shape: Uniform, 1 src: Read, 2 dst: ReadWrite }
}
const WORKGROUP: u64 = 64;

/// The head dim the kernels run for head dim `d`: the next multiple of 4.
pub fn padded_dim(d: usize) -> usize {
    d.next_multiple_of(4)
}

/// The one shader variant.
pub fn variants() -> Vec<ShaderVariant> {
    vec![SHADER.variant("main", &[], vec![])]
}

/// `rows` rows of `from` values as rows of `to` values (zeros past `from`): the oracle, and
/// what the decoder does with the host rows it is given.
pub fn repack_host(x: &[f32], rows: usize, from: usize, to: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * to];
    let w = from.min(to);
    for (dst, src) in out.chunks_exact_mut(to).zip(x.chunks_exact(from)) {
        dst[..w].copy_from_slice(&src[..w]);
    }
    out
}

/// One dispatch: the shape uniform, workgroups, and the byte ranges of source and
/// destination (`None`: whole buffers).
type Chunk = (wgpu::Buffer, [u32; 3], Option<(u64, u64)>, Option<(u64, u64)>);

/// A prepared copy of `rows` rows from width `from` to width `to`, in dispatches of whole
/// row ranges that each fit one storage binding.
pub(crate) struct Repack {
    kernel: Compiled,
    chunks: Vec<Chunk>,
    rows: usize,
    from: usize,
    to: usize,
}

impl Repack {
    /// Prepares the copy; fails with a typed error when one row exceeds a binding.
    pub fn new(gpu: &Gpu, rows: usize, from: usize, to: usize) -> Result<Self> {
        if rows == 0 || from == 0 || to == 0 {
            return Err(Error::Empty {
                what: "row copy (rows, from, to)".into(),
                shape: vec![rows, from, to],
            });
        }
        let limits = gpu.limits();
        let (limit, align) =
            (limits.max_storage_buffer_binding_size, limits.min_storage_buffer_offset_alignment as u64);
        let row_bytes = 4 * from.max(to) as u64;
        let whole = rows as u64 * row_bytes <= limit;
        // chunks start at a multiple of `align` rows, so both byte offsets are aligned
        let chunk_rows = if whole { rows as u64 } else { limit / row_bytes / align * align };
        if chunk_rows == 0 {
            return Err(Error::BindingTooLarge {
                what: format!("row copy: {align} rows of {} values", from.max(to)),
                bytes: align * row_bytes,
                limit,
            });
        }
        let mut chunks = Vec::new();
        let mut r0 = 0u64;
        while r0 < rows as u64 {
            let n = chunk_rows.min(rows as u64 - r0);
            let grid = gpu.grid(NAME, (n * to as u64).div_ceil(WORKGROUP))?;
            let shape = [n as u32, from as u32, to as u32, grid[0]];
            let range = |w: usize| (!whole).then_some((r0 * 4 * w as u64, n * 4 * w as u64));
            chunks.push((gpu.uniform("pad shape", &shape), grid, range(from), range(to)));
            r0 += n;
        }
        Ok(Self { kernel: gpu.compile(&variants()[0])?, chunks, rows, from, to })
    }

    /// Records `dst ← src` (rows repacked) as one compute pass.
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
    ) {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        for (shape, groups, s, d) in &self.chunks {
            let binds =
                PadBinds { shape: shape.into(), src: Bound::range(src, *s), dst: Bound::range(dst, *d) };
            let bind = self.kernel.bind(gpu, &binds);
            self.kernel.dispatch(&mut pass, &bind, *groups);
        }
    }

    /// Bytes of the destination.
    pub(crate) fn dst_bytes(&self) -> u64 {
        (self.rows * self.to * 4) as u64
    }

    /// Bytes the copy moves: source read (up to the destination's width), destination written.
    pub fn traffic(&self) -> crate::kernels::Traffic {
        let rows = self.rows as u64;
        crate::kernels::Traffic { read: rows * 4 * self.from.min(self.to) as u64, written: self.dst_bytes() }
    }
}

/// Which rows a padded tensor has: Q-shaped `[B, H, N, D]` or K-shaped `[B, Hkv, M, D]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rows {
    Q,
    Kv,
}

/// Zero-padded device copies of some of one call's tensors, for a head dim that is not a
/// multiple of 4: the copies, and the four row copies between the caller's width and the
/// kernels' (Q- and K-shaped, in and out). Built when the call is prepared; encoding
/// allocates nothing.
pub(crate) struct Padded {
    copies: Vec<wgpu::Buffer>,
    sides: Vec<Rows>,
    pad_q: Repack,
    pad_kv: Repack,
    cut_q: Repack,
    cut_kv: Repack,
}

impl Padded {
    /// Copies named `tensors` for `shape` (`None` when the head dim is a multiple of 4).
    pub(crate) fn new(
        gpu: &Gpu,
        shape: &crate::contract::spec::AttnShape,
        tensors: &[(&str, Rows)],
    ) -> Result<Option<Self>> {
        let (d, dp) = (shape.head_dim, padded_dim(shape.head_dim));
        if d == dp {
            return Ok(None);
        }
        let q_rows = shape.batch * shape.heads * shape.n;
        let kv_rows = shape.batch * shape.kv_heads * shape.m;
        let (pad_q, pad_kv) = (Repack::new(gpu, q_rows, d, dp)?, Repack::new(gpu, kv_rows, d, dp)?);
        let (cut_q, cut_kv) = (Repack::new(gpu, q_rows, dp, d)?, Repack::new(gpu, kv_rows, dp, d)?);
        let mut copies = Vec::with_capacity(tensors.len());
        for &(name, side) in tensors {
            let bytes = if side == Rows::Q { pad_q.dst_bytes() } else { pad_kv.dst_bytes() };
            copies.push(gpu.storage_ranged(&format!("{name} (padded to D = {dp})"), bytes)?);
        }
        Ok(Some(Self { copies, sides: tensors.iter().map(|t| t.1).collect(), pad_q, pad_kv, cut_q, cut_kv }))
    }

    /// The padded copy of tensor `i` (in the order given to [`Padded::new`]).
    pub(crate) fn copy(&self, i: usize) -> &wgpu::Buffer {
        &self.copies[i]
    }

    /// Records copy `i` ← `src` (the caller's rows, zero-padded).
    pub(crate) fn pad(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder, i: usize, src: &wgpu::Buffer) {
        let r = if self.sides[i] == Rows::Q { &self.pad_q } else { &self.pad_kv };
        r.encode(gpu, encoder, src, &self.copies[i]);
    }

    /// Records `dst` ← copy `i` (the padding cut off).
    pub(crate) fn cut(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder, i: usize, dst: &wgpu::Buffer) {
        let r = if self.sides[i] == Rows::Q { &self.cut_q } else { &self.cut_kv };
        r.encode(gpu, encoder, &self.copies[i], dst);
    }

    /// Device memory of the copies.
    pub(crate) fn bytes(&self) -> u64 {
        self.copies.iter().map(wgpu::Buffer::size).sum()
    }

    /// Bytes the copies move per call: each is filled (pad) or emptied (cut) once.
    pub(crate) fn traffic(&self) -> crate::kernels::Traffic {
        let mut t = crate::kernels::Traffic::default();
        for &side in &self.sides {
            let r = if side == Rows::Q { self.pad_q.traffic() } else { self.pad_kv.traffic() };
            t.read += r.read;
            t.written += r.written;
        }
        t
    }
}

/// `spec` as the kernels run it: for a head dim that is not a multiple of 4 the padded head
/// dim, the caller's scale (`1/sqrt(D)` of the real D) made explicit, no positional encoding
/// (a pass of its own encodes Q and K first).
pub(crate) fn padded_spec(spec: &crate::contract::spec::AttnSpec) -> crate::contract::spec::AttnSpec {
    let mut inner = spec.clone();
    inner.shape.head_dim = padded_dim(spec.shape.head_dim);
    inner.scale = Some(spec.scale_value());
    // the kernels read Q and K already encoded (kernels::positions)
    inner.positions = None;
    inner
}
