//! Alerts and resolutions POSTed as JSON (the same objects as the event stream) to an on-call
//! webhook, in order, each retried with exponential backoff. The queue is bounded: when the
//! webhook is down for long, the oldest alerts make room for the newest; what is dropped is
//! counted. A refusal (4xx but 408 and 429) is not retried: the same request would be
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
use crate::scrub::url_for_logs;

/// Alerts waiting for delivery at most; more push the oldest out, counted.
pub const QUEUE: usize = 256;
/// Tries per alert: the first, then retries after 1, 2, 4, 8 and 16 s.
const ATTEMPTS: u32 = 6;
/// Time one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The alerts waiting for the webhook, oldest first.
pub struct Queue {
    waiting: RefCell<VecDeque<Bytes>>,
    ready: Notify,
    metrics: Rc<Metrics>,
}

impl Queue {
    /// Queues an alert; when the queue is full the oldest waiting one is dropped, counted.
    pub fn push(&self, body: Bytes) {
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() >= QUEUE {
            waiting.pop_front();
            self.metrics.dropped(Dropped::WebhookQueueFull, 1);
        }
        waiting.push_back(body);
        self.ready.notify_one();
    }

    async fn pop(&self) -> Bytes {
        loop {
            if let Some(body) = self.waiting.borrow_mut().pop_front() {
                return body;
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

    #[test]
    fn a_full_queue_drops_its_oldest() {
        let queue = Queue {
            waiting: RefCell::default(),
            ready: Notify::new(),
            metrics: Rc::new(Metrics::new()),
        };
        for n in 0..QUEUE + 2 {
            queue.push(Bytes::from(n.to_string()));
        }
        let waiting = queue.waiting.borrow();
        assert_eq!(waiting.len(), QUEUE);
        assert_eq!(
            waiting.front().unwrap(),
            &Bytes::from("2"),
            "0 and 1 dropped"
        );
        assert_eq!(
            waiting.back().unwrap(),
            &Bytes::from((QUEUE + 1).to_string())
        );
        assert!(
            queue
                .metrics
                .encode()
                .contains(r#"tracer_events_dropped_total{reason="webhook_queue_full"} 2"#)
        );
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
