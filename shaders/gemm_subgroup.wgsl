// GEMM for CPU adapters (preludes: gemm_common.wgsl, gemm_rows8.wgsl), with subgroup operations.
//
// On a CPU adapter (lavapipe) a subgroup is one SIMD vector of lanes and every per-lane
// storage load is a loop over the lanes with a bounds check per element, so the cost is the
// number of loads per FMA; registers spilled to the stack are cheap next to them. Here
// each subgroup computes 8 * ROW_GROUPS rows x (SG * 4) columns of C: per k, lane l loads
// A(m0 + 8 g + l, k) once per row group g and subgroupBroadcast hands row i's value to every
// lane, while each lane loads its own 4 columns of B (spaced SG apart, so neighbouring lanes
// read neighbouring columns). With 4 row groups that is 8 loads for 128 vector FMAs (5 for
// 32 with one group; 8 for 16 in a plain 4x4 register tile).
// Needs the SUBGROUP feature and a fixed subgroup size SG >= 8; no workgroup barriers.

override SG: u32 = 8u;
override NSG: u32 = 8u;   // subgroups per workgroup: same rows, each its own columns
override ROW_GROUPS: u32 = 1u;   // 8-row groups per subgroup: 1, 2 or 4

// Four k steps of rank1: av holds A(i, k..k+4), bk[t] the 4 columns of B at k + t.
fn rank4(acc: ptr<function, Rows8>, av: vec4<f32>, bk: array<vec4<f32>, 4>) {
    rank1(acc, av.x, bk[0]);
    rank1(acc, av.y, bk[1]);
    rank1(acc, av.z, bk[2]);
    rank1(acc, av.w, bk[3]);
}

// Writes rows m0..m0+8 of this lane's columns n0 + SG * j (`store` drops those outside C).
fn store_rows(acc: Rows8, z: u32, m0: u32, n0: u32) {
    let rows = array<vec4<f32>, 8>(acc.r0, acc.r1, acc.r2, acc.r3, acc.r4, acc.r5, acc.r6, acc.r7);
    for (var i = 0u; i < 8u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store(z, m0 + i, n0 + j * SG, rows[i][j]);
        }
    }
}

// Writes the ROW_GROUPS groups of a lane's block, rows m0.. (unused groups are not read).
fn store_groups(c0: Rows8, c1: Rows8, c2: Rows8, c3: Rows8, z: u32, m0: u32, n0: u32) {
    store_rows(c0, z, m0, n0);
    if (ROW_GROUPS > 1u) {
        store_rows(c1, z, m0 + 8u, n0);
    }
    if (ROW_GROUPS > 2u) {
        store_rows(c2, z, m0 + 16u, n0);
        store_rows(c3, z, m0 + 24u, n0);
    }
}

// Row of A that lane `lane` of row group g loads (clamped: rows past M read valid data
// that store_rows drops, so the k loop has no per-lane bounds checks).
fn a_row(m0: u32, g: u32, lane: u32) -> u32 {
    return min(m0 + 8u * g + min(lane, 7u), p.m - 1u);
}

@compute @workgroup_size(SG * NSG)
fn gemm_sg(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(subgroup_id) sg: u32,
           @builtin(subgroup_invocation_id) lane: u32) {
    let z = wid.z;
    let m0 = wid.y * 8u * ROW_GROUPS;
    let n0 = (wid.x * NSG + sg) * SG * 4u + lane;   // this lane's columns: n0 + SG * j, j < 4
    let ma = vec4<u32>(a_row(m0, 0u, lane), a_row(m0, 1u, lane), a_row(m0, 2u, lane), a_row(m0, 3u, lane));
    // Clamped columns likewise.
    let nc = min(vec4<u32>(n0, n0 + SG, n0 + 2u * SG, n0 + 3u * SG), vec4<u32>(p.n - 1u));
    let o0 = conv_origin(nc.x);
    let o1 = conv_origin(nc.y);
    let o2 = conv_origin(nc.z);
    let o3 = conv_origin(nc.w);
    let zb = z * p.b_bs;
    var c0: Rows8; var c1: Rows8; var c2: Rows8; var c3: Rows8;
    for (var k = 0u; k < p.k; k++) {
        var bv: vec4<f32>;
        if (B_MODE == 1u) {
            bv = vec4<f32>(load_im2col(z, k, o0), load_im2col(z, k, o1), load_im2col(z, k, o2), load_im2col(z, k, o3));
        } else if (TRANS_B) {
            let i = zb + nc * p.k + k;
            bv = vec4<f32>(b[i.x], b[i.y], b[i.z], b[i.w]);
        } else {
            let i = zb + k * p.n + nc;
            bv = vec4<f32>(b[i.x], b[i.y], b[i.z], b[i.w]);
        }
        // A(ma[g], k)
        var ai: vec4<u32>;
        if (TRANS_A) {
            ai = vec4<u32>(z * p.a_bs + k * p.m) + ma;
        } else {
            ai = vec4<u32>(z * p.a_bs + k) + ma * p.k;
        }
        rank1(&c0, a[ai.x], bv);
        if (ROW_GROUPS > 1u) {
            rank1(&c1, a[ai.y], bv);
        }
        if (ROW_GROUPS > 2u) {
            rank1(&c2, a[ai.z], bv);
            rank1(&c3, a[ai.w], bv);
        }
    }
    store_groups(c0, c1, c2, c3, z, m0, n0);
}

// gemm_sg4: the same tiling when both operands are K-contiguous (A row-major (M, K), B
// stored transposed (N, K), K % 4 == 0): every load fetches 4 consecutive k as a vec4.
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;

@compute @workgroup_size(SG * NSG)
fn gemm_sg4(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(subgroup_id) sg: u32,
            @builtin(subgroup_invocation_id) lane: u32) {
    let z = wid.z;
    let m0 = wid.y * 8u * ROW_GROUPS;
    let n0 = (wid.x * NSG + sg) * SG * 4u + lane;
    let k4 = p.k / 4u;
    let ra = vec4<u32>((z * p.a_bs) / 4u)
        + vec4<u32>(a_row(m0, 0u, lane), a_row(m0, 1u, lane), a_row(m0, 2u, lane), a_row(m0, 3u, lane)) * k4;
    let nc = min(vec4<u32>(n0, n0 + SG, n0 + 2u * SG, n0 + 3u * SG), vec4<u32>(p.n - 1u));
    let rb = vec4<u32>((z * p.b_bs) / 4u) + nc * k4;
    var c0: Rows8; var c1: Rows8; var c2: Rows8; var c3: Rows8;
    for (var kk = 0u; kk < k4; kk++) {
        // columns j = 0..3 of B for the 4 k of this step, transposed to k-major vec4s
        let b0 = b4[rb.x + kk];
        let b1 = b4[rb.y + kk];
        let b2 = b4[rb.z + kk];
        let b3 = b4[rb.w + kk];
        let bk = array<vec4<f32>, 4>(vec4<f32>(b0.x, b1.x, b2.x, b3.x), vec4<f32>(b0.y, b1.y, b2.y, b3.y),
                                     vec4<f32>(b0.z, b1.z, b2.z, b3.z), vec4<f32>(b0.w, b1.w, b2.w, b3.w));
        rank4(&c0, a4[ra.x + kk], bk);
        if (ROW_GROUPS > 1u) {
            rank4(&c1, a4[ra.y + kk], bk);
        }
        if (ROW_GROUPS > 2u) {
            rank4(&c2, a4[ra.z + kk], bk);
            rank4(&c3, a4[ra.w + kk], bk);
        }
    }
    store_groups(c0, c1, c2, c3, z, m0, n0);
}
