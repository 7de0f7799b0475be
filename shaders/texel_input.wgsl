// Inputs read through rgba32float textures (kernels/src/ops/texture.rs): on llvmpipe a
// storage-buffer load costs ~10 ns per value (a loop over the lanes), a texel fetch ~1.5.
// Texel t of a tensor's texture holds its elements 4t..4t+4; TEX_W texels per texture row.
// Kernels that can read either way take TEX_IN: true = the textures, false = the buffers
// (their texture bindings then hold an unread placeholder). An entry's input textures sit
// at bindings 9, 10, ... in the order `launch_reading` (ops/texture.rs) is given them.

override TEX_IN: bool = false;
override TEX_W: u32 = 1024u;   // texels per texture row (a power of two)

fn tex_coord(t: u32) -> vec2<u32> {
    return vec2<u32>(t % TEX_W, t / TEX_W);
}

// Texel t (elements 4t..4t+4) of a tensor's texture.
fn texel_at(tex: texture_2d<f32>, t: u32) -> vec4<f32> {
    return textureLoad(tex, tex_coord(t), 0);
}

// Element i of a tensor's texture.
fn element_at(tex: texture_2d<f32>, i: u32) -> f32 {
    return textureLoad(tex, tex_coord(i / 4u), 0)[i % 4u];
}
