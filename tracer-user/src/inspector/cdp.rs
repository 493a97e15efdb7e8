//! A minimal Chrome DevTools Protocol client over node's inspector
//! websocket (tokio-tungstenite): send a command, wait for the response
//! with its id, ignore notifications.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// A CDP command node answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("inspector error {code}: {message}")]
pub struct CdpError {
    pub code: i64,
    pub message: String,
}

pub struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// Where to connect for a listening address (a wildcard means loopback).
pub fn connect_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    }
}

/// The websocket URL of the inspector at addr:port (`GET /json/list`).
pub async fn debugger_url(addr: IpAddr, port: u16) -> Result<String> {
    let host = match connect_addr(addr) {
        IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    let url = format!("http://{host}:{port}/json/list");
    // Built here, on the thread that runs the operation: its sockets are
    // made in that thread's network namespace.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .context("building an HTTP client")?;
    let list: Value = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not an inspector's answer"))?;
    list.as_array()
        .and_then(|a| a.first())
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("GET {url}: no webSocketDebuggerUrl in {list}"))
}

impl Cdp {
    pub async fn connect(ws_url: &str) -> Result<Cdp> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .with_context(|| format!("connecting to the inspector at {ws_url}"))?;
        Ok(Cdp { ws, next_id: 1 })
    }

    /// Sends `method` and waits for its answer. Dropping the future (a
    /// cancelled wait) is safe: a late answer carries an id nobody waits
    /// for and is skipped by the next call.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .with_context(|| format!("sending {method} to the inspector"))?;
        loop {
            let Some(frame) = self.ws.next().await else {
                bail!("the inspector closed the connection before answering {method}");
            };
            let frame = frame.with_context(|| format!("reading the answer to {method}"))?;
            let text = match frame {
                Message::Text(t) => t,
                Message::Close(_) => {
                    bail!("the inspector closed the connection before answering {method}")
                }
                _ => continue,
            };
            let v: Value = serde_json::from_str(text.as_str())
                .with_context(|| format!("the inspector sent invalid JSON: {text}"))?;
            if v["id"].as_u64() != Some(id) {
                continue; // a notification, or the answer to a cancelled call
            }
            if let Some(err) = v.get("error") {
                return Err(CdpError {
                    code: err["code"].as_i64().unwrap_or(0),
                    message: err["message"].as_str().unwrap_or("?").to_owned(),
                }
                .into());
            }
            return Ok(v["result"].clone());
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The text of a `Runtime.evaluate` exception (`exceptionDetails`).
pub fn exception_text(details: &Value) -> String {
    details["exception"]["description"]
        .as_str()
        .or_else(|| details["exception"]["value"].as_str())
        .or_else(|| details["text"].as_str())
        .unwrap_or("exception")
        .to_owned()
}
