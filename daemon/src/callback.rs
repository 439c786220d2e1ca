//! The loopback callback: `http://127.0.0.1:PORT/callback`, served while a
//! login waits for the browser.
//!
//! It binds 127.0.0.1 only (never all interfaces), answers `GET /callback`
//! with a short page once the login is settled, and 404 to anything else.
//! The handler decides what the page says; this module only speaks HTTP.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::oauth::flow::CallbackParams;

/// What the browser is shown.
pub struct Page {
    pub ok: bool,
    pub title: String,
    pub message: String,
}

pub type Handler =
    Arc<dyn Fn(CallbackParams) -> Pin<Box<dyn Future<Output = Page> + Send>> + Send + Sync>;

/// Binds `127.0.0.1:port` (0 picks a free port).
pub fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn render(page: &Page) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em}}\
         h1{{color:{color}}}</style></head><body><h1>{title}</h1><p>{message}</p></body></html>",
        title = escape(&page.title),
        message = escape(&page.message),
        color = if page.ok { "#1a7f37" } else { "#cf222e" },
    )
}

fn response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .header("referrer-policy", "no-referrer")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Serves callbacks until `stop` resolves.
pub async fn serve(listener: TcpListener, handler: Handler, stop: impl Future<Output = ()> + Send) {
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "callback accept failed");
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move {
                    if req.method() != hyper::Method::GET || req.uri().path() != "/callback" {
                        return Ok::<_, Infallible>(response(
                            StatusCode::NOT_FOUND,
                            render(&Page {
                                ok: false,
                                title: "Not found".into(),
                                message: "This is mcpauth's login callback.".into(),
                            }),
                        ));
                    }
                    let params = CallbackParams::from_query(req.uri().query().unwrap_or(""));
                    let page = handler(params).await;
                    let status = if page.ok {
                        StatusCode::OK
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    Ok(response(status, render(&page)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
