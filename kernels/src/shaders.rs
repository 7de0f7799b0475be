//! The WGSL kernel families, embedded at build time (see `shaders/`).

use crate::registry::KernelSource;

macro_rules! family {
    ($ident:ident, $name:literal) => {
        pub static $ident: KernelSource =
            KernelSource { name: $name, source: include_str!(concat!("../../shaders/", $name, ".wgsl")) };
    };
    ($ident:ident, $name:literal, with_common) => {
        pub static $ident: KernelSource = KernelSource {
            name: $name,
            source: concat!(
                include_str!("../../shaders/common.wgsl"),
                include_str!(concat!("../../shaders/", $name, ".wgsl"))
            ),
        };
    };
}

family!(ELEMENTWISE, "elementwise");
family!(REDUCE, "reduce", with_common);
family!(SOFTMAX, "softmax", with_common);
family!(NORM, "norm", with_common);
family!(GEMM, "gemm");
family!(ATTENTION, "attention");
family!(EMBEDDING, "embedding");

/// Every family, for validation.
pub static ALL: &[&KernelSource] = &[&ELEMENTWISE, &REDUCE, &SOFTMAX, &NORM, &GEMM, &ATTENTION, &EMBEDDING];
