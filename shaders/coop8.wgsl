// 8 x 8 cooperative-matrix fragments (the prelude of gemm_coop.wgsl for matrix units
// whose f16 x f16 -> f32 product takes 8 x 8 x 8 fragments; see gemm_coop.wgsl).
enable f16;
enable wgpu_cooperative_matrix;

const T: u32 = 8u;
alias FragA = coop_mat8x8<f16, A>;
alias FragB = coop_mat8x8<f16, B>;
alias Acc = coop_mat8x8<f32, C>;

