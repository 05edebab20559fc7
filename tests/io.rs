//! Tensor files: .safetensors in (F32, F16, BF16), clear errors for missing and corrupt data.

use longctx::io::{read_npy, read_safetensors};
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

#[test]
fn staged_outputs_are_all_or_nothing() {
    use longctx::io::Staged;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.npy");
    std::fs::write(&first, b"old first").unwrap();
    let mut staged = Staged::default();
    staged.npy(&first, &[2], &[1.0, 2.0]).unwrap();
    // the second output cannot be written: the whole set is abandoned
    let err = staged.npy(&dir.path().join("missing/second.npy"), &[1], &[3.0]).unwrap_err();
    assert!(err.to_string().contains("cannot create"), "{err}");
    drop(staged);
    assert_eq!(std::fs::read(&first).unwrap(), b"old first", "the first output's previous contents stay");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    // all written: all in place
    let mut staged = Staged::default();
    staged.npy(&first, &[2], &[1.0, 2.0]).unwrap();
    staged.commit().unwrap();
    assert_eq!(read_npy(&first).unwrap().data, vec![1.0, 2.0]);
}
