//! Alerts and resolutions POSTed as JSON (the same objects as the event stream) to an on-call
//! webhook, in order, each retried with exponential backoff. The queue is bounded: when the
//! webhook is down for long, the oldest alerts are not kept forever; what is dropped is counted.

use std::{rc::Rc, time::Duration};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Uri, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::mpsc;

use super::metrics::{Dropped, Metrics};
use crate::scrub::url_for_logs;

/// Alerts waiting for delivery at most; more are dropped and counted.
pub const QUEUE: usize = 256;
/// Tries per alert: the first, then retries after 1, 2, 4, 8 and 16 s.
const ATTEMPTS: u32 = 6;
/// Time one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Checks the URL and starts the delivery task; returns the queue to post alerts into.
pub fn start(url: &str, metrics: Rc<Metrics>) -> anyhow::Result<mpsc::Sender<Bytes>> {
    // The URL may hold a secret (a password, a token in its path): logs show its host only.
    let shown = url_for_logs(url);
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow!("--webhook {shown}: {e} - give an http:// or https:// URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        bail!("--webhook {shown}: give an http:// or https:// URL");
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: HttpsClient = Client::builder(TokioExecutor::new()).build(connector);
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_local(deliver(rx, client, uri, shown, metrics));
    Ok(tx)
}

async fn deliver(
    mut queue: mpsc::Receiver<Bytes>,
    client: HttpsClient,
    uri: Uri,
    shown: String,
    metrics: Rc<Metrics>,
) {
    while let Some(body) = queue.recv().await {
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
                Err(e) => log::warn!("webhook {shown}, try {} of {ATTEMPTS}: {e:#}", attempt + 1),
            }
        }
        if delivered {
            metrics.webhook_delivered();
        } else {
            metrics.dropped(Dropped::WebhookFailed, 1);
        }
    }
}

async fn post(client: &HttpsClient, uri: &Uri, body: Bytes) -> anyhow::Result<()> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("tracer/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))?;
    let response = tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .map_err(|_| anyhow!("no answer within {TIMEOUT:?}"))??;
    if response.status().is_success() {
        Ok(())
    } else {
        bail!("answered {}", response.status())
    }
}
