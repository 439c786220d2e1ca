//! The broker's token for the proxy's server, held in memory: asked for
//! again near its expiry, reported when the server rejects it (one
//! report for all the requests that met the same rejection), and taken
//! only when the broker says it was issued for the proxy's URL.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use mcpauth_client::{Client, ClientError, ConnectOptions, exit, pb};
use tokio::sync::Mutex;

use super::{LOGIN_REQUIRED, UPSTREAM_FAILED, problem};

/// How long the broker may take to hand out a token.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Ask the broker again when the held token has less than this left.
const RENEW_MARGIN_MS: i64 = 60_000;

/// Why no token could be had. The message is the line to say.
#[derive(Debug, thiserror::Error)]
pub(super) enum TokenError {
    /// A person must act (login, step-up): the message says how.
    #[error("{0}")]
    Person(String),
    /// The broker or the AS is in trouble.
    #[error("{0}")]
    Other(String),
    /// The broker's token is for another URL than this proxy's (the
    /// server's URL changed in config.toml): it is never sent here, and
    /// the session ends.
    #[error("{0}")]
    Moved(String),
}

impl TokenError {
    /// The JSON-RPC error code and message for a request it fails.
    pub(super) fn rpc_error(&self) -> (i64, String) {
        match self {
            TokenError::Person(m) => (LOGIN_REQUIRED, m.clone()),
            TokenError::Other(m) | TokenError::Moved(m) => (UPSTREAM_FAILED, m.clone()),
        }
    }

    fn no_answer() -> Self {
        TokenError::Other("mcpauth: the broker did not answer".into())
    }
}

/// A token and its expiry (Unix ms, 0 when unknown).
type Held = Option<(String, i64)>;

/// The broker's token for one server, held in memory.
pub(super) struct Tokens {
    name: String,
    /// The URL requests go to: a token is taken only if the broker says it
    /// was issued for this URL.
    target: url::Url,
    /// Told when the proxy must end although the host has not closed
    /// stdin: the server's URL changed.
    pub(super) ended: tokio::sync::Notify,
    /// Set once the server's URL changed (said once, as the proxy ends).
    pub(super) moved: AtomicBool,
    opts: ConnectOptions,
    /// The daemon connection and the token held. One lock: a recovery is
    /// one critical section.
    state: Mutex<(Option<Client>, Held)>,
}

/// What the broker answered within `TOKEN_TIMEOUT`, or that it did not.
type Reply = Result<Result<pb::TokenReply, ClientError>, tokio::time::error::Elapsed>;

impl Tokens {
    /// The tokens of server `name` at `target`, asked of the daemon over
    /// `client` (connected again with `opts` when it goes away).
    pub(super) fn new(
        name: String,
        target: url::Url,
        opts: ConnectOptions,
        client: Client,
    ) -> Self {
        Self {
            name,
            target,
            ended: Default::default(),
            moved: Default::default(),
            opts,
            state: Mutex::new((Some(client), None)),
        }
    }

    fn classify(&self, e: ClientError) -> TokenError {
        let name = &self.name;
        if e.exit_code() == exit::LOGIN_REQUIRED {
            // The next step is said once: the daemon's, else ours.
            let next = match e.hint().filter(|_| e.next_step().is_some()) {
                Some(step) => step,
                None => format!("run `mcpauthctl login {name}`"),
            };
            TokenError::Person(format!("mcpauth: {e}; {next}, then retry"))
        } else {
            TokenError::Other(format!("mcpauth: no token for {name}: {e}"))
        }
    }

    /// A token from the broker, if it was issued for this proxy's URL.
    fn for_target(&self, reply: pb::TokenReply) -> Result<(String, i64), TokenError> {
        if mcpauth_client::same_server_url(&reply.server_url, self.target.as_str()) {
            return Ok((reply.access_token, reply.expires_at_unix_ms));
        }
        let text = format!(
            "mcpauth: {} is now configured for {}, not {} where this session runs, so its token is not sent here; restart this MCP server in the host",
            self.name,
            mcpauth_client::display_url(&reply.server_url),
            mcpauth_client::display_url(self.target.as_str()),
        );
        // Said once; the session ends.
        if !self.moved.swap(true, SeqCst) {
            problem(&self.name, &text);
            self.ended.notify_one();
        }
        Err(TokenError::Moved(text))
    }

    async fn client<'a>(&self, slot: &'a mut Option<Client>) -> Result<&'a mut Client, TokenError> {
        if slot.is_none() {
            let client = tokio::time::timeout(TOKEN_TIMEOUT, mcpauth_client::connect(&self.opts))
                .await
                .map_err(|_| TokenError::no_answer())?
                .map_err(|e| self.classify(e))?;
            *slot = Some(client);
        }
        Ok(slot.as_mut().expect("just set"))
    }

    /// Takes the broker's reply: the token is held, or the failure
    /// classified; a connection that broke or hung is dropped, to be
    /// made again next time.
    fn settle(
        &self,
        reply: Reply,
        slot: &mut Option<Client>,
        held: &mut Held,
    ) -> Result<String, TokenError> {
        match reply {
            Ok(Ok(reply)) => {
                let (token, expires) = self.for_target(reply)?;
                *held = Some((token.clone(), expires));
                Ok(token)
            }
            Ok(Err(e)) => {
                if e.exit_code() == exit::UNREACHABLE {
                    *slot = None;
                }
                *held = None;
                Err(self.classify(e))
            }
            Err(_) => {
                *slot = None;
                Err(TokenError::no_answer())
            }
        }
    }

    /// The token to send now.
    pub(super) async fn current(&self) -> Result<String, TokenError> {
        let mut state = self.state.lock().await;
        if let Some((token, expires)) = &state.1
            && (*expires == 0 || expires - now_ms() > RENEW_MARGIN_MS)
        {
            return Ok(token.clone());
        }
        let (slot, held) = &mut *state;
        let client = self.client(slot).await?;
        let reply = tokio::time::timeout(TOKEN_TIMEOUT, client.get_token(&self.name, None)).await;
        self.settle(reply, slot, held)
    }

    /// The server rejected `token`: report it once, and get what replaces
    /// it. A request that finds the token already replaced by another's
    /// recovery takes the new one without reporting again.
    pub(super) async fn rejected(
        &self,
        token: &str,
        status: u16,
        www: &str,
    ) -> Result<String, TokenError> {
        let mut state = self.state.lock().await;
        if let Some((held, _)) = &state.1
            && held != token
        {
            return Ok(held.clone());
        }
        let (slot, held) = &mut *state;
        let client = self.client(slot).await?;
        let reply = tokio::time::timeout(
            TOKEN_TIMEOUT,
            client.report_unauthorized(&self.name, token, u32::from(status), www),
        )
        .await;
        *held = None;
        self.settle(reply, slot, held)
    }
}

fn now_ms() -> i64 {
    crate::output::now_ms()
}
