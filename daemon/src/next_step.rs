//! What a person can do next, as data.
//!
//! The daemon never words a command line: an error (`error.rs`) or a
//! doctor finding (`oauth/doctor.rs`) carries a [`NextStep`], and each
//! client renders it in its own words, once (the CLI and the proxy as
//! `mcpauthctl ...`). It crosses the wire as `mcpauth.v1.NextStep`, in a
//! failed call's status details (`ErrorDetail`) or beside a doctor step.

/// A step a person can take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Log in to this server.
    Login { server: String },
    /// Log in at this identity provider (one login serves every server
    /// that uses it).
    LoginAtIdp { idp: String },
    /// Log in with a device code (the browser flow is not offered).
    LoginWithDevice { server: String },
    /// Log in giving the challenge a tool call met.
    LoginWithChallenge { server: String },
    /// Look at the server configured under this name, or remove it first.
    ShowOrRemove { server: String },
    /// Ask for a token: none needs a login.
    GetToken { server: String },
    /// Register a client with the server's operator and configure its
    /// id (for this server, when known).
    SetClientId { server: Option<String> },
    /// Stop the daemon that answered (another version), then retry.
    StopDaemon,
}
