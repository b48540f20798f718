//! The other end of the admin endpoint, for `tailhose status`: one GET over HTTP/1.1.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer from the admin endpoint at {address}: {reason}")]
    Unreachable { address: SocketAddr, reason: String },
    #[error("the admin endpoint at {address} answered {status}: {body}")]
    Status { address: SocketAddr, status: u16, body: String },
}

/// The body of `GET path` at `address`, when it answers 200 within `timeout`.
pub async fn get(address: SocketAddr, path: &str, timeout: Duration) -> Result<String, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable { address, reason };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|error| unreachable(error.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, address.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|error| unreachable(error.to_string()))?;
        let response = sender.send_request(request).await.map_err(|error| unreachable(error.to_string()))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|error| unreachable(error.to_string()))?.to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            return Err(ClientError::Status { address, status, body });
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
}
