// Shared by the subgroup GEMMs (gemm_subgroup.wgsl, gemm_texture.wgsl): a lane's block of
// 8 rows x 4 columns and its rank-1 update from values spread over 8 lanes. Needs the
// SUBGROUP feature.

// Eight rows x 4 columns of one lane's output block.
struct Rows8 {
    r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32>,
    r4: vec4<f32>, r5: vec4<f32>, r6: vec4<f32>, r7: vec4<f32>,
}

// acc(i, j) += A(i) * bv[j], where lane i of the subgroup holds A(i) in `a`.
fn rank1(acc: ptr<function, Rows8>, a: f32, bv: vec4<f32>) {
    (*acc).r0 += subgroupBroadcast(a, 0u) * bv;
    (*acc).r1 += subgroupBroadcast(a, 1u) * bv;
    (*acc).r2 += subgroupBroadcast(a, 2u) * bv;
    (*acc).r3 += subgroupBroadcast(a, 3u) * bv;
    (*acc).r4 += subgroupBroadcast(a, 4u) * bv;
    (*acc).r5 += subgroupBroadcast(a, 5u) * bv;
    (*acc).r6 += subgroupBroadcast(a, 6u) * bv;
    (*acc).r7 += subgroupBroadcast(a, 7u) * bv;
}
