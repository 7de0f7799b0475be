// 16 x 16 cooperative-matrix fragments (the prelude of gemm_coop.wgsl for matrix units
// whose f16 x f16 -> f32 product takes 16 x 16 x 16 fragments; see gemm_coop.wgsl).
enable f16;
enable wgpu_cooperative_matrix;

const T: u32 = 16u;
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias Acc = coop_mat16x16<f32, C>;

