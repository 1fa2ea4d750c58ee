//! The HTTP/1.1 front's own reading of request heads (`crates/proxy/src/front.rs`) against
//! hyper's server on arbitrary bytes: whatever the front takes, hyper reads the same (method,
//! target, version, fields, the body that follows), and whatever it does not take is handed
//! to hyper untouched — a head the two read differently would be a desync. Several heads,
//! separated by `\xff\xfe`, go through one reader, as on one connection (its field-name cache
//! is reused).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::front_differential::Reader;

#[path = "runtime.rs"]
mod runtime;
use runtime::runtime;

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let mut reader = Reader::default();
        let mut rest = data;
        loop {
            let (head, next) = match rest.windows(2).position(|w| w == b"\xff\xfe") {
                Some(i) => (&rest[..i], Some(&rest[i + 2..])),
                None => (rest, None),
            };
            reader.check(head).await;
            match next {
                Some(n) => rest = n,
                None => break,
            }
        }
    });
});
