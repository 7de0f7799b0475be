//! The WGSL kernel families, embedded at build time (see `shaders/`).

use crate::registry::KernelSource;

macro_rules! family {
    ($ident:ident, $name:literal) => {
        pub static $ident: KernelSource =
            KernelSource { name: $name, source: include_str!(concat!("../../shaders/", $name, ".wgsl")) };
    };
    // one file under another name, for a second set of preludes
    ($ident:ident, $name:literal = $file:literal, with $($prelude:literal),+) => {
        pub static $ident: KernelSource = KernelSource {
            name: $name,
            source: concat!(
                $(include_str!(concat!("../../shaders/", $prelude, ".wgsl")),)+
                include_str!(concat!("../../shaders/", $file, ".wgsl"))
            ),
        };
    };
    ($ident:ident, $name:literal, with $($prelude:literal),+) => {
        pub static $ident: KernelSource = KernelSource {
            name: $name,
            source: concat!(
                $(include_str!(concat!("../../shaders/", $prelude, ".wgsl")),)+
                include_str!(concat!("../../shaders/", $name, ".wgsl"))
            ),
        };
    };
}

family!(ELEMENTWISE, "elementwise", with "texel_input");
family!(REDUCE, "reduce", with "common", "texel_input");
family!(SOFTMAX, "softmax", with "common", "texel_input");
family!(NORM, "norm", with "common", "texel_input");
family!(GEMM, "gemm", with "gemm_common", "gemm_staging", "texel_input");
// Matrix units (cooperative matrices, EXPERIMENTAL_COOPERATIVE_MATRIX + SHADER_F16), in the
// fragment sizes adapters offer: 8 x 8 (lavapipe) and 16 x 16 (NVIDIA).
family!(GEMM_COOP8, "gemm_coop8" = "gemm_coop", with "coop8", "gemm_common", "gemm_staging");
family!(GEMM_COOP16, "gemm_coop16" = "gemm_coop", with "coop16", "gemm_common", "gemm_staging");
// Needs the SUBGROUP feature (a separate module so that devices without it can use GEMM).
family!(GEMM_SUBGROUP, "gemm_subgroup", with "gemm_common", "gemm_rows8");
// CPU adapters: operands read from textures (needs SUBGROUP with 8 lanes).
family!(GEMM_TEXTURE, "gemm_texture", with "gemm_common", "gemm_rows8", "texel_input");
family!(ATTENTION, "attention");
family!(EMBEDDING, "embedding");
family!(OPTIM, "optim");
family!(WINOGRAD, "winograd");
family!(PRESENT, "present");
family!(HALF, "half");

/// Every family, for validation.
pub static ALL: &[&KernelSource] = &[&ELEMENTWISE, &REDUCE, &SOFTMAX, &NORM, &GEMM, &GEMM_COOP8, &GEMM_COOP16, &GEMM_SUBGROUP, &GEMM_TEXTURE, &ATTENTION, &EMBEDDING, &OPTIM, &WINOGRAD, &PRESENT, &HALF];
