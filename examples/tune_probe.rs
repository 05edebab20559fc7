// Scratch: flash GFLOP/s across tile shapes (dev only).
use longctx::bench::time_attention;
use longctx::*;
fn main() {
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let n = 2048;
    let spec = AttnSpec::new(AttnShape::mha(1, 4, n, n, 64));
    let q = vec![0.01f32; spec.shape.q_len()];
    let io = DeviceTensors::upload(&gpu, &spec, &q, &q, &q).unwrap();
    let args: Vec<u32> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    for c in args.chunks(4) {
        let cfg = FlashConfig { br: c[0], bc: c[1], p: c[2], sg: c[3] };
        let attn = match Attention::flash_with(&gpu, &spec, cfg, false) {
            Ok(a) => a,
            Err(e) => {
                println!("{cfg:?}: {e}");
                continue;
            }
        };
        let t = time_attention(&gpu, &attn, &io, 1, 3).unwrap();
        println!("{cfg:?}: {:.1} ms, {:.2} GFLOP/s", t.median(), spec.flops() / t.median() / 1e6);
    }
}
