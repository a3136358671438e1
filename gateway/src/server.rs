//! The HTTP/1.1 listener: one task per connection, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use scanhook_shared::config::{GatewaySettings, millis};

use crate::app::App;

/// Smallest read buffer hyper accepts.
const MIN_PARSE_BUFFER: usize = 8192;
/// Header lines hyper parses at most; a request with more gets its bare 431.
const MAX_HEADER_LINES: usize = 100;

pub struct ServerOptions {
    pub header_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Limit of hyper's own parsing: above it hyper answers 431 without an envelope, so it sits
    /// well above the gateway's header limit, which answers in the envelope.
    pub parse_buffer: usize,
}

impl ServerOptions {
    pub fn new(gateway: &GatewaySettings) -> Self {
        Self {
            header_timeout: millis(gateway.header_timeout_ms),
            shutdown_timeout: millis(gateway.shutdown_timeout_ms),
            parse_buffer: gateway.max_header_bytes.saturating_mul(2).max(MIN_PARSE_BUFFER),
        }
    }

    /// hyper's HTTP/1.1 connection settings of the gateway.
    pub fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(self.parse_buffer)
            .max_headers(MAX_HEADER_LINES);
        builder
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and gives the
/// requests in flight up to `shutdown_timeout` to finish.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let app = Arc::clone(&app);
                    let service = service_fn(move |request| {
                        let app = Arc::clone(&app);
                        async move { Ok::<_, Infallible>(app.handle(request, peer).await) }
                    });
                    let connection =
                        options.http1().serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            debug!(error = %err, "connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }

    drop(listener);
    info!("shutting down: no new connections, finishing requests in flight");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(options.shutdown_timeout) => {
            warn!(timeout_ms = options.shutdown_timeout.as_millis() as u64, "shutdown deadline passed; dropping connections");
        }
    }
}
