// Staging of 128 x 128 output tiles (prelude of gemm.wgsl's gemm_tiled4 and gemm_coop.wgsl,
// after gemm_common.wgsl): 256 threads load a 16-deep slice of A (128 x 16) and of B (16 x 128),
// 8 elements each, into registers (fetch_a, fetch_b) before the workgroup stores them.

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK4: u32 = 16u;

// Split K (p.splits > 1): workgroup z = image * splits + s sums chunk s of K (whole 16-deep
// slices) into partials[z]. Returns (image, k_begin, k_end) of workgroup z.
fn split_range(wz: u32) -> vec3<u32> {
    let splits = max(p.splits, 1u);
    let chunk = (p.k + splits - 1u) / splits;
    let span = (chunk + BK4 - 1u) / BK4 * BK4;
    let k_begin = (wz % splits) * span;
    return vec3<u32>(wz / splits, k_begin, min(p.k, k_begin + span));
}

// (row of the tile, k of the slice) of element r of this thread's 8 of A's 128 x 16 slice.
fn a_slot(lid: u32, r: u32) -> vec2<u32> {
    let e = lid + 256u * r;
    if (TRANS_A) {
        return vec2<u32>(e % BM, e / BM);
    }
    return vec2<u32>(e / BK4, e % BK4);
}

// (column of the tile, k of the slice) of element r of this thread's 8 of B's slice; with
// B_MODE 1 or B not transposed the column is lid % 128 and k = lid / 128 + 2r.
fn b_slot(lid: u32, r: u32) -> vec2<u32> {
    let e = lid + 256u * r;
    if (B_MODE == 0u && TRANS_B) {
        return vec2<u32>(e / BK4, e % BK4);
    }
    return vec2<u32>(e % BN, e / BN);
}

// The window tap (channel, ky, kx) of k advanced by `d` taps.
fn tap_advance(t: vec3<u32>, d: u32) -> vec3<u32> {
    var r = t;
    r.z += d;
    while (r.z >= p.kw) {
        r.z -= p.kw;
        r.y += 1u;
    }
    while (r.y >= p.kh) {
        r.y -= p.kh;
        r.x += 1u;
    }
    return r;
}

// This thread's 8 elements of B's slice at k0, zero from k_end on (conv: im2col of the fixed
// column `pix`, whose image starts at `base` in b and whose window origin is `o`).
fn fetch_b(z: u32, nb: u32, k0: u32, k_end: u32, lid: u32, pix: u32, base: u32, o: vec2<i32>) -> array<f32, 8> {
    var v: array<f32, 8>;
    if (B_MODE == 1u) {
        let k = k0 + lid / BN;
        var t = window_tap(k);
        for (var r = 0u; r < 8u; r++) {
            var x = 0.0;
            let iy = o.x + i32(t.y);
            let ix = o.y + i32(t.z);
            if (pix < p.n && k + 2u * r < k_end && iy >= 0 && ix >= 0 && iy < i32(p.h) && ix < i32(p.w)) {
                x = b[base + (t.x * p.h + u32(iy)) * p.w + u32(ix)];
            }
            v[r] = x;
            t = tap_advance(t, 2u);
        }
        return v;
    }
    for (var r = 0u; r < 8u; r++) {
        let s = b_slot(lid, r);
        v[r] = select(0.0, load_b(z, k0 + s.y, nb + s.x), k0 + s.y < k_end);
    }
    return v;
}

fn fetch_a(z: u32, mb: u32, k0: u32, k_end: u32, lid: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) {
        let s = a_slot(lid, r);
        v[r] = select(0.0, load_a(z, mb + s.x, k0 + s.y), k0 + s.y < k_end);
    }
    return v;
}

