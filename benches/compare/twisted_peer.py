#!/usr/bin/env python3
"""Twisted's side of weft's side-by-side comparison (CPython, Twisted's epoll reactor).

    twisted_peer.py <bench> N        one JSON line on stdout
    twisted_peer.py echo-server PORT TCP echo on 127.0.0.1:PORT until SIGTERM
    twisted_peer.py http-server PORT twisted.web on 127.0.0.1:PORT until SIGTERM

The benches are the scenarios of weft's examples/peer_bench.rs, as a Twisted user
writes them. The JSON line and the protocol are those of ../compare/harness.rs: one
warm-up repetition, then repetitions of the whole scenario until BENCH_BUDGET_S
(default 1.5 s here) is spent, at least BENCH_MIN_REPS (5; 3 when slow), at most
BENCH_MAX_REPS (25); ns_per_op is the median repetition divided by N. The cyclic
garbage collector runs before each repetition and stays enabled inside it, as in a
server. Allocations are not counted for Python.
"""

import gc
import json
import os
import platform
import statistics
import sys
import time

now_ns = time.perf_counter_ns

# twisted.internet.task.Clock sorts its whole list of calls on every callLater and
# after every call it runs, so it is quadratic: its variants stop at this N.
TASK_CLOCK_LIMIT = int(os.environ.get("TASK_CLOCK_MAX_N", "3000"))


# ---------------------------------------------------------------------------
# harness
# ---------------------------------------------------------------------------


class Budget:
    """How many repetitions to run, and for how long."""

    def __init__(self):
        env = os.environ.get
        self.seconds = max(0.0, float(env("BENCH_BUDGET_S", "1.5")))
        self.min_reps = max(1, int(float(env("BENCH_MIN_REPS", "5"))))
        self.max_reps = max(1, int(float(env("BENCH_MAX_REPS", "25"))))

    def required(self, warm_up_ns):
        slow = warm_up_ns * self.min_reps > 2 * self.seconds * 1e9
        return min(self.min_reps, 3) if slow else self.min_reps


class Rep:
    """One repetition: `marks` are (phase, end time) pairs, the first starting at t0."""

    __slots__ = ("total", "phases")

    def __init__(self, t0, *marks):
        self.phases = []
        start = t0
        for name, end in marks:
            self.phases.append((name, end - start))
            start = end
        self.total = start - t0


def summary(variant, n, reps):
    per_op = lambda ns: round(ns / n, 2)  # noqa: E731
    phases = {}
    for i, (name, _) in enumerate(reps[0].phases):
        phases[name] = per_op(statistics.median(r.phases[i][1] for r in reps))
    return {
        "variant": variant,
        "ns_per_op": per_op(statistics.median(r.total for r in reps)),
        "min_ns_per_op": per_op(min(r.total for r in reps)),
        "reps": len(reps),
        "phases": phases,
    }


def measure(variant, n, one):
    """Run `one(n)` (returns a Rep) by the protocol above."""
    budget = Budget()
    gc.collect()
    required = budget.required(one(n).total)
    reps = []
    start = now_ns()
    while len(reps) < required or (
        len(reps) < budget.max_reps and now_ns() - start < budget.seconds * 1e9
    ):
        gc.collect()
        reps.append(one(n))
    return summary(variant, n, reps)


def not_run(variant, why):
    return {"variant": variant, "ns_per_op": None, "skipped": why}


def emit(bench, n, unit, results, **meta):
    import twisted

    meta.update(
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        twisted=twisted.__version__,
        gc="enabled; collected before each repetition",
        budget_s=Budget().seconds,
    )
    line = {"impl": "twisted", "bench": bench, "n": n, "unit": unit, "results": results, "meta": meta}
    print(json.dumps(line), flush=True)


# ---------------------------------------------------------------------------
# ObservableDeferred, as Synapse documents it: observe() hands each observer its own
# Deferred, fired in the order they observed with the source's result; observers
# cannot change the source's chain; once the source has fired, observe() returns an
# already-fired Deferred.
# ---------------------------------------------------------------------------


class ObservableDeferred:
    def __init__(self, source, consume_errors=False):
        self._waiting = []
        self._outcome = None  # (succeeded, value) once the source has fired

        def settle(value, succeeded):
            self._outcome = (succeeded, value)
            waiting, self._waiting = self._waiting, None
            for d in waiting:
                try:
                    d.callback(value) if succeeded else d.errback(value)
                except Exception:
                    pass  # one observer's trouble must not stop the others
            if succeeded or not consume_errors:
                return value
            return None

        source.addCallbacks(settle, settle, callbackArgs=(True,), errbackArgs=(False,))

    def observe(self):
        from twisted.internet import defer

        if self._outcome is None:
            d = defer.Deferred()
            self._waiting.append(d)
            return d
        succeeded, value = self._outcome
        return defer.succeed(value) if succeeded else defer.fail(value)


# ---------------------------------------------------------------------------
# Deferred scenarios
# ---------------------------------------------------------------------------


def add_one(x):
    return x + 1


def chain(n):
    """N addCallback(x + 1) on one Deferred, then callback(0)."""
    from twisted.internet.defer import Deferred

    def one(n):
        t0 = now_ns()
        d = Deferred()
        for _ in range(n):
            d.addCallback(add_one)
        t1 = now_ns()
        d.callback(0)
        t2 = now_ns()
        assert d.result == n
        return Rep(t0, ("build", t1), ("fire", t2))

    return "callback", [measure("deferred_addCallback", n, one)]


def paused_layers(n, innermost):
    """N Deferreds, the last waiting on `innermost`, each other on the next one:
    layer i's callback returns layer i+1, and layer i is fired, so it pauses."""
    from twisted.internet.defer import Deferred

    layers = [Deferred() for _ in range(n)]
    below = innermost
    for d in reversed(layers):
        d.addCallback(lambda _, below=below: below)
        d.callback(None)
        below = d
    return layers


def chain_nested(n):
    """N levels, each paused on the next; firing the innermost unwinds them all."""
    from twisted.internet.defer import Deferred

    def one(n):
        t0 = now_ns()
        innermost = Deferred()
        layers = paused_layers(n - 1, innermost)
        t1 = now_ns()
        innermost.callback(7)
        t2 = now_ns()
        assert layers[0].result == 7
        return Rep(t0, ("build", t1), ("fire", t2))

    return "level", [measure("deferred_returns_deferred", n, one)]


def fanout(n):
    """One source, N observers each adding the result to a sum."""
    from twisted.internet.defer import Deferred

    def one(n):
        total = [0]

        def add(x):
            total[0] += x

        t0 = now_ns()
        source = Deferred()
        observable = ObservableDeferred(source, consume_errors=True)
        for _ in range(n):
            observable.observe().addCallback(add)
        t1 = now_ns()
        source.callback(1)
        t2 = now_ns()
        assert total[0] == n
        return Rep(t0, ("observe", t1), ("fire", t2))

    return "observer", [measure("observable_deferred", n, one)]


def cancel_chain(n):
    """N paused layers over a Deferred with a canceller; cancel the outermost: the
    cancel goes down, the canceller runs, CancelledError comes back up N layers."""
    from twisted.internet.defer import CancelledError, Deferred

    # Deferred.cancel recurses through the layers it waits on.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5 * n + 10_000))

    def one(n):
        cancels, trapped = [0], []

        def canceller(_):
            cancels[0] += 1

        t0 = now_ns()
        innermost = Deferred(canceller)
        outer = paused_layers(n, innermost)[0]
        t1 = now_ns()
        outer.cancel()
        outer.addErrback(lambda f: trapped.append(f.trap(CancelledError)))
        t2 = now_ns()
        assert cancels[0] == 1 and trapped == [CancelledError]
        return Rep(t0, ("build", t1), ("cancel", t2))

    return "layer", [measure("deferred_cancel_propagation", n, one)]


def gather(n):
    """gatherResults over N unfired Deferreds, then each fires with its index."""
    from twisted.internet.defer import Deferred, gatherResults

    def one(n):
        got = []
        t0 = now_ns()
        members = [Deferred() for _ in range(n)]
        t1 = now_ns()
        gatherResults(members).addCallback(got.append)
        t2 = now_ns()
        for i, d in enumerate(members):
            d.callback(i)
        t3 = now_ns()
        assert len(got) == 1 and len(got[0]) == n and got[0][-1] == n - 1
        return Rep(t0, ("create", t1), ("gather", t2), ("fire", t3))

    return "member", [measure("gatherResults", n, one)]


# ---------------------------------------------------------------------------
# timers
# ---------------------------------------------------------------------------


def manual_time_reactor():
    """An epoll reactor that is never run, whose clock only moves when told: Twisted's
    production timer queue (callLater, a heap with lazy cancellation, runUntilCurrent)
    measured without sleeping."""
    from twisted.internet.epollreactor import EPollReactor

    class ManualTimeReactor(EPollReactor):
        now = 1_000.0

        def seconds(self):
            return self.now

    return ManualTimeReactor()


def quadratic_skipped(n, variant):
    if n <= TASK_CLOCK_LIMIT:
        return None
    return not_run(
        variant,
        f"N > TASK_CLOCK_MAX_N={TASK_CLOCK_LIMIT}: task.Clock sorts its calls on every "
        "callLater and after every call it runs (quadratic)",
    )


def timers(n):
    """N timers at (i + 1) ms, then time moves past the last one and all fire."""
    from twisted.internet.task import Clock

    reactor = manual_time_reactor()

    def on_heap(n):
        fired = [0]

        def fire():
            fired[0] += 1

        t0 = now_ns()
        for i in range(n):
            reactor.callLater((i + 1) / 1000, fire)
        t1 = now_ns()
        reactor.now += (n + 1) / 1000
        reactor.runUntilCurrent()
        t2 = now_ns()
        assert fired[0] == n
        return Rep(t0, ("schedule", t1), ("fire", t2))

    def on_task_clock(n):
        fired = [0]

        def fire():
            fired[0] += 1

        t0 = now_ns()
        clock = Clock()
        for i in range(n):
            clock.callLater((i + 1) / 1000, fire)
        t1 = now_ns()
        clock.advance((n + 1) / 1000)
        t2 = now_ns()
        assert fired[0] == n
        return Rep(t0, ("schedule", t1), ("fire", t2))

    results = [measure("reactor_heap_fake_clock", n, on_heap)]
    results.append(quadratic_skipped(n, "task_clock") or measure("task_clock", n, on_task_clock))
    return "timer", results


def timers_cancel(n):
    """N timers an hour (+ i ms) away, then every one cancelled."""
    from twisted.internet.task import Clock

    reactor = manual_time_reactor()

    def never():
        raise AssertionError("a cancelled timer ran")

    def on_heap(n):
        t0 = now_ns()
        calls = [reactor.callLater(3600 + i / 1000, never) for i in range(n)]
        reactor.runUntilCurrent()  # a reactor turn moves new calls into the heap
        t1 = now_ns()
        for call in calls:
            call.cancel()
        reactor.runUntilCurrent()  # and drops cancelled ones
        t2 = now_ns()
        assert not reactor.getDelayedCalls()
        return Rep(t0, ("schedule", t1), ("cancel", t2))

    def on_task_clock(n):
        t0 = now_ns()
        clock = Clock()
        calls = [clock.callLater(3600 + i / 1000, never) for i in range(n)]
        t1 = now_ns()
        for call in calls:
            call.cancel()
        t2 = now_ns()
        assert not clock.getDelayedCalls()
        return Rep(t0, ("schedule", t1), ("cancel", t2))

    results = [measure("reactor_heap_fake_clock", n, on_heap)]
    results.append(quadratic_skipped(n, "task_clock") or measure("task_clock", n, on_task_clock))
    return "timer", results


def reactor_timers(n):
    """N callLater(0, f) on the running epoll reactor; a repetition ends when the N-th
    call has run. All repetitions run inside one reactor.run()."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    budget = Budget()
    state = {"reps": [], "required": None, "started": None, "ran": 0, "t0": 0, "t1": 0}

    def call():
        state["ran"] += 1
        if state["ran"] < n:
            return
        r = Rep(state["t0"], ("schedule", state["t1"]), ("run", now_ns()))
        if state["required"] is None:  # that was the warm-up
            state["required"] = budget.required(r.total)
            state["started"] = now_ns()
        else:
            state["reps"].append(r)
        count = len(state["reps"])
        more = count < state["required"] or (
            count < budget.max_reps and now_ns() - state["started"] < budget.seconds * 1e9
        )
        reactor.callLater(0, repetition) if more else reactor.stop()

    def repetition():
        gc.collect()
        state["ran"] = 0
        later = reactor.callLater
        state["t0"] = now_ns()
        for _ in range(n):
            later(0, call)
        state["t1"] = now_ns()

    reactor.callWhenRunning(repetition)
    reactor.run(installSignalHandlers=False)
    return "timer", [summary("epoll_reactor_callLater0", n, state["reps"])], {
        "reactor": type(reactor).__name__
    }


# ---------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------


def epoll_reactor():
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    return reactor


def echo_server(port):
    """A Protocol whose dataReceived writes the bytes back; TCP_NODELAY, backlog 1024."""
    reactor = epoll_reactor()
    from twisted.internet.protocol import Factory, Protocol

    class Echo(Protocol):
        def connectionMade(self):
            self.transport.setTcpNoDelay(True)

        def dataReceived(self, data):
            self.transport.write(data)

    factory = Factory.forProtocol(Echo)
    factory.noisy = False
    reactor.listenTCP(port, factory, backlog=1024, interface="127.0.0.1")
    print(f"twisted echo server on 127.0.0.1:{port}, pid {os.getpid()}", file=sys.stderr, flush=True)
    reactor.run()


HELLO = b"hello, world\n"
MAX_SLEEP_MS = 60_000


def http_server(port):
    """twisted.web: GET /hello, GET /sleep/<ms> (the same after ms milliseconds, via
    deferLater and NOT_DONE_YET); 404 otherwise, 405 for another method on a route.
    The access log is off; everything else is Site's default (HTTPChannel sets
    TCP_NODELAY and answers pipelined requests one at a time)."""
    reactor = epoll_reactor()
    from twisted.internet import defer, task
    from twisted.web import pages, resource, server

    def hello_headers(request):
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"content-length", b"%d" % len(HELLO))

    class Hello(resource.Resource):
        def render_GET(self, request):
            hello_headers(request)
            return HELLO

    class Delayed(resource.Resource):
        isLeaf = True

        def __init__(self, seconds):
            super().__init__()
            self.seconds = seconds

        def render_GET(self, request):
            if request.postpath:
                return pages.notFound().render(request)
            timer = task.deferLater(reactor, self.seconds, lambda: None)

            def respond(_):
                hello_headers(request)
                request.write(HELLO)
                request.finish()

            timer.addCallback(respond)
            timer.addErrback(lambda f: f.trap(defer.CancelledError))
            # A client that goes away cancels the timer.
            request.notifyFinish().addErrback(lambda _: timer.cancel())
            return server.NOT_DONE_YET

    class Sleep(resource.Resource):
        def render(self, request):
            return pages.notFound().render(request)

        def getChild(self, name, request):
            if not name.isdigit() or int(name) > MAX_SLEEP_MS:
                return pages.notFound()
            return Delayed(int(name) / 1000)

    class Root(resource.Resource):
        def render(self, request):
            return pages.notFound().render(request)

    class SiteWithoutAccessLog(server.Site):
        noisy = False

        def log(self, request):
            pass

    root = Root()
    root.putChild(b"hello", Hello())
    root.putChild(b"sleep", Sleep())
    reactor.listenTCP(port, SiteWithoutAccessLog(root), backlog=1024, interface="127.0.0.1")
    import twisted

    print(
        f"twisted {twisted.__version__} web server on 127.0.0.1:{port}, pid {os.getpid()}",
        file=sys.stderr,
        flush=True,
    )
    reactor.run()


# ---------------------------------------------------------------------------

BENCHES = {
    "chain": chain,
    "chain-nested": chain_nested,
    "fanout": fanout,
    "cancel-chain": cancel_chain,
    "gather": gather,
    "timers": timers,
    "timers-cancel": timers_cancel,
    "reactor-timers": reactor_timers,
}
SERVERS = {"echo-server": echo_server, "http-server": http_server}


def main(argv):
    usage = f"usage: twisted_peer.py <{'|'.join(BENCHES)}> N | echo-server PORT | http-server PORT"
    if len(argv) != 2 or not argv[1].isdigit() or argv[0] not in {**BENCHES, **SERVERS}:
        sys.exit(usage)
    cmd, arg = argv[0], int(argv[1])
    if cmd in SERVERS:
        SERVERS[cmd](arg)
        return
    if arg < 2:
        sys.exit("N must be at least 2")
    unit, results, *meta = BENCHES[cmd](arg)
    emit(cmd, arg, unit, results, **(meta[0] if meta else {}))


if __name__ == "__main__":
    main(sys.argv[1:])
