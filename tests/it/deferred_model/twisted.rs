//! The differential run against the real Twisted `Deferred`: the model test's random
//! sequences, run on weft and by `twisted_runner.py` on `twisted.internet.defer.Deferred`,
//! transcripts compared line by line.
//!
//! Run it with `cargo test --test it -- --ignored weft_agrees_with_twisted --nocapture`;
//! `WEFT_TWISTED_PYTHON` names a Python with Twisted installed (default
//! `/work/shared/peers/.venv/bin/python`; the test says so and passes if there is none),
//! `WEFT_TWISTED_COUNT` the number of sequences (default 20,000) and `WEFT_TWISTED_SEED` the
//! seed.
//!
//! Layer cancellers have no Twisted equivalent: `Op::Layer` is removed from every sequence.
//! Weft's `AlreadyCalledError` carries the undelivered result, Twisted's does not: both are
//! compared as `Other("AlreadyCalledError")`. A divergence is accepted (counted, not failed)
//! only when the runner noted that the sequence reached one of the differences documented in
//! ARCHITECTURE.md ("Where weft differs from Twisted on purpose") and `src/lib.rs`'s porting
//! table; see `documented`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::ops::{Action, CancellerKind, Event, Fail, Op, Seen, Shape};
use super::{gen_sequence, normalise, run_weft, shrink_with, Rng, Transcript};

/// A running `twisted_runner.py`.
struct Twisted {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// What Twisted printed for one sequence: the transcript lines and the notes.
struct Run {
    lines: Vec<String>,
    notes: Vec<String>,
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

    fn run(&mut self, ops: &[Op]) -> Run {
        writeln!(self.stdin, "{}", json(ops)).expect("write to the Twisted runner");
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
            match line.strip_prefix("note ") {
                Some(note) => notes.push(note.to_owned()),
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

/// The differences documented in ARCHITECTURE.md ("Where weft differs from Twisted on
/// purpose") and `src/lib.rs`'s porting table that a runner note stands for:
/// - `none-result`: "Typed chains: `ResultConsumedError` where Twisted leaves `None`" (a
///   callback gets `None` in Twisted where weft's errback gets `ResultConsumedError`);
/// - `self-return`, `wait-cycle`, `recursion`, `hang` (Twisted did not finish the sequence
///   within half a second): "A ring of waiting Deferreds fails with
///   `WaitCycleError` (Twisted hangs, and its cancel overflows)" (`ChainedToSelfError` for a
///   Deferred returned from its own callback, which Twisted only warns about);
/// - `mid-run-return`: "Returning a Deferred that is mid-run: Twisted takes its current
///   intermediate result; weft waits for its chain as it stands";
/// - `late-fire-after-canceller`: "The first late fire after a cancel is ignored whenever the
///   cancel ended in `CancelledError`, with or without a canceller (Twisted: only without one)".
const DOCUMENTED: &[&str] = &[
    "none-result",
    "self-return",
    "wait-cycle",
    "recursion",
    "hang",
    "mid-run-return",
    "late-fire-after-canceller",
];

/// `Err(description)` if weft and Twisted differ on `ops` for a reason no note explains;
/// `Ok(Some(notes))` if they differ for a documented one.
fn compare(twisted: &mut Twisted, ops: &[Op]) -> Result<Option<Vec<String>>, String> {
    let weft = as_twisted(run_weft(ops)).lines();
    let run = twisted.run(ops);
    if weft == run.lines {
        return Ok(None);
    }
    let explained: Vec<String> =
        run.notes.iter().filter(|n| DOCUMENTED.contains(&n.as_str())).cloned().collect();
    if !explained.is_empty() {
        return Ok(Some(explained));
    }
    let at = weft.iter().zip(&run.lines).position(|(a, b)| a != b).unwrap_or(weft.len().min(run.lines.len()));
    let from = at.saturating_sub(4);
    Err(format!(
        "first difference at line {at}:\n  twisted: {}\n  weft:    {}\ntwisted, from line {from}:\n  {}\nweft, from line {from}:\n  {}\nnotes: {:?}",
        run.lines.get(at).map_or("(nothing)", String::as_str),
        weft.get(at).map_or("(nothing)", String::as_str),
        run.lines[from..run.lines.len().min(at + 4)].join("\n  "),
        weft[from..weft.len().min(at + 4)].join("\n  "),
        run.notes,
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

/// Weft against the real Twisted (see the module docs for how to run it and what is
/// compared); on an unexplained divergence, panics with the seed and the shrunk sequence.
#[test]
#[ignore]
fn weft_agrees_with_twisted() {
    let python = std::env::var("WEFT_TWISTED_PYTHON")
        .unwrap_or_else(|_| "/work/shared/peers/.venv/bin/python".to_owned());
    if !std::path::Path::new(&python).exists() {
        eprintln!("weft_agrees_with_twisted: no Python at {python} (set WEFT_TWISTED_PYTHON); not run");
        return;
    }
    let mut twisted = Twisted::start(&python).expect("start the Twisted runner");
    let count = env_number("WEFT_TWISTED_COUNT", 20_000);
    let seed = env_number("WEFT_TWISTED_SEED", 0x7715_7ED0);
    let mut rng = Rng(seed);
    let mut documented: std::collections::BTreeMap<String, u64> = Default::default();
    for i in 0..count {
        let mut ops = gen_sequence(&mut rng, 12);
        ops.retain(|op| !matches!(op, Op::Layer { .. }));
        match compare(&mut twisted, &ops) {
            Ok(None) => {}
            Ok(Some(notes)) => *documented.entry(notes.join("+")).or_default() += 1,
            Err(first) => {
                eprintln!("sequence {i} diverges; shrinking {ops:?}:\n{first}");
                let tw = std::cell::RefCell::new(&mut twisted);
                let small = shrink_with(ops.clone(), |ops| compare(&mut tw.borrow_mut(), ops).is_err());
                let why = compare(&mut twisted, &small).unwrap_err();
                panic!(
                    "weft diverges from Twisted on sequence {i} of seed {seed:#x}.\n\
                     shrunk to {} operations:\n{small:?}\n{why}\n(original: {ops:?}; first report:\n{first})",
                    small.len()
                );
            }
        }
    }
    eprintln!("weft agrees with Twisted on {count} sequences from seed {seed:#x}; documented differences: {documented:?}");
}
