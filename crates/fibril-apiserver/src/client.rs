//! kube-rs clients for the lab API server, over TCP or its unix socket, and a kubeconfig for
//! other tools. The lab API server has no authentication, like a kubeconfig for a local
//! insecure port.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use hyper::Uri;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::middleware::BaseUriLayer;
use tower::Layer;

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid API server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("building a kube client for {url}: {source}")]
    Kube {
        url: String,
        #[source]
        source: kube::Error,
    },
}

/// A client for `http://host:port` (no TLS, no auth). Must be called inside a tokio runtime.
pub fn client_for_url(url: &str) -> anyhow::Result<kube::Client> {
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    if uri.scheme_str() != Some("http") && uri.scheme_str() != Some("https") {
        return Err(ClientError::Url {
            url: url.to_string(),
            reason: "expected an http:// or https:// URL".into(),
        }
        .into());
    }
    let mut config = kube::Config::new(uri);
    config.default_namespace = "default".into();
    let client = kube::Client::try_from(config).map_err(|source| ClientError::Kube {
        url: url.to_string(),
        source,
    })?;
    Ok(client)
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send>>;

/// A client speaking HTTP over the API server's unix socket. Must be called inside a tokio
/// runtime.
pub fn client_for_socket(path: &Path) -> anyhow::Result<kube::Client> {
    let path: PathBuf = path.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        let connect: ConnectFuture = Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(&path).await?;
            Ok(TokioIo::new(stream))
        });
        connect
    });
    let http = HyperClient::builder(TokioExecutor::new()).build::<_, kube::client::Body>(connector);
    // The host is irrelevant on a unix socket; requests still need an absolute URI.
    let base: Uri = "http://localhost".parse().expect("static URI parses");
    let service = BaseUriLayer::new(base).layer(http);
    Ok(kube::Client::new(service, "default"))
}

fn quoted(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::Value::String(s.to_string()).to_string()
}

/// A kubeconfig (no credentials) pointing at `server_url`, with one context named after the
/// cluster and `default` as its namespace.
pub fn kubeconfig_yaml(server_url: &str, cluster_name: &str) -> String {
    let name = quoted(cluster_name);
    let server = quoted(server_url);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
users:
- name: {name}
  user: {{}}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
    namespace: default
current-context: {name}
preferences: {{}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_parses() {
        let text = kubeconfig_yaml("http://172.18.0.2:6443", "fibril-lab");
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("fibril-lab"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("http://172.18.0.2:6443"));
        assert_eq!(
            kc.contexts[0]
                .context
                .as_ref()
                .unwrap()
                .namespace
                .as_deref(),
            Some("default")
        );
    }

    #[tokio::test]
    async fn kubeconfig_builds_a_client_config() {
        let text = kubeconfig_yaml("http://127.0.0.1:6443", "x: odd \"name\"");
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "http://127.0.0.1:6443/");
        kube::Client::try_from(cfg).unwrap();
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert!(client_for_url("not a url").is_err());
    }
}
