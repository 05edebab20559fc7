//! `positions`: a positional encoding (RoPE or sinusoidal, [`crate::contract::positions`])
//! applied on the device to Q and K before attention, and RoPE's gradient applied to dQ and
//! dK after the backward (`shaders/positions.wgsl`). A pass of its own before the kernels, so
//! flash (vec4 and cooperative), the materialised baseline, the backward and the decoder all
//! run it unchanged; the oracle is [`Positions::apply`] / [`Positions::apply_grad`] in f64.

use crate::contract::AttnShape;
use crate::contract::positions::{Encoding, Positions};
use crate::contract::spec::AttnSpec;
use crate::error::Result;
use crate::kernels::Traffic;
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Bound, Compiled, Shader, ShaderVariant, bind_group};

const NAME: &str = "positions";
/// job, the rows (in place), the table (see positions.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/positions.wgsl"), bindings: EncodeBinds::SLOTS };
bind_group! {
    /// The job, the rows encoded in place and the encoding's table.
    struct EncodeBinds { 0 job: Uniform, 1 x: ReadWrite, 2 table: Read }
}
const WORKGROUP: u64 = 64;

/// The one shader variant.
pub fn variants() -> Vec<ShaderVariant> {
    vec![SHADER.variant("main", &[], vec![])]
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct EncodeJob {
    rows: u32,
    r0: u32,
    per_seq: u32,
    table0: u32,
    first: u32,
    wrap: u32,
    stride: u32,
    d: u32,
    mode: u32,
    inverse: u32,
    groups_x: u32,
    pad: u32,
}

/// Rows a pass encodes: `rows` rows of `stride` floats in `buffer`, starting at buffer row
/// `first` (wrapping at `wrap` rows; 0 = no wrap), row r at table row
/// `table0 + r % per_seq`.
pub(crate) struct Rows<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub rows: usize,
    pub per_seq: usize,
    pub table0: usize,
    pub first: usize,
    pub wrap: usize,
    pub stride: usize,
}

/// An encoding's kernel and its table of cos/sin (or PE) rows on the device.
pub(crate) struct PositionPass {
    positions: Positions,
    d: usize,
    kernel: Compiled,
    table: wgpu::Buffer,
    table_rows: usize,
}

impl PositionPass {
    /// Compiles the pass for head dim `d` and allocates a table of `table_rows` positions
    /// (checked against the binding limit first).
    pub(crate) fn new(gpu: &Gpu, positions: Positions, d: usize, table_rows: usize) -> Result<Self> {
        positions.validate(d)?;
        let bytes = (table_rows.max(1) as u64).saturating_mul(d as u64 * 4);
        gpu.check_binding("positional encoding table", bytes)?;
        Ok(Self {
            positions,
            d,
            kernel: gpu.compile(&variants()[0])?,
            table: gpu.storage("positional encoding table", bytes)?,
            table_rows: table_rows.max(1),
        })
    }

    /// Writes the table rows of positions `lo..hi` at rows `row0..` (before the next
    /// submission's commands, after the previous one's).
    pub(crate) fn write_table(&self, gpu: &Gpu, row0: usize, lo: i64, hi: i64) {
        debug_assert!(row0 + (hi - lo) as usize <= self.table_rows);
        let rows = self.positions.table(lo, hi, self.d);
        gpu.queue.write_buffer(&self.table, (row0 * self.d * 4) as u64, bytemuck::cast_slice(&rows));
    }

    /// Records the encoding (or, `inverse`, RoPE's gradient) of `t` into `pass`: whole-row
    /// dispatches that each fit one storage binding.
    pub(crate) fn encode(
        &self,
        gpu: &Gpu,
        pass: &mut wgpu::ComputePass,
        t: &Rows,
        inverse: bool,
    ) -> Result<()> {
        let units = if self.positions.is_rope() { self.d / 2 } else { self.d } as u64;
        let limits = gpu.limits();
        let (limit, align) =
            (limits.max_storage_buffer_binding_size, limits.min_storage_buffer_offset_alignment as u64);
        let row_bytes = 4 * t.stride as u64;
        let whole = t.wrap != 0 || (t.first + t.rows) as u64 * row_bytes <= limit;
        let chunk_rows = if whole { t.rows as u64 } else { (limit / row_bytes / align * align).max(align) };
        let mode = match self.positions.encoding {
            Encoding::Rope { interleaved: false, .. } => 0,
            Encoding::Rope { interleaved: true, .. } => 1,
            Encoding::Sinusoidal { .. } => 2,
        };
        let mut r0 = 0u64;
        while r0 < t.rows as u64 {
            let n = chunk_rows.min(t.rows as u64 - r0);
            let grid = gpu.grid(NAME, (n * units).div_ceil(WORKGROUP))?;
            let job = EncodeJob {
                rows: n as u32,
                r0: r0 as u32,
                per_seq: t.per_seq as u32,
                table0: t.table0 as u32,
                first: if whole { t.first as u32 } else { 0 },
                wrap: t.wrap as u32,
                stride: t.stride as u32,
                d: self.d as u32,
                mode,
                inverse: inverse as u32,
                groups_x: grid[0],
                pad: 0,
            };
            let job = gpu.uniform("positions job", &job);
            let range = (!whole).then_some(((t.first as u64 + r0) * row_bytes, n * row_bytes));
            let binds = EncodeBinds {
                job: (&job).into(),
                x: Bound::range(t.buffer, range),
                table: (&self.table).into(),
            };
            let bind = self.kernel.bind(gpu, &binds);
            self.kernel.dispatch(pass, &bind, grid);
            r0 += n;
        }
        Ok(())
    }

    /// Device bytes of the table.
    pub(crate) fn bytes(&self) -> u64 {
        self.table.size()
    }

    /// Bytes a pass over `rows` rows moves: each encoded element read and written once, a
    /// table row read per row.
    pub(crate) fn traffic(&self, rows: usize) -> Traffic {
        let floats = (rows * self.d) as u64 * 4;
        Traffic { read: 2 * floats, written: floats }
    }
}

/// One attention call's Q and K under its positional encoding: copies the kernels read
/// (the call's padded copies, encoded in place, or copies of its own), and the pass that
/// rotates dQ and dK back after a backward.
pub(crate) struct EncodedInputs {
    pass: PositionPass,
    shape: AttnShape,
    /// Floats per row of the copies the kernels read (the padded head dim).
    stride: usize,
    /// Q and K copies, when the call has no padded ones to encode in place.
    scratch: Option<[wgpu::Buffer; 2]>,
    /// Table rows of query row 0 and key 0.
    q_table0: usize,
    k_table0: usize,
}

impl EncodedInputs {
    /// For `spec`'s encoding (`None` without one): the table of every position the call
    /// takes, and copies of Q and K unless `padded` ones (at head dim `stride`) are encoded in
    /// place.
    pub(crate) fn new(gpu: &Gpu, spec: &AttnSpec, stride: usize, padded: bool) -> Result<Option<Self>> {
        let Some(p) = spec.positions else { return Ok(None) };
        let s = spec.shape;
        let (lo, hi) = p.span(spec.q_offset(), s.n, s.m);
        let pass = PositionPass::new(gpu, p, s.head_dim, (hi - lo) as usize)?;
        pass.write_table(gpu, 0, lo, hi);
        let scratch = if padded {
            None
        } else {
            let (q, k) = (s.q_len() as u64 * 4, s.kv_len() as u64 * 4);
            Some([gpu.storage_ranged("Q (encoded)", q)?, gpu.storage_ranged("K (encoded)", k)?])
        };
        Ok(Some(Self {
            pass,
            shape: s,
            stride,
            scratch,
            q_table0: (p.query_position(spec.q_offset(), 0) - lo) as usize,
            k_table0: (p.key_position(0) - lo) as usize,
        }))
    }

    /// The Q and K rows of the call.
    fn rows<'a>(&self, q: &'a wgpu::Buffer, k: &'a wgpu::Buffer, stride: usize) -> [Rows<'a>; 2] {
        let s = self.shape;
        let rows = |buffer, count, per_seq, table0| Rows {
            buffer,
            rows: count,
            per_seq,
            table0,
            first: 0,
            wrap: 0,
            stride,
        };
        [
            rows(q, s.batch * s.heads * s.n, s.n, self.q_table0),
            rows(k, s.batch * s.kv_heads * s.m, s.m, self.k_table0),
        ]
    }

    /// Records Q and K encoded and returns the buffers the kernels read: `q`, `k` themselves
    /// when they are the call's padded copies, else its own copies of them.
    pub(crate) fn encode<'a>(
        &'a self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        q: &'a wgpu::Buffer,
        k: &'a wgpu::Buffer,
    ) -> Result<(&'a wgpu::Buffer, &'a wgpu::Buffer)> {
        let (q, k) = match &self.scratch {
            Some([qc, kc]) => {
                encoder.copy_buffer_to_buffer(q, 0, qc, 0, Some(qc.size()));
                encoder.copy_buffer_to_buffer(k, 0, kc, 0, Some(kc.size()));
                (qc, kc)
            }
            None => (q, k),
        };
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        for rows in self.rows(q, k, self.stride) {
            self.pass.encode(gpu, &mut pass, &rows, false)?;
        }
        Ok((q, k))
    }

    /// Records RoPE's gradient on the caller's dQ and dK (the rotation back; nothing for
    /// sinusoidal, whose gradient is the identity).
    pub(crate) fn grads(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        dq: &wgpu::Buffer,
        dk: &wgpu::Buffer,
    ) -> Result<()> {
        if !self.pass.positions.is_rope() {
            return Ok(());
        }
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        for rows in self.rows(dq, dk, self.shape.head_dim) {
            self.pass.encode(gpu, &mut pass, &rows, true)?;
        }
        Ok(())
    }

    /// Device bytes: the table and any copies.
    pub(crate) fn bytes(&self) -> u64 {
        self.pass.bytes() + self.scratch.as_ref().map_or(0, |[q, k]| q.size() + k.size())
    }

    /// Bytes the encoding of Q and K moves per call (the copies included), and with
    /// `backward` the rotation of dQ and dK back.
    pub(crate) fn traffic(&self, backward: bool) -> Traffic {
        let s = self.shape;
        let rows = s.batch * s.heads * s.n + s.batch * s.kv_heads * s.m;
        let mut t = self.pass.traffic(rows);
        if let Some([q, k]) = &self.scratch {
            t.read += q.size() + k.size();
            t.written += q.size() + k.size();
        }
        if backward && self.pass.positions.is_rope() {
            let g = self.pass.traffic(rows);
            t.read += g.read;
            t.written += g.written;
        }
        t
    }
}
