//! A minimal upstream (hyper, HTTP/1.1 + h2c): answers every request with a small JSON body.
//! Used with `--upstream stub` when the sample CRM is not available, or to take the CRM's own
//! cost out of a run.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    // Read (and drop) the request body, as a real backend would.
    let _ = req.into_body().collect().await;
    let body = format!(
        "{{\"id\":1,\"path\":\"{}\",\"name\":\"Acme Corp\",\"email\":\"ops@acme.example\",\"owner_id\":\"u-rep1\"}}",
        path.escape_default()
    );
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default())
}

pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
