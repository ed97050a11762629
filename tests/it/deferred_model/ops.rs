//! What the model-based test generates and compares: operations on a small world of
//! Deferreds, the events callbacks and cancellers record, and what the API shows.

/// One operation on the world. Deferreds are named by index, in creation order; an
/// operation naming one that does not exist (yet) is skipped on both sides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Op {
    /// A new Deferred, with a creator canceller or not.
    New(Option<CancellerKind>),
    /// A call link: `first` is the callback (or the one function of `Both`, or the
    /// errback of `Errback`), `second` the errback of `Callbacks`.
    Add {
        d: usize,
        shape: Shape,
        first: Action,
        second: Action,
    },
    /// A layer canceller.
    Layer {
        d: usize,
        kind: LayerKind,
    },
    Chain {
        from: usize,
        to: usize,
    },
    Callback {
        d: usize,
        value: u32,
    },
    Errback {
        d: usize,
        code: u32,
    },
    Pause {
        d: usize,
    },
    Unpause {
        d: usize,
    },
    Cancel {
        d: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Shape {
    Callback,
    Errback,
    Both,
    Callbacks,
}

/// What a callback or errback does with its input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Action {
    /// Returns its input.
    Pass,
    /// A value: input + k, or k when recovering from a failure.
    Add(u32),
    /// A failure with this code.
    Fail(u32),
    /// Returns Deferred j to wait on.
    Return(usize),
    /// Fires Deferred j with a value (recording whether it was already called), then
    /// returns its input.
    Fire(usize, u32),
    /// Cancels Deferred j, then returns its input.
    Cancel(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum CancellerKind {
    /// Does nothing: the cancel then fails the Deferred with `CancelledError`.
    Silent,
    FiresValue(u32),
    FiresFailure(u32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum LayerKind {
    /// Only records that it ran.
    Record,
    /// Fires its own Deferred with a value.
    FireSelf(u32),
}

/// A failure as both sides describe it; `I` is the side's cancel id type.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Fail<I> {
    Code(u32),
    Cancelled(I),
    AlreadyValue(u32),
    AlreadyFailure(Box<Fail<I>>),
    Consumed,
    ChainedToSelf,
    WaitCycle,
    /// Anything else (a weft failure the model has no name for).
    Other(String),
}

/// What a callback, canceller or fire recorded.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Event<I> {
    /// The user function of link `uid` ran with `input`.
    Ran { uid: usize, input: Result<u32, Fail<I>> },
    /// Link or layer `uid` fired Deferred `target`; `ok` unless already called.
    Fired { uid: usize, target: usize, ok: bool },
    /// Layer canceller `uid` ran for the cancel with this id.
    Layer { uid: usize, cancel: I },
    /// The creator's canceller of Deferred `d` ran.
    Canceller { d: usize },
}

/// What an operation returned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Outcome {
    Ok,
    AlreadyCalled,
    NotPaused,
}

/// What the public API shows of one Deferred.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Seen<I> {
    pub(crate) called: bool,
    pub(crate) paused: bool,
    pub(crate) result: Option<Result<u32, Fail<I>>>,
}

impl<I: Copy> Fail<I> {
    /// The same failure with cancel ids mapped by `id`.
    pub(crate) fn map_ids<J>(&self, id: &mut impl FnMut(I) -> J) -> Fail<J> {
        match self {
            Fail::Code(c) => Fail::Code(*c),
            Fail::Cancelled(i) => Fail::Cancelled(id(*i)),
            Fail::AlreadyValue(v) => Fail::AlreadyValue(*v),
            Fail::AlreadyFailure(inner) => Fail::AlreadyFailure(Box::new(inner.map_ids(id))),
            Fail::Consumed => Fail::Consumed,
            Fail::ChainedToSelf => Fail::ChainedToSelf,
            Fail::WaitCycle => Fail::WaitCycle,
            Fail::Other(s) => Fail::Other(s.clone()),
        }
    }
}

/// A result with cancel ids mapped by `id`.
fn map_result<I: Copy, J>(r: &Result<u32, Fail<I>>, id: &mut impl FnMut(I) -> J) -> Result<u32, Fail<J>> {
    r.as_ref().map(|v| *v).map_err(|f| f.map_ids(id))
}

impl<I: Copy> Event<I> {
    /// The same event with cancel ids mapped by `id`.
    pub(crate) fn map_ids<J>(&self, id: &mut impl FnMut(I) -> J) -> Event<J> {
        match self {
            Event::Ran { uid, input } => Event::Ran { uid: *uid, input: map_result(input, id) },
            Event::Fired { uid, target, ok } => Event::Fired { uid: *uid, target: *target, ok: *ok },
            Event::Layer { uid, cancel } => Event::Layer { uid: *uid, cancel: id(*cancel) },
            Event::Canceller { d } => Event::Canceller { d: *d },
        }
    }
}

impl<I: Copy> Seen<I> {
    /// The same view with cancel ids mapped by `id`.
    pub(crate) fn map_ids<J>(&self, id: &mut impl FnMut(I) -> J) -> Seen<J> {
        Seen {
            called: self.called,
            paused: self.paused,
            result: self.result.as_ref().map(|r| map_result(r, id)),
        }
    }
}
