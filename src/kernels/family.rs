//! The registry of kernel families: every family the engine builds, each with every variant
//! it can build for a device. The naga sweep (`tests/shaders.rs`) validates them all under
//! several limit sets and checks each variant's bindings against its WGSL; the match below is
//! exhaustive, so a family added to the enum without its variants does not build, and the
//! sweep fails for a `.wgsl` file with a compute entry point that no family builds.

use crate::contract::mods::{Mods, Named};
use crate::kernels::attention::{backward, decode, flash, naive, paged, sparse, sparse_backward};
use crate::kernels::{MAX_HEAD_DIM, dsa, embed, heatmap, layer, matmul, mods};
use crate::kernels::{nsa, pad, peak, positions, ring, route, selection, train, with_mods};
use crate::runtime::shader::ShaderVariant;

/// A kernel family: one Rust module beside its `.wgsl` file(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `flash.wgsl`, `flash_coop.wgsl`: tiled attention forward.
    Flash,
    /// `naive.wgsl`: materialised attention, the baseline.
    Naive,
    /// `backward.wgsl`: dQ, dK, dV (tiled and materialised).
    Backward,
    /// `decode.wgsl`: one step against a KV cache, split over the cache.
    Decode,
    /// `paged.wgsl`: a step of many sequences over a paged, quantised KV cache.
    Paged,
    /// `heatmap.wgsl`: one head's probabilities pooled to pixels.
    Heatmap,
    /// `mod_map.wgsl`: block maps refined by a `mask_mod`.
    ModMap,
    /// `matmul.wgsl`, `matmul_blocked.wgsl`, `matmul_coop.wgsl`: C = A·B (+ bias, activation).
    Matmul,
    /// `train.wgsl`: the trainer's losses and backward passes.
    Train,
    /// `layer.wgsl`: layer norm, softmax, adds.
    Layer,
    /// `embed.wgsl`: embedding gathers, pooling, normalisation.
    Embed,
    /// `route.wgsl`: CoLT5's router, top-k, gather and scatter.
    Route,
    /// `pad.wgsl`: head dims padded to a multiple of 4.
    Pad,
    /// `positions.wgsl`: RoPE and sinusoidal encodings in place.
    Positions,
    /// `ring.wgsl`: ring attention's merges.
    Ring,
    /// `peak.wgsl`: the FMA and copy probes.
    Peak,
    /// `selection.wgsl`: learned sparse attention's selection stage (MoBA's block choice).
    Selection,
    /// `sparse.wgsl`: attention over per-query lists of key blocks (what a selection chose).
    Sparse,
    /// `sparse_backward.wgsl`: dQ, dK, dV of attention over per-query block lists.
    SparseBackward,
    /// `nsa.wgsl`: NSA's compression, block scores and choice, and its gated mix.
    Nsa,
    /// `nsa_backward.wgsl`: NSA's own backward stages (dO's shares, the gates' and φ's
    /// gradients, the compression's backward).
    NsaBackward,
    /// `dsa_index.wgsl` and `dsa.wgsl`: DSA's indexer and top-k, and attention over each row's
    /// chosen keys.
    Dsa,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 22] = [
        Family::Flash,
        Family::Naive,
        Family::Backward,
        Family::Decode,
        Family::Paged,
        Family::Heatmap,
        Family::ModMap,
        Family::Matmul,
        Family::Train,
        Family::Layer,
        Family::Embed,
        Family::Route,
        Family::Pad,
        Family::Positions,
        Family::Ring,
        Family::Peak,
        Family::Selection,
        Family::Sparse,
        Family::SparseBackward,
        Family::Nsa,
        Family::NsaBackward,
        Family::Dsa,
    ];

    /// Every variant the family builds for a device with `limits`, over every supported head
    /// dim, with and without attention mods where it runs them.
    pub fn variants(self, limits: &wgpu::Limits) -> Vec<ShaderVariant> {
        let dims = || (4..=MAX_HEAD_DIM).step_by(4);
        // built once (each is checked by naga), then compiled into every head dim's variants
        let samples = sample_mods();
        match self {
            Family::Flash => dims()
                .flat_map(|d| {
                    let config = flash::FlashConfig::for_limits(limits, d);
                    let mut v = vec![
                        config.variant(d, false),
                        config.variant(d, true),
                        config.variant_f16(d, false, true),
                    ];
                    // the subgroup-shuffle path at the subgroup widths of real hardware
                    for sg in [8, 16, 32, 64] {
                        if config.p == 1 && config.br.is_multiple_of(sg) {
                            let c = flash::FlashConfig { sg, ..config };
                            v.extend([c.variant(d, false), c.variant(d, true)]);
                        }
                    }
                    v.extend(samples.iter().map(|m| modded(config.variant(d, false), m)));
                    v
                })
                .chain(flash::coop_variants())
                .collect(),
            Family::Naive => {
                dims().flat_map(|d| [naive::variants(d, false), naive::variants(d, true)].concat()).collect()
            }
            Family::Backward => dims()
                .flat_map(|d| {
                    // plain loads, and shuffles at the subgroup widths of real hardware
                    [(32, 32, 0), (32, 32, 8), (64, 32, 32), (16, 16, 16), (8, 8, 8), (4, 4, 0)]
                        .into_iter()
                        .flat_map(move |(br, bc, sg)| {
                            backward::BackwardConfig { br, bc, sg, dq_pass_tiles: 0, dkv_pass_tiles: 0 }
                                .variants(d)
                        })
                        .chain(samples.iter().flat_map(|m| {
                            let c = backward::BackwardConfig {
                                br: 32,
                                bc: 32,
                                sg: 0,
                                dq_pass_tiles: 0,
                                dkv_pass_tiles: 0,
                            };
                            c.variants(d).into_iter().map(|v| modded(v, m)).collect::<Vec<_>>()
                        }))
                        .collect::<Vec<_>>()
                })
                .collect(),
            Family::Decode => dims()
                .flat_map(|d| {
                    [(8, 0), (64, 0), (8, 8), (32, 32)]
                        .into_iter()
                        .flat_map(move |(wg, sg)| decode::variants(d, 8, wg, sg, sg > 0))
                })
                .collect(),
            Family::Paged => {
                use crate::contract::paged::KvFormat;
                let pairs = KvFormat::ALL.into_iter().flat_map(|k| KvFormat::ALL.map(|v| (k, v)));
                pairs
                    .flat_map(|(k, v)| {
                        (32..=MAX_HEAD_DIM).step_by(32).flat_map(move |d| {
                            [(8, 0), (64, 0), (8, 8), (32, 32)]
                                .into_iter()
                                .flat_map(move |w| paged::variants(d, k, v, w, 8, 64))
                        })
                    })
                    .chain(
                        dims().flat_map(|d| paged::variants(d, KvFormat::F32, KvFormat::F32, (8, 8), 32, 5)),
                    )
                    .collect()
            }
            Family::Heatmap => dims()
                .flat_map(|d| {
                    let c = flash::FlashConfig::for_limits(limits, d);
                    let plain = heatmap::variant(d, c.br, c.bc);
                    let modded = samples.iter().map(|m| modded(plain.clone(), m));
                    std::iter::once(plain.clone()).chain(modded).collect::<Vec<_>>()
                })
                .collect(),
            Family::ModMap => samples
                .iter()
                .filter(|m| m.has_mask_mod())
                .flat_map(|m| {
                    [(32, 32), (64, 16), (4, 4)].map(|(br, bc)| {
                        mods::variant(m, br, bc, 100, 300, 1000).expect("the sample mods compile")
                    })
                })
                .collect(),
            Family::Matmul => matmul::coop_variants()
                .into_iter()
                .chain(
                    [0, 8, 16]
                        .into_iter()
                        .flat_map(|sg| matmul::Activation::ALL.map(|a| matmul::variant(a, sg))),
                )
                .chain(matmul::Activation::ALL.map(|act| matmul::blocked_variant(act, Default::default())))
                .chain([(true, false), (false, true), (true, true)].map(|(a_t, b_t)| {
                    matmul::blocked_variant(matmul::Activation::None, matmul::Layout { a_t, b_t })
                }))
                .collect(),
            Family::Train => train::variants(),
            Family::Layer => layer::variants(),
            Family::Embed => embed::variants(),
            Family::Route => route::variants(),
            Family::Pad => pad::variants(),
            Family::Positions => positions::variants(),
            Family::Ring => ring::variants(),
            Family::Peak => peak::variants(),
            Family::Selection => selection::variants(),
            Family::Sparse => sparse::variants(limits),
            Family::SparseBackward => sparse_backward::variants(),
            Family::Nsa => nsa::variants(),
            Family::NsaBackward => nsa::backward_variants(),
            Family::Dsa => dsa::variants(),
        }
    }
}

/// `variant` with the sample `mods` compiled in (for a 100 × 300 call, 1000 loop steps).
fn modded(variant: ShaderVariant, mods: &Mods) -> ShaderVariant {
    with_mods(variant, Some(mods), 100, 300, 1000).expect("the sample mods compile with their step budget")
}

/// Mods that exercise every way user WGSL enters a kernel: a `mask_mod`, a `score_mod`
/// reading a buffer in bind group 1, and both at once.
fn sample_mods() -> Vec<Mods> {
    let table = std::sync::Arc::new(vec![0.5; 4 * crate::contract::mods::T5_BUCKETS]);
    let window = Named::Window(64).mods();
    let t5 = Named::T5(table).mods();
    let both = Named::Window(64)
        .mods()
        .and(Named::Softcap(30.0).mods())
        .expect("a mask_mod and a score_mod combine");
    vec![window, t5, both]
}
