//! The traffic model of each kernel equals what its instrumented variant counts, exactly.

use crate::common;

use std::sync::Arc;

use longctx::contract::mask::{BigBird, Mask};
use longctx::{Alibi, Attention, AttnShape, AttnSpec, DeviceTensors, Kernel, Window};

fn specs() -> Vec<AttnSpec> {
    let s = |h, hkv, n, m, d| AttnShape { batch: 2, heads: h, kv_heads: hkv, n, m, head_dim: d };
    vec![
        AttnSpec::new(s(2, 2, 100, 100, 64)),
        AttnSpec::new(s(4, 2, 77, 130, 32)).causal(true),
        AttnSpec::new(s(2, 1, 130, 77, 128)).causal(true).alibi(Alibi::Standard),
        AttnSpec::new(s(2, 2, 200, 200, 64)).window(Some(Window::new(20, 5))),
        AttnSpec::new(s(2, 2, 150, 150, 32)).mask(Some(
            Mask::bigbird(&BigBird { global: 1, window: 1, random: 1, block: 16, seed: 2 }, 150).unwrap(),
        )),
        AttnSpec::new(s(2, 2, 96, 96, 32))
            .mask(Some(Mask::Segments(Arc::new((0..96).map(|p| p / 40).collect()))))
            .causal(true),
    ]
}

#[test]
fn model_equals_measured_for_flash_and_naive() {
    let g = common::gpu();
    for spec in specs() {
        let (q, k, v) = common::inputs(&spec, 1);
        let io = DeviceTensors::upload(g, &spec, &q, &k, &v).unwrap();
        for kernel in [Kernel::Flash, Kernel::Naive] {
            let attn = Attention::builder(&spec).kernel(kernel).instrumented(true).build(g).unwrap();
            let mut enc = g.device.create_command_encoder(&Default::default());
            attn.encode(g, &mut enc, &io.buffers()).unwrap();
            g.queue.submit([enc.finish()]);
            let measured = attn.measured_traffic(g).unwrap().expect("instrumented");
            let model = attn.traffic_model();
            let s = spec.shape;
            println!(
                "{:<6} N={:<4} M={:<4} D={:<4} model {:>10} B  measured {:>10} B",
                kernel.name(),
                s.n,
                s.m,
                s.head_dim,
                model.total(),
                measured.total()
            );
            assert_eq!(model, measured, "{} {spec:?}", kernel.name());
        }
    }
}

#[test]
fn flash_moves_far_less_than_naive() {
    // Θ(N·M·D/BR) against Θ(N·M·D): at N = M = 512 the ratio is tens.
    let g = common::gpu();
    let spec = AttnSpec::new(AttnShape::mha(1, 2, 512, 512, 64)).causal(true);
    let flash = Attention::new(g, Kernel::Flash, &spec).unwrap().traffic_model().total();
    let naive = Attention::new(g, Kernel::Naive, &spec).unwrap().traffic_model().total();
    println!("N=512 causal: flash {flash} B, naive {naive} B, ratio {:.1}", naive as f64 / flash as f64);
    assert!(naive > 20 * flash);
}

#[test]
fn model_equals_measured_across_passes() {
    // lists split into passes of 3 tiles: resumed rows re-read Q, O, LSE and write again
    let g = common::gpu();
    let spec = AttnSpec::new(AttnShape { batch: 1, heads: 2, kv_heads: 1, n: 150, m: 700, head_dim: 64 })
        .causal(true);
    let config = longctx::FlashConfig { pass_tiles: 3, ..longctx::FlashConfig::for_device(g, 64) };
    let attn = Attention::builder(&spec).tiles(config).instrumented(true).build(g).unwrap();
    assert!(attn.flash().unwrap().passes() > 5);
    common::check_kernel(&attn, common::seed(), 1e-5);
    let measured = attn.measured_traffic(g).unwrap().unwrap();
    assert_eq!(attn.traffic_model(), measured);
}
