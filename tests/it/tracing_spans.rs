//! Log contexts as `tracing` spans (feature `tracing`): a `tracing-subscriber` registry
//! with a capturing layer sees each event inside the span of the request it belongs to,
//! across interleaved requests, Deferred callbacks, timers and pool threads.

use std::sync::{Arc, Mutex};

use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;
use weft::logcontext::{current_request_id, LoggingContext, PreserveLoggingContext};
use weft::{Clock, Deferred, Reactor};

use crate::support::{ms, secs};

/// What the layer saw: one line per span opened, entered, exited, and per event.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

/// The `request` field of a `logcontext` span, kept in the span's extensions.
struct Request(String);

impl Seen {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line)
    }
}

/// Collects a field into a string (`request` of a span, `message` of an event).
struct Field<'a>(&'a str, Option<String>);

impl tracing::field::Visit for Field<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.0 {
            self.1 = Some(format!("{value:?}"));
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Seen {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut field = Field("request", None);
        attrs.record(&mut field);
        let request = field.1.unwrap_or_default();
        let span = ctx.span(id).unwrap();
        let parent = span.parent().and_then(|p| p.extensions().get::<Request>().map(|r| r.0.clone()));
        self.push(format!("new {request} parent {}", parent.as_deref().unwrap_or("none")));
        span.extensions_mut().insert(Request(request));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut field = Field("message", None);
        event.record(&mut field);
        let span = ctx.event_span(event);
        let request = span.and_then(|s| s.extensions().get::<Request>().map(|r| r.0.clone()));
        self.push(format!("{} in {}", field.1.unwrap_or_default(), request.as_deref().unwrap_or("no span")));
    }
}

/// Runs `f` with a registry and the capturing layer as this thread's subscriber.
fn capture(f: impl FnOnce()) -> Vec<String> {
    let seen = Seen::default();
    let subscriber = tracing_subscriber::registry().with(seen.clone());
    tracing::subscriber::with_default(subscriber, f);
    seen.take()
}

/// A library that knows nothing of weft: it logs with `tracing` only.
fn library_call(what: &str) {
    tracing::info!("library {what}");
}

#[test]
fn events_of_two_interleaved_requests_land_in_their_own_spans() {
    let seen = capture(|| {
        let clock = Clock::new();
        for (name, delay) in [("A", 1), ("B", 2)] {
            let ctx = LoggingContext::new(name);
            let _in = PreserveLoggingContext::new(ctx);
            tracing::info!("{name} starts");
            let d: Deferred<()> = Deferred::new();
            d.add_callback(move |()| library_call(&format!("step of {name}")));
            let fire = d.clone();
            // The two requests' steps interleave: A's timer, B's timer, A's, B's.
            clock.call_later(ms(delay), move || fire.callback(()).unwrap());
            clock.call_later(ms(2 + delay), move || tracing::info!("{name} ends"));
        }
        tracing::info!("between requests");
        clock.advance(ms(1));
        clock.advance(ms(1));
        clock.advance(ms(1));
        clock.advance(ms(1));
        tracing::info!("after requests");
    });
    assert_eq!(
        seen,
        [
            "new A parent none",
            "A starts in A",
            "new B parent none",
            "B starts in B",
            "between requests in no span",
            "library step of A in A",
            "library step of B in B",
            "A ends in A",
            "B ends in B",
            "after requests in no span",
        ]
    );
}

#[test]
fn a_child_context_opens_a_child_span_and_its_events_are_in_it() {
    let seen = capture(|| {
        let parent = LoggingContext::new("GET-1");
        let _p = parent.enter();
        let child = LoggingContext::with_parent("GET-1-db", &parent);
        {
            let _c = child.enter();
            library_call("query");
        }
        library_call("render");
    });
    assert_eq!(
        seen,
        [
            "new GET-1 parent none",
            "new GET-1-db parent GET-1",
            "library query in GET-1-db",
            "library render in GET-1"
        ]
    );
}

#[test]
fn a_thread_pool_job_runs_in_a_child_span_of_its_caller_and_reaches_the_same_subscriber() {
    let seen = capture(|| {
        let reactor = Reactor::new().unwrap();
        let ctx = LoggingContext::new("POST-7");
        let _in = PreserveLoggingContext::new(ctx);
        let h = reactor.handle();
        reactor
            .defer_to_thread(|| {
                assert_eq!(current_request_id().as_deref(), Some("POST-7"));
                library_call("on a pool thread");
            })
            .add_callback(move |()| {
                library_call("back on the reactor");
                h.stop();
            });
        drop(_in);
        let h = reactor.handle();
        let guard = reactor.call_later(secs(30), move || h.stop());
        reactor.run();
        assert!(guard.cancel().is_ok(), "the job did not finish in time");
    });
    assert_eq!(
        seen,
        [
            "new POST-7 parent none",
            "new POST-7 parent POST-7",
            "library on a pool thread in POST-7",
            "library back on the reactor in POST-7",
        ]
    );
}

#[test]
fn log_records_still_carry_the_request_id_with_tracing_on() {
    crate::support::logs::capture();
    let seen = capture(|| {
        let _in = LoggingContext::new("GET-9").enter();
        log::info!("through log");
        tracing::info!("through tracing");
    });
    assert_eq!(seen, ["new GET-9 parent none", "through tracing in GET-9"]);
    let records = crate::support::logs::records();
    assert!(records.iter().any(|(_, m)| m == "[GET-9] through log"), "{records:?}");
}
