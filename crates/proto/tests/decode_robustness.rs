//! Feeds thousands of pseudo-random and mutated inputs through `decode`: it must never panic,
//! must classify every failure, and whatever it accepts must survive an encode/decode round
//! trip. This is the CI-side companion of the cargo-fuzz target in `fuzz/`, which runs the
//! same checks on coverage-guided inputs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions unwrap too: a panic there is the test failing"
)]

use autogate_proto::{decode, encode, DecodeError};

/// xorshift64*: deterministic and dependency-free, so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"{"jsonrpc":"2.0","id":1,"method":"hello","params":{"cluster_id":"c","node_id":"n","term":3,"version":"1","nodes":[{"node_id":"n","role":"active","is_primary":true}]}}"#,
    r#"{"jsonrpc":"2.0","method":"nodes.update","params":{"nodes":[]}}"#,
    r#"{"jsonrpc":"2.0","id":"a","result":{"accepted":true,"session_id":"s"}}"#,
    r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error","data":[1,{"x":null}]}}"#,
    r#"{"jsonrpc":"2.0","id":9,"method":"service.run","params":[1.5e300,-0,"\u00e9\ud83d\ude00",true,false,null]}"#,
    r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u",
    "\\ud800",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "9223372036854775808",
    "\"jsonrpc\"",
    "\"2.0\"",
    "\"id\"",
    "\"method\"",
    "\"params\"",
    "\"result\"",
    "\"error\"",
    "\"code\"",
    "\"message\"",
    " ",
    "\n",
    "é",
    "😀",
];

/// Checks one input: no panic (a panic fails the test), and consistent classification.
fn check(text: &str, max: usize) {
    match decode(text, max) {
        Ok(frame) => {
            let again = encode(&frame);
            assert_eq!(
                decode(&again, usize::MAX).unwrap(),
                frame,
                "round trip changed {text:?}"
            );
        }
        Err(err) => {
            if let DecodeError::TooLarge { len, .. } = err {
                assert!(len > max);
            } else {
                assert!(err.code().is_some());
            }
            // Building the answer must not panic either.
            if let Some(resp) = err.to_response() {
                let _ = encode(&resp.into());
            }
        }
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            2 => {
                let i = rng.below(out.len() + 1);
                let tok = TOKENS[rng.below(TOKENS.len())];
                out.splice(i..i, tok.bytes());
            }
            3 if out.len() > 1 => {
                let a = rng.below(out.len());
                let b = rng.below(out.len());
                let (a, b) = (a.min(b), a.max(b));
                let chunk: Vec<u8> = out[a..b].to_vec();
                let i = rng.below(out.len() + 1);
                out.splice(i..i, chunk);
            }
            4 => out.truncate(rng.below(out.len() + 1)),
            _ => {
                let i = rng.below(out.len() + 1);
                out.insert(i, b"{}[]\":,0an\\"[rng.below(11)]);
            }
        }
    }
    out
}

#[test]
fn decode_never_panics_on_mutated_frames() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut accepted = 0;
    for i in 0..6000 {
        let seed = SEEDS[i % SEEDS.len()].as_bytes();
        let bytes = mutate(&mut rng, seed);
        // The link carries text frames: invalid UTF-8 never reaches decode; lossy conversion
        // still exercises the replacement character.
        let text = String::from_utf8_lossy(&bytes);
        let max = if rng.below(10) == 0 {
            rng.below(200)
        } else {
            1 << 20
        };
        if decode(&text, max).is_ok() {
            accepted += 1;
        }
        check(&text, max);
    }
    // Mutations are small, so some frames must still be valid: proves the seeds are exercised.
    assert!(accepted > 100, "only {accepted} mutated frames decoded");
}

#[test]
fn found_by_fuzzing() {
    // Float parsing must be exact for the round trip (serde_json `float_roundtrip`).
    check(
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-232700,"message":"x","data":[1.5,-11111111111111111111111111111111111111111111111111111111111111111111111111111110]}}"#,
        1 << 20,
    );
}

#[test]
fn decode_never_panics_on_random_token_soup_and_bytes() {
    let mut rng = Rng(0xC0FF_EE00_0000_0042);
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..rng.below(40) {
            text.push_str(TOKENS[rng.below(TOKENS.len())]);
        }
        check(&text, 1 << 20);
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        check(&String::from_utf8_lossy(&bytes), 1 << 20);
    }
}
