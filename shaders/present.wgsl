// Presenting videos: a (B, C, F, H, W) tensor of values in [-1, 1] (C = 3, RGB, as the VAE
// decodes) written into the layers of a 2D-array storage texture that a host application
// owns, for display without a trip through host memory.
//   invocation (x, y, layer) with layer = b * F + f writes texel (x, y) of texture layer
//   first_layer + layer: rgb = (clamp(v, -1, 1) + 1) / 2, alpha 1.
//   to_rgba8: each channel is quantised as the PNG/GIF writers do, k = floor((v + 1) * 127.5
//     + 0.5) (Rust's round, half away from zero), and stored as k / 255, which the unorm8
//     conversion turns back into exactly k: the texture holds the bytes of the written files.
//   to_rgba16f / to_rgba32f: (v + 1) / 2 unquantised.

struct Params {
    width: u32,
    height: u32,
    frames: u32,       // F
    layers: u32,       // B * F
    first_layer: u32,  // texture layer of the first frame
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> video: array<f32>;
@group(0) @binding(2) var out_rgba8: texture_storage_2d_array<rgba8unorm, write>;
@group(0) @binding(2) var out_rgba16f: texture_storage_2d_array<rgba16float, write>;
@group(0) @binding(2) var out_rgba32f: texture_storage_2d_array<rgba32float, write>;

// Channel c of texel (x, y) of frame `layer` (= b * F + f), clamped to [-1, 1].
fn channel(c: u32, x: u32, y: u32, layer: u32) -> f32 {
    let b = layer / p.frames;
    let f = layer % p.frames;
    let plane = p.width * p.height;
    let i = ((b * 3u + c) * p.frames + f) * plane + y * p.width + x;
    return clamp(video[i], -1.0, 1.0);
}

fn rgb(x: u32, y: u32, layer: u32) -> vec3<f32> {
    return vec3<f32>(channel(0u, x, y, layer), channel(1u, x, y, layer), channel(2u, x, y, layer));
}

fn inside(id: vec3<u32>) -> bool {
    return id.x < p.width && id.y < p.height && id.z < p.layers;
}

@compute @workgroup_size(8, 8, 1)
fn to_rgba8(@builtin(global_invocation_id) id: vec3<u32>) {
    if (!inside(id)) {
        return;
    }
    let k = floor((rgb(id.x, id.y, id.z) + 1.0) * 127.5 + 0.5);
    textureStore(out_rgba8, id.xy, p.first_layer + id.z, vec4<f32>(k / 255.0, 1.0));
}

@compute @workgroup_size(8, 8, 1)
fn to_rgba16f(@builtin(global_invocation_id) id: vec3<u32>) {
    if (!inside(id)) {
        return;
    }
    textureStore(out_rgba16f, id.xy, p.first_layer + id.z, vec4<f32>((rgb(id.x, id.y, id.z) + 1.0) * 0.5, 1.0));
}

@compute @workgroup_size(8, 8, 1)
fn to_rgba32f(@builtin(global_invocation_id) id: vec3<u32>) {
    if (!inside(id)) {
        return;
    }
    textureStore(out_rgba32f, id.xy, p.first_layer + id.z, vec4<f32>((rgb(id.x, id.y, id.z) + 1.0) * 0.5, 1.0));
}
