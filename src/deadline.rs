//! The request timeout as a deadline: every call ends by
//! `limits.request_timeout` (or the caller's `grpc-timeout`, if shorter)
//! with `DEADLINE_EXCEEDED`, and handlers that run long work see the same
//! deadline ([`RequestDeadline`]) so they can stop that work in time.
//!
//! It replaces tonic's own server timeout, which answers `CANCELLED
//! "Timeout expired"` and starts its clock before the request body has
//! arrived, where the handler cannot see it.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// When the current request must be answered (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct RequestDeadline(pub Instant);

impl RequestDeadline {
    /// The deadline of `req`, or `timeout` from now if it carries none.
    pub fn of<T>(req: &tonic::Request<T>, timeout: Duration) -> Instant {
        req.extensions()
            .get::<RequestDeadline>()
            .map_or_else(|| Instant::now() + timeout, |d| d.0)
    }
}

/// Wraps the services: sets [`RequestDeadline`] and answers
/// `DEADLINE_EXCEEDED` when it passes (the call's future is dropped).
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, timeout: self.0 }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B, R> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let mut timeout = self.timeout;
        if let Some(client) = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            timeout = timeout.min(client);
        }
        let deadline = Instant::now() + timeout;
        req.extensions_mut().insert(RequestDeadline(deadline));
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline.into(), call).await {
                Ok(r) => r,
                Err(_) => {
                    let e = crate::Error::DeadlineExceeded(crate::error::Deadline::Request);
                    Ok(tonic::Status::from(e).into_http())
                }
            }
        })
    }
}

/// The `grpc-timeout` header: at most 8 digits and a unit.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "123456789S", "5x", "-5S", "+5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
