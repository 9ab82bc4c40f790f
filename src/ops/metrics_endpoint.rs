//! The metrics endpoint: plain HTTP/1.1 on a Unix socket or a loopback
//! address (never TLS-less on anything else), answering `GET /metrics`.
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::sync::watch;

/// Renders the metrics page, called once per scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `listen` (`unix:/path` or a loopback `host:port`, validated by
/// the config) and serves what `render` returns until `stop`.
pub async fn serve(listen: &str, render: Render, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
    enum L {
        Unix(tokio::net::UnixListener),
        Tcp(tokio::net::TcpListener),
    }
    let listener = match listen.strip_prefix("unix:") {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            L::Unix(l)
        }
        None => L::Tcp(tokio::net::TcpListener::bind(listen).await?),
    };
    tracing::info!(listen, "metrics listening");
    tokio::spawn(async move {
        loop {
            let io: Box<dyn Io> = tokio::select! {
                _ = stop.changed() => return,
                r = async {
                    match &listener {
                        L::Unix(l) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Io>),
                        L::Tcp(l) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Io>),
                    }
                } => match r {
                    Ok(io) => io,
                    Err(_) => continue,
                },
            };
            let render = render.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            let body = render();
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(body)))
                        } else {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"not found\n")))
                        };
                        resp.map_err(|e| std::io::Error::other(e.to_string()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    Ok(())
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
