// Half-precision storage (weights kept as f16 or bf16) widened to f32, exactly.
//   words: element 2i in the low 16 bits of word i, element 2i+1 in the high 16 bits (the
//     little-endian order of a safetensors file); n elements, ceil(n / 2) words.
//   out: the f32 tensor, written as its bit patterns (array<u32>), so no float operation
//     touches the values: infinities, NaN payloads and bf16 subnormals pass unchanged
//     (an f16 signalling NaN is quieted, as CPUs convert it).
//   f16 is decoded with integer arithmetic rather than unpack2x16float, whose handling of
//     f16 subnormals is left to the driver; bf16 is the high half of an f32.
// One entry point for both kinds (p.bf16); one invocation per word.

struct Params {
    n: u32,    // elements
    bf16: u32, // 1: bf16, 0: f16
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

fn word_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// f16 bits (low 16 bits of h) -> f32 bits.
fn f16_to_f32_bits(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0x1fu) { // infinity; NaN with its payload, quieted (as CPUs convert)
        return sign | 0x7f800000u | (m << 13u) | select(0u, 0x400000u, m != 0u);
    }
    if (e != 0u) { // normal: rebias the exponent 15 -> 127
        return sign | ((e + 112u) << 23u) | (m << 13u);
    }
    if (m == 0u) { // signed zero
        return sign;
    }
    // subnormal m * 2^-24: normalise so that the leading one reaches bit 10
    let shift = 10u - firstLeadingBit(m);
    return sign | ((113u - shift) << 23u) | (((m << shift) & 0x3ffu) << 13u);
}

// One 16-bit pattern (low 16 bits of h) of the tensor's kind -> f32 bits.
fn widen_bits(h: u32) -> u32 {
    if (p.bf16 != 0u) {
        return h << 16u;
    }
    return f16_to_f32_bits(h);
}

@compute @workgroup_size(256)
fn widen(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = word_index(wid, nwg, lid);
    if (2u * i >= p.n) {
        return;
    }
    let w = words[i];
    out[2u * i] = widen_bits(w & 0xffffu);
    if (2u * i + 1u < p.n) {
        out[2u * i + 1u] = widen_bits(w >> 16u);
    }
}
