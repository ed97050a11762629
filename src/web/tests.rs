//! Unit tests of the request parser and body reader (private state: spans, framing).

use super::parse::{parse_head, BodyReader, Framing, HeadParse, Limits};
use super::request::Method;

const LIMITS: Limits = Limits { max_head: 8192, max_request_line: 1024, max_body: 1 << 20 };

fn head(raw: &[u8]) -> super::parse::ParsedHead {
    match parse_head(raw, &LIMITS) {
        HeadParse::Complete(p) => p,
        HeadParse::Partial => panic!("partial: {:?}", String::from_utf8_lossy(raw)),
        HeadParse::Error(r) => panic!("rejected {r:?}: {:?}", String::from_utf8_lossy(raw)),
    }
}

#[test]
fn a_head_is_split_into_spans_of_one_copy() {
    let p = head(b"GET http://h:1/a/b?c=d HTTP/1.1\r\nHost: h:1\r\nX-Two: 2\r\n\r\nbody");
    assert_eq!(p.consumed, 56);
    assert_eq!(p.head.method, Method::Get);
    assert_eq!(p.head.target(), "http://h:1/a/b?c=d");
    assert_eq!(p.head.path(), "/a/b");
    assert_eq!(p.head.text(p.head.query.as_ref().unwrap()), "c=d");
    assert_eq!(p.head.header("x-two"), Some(&b"2"[..]));
    assert_eq!(p.framing, Framing::None);
    assert!(p.keep_alive);
}

#[test]
fn every_prefix_of_a_head_is_partial() {
    let raw = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n";
    for end in 0..raw.len() {
        assert!(matches!(parse_head(&raw[..end], &LIMITS), HeadParse::Partial), "prefix {end}");
    }
    assert_eq!(head(raw).framing, Framing::Length(3));
}

/// Feeds `wire` to a body reader in pieces cut at `cuts`, as reads would deliver them.
fn read_in_pieces(framing: Framing, wire: &[u8], cuts: &[usize]) -> (Vec<u8>, usize) {
    let mut reader = BodyReader::new(framing, &LIMITS);
    let mut pending: Vec<u8> = Vec::new();
    let mut last = 0;
    let mut used_total = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        pending.extend_from_slice(&wire[last..cut]);
        last = cut;
        let used = reader.feed(&pending).unwrap();
        used_total += used;
        pending.drain(..used);
        if reader.is_done() {
            break;
        }
    }
    assert!(reader.is_done(), "body incomplete after {wire:?}");
    (reader.into_body(), used_total)
}

#[test]
fn a_chunked_body_reads_the_same_whatever_the_split_points() {
    let wire = b"4;a=b\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let expected = b"Wikipedia in\r\n\r\nchunks.".to_vec();
    let body_len = wire.len() - 4;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..500 {
        let mut cuts: Vec<usize> = (0..4)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % wire.len() as u64) as usize
            })
            .collect();
        cuts.sort_unstable();
        let (body, used) = read_in_pieces(Framing::Chunked, wire, &cuts);
        assert_eq!(body, expected, "cuts {cuts:?}");
        assert_eq!(used, body_len, "the reader stops at the end of the body (cuts {cuts:?})");
    }
}

#[test]
fn a_length_body_stops_at_its_length() {
    let (body, used) = read_in_pieces(Framing::Length(5), b"helloGET", &[1, 3]);
    assert_eq!(body, b"hello");
    assert_eq!(used, 5);
}
