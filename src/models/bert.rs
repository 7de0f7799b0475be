//! A BERT text encoder (Hugging Face `BertModel` layout: `embeddings.*`,
//! `encoder.layer.N.{attention.self.{query,key,value}, attention.output.{dense, LayerNorm},
//! intermediate.dense, output.{dense, LayerNorm}}`): post-LN layers, GELU (erf), padding
//! mask. InternVideo2-stage2 runs only the layers before its fusion layer in text mode.
//! Forward passes run on autograd values.

use t2v_kernels::autograd::{self as ad, Var};
use t2v_kernels::Tensor;

use super::layers::{LayerNorm, Linear};
use super::weights::{Loader, Result, WeightsError};

#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Layers run (InternVideo2: `fusion_layer`; the rest are cross-attention layers).
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
}

impl BertConfig {
    /// bert-large-uncased as InternVideo2-stage2 uses it (19 text layers).
    pub fn bert_large_text() -> BertConfig {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 1024,
            layers: 19,
            heads: 16,
            intermediate_size: 4096,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }
}

/// The additive score bias of a padded key: BERT's extended attention mask.
const MASKED: f32 = -10000.0;

struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

impl BertLayer {
    fn load(l: &Loader, key: &str, c: &BertConfig) -> Result<BertLayer> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        Ok(BertLayer {
            query: Linear::load(l, &format!("{key}.attention.self.query"), h, h, true)?,
            key: Linear::load(l, &format!("{key}.attention.self.key"), h, h, true)?,
            value: Linear::load(l, &format!("{key}.attention.self.value"), h, h, true)?,
            attn_out: Linear::load(l, &format!("{key}.attention.output.dense"), h, h, true)?,
            attn_norm: LayerNorm::load(l, &format!("{key}.attention.output.LayerNorm"), h, eps)?,
            intermediate: Linear::load(l, &format!("{key}.intermediate.dense"), h, i, true)?,
            output: Linear::load(l, &format!("{key}.output.dense"), i, h, true)?,
            out_norm: LayerNorm::load(l, &format!("{key}.output.LayerNorm"), h, eps)?,
        })
    }

    /// x (N, L, H); `bias` (N*heads, 1, L) is 0 for real keys and [`MASKED`] for padding.
    fn forward(&self, x: &Var, bias: &Var, heads: usize) -> Result<Var> {
        let (n, l, h) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let d = h / heads;
        let split = |t: Var| -> Result<Var> { Ok(ad::reshape(&ad::permute(&ad::reshape(&t, &[n, l, heads, d])?, &[0, 2, 1, 3])?, &[n * heads, l, d])?) };
        let (q, k, v) = (split(self.query.forward(x)?)?, split(self.key.forward(x)?)?, split(self.value.forward(x)?)?);
        let scores = ad::add(&ad::matmul_ex(&q, &k, false, true, (d as f32).powf(-0.5), None)?, bias)?;
        let a = ad::matmul(&ad::softmax(&scores)?, &v)?; // (N*heads, L, d)
        let a = ad::reshape(&ad::permute(&ad::reshape(&a, &[n, heads, l, d])?, &[0, 2, 1, 3])?, &[n, l, h])?;
        let x = self.attn_norm.forward(&ad::add(&self.attn_out.forward(&a)?, x)?)?;
        let y = self.output.forward(&ad::gelu(&self.intermediate.forward(&x)?)?)?;
        self.out_norm.forward(&ad::add(&y, &x)?)
    }
}

/// The encoder (keys under `key`, e.g. `text_encoder.bert`).
pub struct Bert {
    pub config: BertConfig,
    /// (vocab, hidden) in row chunks that fit a storage binding (one on GPUs).
    word_embeddings: Vec<Tensor>,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<BertLayer>,
}

impl Bert {
    pub fn load(l: &Loader, key: &str, c: &BertConfig) -> Result<Bert> {
        let h = c.hidden_size;
        Ok(Bert {
            config: c.clone(),
            word_embeddings: l.get_row_chunks(&format!("{key}.embeddings.word_embeddings.weight"), &[c.vocab_size, h])?,
            position_embeddings: l.get(&format!("{key}.embeddings.position_embeddings.weight"), &[c.max_position_embeddings, h])?,
            token_type_embeddings: l.get(&format!("{key}.embeddings.token_type_embeddings.weight"), &[c.type_vocab_size, h])?,
            embed_norm: LayerNorm::load(l, &format!("{key}.embeddings.LayerNorm"), h, c.layer_norm_eps)?,
            layers: (0..c.layers).map(|i| BertLayer::load(l, &format!("{key}.encoder.layer.{i}"), c)).collect::<Result<_>>()?,
        })
    }

    /// Last hidden states (N, L, H) of token rows `ids` with attention masks `mask` (1 =
    /// token, 0 = padding), all rows of one length L; token type 0 everywhere.
    pub fn forward(&self, tape: &ad::Tape, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Var> {
        let c = &self.config;
        let (n, h) = (ids.len(), c.hidden_size);
        let l = ids.first().map_or(0, |r| r.len());
        let bad = |msg: String| WeightsError::Gpu(t2v_kernels::Error::Shape { op: "bert", msg });
        if n == 0 || l == 0 || ids.iter().any(|r| r.len() != l) || mask.len() != n || mask.iter().any(|r| r.len() != l) {
            return Err(bad(format!("need N > 0 rows of ids and masks of one length L > 0; got {n} id rows, {} mask rows", mask.len())));
        }
        if l > c.max_position_embeddings {
            return Err(bad(format!("{l} tokens exceed the {} position embeddings", c.max_position_embeddings)));
        }
        if let Some(id) = ids.iter().flatten().find(|&&i| i as usize >= c.vocab_size) {
            return Err(bad(format!("token id {id} is outside the vocabulary of {}", c.vocab_size)));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let tables: Vec<Var> = self.word_embeddings.iter().map(|t| tape.param(t)).collect();
        let words = ad::reshape(&ad::embedding_chunked(&tables.iter().collect::<Vec<_>>(), &flat)?, &[n, l, h])?;
        let pos = ad::slice(&tape.param(&self.position_embeddings), 0, 0, l)?;
        let types = ad::slice(&tape.param(&self.token_type_embeddings), 0, 0, 1)?;
        let mut x = self.embed_norm.forward(&ad::add(&ad::add(&words, &pos)?, &types)?)?;
        let heads = c.heads;
        let bias: Vec<f32> = mask.iter().flat_map(|r| std::iter::repeat_n(r, heads).flat_map(|r| r.iter().map(|&m| if m != 0 { 0.0 } else { MASKED }))).collect();
        let bias = tape.constant(Tensor::from_slice(x.value().gpu(), &[n * heads, 1, l], &bias)?);
        for layer in &self.layers {
            x = layer.forward(&x, &bias, heads)?;
        }
        Ok(x)
    }
}
