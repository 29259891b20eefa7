//! The agent's HTTP endpoints: `GET /metrics` (Prometheus text format), `GET /events` (the
//! live event stream: NDJSON, or Server-Sent Events when asked with
//! `Accept: text/event-stream`), `GET /healthz`.
//!
//! A client that reads slowly never slows the agent: each has a bounded queue that the agent
//! offers every line to without waiting; what does not fit is dropped, counted in
//! `tracer_events_dropped_total{reason="slow_client"}`, and announced to the client in the
//! stream as an `events_dropped` line once it catches up. Clients are bounded too: past
//! `--events-clients` the next is refused with 503, and one that has taken nothing for
//! `--events-idle` while lines wait for it is disconnected (both counted in
//! `tracer_events_clients_refused_total`).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Frame, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
};

use super::{
    Hub,
    metrics::{Dropped, Metrics, Refused},
};
use crate::{event::dropped_line, output::filter::Events};

/// Lines a client may be behind before it misses some.
const CLIENT_QUEUE: usize = 4096;

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// Binds the listening socket: only loopback unless `allow_remote`, as metrics and events are
/// not authenticated.
pub async fn bind(addr: SocketAddr, allow_remote: bool) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() && !allow_remote {
        bail!(
            "--listen {addr} would expose metrics and events, unauthenticated, to other hosts - keep a loopback address, or add --allow-remote if that is intended"
        );
    }
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow!("cannot listen on {addr}: the port is in use (another tracer agent?) - choose another with --listen")
        }
        _ => anyhow!("cannot listen on {addr}: {e}"),
    })
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: TcpListener, hub: Rc<Hub>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("accepting an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let hub = Rc::clone(&hub);
        tokio::task::spawn_local(async move {
            let served_hub = Rc::clone(&hub);
            // Told when the connection's /events client is cut off for idling: the connection
            // is dropped then, even while a write to it is blocked.
            let cut = Rc::new(Notify::new());
            let cut_by_hub = Rc::clone(&cut);
            let service = service_fn(move |request| {
                let response = route(&request, &served_hub, &cut_by_hub);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = served => if let Err(e) = served {
                    log::debug!("HTTP connection: {e}");
                },
                () = cut.notified() => log::debug!("an idle /events client was disconnected"),
            }
            // Its /events client (if it had one) has gone: counted now, not at the next line
            // it would have been sent, which may be long in coming.
            let mut subscribers = hub.subscribers.borrow_mut();
            subscribers.retain(|s| !s.tx.is_closed());
            hub.metrics.clients(subscribers.len());
        });
    }
}

fn route(request: &Request<Incoming>, hub: &Rc<Hub>, cut: &Rc<Notify>) -> Response<ResponseBody> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, &hub.metrics.encode());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/events" => events(request, hub, cut),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "GET /metrics, /events or /healthz\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())).boxed_unsync());
    *response.status_mut() = status;
    response
}

/// The live stream for one client, or 503 when there are `--events-clients` already.
fn events(request: &Request<Incoming>, hub: &Rc<Hub>, cut: &Rc<Notify>) -> Response<ResponseBody> {
    let mut subscribers = hub.subscribers.borrow_mut();
    subscribers.retain(|s| !s.tx.is_closed());
    if subscribers.len() >= hub.max_subscribers {
        hub.metrics.refused(Refused::Limit);
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} clients of /events already (--events-clients); try again later\n",
                subscribers.len()
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
        return response;
    }
    // ?events=all|summary|alerts picks the stream; the agent's --events otherwise.
    let chosen = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("events="))
        .map_or(Ok(hub.events), Events::parse);
    let events = match chosen {
        Ok(events) => events,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    let sse = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let (tx, rx) = mpsc::channel::<Bytes>(CLIENT_QUEUE);
    subscribers.push(Subscriber {
        tx,
        events,
        sse,
        missed: 0,
        stuck_since: None,
        cut: Rc::clone(cut),
    });
    hub.metrics.clients(subscribers.len());
    let mut response = Response::new(ChannelBody(rx).boxed_unsync());
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// One client of GET /events.
pub struct Subscriber {
    tx: mpsc::Sender<Bytes>,
    /// The events it asked for.
    pub events: Events,
    /// Server-Sent Events (`data: ...` and a blank line) instead of NDJSON.
    sse: bool,
    /// Lines dropped since the client last had room: announced when it has room again.
    missed: u64,
    /// Since when its queue has been full.
    stuck_since: Option<Instant>,
    /// Drops the client's connection.
    cut: Rc<Notify>,
}

impl Subscriber {
    /// Queues an NDJSON line for the client without waiting; returns false once the client
    /// has gone, or has taken nothing for `idle` (its connection is then dropped).
    pub fn offer(&mut self, line: &Bytes, idle: Duration, metrics: &Metrics) -> bool {
        if self.missed > 0 {
            let note = dropped_line(self.missed);
            match self.tx.try_send(self.frame(&Bytes::from(note))) {
                Ok(()) => self.missed = 0,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
        match self.tx.try_send(self.frame(line)) {
            Ok(()) => {
                self.stuck_since = None;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let since = *self.stuck_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= idle {
                    self.cut.notify_one();
                    metrics.refused(Refused::Idle);
                    return false;
                }
                self.missed += 1;
                metrics.dropped(Dropped::SlowClient, 1);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn frame(&self, line: &Bytes) -> Bytes {
        if self.sse {
            Bytes::from(format!(
                "data: {}\n\n",
                String::from_utf8_lossy(line.trim_ascii_end())
            ))
        } else {
            line.clone()
        }
    }
}

/// A response body fed line by line from a channel; it ends when the sender does.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}
