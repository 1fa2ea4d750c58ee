//! The strict HTTP/1.1 framing reader (`crates/proxy/src/sniff.rs`) on arbitrary bytes cut
//! into arbitrary reads: no panic, and the same verdict (refused or not, and why) and the same
//! place of the refused head however the bytes are cut — a verdict that depended on the
//! segmentation could be steered by the sender.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::sniff::{Ambiguity, Flag, Framing, Refusal};

/// The flag and where the refused head began (an offset into the whole stream).
fn run(raw: &[u8], cuts: &[usize], max_head: usize) -> (Option<Ambiguity>, Option<usize>) {
    let flag = Arc::new(Flag::default());
    let mut f = Framing::new(flag.clone(), max_head);
    let mut fed = 0;
    let mut at = None;
    for piece in raw.split_inclusive_at(cuts) {
        let held = f.partial_len();
        if let Some(r) = f.feed(piece) {
            at = Some(match r {
                Refusal::At(off) => fed + off,
                Refusal::Held => fed - held,
            });
            break;
        }
        fed += piece.len();
    }
    (flag.get(), at)
}

trait Cut {
    fn split_inclusive_at<'a>(&'a self, cuts: &[usize]) -> Vec<&'a [u8]>;
}

impl Cut for [u8] {
    fn split_inclusive_at<'a>(&'a self, cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts {
            let c = c.min(self.len());
            if c > from {
                out.push(&self[from..c]);
                from = c;
            }
        }
        out.push(&self[from..]);
        out
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, raw)) = data.split_first() else {
        return;
    };
    // Small limits too, so that the size limits are reached.
    let max_head = 16 + usize::from(selector) * 4;
    let whole = run(raw, &[], max_head);
    // Cuts from a small generator seeded by the selector; and byte by byte.
    let mut x = u32::from(selector) | 1;
    let mut cuts = Vec::new();
    let mut at = 0usize;
    while at < raw.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        at += 1 + (x % 97) as usize;
        cuts.push(at);
    }
    assert_eq!(run(raw, &cuts, max_head), whole, "cut at {cuts:?}");
    let bytes: Vec<usize> = (1..raw.len()).collect();
    assert_eq!(run(raw, &bytes, max_head), whole, "byte by byte");
});
