// GEMM for CPU adapters (prelude: gemm_common.wgsl), with subgroup operations.
//
// On a CPU adapter (lavapipe) a subgroup is one SIMD vector of lanes and every per-lane
// load is a gather of scalar loads, so the cost is the number of loads per FMA. Here each
// subgroup computes 8 rows x (SG * 4) columns of C: per k, lane l loads A(m0 + l, k) once
// and subgroupBroadcast hands row i's value to every lane, while each lane loads its own
// 4 columns of B (spaced SG apart, so neighbouring lanes read neighbouring columns).
// That is 5 gathers for 32 vector FMAs, against 8 for 16 in a plain 4x4 register tile.
// Needs the SUBGROUP feature and a fixed subgroup size SG >= 8; no workgroup barriers.

override SG: u32 = 8u;
override NSG: u32 = 8u;   // subgroups per workgroup: they share A's 8 rows, each its own columns

@compute @workgroup_size(SG * NSG)
fn gemm_sg(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(subgroup_id) sg: u32,
           @builtin(subgroup_invocation_id) lane: u32) {
    let z = wid.z;
    let m0 = wid.y * 8u;
    let n0 = (wid.x * NSG + sg) * SG * 4u + lane;   // this lane's columns: n0 + SG * j, j < 4
    // Clamped coordinates: out-of-range rows/columns read valid data that `store` drops,
    // so the loop has no per-lane bounds checks.
    let ma = min(m0 + min(lane, 7u), p.m - 1u);
    let nc = min(vec4<u32>(n0, n0 + SG, n0 + 2u * SG, n0 + 3u * SG), vec4<u32>(p.n - 1u));
    let o0 = conv_origin(nc.x);
    let o1 = conv_origin(nc.y);
    let o2 = conv_origin(nc.z);
    let o3 = conv_origin(nc.w);
    let zb = z * p.b_bs;
    var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0); var c2 = vec4<f32>(0.0); var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0); var c5 = vec4<f32>(0.0); var c6 = vec4<f32>(0.0); var c7 = vec4<f32>(0.0);
    for (var k = 0u; k < p.k; k++) {
        var av: f32;
        if (TRANS_A) {
            av = a[z * p.a_bs + k * p.m + ma];
        } else {
            av = a[z * p.a_bs + ma * p.k + k];
        }
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
        c0 += subgroupBroadcast(av, 0u) * bv;
        c1 += subgroupBroadcast(av, 1u) * bv;
        c2 += subgroupBroadcast(av, 2u) * bv;
        c3 += subgroupBroadcast(av, 3u) * bv;
        c4 += subgroupBroadcast(av, 4u) * bv;
        c5 += subgroupBroadcast(av, 5u) * bv;
        c6 += subgroupBroadcast(av, 6u) * bv;
        c7 += subgroupBroadcast(av, 7u) * bv;
    }
    let acc = array<vec4<f32>, 8>(c0, c1, c2, c3, c4, c5, c6, c7);
    for (var i = 0u; i < 8u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store(z, m0 + i, n0 + j * SG, acc[i][j]);
        }
    }
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
    let m0 = wid.y * 8u;
    let n0 = (wid.x * NSG + sg) * SG * 4u + lane;
    let k4 = p.k / 4u;
    let ra = (z * p.a_bs) / 4u + min(m0 + min(lane, 7u), p.m - 1u) * k4;
    let nc = min(vec4<u32>(n0, n0 + SG, n0 + 2u * SG, n0 + 3u * SG), vec4<u32>(p.n - 1u));
    let rb = vec4<u32>((z * p.b_bs) / 4u) + nc * k4;
    var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0); var c2 = vec4<f32>(0.0); var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0); var c5 = vec4<f32>(0.0); var c6 = vec4<f32>(0.0); var c7 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k4; kk++) {
        let av = a4[ra + kk];
        // columns j = 0..3 of B for the 4 k of this step, transposed to k-major vec4s
        let b0 = b4[rb.x + kk];
        let b1 = b4[rb.y + kk];
        let b2 = b4[rb.z + kk];
        let b3 = b4[rb.w + kk];
        let bk = array<vec4<f32>, 4>(vec4<f32>(b0.x, b1.x, b2.x, b3.x), vec4<f32>(b0.y, b1.y, b2.y, b3.y),
                                     vec4<f32>(b0.z, b1.z, b2.z, b3.z), vec4<f32>(b0.w, b1.w, b2.w, b3.w));
        let ak = array<f32, 4>(av.x, av.y, av.z, av.w);
        for (var t = 0u; t < 4u; t++) {
            let a = ak[t];
            let bv = bk[t];
            c0 += subgroupBroadcast(a, 0u) * bv;
            c1 += subgroupBroadcast(a, 1u) * bv;
            c2 += subgroupBroadcast(a, 2u) * bv;
            c3 += subgroupBroadcast(a, 3u) * bv;
            c4 += subgroupBroadcast(a, 4u) * bv;
            c5 += subgroupBroadcast(a, 5u) * bv;
            c6 += subgroupBroadcast(a, 6u) * bv;
            c7 += subgroupBroadcast(a, 7u) * bv;
        }
    }
    let acc = array<vec4<f32>, 8>(c0, c1, c2, c3, c4, c5, c6, c7);
    for (var i = 0u; i < 8u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store(z, m0 + i, n0 + j * SG, acc[i][j]);
        }
    }
}
