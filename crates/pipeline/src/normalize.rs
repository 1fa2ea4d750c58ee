//! Step 1a: path normalisation. Every later step, the route table included, sees one canonical
//! path, and the upstream receives that same path — so `/public/../admin` is judged as
//! `/admin`, never as `/public/…`. What the canonical form is: [`portcullis_core::path`]
//! (configuration checks route paths against the same function). The query is left as sent.
//! A path that cannot be normalised is refused with a 400.

use portcullis_core::{GatewayRequest, RejectReason, Rejection, RequestCtx, Stage, StageId, Step};

pub use portcullis_core::path::{
    EncodedSlash, PathError, PathRules, Semicolons, normalize_path, normalize_path_with,
};

pub struct NormalizeStage {
    rules: PathRules,
}

impl NormalizeStage {
    pub const ID: StageId = StageId("normalize");

    /// `rules`: `server.encoded_slash` and `server.path_semicolons`.
    pub fn new(rules: PathRules) -> Self {
        NormalizeStage { rules }
    }
}

impl Stage for NormalizeStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let uri = &req.head.uri;
        if req.head.method == http::Method::CONNECT {
            return Step::reject(Rejection::new(
                RejectReason::MethodNotAllowed,
                "CONNECT is not proxied",
            ));
        }
        let path = uri.path();
        match normalize_path_with(path, self.rules) {
            Ok(None) => Step::CONTINUE,
            Ok(Some(new_path)) => {
                ctx.original_path = Some(path.to_string());
                let pq = match uri.query() {
                    Some(q) => format!("{new_path}?{q}"),
                    None => new_path,
                };
                let mut parts = uri.clone().into_parts();
                match pq.parse() {
                    Ok(pq) => {
                        parts.path_and_query = Some(pq);
                        match http::Uri::from_parts(parts) {
                            Ok(u) => {
                                req.head.uri = u;
                                Step::CONTINUE
                            }
                            Err(_) => Step::reject(Rejection::new(
                                RejectReason::BadRequest,
                                PathError::BadEscape.detail(),
                            )),
                        }
                    }
                    Err(_) => Step::reject(Rejection::new(
                        RejectReason::BadRequest,
                        PathError::BadEscape.detail(),
                    )),
                }
            }
            Err(e) => Step::reject(Rejection::new(RejectReason::BadRequest, e.detail())),
        }
    }
}
