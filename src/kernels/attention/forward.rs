//! The forward call: [`Attention`], prepared once per [`AttnSpec`] by [`AttentionBuilder`].

use super::{AttnBuffers, DeviceTensors, Inputs, Kernel, Traffic, flash, naive};
use crate::contract::blockmap::BlockMap;
use crate::contract::spec::{AttnOutput, AttnSpec};
use crate::error::{Error, Result};
use crate::kernels::{check_call_head_dim, check_head_dim, pad, positions};
use crate::runtime::{Gpu, block_on};

/// The forward kernel an [`Attention`] runs (one per prepared call: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Forward {
    Flash(flash::Flash),
    Naive(naive::Naive),
}

/// A prepared attention call: checked against the device, pipelines compiled, block map and
/// parameters uploaded. Reuse it for every call with the same [`AttnSpec`].
pub struct Attention {
    spec: AttnSpec,
    forward: Forward,
    /// Padded copies of Q, K, V, O when the head dim is not a multiple of 4 (the kernel
    /// runs on them at the padded head dim).
    padded: Option<pad::Padded>,
    /// Q and K under the call's positional encoding (a pass before the kernel).
    positions: Option<positions::EncodedInputs>,
}

/// The tensors [`Attention`] pads: Q, K, V in, O out.
const PADDED_FORWARD: [(&str, pad::Rows); 4] =
    [("Q", pad::Rows::Q), ("K", pad::Rows::Kv), ("V", pad::Rows::Kv), ("O", pad::Rows::Q)];

impl Attention {
    /// Prepares `kernel` for `spec` on `gpu`: f32 inputs, the device's default tiles. The
    /// other choices (f16 inputs, tensor cores, explicit tiles, counters) are
    /// [`Attention::builder`]'s.
    pub fn new(gpu: &Gpu, kernel: Kernel, spec: &AttnSpec) -> Result<Self> {
        Self::builder(spec).kernel(kernel).build(gpu)
    }

    /// A call for `spec` to configure: flash on f32 inputs with the device's default tiles
    /// unless told otherwise.
    pub fn builder(spec: &AttnSpec) -> AttentionBuilder<'_> {
        AttentionBuilder {
            spec,
            kernel: Kernel::Flash,
            inputs: Inputs::F32,
            tiles: None,
            instrumented: false,
        }
    }

    /// The traffic model: device-memory bytes this kernel's loops move, derived from the
    /// kernel's own tiling (flash: its block map; naive: its three passes), plus the padding
    /// copies for a head dim that is not a multiple of 4 and the positional encoding's pass.
    pub fn traffic_model(&self) -> Traffic {
        let inner = pad::padded_spec(&self.spec);
        let kernel = match &self.forward {
            Forward::Flash(f) => f.traffic(&inner),
            Forward::Naive(_) => naive::traffic(&inner),
        };
        self.with_padding(kernel)
    }

    fn with_padding(&self, t: Traffic) -> Traffic {
        let p = self.padded.as_ref().map(pad::Padded::traffic).unwrap_or_default();
        let e = self.positions.as_ref().map(|e| e.traffic(false)).unwrap_or_default();
        Traffic { read: t.read + p.read + e.read, written: t.written + p.written + e.written }
    }

    /// Bytes the instrumented variant counted in its last run (`None` if not instrumented),
    /// plus the padding copies' (from their loops, which have fixed trip counts).
    pub fn measured_traffic(&self, gpu: &Gpu) -> Result<Option<Traffic>> {
        block_on(
            "Attention::measured_traffic",
            "await Attention::measured_traffic_async",
            self.measured_traffic_async(gpu),
        )
    }

    /// [`Attention::measured_traffic`] without blocking the browser.
    pub(crate) async fn measured_traffic_async(&self, gpu: &Gpu) -> Result<Option<Traffic>> {
        let d = pad::padded_dim(self.spec.shape.head_dim);
        let counted = match &self.forward {
            Forward::Flash(f) => f.counters(gpu).await?.map(|c| c.traffic(d)),
            Forward::Naive(n) => n.counted(gpu).await?,
        };
        Ok(counted.map(|t| self.with_padding(t)))
    }

    /// The prepared flash kernel (`None` for other kernels).
    pub fn flash(&self) -> Option<&flash::Flash> {
        match &self.forward {
            Forward::Flash(f) => Some(f),
            Forward::Naive(_) => None,
        }
    }

    /// The flash kernel's block map (`None` for other kernels).
    pub fn block_map(&self) -> Option<&BlockMap> {
        match &self.forward {
            Forward::Flash(f) => Some(f.block_map()),
            Forward::Naive(_) => None,
        }
    }

    /// Counters of the last run of an instrumented flash kernel.
    pub fn flash_counters(&self, gpu: &Gpu) -> Result<Option<flash::FlashCounters>> {
        match &self.forward {
            Forward::Flash(f) => {
                block_on("Attention::flash_counters", "await Attention::flash().counters", f.counters(gpu))
            }
            Forward::Naive(_) => Ok(None),
        }
    }

    /// The problem this call was prepared for.
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// Device memory this kernel allocates beyond Q, K, V, O and LSE (scores, block map…).
    pub fn scratch_bytes(&self) -> u64 {
        let padded = self.padded.as_ref().map_or(0, pad::Padded::bytes);
        let encoded = self.positions.as_ref().map_or(0, positions::EncodedInputs::bytes);
        padded
            + encoded
            + match &self.forward {
                Forward::Flash(f) => f.scratch_bytes(),
                Forward::Naive(n) => n.scratch_bytes(),
            }
    }

    /// Records the kernel's dispatches (one compute pass) into `encoder`. Nothing is submitted.
    pub fn encode(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder, bufs: &AttnBuffers) -> Result<()> {
        self.encode_timed(gpu, encoder, bufs, None)
    }

    /// [`Attention::encode`] with timestamps written at the start and end of the kernel's
    /// pass (for a head dim that is not a multiple of 4, the padding copies before and after
    /// are passes of their own, outside the timestamps).
    pub(crate) fn encode_timed(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttnBuffers,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.check_buffers(bufs)?;
        let mut inner = match &self.padded {
            None => *bufs,
            Some(p) => {
                for (i, src) in [bufs.q, bufs.k, bufs.v].into_iter().enumerate() {
                    p.pad(gpu, encoder, i, src);
                }
                AttnBuffers { q: p.copy(0), k: p.copy(1), v: p.copy(2), o: p.copy(3), lse: bufs.lse }
            }
        };
        if let Some(e) = &self.positions {
            (inner.q, inner.k) = e.encode(gpu, encoder, inner.q, inner.k)?;
        }
        match &self.forward {
            Forward::Flash(f) => f.encode(gpu, encoder, &inner, timestamps),
            Forward::Naive(n) => n.encode(gpu, encoder, &inner, timestamps),
        }
        if let Some(p) = &self.padded {
            p.cut(gpu, encoder, 3, bufs.o);
        }
        Ok(())
    }

    fn check_buffers(&self, b: &AttnBuffers) -> Result<()> {
        let s = self.spec.shape;
        let f = 4u64;
        let fin = if self.flash().is_some_and(flash::Flash::is_f16) { 2 } else { 4 };
        for (name, buf, want) in [
            ("Q", b.q, s.q_len() as u64 * fin),
            ("K", b.k, s.kv_len() as u64 * fin),
            ("V", b.v, s.kv_len() as u64 * fin),
            ("O", b.o, s.q_len() as u64 * f),
            ("LSE", b.lse, s.lse_len() as u64 * f),
        ] {
            if buf.size() < want {
                return Err(Error::BufferTooSmall { what: name, bytes: buf.size(), needed: want });
            }
        }
        Ok(())
    }

    /// Uploads host tensors, runs, and reads O and LSE back.
    pub fn run(&self, gpu: &Gpu, q: &[f32], k: &[f32], v: &[f32]) -> Result<AttnOutput> {
        self.spec.check_inputs(q, k, v)?;
        self.run_on(gpu, &DeviceTensors::upload(gpu, &self.spec, q, k, v)?)
    }

    /// Runs on tensors already on the device (f32 or, for the f16 variants, f16 inputs) and
    /// reads O and LSE back (blocks until done). With mods, a row whose mods ran past their
    /// loop budget is an error ([`Error::ModSteps`]), never a result.
    pub fn run_on(&self, gpu: &Gpu, io: &DeviceTensors) -> Result<AttnOutput> {
        self.submit(gpu, io)?;
        self.checked(io.read(gpu)?)
    }

    /// `out`, or [`Error::ModSteps`] when the call has mods and a row's LSE is NaN: what the
    /// kernel writes where the mods' loops ran past their budget (for callers of
    /// [`Attention::encode`], O and LSE of such a row are NaN).
    fn checked(&self, out: AttnOutput) -> Result<AttnOutput> {
        if let Some(steps) = self.flash().and_then(flash::Flash::mod_steps) {
            crate::kernels::check_mod_steps(self.spec.mods.as_ref(), "flash", steps, &[&out.lse])?;
        }
        Ok(out)
    }

    /// [`Attention::run`] without blocking (the browser's way): uploads, runs, and awaits
    /// O and LSE.
    pub async fn run_async(&self, gpu: &Gpu, q: &[f32], k: &[f32], v: &[f32]) -> Result<AttnOutput> {
        self.spec.check_inputs(q, k, v)?;
        let io = DeviceTensors::upload(gpu, &self.spec, q, k, v)?;
        self.submit(gpu, &io)?;
        self.checked(io.read_async(gpu).await?)
    }

    fn submit(&self, gpu: &Gpu, io: &DeviceTensors) -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.encode(gpu, &mut enc, &io.buffers())?;
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }
}

/// How to prepare an [`Attention`]: the kernel, how it reads its inputs, its tiles and
/// whether it counts what it moves. Every combination goes through one pipeline (validate →
/// kernel checks → padding → positional encoding → variant); one it cannot run is a typed
/// error, never a silently different call.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build`"]
pub struct AttentionBuilder<'s> {
    spec: &'s AttnSpec,
    kernel: Kernel,
    inputs: Inputs,
    tiles: Option<flash::FlashConfig>,
    instrumented: bool,
}

impl AttentionBuilder<'_> {
    /// The kernel (default [`Kernel::Flash`]).
    pub fn kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// How Q, K and V are stored (default [`Inputs::F32`]); f16 inputs are flash's, fed by
    /// [`DeviceTensors::upload_f16`](super::DeviceTensors::upload_f16).
    pub fn inputs(mut self, inputs: Inputs) -> Self {
        self.inputs = inputs;
        self
    }

    /// Flash's tile configuration instead of the device's default (tuned winner, preset or
    /// tensor cores). With f16 inputs the device must have SHADER_F16.
    pub fn tiles(mut self, config: flash::FlashConfig) -> Self {
        self.tiles = Some(config);
        self
    }

    /// Builds the variant that counts tiles, keys and rows moved (see
    /// [`Attention::measured_traffic`], [`Attention::flash_counters`]); f32 inputs only.
    pub fn instrumented(mut self, on: bool) -> Self {
        self.instrumented = on;
        self
    }

    /// Checks the call against the contract and the device, compiles its pipelines and
    /// uploads its parameters.
    pub fn build(self, gpu: &Gpu) -> Result<Attention> {
        let AttentionBuilder { spec, kernel, inputs, tiles, instrumented } = self;
        spec.validate()?;
        let refuse = |config: &str, reason: &str| {
            Err(Error::Config { kernel: kernel.name(), config: config.into(), reason: reason.into() })
        };
        if kernel == Kernel::Naive && tiles.is_some() {
            return refuse("explicit tiles", "tiles configure flash; naive has none");
        }
        if inputs == Inputs::F32 {
            check_call_head_dim("attention", spec.shape.head_dim)?;
            // the kernel runs at the head dim padded to a multiple of 4
            let inner = pad::padded_spec(spec);
            let forward = match kernel {
                Kernel::Flash => {
                    let config =
                        tiles.unwrap_or_else(|| flash::FlashConfig::for_device(gpu, inner.shape.head_dim));
                    Forward::Flash(flash::Flash::new(gpu, &inner, config, instrumented)?)
                }
                Kernel::Naive => Forward::Naive(naive::Naive::new(gpu, &inner, instrumented)?),
            };
            let padded = pad::Padded::new(gpu, &spec.shape, &PADDED_FORWARD)?;
            let stride = pad::padded_dim(spec.shape.head_dim);
            let positions = positions::EncodedInputs::new(gpu, spec, stride, padded.is_some())?;
            return Ok(Attention { spec: spec.clone(), forward, padded, positions });
        }
        // f16 inputs: flash reads Q, K and V as stored, so nothing may rewrite them first
        let what = if inputs == Inputs::F16 { "f16 inputs" } else { "f16 inputs on tensor cores" };
        if kernel == Kernel::Naive {
            return refuse(what, "f16 inputs are flash's; naive reads f32");
        }
        if instrumented {
            return refuse(what, "the counters count f32 bytes; instrument the f32 call");
        }
        if let Some(p) = &spec.positions {
            return refuse(
                &p.name(),
                "positional encodings run on f32 Q and K; encode them before rounding to f16",
            );
        }
        let name = if inputs == Inputs::F16 { "flash (f16 storage)" } else { "flash (tensor cores)" };
        check_head_dim(name, spec.shape.head_dim)?;
        let d = spec.shape.head_dim;
        let (config, native) = match (tiles, inputs) {
            (Some(config), _) => (config, true),
            // vec4 tiles with f32 arithmetic; without SHADER_F16, f16-rounded values stored as
            // f32 and the f32 kernel (DeviceTensors::upload_f16 does the same)
            (None, Inputs::F16) => (
                flash::FlashConfig::choose(gpu.profile().0, gpu.tuned(), gpu, d),
                gpu.features().contains(wgpu::Features::SHADER_F16),
            ),
            (None, _) => match flash::FlashConfig::tensor_cores(gpu, d, true) {
                Some(config) => (config, true),
                None => {
                    return refuse(
                        what,
                        &format!(
                            "the device offers no square f16×f16→f32 cooperative matrix that fits at head dim {d} with a fixed subgroup width and SHADER_F16 (configurations: {:?}; fixed subgroup: {:?}; SHADER_F16: {})",
                            gpu.cooperative_matrices(),
                            gpu.fixed_subgroup(),
                            gpu.features().contains(wgpu::Features::SHADER_F16)
                        ),
                    );
                }
            },
        };
        Ok(Attention {
            spec: spec.clone(),
            forward: Forward::Flash(flash::Flash::new_with(gpu, spec, config, false, native)?),
            padded: None,
            positions: None,
        })
    }
}
