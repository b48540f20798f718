//! The HTTP(S) client the Firehose SDK calls through: rustls trusting the system's authorities
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` included) plus the sink's `ca_file`, and the proxies the
//! environment names, as the AWS SDKs and curl read them: `HTTPS_PROXY` / `https_proxy` for
//! https endpoints, `HTTP_PROXY` / `http_proxy` for http ones, `ALL_PROXY`, and `NO_PROXY` /
//! `no_proxy` for the hosts that bypass them. An https endpoint is reached through an `HTTP
//! CONNECT` tunnel, so the proxy never sees the request; a proxy URL may carry `user:password@`
//! (basic authentication).
//!
//! The SDK's default client reads no proxy variables (aws-smithy-http-client 1.5), which leaves an
//! edge host behind a corporate proxy with no way out; this client is the SDK's own connector
//! with the proxy settings turned on, built once per set of timeouts and shared by every call (its
//! pool keeps connections alive between calls).

use std::sync::Mutex;
use std::time::Duration;

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use super::SinkSetupError;

/// The client for a sink: the system's trust roots, plus `ca_file`'s certificates when given.
pub fn https_client(ca_file: Option<&std::path::Path>) -> Result<SharedHttpClient, SinkSetupError> {
    let tls = match ca_file {
        None => TlsContext::default(),
        Some(path) => tls_context_trusting(path)?,
    };
    Ok(SharedHttpClient::new(ProxyAwareClient { tls, connectors: Mutex::new(Vec::new()) }))
}

fn tls_context_trusting(ca_file: &std::path::Path) -> Result<TlsContext, SinkSetupError> {
    let pem = std::fs::read(ca_file).map_err(|source| SinkSetupError::CaFile { path: ca_file.to_path_buf(), source })?;
    if !pem.windows(27).any(|window| window == b"-----BEGIN CERTIFICATE-----") {
        return Err(SinkSetupError::TlsContext { path: ca_file.to_path_buf(), reason: "no BEGIN CERTIFICATE block".into() });
    }
    TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|error| SinkSetupError::TlsContext { path: ca_file.to_path_buf(), reason: error.to_string() })
}

/// The timeouts a connector was built for: the SDK asks for a connector per call, with the
/// timeouts of that call's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeouts {
    connect: Option<Duration>,
    read: Option<Duration>,
}

#[derive(Debug)]
struct ProxyAwareClient {
    tls: TlsContext,
    /// One connector (with its connection pool) per set of timeouts seen; in practice one.
    connectors: Mutex<Vec<(Timeouts, SharedHttpConnector)>>,
}

impl HttpClient for ProxyAwareClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        let timeouts = Timeouts { connect: settings.connect_timeout(), read: settings.read_timeout() };
        // The list holds plain handles; after a panic elsewhere it is still usable.
        let mut connectors = self.connectors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, connector)) = connectors.iter().find(|(built_for, _)| *built_for == timeouts) {
            return connector.clone();
        }
        let mut builder = Connector::builder().connector_settings(settings.clone()).proxy_config(ProxyConfig::from_env());
        if let Some(sleep) = components.sleep_impl() {
            builder = builder.sleep_impl(sleep);
        }
        let connector =
            SharedHttpConnector::new(builder.tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc)).tls_context(self.tls.clone()).build());
        connectors.push((timeouts, connector.clone()));
        connector
    }
}
