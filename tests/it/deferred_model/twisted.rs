//! The differential run against the real Twisted `Deferred`: the model test's random
//! sequences, run on weft and by `twisted_runner.py` on `twisted.internet.defer.Deferred`,
//! transcripts compared line by line.
//!
//! Run it with `cargo test --release --test it -- --ignored weft_agrees_with_twisted
//! --nocapture`; `WEFT_TWISTED_PYTHON` names a Python with Twisted installed (default
//! `/work/shared/peers/.venv/bin/python`; without one the test says it did NOT run, and
//! passes), `WEFT_TWISTED_COUNT` the number of sequences (default 20,000) and
//! `WEFT_TWISTED_SEED` the seed, `WEFT_TWISTED_LEN` the longest sequence (default 12
//! operations, layer cancellers included before they are removed). It prints how many lines it compared strictly and how many
//! it excused, the documented differences reached, and the unhandled-error reports compared.
//!
//! Layer cancellers have no Twisted equivalent: `Op::Layer` is removed from every sequence.
//! Weft's `AlreadyCalledError` carries the undelivered result, Twisted's does not: both are
//! compared as `Other("AlreadyCalledError")`. Each transcript ends with the
//! "Unhandled error in Deferred" reports made once every Deferred of the sequence was dropped
//! (weft: its `log::error!` on drop, the Deferred named by the line it was created on;
//! Twisted: its `DebugInfo` logging at collection, after a `gc.collect()`, caught by a log
//! observer): how many, and from which Deferreds. Every other sequence ends without the
//! final unpauses, so that paused Deferreds are dropped too.
//!
//! The runner notes where a sequence reached one of the differences documented in
//! ARCHITECTURE.md ("Where weft differs from Twisted on purpose") and `src/lib.rs`'s porting
//! table (see `DOCUMENTED`), and where in the transcript it first showed (a `Cut`):
//! everything before the earliest such note is compared strictly, only what comes after is
//! excused; a sequence with no note is compared whole, unhandled-error reports included.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use std::collections::BTreeMap;

use super::ops::{Action, CancellerKind, Event, Fail, Op, Seen, Shape};
use super::weft_side::run_weft_dropping;
use super::{gen_sequence, normalise, shrink_with, Rng, Transcript};

/// The Python the test runs unless `WEFT_TWISTED_PYTHON` names another.
const DEFAULT_PYTHON: &str = "/work/shared/peers/.venv/bin/python";

/// A running `twisted_runner.py`.
struct Twisted {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// What Twisted printed for one sequence: the transcript lines and the notes.
struct Run {
    lines: Vec<String>,
    notes: Vec<Note>,
}

/// A difference the runner noted (`note NAME at E O S`), and where it first showed.
#[derive(Debug)]
struct Note {
    name: String,
    at: Cut,
}

/// A point in a transcript: the lines before it are compared strictly, the rest excused.
/// Before it: the first `events` events, the outcomes of the first `ops` operations, the
/// views after the first `steps` steps, and the unhandled-error line if `unhandled`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cut {
    events: usize,
    ops: usize,
    steps: usize,
    unhandled: bool,
}

impl Cut {
    /// After everything: the whole transcript is compared.
    const END: Cut = Cut { events: usize::MAX, ops: usize::MAX, steps: usize::MAX, unhandled: true };

    fn parse(text: &str) -> Option<Cut> {
        if text == "end" {
            return Some(Cut::END);
        }
        let mut n = text.split(' ').map(|n| n.parse::<usize>().ok());
        let cut = Cut { events: n.next()??, ops: n.next()??, steps: n.next()??, unhandled: false };
        n.next().is_none().then_some(cut)
    }

    fn min(self, other: Cut) -> Cut {
        Cut {
            events: self.events.min(other.events),
            ops: self.ops.min(other.ops),
            steps: self.steps.min(other.steps),
            unhandled: self.unhandled && other.unhandled,
        }
    }

    /// The lines of `transcript` before the cut, cancel ids numbered again by their first
    /// appearance among them (a transcript numbers them by their first appearance anywhere,
    /// excused lines included), and how many lines are after the cut.
    fn split(self, transcript: &[String]) -> (Vec<String>, usize) {
        let number = |rest: &str, end: char| rest.split(end).next().and_then(|n| n.parse::<usize>().ok());
        let mut events = 0;
        let before: Vec<&str> = transcript
            .iter()
            .map(String::as_str)
            .filter(|line| {
                if line.starts_with("event ") {
                    events += 1;
                    events <= self.events
                } else if let Some(rest) = line.strip_prefix("op ") {
                    number(rest, ' ').is_some_and(|i| i < self.ops)
                } else if let Some(rest) = line.strip_prefix("after step ") {
                    number(rest, ':').is_some_and(|s| s < self.steps)
                } else if line.starts_with("unhandled: ") {
                    self.unhandled
                } else {
                    true // a line the runner should not print: compared, so it is seen
                }
            })
            .collect();
        let after = transcript.len() - before.len();
        (renumber_cancels(&before), after)
    }
}

impl Twisted {
    fn start(python: &str) -> std::io::Result<Twisted> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/deferred_model/twisted_runner.py");
        let mut child =
            Command::new(python).arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Ok(Twisted { child, stdin, stdout })
    }

    fn run(&mut self, ops: &[Op], unpause: bool) -> Run {
        writeln!(self.stdin, r#"{{"unpause":{unpause},"ops":{}}}"#, json(ops))
            .expect("write to the Twisted runner");
        self.stdin.flush().unwrap();
        let (mut lines, mut notes) = (Vec::new(), Vec::new());
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read from the Twisted runner");
            assert!(n > 0, "the Twisted runner exited");
            let line = line.trim_end();
            if line == "end" {
                return Run { lines, notes };
            }
            match line.strip_prefix("note ").and_then(|note| note.split_once(" at ")) {
                Some((name, at)) => {
                    let at = Cut::parse(at).unwrap_or_else(|| panic!("the runner's note: {line}"));
                    notes.push(Note { name: name.to_owned(), at });
                }
                None => lines.push(line.to_owned()),
            }
        }
    }
}

impl Drop for Twisted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ops as JSON, in the runner's encoding.
fn json(ops: &[Op]) -> String {
    let action = |a: Action| match a {
        Action::Pass => r#"["pass"]"#.to_owned(),
        Action::Add(k) => format!(r#"["add",{k}]"#),
        Action::Fail(c) => format!(r#"["fail",{c}]"#),
        Action::Return(j) => format!(r#"["return",{j}]"#),
        Action::Fire(j, v) => format!(r#"["fire",{j},{v}]"#),
        Action::Cancel(j) => format!(r#"["cancel",{j}]"#),
    };
    let op = |op: &Op| match *op {
        Op::New(None) => r#"["new",null]"#.to_owned(),
        Op::New(Some(CancellerKind::Silent)) => r#"["new",["silent"]]"#.to_owned(),
        Op::New(Some(CancellerKind::FiresValue(v))) => format!(r#"["new",["value",{v}]]"#),
        Op::New(Some(CancellerKind::FiresFailure(c))) => format!(r#"["new",["failure",{c}]]"#),
        Op::Add { d, shape, first, second } => {
            let shape = match shape {
                Shape::Callback => "callback",
                Shape::Errback => "errback",
                Shape::Both => "both",
                Shape::Callbacks => "callbacks",
            };
            format!(r#"["add",{d},"{shape}",{},{}]"#, action(first), action(second))
        }
        Op::Layer { .. } => unreachable!("layer cancellers are removed before the Twisted run"),
        Op::Chain { from, to } => format!(r#"["chain",{from},{to}]"#),
        Op::Callback { d, value } => format!(r#"["callback",{d},{value}]"#),
        Op::Errback { d, code } => format!(r#"["errback",{d},{code}]"#),
        Op::Pause { d } => format!(r#"["pause",{d}]"#),
        Op::Unpause { d } => format!(r#"["unpause",{d}]"#),
        Op::Cancel { d } => format!(r#"["cancel",{d}]"#),
    };
    format!("[{}]", ops.iter().map(op).collect::<Vec<_>>().join(","))
}

/// Weft's transcript as Twisted can show it: an `AlreadyCalledError` without its value.
fn as_twisted(t: Transcript) -> Transcript {
    fn fail(f: &Fail<usize>) -> Fail<usize> {
        match f {
            Fail::AlreadyValue(_) | Fail::AlreadyFailure(_) => Fail::Other("AlreadyCalledError".into()),
            other => other.map_ids(&mut |i| i),
        }
    }
    let result = |r: &Result<u32, Fail<usize>>| r.as_ref().map(|v| *v).map_err(fail);
    // Numbered again: a cancel seen only inside a dropped `AlreadyCalledError` value no
    // longer counts.
    let t = Transcript {
        events: t
            .events
            .iter()
            .map(|e| match e {
                Event::Ran { uid, input } => Event::Ran { uid: *uid, input: result(input) },
                other => other.clone(),
            })
            .collect(),
        outcomes: t.outcomes,
        seen: t
            .seen
            .iter()
            .map(|all| {
                all.iter()
                    .map(|s| Seen {
                        called: s.called,
                        paused: s.paused,
                        result: s.result.as_ref().map(result),
                    })
                    .collect()
            })
            .collect(),
    };
    normalise(&t.events, t.outcomes, &t.seen)
}

/// `lines` with each `Cancelled(n)` numbered by the order in which `n` first appears.
fn renumber_cancels(lines: &[&str]) -> Vec<String> {
    const TAG: &str = "Cancelled(";
    let mut ids: Vec<String> = Vec::new();
    lines
        .iter()
        .map(|line| {
            let mut out = String::with_capacity(line.len());
            let mut rest = *line;
            while let Some(at) = rest.find(TAG) {
                let (head, tail) = rest.split_at(at + TAG.len());
                let end = tail.find(')').unwrap_or(tail.len());
                let id = &tail[..end];
                let n = ids.iter().position(|i| i == id).unwrap_or_else(|| {
                    ids.push(id.to_owned());
                    ids.len() - 1
                });
                out.push_str(head);
                out.push_str(&n.to_string());
                rest = &tail[end..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// The differences documented in ARCHITECTURE.md ("Where weft differs from Twisted on
/// purpose") and `src/lib.rs`'s porting table that a runner note stands for:
/// - `none-result`: "Typed chains: `ResultConsumedError` where Twisted leaves `None`" (a
///   callback gets `None` in Twisted where weft's errback gets `ResultConsumedError`; the
///   runner notes it when a `None` shows and as soon as a Deferred hands its result to the
///   one waiting on it with links behind that wait, which Twisted runs with `None`, skipping
///   an errback);
/// - `self-return`, `wait-cycle`, `recursion`, `hang` (Twisted did not finish the sequence
///   within half a second): "A ring of waiting Deferreds fails with
///   `WaitCycleError` (Twisted hangs, and its cancel overflows)" (`ChainedToSelfError` for a
///   Deferred returned from its own callback, which Twisted only warns about);
/// - `mid-run-return`: "Returning a Deferred that is mid-run: Twisted takes its current
///   intermediate result; weft waits for its chain as it stands";
/// - `late-fire-after-canceller`: "The first late fire after a cancel is ignored whenever the
///   cancel ended in `CancelledError`, with or without a canceller (Twisted: only without one)";
/// - `paused-chainee`: "A paused chainee: in Twisted it also stops the rest of the chain
///   that handed it the result; in weft only the paused Deferred waits" (the runner sees
///   the chain that stopped once the operation is over);
/// - `paused-unreported`: "A paused Deferred dropped holding a failure reports it; Twisted
///   does not": the runner adds such a Deferred to Twisted's reports, as weft reports it,
///   and notes it `at end` (nothing is excused).
const DOCUMENTED: &[&str] = &[
    "none-result",
    "self-return",
    "wait-cycle",
    "recursion",
    "hang",
    "mid-run-return",
    "late-fire-after-canceller",
    "paused-chainee",
    "paused-unreported",
];

/// The unhandled-error line, as the runner prints it.
fn unhandled_line(reports: &[Option<usize>]) -> String {
    let names: Vec<String> = reports.iter().map(|r| r.map_or("?".to_owned(), |i| i.to_string())).collect();
    format!("unhandled: {} [{}]", reports.len(), names.join(", "))
}

/// What comparing one sequence showed.
struct Compared {
    /// Lines compared strictly (equal on both sides).
    strict: usize,
    /// Lines excused, after a documented difference showed (the longer side's count).
    excused: usize,
    /// The documented differences the runner noted.
    documented: Vec<String>,
    /// The number of unhandled-error reports, if the unhandled-error line was compared.
    reports: Option<usize>,
}

/// Runs `ops` on both sides and compares the transcripts strictly up to the first
/// documented difference the runner noted (all of them if it noted none); `Err(description)`
/// if they differ there.
fn compare(twisted: &mut Twisted, ops: &[Op], unpause: bool) -> Result<Compared, String> {
    let (transcript, reports) = run_weft_dropping(ops, unpause);
    let mut weft = as_twisted(transcript).lines();
    weft.push(unhandled_line(&reports));
    let run = twisted.run(ops, unpause);
    let documented: Vec<&Note> = run.notes.iter().filter(|n| DOCUMENTED.contains(&n.name.as_str())).collect();
    let cut = documented.iter().fold(Cut::END, |cut, n| cut.min(n.at));
    let (w, w_after) = cut.split(&weft);
    let (t, t_after) = cut.split(&run.lines);
    if w == t {
        return Ok(Compared {
            strict: w.len(),
            excused: w_after.max(t_after),
            documented: documented.iter().map(|n| n.name.clone()).collect(),
            reports: cut.unhandled.then_some(reports.len()),
        });
    }
    let at = w.iter().zip(&t).position(|(a, b)| a != b).unwrap_or(w.len().min(t.len()));
    let from = at.saturating_sub(4);
    Err(format!(
        "first difference at line {at} of those compared strictly (before {cut:?}):\n  twisted: {}\n  weft:    {}\n\
         twisted, from line {from}:\n  {}\nweft, from line {from}:\n  {}\nnotes: {:?}\n\
         whole twisted transcript:\n  {}\nwhole weft transcript:\n  {}",
        t.get(at).map_or("(nothing)", String::as_str),
        w.get(at).map_or("(nothing)", String::as_str),
        t[from..t.len().min(at + 4)].join("\n  "),
        w[from..w.len().min(at + 4)].join("\n  "),
        run.notes,
        run.lines.join("\n  "),
        weft.join("\n  "),
    ))
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |s| {
        let s = s.trim();
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .unwrap_or_else(|_| panic!("{name}: a number"))
    })
}

/// What a run of many sequences showed.
#[derive(Default)]
struct Totals {
    strict: u64,
    excused: u64,
    /// Sequences with at least one documented difference.
    with_documented: u64,
    /// Sequences per documented difference noted (a sequence may count under several).
    by_kind: BTreeMap<String, u64>,
    /// Sequences whose unhandled-error line was compared, and the reports in them.
    unhandled_compared: u64,
    reports_compared: u64,
    /// Sequences with at least one report compared.
    with_reports: u64,
}

impl Totals {
    fn add(&mut self, c: Compared) {
        self.strict += c.strict as u64;
        self.excused += c.excused as u64;
        self.with_documented += u64::from(!c.documented.is_empty());
        for kind in c.documented {
            *self.by_kind.entry(kind).or_default() += 1;
        }
        if let Some(n) = c.reports {
            self.unhandled_compared += 1;
            self.reports_compared += n as u64;
            self.with_reports += u64::from(n > 0);
        }
    }
}

/// A note's cut keeps the lines before it, whatever their order in the transcript, and
/// numbers the cancels among them again.
#[test]
fn a_cut_keeps_only_the_lines_before_the_note() {
    let transcript: Vec<String> = [
        "event Ran { uid: 1, input: Err(Cancelled(0)) }",
        "event Ran { uid: 2, input: Err(Cancelled(1)) }",
        "op 0 returned None",
        "op 1 returned None",
        "op 2 returned Some(Ok)",
        "after step 0: d0 Seen { called: false, paused: false, result: None }",
        "after step 1: d0 Seen { called: true, paused: false, result: Some(Err(Cancelled(1))) }",
        "after step 2: d0 Seen { called: true, paused: false, result: None }",
        "unhandled: 1 [0]",
    ]
    .map(String::from)
    .to_vec();
    let cut = Cut::parse("0 2 2").unwrap();
    assert_eq!(cut, Cut { events: 0, ops: 2, steps: 2, unhandled: false });
    let (before, after) = cut.split(&transcript);
    assert_eq!(
        before,
        [
            "op 0 returned None",
            "op 1 returned None",
            "after step 0: d0 Seen { called: false, paused: false, result: None }",
            "after step 1: d0 Seen { called: true, paused: false, result: Some(Err(Cancelled(0))) }",
        ]
    );
    assert_eq!(after, 5);
    let (whole, after) = Cut::END.min(Cut::END).split(&transcript);
    assert_eq!((whole.len(), after), (transcript.len(), 0));
    assert_eq!(whole[0], transcript[0]);
    assert!(Cut::parse("1 2").is_none() && Cut::parse("1 2 3 4").is_none());
    assert_eq!(Cut::parse("end"), Some(Cut::END));
}

/// Weft against the real Twisted (see the module docs for how to run it and what is
/// compared); on an unexplained divergence, panics with the seed and the shrunk sequence.
#[test]
#[ignore]
fn weft_agrees_with_twisted() {
    let python = std::env::var("WEFT_TWISTED_PYTHON").unwrap_or_else(|_| DEFAULT_PYTHON.to_owned());
    if !std::path::Path::new(&python).exists() {
        eprintln!(
            "weft_agrees_with_twisted: NOT RUN (passes without comparing anything): no Python at {python}. \
             Set WEFT_TWISTED_PYTHON to a Python with Twisted installed."
        );
        return;
    }
    let mut twisted = Twisted::start(&python).expect("start the Twisted runner");
    let count = env_number("WEFT_TWISTED_COUNT", 20_000);
    let seed = env_number("WEFT_TWISTED_SEED", 0x7715_7ED0);
    let max_len = env_number("WEFT_TWISTED_LEN", 12).max(3) as usize;
    let mut rng = Rng(seed);
    let mut totals = Totals::default();
    for i in 0..count {
        let mut ops = gen_sequence(&mut rng, max_len);
        ops.retain(|op| !matches!(op, Op::Layer { .. }));
        // Every other sequence ends without the final unpauses, so that Deferreds are
        // dropped paused too.
        let unpause = i % 2 == 0;
        match compare(&mut twisted, &ops, unpause) {
            Ok(compared) => totals.add(compared),
            Err(first) => {
                eprintln!("sequence {i} (unpause: {unpause}) diverges; shrinking {ops:?}:\n{first}");
                let tw = std::cell::RefCell::new(&mut twisted);
                let small =
                    shrink_with(ops.clone(), |ops| compare(&mut tw.borrow_mut(), ops, unpause).is_err());
                let why = compare(&mut twisted, &small, unpause).err().expect("the shrunk sequence diverges");
                panic!(
                    "weft diverges from Twisted on sequence {i} of seed {seed:#x} (final unpauses: {unpause}).\n\
                     shrunk to {} operations:\n{small:?}\n{why}\n(original: {ops:?}; first report:\n{first})",
                    small.len()
                );
            }
        }
    }
    let t = &totals;
    eprintln!(
        "weft agrees with Twisted on {count} sequences of up to {max_len} operations from seed {seed:#x}: {} lines compared strictly, \
         {} excused after a documented difference; {} sequences reached one: {:?}; unhandled errors \
         compared in {} sequences ({} with reports, {} reports)",
        t.strict,
        t.excused,
        t.with_documented,
        t.by_kind,
        t.unhandled_compared,
        t.with_reports,
        t.reports_compared,
    );
}
