//! The CLIP BPE tokenizer of OpenCLIP (`open_clip.tokenize`), through the `tokenizers` crate
//! with the shipped `assets/clip_tokenizer.json`: 77 ids, start 49406 and end 49407, padding
//! 0; a prompt longer than 75 tokens keeps its first 75 and still ends with the end token
//! (a warning says so). Before encoding, the reference's text cleaning that tokenizer.json
//! cannot express: HTML entities unescaped twice. (open_clip also runs ftfy.fix_text, which
//! repairs mojibake and leaves well-formed text unchanged; it is not reproduced.)

use std::path::Path;

/// The tokenizer file shipped with the binary.
pub const CLIP_TOKENIZER_JSON: &[u8] = include_bytes!("../../assets/clip_tokenizer.json");

pub const CONTEXT_LENGTH: usize = 77;
pub const SOT: u32 = 49406;
pub const EOT: u32 = 49407;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer {source_name}: {msg}")]
    Load { source_name: String, msg: String },
    #[error("tokenizing {prompt:?}: {msg}")]
    Encode { prompt: String, msg: String },
}

/// One tokenized prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The prompt had more than 75 tokens; the rest were dropped.
    pub truncated: bool,
}

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    warned: Warned,
}

/// The prompts a tokenizer has warned about: each truncation is said once (a training run
/// scores the same captions again and again).
#[derive(Default)]
struct Warned(std::sync::Mutex<std::collections::HashSet<String>>);

impl Warned {
    /// Prints `message` on stderr the first time `prompt` comes; whether it did.
    fn once(&self, prompt: &str, message: impl FnOnce() -> String) -> bool {
        let first = self.0.lock().expect("no thread panicked holding the set").insert(prompt.to_string());
        if first {
            eprintln!("{}", message());
        }
        first
    }
}

impl ClipTokenizer {
    /// The shipped tokenizer.
    pub fn new() -> Result<ClipTokenizer, TokenizerError> {
        Self::from_bytes(CLIP_TOKENIZER_JSON, "assets/clip_tokenizer.json")
    }

    /// A tokenizer.json of the same layout.
    pub fn from_file(path: &Path) -> Result<ClipTokenizer, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Load { source_name: path.display().to_string(), msg: e.to_string() })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    fn from_bytes(bytes: &[u8], name: &str) -> Result<ClipTokenizer, TokenizerError> {
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load { source_name: name.into(), msg: e.to_string() })?;
        // Truncation and padding are applied here, so that truncation can be detected.
        inner.with_truncation(None).map_err(|e| TokenizerError::Load { source_name: name.into(), msg: e.to_string() })?;
        inner.with_padding(None);
        Ok(ClipTokenizer { inner, warned: Warned::default() })
    }

    /// `open_clip.tokenize(prompt)[0]`.
    pub fn encode(&self, prompt: &str) -> Result<Tokens, TokenizerError> {
        let text = html_unescape(&html_unescape(prompt));
        let enc = self.inner.encode(text.as_str(), true).map_err(|e| TokenizerError::Encode { prompt: prompt.into(), msg: e.to_string() })?;
        let mut ids = enc.get_ids().to_vec();
        let truncated = ids.len() > CONTEXT_LENGTH;
        if truncated {
            ids.truncate(CONTEXT_LENGTH);
            ids[CONTEXT_LENGTH - 1] = EOT;
        }
        ids.resize(CONTEXT_LENGTH, 0);
        Ok(Tokens { ids, truncated })
    }

    /// Encodes and warns on stderr when a prompt is truncated (like the reference, which
    /// silently cuts; users should know), once per prompt.
    pub fn encode_warn(&self, prompt: &str) -> Result<Tokens, TokenizerError> {
        let t = self.encode(prompt)?;
        if t.truncated {
            self.warned.once(prompt, || format!("warning: prompt longer than {} tokens, truncated: {prompt:?}", CONTEXT_LENGTH - 2));
        }
        Ok(t)
    }
}

/// Python's html.unescape for the entities prompts use: named (amp, lt, gt, quot, apos,
/// nbsp) and numeric (&#NN; &#xHH;).
pub fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..].find(';').map(|j| j + 1).filter(|&j| j <= 10);
        let decoded = end.and_then(|j| {
            let ent = &rest[1..j];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ if ent.starts_with("#x") || ent.starts_with("#X") => u32::from_str_radix(&ent[2..], 16).ok().and_then(char::from_u32),
                _ if ent.starts_with('#') => ent[1..].parse::<u32>().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, j + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One row of token ids (or mask values) per prompt.
pub type TokenRows = Vec<Vec<u32>>;

/// One prompt for a BERT text encoder: `[CLS] tokens [SEP]` padded to the model's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BertTokens {
    pub ids: Vec<u32>,
    /// 1 for tokens, 0 for padding.
    pub mask: Vec<u32>,
    /// The prompt had more tokens than fit; the rest were dropped.
    pub truncated: bool,
}

/// The WordPiece tokenizer of a BERT checkpoint (InternVideo2's text side uses
/// bert-large-uncased), as Hugging Face's `tokenizer(text, padding="max_length",
/// truncation=True, max_length=L)` applies it: `[CLS]`, at most L - 2 word pieces, `[SEP]`,
/// `[PAD]` up to L. Built from the checkpoint's `vocab.txt` (lower-casing, accent
/// stripping, punctuation splitting of the uncased models) or from its `tokenizer.json`.
pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    cls: u32,
    sep: u32,
    pad: u32,
    /// Tokens per prompt, special tokens and padding included.
    pub max_len: usize,
    warned: Warned,
}

impl BertTokenizer {
    /// `vocab.txt` (one word piece per line; uncased BERT normalisation) or a Hugging Face
    /// `tokenizer.json`.
    pub fn from_file(path: &Path, max_len: usize) -> Result<BertTokenizer, TokenizerError> {
        let name = path.display().to_string();
        let load = |msg: String| TokenizerError::Load { source_name: name.clone(), msg };
        let bytes = std::fs::read(path).map_err(|e| load(format!("{e} (the text encoder's vocab.txt or tokenizer.json)")))?;
        let inner = if path.extension().is_some_and(|e| e == "json") {
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| load(e.to_string()))?
        } else {
            let text = String::from_utf8(bytes).map_err(|e| load(format!("vocab is not UTF-8: {e}")))?;
            Self::uncased(&text.lines().map(|l| l.trim_end()).collect::<Vec<_>>()).map_err(load)?
        };
        Self::new(inner, max_len).map_err(load)
    }

    /// An uncased WordPiece tokenizer over `vocab` (index = id), which must hold `[CLS]`,
    /// `[SEP]`, `[PAD]` and `[UNK]`.
    pub fn from_vocab(vocab: &[&str], max_len: usize) -> Result<BertTokenizer, TokenizerError> {
        let load = |msg: String| TokenizerError::Load { source_name: "vocabulary".into(), msg };
        Self::new(Self::uncased(vocab).map_err(load)?, max_len).map_err(load)
    }

    fn uncased(vocab: &[&str]) -> Result<tokenizers::Tokenizer, String> {
        // the model through its serialised form (the builder wants the crate's own map type)
        let map: serde_json::Map<String, serde_json::Value> = vocab.iter().enumerate().map(|(i, t)| (t.to_string(), i.into())).collect();
        let json = serde_json::json!({ "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": map });
        let model = tokenizers::models::wordpiece::WordPiece::from_bytes(json.to_string()).map_err(|e| e.to_string())?;
        let mut t = tokenizers::Tokenizer::new(model);
        t.with_normalizer(Some(tokenizers::normalizers::BertNormalizer::new(true, true, None, true)));
        t.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::bert::BertPreTokenizer));
        let specials: Vec<tokenizers::AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|s| vocab.contains(s))
            .map(|s| tokenizers::AddedToken::from(s.to_string(), true))
            .collect();
        t.add_special_tokens(&specials);
        Ok(t)
    }

    fn new(mut inner: tokenizers::Tokenizer, max_len: usize) -> Result<BertTokenizer, String> {
        if max_len < 2 {
            return Err(format!("max_len {max_len}: need room for [CLS] and [SEP]"));
        }
        inner.with_truncation(None).map_err(|e| e.to_string())?;
        inner.with_padding(None);
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| format!("the vocabulary has no {t} token; is this a BERT vocabulary?"));
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        id("[UNK]")?;
        Ok(BertTokenizer { inner, cls, sep, pad, max_len, warned: Warned::default() })
    }

    pub fn encode(&self, prompt: &str) -> Result<BertTokens, TokenizerError> {
        let enc = self.inner.encode(prompt, false).map_err(|e| TokenizerError::Encode { prompt: prompt.into(), msg: e.to_string() })?;
        let room = self.max_len - 2;
        let pieces = enc.get_ids();
        let truncated = pieces.len() > room;
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.cls);
        ids.extend_from_slice(&pieces[..pieces.len().min(room)]);
        ids.push(self.sep);
        let mut mask = vec![1; ids.len()];
        ids.resize(self.max_len, self.pad);
        mask.resize(self.max_len, 0);
        Ok(BertTokens { ids, mask, truncated })
    }

    /// Encodes and warns on stderr when a prompt is truncated, once per prompt.
    pub fn encode_warn(&self, prompt: &str) -> Result<BertTokens, TokenizerError> {
        let t = self.encode(prompt)?;
        if t.truncated {
            self.warned.once(prompt, || format!("warning: prompt longer than {} word pieces, truncated for the text encoder: {prompt:?}", self.max_len - 2));
        }
        Ok(t)
    }

    /// (ids, masks) of prompts, as the text encoder takes them; warns on truncation.
    pub fn encode_batch<S: AsRef<str>>(&self, prompts: &[S]) -> Result<(TokenRows, TokenRows), TokenizerError> {
        let toks = prompts.iter().map(|p| self.encode_warn(p.as_ref())).collect::<Result<Vec<_>, _>>()?;
        Ok(toks.into_iter().map(|t| (t.ids, t.mask)).unzip())
    }
}

#[cfg(test)]
mod tests {
    /// A truncation is said once per prompt, however often the prompt comes.
    #[test]
    fn truncation_warnings_come_once_per_prompt() {
        let w = super::Warned::default();
        let said = |p: &str| w.once(p, || format!("warning (test): {p}"));
        assert_eq!([said("a"), said("a"), said("b"), said("a")], [true, false, true, false]);
    }
}
