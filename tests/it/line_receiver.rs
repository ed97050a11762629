//! `LineReceiver`, without sockets (driven through a `MemoryTransport`): the ports of
//! Twisted's `test_basic.py` tests for `LineReceiver` and `LineOnlyReceiver`, and a
//! seeded fuzz over random split points. The end-to-end test on 127.0.0.1 is in
//! `protocols_tcp.rs`.

use weft::protocols::{LineProtocol, LineReceiver, LineTooLongError, Lines};
use weft::reactor::{MemoryTransport, Protocol};

use crate::support::{assert_same_records, Rng};

/// TW test_basic.py `LineTester`: records lines; `len N` announces N raw bytes that an
/// empty line switches to; `pause`, `rawpause` and `stop` pause, pause into raw mode,
/// and close. Long lines are skipped past `MAX_LENGTH + 1` bytes instead of closing.
#[derive(Default)]
struct LineTester {
    received: Vec<Vec<u8>>,
    length: usize,
}

const TESTER_MAX: usize = 64;

impl LineProtocol for LineTester {
    fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
        self.received.push(line.to_vec());
        match line {
            b"" => lines.set_raw_mode(),
            b"pause" => lines.pause_producing(),
            b"rawpause" => {
                lines.pause_producing();
                lines.set_raw_mode();
                self.received.push(Vec::new());
            }
            b"stop" => lines.transport().lose_connection(),
            _ if line.starts_with(b"len ") => {
                self.length = std::str::from_utf8(&line[4..]).unwrap().parse().unwrap();
            }
            _ => {}
        }
    }

    fn raw_data_received(&mut self, data: &[u8], lines: &mut Lines) {
        let (data, rest) = data.split_at(self.length.min(data.len()));
        self.length -= data.len();
        self.received.last_mut().unwrap().extend_from_slice(data);
        if self.length == 0 {
            lines.set_line_mode_with(rest);
        }
    }

    fn line_length_exceeded(&mut self, data: &[u8], lines: &mut Lines) {
        if data.len() > TESTER_MAX + 1 {
            lines.set_line_mode_with(&data[TESTER_MAX + 1..]);
        }
    }
}

fn tester() -> LineReceiver<LineTester> {
    LineReceiver::new(LineTester::default()).with_delimiter(b"\n").with_max_length(TESTER_MAX)
}

/// Connects `receiver` to a new `MemoryTransport`.
fn connect<P: Protocol>(mut receiver: P) -> (MemoryTransport, P) {
    let fake = MemoryTransport::new();
    receiver.connection_made(fake.transport());
    (fake, receiver)
}

/// Feeds `data` in pieces of `size` bytes.
fn feed(receiver: &mut impl Protocol, data: &[u8], size: usize) {
    for piece in data.chunks(size) {
        receiver.data_received(piece);
    }
}

const BUFFER: &[u8] = b"len 10\n\n0123456789len 5\n\n1234\nlen 20\nfoo 123\n\n0123456789\n012345678len 0\nfoo 5\n\n1234567890123456789012345678901234567890123456789012345678901234567890\nlen 1\n\na";

fn buffer_output() -> Vec<&'static [u8]> {
    vec![
        b"len 10",
        b"0123456789",
        b"len 5",
        b"1234\n",
        b"len 20",
        b"foo 123",
        b"0123456789\n012345678",
        b"len 0",
        b"foo 5",
        b"",
        b"67890",
        b"len 1",
        b"a",
    ]
}

/// TW test_basic.py LineReceiverTests test_buffer
#[test]
fn lines_and_raw_data_come_out_the_same_for_every_packet_size() {
    for size in 1..10 {
        let (_fake, mut r) = connect(tester());
        feed(&mut r, BUFFER, size);
        assert_eq!(r.protocol().received, buffer_output(), "packet size {size}");
    }
}

/// TW test_basic.py LineReceiverTests test_pausing
#[test]
fn pausing_holds_the_remaining_lines_until_reading_resumes() {
    for size in 1..10 {
        let (fake, mut r) = connect(tester());
        feed(&mut r, b"twiddle1\ntwiddle2\npause\ntwiddle3\n", size);
        assert_eq!(r.protocol().received, [&b"twiddle1"[..], b"twiddle2", b"pause"], "packet size {size}");
        fake.transport().resume_producing();
        r.reading_resumed();
        assert_eq!(r.protocol().received, [&b"twiddle1"[..], b"twiddle2", b"pause", b"twiddle3"]);
    }
}

/// TW test_basic.py LineReceiverTests test_rawPausing
#[test]
fn pausing_into_raw_mode_holds_the_raw_data_until_reading_resumes() {
    for size in 1..10 {
        let (fake, mut r) = connect(tester());
        feed(&mut r, b"twiddle1\ntwiddle2\nlen 5\nrawpause\n12345twiddle3\n", size);
        let before: [&[u8]; 5] = [b"twiddle1", b"twiddle2", b"len 5", b"rawpause", b""];
        assert_eq!(r.protocol().received, before, "packet size {size}");
        fake.transport().resume_producing();
        r.reading_resumed();
        let after: [&[u8]; 6] = [b"twiddle1", b"twiddle2", b"len 5", b"rawpause", b"12345", b"twiddle3"];
        assert_eq!(r.protocol().received, after, "packet size {size}");
    }
}

/// TW test_basic.py LineReceiverTests test_stopProducing: closing the connection from a
/// line stops delivery; what follows is reported as unparsed when it closes.
#[test]
fn closing_from_a_line_stops_delivering_lines() {
    for size in 1..10 {
        let (fake, mut r) = connect(tester());
        feed(&mut r, b"twiddle1\ntwiddle2\nstop\nmore\nstuff\n", size);
        assert_eq!(r.protocol().received, [&b"twiddle1"[..], b"twiddle2", b"stop"], "packet size {size}");
        assert!(fake.is_disconnecting());
    }
    /// Closes after the first line; keeps what is reported at the close.
    #[derive(Default)]
    struct Keep {
        line: Vec<u8>,
        unparsed: Vec<u8>,
    }
    impl LineProtocol for Keep {
        fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
            self.line = line.to_vec();
            lines.transport().lose_connection();
        }
        fn unparsed_at_close(&mut self, data: &[u8]) {
            self.unparsed.extend_from_slice(data);
        }
    }
    let (fake, mut r) = connect(LineReceiver::new(Keep::default()));
    r.data_received(b"stop\r\nmore\r\nstuf");
    r.connection_lost(fake.close_reason().unwrap());
    assert_eq!(r.protocol().line, b"stop");
    assert_eq!(r.protocol().unparsed, b"more\r\nstuf");
}

/// An unterminated last line is handed to `unparsed_at_close` (Twisted drops it).
#[test]
fn an_unterminated_last_line_is_reported_at_close() {
    #[derive(Default)]
    struct Record {
        lines: Vec<Vec<u8>>,
        unparsed: Vec<u8>,
        lost: Option<String>,
    }
    impl LineProtocol for Record {
        fn line_received(&mut self, line: &[u8], _: &mut Lines) {
            self.lines.push(line.to_vec());
        }
        fn unparsed_at_close(&mut self, data: &[u8]) {
            self.unparsed = data.to_vec();
        }
        fn connection_lost(&mut self, reason: weft::Failure) {
            self.lost = Some(reason.to_string());
        }
    }
    let (_fake, mut r) = connect(LineReceiver::new(Record::default()));
    r.data_received(b"whole\r\npart");
    r.connection_lost(weft::Failure::new(weft::reactor::ConnectionDone));
    assert_eq!(r.protocol().lines, [b"whole"]);
    assert_eq!(r.protocol().unparsed, b"part");
    assert!(r.protocol().lost.is_some());
}

/// TW test_basic.py LineReceiverTests test_clearLineBuffer
#[test]
fn clear_line_buffer_returns_and_drops_what_follows_the_line() {
    #[derive(Default)]
    struct Clearing {
        line: Vec<u8>,
        rest: Vec<u8>,
    }
    impl LineProtocol for Clearing {
        fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
            self.line = line.to_vec();
            self.rest = lines.clear_line_buffer();
        }
    }
    let (_fake, mut r) = connect(LineReceiver::new(Clearing::default()));
    r.data_received(b"foo\r\nbar\r\nbaz");
    assert_eq!(r.protocol().line, b"foo");
    assert_eq!(r.protocol().rest, b"bar\r\nbaz");
    r.data_received(b"quux\r\n");
    assert_eq!(r.protocol().line, b"quux");
    assert_eq!(r.protocol().rest, b"");
}

/// TW test_basic.py `FlippingLineTester`: raw mode after each line, line mode again one
/// byte later.
#[derive(Default)]
struct Flipping {
    lines: Vec<u8>,
}

impl LineProtocol for Flipping {
    fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
        self.lines.extend_from_slice(line);
        lines.set_raw_mode();
    }
    fn raw_data_received(&mut self, data: &[u8], lines: &mut Lines) {
        lines.set_line_mode_with(&data[1..]);
    }
}

/// TW test_basic.py LineReceiverTests test_stackRecursion: many mode switches in one
/// read run in constant stack.
#[test]
fn switching_modes_many_times_in_one_read_does_not_recurse() {
    let (_fake, mut r) = connect(LineReceiver::new(Flipping::default()).with_delimiter(b"\n"));
    let n = 20_000;
    r.data_received(&b"x\nx".repeat(n));
    assert_eq!(r.protocol().lines, b"x".repeat(n));
}

/// Ignores lines.
struct Quiet;

impl LineProtocol for Quiet {
    fn line_received(&mut self, _line: &[u8], _lines: &mut Lines) {}
}

/// Feeds `data` to a default receiver (`\r\n`, 16,384 bytes) and says how it closed.
#[track_caller]
fn close_reason_after(pieces: &[&[u8]]) -> Option<weft::Failure> {
    let (fake, mut r) = connect(LineReceiver::new(Quiet));
    for p in pieces {
        r.data_received(p);
    }
    fake.close_reason()
}

const MAX: usize = 16_384;

/// TW test_basic.py LineReceiverTests test_maximumLineLength (and the same test of
/// LineReceiverLineLengthExceededTests): a line over the maximum closes the connection
/// with a `LineTooLongError`, which `connection_lost` gets.
#[test]
fn a_line_over_the_maximum_closes_with_a_line_too_long_error() {
    let long = [&b"x".repeat(MAX + 1)[..], b"\r\nr"].concat();
    let reason = close_reason_after(&[&long]).expect("disconnecting");
    let error = reason.downcast_ref::<LineTooLongError>().expect("a LineTooLongError");
    assert_eq!(*error, LineTooLongError { length: MAX + 4, max_length: MAX });
    assert_eq!(error.to_string(), "line too long: 16388 bytes with no delimiter within the maximum of 16384");
}

/// TW test_basic.py LineReceiverLineLengthExceededTests test_maximumLineLengthRemaining
#[test]
fn an_unterminated_line_over_the_maximum_closes() {
    let reason = close_reason_after(&[&b"x".repeat(MAX + 2)]).expect("disconnecting");
    assert!(reason.check::<LineTooLongError>());
}

/// TW test_basic.py LineReceiverTests test_notQuiteMaximumLineLengthUnfinished
#[test]
fn a_maximum_line_with_part_of_its_delimiter_does_not_close() {
    assert!(close_reason_after(&[&[&b"x".repeat(MAX)[..], b"\r"].concat()]).is_none());
}

/// TW test_basic.py LineReceiverTests test_maximumLineLengthPartialDelimiter
#[test]
fn a_maximum_line_whose_delimiter_is_split_does_not_close() {
    let (fake, mut r) = connect(tester().with_max_length(4));
    let line = b"xxx";
    r.data_received(line);
    r.data_received(b"");
    r.data_received(&[&b"\n"[..], line].concat());
    assert!(!fake.is_disconnecting());
    assert_eq!(r.protocol().received, [line]);
}

/// TW test_basic.py `ExcessivelyLargeLineCatcher`: records what exceeded the maximum.
#[derive(Default)]
struct Catcher {
    long_lines: Vec<Vec<u8>>,
}

impl LineProtocol for Catcher {
    fn line_received(&mut self, _line: &[u8], _lines: &mut Lines) {}
    fn line_length_exceeded(&mut self, data: &[u8], _lines: &mut Lines) {
        self.long_lines.push(data.to_vec());
    }
}

/// TW test_basic.py LineReceiverLineLengthExceededTests: test_longUnendedLine,
/// test_longLineAfterShortLine, test_longLineWithDelimiter, test_multipleLongLines.
#[test]
fn line_length_exceeded_gets_everything_from_the_long_line_on() {
    let excessive = b"x".repeat(6 * 2 + 2);
    let with_delimiter = [&excessive[..], b"\r\n", &excessive].concat();
    let two_long = [&excessive[..], b"\r\n", &excessive, b"\r\n"].concat();
    let cases: [(&str, Vec<u8>, Vec<u8>); 4] = [
        ("long unended line", excessive.clone(), excessive.clone()),
        ("long line after short", [&b"x\r\n"[..], &excessive].concat(), excessive.clone()),
        ("long line with delimiter", with_delimiter.clone(), with_delimiter),
        ("multiple long lines", two_long.clone(), two_long),
    ];
    for (what, input, expected) in cases {
        let (_fake, mut r) = connect(LineReceiver::new(Catcher::default()).with_max_length(6));
        r.data_received(&input);
        assert_eq!(r.protocol().long_lines, [expected], "{what}");
    }
}

/// TW test_basic.py LineOnlyReceiverTests test_buffer: byte by byte.
#[test]
fn lines_fed_one_byte_at_a_time_come_out_whole() {
    #[derive(Default)]
    struct Record(Vec<Vec<u8>>);
    impl LineProtocol for Record {
        fn line_received(&mut self, line: &[u8], _: &mut Lines) {
            self.0.push(line.to_vec());
        }
    }
    let buffer = b"foo\n    bleakness\n    desolation\n    plastic forks\n    ";
    let (_fake, mut r) = connect(LineReceiver::new(Record::default()).with_delimiter(b"\n"));
    feed(&mut r, buffer, 1);
    let expected: Vec<&[u8]> = buffer.split(|&b| b == b'\n').collect();
    assert_eq!(r.protocol().0, expected[..expected.len() - 1]);
}

/// TW test_basic.py `ConsumingProtocol`: echoes each line, then pauses.
struct Consuming;

impl LineProtocol for Consuming {
    fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
        lines.transport().write(line);
        lines.pause_producing();
    }
}

/// TW test_basic.py ProducerTests test_pauseResume
#[test]
fn a_paused_receiver_delivers_waiting_lines_one_per_resume() {
    let (fake, mut r) = connect(LineReceiver::new(Consuming));
    let t = fake.transport();
    let resume = |r: &mut LineReceiver<Consuming>| {
        t.resume_producing();
        r.reading_resumed();
    };
    r.data_received(b"hello, ");
    assert_eq!(fake.value(), b"");
    assert!(!t.is_reading_paused());
    r.data_received(b"world\r\n");
    assert_eq!(fake.value(), b"hello, world");
    assert!(t.is_reading_paused());
    resume(&mut r);
    assert_eq!(fake.value(), b"hello, world");
    assert!(!t.is_reading_paused());
    r.data_received(b"hello\r\nworld\r\n");
    assert_eq!(fake.value(), b"hello, worldhello");
    assert!(t.is_reading_paused());
    resume(&mut r);
    assert_eq!(fake.value(), b"hello, worldhelloworld");
    assert!(t.is_reading_paused());
    r.data_received(b"goodbye\r\n");
    assert_eq!(fake.value(), b"hello, worldhelloworld");
    resume(&mut r);
    assert_eq!(fake.value(), b"hello, worldhelloworldgoodbye");
    assert!(t.is_reading_paused());
    resume(&mut r);
    assert_eq!(fake.value(), b"hello, worldhelloworldgoodbye");
    assert!(!t.is_reading_paused());
}

/// `send_line` and a `LineSender` add the delimiter; a `LineSender` made before the
/// delimiter changes keeps its own.
#[test]
fn send_line_adds_the_delimiter() {
    struct Greeter(Option<weft::protocols::LineSender>);
    impl LineProtocol for Greeter {
        fn connection_made(&mut self, lines: &mut Lines) {
            lines.send_line(b"hello");
            self.0 = Some(lines.sender());
            lines.set_delimiter(b"\n");
            lines.send_line(b"now with newlines");
        }
        fn line_received(&mut self, _line: &[u8], _lines: &mut Lines) {}
    }
    let (fake, r) = connect(LineReceiver::new(Greeter(None)));
    r.protocol().0.as_ref().unwrap().send_line(b"from outside");
    assert_eq!(fake.value(), b"hello\r\nnow with newlines\nfrom outside\r\n");
}

/// A protocol that switches to raw mode without handling raw data gets its connection
/// closed with an error saying so, instead of losing the data silently.
#[test]
fn raw_data_without_a_raw_handler_closes_with_an_error() {
    struct RawNoHandler;
    impl LineProtocol for RawNoHandler {
        fn line_received(&mut self, _line: &[u8], lines: &mut Lines) {
            lines.set_raw_mode();
        }
    }
    let (fake, mut r) = connect(LineReceiver::new(RawNoHandler));
    r.data_received(b"go raw\r\nraw bytes");
    let reason = fake.close_reason().expect("closed");
    assert!(reason.to_string().contains("raw data (9 bytes)"), "{reason}");
}

/// Generates a stream for `LineTester` with `delimiter`: plain lines, and `len N` +
/// empty line + N raw bytes (which may hold delimiters and parts of them). Returns the
/// bytes and the expected records.
fn random_tester_stream(rng: &mut Rng, delimiter: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    // Line bytes hold parts of a delimiter, never a whole one.
    let line_bytes: &[u8] = if delimiter == b"END" { b"xyzEN " } else { b"xyz\r " };
    for _ in 0..200 {
        if rng.below(4) == 0 {
            let n = rng.below(30);
            let raw: Vec<u8> = (0..n).map(|_| b"ab\r\nEND"[rng.below(7)]).collect();
            let header = format!("len {n}");
            stream.extend_from_slice(header.as_bytes());
            stream.extend_from_slice(delimiter);
            stream.extend_from_slice(delimiter);
            stream.extend_from_slice(&raw);
            expected.push(header.into_bytes());
            expected.push(raw);
        } else {
            let n = 1 + rng.below(TESTER_MAX);
            let mut line: Vec<u8> = (0..n).map(|_| line_bytes[rng.below(line_bytes.len())]).collect();
            // Never a command ("pause", "len 3", ...).
            line[0] = b'x';
            stream.extend_from_slice(&line);
            stream.extend_from_slice(delimiter);
            expected.push(line);
        }
    }
    (stream, expected)
}

/// Random split points over the same stream give the same lines and raw data, mode
/// switches included, for one- and many-byte delimiters (a seeded fuzz: 300 streams,
/// each fed whole and in random pieces).
#[test]
fn random_split_points_give_the_same_lines() {
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let delimiter: &[u8] = [&b"\n"[..], b"\r\n", b"END"][rng.below(3)];
        let (stream, expected) = random_tester_stream(&mut rng, delimiter);
        let receiver =
            || LineReceiver::new(LineTester::default()).with_delimiter(delimiter).with_max_length(TESTER_MAX);
        let (_fake, mut whole) = connect(receiver());
        whole.data_received(&stream);
        assert_same_records(&whole.protocol().received, &expected, &format!("seed {seed}, fed whole"));
        let (_fake, mut split) = connect(receiver());
        let max_piece = 1 + rng.below(100);
        for piece in rng.split(&stream, max_piece) {
            split.data_received(piece);
        }
        let case = format!("seed {seed}, fed in pieces of up to {max_piece}");
        assert_same_records(&split.protocol().received, &expected, &case);
    }
}
