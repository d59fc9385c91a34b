//! The daemon's configuration: the flags and environment of PROTOCOL.md §9, §18 and §19
//! (cluster mode: which event log, and the shared tokens it needs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use car_projections::Retention;
use chrono::TimeDelta;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

use crate::http::Bind;

/// Default port (PROTOCOL.md §1).
pub const DEFAULT_PORT: u16 = 9100;
/// Default largest frame (PROTOCOL.md §1).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Default gate timeout (PROTOCOL.md §5.2).
pub const DEFAULT_APPROVAL_TIMEOUT_SECS: u64 = 60;
/// Default tool callback timeout when an action gives none (PROTOCOL.md §4.2).
pub const DEFAULT_TOOL_TIMEOUT_SECS: u64 = 300;
/// How long a connection may stay unauthenticated: a client authenticates in its first
/// round trip; strangers must not hold connection slots (of `--max-connections`) forever.
pub const DEFAULT_AUTH_TIMEOUT_MS: u64 = 30_000;
/// The dashboard's address for a daemon on `port`: `127.0.0.1:<port + 1>` (PROTOCOL.md
/// §17), loopback whatever `--listen` says; an ephemeral port for an ephemeral daemon.
pub fn dashboard_addr(port: u16) -> SocketAddr {
    let port = if port == 0 { 0 } else { port.saturating_add(1) };
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// The resume lease (PROTOCOL.md §14.2 and §18: CAR's value): long enough for an agent
/// to notice a dropped connection and reconnect, short enough that an abandoned run does
/// not look alive for long.
pub const DEFAULT_RESUME_LEASE_SECS: f64 = 10.0;
/// Default `--chat-idle-timeout` (PROTOCOL.md §13.1: 600 s): a chat whose agent says
/// nothing for this long is ended, so no caller waits forever on a silent agent.
pub const DEFAULT_CHAT_IDLE_TIMEOUT_SECS: f64 = 600.0;
/// Default `--agent-stop-grace` (PROTOCOL.md §18): 5 s for an agent to finish its work on
/// SIGTERM before SIGKILL.
pub const DEFAULT_AGENT_STOP_GRACE_SECS: f64 = 5.0;
/// Default address of the MCP endpoint (PROTOCOL.md §16, §18), whatever `--port` says.
pub const DEFAULT_MCP_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9102);
/// Default GC period (PROTOCOL.md §9).
pub const DEFAULT_GC_INTERVAL_SECS: u64 = 3600;
/// Default connection cap: far above any single host's agent count, far below what
/// would exhaust file descriptors with the usual `ulimit -n` raised for a daemon.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// The methods gated by default (PROTOCOL.md §5.2).
pub const DEFAULT_GATED_METHODS: &[&str] = &[
    "automation.run_applescript",
    "automation.run_powershell",
    "automation.shortcuts.run",
    "messages.send",
    "mail.send",
    "vision.ocr",
];

/// The stream of cluster mode unless told otherwise (PROTOCOL.md §19).
pub const DEFAULT_STREAM: &str = "CAR";

/// Default `--gateway-lease` (PROTOCOL.md §19): a dead gateway is noticed within about
/// this long; shorter risks declaring a gateway lost through a NATS leader election (its
/// longest stall measured was ~7 s), longer leaves its runs
/// hanging for longer.
pub const DEFAULT_GATEWAY_LEASE_SECS: f64 = 10.0;

/// Which event log (`--log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogKind {
    /// The embedded sled log in the data directory (§9): nothing else to run.
    Sled,
    /// A NATS JetStream stream shared by several gateways (§19).
    Jetstream,
}

/// `car-server`: the car daemon. Agents and host apps talk to it over a WebSocket
/// (JSON-RPC 2.0, CAR protocol v2); everything it is told is appended to a durable event
/// log in the data directory, and its state is rebuilt from that log at every start.
#[derive(Debug, Clone, Parser)]
#[command(name = "car-server", version)]
pub struct Cli {
    /// Address to listen on: `IP` or `IP:PORT`. Loopback by default: expose it knowingly.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9100")]
    pub listen: String,

    /// Port to listen on (replaces only the port of --listen).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,

    /// Data directory: the event log and the token files [default: $CAR_HOME, else ~/.car]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Accept every session without a token (every session may do what a host and a client may).
    #[arg(long, env = "CAR_NO_AUTH", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_auth: bool,

    /// Turn the approval gate off.
    #[arg(long, env = "CAR_NO_APPROVALS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_approvals: bool,

    /// How long a gated call waits for its approval, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_APPROVAL_TIMEOUT_SECS)]
    pub approval_timeout: u64,

    /// The gated methods and tools, comma-separated (replaces the default set).
    #[arg(long, value_name = "M,M…", value_delimiter = ',')]
    pub approval_methods: Option<Vec<String>>,

    /// How long to wait for a tool callback when the action gives no timeout_ms, in seconds.
    #[arg(long, env = "CAR_TOOL_TIMEOUT", value_name = "SECS", default_value_t = DEFAULT_TOOL_TIMEOUT_SECS)]
    pub tool_timeout: u64,

    /// Evict ended runs older than this many days.
    #[arg(long, value_name = "DAYS", default_value_t = car_projections::recovery::DEFAULT_RETENTION_DAYS)]
    pub run_retention: i64,

    /// Keep at most this many runs (the oldest ended runs beyond it are evicted).
    #[arg(long, value_name = "N", default_value_t = car_projections::recovery::DEFAULT_MAX_RUNS)]
    pub max_runs: usize,

    /// Run retention every this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_GC_INTERVAL_SECS)]
    pub gc_interval: u64,

    /// Largest WebSocket message accepted, in bytes; a larger one closes the connection (1009).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Most simultaneous connections; more are refused with HTTP 503.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// The MCP endpoint (`http://ADDR/mcp`): `IP:PORT`, or `disabled` [default: 127.0.0.1:9102;
    /// that default is skipped with a warning if taken, an address given here is not]
    #[arg(long, env = "CAR_MCP_BIND", value_name = "ADDR|disabled")]
    pub mcp_bind: Option<String>,

    /// Server ping period in milliseconds (tests; the protocol's is 30 000).
    #[arg(long, hide = true, default_value_t = 30_000)]
    pub ping_interval_ms: u64,

    /// Close a peer silent this long, in milliseconds (tests; the protocol's is 90 000).
    #[arg(long, hide = true, default_value_t = 90_000)]
    pub idle_timeout_ms: u64,

    /// Grace before a departed owner's runs end, in milliseconds (tests; protocol: 250).
    #[arg(long, hide = true, default_value_t = 250)]
    pub disconnect_grace_ms: u64,

    /// No dashboard (PROTOCOL.md §17; it is on by default at 127.0.0.1:<port + 1>, or an
    /// ephemeral port when --port is 0)
    #[arg(long)]
    pub no_dashboard: bool,

    /// Seconds a run in progress waits for its agent to come back with `runs.resume` after
    /// its last owner left, when that owner negotiated `runs.resume.v1` (PROTOCOL.md §14.2;
    /// fractions allowed)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_RESUME_LEASE_SECS)]
    pub resume_lease: f64,

    /// Seconds a chat may go without an event from its agent before it is ended with an
    /// error (PROTOCOL.md §13.1; fractions allowed)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CHAT_IDLE_TIMEOUT_SECS)]
    pub chat_idle_timeout: f64,

    /// Seconds a stopping agent gets between SIGTERM and SIGKILL (PROTOCOL.md §12.3;
    /// fractions allowed)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_AGENT_STOP_GRACE_SECS)]
    pub agent_stop_grace: f64,

    /// BENCHMARKS ONLY, never in production: send `tools.execute` without waiting for
    /// its dispatch marker to be durable, so `car-bench` can measure what the markers'
    /// crash safety (PROTOCOL.md §14.5) costs side by side. A crash can then lose a
    /// marker of a call the tool already ran.
    #[arg(long, hide = true)]
    pub bench_unmarked_dispatch: bool,

    /// Close a connection that has not authenticated after this long, in milliseconds.
    #[arg(long, hide = true, default_value_t = DEFAULT_AUTH_TIMEOUT_MS)]
    pub auth_timeout_ms: u64,

    /// Most live memory facts per scope (PROTOCOL.md §11.1); `memory.add_fact` past it is
    /// refused, and `memory.load` of a larger file too.
    #[arg(long, value_name = "N", default_value_t = car_projections::memory::decide::DEFAULT_MAX_FACTS)]
    pub memory_max_facts: usize,

    /// The event log: `sled` (embedded, in the data directory) or `jetstream` (cluster mode:
    /// a NATS JetStream stream several gateways share; needs --nats and shared tokens).
    #[arg(long, env = "CAR_LOG", value_enum, default_value_t = LogKind::Sled)]
    pub log: LogKind,

    /// NATS server URLs of the cluster, comma-separated (cluster mode).
    #[arg(
        long,
        env = "CAR_NATS_URLS",
        value_name = "URL[,URL…]",
        value_delimiter = ','
    )]
    pub nats: Vec<String>,

    /// The JetStream stream holding the log (cluster mode).
    #[arg(long, env = "CAR_STREAM", value_name = "NAME", default_value = DEFAULT_STREAM)]
    pub stream: String,

    /// This gateway's name in cluster mode, as the NATS servers show it [default: gw-<random>].
    #[arg(long, env = "CAR_GATEWAY_ID", value_name = "ID")]
    pub gateway_id: Option<String>,

    /// Accept (or create) a stream with fewer than 3 replicas: for development only, since
    /// losing one NATS node may then lose acknowledged events.
    #[arg(long, action = ArgAction::SetTrue)]
    pub allow_unsafe_stream: bool,

    /// Cluster mode: seconds after its last heartbeat that a gateway is declared lost and
    /// its runs end `incomplete`/`gateway_lost` (fractions allowed)
    #[arg(long, env = "CAR_GATEWAY_LEASE", value_name = "SECS", default_value_t = DEFAULT_GATEWAY_LEASE_SECS)]
    pub gateway_lease: f64,

    /// Read the daemon token from this file instead of generating one (as CAR_AUTH_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Read the host token from this file instead of generating one (as CAR_HOST_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub host_token_file: Option<PathBuf>,
}

/// Cluster mode's settings (PROTOCOL.md §19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS URLs.
    pub nats_urls: Vec<String>,
    /// The stream's name.
    pub stream: String,
    /// This gateway's id.
    pub gateway_id: String,
    /// Whether a stream with fewer than 3 replicas is accepted.
    pub allow_unsafe_stream: bool,
    /// How long a heartbeat (and the maintenance lease) lives without renewal.
    pub gateway_lease: Duration,
}

/// Which event log the daemon runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogBackend {
    /// sled in `DATA_DIR/log` (§9).
    Sled,
    /// A JetStream stream (§19).
    JetStream(ClusterConfig),
}

/// The daemon's configuration, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Whether sessions must authenticate.
    pub auth: bool,
    /// The daemon token to use instead of a generated one (`CAR_AUTH_TOKEN`).
    pub auth_token: Option<String>,
    /// Whether the approval gate is on.
    pub approvals: bool,
    /// How long a gated call waits.
    pub approval_timeout: Duration,
    /// The gated methods and tools.
    pub approval_methods: Vec<String>,
    /// Tool callback timeout without `timeout_ms`.
    pub tool_timeout: Duration,
    /// Run retention.
    pub retention: Retention,
    /// GC period.
    pub gc_interval: Duration,
    /// Largest message.
    pub max_message_bytes: usize,
    /// Most connections.
    pub max_connections: usize,
    /// Server ping period (PROTOCOL.md §1: 30 s).
    pub ping_interval: Duration,
    /// Close a peer silent for this long (PROTOCOL.md §1: 90 s).
    pub idle_timeout: Duration,
    /// Runs left without an owner end this long after the owner leaves (§3.7: 250 ms).
    pub disconnect_grace: Duration,
    /// The same, when the owner negotiated `runs.resume.v1` (§14.2: 10 s).
    pub resume_lease: Duration,
    /// SIGTERM → SIGKILL grace of an agent stop (§12.3).
    pub agent_stop_grace: Duration,
    /// A chat without an event from its agent for this long ends (§13.1: 600 s).
    pub chat_idle_timeout: Duration,
    /// Wait for each dispatch marker to be durable before `tools.execute` is sent
    /// (§14.5). Off only for the benchmark that measures the markers' cost.
    pub durable_dispatch: bool,
    /// A connection still unauthenticated after this long is closed (1008).
    pub auth_timeout: Duration,
    /// The MCP endpoint (PROTOCOL.md §16).
    pub mcp_bind: Bind,
    /// The dashboard (PROTOCOL.md §17): loopback, port + 1, whatever `--listen` says.
    pub dashboard_bind: Bind,
    /// A request still unanswered after this long gets `-32004` (calls that wait for
    /// people or tools by design, like proposals and approvals, have their own timeouts).
    pub handler_deadline: Duration,
    /// Most live memory facts per scope (`--memory-max-facts`, PROTOCOL.md §18).
    pub memory_max_facts: usize,
    /// The host token to use instead of a generated one (`CAR_HOST_TOKEN`, or
    /// `--host-token-file`).
    pub host_token: Option<String>,
    /// The event log (`--log`, §19).
    pub log: LogBackend,
}

impl Config {
    /// The defaults, with the data directory given (for tests and embedding).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            data_dir: data_dir.into(),
            auth: true,
            auth_token: None,
            approvals: true,
            approval_timeout: Duration::from_secs(DEFAULT_APPROVAL_TIMEOUT_SECS),
            approval_methods: DEFAULT_GATED_METHODS
                .iter()
                .map(|m| (*m).to_owned())
                .collect(),
            tool_timeout: Duration::from_secs(DEFAULT_TOOL_TIMEOUT_SECS),
            retention: Retention::default(),
            gc_interval: Duration::from_secs(DEFAULT_GC_INTERVAL_SECS),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            disconnect_grace: Duration::from_millis(250),
            resume_lease: Duration::from_secs_f64(DEFAULT_RESUME_LEASE_SECS),
            agent_stop_grace: Duration::from_secs_f64(DEFAULT_AGENT_STOP_GRACE_SECS),
            chat_idle_timeout: Duration::from_secs_f64(DEFAULT_CHAT_IDLE_TIMEOUT_SECS),
            durable_dispatch: true,
            auth_timeout: Duration::from_millis(DEFAULT_AUTH_TIMEOUT_MS),
            handler_deadline: Duration::from_secs(30),
            mcp_bind: Bind::Default(DEFAULT_MCP_BIND),
            dashboard_bind: Bind::Default(dashboard_addr(DEFAULT_PORT)),
            memory_max_facts: car_projections::memory::decide::DEFAULT_MAX_FACTS,
            host_token: None,
            log: LogBackend::Sled,
        }
    }

    /// Resolves the command line and environment.
    pub fn from_cli(cli: Cli) -> Result<Self, String> {
        let mut listen = parse_listen(&cli.listen)?;
        if let Some(port) = cli.port {
            listen.set_port(port);
        }
        let data_dir = match cli.data_dir {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        if cli.run_retention < 0 {
            return Err("--run-retention must be 0 or more days".into());
        }
        if cli.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if cli.memory_max_facts == 0 {
            return Err("--memory-max-facts must be at least 1".into());
        }
        if !(cli.agent_stop_grace.is_finite()
            && cli.agent_stop_grace >= 0.0
            && cli.agent_stop_grace <= 3_600.0)
        {
            return Err("--agent-stop-grace must be 0 to 3600 seconds".into());
        }
        if !(cli.resume_lease.is_finite()
            && cli.resume_lease >= 0.0
            && cli.resume_lease <= 86_400.0)
        {
            return Err("--resume-lease must be 0 to 86400 seconds".into());
        }
        if !(cli.chat_idle_timeout.is_finite()
            && cli.chat_idle_timeout >= 0.01
            && cli.chat_idle_timeout <= 86_400.0)
        {
            return Err("--chat-idle-timeout must be 0.01 to 86400 seconds".into());
        }
        if !(cli.gateway_lease.is_finite()
            && cli.gateway_lease >= 1.0
            && cli.gateway_lease <= 3_600.0)
        {
            return Err("--gateway-lease must be 1 to 3600 seconds".into());
        }
        if cli.gc_interval == 0 {
            return Err("--gc-interval must be at least 1 second".into());
        }
        let auth_token = given_token(
            "CAR_AUTH_TOKEN",
            "--auth-token-file",
            cli.auth_token_file.as_deref(),
        )?;
        let host_token = given_token(
            "CAR_HOST_TOKEN",
            "--host-token-file",
            cli.host_token_file.as_deref(),
        )?;
        let log = match cli.log {
            LogKind::Sled => LogBackend::Sled,
            LogKind::Jetstream => {
                let nats_urls: Vec<String> = cli
                    .nats
                    .iter()
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect();
                if nats_urls.is_empty() {
                    return Err(
                        "--log jetstream needs the NATS cluster's URLs: --nats URL[,URL…] or CAR_NATS_URLS".into(),
                    );
                }
                if auth_token.is_none() || host_token.is_none() {
                    return Err("--log jetstream needs the tokens every gateway shares: set CAR_AUTH_TOKEN and CAR_HOST_TOKEN (or --auth-token-file and --host-token-file), the same on every gateway".into());
                }
                let stream = cli.stream.trim().to_owned();
                if stream.is_empty()
                    || stream
                        .chars()
                        .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
                {
                    return Err(format!(
                        "--stream {stream:?}: a stream name is non-empty, without spaces, '.', '*', '>', '/' or '\\'"
                    ));
                }
                LogBackend::JetStream(ClusterConfig {
                    nats_urls,
                    stream,
                    gateway_id: cli
                        .gateway_id
                        .map(|id| id.trim().to_owned())
                        .filter(|id| !id.is_empty())
                        .unwrap_or_else(|| {
                            format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
                        }),
                    allow_unsafe_stream: cli.allow_unsafe_stream,
                    gateway_lease: Duration::from_secs_f64(cli.gateway_lease),
                })
            }
        };
        let mut config = Self::new(data_dir);
        config.listen = listen;
        config.auth = !cli.no_auth;
        config.auth_token = auth_token;
        config.approvals = !cli.no_approvals;
        config.approval_timeout = Duration::from_secs(cli.approval_timeout);
        if let Some(methods) = cli.approval_methods {
            config.approval_methods = methods
                .into_iter()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect();
        }
        config.tool_timeout = Duration::from_secs(cli.tool_timeout);
        config.retention = Retention {
            max_age: TimeDelta::days(cli.run_retention),
            max_runs: cli.max_runs,
        };
        config.gc_interval = Duration::from_secs(cli.gc_interval);
        config.max_message_bytes = cli.max_message_bytes;
        config.max_connections = cli.max_connections;
        config.ping_interval = Duration::from_millis(cli.ping_interval_ms.max(1));
        config.idle_timeout = Duration::from_millis(cli.idle_timeout_ms.max(1));
        config.disconnect_grace = Duration::from_millis(cli.disconnect_grace_ms);
        config.resume_lease = Duration::from_secs_f64(cli.resume_lease);
        config.agent_stop_grace = Duration::from_secs_f64(cli.agent_stop_grace);
        config.chat_idle_timeout = Duration::from_secs_f64(cli.chat_idle_timeout);
        config.durable_dispatch = !cli.bench_unmarked_dispatch;
        if cli.bench_unmarked_dispatch {
            tracing::warn!(
                "--bench-unmarked-dispatch: tool calls are sent before their dispatch markers are durable (benchmarks only)"
            );
        }
        config.auth_timeout = Duration::from_millis(cli.auth_timeout_ms.max(1));
        config.mcp_bind = Bind::parse("--mcp-bind", cli.mcp_bind.as_deref(), DEFAULT_MCP_BIND)?;
        config.memory_max_facts = cli.memory_max_facts;
        config.host_token = host_token;
        config.log = log;
        config.dashboard_bind = if cli.no_dashboard {
            Bind::Disabled
        } else {
            Bind::Default(dashboard_addr(config.listen.port()))
        };
        Ok(config)
    }

    /// The directory of the event log inside the data directory.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    /// The sandbox of `memory.persist` and `memory.load` inside the data directory
    /// (PROTOCOL.md §11.2, §18: `DATA_DIR/memory/`, 0700).
    pub fn memory_dir(&self) -> PathBuf {
        self.data_dir.join("memory")
    }
}

/// A token given by variable `var` (non-blank) or read from `file` (the file wins, as a
/// flag beats its variable); `None` when neither gives one.
fn given_token(
    var: &str,
    flag: &str,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{flag} {}: the file is empty", path.display()));
        }
        return Ok(Some(token.to_owned()));
    }
    Ok(std::env::var(var)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let host = text.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| format!("--listen {text:?}: expected IP or IP:PORT"))
}

/// `$CAR_HOME`, else `~/.car`.
pub fn default_data_dir() -> Result<PathBuf, String> {
    if let Some(home) = std::env::var_os("CAR_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    std::env::home_dir()
        .map(|home| home.join(".car"))
        .ok_or_else(|| "no home directory: give --data-dir or set CAR_HOME".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_ip_or_an_address_and_port_replaces_only_the_port() {
        let cli = Cli::parse_from(["car-server", "--listen", "0.0.0.0", "--data-dir", "/x"]);
        assert_eq!(
            Config::from_cli(cli).unwrap().listen.to_string(),
            "0.0.0.0:9100"
        );
        let cli = Cli::parse_from(["car-server", "--port", "9200", "--data-dir", "/x"]);
        assert_eq!(
            Config::from_cli(cli).unwrap().listen.to_string(),
            "127.0.0.1:9200"
        );
        let cli = Cli::parse_from(["car-server", "--listen", "[::1]:1234", "--data-dir", "/x"]);
        assert_eq!(
            Config::from_cli(cli).unwrap().listen.to_string(),
            "[::1]:1234"
        );
        let cli = Cli::parse_from(["car-server", "--listen", "nope", "--data-dir", "/x"]);
        assert!(Config::from_cli(cli).is_err());
    }

    #[test]
    fn the_dashboard_is_on_loopback_at_port_plus_one_unless_turned_off() {
        let config = |args: &[&str]| {
            let mut all = vec!["car-server", "--data-dir", "/x"];
            all.extend_from_slice(args);
            Config::from_cli(Cli::parse_from(all))
                .unwrap()
                .dashboard_bind
        };
        let at = |port| Bind::Default(SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(config(&[]), at(9101));
        assert_eq!(config(&["--listen", "0.0.0.0:7000"]), at(7001), "loopback");
        assert_eq!(config(&["--port", "0"]), at(0), "ephemeral with the daemon");
        assert_eq!(config(&["--no-dashboard"]), Bind::Disabled);
    }

    #[test]
    fn memory_max_facts_defaults_to_100000_and_must_be_positive() {
        let config = Config::from_cli(Cli::parse_from(["car-server", "--data-dir", "/x"])).unwrap();
        assert_eq!(config.memory_max_facts, 100_000);
        assert_eq!(config.memory_dir(), PathBuf::from("/x/memory"));
        let cli = Cli::parse_from(["car-server", "--memory-max-facts", "7", "--data-dir", "/x"]);
        assert_eq!(Config::from_cli(cli).unwrap().memory_max_facts, 7);
        let cli = Cli::parse_from(["car-server", "--memory-max-facts", "0", "--data-dir", "/x"]);
        assert!(Config::from_cli(cli).is_err());
    }

    #[test]
    fn mcp_bind_defaults_to_9102_and_takes_an_address_or_disabled() {
        let cli = Cli::parse_from(["car-server", "--port", "9200", "--data-dir", "/x"]);
        assert_eq!(
            Config::from_cli(cli).unwrap().mcp_bind,
            Bind::Default(DEFAULT_MCP_BIND)
        );
        let cli = Cli::parse_from(["car-server", "--mcp-bind", "disabled", "--data-dir", "/x"]);
        assert_eq!(Config::from_cli(cli).unwrap().mcp_bind, Bind::Disabled);
        let cli = Cli::parse_from([
            "car-server",
            "--mcp-bind",
            "127.0.0.1:0",
            "--data-dir",
            "/x",
        ]);
        assert_eq!(
            Config::from_cli(cli).unwrap().mcp_bind,
            Bind::Explicit("127.0.0.1:0".parse().unwrap())
        );
        let cli = Cli::parse_from(["car-server", "--mcp-bind", "9102", "--data-dir", "/x"]);
        assert!(Config::from_cli(cli).is_err());
    }

    #[test]
    fn approval_methods_replace_the_default_set() {
        let cli = Cli::parse_from([
            "car-server",
            "--approval-methods",
            "runs.start, tool:x",
            "--data-dir",
            "/x",
        ]);
        let config = Config::from_cli(cli).unwrap();
        assert_eq!(config.approval_methods, ["runs.start", "tool:x"]);
    }
}
