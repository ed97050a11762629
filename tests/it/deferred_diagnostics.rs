//! Diagnostics that name the culprit: where a Deferred was created, where a callback was
//! added, where a Deferred was fired (with `set_debugging`), with paths relative to the
//! crate.

use weft::logcontext::LoggingContext;
use weft::{fail, AlreadyCalledError, Deferred, Failure, PanicError};

use crate::support::{failure_result_of, logs, GenericError};

/// `file:line` of this file, as messages show it.
fn here(line: u32) -> String {
    format!("{}:{line}:", file!())
}

#[test]
fn unhandled_error_names_where_the_deferred_was_created() {
    let line = line!() + 2;
    let ((), errors) = logs::errors_during(|| {
        let d: Deferred<u32> = Deferred::new();
        d.errback(GenericError("nobody looked")).unwrap();
        drop(d);
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&format!("Unhandled error in Deferred created at {}", here(line))),
        "{errors:?}"
    );
}

/// A Deferred made by `map`, `fail` or a combinator was created where that was called.
#[test]
fn unhandled_error_of_a_derived_deferred_names_the_call_that_made_it() {
    let line = line!() + 3;
    let ((), errors) = logs::errors_during(|| {
        let source: Deferred<u32> = fail(GenericError("failed early"));
        let mapped = source.map(|x| x + 1);
        drop(mapped);
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(&here(line)), "{errors:?}");
}

/// A panic in a callback becomes a Failure created where the callback was added.
#[test]
fn panic_in_a_callback_names_where_the_callback_was_added() {
    let d: Deferred<u32> = Deferred::new();
    let line = line!() + 1;
    d.add_callback(|x: u32| -> u32 { panic!("bad input {x}") });
    d.callback(3).unwrap();
    let f = failure_result_of::<PanicError, _>(&d);
    assert_eq!((f.location().file(), f.location().line()), (file!(), line));
    assert!(f.to_string().contains(&here(line)), "{f}");
}

/// The log-context warning for work in a finished context names the callback.
#[test]
fn work_in_a_finished_context_names_the_callback() {
    logs::capture();
    let d: Deferred<()> = Deferred::new();
    let line;
    {
        let _request = LoggingContext::new("finished-request").enter();
        line = line!() + 1;
        d.add_callback(|()| ());
    }
    d.callback(()).unwrap();
    let warnings: Vec<String> =
        logs::records().into_iter().filter(|(l, _)| *l == log::Level::Warn).map(|(_, m)| m).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("'finished-request'"), "{warnings:?}");
    assert!(warnings[0].contains(&format!("by the callback added at {}", here(line))), "{warnings:?}");
}

/// Twisted's `setDebugging`: `AlreadyCalledError` names where the Deferred was created,
/// first fired, and fired again. Off, the message stays plain, and only the second
/// fire's place is known. (The switch is process-wide: the test holds it.)
#[test]
fn already_called_error_names_both_fires_while_debugging() {
    let switch = crate::support::debugging(true);
    let created = line!() + 1;
    let d: Deferred<u32> = Deferred::new();
    let first = line!() + 1;
    d.callback(1).unwrap();
    let again = line!() + 1;
    let err: AlreadyCalledError<u32> = d.callback(2).unwrap_err();
    drop(switch);
    let _off = crate::support::debugging(false);
    assert_eq!(err.created_at().map(|l| l.line()), Some(created));
    assert_eq!(err.first_fired_at().map(|l| l.line()), Some(first));
    assert_eq!(err.fired_again_at().map(|l| l.line()), Some(again));
    let message = err.to_string();
    for line in [created, first, again] {
        assert!(message.contains(&here(line)), "{message}");
    }

    let d: Deferred<u32> = Deferred::new();
    d.callback(1).unwrap();
    let again = line!() + 1;
    let err = d.errback(Failure::msg("late")).unwrap_err();
    assert_eq!(err.first_fired_at(), None);
    assert_eq!(err.fired_again_at().map(|l| l.line()), Some(again));
    assert_eq!(err.to_string(), "deferred already called");
}

/// A `chain_deferred` step that finds its target fired says where the chaining was set
/// up: that is where the second fire came from.
#[test]
fn chain_deferred_into_a_fired_target_names_the_chaining() {
    let (a, b) = (Deferred::<u32>::new(), Deferred::<u32>::new());
    let line = line!() + 1;
    a.chain_deferred(&b);
    b.callback(1).unwrap();
    a.callback(2).unwrap();
    let f = failure_result_of::<AlreadyCalledError<u32>, _>(&a);
    let err = f.downcast_ref::<AlreadyCalledError<u32>>().unwrap();
    assert_eq!(err.fired_again_at().map(|l| l.line()), Some(line));
    assert_eq!(f.location().line(), line);
    let _ = b.take_result();
}

/// Locations in messages are relative to the crate, never absolute paths.
#[test]
fn failure_display_shows_a_relative_location() {
    let f = Failure::new(GenericError("where"));
    let shown = f.to_string();
    assert!(shown.contains(" (failure created at tests/it/"), "{shown}");
    assert!(!shown.contains(" at /"), "{shown}");
}
