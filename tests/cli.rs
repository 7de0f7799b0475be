//! The `t2v-turbo` binary: info, adapter selection and the no-adapter message.
use std::process::Command;

fn t2v(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_t2v-turbo"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("run t2v-turbo");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn info_lists_adapters_and_self_checks() {
    let (ok, out, err) = t2v(&["info"], &[]);
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("[0] "), "{out}");
    assert!(out.contains("SHADER_F16") && out.contains("storage binding"), "{out}");
    assert!(out.contains("self-check") && out.contains("ok"), "{out}");
}

#[test]
fn unknown_adapter_lists_the_available_ones() {
    let (ok, _, err) = t2v(&["info", "--adapter", "no-such-gpu-42"], &[]);
    assert!(!ok);
    assert!(err.contains("no adapter matches \"no-such-gpu-42\"") && err.contains("[0]"), "{err}");
}

#[test]
fn no_adapter_explains_how_to_get_software_vulkan() {
    // Metal does not exist on Linux/Windows: no adapter at all.
    if cfg!(target_os = "macos") {
        return;
    }
    let (ok, _, err) = t2v(&["info"], &[("WGPU_BACKEND", "metal")]);
    assert!(!ok);
    assert!(err.contains("no GPU adapter found") && err.contains("mesa-vulkan-drivers"), "{err}");
}
