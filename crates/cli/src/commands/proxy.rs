//! vsock-proxy, forwarders and the attested KMS client (E5xx): subcommands, handlers and error
//! codes. The logic lives in `cloister-proxy` and `cloister_sdk::kms_client`; these handlers
//! parse arguments, build a tokio runtime, wait for SIGTERM/SIGINT and map errors to codes.

use crate::codes;
use crate::errors::{CliError, CliResult, Coded};
use clap::{Args, Subcommand};
use cloister_proxy::allowlist::{self, Allowlist, AllowlistError};
use cloister_proxy::relay::{RelayOptions, DEFAULT_BUFFER_SIZE, DEFAULT_MAX_CONNECTIONS};
use cloister_proxy::vsock_io::VsockAddr;
use cloister_proxy::{IpAddrType, ProxyConfig, ProxyError, TcpToVsock, VsockProxy, VsockToTcp};
use cloister_sdk::kms_client::{
    load_root_certificates, Credentials, Endpoint, KmsClient, KmsClientConfig, KmsClientError,
    NsmAttester, Route,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Carry connections from enclaves (a vsock port on the parent) to one allowlisted TCP
    /// destination (AWS's vsock-proxy).
    VsockProxy(VsockProxyArgs),
    /// Forward between TCP and vsock.
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// Attested KMS calls from inside an enclave (AWS's kmstool-enclave-cli): the answer is
    /// sealed to a fresh key whose public half the NSM attests.
    #[command(subcommand)]
    KmsClient(KmsClientCommand),
}

/// `cloister kms-client ...`.
#[derive(Debug, Subcommand)]
pub enum KmsClientCommand {
    /// Decrypt a ciphertext blob; prints `PLAINTEXT: <base64>`.
    Decrypt(KmsDecryptArgs),
    /// Generate a data key; prints `CIPHERTEXT: <base64>` and `PLAINTEXT: <base64>`.
    #[command(alias = "genkey")]
    GenerateDataKey(KmsGenKeyArgs),
    /// Generate random bytes; prints `RANDOM: <base64>`.
    #[command(alias = "genrandom")]
    GenerateRandom(KmsRandomArgs),
}

/// Options shared by every kms-client call.
#[derive(Debug, Args)]
pub struct KmsCommon {
    /// AWS region (SigV4 scope; the endpoint is https://kms.<region>.amazonaws.com unless
    /// --endpoint is given).
    #[arg(long)]
    pub region: String,
    /// vsock port of the parent's vsock-proxy.
    #[arg(long, default_value_t = 8000)]
    pub proxy_port: u32,
    /// vsock CID of the proxy (3: the parent).
    #[arg(long, default_value_t = 3)]
    pub proxy_cid: u32,
    /// Endpoint URL (http:// or https://) instead of AWS's regional one.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Extra trusted root certificates (PEM or DER) for an https endpoint.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// Access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: String,
    /// Secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: String,
    /// Session token of temporary credentials.
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub aws_session_token: Option<String>,
    /// Print JSON instead of kmstool's `NAME: value` lines.
    #[arg(long)]
    pub json: bool,
}

/// `cloister kms-client decrypt`.
#[derive(Debug, Args)]
pub struct KmsDecryptArgs {
    #[command(flatten)]
    pub common: KmsCommon,
    /// The ciphertext blob, base64.
    #[arg(long)]
    pub ciphertext: String,
    /// The key the ciphertext must be under.
    #[arg(long)]
    pub key_id: Option<String>,
    /// SYMMETRIC_DEFAULT (default) or an RSA algorithm.
    #[arg(long)]
    pub encryption_algorithm: Option<String>,
}

/// `cloister kms-client generate-data-key`.
#[derive(Debug, Args)]
pub struct KmsGenKeyArgs {
    #[command(flatten)]
    pub common: KmsCommon,
    /// The KMS key.
    #[arg(long)]
    pub key_id: String,
    /// AES-256 or AES-128.
    #[arg(long, default_value = "AES-256")]
    pub key_spec: String,
}

/// `cloister kms-client generate-random`.
#[derive(Debug, Args)]
pub struct KmsRandomArgs {
    #[command(flatten)]
    pub common: KmsCommon,
    /// Number of bytes (1..=1024).
    #[arg(long)]
    pub length: usize,
}

/// `cloister vsock-proxy`: AWS's command line.
#[derive(Debug, Args)]
pub struct VsockProxyArgs {
    /// Use IPv4 addresses only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 addresses only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Number of I/O worker threads (AWS: number of workers). Concurrent connections are
    /// limited by --max-connections, not by this.
    #[arg(short = 'w', long = "num_workers", default_value_t = 4)]
    pub num_workers: usize,
    /// YAML file listing the destinations that may be proxied.
    #[arg(long = "config", default_value = allowlist::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Maximum simultaneous connections; at the limit, new ones wait in the listen queue.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Bytes buffered per direction of each connection.
    #[arg(long, default_value_t = DEFAULT_BUFFER_SIZE)]
    pub buffer_size: usize,
    /// Seconds open connections get to finish after SIGTERM.
    #[arg(long, default_value_t = 5)]
    pub drain_timeout: u64,
    /// Local vsock port to listen on.
    pub local_port: u32,
    /// Host name or IP address of the destination.
    pub remote_addr: String,
    /// TCP port of the destination.
    pub remote_port: u16,
}

/// `cloister forward ...`.
#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Listen on TCP and carry each connection to a vsock address (inside an enclave:
    /// `--listen 127.0.0.1:8443 --cid 3 --port 8000` reaches the parent's vsock-proxy; on the
    /// host: `--listen 0.0.0.0:443 --cid 16 --port 5000` carries ingress into an enclave).
    TcpToVsock(TcpToVsockArgs),
    /// Listen on a vsock port and carry each connection to a TCP address (inside an enclave:
    /// `--vsock-port 5000 --connect 127.0.0.1:8080` reaches a server on the enclave's loopback).
    VsockToTcp(VsockToTcpArgs),
}

/// Limits shared by the forwarders.
#[derive(Debug, Args)]
pub struct ForwardLimits {
    /// Maximum simultaneous connections.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Bytes buffered per direction of each connection.
    #[arg(long, default_value_t = DEFAULT_BUFFER_SIZE)]
    pub buffer_size: usize,
    /// Seconds open connections get to finish after SIGTERM.
    #[arg(long, default_value_t = 5)]
    pub drain_timeout: u64,
}

/// `cloister forward tcp-to-vsock`.
#[derive(Debug, Args)]
pub struct TcpToVsockArgs {
    /// TCP address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Destination vsock CID (3: the parent).
    #[arg(long)]
    pub cid: u32,
    /// Destination vsock port.
    #[arg(long)]
    pub port: u32,
    #[command(flatten)]
    pub limits: ForwardLimits,
}

/// `cloister forward vsock-to-tcp`.
#[derive(Debug, Args)]
pub struct VsockToTcpArgs {
    /// vsock port to listen on.
    #[arg(long)]
    pub vsock_port: u32,
    /// Destination TCP address (an IP literal and port: no name resolution, no allowlist).
    #[arg(long)]
    pub connect: SocketAddr,
    #[command(flatten)]
    pub limits: ForwardLimits,
}

pub use crate::codes::proxy::CODES;

/// Runs one subcommand.
pub fn run(command: ProxyCommand) -> CliResult<()> {
    match command {
        ProxyCommand::VsockProxy(args) => run_vsock_proxy(args),
        ProxyCommand::Forward(ForwardCommand::TcpToVsock(args)) => run_tcp_to_vsock(args),
        ProxyCommand::Forward(ForwardCommand::VsockToTcp(args)) => run_vsock_to_tcp(args),
        ProxyCommand::KmsClient(c) => run_kms_client(c),
    }
}

fn runtime(workers: usize) -> CliResult<tokio::runtime::Runtime> {
    if workers == 0 {
        return Err(CliError::msg(
            codes::E505,
            "--num_workers must be at least 1",
        ));
    }
    if let Err(e) = cloister_proxy::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .code(codes::E506)
}

/// Completes on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

fn relay_options(
    max_connections: usize,
    buffer_size: usize,
    drain: u64,
) -> CliResult<RelayOptions> {
    let options = RelayOptions {
        max_connections,
        buffer_size,
        drain_timeout: Duration::from_secs(drain),
        ..RelayOptions::default()
    };
    options.validate().code(codes::E505)?;
    Ok(options)
}

/// Builds the proxy configuration from the command line (reads the allowlist).
pub fn proxy_config(args: &VsockProxyArgs) -> CliResult<ProxyConfig> {
    let list = Allowlist::load(&args.config).code(codes::E501)?;
    let mut config = ProxyConfig::new(args.local_port, &args.remote_addr, args.remote_port, list);
    config.ip_type = match (args.ipv4, args.ipv6) {
        (true, _) => IpAddrType::V4Only,
        (_, true) => IpAddrType::V6Only,
        _ => IpAddrType::Mixed,
    };
    config.relay = relay_options(args.max_connections, args.buffer_size, args.drain_timeout)?;
    Ok(config)
}

fn proxy_error(e: ProxyError) -> CliError {
    let code = match &e {
        ProxyError::Allowlist(AllowlistError::Resolve { .. }) => codes::E503,
        ProxyError::Allowlist(AllowlistError::NotAllowed { .. }) => codes::E502,
        ProxyError::Allowlist(_) => codes::E501,
        ProxyError::Listen { .. } => codes::E504,
        ProxyError::Relay(_) => codes::E505,
    };
    CliError::new(code, e)
}

fn run_vsock_proxy(args: VsockProxyArgs) -> CliResult<()> {
    let config = proxy_config(&args)?;
    let rt = runtime(args.num_workers)?;
    rt.block_on(async move {
        let summary = VsockProxy::new(config)
            .run(termination())
            .await
            .map_err(proxy_error)?;
        tracing::info!(?summary, "vsock-proxy stopped");
        Ok(())
    })
}

fn forward_error(e: cloister_proxy::ForwardError) -> CliError {
    let code = match &e {
        cloister_proxy::ForwardError::Relay(_) => codes::E505,
        _ => codes::E504,
    };
    CliError::new(code, e)
}

fn run_tcp_to_vsock(args: TcpToVsockArgs) -> CliResult<()> {
    let l = &args.limits;
    let options = relay_options(l.max_connections, l.buffer_size, l.drain_timeout)?;
    let rt = runtime(2)?;
    rt.block_on(async move {
        let fwd = TcpToVsock::bind(args.listen, VsockAddr::new(args.cid, args.port), options)
            .await
            .map_err(forward_error)?;
        fwd.run(termination()).await.map_err(forward_error)?;
        Ok(())
    })
}

fn run_vsock_to_tcp(args: VsockToTcpArgs) -> CliResult<()> {
    let l = &args.limits;
    let options = relay_options(l.max_connections, l.buffer_size, l.drain_timeout)?;
    let rt = runtime(2)?;
    rt.block_on(async move {
        let fwd = VsockToTcp::bind(None, args.vsock_port, args.connect, options)
            .await
            .map_err(forward_error)?;
        fwd.run(termination()).await.map_err(forward_error)?;
        Ok(())
    })
}

fn kms_error(e: KmsClientError) -> CliError {
    let code = match &e {
        KmsClientError::InvalidArgument(_) | KmsClientError::BadEndpoint(_) => codes::E510,
        KmsClientError::Attestation(_) | KmsClientError::KeyGeneration => codes::E511,
        KmsClientError::Connect(_)
        | KmsClientError::Tls { .. }
        | KmsClientError::Timeout(_)
        | KmsClientError::Http(_) => codes::E512,
        KmsClientError::Service { .. } => codes::E513,
        KmsClientError::BadResponse(_) | KmsClientError::Recipient(_) => codes::E514,
    };
    CliError::new(code, e)
}

/// Builds the client configuration from the command line.
pub fn kms_client_config(c: &KmsCommon) -> CliResult<KmsClientConfig> {
    let credentials = Credentials {
        access_key_id: c.aws_access_key_id.clone(),
        secret_access_key: zeroize::Zeroizing::new(c.aws_secret_access_key.clone()),
        session_token: c.aws_session_token.clone().map(zeroize::Zeroizing::new),
    };
    let mut config =
        KmsClientConfig::aws(&c.region, c.proxy_port, credentials).map_err(kms_error)?;
    if let Some(url) = &c.endpoint {
        config.endpoint = Endpoint::parse(url).map_err(kms_error)?;
    }
    config.route = Route::Vsock {
        cid: c.proxy_cid,
        port: c.proxy_port,
        transport: None,
    };
    if let Some(path) = &c.ca_bundle {
        config.extra_roots = load_root_certificates(path).map_err(kms_error)?;
    }
    Ok(config)
}

fn print_fields(json: bool, fields: &[(&str, &str)]) -> CliResult<()> {
    use std::io::Write;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
            .collect();
        return crate::errors::print_json(&map);
    }
    let mut out = std::io::stdout().lock();
    for (k, v) in fields {
        writeln!(out, "{}: {v}", k.to_ascii_uppercase()).code(codes::E002)?;
    }
    Ok(())
}

fn run_kms_client(command: KmsClientCommand) -> CliResult<()> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let common = match &command {
        KmsClientCommand::Decrypt(a) => &a.common,
        KmsClientCommand::GenerateDataKey(a) => &a.common,
        KmsClientCommand::GenerateRandom(a) => &a.common,
    };
    let config = kms_client_config(common)?;
    let json = common.json;
    let attester = NsmAttester::open().map_err(kms_error)?;
    let client = KmsClient::new(config, std::sync::Arc::new(attester)).map_err(kms_error)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .code(codes::E506)?;
    let none = std::collections::BTreeMap::new();
    match command {
        KmsClientCommand::Decrypt(a) => {
            let blob = b64.decode(a.ciphertext.trim()).map_err(|e| {
                CliError::new(
                    codes::E510,
                    anyhow::Error::new(e).context("--ciphertext is not base64"),
                )
            })?;
            let plaintext = rt
                .block_on(client.decrypt(
                    &blob,
                    a.key_id.as_deref(),
                    a.encryption_algorithm.as_deref(),
                    &none,
                ))
                .map_err(kms_error)?;
            let text = zeroize::Zeroizing::new(b64.encode(&*plaintext));
            print_fields(json, &[("Plaintext", text.as_str())])
        }
        KmsClientCommand::GenerateDataKey(a) => {
            let spec = match a.key_spec.to_ascii_uppercase().replace('_', "-").as_str() {
                "AES-256" => "AES_256",
                "AES-128" => "AES_128",
                other => {
                    return Err(CliError::msg(
                        codes::E510,
                        format!("unknown key spec {other:?} (AES-256 or AES-128)"),
                    ))
                }
            };
            let key = rt
                .block_on(client.generate_data_key(&a.key_id, spec, &none))
                .map_err(kms_error)?;
            let text = zeroize::Zeroizing::new(b64.encode(&*key.plaintext));
            print_fields(
                json,
                &[
                    ("Ciphertext", b64.encode(&key.ciphertext_blob).as_str()),
                    ("Plaintext", text.as_str()),
                ],
            )
        }
        KmsClientCommand::GenerateRandom(a) => {
            let random = rt
                .block_on(client.generate_random(a.length))
                .map_err(kms_error)?;
            let text = zeroize::Zeroizing::new(b64.encode(&*random));
            print_fields(json, &[("Random", text.as_str())])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::Parser;

    #[test]
    fn parses_aws_command_line() {
        let cli = Cli::try_parse_from([
            "cloister",
            "vsock-proxy",
            "-4",
            "-w",
            "8",
            "--config",
            "/tmp/a.yaml",
            "8000",
            "kms.us-east-1.amazonaws.com",
            "443",
        ])
        .unwrap();
        let crate::Command::Proxy(ProxyCommand::VsockProxy(a)) = cli.command else {
            panic!("wrong command");
        };
        assert!(a.ipv4 && !a.ipv6);
        assert_eq!(a.num_workers, 8);
        assert_eq!(a.local_port, 8000);
        assert_eq!(a.remote_port, 443);
        assert_eq!(a.config, PathBuf::from("/tmp/a.yaml"));
        assert!(
            Cli::try_parse_from(["cloister", "vsock-proxy", "-4", "-6", "1", "h", "2"]).is_err()
        );
        assert!(Cli::try_parse_from(["cloister", "vsock-proxy", "1", "h", "70000"]).is_err());
    }

    #[test]
    fn parses_forwarders() {
        let cli = Cli::try_parse_from([
            "cloister",
            "forward",
            "tcp-to-vsock",
            "--listen",
            "127.0.0.1:8443",
            "--cid",
            "3",
            "--port",
            "8000",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            crate::Command::Proxy(ProxyCommand::Forward(ForwardCommand::TcpToVsock(_)))
        ));
        assert!(Cli::try_parse_from([
            "cloister",
            "forward",
            "vsock-to-tcp",
            "--vsock-port",
            "5000",
            "--connect",
            "localhost:80"
        ])
        .is_err());
    }
}
