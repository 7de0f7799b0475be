// GEMM for CPU adapters with both operands in rgba32float textures (preludes: gemm_common.wgsl,
// gemm_rows8.wgsl, texel_input.wgsl).
//
// On llvmpipe (Mesa 22.3) every storage-buffer load, scalar or vector, uniform or not, is a
// loop over the lanes with an exec-mask test and a bounds check per element (~10 ns per
// value per core, measured), while a texel fetch loads a vec4 for all lanes in straight-line
// code (~2 ns per value). So the operands are first copied into textures (a plain
// buffer-to-texture copy where rows are whole texels, else `pack`) and the GEMM reads only
// texels.
//
// Texture of an operand stored (layers, rows, len) row-major: texel x of row r of layer l
// holds floats 4x..4x+4 of that row (zero past len); TEX_W texels per texture row. Rows are
//   A: k (len m) if TRANS_A, else m (len k);   B: n (len k) if TRANS_B, else k (len n).
// The rows' ceil(len / 4) texels follow one another: with len % 4 == 0 that is the
// buffer's bytes as they are (a plain copy). All four layouts run at the same speed on
// llvmpipe (1024^3). A batch stride of 0 (a shared matrix) reads layer 0.
//
// Tile: a subgroup of 8 lanes computes 32 rows x 32 columns; lane l holds columns
// n0 + 4l .. n0 + 4l + 4 of all 32 rows in four Rows8 accumulators c_g (row i of c_g is
// row_of(g, i)). Per block of 4 k: 4 texel fetches for A, 4 for B, then 512 FMAs per lane,
// the A values handed from lane to lane with subgroupBroadcast.
// Needs the SUBGROUP feature and a subgroup size of exactly 8; no workgroup barriers.

@group(0) @binding(5) var ta: texture_2d<f32>;
@group(0) @binding(6) var tb: texture_2d<f32>;

override NSG: u32 = 8u;   // subgroups per workgroup: same rows, each its own 32 columns

// Texel x of row r of layer l of an operand with `rows` rows of `len` floats, row after row.
fn texel(l: u32, r: u32, x: u32, rows: u32, len: u32) -> vec2<u32> {
    return tex_coord((l * rows + r) * ((len + 3u) / 4u) + x);
}

// One k step of the 32 x 32 tile c0..c3: s holds this lane's A values for the four groups,
// bv its 4 columns of B.
fn step(c0: ptr<function, Rows8>, c1: ptr<function, Rows8>, c2: ptr<function, Rows8>, c3: ptr<function, Rows8>,
        s: vec4<f32>, bv: vec4<f32>) {
    rank1(c0, s.x, bv);
    rank1(c1, s.y, bv);
    rank1(c2, s.z, bv);
    rank1(c3, s.w, bv);
}

// Row of C held in row i of group g: with A's rows in texture rows (not TRANS_A) lane i of
// group g fetched row m0 + 8g + i; with A's rows along texels, component g of lane i is
// row m0 + 4i + g.
fn row_of(m0: u32, g: u32, i: u32) -> u32 {
    if (TRANS_A) {
        return m0 + 4u * i + g;
    }
    return m0 + 8u * g + i;
}

// Texels x of rows k..k+4 of layer l of an operand whose rows run along k (`rows` = K rows
// of `len` floats): element t holds row k + t (clamped: rows past K are never used).
fn along_k(t: texture_2d<f32>, l: u32, x: u32, k: u32, len: u32) -> array<vec4<f32>, 4> {
    let last = p.k - 1u;
    return array<vec4<f32>, 4>(
        textureLoad(t, texel(l, min(k, last), x, p.k, len), 0),
        textureLoad(t, texel(l, min(k + 1u, last), x, p.k, len), 0),
        textureLoad(t, texel(l, min(k + 2u, last), x, p.k, len), 0),
        textureLoad(t, texel(l, min(k + 3u, last), x, p.k, len), 0));
}

// Texel kb (k = 4kb .. 4kb + 4) of rows r.x..r.w of layer l of a K-contiguous operand with
// `rows` rows, transposed: element t holds k = 4kb + t of the four rows.
fn across_k(t: texture_2d<f32>, l: u32, r: vec4<u32>, kb: u32, rows: u32) -> array<vec4<f32>, 4> {
    let w0 = textureLoad(t, texel(l, r.x, kb, rows, p.k), 0);
    let w1 = textureLoad(t, texel(l, r.y, kb, rows, p.k), 0);
    let w2 = textureLoad(t, texel(l, r.z, kb, rows, p.k), 0);
    let w3 = textureLoad(t, texel(l, r.w, kb, rows, p.k), 0);
    return array<vec4<f32>, 4>(vec4<f32>(w0.x, w1.x, w2.x, w3.x), vec4<f32>(w0.y, w1.y, w2.y, w3.y),
                               vec4<f32>(w0.z, w1.z, w2.z, w3.z), vec4<f32>(w0.w, w1.w, w2.w, w3.w));
}

// This lane's A values of k = 4 kb + t (t < 4) for the four groups: element t. Rows and
// columns past the end are clamped: they read valid texels whose products are dropped.
fn fetch_a(za: u32, m0: u32, lane: u32, kb: u32) -> array<vec4<f32>, 4> {
    if (TRANS_A) {
        // texels along m: lane l fetches rows m0 + 4l .. + 4 at each k
        return along_k(ta, za, min(m0 / 4u + lane, (p.m - 1u) / 4u), 4u * kb, p.m);
    }
    // texels along k: group g's lane l fetches row m0 + 8g + l
    return across_k(ta, za, min(vec4<u32>(m0 + lane) + vec4<u32>(0u, 8u, 16u, 24u), vec4<u32>(p.m - 1u)), kb, p.m);
}

// This lane's 4 columns n0 + 4 lane + j of B at k = 4 kb + t: element t.
fn fetch_b(zb: u32, n0: u32, lane: u32, kb: u32) -> array<vec4<f32>, 4> {
    if (TRANS_B) {
        return across_k(tb, zb, min(vec4<u32>(n0 + 4u * lane) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u)), kb, p.n);
    }
    return along_k(tb, zb, min(n0 / 4u + lane, (p.n - 1u) / 4u), 4u * kb, p.n);
}

// Writes group g of a lane's tile: row_of(m0, g, i), columns n..n+3 (`store4` drops what
// lies outside C). `bcol` holds the per-column bias of these columns (BIAS 1).
fn store_group(acc: Rows8, z: u32, m0: u32, g: u32, n: u32, bcol: vec4<f32>) {
    let rows = array<vec4<f32>, 8>(acc.r0, acc.r1, acc.r2, acc.r3, acc.r4, acc.r5, acc.r6, acc.r7);
    for (var i = 0u; i < 8u; i++) {
        let m = row_of(m0, g, i);
        var bv = bcol;
        if (BIAS == 2u) {
            bv = bias4(m, n);
        }
        store4(z, m, n, rows[i], bv);
    }
}

@compute @workgroup_size(8 * NSG)
fn gemm_tex(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(subgroup_id) sg: u32,
            @builtin(subgroup_invocation_id) lane: u32) {
    let z = wid.z;
    let za = select(z, 0u, p.a_bs == 0u);
    let zb = select(z, 0u, p.b_bs == 0u);
    let m0 = wid.y * 32u;
    let n0 = (wid.x * NSG + sg) * 32u;
    var c0: Rows8; var c1: Rows8; var c2: Rows8; var c3: Rows8;
    let full = p.k / 4u;
    for (var kb = 0u; kb < full; kb++) {
        let s = fetch_a(za, m0, lane, kb);
        let bv = fetch_b(zb, n0, lane, kb);
        step(&c0, &c1, &c2, &c3, s[0], bv[0]);
        step(&c0, &c1, &c2, &c3, s[1], bv[1]);
        step(&c0, &c1, &c2, &c3, s[2], bv[2]);
        step(&c0, &c1, &c2, &c3, s[3], bv[3]);
    }
    let rest = p.k - 4u * full;
    if (rest > 0u) {
        let s = fetch_a(za, m0, lane, full);
        let bv = fetch_b(zb, n0, lane, full);
        step(&c0, &c1, &c2, &c3, s[0], bv[0]);
        if (rest > 1u) {
            step(&c0, &c1, &c2, &c3, s[1], bv[1]);
        }
        if (rest > 2u) {
            step(&c0, &c1, &c2, &c3, s[2], bv[2]);
        }
    }
    let n = n0 + 4u * lane;
    var bcol = vec4<f32>(0.0);   // per-column bias, loaded once (BIAS 1)
    if (BIAS == 1u) {
        bcol = bias4(0u, n);
    }
    store_group(c0, z, m0, 0u, n, bcol);
    store_group(c1, z, m0, 1u, n, bcol);
    store_group(c2, z, m0, 2u, n, bcol);
    store_group(c3, z, m0, 3u, n, bcol);
}

// pack: the texture of an operand (see the top) whose rows are not a whole number of
// texels: `a` holds p.m rows of p.k floats (all layers one after another); p.n = ceil(p.k / 4)
// texels per row. One thread per texel.
@group(0) @binding(7) var packed: texture_storage_2d<rgba32float, write>;

// Element k of the row starting at `base`, zero past the row's end.
fn row_value(base: u32, k: u32) -> f32 {
    if (k < p.k) {
        return a[base + k];
    }
    return 0.0;
}

@compute @workgroup_size(64)
fn pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 64u + lid;
    if (t >= p.n * p.m) {
        return;
    }
    let r = t / p.n;
    let k = 4u * (t - r * p.n);
    let base = r * p.k;
    let v = vec4<f32>(row_value(base, k), row_value(base, k + 1u), row_value(base, k + 2u), row_value(base, k + 3u));
    textureStore(packed, tex_coord(t), v);
}
