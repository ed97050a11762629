//! `IntNStringReceiver` and `NetstringReceiver`, without sockets (driven through a
//! `MemoryTransport`): the ports of Twisted's `test_basic.py` tests for them, and a
//! seeded fuzz over random split points.

use weft::protocols::{
    IntNStringReceiver, LengthLimitExceededError, NetstringParseError, NetstringReceiver, Prefix,
    StringProtocol, StringSender, StringTooLongError,
};
use weft::reactor::{ConnectionDone, MemoryTransport, Protocol};
use weft::Failure;

use crate::support::{assert_same_records, Rng};

/// TW test_basic.py `TestMixin`: records strings (and, here, what else it is told).
#[derive(Default)]
struct Collect {
    received: Vec<Vec<u8>>,
    limits: Vec<usize>,
    /// Leave the connection open when a length is over the limit.
    keep_open: bool,
    /// Pause after each string.
    pause: bool,
    unparsed: Vec<u8>,
    lost: Option<Failure>,
}

impl StringProtocol for Collect {
    fn string_received(&mut self, string: &[u8], strings: &StringSender) {
        self.received.push(string.to_vec());
        if self.pause {
            strings.pause_producing();
        }
    }
    fn length_limit_exceeded(&mut self, length: usize, strings: &StringSender) {
        self.limits.push(length);
        if !self.keep_open {
            strings
                .transport()
                .lose_connection_with(LengthLimitExceededError { length, max_length: strings.max_length() });
        }
    }
    fn unparsed_at_close(&mut self, data: &[u8]) {
        self.unparsed = data.to_vec();
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.lost = Some(reason);
    }
}

fn connect<P: Protocol>(mut receiver: P) -> (MemoryTransport, P) {
    let fake = MemoryTransport::new();
    receiver.connection_made(fake.transport());
    (fake, receiver)
}

/// TW test_basic.py `TestMixin.MAX_LENGTH`.
const TEST_MAX: usize = 50;

fn int_n(prefix: Prefix) -> IntNStringReceiver<Collect> {
    IntNStringReceiver::new(prefix, Collect::default()).with_max_length(TEST_MAX)
}

fn netstring() -> NetstringReceiver<Collect> {
    NetstringReceiver::new(Collect::default()).with_max_length(TEST_MAX)
}

fn framed(prefix: Prefix, s: &[u8]) -> Vec<u8> {
    let len = (s.len() as u32).to_be_bytes();
    [&len[4 - prefix.width()..], s].concat()
}

const PREFIXES: [Prefix; 3] = [Prefix::Int8, Prefix::Int16, Prefix::Int32];

/// TW test_basic.py IntNTestCaseMixin test_receive (Int8Tests, Int16Tests, Int32Tests):
/// strings fed one byte at a time come out whole.
#[test]
fn int_n_strings_fed_byte_by_byte_come_out_whole() {
    for prefix in PREFIXES {
        let (_fake, mut r) = connect(int_n(prefix));
        let strings: [&[u8]; 2] = [b"a", &[b'b'; 16]];
        for s in strings {
            for byte in framed(prefix, s) {
                r.data_received(&[byte]);
            }
        }
        assert_eq!(r.protocol().received, strings, "{prefix:?}");
    }
}

/// TW test_basic.py IntNTestCaseMixin test_partial
#[test]
fn a_partial_int_n_string_delivers_nothing() {
    let partial: [(Prefix, &[u8]); 6] = [
        (Prefix::Int32, b"\x00\x00\x00"),
        (Prefix::Int32, b"hello there"),
        (Prefix::Int16, b"\x00"),
        (Prefix::Int16, b"hello there"),
        (Prefix::Int8, b"\x08"),
        (Prefix::Int8, b"dzadz"),
    ];
    for (prefix, s) in partial {
        let (_fake, mut r) = connect(int_n(prefix));
        for byte in s {
            r.data_received(&[*byte]);
        }
        assert!(r.protocol().received.is_empty(), "{prefix:?} {s:?}");
    }
}

/// TW test_basic.py IntNTestCaseMixin test_send, and Int8Tests/Int16Tests/Int32Tests
/// test_data
#[test]
fn int_n_send_string_prefixes_the_length_in_network_order() {
    let cases: [(Prefix, &[u8], &[u8]); 3] = [
        (Prefix::Int8, b"\x03foo", b"\x04ubar"),
        (Prefix::Int16, b"\x00\x03foo", b"\x00\x04ubar"),
        (Prefix::Int32, b"\x00\x00\x00\x03foo", b"\x00\x00\x00\x04ubar"),
    ];
    for (prefix, foo, ubar) in cases {
        let (fake, sender) = capture_sender(prefix);
        sender.send_string(b"foo").unwrap();
        assert_eq!(fake.value(), foo, "{prefix:?}");
        sender.send_string(&[b'b'; 16]).unwrap();
        assert_eq!(fake.value(), [foo, &framed(prefix, &[b'b'; 16])].concat(), "{prefix:?}");
        let (_fake, mut r) = connect(int_n(prefix));
        r.data_received(ubar);
        assert_eq!(r.protocol().received, [b"ubar"], "{prefix:?}");
    }
}

/// Keeps the sender `connection_made` gave.
#[derive(Default)]
struct KeepSender(Option<StringSender>);

impl StringProtocol for KeepSender {
    fn connection_made(&mut self, strings: &StringSender) {
        self.0 = Some(strings.clone());
    }
    fn string_received(&mut self, _string: &[u8], _strings: &StringSender) {}
}

fn capture_sender(prefix: Prefix) -> (MemoryTransport, StringSender) {
    let (fake, r) = connect(IntNStringReceiver::new(prefix, KeepSender::default()));
    let sender = r.protocol().0.clone().unwrap();
    (fake, sender)
}

/// TW test_basic.py Int8Tests/Int16Tests test_tooLongSend: a string the prefix cannot
/// say is refused with an error, and nothing is sent.
#[test]
fn sending_a_string_longer_than_the_prefix_allows_is_refused() {
    for prefix in [Prefix::Int8, Prefix::Int16] {
        let (fake, sender) = capture_sender(prefix);
        let too_long = vec![b'b'; prefix.max_string() + 1];
        let err = sender.send_string(&too_long).unwrap_err();
        assert_eq!(
            err,
            StringTooLongError { length: prefix.max_string() + 1, max_length: prefix.max_string() }
        );
        assert!(fake.value().is_empty());
        sender.send_string(&too_long[1..]).unwrap();
        assert_eq!(fake.value().len(), prefix.width() + prefix.max_string());
    }
}

/// TW test_basic.py IntNTestCaseMixin test_lengthLimitExceeded and test_longStringNotDelivered,
/// RecvdAttributeMixin test_recvdInLengthLimitExceeded: a prefix over the maximum calls
/// `length_limit_exceeded` with it; by default the connection closes with a
/// `LengthLimitExceededError`, the string is not delivered, and its bytes are reported
/// at the close.
#[test]
fn an_int_n_length_over_the_maximum_closes_with_an_error() {
    for prefix in PREFIXES {
        let (fake, mut r) = connect(IntNStringReceiver::new(prefix, Collect::default()).with_max_length(10));
        let message = framed(prefix, &[b'x'; 11]);
        r.data_received(&message);
        assert_eq!(r.protocol().limits, [11]);
        assert!(r.protocol().received.is_empty());
        let reason = fake.close_reason().expect("closing");
        let error = reason.downcast_ref::<LengthLimitExceededError>().expect("a LengthLimitExceededError");
        assert_eq!(*error, LengthLimitExceededError { length: 11, max_length: 10 });
        assert_eq!(error.to_string(), "string of 11 bytes announced, above the maximum of 10");
        r.connection_lost(reason);
        assert_eq!(r.protocol().unparsed, message, "{prefix:?}");
    }
}

/// If `length_limit_exceeded` keeps the connection, the long string's bytes are skipped
/// as they arrive, unbuffered, and the next string is delivered.
#[test]
fn a_kept_connection_skips_the_long_string_and_goes_on() {
    let collect = Collect { keep_open: true, ..Collect::default() };
    let (fake, mut r) = connect(IntNStringReceiver::new(Prefix::Int16, collect).with_max_length(10));
    let stream = [framed(Prefix::Int16, &[b'x'; 1000]), framed(Prefix::Int16, b"next")].concat();
    for piece in stream.chunks(7) {
        r.data_received(piece);
    }
    assert_eq!(r.protocol().limits, [1000]);
    assert_eq!(r.protocol().received, [b"next"]);
    assert!(!fake.is_disconnecting());
}

/// TW test_basic.py LPTestCaseMixin test_illegal (Int8Tests, Int16Tests, Int32Tests,
/// NetstringReceiverTests): illegal input fed byte by byte closes the connection.
#[test]
fn illegal_strings_close_the_connection() {
    let int_n_cases: [(Prefix, &[u8]); 3] = [
        (Prefix::Int32, b"\x10\x00\x00\x00aaaaaa"),
        (Prefix::Int16, b"\x10\x00aaaaaa"),
        (Prefix::Int8, b"\x00\x00aaaaaa"),
    ];
    for (prefix, s) in int_n_cases {
        let (fake, mut r) = connect(int_n(prefix));
        for byte in s {
            r.data_received(&[*byte]);
        }
        assert!(fake.is_disconnecting(), "{prefix:?} {s:?}");
    }
    let too_long = [&b"51:"[..], &[b'a'; 50], b"b,"].concat();
    let netstring_cases: [&[u8]; 4] = [b"9999999999999999999999", b"abc", b"4:abcde", &too_long];
    for s in netstring_cases {
        let (fake, mut r) = connect(netstring());
        for byte in s {
            r.data_received(&[*byte]);
        }
        let reason = fake.close_reason().unwrap_or_else(|| panic!("{s:?} did not close"));
        assert!(reason.check::<NetstringParseError>(), "{reason}");
        assert!(r.protocol().received.is_empty());
    }
}

/// Feeds `data` to a netstring receiver (maximum 50), returning what it received and
/// how it closed.
fn netstring_after(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, Option<NetstringParseError>) {
    let (fake, mut r) = connect(netstring());
    for p in pieces {
        r.data_received(p);
    }
    let error = fake.close_reason().map(|f| *f.downcast_ref::<NetstringParseError>().expect("a parse error"));
    (r.protocol().received.clone(), error)
}

/// TW test_basic.py NetstringReceiverTests: test_receiveEmptyNetstring,
/// test_receiveOneCharacter, test_receiveTwoCharacters, test_receiveNestedNetstring,
/// test_receiveNetstringPortions_1, _2 and _3, test_receiveTwoNetstrings.
#[test]
fn netstrings_are_received_whole_from_any_portions() {
    /// Pieces fed in turn, and the strings expected.
    type Case<'a> = (&'a [&'a [u8]], &'a [&'a [u8]]);
    let cases: [Case<'_>; 8] = [
        (&[b"0:,"], &[b""]),
        (&[b"1:a,"], &[b"a"]),
        (&[b"2:ab,"], &[b"ab"]),
        (&[b"4:1:a,,"], &[b"1:a,"]),
        (&[b"4:aa", b"aa,"], &[b"aaaa"]),
        (&[b"1", b"0:01234", b"56789", b","], &[b"0123456789"]),
        (&[b"2", b":", b"a", b"b", b","], &[b"ab"]),
        (&[b"1:a,1", b":b,"], &[b"a", b"b"]),
    ];
    for (pieces, expected) in cases {
        let (received, error) = netstring_after(pieces);
        assert_eq!(received, expected, "{pieces:?}");
        assert_eq!(error, None, "{pieces:?}");
    }
}

/// TW test_basic.py NetstringReceiverTests: test_moreDataThanSpecified,
/// test_moreDataThanSpecifiedBorderCase, test_missingNumber, test_missingColon,
/// test_missingNumberAndColon, test_onlyData, test_maxReceiveLimit; and a leading zero.
#[test]
fn invalid_netstrings_close_with_a_parse_error_saying_why() {
    let too_long = [&b"51:"[..], &[b'a'; 51]].concat();
    let cases: [(&[u8], NetstringParseError); 8] = [
        (b"2:aaa,", NetstringParseError::MissingComma),
        (b"0:a,", NetstringParseError::MissingComma),
        (b":aaa,", NetstringParseError::MissingLength),
        (b"3aaa,", NetstringParseError::MissingLength),
        (b"aaa,", NetstringParseError::MissingLength),
        (b"aaa", NetstringParseError::MissingLength),
        (&too_long, NetstringParseError::TooLong { max_length: 50 }),
        (b"007:abcdefg,", NetstringParseError::MissingLength),
    ];
    for (input, expected) in cases {
        let (received, error) = netstring_after(&[input]);
        assert!(received.is_empty(), "{input:?}");
        assert_eq!(error, Some(expected), "{:?}", String::from_utf8_lossy(input));
    }
    assert_eq!(
        NetstringParseError::TooLong { max_length: 50 }.to_string(),
        "invalid netstring: longer than the maximum of 50 bytes"
    );
}

/// TW test_basic.py NetstringReceiverTests test_consumeLength, test_consumeLengthBorderCase1,
/// 2 and 3: a length equal to the maximum is accepted, one above it is refused, however
/// many digits it has.
#[test]
fn a_netstring_as_long_as_the_maximum_is_accepted() {
    let twelve = [&b"12:"[..], &[b'x'; 12], b","].concat();
    for (max, input, accepted) in
        [(12, &twelve[..], true), (11, &twelve[..], false), (11, &b"1000:"[..], false)]
    {
        let (fake, mut r) = connect(NetstringReceiver::new(Collect::default()).with_max_length(max));
        r.data_received(input);
        assert_eq!(r.protocol().received.len(), usize::from(accepted), "max {max}, {input:?}");
        assert_eq!(fake.is_disconnecting(), !accepted, "max {max}, {input:?}");
    }
}

/// After a parse error nothing more is delivered, and the bad netstring on is reported
/// at the close.
#[test]
fn a_broken_netstring_stream_reports_the_rest_at_close() {
    let (fake, mut r) = connect(netstring());
    r.data_received(b"1:a,2:bcX1:d,");
    assert_eq!(r.protocol().received, [b"a"]);
    r.data_received(b"1:e,");
    assert_eq!(r.protocol().received, [b"a"]);
    r.connection_lost(fake.close_reason().unwrap());
    assert_eq!(r.protocol().unparsed, b"2:bcX1:d,1:e,");
    assert!(r.protocol().lost.as_ref().unwrap().check::<NetstringParseError>());
}

/// An incomplete last string is reported at a clean close.
#[test]
fn an_incomplete_string_is_reported_at_close() {
    let (_fake, mut r) = connect(int_n(Prefix::Int16));
    r.data_received(b"\x00\x05hel");
    r.connection_lost(Failure::new(ConnectionDone));
    assert_eq!(r.protocol().unparsed, b"\x00\x05hel");
    assert!(r.protocol().lost.as_ref().unwrap().check::<ConnectionDone>());
}

/// A protocol that pauses after each string gets one string per resume.
#[test]
fn a_paused_string_receiver_delivers_one_string_per_resume() {
    let collect = || Collect { pause: true, ..Collect::default() };
    let (fake, mut r) = connect(NetstringReceiver::new(collect()));
    r.data_received(b"1:a,1:b,1:c");
    assert_eq!(r.protocol().received, [b"a"]);
    let t = fake.transport();
    t.resume_producing();
    r.reading_resumed();
    assert_eq!(r.protocol().received, [&b"a"[..], b"b"]);
    r.data_received(b",");
    t.resume_producing();
    r.reading_resumed();
    assert_eq!(r.protocol().received, [&b"a"[..], b"b", b"c"]);

    let (fake, mut r) = connect(IntNStringReceiver::new(Prefix::Int8, collect()));
    r.data_received(b"\x01a\x01b");
    assert_eq!(r.protocol().received, [b"a"]);
    fake.transport().resume_producing();
    r.reading_resumed();
    assert_eq!(r.protocol().received, [&b"a"[..], b"b"]);
}

/// TW test_basic.py NetstringReceiverTests test_buffer: strings sent with `send_string`
/// are received in chunks of every size.
#[test]
fn netstrings_sent_come_back_for_every_packet_size() {
    let strings: [&[u8]; 7] = [b"hello", b"world", b"how", b"are", b"you123", b":today", &[b'a'; 515]];
    let (fake, r) = connect(NetstringReceiver::new(KeepSender::default()));
    for s in strings {
        r.protocol().0.as_ref().unwrap().send_string(s).unwrap();
    }
    let out = fake.value();
    for size in 1..10 {
        let (_fake, mut r) = connect(NetstringReceiver::new(Collect::default()).with_max_length(699));
        for piece in out.chunks(size) {
            r.data_received(piece);
        }
        assert_eq!(r.protocol().received, strings, "packet size {size}");
    }
}

/// Random strings, framed each way, fed whole and at random split points, come out the
/// same (a seeded fuzz: 200 streams per framing).
#[test]
fn random_split_points_give_the_same_strings() {
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let strings: Vec<Vec<u8>> =
            (0..100).map(|_| (0..rng.below(255)).map(|_| rng.next() as u8).collect()).collect();
        for framing in 0..4 {
            let stream: Vec<u8> = strings
                .iter()
                .flat_map(|s| match framing {
                    3 => [format!("{}:", s.len()).as_bytes(), s, b","].concat(),
                    i => framed(PREFIXES[i], s),
                })
                .collect();
            let max_piece = 1 + rng.below(300);
            let pieces = rng.split(&stream, max_piece);
            let received = match framing {
                3 => {
                    let (_f, mut r) =
                        connect(NetstringReceiver::new(Collect::default()).with_max_length(255));
                    pieces.iter().for_each(|p| r.data_received(p));
                    r.protocol().received.clone()
                }
                i => {
                    let receiver =
                        IntNStringReceiver::new(PREFIXES[i], Collect::default()).with_max_length(255);
                    let (_f, mut r) = connect(receiver);
                    pieces.iter().for_each(|p| r.data_received(p));
                    r.protocol().received.clone()
                }
            };
            assert_same_records(
                &received,
                &strings,
                &format!("seed {seed}, framing {framing}, pieces ≤ {max_piece}"),
            );
        }
    }
}
