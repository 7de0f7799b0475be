//! The shipped CLIP tokenizer against open_clip.tokenize (tests/fixtures/tokenizer).
use t2v_turbo::models::tokenizer::{html_unescape, ClipTokenizer, EOT, SOT};

#[test]
fn ids_equal_open_clip_on_every_fixture_prompt() {
    let v: serde_json::Value = serde_json::from_str(include_str!("fixtures/tokenizer/prompts.json")).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let prompts = v["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 20);
    for (p, want) in prompts.iter().zip(v["ids"].as_array().unwrap()) {
        let want: Vec<u32> = want.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got = tok.encode(p.as_str().unwrap()).unwrap();
        assert_eq!(got.ids, want, "prompt {p}");
    }
}

#[test]
fn truncation_keeps_the_end_token_and_is_reported() {
    let tok = ClipTokenizer::new().unwrap();
    let long = "word ".repeat(200);
    let t = tok.encode(&long).unwrap();
    assert!(t.truncated);
    assert_eq!((t.ids.len(), t.ids[0], t.ids[76]), (77, SOT, EOT));
    let short = tok.encode("a cat").unwrap();
    assert!(!short.truncated);
    // empty and whitespace-only prompts encode like the reference: start, end, padding
    for p in ["", "   \t\n "] {
        let e = tok.encode(p).unwrap();
        assert_eq!(&e.ids[..3], &[SOT, EOT, 0], "{p:?}");
    }
    assert_eq!(html_unescape("Rock &amp;amp; roll &lt;live&gt; &#65;&#x42; &bogus; &"), "Rock &amp; roll <live> AB &bogus; &");
}
