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
        Ok(ClipTokenizer { inner })
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
    /// silently cuts; users should know).
    pub fn encode_warn(&self, prompt: &str) -> Result<Tokens, TokenizerError> {
        let t = self.encode(prompt)?;
        if t.truncated {
            eprintln!("warning: prompt longer than {} tokens, truncated: {prompt:?}", CONTEXT_LENGTH - 2);
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
