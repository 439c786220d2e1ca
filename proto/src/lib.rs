//! The wire contract of the mcpauth broker and the conventions every client
//! shares with the daemon.
//!
//! - [`v1`]: code generated from `mcpauth/v1/broker.proto` (package
//!   `mcpauth.v1`). In the daemon only its RPC layer uses it (domain code
//!   converts to and from these types at that edge); in `mcpauthctl` the
//!   client library makes the calls and the commands render the replies.
//! - [`PROTOCOL`] and [`PROTOCOL_METADATA`]: the handshake.
//! - [`paths`]: where the socket, the state and the config live by default.
//! - [`challenge`]: the `WWW-Authenticate` grammar, which the daemon and
//!   the proxy read alike.
//! - [`env`]: the environment variables the tools read.

pub mod challenge;
pub mod paths;

/// Generated gRPC types and stubs for `mcpauth.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("mcpauth.v1");
}

/// The protocol number. Bumped on any incompatible change of the contract;
/// reported by `Status` and sent by clients in [`PROTOCOL_METADATA`].
/// 2: `TokenReply` names the server URL its token was issued for, and
/// clients refuse to send it anywhere else.
pub const PROTOCOL: u32 = 2;

/// The command people run: what a daemon-side rendering of a next step
/// (a desktop notification) names. Everything the daemon says otherwise
/// carries the next step as data (`ErrorDetail`), for clients to word.
pub const CLI: &str = "mcpauthctl";

/// Request metadata key carrying the client's [`PROTOCOL`].
pub const PROTOCOL_METADATA: &str = "mcpauth-protocol";

/// Environment variables read by `mcpauthd` and `mcpauthctl`.
///
/// Claude Code strips variables whose names contain TOKEN, SECRET, PASSWORD,
/// KEY or AUTH from the helper processes it starts (`headersHelper`), so no
/// name here may contain one of those words. That rules out an `MCPAUTH_`
/// prefix; the tools use `MCP_BROKER_` instead.
pub mod env {
    /// Path of the daemon's Unix socket.
    pub const SOCKET: &str = "MCP_BROKER_SOCKET";
    /// Directory of the daemon's persistent state.
    pub const STATE_DIR: &str = "MCP_BROKER_STATE_DIR";
    /// Path of `config.toml`.
    pub const CONFIG: &str = "MCP_BROKER_CONFIG";
    /// Log filter directive (`RUST_LOG` syntax); `RUST_LOG` is the fallback.
    pub const LOG: &str = "MCP_BROKER_LOG";
    /// `human` (default) or `json`.
    pub const LOG_FORMAT: &str = "MCP_BROKER_LOG_FORMAT";
    /// Path of the `mcpauthd` binary the CLI starts on demand.
    pub const DAEMON_BIN: &str = "MCP_BROKER_DAEMON";

    /// A program the daemon runs to notify the person (arguments: title,
    /// body) instead of the desktop's notification service.
    pub const NOTIFIER: &str = "MCP_BROKER_NOTIFIER";
    /// For tests only: how long (ms) `mcpauthctl proxy` waits for the
    /// response headers when it opens a stream or a session, instead of
    /// its 30 s.
    pub const PROXY_OPEN_MS: &str = "MCP_BROKER_TEST_PROXY_OPEN_MS";

    /// Every variable above, for the naming check.
    pub const ALL: &[&str] = &[
        SOCKET,
        STATE_DIR,
        CONFIG,
        LOG,
        LOG_FORMAT,
        DAEMON_BIN,
        NOTIFIER,
        PROXY_OPEN_MS,
    ];

    /// The words Claude Code filters out of helper environments.
    pub const STRIPPED_WORDS: &[&str] = &["TOKEN", "SECRET", "PASSWORD", "KEY", "AUTH"];
}

#[cfg(test)]
mod tests {
    use super::env;

    #[test]
    fn no_environment_variable_is_stripped_by_claude_code() {
        for name in env::ALL {
            for word in env::STRIPPED_WORDS {
                assert!(
                    !name.to_ascii_uppercase().contains(word),
                    "{name} contains {word}; Claude Code would strip it"
                );
            }
        }
    }
}
