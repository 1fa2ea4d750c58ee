//! The direct upstream client's reading of answers (`crates/proxy/src/upstream/h1.rs`) against
//! hyper's HTTP/1.1 client on arbitrary bytes: whatever answer the direct client reads to its
//! end, hyper reads the same (status, end-to-end fields, body, trailers). The first byte's low
//! bit says whether the request was a `HEAD`; the rest is what the target sends, over a real
//! connection on 127.0.0.1, before it closes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::upstream_differential::check;

#[path = "runtime.rs"]
mod runtime;
use runtime::runtime;

fuzz_target!(|data: &[u8]| {
    let Some((&first, raw)) = data.split_first() else {
        return;
    };
    runtime().block_on(check(raw, first & 1 == 1));
});
