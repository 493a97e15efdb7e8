//! `cargo xtask bench tls`: what TLS plaintext capture costs an https node
//! server: nothing attached vs tracer's HTTP family (uprobes on node's own
//! SSL_write/SSL_read) vs all probes vs bpftrace on the same functions.

use std::process::Command;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use super::{
    bpftrace,
    harness::{self, Bench, RoundArgs, Server, Tool},
};
use crate::{
    cmd,
    node::{Script, Scripts},
};

const HTTPS_SERVER: Script = Script {
    name: "bench-https-server.js",
    source: include_str!("https-server.js"),
};

#[derive(Args)]
pub struct TlsArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Configurations to measure, comma-separated (`base` is always measured:
    /// the ratios need it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "base,http,full,bpftrace"
    )]
    configs: Vec<Config>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Config {
    /// Nothing attached.
    Base,
    /// `tracer attach --pid P --probes tcp,http`: TLS plaintext from uprobes
    /// on SSL_write and SSL_read (entry and return).
    Http,
    /// The same with `--http-capture syscalls`: the syscall tracepoints
    /// note which socket each thread read or wrote (the `SSL *` binding).
    HttpSyscalls,
    /// `tracer attach --pid P` (every probe family).
    Full,
    /// bpftrace counting uprobe hits on SSL_write and SSL_read (entry and
    /// return).
    Bpftrace,
}

impl Config {
    fn harness(self) -> harness::Config {
        let (name, description, tool, traces_http) = match self {
            Config::Base => return harness::Config::base(),
            Config::Http => (
                "http",
                "tracer attach --probes tcp,http (TLS plaintext via uprobes)",
                Tool::Attach(&["--probes", "tcp,http"]),
                true,
            ),
            Config::HttpSyscalls => (
                "http-syscalls",
                "tracer attach --probes tcp,http --http-capture syscalls",
                Tool::Attach(&["--probes", "tcp,http", "--http-capture", "syscalls"]),
                true,
            ),
            Config::Full => ("full", "tracer attach, all probes", Tool::Attach(&[]), true),
            Config::Bpftrace => (
                "bpftrace",
                "bpftrace -p: uprobe SSL_write, uprobe + uretprobe SSL_read, counting",
                Tool::Bpftrace {
                    script: bpftrace::tls_script,
                    must_fire: "@ssl_write_calls",
                },
                false,
            ),
        };
        harness::Config {
            name,
            description: description.into(),
            tool,
            traces_http,
        }
    }
}

const NOTES: &str = "\
Each request costs node one SSL_write and about two SSL_read calls (the \
second returns WANT_READ), so tracer's TLS capture takes about four uprobe \
traps per request; the bpftrace row is the price of those traps alone, \
counting and nothing else. tracer's `http` row also pays the syscall \
tracepoints the HTTP family always enables (on a TLS connection they only \
note which socket the thread used; the ciphertext is not copied). \
`tool CPU` is the attached process's own CPU time during the load \
(the BPF programs run in the server's context and show up in req/s); \
`HTTP seen` is HTTP events reported over requests wrk completed.";

pub fn run(args: &TlsArgs) -> Result<()> {
    cmd::require_programs(&[("openssl", "Debian package openssl")])?;
    let mut configs = vec![harness::Config::base()];
    for config in &args.configs {
        if *config != Config::Base {
            let config = config.harness();
            if !configs.iter().any(|c| c.name == config.name) {
                configs.push(config);
            }
        }
    }
    let scripts = Scripts::write(&[HTTPS_SERVER])?;
    let key = scripts.path("key.pem");
    let cert = scripts.path("cert.pem");
    cmd::output(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=localhost", "-days", "2"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )
    .context("could not generate a self-signed key and certificate")?;
    let bench = Bench {
        id: "tls",
        title: "TLS: node https server under wrk",
        configs,
        notes: NOTES.to_string(),
        verdict: |_| None,
    };
    let server = Server {
        scripts,
        script: HTTPS_SERVER,
        env: vec![("TLS_KEY", key), ("TLS_CERT", cert)],
        scheme: "https",
        about: "https with a fresh self-signed RSA-2048 certificate, `res.end('hello world')`, \
                one log line per 100 requests",
    };
    harness::run(&bench, server, &args.rounds)
}
