//! Alerts and resolutions POSTed as JSON (the same objects as the event stream) to an on-call
//! webhook, in order, each retried with exponential backoff. The queue is bounded: when the
//! webhook is down for long, the oldest alerts make room for the newest; what is dropped is
//! counted. A resolution is never dropped (else its page would stay open), unless the alert
//! it resolves is dropped from the queue too: the webhook never saw that page. A refusal (4xx but 408 and 429) is not retried: the same request would be
//! refused again.

use std::{cell::RefCell, collections::VecDeque, path::Path, rc::Rc, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};
use tokio::sync::Notify;

use super::metrics::{Dropped, Metrics};
use crate::{
    event::{AlertKind, Event},
    scrub::url_for_logs,
};

/// Alerts waiting for delivery at most; more push the oldest alert out, counted.
/// Resolutions may go past it: there are no more of them than conditions open.
pub const QUEUE: usize = 256;
/// Tries per alert: the first, then retries after 1, 2, 4, 8 and 16 s.
const ATTEMPTS: u32 = 6;
/// Time one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One alert or resolution waiting for the webhook.
struct Entry {
    body: Bytes,
    /// The condition: an alert and its resolution share it.
    condition: (u32, AlertKind, Option<String>),
    resolution: bool,
}

/// The alerts and resolutions waiting for the webhook, oldest first.
pub struct Queue {
    waiting: RefCell<VecDeque<Entry>>,
    ready: Notify,
    metrics: Rc<Metrics>,
}

impl Queue {
    /// Queues an alert or a resolution (`body` is its JSON line; other events are ignored).
    /// When the queue is full the oldest waiting alert is dropped, with its resolution if
    /// that waits too; resolutions are not dropped otherwise. Drops are counted.
    pub fn push(&self, event: &Event, body: Bytes) {
        let entry = match event {
            Event::Alert {
                pid, kind, detail, ..
            } => Entry {
                body,
                condition: (*pid, *kind, detail.group().map(str::to_owned)),
                resolution: false,
            },
            Event::AlertResolved {
                pid, kind, group, ..
            } => Entry {
                body,
                condition: (*pid, *kind, group.clone()),
                resolution: true,
            },
            _ => return,
        };
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() >= QUEUE {
            match waiting.iter().position(|e| !e.resolution) {
                Some(oldest) => {
                    let alert = waiting.remove(oldest).expect("a position in the queue");
                    self.metrics.dropped(Dropped::WebhookQueueFull, 1);
                    let resolves = |e: &Entry| e.resolution && e.condition == alert.condition;
                    match waiting.iter().skip(oldest).position(resolves) {
                        Some(later) => {
                            waiting.remove(oldest + later);
                            self.metrics.dropped(Dropped::WebhookQueueFull, 1);
                        }
                        None if resolves(&entry) => {
                            self.metrics.dropped(Dropped::WebhookQueueFull, 1);
                            return;
                        }
                        None => {}
                    }
                }
                // Only resolutions wait: the new alert is the oldest one.
                None if !entry.resolution => {
                    self.metrics.dropped(Dropped::WebhookQueueFull, 1);
                    return;
                }
                None => {}
            }
        }
        waiting.push_back(entry);
        self.ready.notify_one();
    }

    async fn pop(&self) -> Bytes {
        loop {
            if let Some(entry) = self.waiting.borrow_mut().pop_front() {
                return entry.body;
            }
            self.ready.notified().await;
        }
    }
}

/// Why a delivery failed.
enum Failure {
    /// Worth another try (no answer, 5xx, 408, 429).
    Transient(anyhow::Error),
    /// The webhook refused the request (4xx): trying again would be refused again.
    Refused(StatusCode),
}

/// Checks the URL (and the CA file, trusted instead of the public roots) and starts the
/// delivery task; returns the queue to post alerts into.
pub fn start(url: &str, ca: Option<&Path>, metrics: Rc<Metrics>) -> anyhow::Result<Rc<Queue>> {
    // The URL may hold a secret (a password, a token in its path): logs show its host only.
    let shown = url_for_logs(url);
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow!("--webhook {shown}: {e} - give an http:// or https:// URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        bail!("--webhook {shown}: give an http:// or https:// URL");
    }
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca {
        Some(path) => builder.with_tls_config(private_ca(path)?),
        None => builder.with_webpki_roots(),
    };
    let connector = builder.https_or_http().enable_http1().build();
    let client: HttpsClient = Client::builder(TokioExecutor::new()).build(connector);
    let queue = Rc::new(Queue {
        waiting: RefCell::new(VecDeque::with_capacity(QUEUE)),
        ready: Notify::new(),
        metrics,
    });
    tokio::task::spawn_local(deliver(Rc::clone(&queue), client, uri, shown));
    Ok(queue)
}

/// A TLS configuration that trusts the certificates of a PEM file (a private CA).
fn private_ca(path: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let what = || format!("--webhook-ca {}", path.display());
    let pem = std::fs::read(path).with_context(what)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| anyhow!("{}: {e}", what()))?;
        roots
            .add(cert)
            .map_err(|e| anyhow!("{}: {e} - give the CA's certificate in PEM", what()))?;
    }
    if roots.is_empty() {
        bail!(
            "{}: no certificate in it - give the CA's certificate in PEM (-----BEGIN CERTIFICATE-----)",
            what()
        );
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn deliver(queue: Rc<Queue>, client: HttpsClient, uri: Uri, shown: String) {
    loop {
        let body = queue.pop().await;
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            match post(&client, &uri, body.clone()).await {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(Failure::Transient(e)) => {
                    log::warn!("webhook {shown}, try {} of {ATTEMPTS}: {e:#}", attempt + 1);
                }
                Err(Failure::Refused(status)) => {
                    log::warn!("webhook {shown} refused an alert ({status}); not retried");
                    break;
                }
            }
        }
        if delivered {
            queue.metrics.webhook_delivered();
        } else {
            queue.metrics.dropped(Dropped::WebhookFailed, 1);
        }
    }
}

async fn post(client: &HttpsClient, uri: &Uri, body: Bytes) -> Result<(), Failure> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("tracer/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| Failure::Transient(e.into()))?;
    let response = tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .map_err(|_| Failure::Transient(anyhow!("no answer within {TIMEOUT:?}")))?
        .map_err(|e| Failure::Transient(e.into()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if retried(status) {
        Err(Failure::Transient(anyhow!("answered {status}")))
    } else {
        Err(Failure::Refused(status))
    }
}

/// Whether an answer that is not a success is worth another try: server errors, timeouts
/// and rate limits; not other client errors.
fn retried(status: StatusCode) -> bool {
    !status.is_client_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_not_retried_but_timeouts_and_rate_limits_are() {
        for (status, expected) in [(500, true), (503, true), (408, true), (429, true)] {
            assert_eq!(
                retried(StatusCode::from_u16(status).unwrap()),
                expected,
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 410, 422] {
            assert!(!retried(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }

    fn queue() -> Queue {
        Queue {
            waiting: RefCell::default(),
            ready: Notify::new(),
            metrics: Rc::new(Metrics::new()),
        }
    }

    /// An alert (or its resolution) of target `pid`, its JSON line standing in as `name`.
    fn push(queue: &Queue, pid: u32, resolution: bool, name: &str) {
        let (kind, severity, message, ts) = (
            AlertKind::FdExhaustion,
            crate::alert::Severity::Warning,
            String::new(),
            0,
        );
        let event = if resolution {
            Event::AlertResolved {
                ts,
                pid,
                kind,
                severity,
                message,
                group: None,
            }
        } else {
            Event::Alert {
                ts,
                pid,
                kind,
                severity,
                message,
                detail: crate::event::AlertDetail::Eta { eta_seconds: None },
            }
        };
        queue.push(&event, Bytes::from(name.to_owned()));
    }

    fn waiting(queue: &Queue) -> Vec<String> {
        let waiting = queue.waiting.borrow();
        waiting
            .iter()
            .map(|e| String::from_utf8(e.body.to_vec()).unwrap())
            .collect()
    }

    fn dropped(queue: &Queue) -> String {
        let text = queue.metrics.encode();
        text.lines()
            .find(|l| l.starts_with(r#"tracer_events_dropped_total{reason="webhook_queue_full"}"#))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn a_full_queue_drops_its_oldest_alerts() {
        let queue = queue();
        for n in 0..QUEUE + 2 {
            push(&queue, n as u32, false, &n.to_string());
        }
        let waiting = waiting(&queue);
        assert_eq!(waiting.len(), QUEUE);
        assert_eq!(waiting[0], "2", "0 and 1 dropped");
        assert_eq!(waiting[QUEUE - 1], (QUEUE + 1).to_string());
        assert!(dropped(&queue).ends_with(" 2"), "{}", dropped(&queue));
    }

    #[test]
    fn a_full_queue_keeps_resolutions_and_drops_the_oldest_alert() {
        let queue = queue();
        // Target 1's resolution first (its alert was delivered), then alerts of others.
        push(&queue, 1, true, "resolved 1");
        for n in 2..=QUEUE as u32 {
            push(&queue, n, false, &format!("alert {n}"));
        }
        push(&queue, 1000, false, "alert 1000");
        let waiting = waiting(&queue);
        assert_eq!(waiting.len(), QUEUE);
        assert_eq!(waiting[0], "resolved 1", "a resolution is never dropped");
        assert_eq!(waiting[1], "alert 3", "the oldest alert (2) dropped");
        assert_eq!(waiting[QUEUE - 1], "alert 1000");
    }

    #[test]
    fn a_dropped_alert_takes_its_queued_resolution_along() {
        let queue = queue();
        push(&queue, 1, false, "alert 1");
        push(&queue, 2, false, "alert 2");
        push(&queue, 1, true, "resolved 1");
        for n in 3..QUEUE as u32 {
            push(&queue, n, false, &format!("alert {n}"));
        }
        assert_eq!(waiting(&queue).len(), QUEUE);
        // Full: alert 1 goes, and its resolution with it (the webhook never saw the page).
        push(&queue, 2, true, "resolved 2");
        let waiting = waiting(&queue);
        assert_eq!(waiting.len(), QUEUE - 1);
        assert_eq!(waiting[0], "alert 2");
        assert!(!waiting.iter().any(|w| w.ends_with(" 1")), "{waiting:?}");
        assert_eq!(waiting[QUEUE - 2], "resolved 2");
        assert!(dropped(&queue).ends_with(" 2"), "{}", dropped(&queue));
    }

    #[test]
    fn a_full_queue_of_resolutions_takes_more_and_drops_a_new_alert() {
        let queue = queue();
        for n in 0..QUEUE as u32 {
            push(&queue, n, true, &format!("resolved {n}"));
        }
        push(&queue, 1000, false, "alert 1000");
        push(&queue, 1001, true, "resolved 1001");
        let waiting = waiting(&queue);
        assert_eq!(waiting.len(), QUEUE + 1);
        assert!(!waiting.contains(&"alert 1000".to_owned()));
        assert_eq!(waiting[QUEUE], "resolved 1001");
        assert!(dropped(&queue).ends_with(" 1"), "{}", dropped(&queue));
    }

    #[test]
    fn a_dropped_alert_whose_resolution_arrives_now_drops_both() {
        let queue = queue();
        for n in 0..QUEUE as u32 {
            push(&queue, n, false, &format!("alert {n}"));
        }
        push(&queue, 0, true, "resolved 0");
        let waiting = waiting(&queue);
        assert_eq!(waiting.len(), QUEUE - 1);
        assert_eq!(waiting[0], "alert 1");
        assert!(dropped(&queue).ends_with(" 2"), "{}", dropped(&queue));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("tracer-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = private_ca(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            format!("{error:#}").contains("no certificate in it"),
            "{error:#}"
        );
        assert!(private_ca(Path::new("/nonexistent/ca.pem")).is_err());
    }
}
