//! The stage contract.

use std::future::Future;
use std::pin::Pin;

use crate::{GatewayRequest, Rejection, RequestCtx};

/// A stable identifier of a pipeline step, used in audit events, metrics labels and the order
/// test. Never reuse an id for a different step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StageId(pub &'static str);

impl StageId {
    pub const fn as_str(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for StageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The outcome of one step for one request. A policy outcome, not an error: engine failures
/// that must deny (an IdP down, a store unreachable) are expressed as rejections with their own
/// reason codes so the documented fail direction is explicit at the call site.
#[derive(Debug)]
pub enum Verdict {
    Continue,
    Reject(Rejection),
    /// The gateway answers the request itself, successfully, and nothing after this step runs
    /// (a CORS preflight). Not a refusal: audit records it as allowed.
    Answer(Box<Answer>),
}

/// A bodiless response a step gives in the gateway's name (a CORS preflight's 204).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// The boxed future of an asynchronous step.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// What a step returns: a verdict it reached at once, or a future for one.
///
/// Most checks (IP lists, size limits, route constraints) finish synchronously; returning
/// [`Step::Done`] lets the pipeline run them without boxing a future per request.
pub enum Step<'a> {
    Done(Verdict),
    Async(StepFuture<'a>),
}

impl<'a> Step<'a> {
    pub const CONTINUE: Step<'static> = Step::Done(Verdict::Continue);

    pub fn reject(rejection: Rejection) -> Step<'static> {
        Step::Done(Verdict::Reject(rejection))
    }

    /// Wraps an async block as a step.
    pub fn from_future<F>(fut: F) -> Step<'a>
    where
        F: Future<Output = Verdict> + Send + 'a,
    {
        Step::Async(Box::pin(fut))
    }

    /// Drives the step to its verdict.
    pub async fn resolve(self) -> Verdict {
        match self {
            Step::Done(v) => v,
            Step::Async(f) => f.await,
        }
    }
}

/// One step of the request pipeline.
///
/// A stage is built once per configuration snapshot and shared by every request that runs under
/// that snapshot; per-route settings are looked up through [`RequestCtx::route`].
pub trait Stage: Send + Sync + 'static {
    /// The stable id of this step.
    fn id(&self) -> StageId;

    /// Inspects (and may amend) the request. Returning `Reject` stops the pipeline: nothing
    /// after this step runs and nothing reaches an upstream.
    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a>;
}
