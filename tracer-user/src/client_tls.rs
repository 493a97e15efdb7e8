//! How every client of the aggregator reaches it: the agent (ingest in
//! `forward`, the control poll in `control::agent`), the control CLI
//! (`tracer logpoint|eval --aggregator`, `control::remote`) and the query
//! CLI (`tracer timeline|grep|tail`, `aggregator::client`).
//!
//! One set of TLS options ([`ClientTls`]: `--ca-cert`, `--client-cert`,
//! `--client-key`), one function building the reqwest client from them
//! ([`http_client`]), and one translation of what rustls reports into a
//! sentence that names the fix ([`tls_problem`], [`transport_error`]).
//! Plain `http://` needs none of it: the options only matter for
//! `https://`.

use std::{
    error::Error as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use rustls::AlertDescription;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};

/// Where --help lists the options (per option: a heading for the whole
/// struct would carry over to the options flattened after it).
const HEADING: &str = "TLS to the aggregator (https:// only)";

/// The TLS side of a connection to an `https://` aggregator. Every
/// command that flattens it has an `--aggregator` (the options mean
/// nothing without one).
#[derive(Debug, Clone, Default, Args)]
#[group(requires = "aggregator", multiple = true)]
pub struct ClientTls {
    /// CA certificate (PEM) to trust besides the system's: the CA that
    /// issued the aggregator's --tls-cert, when that is a private CA.
    #[arg(long, value_name = "FILE", help_heading = HEADING)]
    pub ca_cert: Option<PathBuf>,

    /// Certificate (PEM) to present to an aggregator started with
    /// --tls-client-ca (mutual TLS): one issued by that CA. Needs
    /// --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key", help_heading = HEADING)]
    pub client_cert: Option<PathBuf>,

    /// The private key (PEM) of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert", help_heading = HEADING)]
    pub client_key: Option<PathBuf>,
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read {flag} {}: {e}", path.display()))
}

/// The HTTP client for an aggregator: `tls.ca_cert` trusted besides the
/// system's CAs, the client certificate presented when the server asks
/// for one, connections given up after `connect`, whole requests after
/// `total` (none: a stream such as `tail -f` may last).
pub fn http_client(
    tls: &ClientTls,
    connect: Duration,
    total: Option<Duration>,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().connect_timeout(connect);
    if let Some(t) = total {
        builder = builder.timeout(t);
    }
    if let Some(ca) = &tls.ca_cert {
        let pem = read(ca, "--ca-cert")?;
        // A file without a certificate would add no root and fail only at
        // the handshake, as an untrusted server; checked here so the wrong
        // file is named at start.
        let n = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("--ca-cert {} is not PEM: {e}", ca.display()))?
            .len();
        if n == 0 {
            bail!(
                "--ca-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ca.display()
            );
        }
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-cert {}", ca.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert, "--client-cert")?;
            let key_pem = read(key, "--client-key")?;
            if CertificateDer::pem_slice_iter(&pem).next().is_none() {
                bail!(
                    "--client-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    cert.display()
                );
            }
            if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                bail!(
                    "--client-key {} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
                    key.display()
                );
            }
            pem.push(b'\n');
            pem.extend(key_pem);
            let id = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "--client-cert {} and --client-key {}",
                    cert.display(),
                    key.display()
                )
            })?;
            builder = builder.identity(id);
        }
        (None, None) => {}
        // clap's `requires` keeps these apart; a config built in code may not.
        (Some(_), None) => bail!("--client-cert needs --client-key (its private key)"),
        (None, Some(_)) => bail!("--client-key needs --client-cert (its certificate)"),
    }
    builder.build().map_err(|e| {
        if let (Some(rustls::Error::InconsistentKeys(_)), Some(cert), Some(key)) =
            (rustls_error(&e), &tls.client_cert, &tls.client_key)
        {
            return anyhow!(
                "--client-key {} is not the private key of --client-cert {}",
                key.display(),
                cert.display()
            );
        }
        let mut msg = format!("setting up the HTTP client: {e}");
        let mut cause = e.source();
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        if tls.client_cert.is_some() {
            msg.push_str(" (do --client-cert and --client-key belong together?)");
        }
        anyhow!(msg)
    })
}

/// The rustls error somewhere in an error's chain. `io::Error` hides its
/// payload from `source()` (it returns the payload's source), so the walk
/// steps into the payload itself.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(payload) => Some(payload as &(dyn std::error::Error + 'static)),
                None => c.source(),
            },
            None => c.source(),
        };
    }
    None
}

/// A sentence naming what rustls reported and its fix (`url`: the
/// aggregator as the user gave it).
fn sentence(err: &rustls::Error, url: &str, tls: &ClientTls) -> String {
    match err {
        // TLS 1.3: the server asked for a certificate and got none.
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "the aggregator at {url} requires a client certificate (it runs with \
             --tls-client-ca): give --client-cert FILE --client-key FILE, a certificate \
             issued by that CA and its key"
        ),
        // What a server sends when it does not accept the certificate
        // presented (rustls: UnknownCA for another CA's, DecryptError for
        // one signed by another CA of the same name; TLS 1.2 servers
        // often HandshakeFailure for a missing one).
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::DecryptError
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure),
        ) => match &tls.client_cert {
            Some(cert) => format!(
                "the aggregator at {url} refused the client certificate {} ({alert:?}): give \
                 --client-cert a certificate issued by the CA of the aggregator's \
                 --tls-client-ca, not expired, with its --client-key",
                cert.display()
            ),
            None => format!(
                "the TLS handshake with the aggregator at {url} failed ({alert:?}); if it \
                 requires client certificates (--tls-client-ca), give --client-cert FILE \
                 --client-key FILE"
            ),
        },
        rustls::Error::InvalidCertificate(cert_err) => {
            let hint = match (cert_err, &tls.ca_cert) {
                // BadSignature: a CA of the same name (one made anew, say)
                // that did not sign it.
                (
                    rustls::CertificateError::UnknownIssuer
                    | rustls::CertificateError::BadSignature,
                    Some(ca),
                ) => format!(
                    "--ca-cert {} is not the CA that issued it; give that one",
                    ca.display()
                ),
                (
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                    _,
                ) => "it is not issued for this host name: use a name or address of its \
                      subjectAltName in the URL"
                    .to_owned(),
                _ => "give --ca-cert CA.pem for a private CA".to_owned(),
            };
            format!(
                "the aggregator at {url} presented a TLS certificate this client does not \
                 trust: {err} ({hint})"
            )
        }
        rustls::Error::InvalidMessage(_) => format!(
            "the aggregator at {url} does not answer in TLS ({err}): use http:// if it was \
             started without --tls-cert"
        ),
        other => format!("the TLS handshake with the aggregator at {url} failed: {other}"),
    }
}

/// A sentence naming the TLS problem behind `e` and its fix, when TLS is
/// what failed (`url`: the aggregator as the user gave it).
///
/// In TLS 1.3 the server judges the client's certificate only after the
/// client has finished its handshake, so its refusal (an alert) may
/// arrive while hyper is still handing over the request; hyper then
/// reports a connection that closed or "was not ready", and the alert
/// is lost. For such an error on https:// one more handshake, made only
/// to read what the server says ([`server_verdict`]), tells.
pub async fn tls_problem(e: &reqwest::Error, url: &str, tls: &ClientTls) -> Option<String> {
    let url = url.trim_end_matches('/');
    if let Some(err) = rustls_error(e) {
        return Some(sentence(err, url, tls));
    }
    // Not a refusal after the handshake: the connection (and with it the
    // handshake) failed, the server was slow, or it answered.
    if e.is_connect() || e.is_timeout() || e.is_status() || e.is_decode() || e.is_builder() {
        return None;
    }
    let alert = server_verdict(url, tls).await?;
    Some(sentence(&alert, url, tls))
}

/// The alert an https:// server sends right after a handshake with this
/// client's certificate (or none), if any. Nothing is sent over the
/// connection: no token, no request. (reqwest does not surface the alert
/// here and offers no hook into its connection, hence tokio-rustls.)
async fn server_verdict(url: &str, tls: &ClientTls) -> Option<rustls::Error> {
    use tokio::io::AsyncReadExt as _;

    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "https" {
        return None;
    }
    let host = parsed.host_str()?;
    let port = parsed.port_or_known_default()?;
    // The server is checked as reqwest checks it: the platform's roots
    // and --ca-cert (the request got past this check already).
    let extra_roots = match &tls.ca_cert {
        Some(ca) => CertificateDer::pem_file_iter(ca)
            .ok()?
            .collect::<Result<Vec<_>, _>>()
            .ok()?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .ok()?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .ok()?
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_file(key).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .ok()?
        .to_owned();
    let alert_of = |e: std::io::Error| -> Option<rustls::Error> {
        match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            a @ rustls::Error::AlertReceived(_) => Some(a.clone()),
            _ => None,
        }
    };
    // Ok(stream): the handshake went through; Err(alert or not).
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|_| None)?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(alert_of)
    };
    let mut stream = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(alert)) => return alert,
        Err(_) => return None,
    };
    // A server that refuses the certificate says so at once; one that
    // takes it waits for a request, which never comes.
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
        Ok(Err(e)) => alert_of(e),
        _ => None,
    }
}

/// A request to the aggregator at `url` that got no answer, in the user's
/// terms: the TLS problem and its fix, an aggregator that is down or too
/// slow, else the error itself.
pub async fn transport_error(e: reqwest::Error, url: &str, tls: &ClientTls) -> anyhow::Error {
    let url = url.trim_end_matches('/');
    if let Some(msg) = tls_problem(&e, url, tls).await {
        anyhow!(msg)
    } else if e.is_connect() {
        anyhow!("cannot reach the aggregator at {url} (is `tracer aggregator` running?)")
    } else if e.is_timeout() {
        anyhow!("the aggregator at {url} did not answer in time")
    } else if url.starts_with("http://") && e.is_request() {
        // A TLS listener drops a plain HTTP request without an answer.
        anyhow::Error::new(e).context(format!(
            "talking to the aggregator at {url} (if it was started with --tls-cert, use \
             https://)"
        ))
    } else {
        anyhow::Error::new(e).context(format!("talking to the aggregator at {url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named_with_their_flag() {
        let tls = ClientTls {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = http_client(&tls, Duration::from_secs(1), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read --ca-cert /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        let tls = ClientTls {
            ca_cert: None,
            client_cert: Some("/nonexistent/c.pem".into()),
            client_key: Some("/nonexistent/c.key".into()),
        };
        let e = http_client(&tls, Duration::from_secs(1), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read --client-cert /nonexistent/c.pem: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let dir = std::env::temp_dir().join(format!("tracer-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let tls = ClientTls {
            ca_cert: Some(junk.clone()),
            ..Default::default()
        };
        let e = http_client(&tls, Duration::from_secs(1), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--ca-cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                junk.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_rustls_reports_becomes_the_fix() {
        let url = "https://agg:7878";
        let none = ClientTls::default();
        let with_cert = ClientTls {
            ca_cert: Some("ca.pem".into()),
            client_cert: Some("me.pem".into()),
            client_key: Some("me.key".into()),
        };
        let alert = |a| rustls::Error::AlertReceived(a);
        assert_eq!(
            sentence(&alert(AlertDescription::CertificateRequired), url, &none),
            "the aggregator at https://agg:7878 requires a client certificate (it runs with \
             --tls-client-ca): give --client-cert FILE --client-key FILE, a certificate \
             issued by that CA and its key"
        );
        assert_eq!(
            sentence(
                &alert(AlertDescription::CertificateExpired),
                url,
                &with_cert
            ),
            "the aggregator at https://agg:7878 refused the client certificate me.pem \
             (CertificateExpired): give --client-cert a certificate issued by the CA of the \
             aggregator's --tls-client-ca, not expired, with its --client-key"
        );
        assert_eq!(
            sentence(&alert(AlertDescription::HandshakeFailure), url, &none),
            "the TLS handshake with the aggregator at https://agg:7878 failed \
             (HandshakeFailure); if it requires client certificates (--tls-client-ca), give \
             --client-cert FILE --client-key FILE"
        );
        let bad_name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert_eq!(
            sentence(&bad_name, url, &with_cert),
            "the aggregator at https://agg:7878 presented a TLS certificate this client does \
             not trust: invalid peer certificate: NotValidForName (it is not issued for this \
             host name: use a name or address of its subjectAltName in the URL)"
        );
    }

    #[test]
    fn no_options_is_plain_reqwest() {
        assert!(http_client(&ClientTls::default(), Duration::from_secs(1), None).is_ok());
    }
}
