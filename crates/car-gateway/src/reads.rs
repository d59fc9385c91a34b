//! Reads of the log for answers and tails: off the async workers, and bounded in size.

use crate::rpc::RpcError;

/// The largest response `runs.get_trace` and `runs.subscribe` build, in bytes of turn JSON;
/// past it they stop early and the client pages on with the returned cursor. Keeps every
/// frame well under the 16 MiB that clients accept by default.
pub(crate) const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Runs a log read off the async workers.
pub(crate) async fn read_blocking<T, E>(
    read: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, RpcError>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            tracing::error!(%err, "reading the log failed");
            Err(RpcError::Internal(
                "internal error: the event log could not be read".into(),
            ))
        }
        Err(err) => {
            tracing::error!(%err, "a log read panicked");
            Err(RpcError::Internal("internal error".into()))
        }
    }
}
