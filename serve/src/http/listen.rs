//! The accept loop: hyper's HTTP/1 with deadlines a client cannot hold a connection past.
//!
//! axum's own `serve` sets no timer, so hyper's header-read timeout never ran: a client that
//! opened connections and sent nothing, or a request head a byte a minute, held each one (and
//! its task) for ever. Here each connection gets [`Timeouts::head`] for every request head (from
//! the first byte it waits for, so an idle keep-alive connection closes after it too) and each
//! request [`Timeouts::body`] for its whole body (a 408 JSON error past it). A streaming
//! response is not bounded: the deadlines cover what the client sends, not what it reads.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// The deadlines of a connection and of each request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For each request's head (hyper's header-read timeout), and for an idle connection.
    pub head: Duration,
    /// For each request's whole body, from its head.
    pub body: Duration,
}

impl Default for Timeouts {
    /// 30 s a head (hyper's own default, which axum left off) and 60 s a body (a body at
    /// [`super::body_limit`] of a 128k context, 4 MiB, at 70 KB/s).
    fn default() -> Self {
        Timeouts {
            head: Duration::from_secs(30),
            body: Duration::from_secs(60),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the open connections
/// to end (axum's graceful shutdown: each finishes its request in flight, then closes).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) {
    let app =
        app.layer(axum::middleware::map_request(
            move |req: Request| async move {
                req.map(|body| Body::new(Deadline::new(body, timeouts.body)))
            },
        ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.head);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's loop does, rather
                    // than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Why a request's body failed: its deadline passed (found in the rejection's source chain to
/// answer 408).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
struct Deadline {
    body: Body,
    sleep: Pin<Box<Sleep>>,
    after: Duration,
}

impl Deadline {
    fn new(body: Body, after: Duration) -> Self {
        Deadline {
            body,
            sleep: Box::pin(tokio::time::sleep(after)),
            after,
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.after))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
