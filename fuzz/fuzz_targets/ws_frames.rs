//! The WebSocket frame follower of the tunnel after a 101 (`crates/proxy/src/wsframes.rs`) on
//! arbitrary client bytes: no panic; the same bytes forwarded and the same verdict however the
//! stream is cut into reads; what it forwarded passes the check again whole; and the
//! upstream direction's boundary follower agrees on where the forwarded bytes end.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_proxy::ws_frames_check(data));
