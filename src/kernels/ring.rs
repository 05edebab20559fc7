//! `ring`: the merges ring attention runs on each rank's device (`shaders/ring.wgsl`) — a
//! partial (O, LSE) folded into the running one by log-sum-exp, and gradients summed. Checked
//! through the ring against the f64 oracle of the whole call (`tests/ring.rs`); the ring
//! itself is `parallel::ring`.

use crate::error::Result;
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group};

const NAME: &str = "ring";
const SOURCE: &str = include_str!("../../shaders/ring.wgsl");
/// job, running O, running LSE, partial O, partial LSE.
const MERGE: Shader = Shader { stem: NAME, source: SOURCE, bindings: MergeBinds::SLOTS };
bind_group! {
    /// The merge's job, the running (O, LSE) and the part merged into them.
    struct MergeBinds { 0 job: Uniform, 1 acc: ReadWrite, 2 acc_lse: ReadWrite, 3 part: Read, 4 part_lse: Read }
}
bind_group! {
    /// The sum's job, the running sum and the addend.
    struct AddBinds { 0 job: Uniform, 1 acc: ReadWrite, 3 part: Read }
}
/// job, sum, addend.
const ADD: Shader = Shader { stem: NAME, source: SOURCE, bindings: AddBinds::SLOTS };
const WORKGROUP: u64 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MergeJob {
    len: u32,
    d: u32,
    groups_x: u32,
    neg_inf: f32,
}

/// The shader variants (merge, add).
pub fn variants() -> Vec<ShaderVariant> {
    vec![MERGE.variant("merge", &[], vec![]), ADD.variant("add", &[], vec![])]
}

/// The merge and add kernels, compiled for one device.
pub struct Merges {
    merge: Compiled,
    add: Compiled,
}

impl Merges {
    /// Compiles both kernels.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let [m, a]: [ShaderVariant; 2] = variants().try_into().expect("two ring variants");
        Ok(Self { merge: gpu.compile(&m)?, add: gpu.compile(&a)? })
    }

    fn job(gpu: &Gpu, len: usize, d: usize) -> Result<(wgpu::Buffer, [u32; 3])> {
        let grid = gpu.grid(NAME, (len as u64).div_ceil(WORKGROUP))?;
        let job = MergeJob { len: len as u32, d: d as u32, groups_x: grid[0], neg_inf: f32::NEG_INFINITY };
        Ok((gpu.uniform("ring job", &job), grid))
    }

    /// Records (`o`, `lse`) ← their log-sum-exp merge with (`o_part`, `lse_part`), `rows`
    /// rows of `d` floats.
    #[allow(clippy::too_many_arguments)]
    pub fn merge(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        o: &wgpu::Buffer,
        lse: &wgpu::Buffer,
        o_part: &wgpu::Buffer,
        lse_part: &wgpu::Buffer,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        let (job, groups) = Self::job(gpu, rows, d)?;
        let binds = MergeBinds {
            job: (&job).into(),
            acc: o.into(),
            acc_lse: lse.into(),
            part: o_part.into(),
            part_lse: lse_part.into(),
        };
        let bind = self.merge.bind(gpu, &binds);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("ring merge"),
            timestamp_writes: None,
        });
        self.merge.dispatch(&mut pass, &bind, groups);
        Ok(())
    }

    /// Records `acc` += `x` over `len` floats.
    pub fn add(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        acc: &wgpu::Buffer,
        x: &wgpu::Buffer,
        len: usize,
    ) -> Result<()> {
        let (job, groups) = Self::job(gpu, len, 1)?;
        let bind = self.add.bind(gpu, &AddBinds { job: (&job).into(), acc: acc.into(), part: x.into() });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("ring add"),
            timestamp_writes: None,
        });
        self.add.dispatch(&mut pass, &bind, groups);
        Ok(())
    }
}
