//! Tensor files: .safetensors in (F32, F16, BF16), clear errors for missing and corrupt data.

use longctx::io::read_safetensors;
use safetensors::{Dtype, tensor::TensorView};

fn write(path: &std::path::Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, dt, shape, bytes)| (n.to_string(), TensorView::new(*dt, shape.clone(), bytes).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn safetensors_f32_f16_bf16_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let vals = [0.5f32, -1.25, 3.0, 0.0, 7.5, -2.0];
    let f32b: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
    let f16b: Vec<u8> = vals.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let bf16b: Vec<u8> = vals.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    write(
        &path,
        &[
            ("q", Dtype::F32, vec![1, 2, 3], f32b),
            ("k", Dtype::F16, vec![2, 3], f16b),
            ("v", Dtype::BF16, vec![6], bf16b),
        ],
    );
    for name in ["q", "k", "v"] {
        let t = read_safetensors(&path, name).unwrap();
        assert_eq!(t.data, vals, "{name}");
    }
    assert_eq!(read_safetensors(&path, "q").unwrap().shape, vec![1, 2, 3]);
    let err = read_safetensors(&path, "o").unwrap_err().to_string();
    assert!(err.contains("no tensor `o`") && err.contains("k, q, v"), "{err}");
    std::fs::write(&path, b"garbage").unwrap();
    assert!(read_safetensors(&path, "q").unwrap_err().to_string().contains("not a valid .safetensors"));
}
