// Reductions along one axis. The input is viewed as (outer, len, inner) and the output as
// (outer, inner): element (o, i) reduces x[o, 0..len, i].
//   reduce_thread: one thread per output (short axes, or many outputs); with p.chunk > 0,
//                  one thread per (chunk of p.chunk along the axis, output), writing the
//                  partial results as (chunks, outer, inner) for a second pass (long axes
//                  without workgroup barriers, which CPU adapters run slowly)
//   reduce_wg:     one workgroup per output, WG threads stride the axis then combine

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    chunk: u32,   // 0: the whole axis
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// reduce_thread: with TEX_IN, x is read from its texture.
@group(0) @binding(9) var x_tex: texture_2d<f32>;

fn x_at(i: u32) -> f32 {
    if (TEX_IN) {
        return element_at(x_tex, i);
    }
    return x[i];
}

override OP: u32 = 0u;   // 0 sum, 1 mean, 2 max, 3 min

fn init() -> f32 {
    switch OP {
        case 2u: { return neg_inf(); }
        case 3u: { return -neg_inf(); }
        default: { return 0.0; }
    }
}

fn combine(a: f32, b: f32) -> f32 {
    switch OP {
        case 2u: { return max(a, b); }
        case 3u: { return min(a, b); }
        default: { return a + b; }
    }
}

fn finish(a: f32) -> f32 {
    return select(a, a / f32(p.len), OP == 1u);
}

@compute @workgroup_size(WG)
fn reduce_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = row_index(wid, nwg) * WG + lid;
    let outputs = p.outer * p.inner;
    let chunk = select(p.len, p.chunk, p.chunk > 0u);
    if (t >= outputs * ((p.len + chunk - 1u) / chunk)) {
        return;
    }
    let o = t % outputs;
    let start = t / outputs * chunk;
    let end = min(p.len, start + chunk);
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    // four partial accumulators: shorter dependency chains and smaller rounding error
    var acc = vec4<f32>(init());
    var j = start;
    for (; j + 4u <= end; j += 4u) {
        acc = vec4<f32>(combine(acc.x, x_at(base + j * p.inner)), combine(acc.y, x_at(base + (j + 1u) * p.inner)),
                        combine(acc.z, x_at(base + (j + 2u) * p.inner)), combine(acc.w, x_at(base + (j + 3u) * p.inner)));
    }
    for (; j < end; j++) {
        acc.x = combine(acc.x, x_at(base + j * p.inner));
    }
    let r = combine(combine(acc.x, acc.y), combine(acc.z, acc.w));
    y[t] = select(finish(r), r, p.chunk > 0u);
}

@compute @workgroup_size(WG)
fn reduce_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let o = row_index(wid, nwg);
    let live = o < p.outer * p.inner;
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    var acc = init();
    if (live) {
        for (var j = lid; j < p.len; j += WG) {
            acc = combine(acc, x[base + j * p.inner]);
        }
    }
    // tree combine in shared memory (uniform control flow: every thread takes part)
    red[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = combine(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    if (live && lid == 0u) {
        y[o] = finish(red[0]);
    }
}
