//! Every WGSL family parses and validates with naga, with its overrides both at their
//! defaults and at every value the Rust wrappers use.

use t2v_kernels::shaders::ALL;

fn validate(name: &str, src: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    if let Err(e) = v.validate(&module) {
        panic!("{name}: {}", e.emit_to_string(src));
    }
    module
}

#[test]
fn every_family_validates() {
    assert!(ALL.len() >= 8);
    for k in ALL {
        let m = validate(k.name, k.source);
        assert!(!m.entry_points.is_empty(), "{} has no entry point", k.name);
        for ep in &m.entry_points {
            assert_eq!(ep.stage, naga::ShaderStage::Compute, "{}::{}", k.name, ep.name);
        }
    }
}

#[test]
fn families_lower_to_spirv_with_overrides() {
    // Overrides are resolved per pipeline; check the specialisations we use compile.
    let cases: &[(&str, &[(&str, f64)])] = &[
        ("elementwise", &[("OP", 11.0)]),
        ("reduce", &[("OP", 2.0), ("WG", 32.0)]),
        ("softmax", &[("WG", 64.0)]),
        ("norm", &[("WG", 256.0), ("ACT", 1.0)]),
        ("gemm_subgroup", &[("SG", 8.0), ("TRANS_B", 1.0), ("B_MODE", 1.0)]),
        ("gemm", &[("TRANS_A", 1.0), ("TRANS_B", 1.0), ("B_MODE", 1.0), ("BIAS", 2.0), ("ACCUMULATE", 1.0), ("CPU_WG", 8.0)]),
        ("gemm_coop8", &[("TRANS_A", 1.0), ("B_MODE", 1.0), ("BIAS", 2.0), ("ACCUMULATE", 1.0)]),
        ("gemm_coop16", &[("TRANS_B", 1.0), ("BIAS", 1.0), ("C_VEC4", 1.0)]),
        ("attention", &[("CAPTURE", 1.0)]),
        ("embedding", &[]),
    ];
    for (name, consts) in cases {
        let k = ALL.iter().find(|k| k.name == *name).unwrap();
        let module = validate(name, k.source);
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap();
        let constants: naga::back::PipelineConstants = consts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let (m2, info2) = naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(m2.overrides.iter().all(|(_, o)| o.init.is_some()), "{name}: unresolved override");
        let _ = info2;
    }
}
