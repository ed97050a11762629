"""Runs the model-based test's operation sequences on Twisted's real Deferred.

Used by `deferred_model::twisted::weft_agrees_with_twisted` (tests/it/deferred_model/twisted.rs).
Reads one sequence per line on stdin, `{"unpause": bool, "ops": [...]}` with the operations as
that file encodes them (the user's pauses are undone at the end if `unpause`), and prints its
transcript in the exact text of the Rust side's `Transcript::lines()`, then a line
`unhandled: N [i, ...]` (how many "Unhandled error in Deferred" reports Twisted logged once the
sequence's Deferreds were dropped and collected, and from which Deferreds, by index), then a line
`end`. Lines `note NAME at E O S` name a weft/Twisted difference the sequence reached, and where it
first showed: after E events, O operation outcomes and the views after S steps (the Rust side
compares the lines before that point strictly and excuses the rest only for a documented NAME);
`note NAME at end` names one already applied (a paused Deferred's failure, reported as weft does).

Mapping: New -> Deferred(canceller) (creator canceller), Add -> addCallback / addErrback /
addBoth / addCallbacks, Chain -> chainDeferred, Callback/Errback/Pause/Cancel -> the same
methods, Unpause -> unpause, reported as NotPaused (and not called) when the user's pause count
is 0 (Twisted would let it go negative; weft returns NotPausedError). Layer cancellers have no
Twisted equivalent: the Rust side removes them before sequences reach this runner.

Unhandled errors: the runner logs to its own observer (`observe`); once a sequence ends, it tags
the failure each Deferred's `DebugInfo` would report with the Deferred's index, drops the world and
runs `gc.collect()`, so that `DebugInfo.__del__` reports at once (objects alive at start-up are
frozen out of the collections, which keeps them cheap).
"""

import gc
import warnings
import json
import signal
import sys

from twisted.internet import defer
from twisted.internet.defer import AlreadyCalledError, Deferred
from twisted.logger import globalLogBeginner
from twisted.python.failure import Failure

MAX_DEFERREDS = 4
ORIGINAL_CANCELLED = defer.CancelledError
# The link by which a Deferred hands its result to the one waiting on it.
CONTINUE = defer._CONTINUE


class GenericError(Exception):
    """The test's `GenericError("code N")`."""

    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


class World:
    def __init__(self):
        self.ds = []
        self.events = []
        self.outcomes = []
        self.steps = []
        # Each note's first position: (events, outcomes, views) recorded before it.
        self.notes = {}
        # Outcomes and views complete so far (the position of a note made now).
        self.done = (0, 0)
        # The position at the start of the operation under way.
        self.op_start = (0, 0, 0)
        # The position at the last `check_handovers`.
        self.safe = (0, 0, 0)
        # Deferreds with links behind a wait: id -> (Deferred, the continuation link).
        self.behind = {}
        # Deferreds that Twisted will not report, paused, holding a failure (weft does).
        self.paused_unreported = []
        self.current_cancel = None
        self.next_cancel = 0

    def new_cancel_id(self):
        self.next_cancel += 1
        return ("cancel", self.next_cancel)

    def begin(self, outcomes, views):
        """An operation (or the final unpauses) begins, after that many outcomes and views."""
        self.done = (outcomes, views)
        self.op_start = self.safe = (len(self.events), outcomes, views)

    def behind_wait(self, d):
        """A link is about to be added to `d`: if a Deferred waits on `d` (`d` holds its
        continuation), the link comes behind the wait."""
        for item in d._callbacks:
            if item[0][0] is CONTINUE:
                self.behind.setdefault(id(d), (d, item))
                return

    def check_handovers(self):
        """Notes "none-result" if a Deferred handed its result to the one waiting on it since
        the last check, with links behind: in Twisted they go on with None (an errback among
        them does not run), in weft with a ResultConsumedError."""
        for key, (d, item) in list(self.behind.items()):
            if not any(x is item for x in d._callbacks):
                del self.behind[key]
                self.notes.setdefault("none-result", self.safe)
        self.safe = (len(self.events),) + self.done

    def note(self, name):
        """Notes a difference that shows from now on."""
        self.notes.setdefault(name, (len(self.events),) + self.done)

    def note_op(self, name):
        """Notes a difference that may show anywhere in the operation under way."""
        self.notes.setdefault(name, self.op_start)


WORLD = None
# The sequence being run (its number), to tell its unhandled-error reports from others.
SEQUENCE = None
# "Unhandled error in Deferred" reports: the index of the Deferred each came from (None if
# not one of the sequence's), and how many headline events were logged.
REPORTS = []
HEADLINES = [0]


def observe(event):
    """The log observer: collects Twisted's unhandled-error reports (`DebugInfo.__del__`)."""
    if event.get("log_format") == "Unhandled error in Deferred:" and event.get("isError"):
        HEADLINES[0] += 1
    elif "debugInfo" in event and event.get("log_failure") is not None:
        tags = getattr(event["log_failure"], "_weft_model", [])
        for k, (seq, index) in enumerate(tags):
            if seq == SEQUENCE:
                del tags[k]
                REPORTS.append(index)
                break
        else:
            REPORTS.append(None)


class TaggedCancelledError(ORIGINAL_CANCELLED):
    """Twisted's CancelledError, tagged with the cancellation it belongs to: weft gives every
    CancelledError of one outermost `cancel()` (and the cancels it leads to) the same id."""

    def __init__(self, *args):
        super().__init__(*args)
        w = WORLD
        self.cid = w.current_cancel if w.current_cancel is not None else w.new_cancel_id()


# Twisted's cancel() makes `Failure(CancelledError())` from its module's global.
defer.CancelledError = TaggedCancelledError


def do_cancel(d):
    w = WORLD
    if w.current_cancel is not None:
        d.cancel()
        return
    w.current_cancel = w.new_cancel_id()
    try:
        d.cancel()
    finally:
        w.current_cancel = None


def fail_of(f):
    """A failure as the Rust side's `Fail` Debug text; cancel ids left as tuples."""
    if f is None:
        WORLD.note("none-result")
        return "Consumed"
    e = f.value
    if isinstance(e, GenericError):
        return f"Code({e.code})"
    if isinstance(e, ORIGINAL_CANCELLED):
        return ("Cancelled", getattr(e, "cid", None) or WORLD.new_cancel_id())
    if isinstance(e, AlreadyCalledError):
        return 'Other("AlreadyCalledError")'
    if isinstance(e, RecursionError):
        WORLD.note_op("recursion")
    return "Other(" + json.dumps(f"{type(e).__name__}: {e}") + ")"


def result_of(r):
    if isinstance(r, Failure):
        return ("Err", fail_of(r))
    if r is None:
        WORLD.note("none-result")
        return ("Err", "Consumed")
    if isinstance(r, int):
        return ("Ok", r)
    return ("Err", f"Other({json.dumps(repr(r))})")


def make_fn(d_index, uid, action):
    def fn(inp):
        w = WORLD
        w.check_handovers()
        w.events.append(("Ran", uid, result_of(inp)))
        kind = action[0]
        if kind == "pass":
            return inp
        if kind == "add":
            k = action[1]
            if isinstance(inp, int):
                return (inp + k) & 0xFFFFFFFF
            return k
        if kind == "fail":
            return Failure(GenericError(action[1]))
        j = action[1]
        if j >= len(w.ds):
            return inp
        target = w.ds[j]
        if kind == "return":
            w.behind_wait(target)
            if j == d_index:
                w.note("self-return")
            if getattr(target, "_runningCallbacks", False):
                w.note("mid-run-return")
            if target.called and not isinstance(target.result, Deferred) and target.paused:
                w.note("paused-return")
            # A ring: the returned Deferred waits (through others) on this one.
            seen, cur = 0, target
            while isinstance(getattr(cur, "result", None), Deferred) and seen < 10:
                cur = cur.result
                seen += 1
                if cur is w.ds[d_index]:
                    w.note("wait-cycle")
            return target
        if kind == "fire":
            try:
                target.callback(action[2])
                ok = True
            except AlreadyCalledError:
                ok = False
                if getattr(target, "_cancelled_with_canceller", False):
                    w.note("late-fire-after-canceller")
            w.events.append(("Fired", uid, j, ok))
            return inp
        if kind == "cancel":
            do_cancel(target)
            return inp
        raise ValueError(f"unknown action {action!r}")

    return fn


def make_canceller(index, kind):
    def canceller(d):
        w = WORLD
        w.check_handovers()
        w.events.append(("Canceller", index))
        d._cancelled_with_canceller = True
        if kind[0] == "value":
            d.callback(kind[1])
        elif kind[0] == "failure":
            d.errback(Failure(GenericError(kind[1])))

    return canceller


def valid(op, n):
    name = op[0]
    if name == "new":
        return n < MAX_DEFERREDS
    if name == "chain":
        return op[1] < n and op[2] < n
    return op[1] < n


def user_pauses(d):
    # Twisted counts its own pause while waiting on a returned Deferred.
    waiting = d.called and isinstance(d.result, Deferred)
    return d.paused - (1 if waiting else 0)


def fire(d, value_or_failure):
    try:
        if isinstance(value_or_failure, Failure):
            d.errback(value_or_failure)
        else:
            d.callback(value_or_failure)
        return "Some(Ok)"
    except AlreadyCalledError:
        if getattr(d, "_cancelled_with_canceller", False):
            WORLD.note("late-fire-after-canceller")
        return "Some(AlreadyCalled)"


def apply(w, uid, op):
    name = op[0]
    if name == "new":
        index = len(w.ds)
        d = Deferred(make_canceller(index, op[1]) if op[1] is not None else None)
        w.ds.append(d)
        return "None"
    d = w.ds[op[1]]
    w.behind_wait(d)
    if name == "add":
        _, di, shape, first, second = op
        f1 = make_fn(di, uid, first)
        if shape == "callback":
            d.addCallback(f1)
        elif shape == "errback":
            d.addErrback(f1)
        elif shape == "both":
            d.addBoth(f1)
        else:
            d.addCallbacks(f1, make_fn(di, uid, second))
        return "None"
    if name == "chain":
        # Exactly what chainDeferred does (`_chainedTo`, then addCallbacks(to.callback,
        # to.errback)), with the target's fire wrapped to note a late fire after a cancel.
        to = w.ds[op[2]]
        to._chainedTo = d

        def late(method):
            def fire_target(r):
                WORLD.check_handovers()
                try:
                    method(r)
                    # The chain goes on with None, where weft's has a ResultConsumedError.
                    WORLD.note("none-result")
                    return None
                except AlreadyCalledError:
                    if getattr(to, "_cancelled_with_canceller", False):
                        WORLD.note("late-fire-after-canceller")
                    raise

            return fire_target

        d.addCallbacks(late(to.callback), late(to.errback))
        return "None"
    if name == "callback":
        return fire(d, op[2])
    if name == "errback":
        return fire(d, Failure(GenericError(op[2])))
    if name == "pause":
        d.pause()
        return "None"
    if name == "unpause":
        if user_pauses(d) <= 0:
            return "Some(NotPaused)"
        d.unpause()
        return "Some(Ok)"
    if name == "cancel":
        do_cancel(d)
        return "None"
    raise ValueError(f"unknown op {op!r}")


def seen(d):
    has_result = (
        d.called
        and not d.paused
        and not d.callbacks
        and not getattr(d, "_runningCallbacks", False)
        and not isinstance(d.result, Deferred)
    )
    result = None
    if has_result and d.result is None:
        WORLD.note("none-result")
    elif has_result:
        result = result_of(d.result)
    return (d.called, d.paused > 0, result)


def note_stalled(w):
    """Once an operation is over, a Deferred with a result, callbacks left and no pause has
    stalled: Twisted's loop stopped when it handed the result to a paused chainee (a Deferred
    waiting on this one, paused by the user), and left the rest of this chain for later. Weft
    runs it: noted as "paused-chainee", from the start of the operation."""
    for d in w.ds:
        if d.called and d._callbacks and not d.paused and not isinstance(d.result, Deferred):
            w.note_op("paused-chainee")


def run(ops, unpause):
    global WORLD
    w = WORLD = World()
    for uid, op in enumerate(ops):
        w.begin(uid, uid)
        try:
            w.outcomes.append(apply(w, uid, op) if valid(op, len(w.ds)) else "None")
        except RecursionError:
            w.note_op("recursion")
            w.outcomes.append("None")
        w.check_handovers()
        w.done = (uid + 1, uid)
        note_stalled(w)
        w.steps.append([seen(d) for d in w.ds])
    w.begin(len(ops), len(ops))
    for d in w.ds:
        while unpause and user_pauses(d) > 0:
            d.unpause()
    w.check_handovers()
    note_stalled(w)
    w.steps.append([seen(d) for d in w.ds])
    # What Twisted will report as unhandled when the Deferreds are collected: the failures
    # their DebugInfo holds, tagged with the Deferred's index. A failure it holds without
    # reporting it is noted; in a paused Deferred that is a documented difference, which
    # `collect` applies: weft reports it (noted at the end: it excuses nothing).
    w.done = (len(ops), len(ops) + 1)
    for index, d in enumerate(w.ds):
        info = d._debugInfo
        reported = info.failResult if info is not None else None
        if reported is not None:
            reported._weft_model = getattr(reported, "_weft_model", []) + [(SEQUENCE, index)]
        if isinstance(getattr(d, "result", None), Failure) and reported is not d.result:
            if d.paused:
                w.paused_unreported.append(index)
                w.notes.setdefault("paused-unreported", None)
            else:
                w.note("unreported")
    return w


def collect(w):
    """Drops the world and collects it; the unhandled-error line (`None` if a report came
    from elsewhere)."""
    global WORLD
    paused_unreported = w.paused_unreported
    vars(w).clear()  # nothing of the world may keep a Deferred alive
    WORLD = None
    gc.collect()
    if HEADLINES[0] != len(REPORTS):
        return f"unhandled: {HEADLINES[0]} headlines but {len(REPORTS)} reports"
    REPORTS.extend(paused_unreported)
    names = ", ".join("?" if i is None else str(i) for i in sorted(REPORTS, key=lambda i: (i is None, i)))
    return f"unhandled: {len(REPORTS)} [{names}]"


class Hang(Exception):
    """A sequence that did not finish within half a second: an endless loop in Twisted."""


HUNG = False


def on_alarm(signum, frame):
    # Twisted turns an exception in a callback into a Failure, so keep raising until the
    # endless loop is left.
    global HUNG
    HUNG = True
    if WORLD is not None:
        WORLD.note_op("hang")
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    raise Hang()


def render(w):
    ids = {}

    def fail_text(f):
        if isinstance(f, tuple):
            key = f[1]
            if key not in ids:
                ids[key] = len(ids)
            return f"Cancelled({ids[key]})"
        return f

    def res_text(r):
        if r[0] == "Ok":
            return f"Ok({r[1]})"
        return f"Err({fail_text(r[1])})"

    lines = []
    for e in w.events:
        if e[0] == "Ran":
            lines.append(f"event Ran {{ uid: {e[1]}, input: {res_text(e[2])} }}")
        elif e[0] == "Fired":
            ok = "true" if e[3] else "false"
            lines.append(f"event Fired {{ uid: {e[1]}, target: {e[2]}, ok: {ok} }}")
        else:
            lines.append(f"event Canceller {{ d: {e[1]} }}")
    for i, o in enumerate(w.outcomes):
        lines.append(f"op {i} returned {o}")
    for step, all_seen in enumerate(w.steps):
        for di, (called, paused, result) in enumerate(all_seen):
            r = "None" if result is None else f"Some({res_text(result)})"
            c = "true" if called else "false"
            p = "true" if paused else "false"
            lines.append(f"after step {step}: d{di} Seen {{ called: {c}, paused: {p}, result: {r} }}")
    lines.extend(f"note {n} at " + ("end" if at is None else "{} {} {}".format(*at)) for n, at in sorted(w.notes.items()))
    return lines


def main():
    global SEQUENCE, HUNG
    warnings.simplefilter("ignore")
    sys.setrecursionlimit(2000)
    globalLogBeginner.beginLoggingTo([observe], discardBuffer=True, redirectStandardIO=False)
    # Everything alive now lives as long as the runner: the collection after each sequence
    # skips it.
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGALRM, on_alarm)
    for n, line in enumerate(sys.stdin):
        line = line.strip()
        if not line:
            continue
        SEQUENCE = n
        del REPORTS[:]
        HEADLINES[0] = 0
        HUNG = False
        w = None
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            sequence = json.loads(line)
            w = run(sequence["ops"], sequence["unpause"])
        except Hang:
            pass
        except Exception as e:  # a runner bug: say so, keep going
            lines = ["error " + json.dumps(f"{type(e).__name__}: {e}")]
        signal.setitimer(signal.ITIMER_REAL, 0)
        if w is None and HUNG:
            w = WORLD
        if w is not None:
            lines = render(w)
            # After a hang the reports are not the sequence's own; the hang's note excuses
            # the line anyway.
            lines.append(collect(w))
        del w
        gc.collect()
        sys.stdout.write("\n".join(lines) + "\nend\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
