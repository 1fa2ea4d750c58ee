//! Request bodies in a content coding (`Content-Encoding`), inflated for the steps that read
//! bodies (the WAF, the API contract).
//!
//! An upstream that inflates a body must read what the gateway's steps read, so they inflate
//! it too. `gzip` (and `x-gzip`; every member of a
//! multi-member stream, as Go's and Node's readers take them all) and `deflate` (the zlib
//! format, RFC 9110 §8.4.1.2) are inflated, at most to a limit the caller gives. Anything
//! else cannot be read and is [`Inflated::Refused`]: a coding the WAF does not
//! read (`br`, `zstd`, `compress`, unknown names), more than one coding (`gzip, gzip`), data
//! that does not inflate, bytes after the end of a zlib stream, a `Content-Encoding` that is
//! not ASCII.

use std::io::Read;

use flate2::bufread::{MultiGzDecoder, ZlibDecoder};

/// The body of a request after its content codings.
#[derive(Debug, PartialEq, Eq)]
pub enum Inflated {
    /// No coding, or only `identity`: the body as sent.
    Plain,
    /// The inflated body, within the limit.
    Inflated(Vec<u8>),
    /// It inflates past the limit (only the limit's worth was inflated).
    OverLimit,
    /// It cannot be inflated: why (for the finding).
    Refused(String),
}

/// Most bytes of a coding name quoted in a finding.
const NAME_MAX: usize = 32;

/// The most a body may grow by inflating (JSON and text compress 5 to 20 times; 100 leaves
/// room): beyond, a few kilobytes sent would cost the steps that read the body megabytes of
/// memory and work.
pub const MAX_RATIO: u64 = 100;

/// Inflated sizes up to this are allowed whatever the ratio (a small body of one repeated
/// value compresses far better than 100 to 1).
const RATIO_FLOOR: u64 = 64 * 1024;

/// Reads the request's `Content-Encoding` fields and inflates `body` to at most `limit` bytes.
pub fn inflate(headers: &http::HeaderMap, body: &[u8], limit: u64) -> Inflated {
    let mut coding: Option<&str> = None;
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Inflated::Refused("a Content-Encoding that is not ASCII".to_string());
        };
        for name in value.split(',') {
            let name = name.trim_matches([' ', '\t']);
            if name.is_empty() || name.eq_ignore_ascii_case("identity") {
                continue;
            }
            if let Some(first) = coding {
                return Inflated::Refused(format!(
                    "more than one content coding ({}, {})",
                    cut(first),
                    cut(name)
                ));
            }
            coding = Some(name);
        }
    }
    let Some(name) = coding else {
        return Inflated::Plain;
    };
    // One byte over the limit tells "longer" from "exactly the limit".
    let by_ratio = (body.len() as u64)
        .saturating_mul(MAX_RATIO)
        .max(RATIO_FLOOR);
    let ratio_bound = by_ratio < limit;
    let cap = limit.min(by_ratio).saturating_add(1);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(64 * 1024));
    let (read, trailing) =
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            // Junk after the last member is an error of the reader itself.
            (
                MultiGzDecoder::new(body).take(cap).read_to_end(&mut out),
                false,
            )
        } else if name.eq_ignore_ascii_case("deflate") {
            // A zlib stream ends by itself: what follows it some reader might still take.
            let mut z = ZlibDecoder::new(body);
            let read = (&mut z).take(cap).read_to_end(&mut out);
            (read, z.total_in() < body.len() as u64)
        } else {
            return Inflated::Refused(format!("content coding {}", cut(name)));
        };
    if out.len() as u64 >= cap {
        if ratio_bound {
            return Inflated::Refused(format!(
                "{} data that inflates to more than {MAX_RATIO} times its size",
                cut(name)
            ));
        }
        return Inflated::OverLimit;
    }
    match read {
        Err(_) => Inflated::Refused(format!("{} data that does not inflate", cut(name))),
        Ok(_) if trailing => Inflated::Refused("bytes after the end of the deflate data".into()),
        Ok(_) => Inflated::Inflated(out),
    }
}

/// `name` cut to at most [`NAME_MAX`] bytes on a character boundary.
fn cut(name: &str) -> &str {
    let mut end = NAME_MAX.min(name.len());
    while end > 0 && !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(codings: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for c in codings {
            h.append(http::header::CONTENT_ENCODING, c.parse().unwrap());
        }
        h
    }

    fn run(codings: &[&str], body: &[u8], limit: u64) -> Inflated {
        inflate(&headers(codings), body, limit)
    }

    #[test]
    fn plain_bodies_are_left_alone() {
        assert_eq!(run(&[], b"abc", 10), Inflated::Plain);
        assert_eq!(run(&["identity"], b"abc", 10), Inflated::Plain);
        assert_eq!(run(&["Identity, ", ""], b"abc", 10), Inflated::Plain);
    }

    #[test]
    fn gzip_and_zlib_are_inflated() {
        let text = b"q=1' OR '1'='1";
        for c in ["gzip", "GZIP", "x-gzip", " gzip ", "identity, gzip"] {
            assert_eq!(
                run(&[c], &gzip(text), 1000),
                Inflated::Inflated(text.to_vec()),
                "{c}"
            );
        }
        assert_eq!(
            run(&["deflate"], &zlib(text), 1000),
            Inflated::Inflated(text.to_vec())
        );
        // Two identity fields around one coding.
        assert_eq!(
            run(&["identity", "gzip"], &gzip(text), 1000),
            Inflated::Inflated(text.to_vec())
        );
    }

    #[test]
    fn every_gzip_member_is_read() {
        // A harmless first member and the payload in a second: readers take both.
        let mut body = gzip(b"harmless ");
        body.extend(gzip(b"<script>alert(1)</script>"));
        assert_eq!(
            run(&["gzip"], &body, 1000),
            Inflated::Inflated(b"harmless <script>alert(1)</script>".to_vec())
        );
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let bomb = gzip(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 4096, "{}", bomb.len());
        assert_eq!(run(&["gzip"], &bomb, 64 * 1024), Inflated::OverLimit);
        // Within a large limit, but more than 100 times its size.
        match run(&["gzip"], &bomb, 16 << 20) {
            Inflated::Refused(why) => assert!(why.contains("100 times"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A small body of one repeated value: under the floor, whatever the ratio.
        let small = gzip(&[b'a'; 60_000]);
        assert_eq!(
            run(&["gzip"], &small, 1 << 20),
            Inflated::Inflated(vec![b'a'; 60_000])
        );
        assert_eq!(
            run(&["deflate"], &zlib(&vec![b'a'; 1 << 20]), 1000),
            Inflated::OverLimit
        );
        // Exactly the limit is within it.
        assert_eq!(
            run(&["gzip"], &gzip(&[b'a'; 100]), 100),
            Inflated::Inflated(vec![b'a'; 100])
        );
    }

    #[test]
    fn what_cannot_be_inflated_is_refused() {
        let refused = |r: Inflated, what: &str| match r {
            Inflated::Refused(why) => assert!(why.contains(what), "{why}"),
            other => panic!("{other:?}"),
        };
        refused(run(&["br"], b"\x0b\x02\x80abc", 1000), "content coding br");
        refused(run(&["zstd"], b"abc", 1000), "zstd");
        refused(
            run(&["gzip, gzip"], &gzip(&gzip(b"x")), 1000),
            "more than one",
        );
        refused(
            run(&["gzip", "deflate"], &gzip(b"x"), 1000),
            "more than one",
        );
        refused(run(&["gzip"], b"not gzip at all", 1000), "does not inflate");
        // A truncated stream.
        let g = gzip(b"some text that is long enough");
        refused(run(&["gzip"], &g[..g.len() - 6], 1000), "does not inflate");
        // Junk after the members.
        let mut g = gzip(b"x");
        g.extend_from_slice(b"junk");
        refused(run(&["gzip"], &g, 1000), "does not inflate");
        // Raw deflate is not the zlib format HTTP's `deflate` names.
        let mut d = DeflateEncoder::new(Vec::new(), Compression::default());
        d.write_all(b"x=1").unwrap();
        refused(
            run(&["deflate"], &d.finish().unwrap(), 1000),
            "does not inflate",
        );
        // Bytes after the zlib stream's end.
        let mut z = zlib(b"x=1");
        z.extend_from_slice(b"&admin=true");
        refused(run(&["deflate"], &z, 1000), "bytes after the end");
        // A name quoted in the finding is cut.
        let long = "x".repeat(200);
        match run(&[long.as_str()], b"abc", 1000) {
            Inflated::Refused(why) => assert!(why.len() < 64, "{why}"),
            other => panic!("{other:?}"),
        }
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_bytes(b"gz\xffip").unwrap(),
        );
        refused(inflate(&h, b"abc", 1000), "not ASCII");
    }
}
