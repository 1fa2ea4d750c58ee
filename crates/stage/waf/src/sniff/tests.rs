use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use portcullis_core::BoxError;

use super::*;

fn junk(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn utf32be(s: &str) -> Vec<u8> {
    s.chars().flat_map(|c| u32::from(c).to_be_bytes()).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const JSON_ATTACK: &[u8] = br#"{"q":"1' OR '1'='1"}"#;

#[test]
fn text_is_text() {
    let csv = b"id,name,comment\n1,Ann,\"fine, thanks\"\n".repeat(40);
    for (what, body) in [
        ("json", JSON_ATTACK.to_vec()),
        ("csv", csv),
        ("form", b"a=1&id=1' OR 1=1".to_vec()),
        (
            "bom json",
            [b"\xef\xbb\xbf".as_slice(), JSON_ATTACK].concat(),
        ),
        ("blank json", [b" \r\n\t".as_slice(), JSON_ATTACK].concat()),
        ("blanks only", b" ".repeat(2000)),
        // Starts like JSON: read as JSON whatever follows (Go's decoder takes the value).
        ("json then junk", [JSON_ATTACK, &junk(2000, 1)].concat()),
        ("utf-16le json", utf16le(r#"{"q":"1' OR '1'='1"}"#)),
        (
            "utf-16 bom xml",
            [b"\xff\xfe".as_slice(), &utf16le("<a>x</a>")].concat(),
        ),
        ("utf-32be json", utf32be(r#"  ["x"]"#)),
        // A kilobyte of UTF-16 blanks, then JSON: a decoder skips them.
        (
            "utf-16 blanks then json",
            utf16le(&format!("{}{{}}", " ".repeat(600))),
        ),
        ("one char", b"x".to_vec()),
    ] {
        assert!(textual_prefix(&body, true), "{what}");
    }
}

#[test]
fn binary_is_binary() {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(junk(4000, 2));
    // A JPEG whose first kilobyte is XMP (text): its signature says what it is.
    let mut jpeg = b"\xff\xd8\xff\xe1\x10\x00http://ns.adobe.com/xap/1.0/\x00".to_vec();
    jpeg.extend(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'> ".repeat(60));
    let mut pdf = b"%PDF-1.7\n1 0 obj\n<</Type/Catalog/Pages 2 0 R>>\nendobj\n".repeat(30);
    pdf.extend(junk(100, 3));
    let mut zip = b"PK\x03\x04\x14\x00\x00\x00\x00\x00".to_vec();
    zip.extend(b"notes.txt plain words stored uncompressed ".repeat(40));
    // MP4: `00 00 00 20` reads as a UTF-32 blank, `ftyp` as no character at all.
    let mut mp4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41".to_vec();
    mp4.extend(junk(3000, 4));
    // 16-bit samples, half of the bytes NUL: the untyped test's UTF-16 (rule 1005).
    let pcm: Vec<u8> = (0..2000u16)
        .flat_map(|i| (i % 7 + 1).to_le_bytes())
        .collect();
    let mut wasm = b"\x00asm\x01\x00\x00\x00".to_vec();
    wasm.extend(b"\x01\x05\x01`\x00\x00".repeat(100));
    // 16-bit grey image: one byte of two NUL, the other text.
    let gray: Vec<u8> = (0..2000u16)
        .flat_map(|i| (0x41 + i % 20).to_le_bytes())
        .collect();
    for (what, body) in [
        ("png", png),
        ("jpeg xmp", jpeg),
        ("pdf", pdf),
        ("stored zip", zip),
        ("mp4", mp4),
        ("pcm", pcm),
        ("wasm", wasm),
        ("random", junk(5000, 5)),
        // UTF-16 that opens no JSON or XML: no decoder reads it without being told.
        (
            "utf-16 raw sql",
            utf16le("' union select password from users --"),
        ),
        ("gray", gray),
    ] {
        assert!(!textual_prefix(&body, false), "{what}");
    }
}

/// Exactly the first kilobyte decides, whatever follows: the adversary who pads an attack
/// behind 1 KiB of binary is the residual `docs/waf.md` "Limits" names.
#[test]
fn the_first_kilobyte_decides() {
    let mut text_then_junk = b"a,b,c\n".repeat(200);
    text_then_junk.truncate(SNIFF_BYTES);
    text_then_junk.extend(junk(8000, 6));
    assert!(textual_prefix(&text_then_junk, false));
    // 60 bad bytes of 1024 (over 5 %), then text: binary.
    let mut junk_then_text = vec![0u8; 60];
    junk_then_text.extend(b"&id=1' OR 1=1".repeat(200));
    assert!(!textual_prefix(&junk_then_text, false));
    // 40 of 1024: text.
    let mut few = vec![0u8; 40];
    few.extend(b"&id=1' OR 1=1".repeat(200));
    assert!(textual_prefix(&few, false));
    // A character cut by the window's end is not invalid; the same bytes ending a whole body
    // are: 51 control bytes pass, 52 do not.
    let mut cut = "é".repeat((SNIFF_BYTES - 52) / 2).into_bytes();
    cut.extend(b"\x01".repeat(51));
    cut.push(0xc3);
    assert_eq!(cut.len(), SNIFF_BYTES);
    assert!(textual_prefix(&cut, false));
    assert!(!textual_prefix(&cut, true));
}

/// Text that merely starts like a signature is still text.
#[test]
fn words_are_not_signatures() {
    for body in [
        "BMW,3 series,2019\n",
        "ID3,tag\n",
        "BZh9 is a prefix\n",
        "RIFF raff\n",
        "fLaC x\n",
        "%PDF-x but text\n",
        // What may precede `ftyp` in an MP4 opens JSON or XML here.
        r#"{"abftyp":"1' OR '1'='1"}"#,
        "<x> ftyp<q>1' OR '1'='1</q></x>",
    ] {
        assert!(textual_prefix(body.as_bytes(), true), "{body}");
    }
}

fn decide(coding: Coding, grpc: bool, body: &[u8], piece: usize) -> (Look, usize) {
    let mut s = Sniffer::new(coding, grpc);
    let mut read = 0;
    loop {
        let ended = read >= body.len();
        match s.look(&body[..read], ended) {
            Look::More => read = (read + piece).min(body.len()),
            l => return (l, read),
        }
    }
}

/// Waits for a kilobyte (or the end), and decides the same whatever the pieces.
#[test]
fn the_window_is_waited_for() {
    let mut body = b"x=1&".repeat(300);
    body.extend(junk(5000, 7));
    for piece in [1, 7, 1000, 1024, 9000] {
        let (look, read) = decide(Coding::Plain, false, &body, piece);
        assert_eq!(look, Look::Text, "{piece}");
        assert!(
            read >= SNIFF_BYTES && read < SNIFF_BYTES + piece.max(1),
            "{piece} {read}"
        );
    }
    let (look, read) = decide(Coding::Plain, false, b"12,13\n", 1);
    assert_eq!((look, read), (Look::Text, 6));
}

/// gRPC: the first message decides, and is all that is waited for (a client may send one and
/// wait for an answer); text-heavy protobuf stays binary; UTF-32 JSON framed like gRPC, or a
/// body so labelled but not so framed, is judged as any.
#[test]
fn grpc_is_judged_on_its_first_message() {
    let text = b"a long string field of plain words ... ".repeat(5);
    let mut msg = vec![0u8, 0, 0, 0, text.len() as u8 + 2, 0x0a, text.len() as u8];
    msg.extend(&text);
    let (look, read) = decide(
        Coding::Plain,
        true,
        &[msg.clone(), vec![0; 4096]].concat(),
        1,
    );
    assert_eq!((look, read), (Look::Binary, msg.len()));
    // The same bytes labelled octet-stream: text.
    assert_eq!(decide(Coding::Plain, false, &msg, 1).0, Look::Text);
    // UTF-32BE JSON reads as a gRPC prefix of a 31 KiB message.
    let wide = utf32be(&format!(
        r#"{{"q":"1' OR '1'='1","pad":"{}"}}"#,
        " ".repeat(300)
    ));
    assert_eq!(&wide[..5], b"\x00\x00\x00{\x00");
    assert_eq!(decide(Coding::Plain, true, &wide, 3).0, Look::Text);
    assert_eq!(decide(Coding::Plain, true, JSON_ATTACK, 3).0, Look::Text);
    assert!(is_grpc(Some("application/grpc-web+proto; x=1")));
    assert!(is_grpc(Some("Application/GRPC")));
    assert!(!is_grpc(Some("application/octet-stream")));
    assert!(!is_grpc(None));
}

#[test]
fn coded_bodies_are_judged_inflated() {
    let json = [JSON_ATTACK, b" ".repeat(3000).as_slice()].concat();
    for piece in [1, 100, 5000] {
        assert_eq!(
            decide(Coding::Gzip, false, &gzip(&json), piece).0,
            Look::Text
        );
        assert_eq!(
            decide(Coding::Zlib, false, &zlib(&json), piece).0,
            Look::Text
        );
        let png = [b"\x89PNG\r\n\x1a\n".as_slice(), &junk(6000, 8)].concat();
        assert_eq!(
            decide(Coding::Gzip, false, &gzip(&png), piece).0,
            Look::Binary
        );
    }
    // Short: the whole inflated body decides.
    assert_eq!(decide(Coding::Gzip, false, &gzip(b"a=1"), 1).0, Look::Text);
    // Not gzip at all: no upstream inflates it either.
    assert_eq!(
        decide(Coding::Gzip, false, &junk(3000, 9), 64).0,
        Look::Binary
    );
    // A gzip header with a name longer than what is read to inflate: buffered, the engine
    // inflates it whole.
    let mut e = flate2::GzBuilder::new()
        .filename("n".repeat(SNIFF_CODED_BYTES + 10))
        .write(Vec::new(), flate2::Compression::default());
    e.write_all(JSON_ATTACK).unwrap();
    let padded = e.finish().unwrap();
    let (look, read) = decide(Coding::Gzip, false, &padded, 4096);
    assert_eq!(look, Look::Text);
    assert!(read < padded.len());
    // Codings the WAF does not inflate stream on, nothing read.
    assert_eq!(
        decide(Coding::Other, false, JSON_ATTACK, 1),
        (Look::Binary, 0)
    );
}

#[test]
fn codings_are_read_as_the_engine_reads_them() {
    let of = |values: &[&[u8]]| {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        Coding::of(&h)
    };
    assert_eq!(of(&[]), Coding::Plain);
    assert_eq!(of(&[b"identity"]), Coding::Plain);
    assert_eq!(of(&[b"GZIP"]), Coding::Gzip);
    assert_eq!(of(&[b"identity, x-gzip"]), Coding::Gzip);
    assert_eq!(of(&[b"deflate"]), Coding::Zlib);
    assert_eq!(of(&[b"gzip, gzip"]), Coding::Other);
    assert_eq!(of(&[b"gzip", b"deflate"]), Coding::Other);
    assert_eq!(of(&[b"br"]), Coding::Other);
    assert_eq!(of(&[b"snappy"]), Coding::Other);
    assert_eq!(of(&[b"gz\xffip"]), Coding::Other);
}

/// A body of given pieces, then (when `stall`) silence: a client waiting for an answer.
struct Pieces {
    pieces: VecDeque<Bytes>,
    stall: bool,
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.pieces.pop_front() {
            Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
            None if self.stall => Poll::Pending,
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.stall && self.pieces.is_empty()
    }

    /// Exact, as a body of known length says (hyper's, the front's).
    fn size_hint(&self) -> SizeHint {
        if self.stall {
            return SizeHint::default();
        }
        SizeHint::with_exact(self.pieces.iter().map(|p| p.len() as u64).sum())
    }
}

fn request(ct: &str, pieces: &[&[u8]], stall: bool) -> GatewayRequest {
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.headers
        .insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
    let body = Pieces {
        pieces: pieces.iter().map(|p| Bytes::copy_from_slice(p)).collect(),
        stall,
    };
    GatewayRequest::new(head, body.boxed_unsync())
}

async fn all_of(req: &mut GatewayRequest) -> Vec<u8> {
    match req.take_body() {
        RequestBody::Buffered(b) => b.to_vec(),
        RequestBody::Streaming(b) => b.collect().await.unwrap().to_bytes().to_vec(),
    }
}

/// What was read to decide goes on, in order, before the rest.
#[tokio::test]
async fn the_bytes_read_are_forwarded_intact() {
    let png = [b"\x89PNG\r\n\x1a\n".as_slice(), &junk(5000, 10)].concat();
    let (a, rest) = png.split_at(700);
    let (b, c) = rest.split_at(700);
    let mut req = request("image/png", &[a, b, c], false);
    assert!(!declared_binary_is_text(&mut req, false).await.unwrap());
    let RequestBody::Streaming(b) = &req.body else {
        panic!("a longer body goes on streaming");
    };
    // Still of known length (what was read, and the rest).
    assert_eq!(b.size_hint().exact(), Some(png.len() as u64));
    assert_eq!(all_of(&mut req).await, png);
    // Text: then buffered by the step, whole.
    let csv = b"1,2,3\n".repeat(500);
    let (a, b) = csv.split_at(10);
    let mut req = request("application/octet-stream", &[a, b], false);
    assert!(declared_binary_is_text(&mut req, false).await.unwrap());
    assert!(matches!(
        req.buffer_prefix(1 << 20).await,
        Ok(portcullis_core::Prefix::Whole(w)) if w.as_ref() == csv.as_slice()
    ));
    // A short body read to its end still streams (of known length), so the route's size
    // limit, applied as it is forwarded, holds.
    let mut req = request("application/octet-stream", &[b"\x00\x01", b"\x02"], false);
    assert!(!declared_binary_is_text(&mut req, false).await.unwrap());
    let RequestBody::Streaming(b) = &req.body else {
        panic!("streams on");
    };
    assert_eq!(b.size_hint().exact(), Some(3));
    assert_eq!(all_of(&mut req).await, b"\x00\x01\x02");
    // Already buffered (by an earlier step): looked at whole, left so.
    let mut req = request("application/octet-stream", &[b"a=1"], false);
    assert!(req.buffer_prefix(10).await.is_ok());
    assert!(declared_binary_is_text(&mut req, false).await.unwrap());
    assert!(matches!(&req.body, RequestBody::Buffered(b) if b.as_ref() == b"a=1"));
}

/// A gRPC call whose client sends one message and waits is decided on that message, not left
/// waiting for a kilobyte.
#[tokio::test]
async fn a_grpc_stream_is_not_waited_for() {
    let msg = b"\x00\x00\x00\x00\x05\x0a\x03abc";
    let mut req = request("application/grpc", &[msg], true);
    let text = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        declared_binary_is_text(&mut req, false),
    )
    .await
    .expect("decided without more bytes")
    .unwrap();
    assert!(!text);
    let RequestBody::Streaming(mut b) = req.take_body() else {
        panic!("still streaming");
    };
    let first = b.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first.as_ref(), msg);
}

/// A gRPC call over HTTP/2 whose client has sent nothing yet (a bidirectional stream waiting
/// for the server to speak first) streams on at once to an upstream that may speak HTTP/2;
/// labelled gRPC over HTTP/1.1 (no gRPC client speaks it), or on a route whose upstream
/// speaks HTTP/1.1 only (no gRPC server does), it is waited for like any other body — else
/// the label and a body sent a moment late would carry anything past the WAF.
#[tokio::test]
async fn a_grpc_call_that_has_sent_nothing_yet_is_not_held() {
    let mut req = request("application/grpc", &[], true);
    req.head.version = http::Version::HTTP_2;
    let text = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        declared_binary_is_text(&mut req, true),
    )
    .await
    .expect("decided without any byte");
    assert!(!text.unwrap());
    for (h2, grpc_streams) in [(false, true), (true, false)] {
        let mut req = request("application/grpc", &[], true);
        if h2 {
            req.head.version = http::Version::HTTP_2;
        }
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(200),
                declared_binary_is_text(&mut req, grpc_streams)
            )
            .await
            .is_err(),
            "the first bytes are waited for (HTTP/2: {h2})"
        );
    }
}

/// The inflation of a prefix tells a stream cut short (read on) from one that is not gzip or
/// zlib (stop).
#[test]
fn a_cut_stream_is_told_from_a_corrupt_one() {
    let data = junk(5000, 11);
    for (coding, coded) in [(Coding::Gzip, gzip(&data)), (Coding::Zlib, zlib(&data))] {
        for at in [3, 12, 600] {
            let (out, err) = inflate_prefix(coding, &coded[..at]);
            assert_eq!(
                err,
                Some(std::io::ErrorKind::UnexpectedEof),
                "{coding:?} {at}"
            );
            assert!(data.starts_with(&out));
        }
        for at in [2000, coded.len()] {
            let (out, err) = inflate_prefix(coding, &coded[..at]);
            assert_eq!((out.len(), err), (SNIFF_BYTES, None));
        }
    }
    let (out, err) = inflate_prefix(
        Coding::Gzip,
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff",
    );
    assert!(out.is_empty());
    assert_ne!(err, Some(std::io::ErrorKind::UnexpectedEof));
}
