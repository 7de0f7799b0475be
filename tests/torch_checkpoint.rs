//! PyTorch checkpoints written by torch 2.15 (tests/fixtures/torch/make.py) read without
//! Python: every tensor equals what the safetensors package wrote from the same tensors.
use std::path::{Path, PathBuf};

use t2v_turbo::models::torch_checkpoint::{convert, ConvertOptions, FloatDtype, TorchCheckpoint, TorchError};
use t2v_turbo::models::weights::WeightFile;

mod common;
use common::Scratch;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

fn opts() -> ConvertOptions {
    ConvertOptions { entry: None, only: vec![], strip_prefix: None, dtype: FloatDtype::Keep, overwrite: false }
}

/// Name -> (dtype, shape, raw bytes) of a safetensors file.
fn contents(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st.tensors().into_iter().map(|(k, t)| (k, format!("{:?}", t.dtype()), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_state_dict_converts_to_what_the_safetensors_package_writes() {
    let d = Scratch::new("torch", "state-dict");
    let out = d.join("sd.safetensors");
    let rep = convert(&fixture("state_dict.pt"), &out, &opts(), &mut |_, _| {}).unwrap();
    assert_eq!((rep.entry.as_str(), rep.tensors, rep.skipped), ("*", 13, 0));
    // strided views (a transpose, a slice with an offset into a shared storage), f16, bf16,
    // f64, int64, bool, a 0-d and an empty tensor, a Parameter
    assert_eq!(contents(&out), contents(&fixture("expected.safetensors")));
    // and the loaders read the result
    let wf = WeightFile::open(&out).unwrap();
    let (shape, t) = wf.host_f32("cond_stage_model.transposed").unwrap();
    assert_eq!(shape, vec![7, 5]);
    let (_, sliced) = wf.host_f32("cond_stage_model.sliced").unwrap();
    let (_, whole) = wf.host_f32("cond_stage_model.shared_whole").unwrap();
    assert_eq!(sliced, [whole[8], whole[9], whole[10], whole[14], whole[15], whole[16]]);
    assert_eq!(t.len(), 35);
    assert_eq!(wf.metadata.get("converted_from").map(String::as_str), Some("state_dict.pt"));
}

#[test]
fn zip64_archives_read_like_small_ones() {
    // as torch writes archives over 4 GiB: sizes, offsets and the entry count only in zip64 records
    let d = Scratch::new("torch", "zip64");
    let out = d.join("sd.safetensors");
    convert(&fixture("state_dict_zip64.pt"), &out, &opts(), &mut |_, _| {}).unwrap();
    assert_eq!(contents(&out), contents(&fixture("expected.safetensors")));
}

#[test]
fn a_view_past_its_storage_is_refused() {
    let ck = TorchCheckpoint::open(&fixture("state_dict.pt")).unwrap();
    let (_, tensors) = ck.tensors(None).unwrap();
    let (name, t) = tensors.iter().find(|(n, _)| n == "cond_stage_model.sliced").unwrap();
    assert_eq!((t.offset, t.shape.clone(), t.stride.clone(), t.storage.numel), (8, vec![2, 3], vec![6, 1], 24));
    let mut past = t.clone();
    past.shape = vec![4, 3]; // rows 1..5 of a 4-row storage: the last row is outside
    let e = ck.tensor_bytes(name, &past).unwrap_err().to_string();
    assert!(e.contains("reaches past its storage of 24 elements"), "{e}");
    assert_eq!(ck.tensor_bytes(name, t).unwrap().len(), 6 * 4);
}

#[test]
fn a_lightning_checkpoint_yields_its_state_dict_and_selected_parts() {
    let d = Scratch::new("torch", "lightning");
    // the default entry of a Lightning checkpoint is its state dict, names unchanged
    let out = d.join("all.safetensors");
    let rep = convert(&fixture("lightning.ckpt"), &out, &opts(), &mut |_, _| {}).unwrap();
    assert_eq!((rep.entry.as_str(), rep.tensors), ("state_dict", 13));
    assert_eq!(contents(&out), contents(&fixture("expected.safetensors")));
    // --only, --strip-prefix and a dtype cast
    let out = d.join("unet.safetensors");
    let o = ConvertOptions { only: vec!["diffusion_model.".into()], strip_prefix: Some("model.".into()), dtype: FloatDtype::F16, ..opts() };
    let rep = convert(&fixture("lightning.ckpt"), &out, &o, &mut |_, _| {}).unwrap();
    assert_eq!((rep.tensors, rep.skipped), (2, 11));
    let got = contents(&out);
    assert_eq!(got.iter().map(|t| (t.0.as_str(), t.1.as_str())).collect::<Vec<_>>(), [("diffusion_model.input_blocks.0.0.bias", "F16"), ("diffusion_model.input_blocks.0.0.weight", "F16")]);
    let want = WeightFile::open(&fixture("expected.safetensors")).unwrap().host_f32("model.diffusion_model.input_blocks.0.0.weight").unwrap().1;
    let have = WeightFile::open(&out).unwrap().host_f32("diffusion_model.input_blocks.0.0.weight").unwrap().1;
    assert!(want.iter().zip(&have).all(|(a, b)| (a - b).abs() <= 1e-3 * a.abs().max(1e-2)), "f16 cast");
    assert!(want != have, "the cast rounded");
    // another entry: the optimizer state (integer dict keys become name parts)
    let out = d.join("opt.safetensors");
    let o = ConvertOptions { entry: Some("optimizer_states.0.state".into()), ..opts() };
    convert(&fixture("lightning.ckpt"), &out, &o, &mut |_, _| {}).unwrap();
    assert_eq!(contents(&out).iter().map(|t| t.0.clone()).collect::<Vec<_>>(), ["0.exp_avg", "0.step"]);
    // the checkpoint's other values are read too, as plain values
    let ck = TorchCheckpoint::open(&fixture("lightning.ckpt")).unwrap();
    let (_, all) = ck.tensors(Some("*")).unwrap();
    assert_eq!(all.len(), 15, "state dict + optimizer state");
}

#[test]
fn bad_checkpoints_and_selections_are_refused_clearly() {
    let d = Scratch::new("torch", "bad");
    let out = d.join("x.safetensors");
    let err = |input: &Path, o: &ConvertOptions| convert(input, &out, o, &mut |_, _| {}).unwrap_err().to_string();
    // not a zip; a safetensors file; a legacy pickle; a truncated archive
    std::fs::write(d.join("junk.pt"), b"hello world, not a checkpoint").unwrap();
    assert!(err(&d.join("junk.pt"), &opts()).contains("not a zip archive"), "{}", err(&d.join("junk.pt"), &opts()));
    assert!(err(&fixture("expected.safetensors"), &opts()).contains("safetensors file already"));
    std::fs::write(d.join("legacy.pt"), [0x80u8, 0x02, 0x8a, 0x0a, 0x6c, 0xfc]).unwrap();
    assert!(err(&d.join("legacy.pt"), &opts()).contains("legacy (pre-1.6"));
    let full = std::fs::read(fixture("state_dict.pt")).unwrap();
    for cut in [full.len() - 10, full.len() / 2, 100] {
        std::fs::write(d.join("cut.pt"), &full[..cut]).unwrap();
        let e = err(&d.join("cut.pt"), &opts());
        assert!(e.contains("not a readable PyTorch checkpoint"), "cut at {cut}: {e}");
    }
    assert!(!out.exists(), "nothing written for a refused input");
    // selections that match nothing
    let e = err(&fixture("lightning.ckpt"), &ConvertOptions { entry: Some("nope".into()), ..opts() });
    assert!(e.contains("no entry \"nope\"") && e.contains("state_dict") && e.contains("optimizer_states"), "{e}");
    let e = err(&fixture("lightning.ckpt"), &ConvertOptions { entry: Some("hyper_parameters".into()), ..opts() });
    assert!(e.contains("holds no tensors"), "{e}");
    let e = err(&fixture("state_dict.pt"), &ConvertOptions { only: vec!["visual.".into()], ..opts() });
    assert!(e.contains("no tensor of entry \"*\" starts with [\"visual.\"]"), "{e}");
    // an existing output is not replaced without --overwrite
    std::fs::write(&out, b"mine").unwrap();
    match convert(&fixture("state_dict.pt"), &out, &opts(), &mut |_, _| {}) {
        Err(TorchError::Exists { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    // the loaders point at the converter when handed a torch checkpoint
    let e = WeightFile::open(&fixture("lightning.ckpt")).err().unwrap().to_string();
    assert!(e.contains("lightning.ckpt is a PyTorch checkpoint (torch.save), not a safetensors file; convert it once: t2v-turbo convert ") && e.ends_with("lightning.safetensors"), "{e}");
    convert(&fixture("state_dict.pt"), &out, &ConvertOptions { overwrite: true, ..opts() }, &mut |_, _| {}).unwrap();
    assert_eq!(contents(&out), contents(&fixture("expected.safetensors")));
}
