//! `car-test-agent`: a registered agent for the end-to-end tests of supervision
//! (PROTOCOL.md §12). It does what its first argument says:
//! - `serve`: reads `CAR_AGENT_ID`, `CAR_AGENT_TOKEN` and `CAR_SERVER_URL`, authenticates
//!   with its own token, prints what it saw (stdout) and a line on stderr, then stays
//!   connected until it is signalled, answering chats (PROTOCOL.md §13): it acknowledges
//!   `agent.chat`, streams each word of the prompt as a `token` event and ends with
//!   `done` (its `text` the prompt), and notes each `agent.chat.cancel` on stderr;
//! - `crash`: prints a line on stderr and exits with code 3 at once;
//! - `exit0`: prints a line and exits with code 0.

use std::io::Write;
use std::net::SocketAddr;

use car_tests::Client;
use serde_json::json;

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "crash" => {
            eprintln!("crashing on purpose");
            std::process::ExitCode::from(3)
        }
        "exit0" => {
            println!("done");
            std::process::ExitCode::SUCCESS
        }
        "serve" => serve().await,
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn serve() -> std::process::ExitCode {
    let (id, token, url) = (
        env("CAR_AGENT_ID"),
        env("CAR_AGENT_TOKEN"),
        env("CAR_SERVER_URL"),
    );
    println!(
        "env daemon_url_same={} auth_token={} extra={}",
        env("CAR_DAEMON_URL") == url,
        if std::env::var_os("CAR_AUTH_TOKEN").is_some() {
            "set"
        } else {
            "unset"
        },
        env("EXTRA"),
    );
    let addr: Option<SocketAddr> = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.trim_end_matches('/').parse().ok());
    let Some(addr) = addr else {
        eprintln!("bad CAR_SERVER_URL {url:?}");
        return std::process::ExitCode::from(2);
    };
    let mut client = match Client::connect(addr).await {
        Ok(client) => client,
        Err(err) => {
            eprintln!("connect failed: {err}");
            return std::process::ExitCode::from(4);
        }
    };
    match client
        .call("session.auth", json!({"token": token, "agent_id": id}))
        .await
    {
        Ok(result) => println!("authenticated {} {}", result["role"], result["agent_id"]),
        Err(err) => {
            eprintln!("auth failed: {}", err.message);
            return std::process::ExitCode::from(5);
        }
    }
    eprintln!("serving");
    let _ = std::io::stdout().flush();
    // Connected until signalled, or until the daemon closes the connection. (A quiet
    // stretch only makes `next_frame` give up waiting: read on.)
    loop {
        match client.next_frame().await {
            Ok(car_tests::Frame::Closed(_)) => return std::process::ExitCode::from(6),
            Ok(car_tests::Frame::Json(message)) => {
                if chat(&mut client, &message).await.is_err() {
                    return std::process::ExitCode::from(6);
                }
            }
            Ok(_) => {}
            Err(err) if err.to_string().starts_with("no frame within") => {}
            Err(_) => return std::process::ExitCode::from(6),
        }
    }
}

/// Answers one message of the chat relay, if it is one.
async fn chat(client: &mut Client, message: &serde_json::Value) -> anyhow::Result<()> {
    let params = &message["params"];
    match message["method"].as_str() {
        Some("agent.chat") => {
            let session_id = params["session_id"].clone();
            let prompt = params["prompt"].as_str().unwrap_or_default().to_owned();
            client
                .send_json(
                    &json!({"jsonrpc": "2.0", "id": message["id"], "result": {"accepted": true}}),
                )
                .await?;
            for word in prompt.split_whitespace() {
                client
                    .notify(
                        "agent.chat.event",
                        json!({"session_id": session_id, "kind": "token", "text": word}),
                    )
                    .await?;
            }
            client
                .notify(
                    "agent.chat.event",
                    json!({"session_id": session_id, "kind": "done", "finish_reason": "stop", "text": prompt}),
                )
                .await?;
        }
        Some("agent.chat.cancel") => eprintln!("chat cancelled {}", params["session_id"]),
        _ => {}
    }
    Ok(())
}
