//! `jobs.fetch`: the HTTP machinery, pure Rust and no database.
//!
//! The way through, in order:
//! 1. [`FetchSpec::from_json`] reads and validates what a handler asked (the
//!    executor stores the spec as jsonb; it still holds `{{secret.NAME}}`
//!    placeholders, never their values).
//! 2. [`prepare`] substitutes the function owner's secrets, adds the default
//!    headers and checks the first host against [`Policy`]; it fails with a
//!    [`Failure`] whose message shows placeholders only.
//! 3. [`Client::submit`] hands the [`PreparedRequest`] to the client's own
//!    thread; [`Client::try_recv`] returns each
//!    [`Completion`] with its [`Outcome`]: the step's value, or a [`Failure`]
//!    that is retriable or not, with an SQLSTATE ([`Failure::sqlstate`]).
//!
//! Failure codes (SQLSTATE-like, class `JB` as in `errors.rs`):
//!
//! | code    | kind                         | retried | when |
//! |---------|------------------------------|---------|------|
//! | `JB010` | [`FailureKind::Network`]     | yes     | DNS, connect, TLS or I/O error, before or while reading the response |
//! | `JB011` | [`FailureKind::Timeout`]     | yes     | the request's `timeout` ran out (connect, redirects and body included) |
//! | `JB012` | [`FailureKind::RetriableStatus`] | yes | 408, 429 or 5xx not listed in `accept`; carries `Retry-After` |
//! | `JB013` | [`FailureKind::Status`]      | no      | any other status not 2xx and not listed in `accept` |
//! | `JB014` | [`FailureKind::TooLarge`]    | no      | the (decompressed) body exceeds `jobs.fetch_max_response_size` |
//! | `JB015` | [`FailureKind::HostNotAllowed`] | no   | `jobs.fetch_allowed_hosts` does not name the host (first request or a redirect) |
//! | `JB016` | [`FailureKind::Redirect`]    | no      | more than 5 redirects, or a redirect without a usable `Location` |
//! | `JB017` | [`FailureKind::Secret`]      | no      | a placeholder names no secret of the owner, or a secret is not valid where it is used |
//! | `XX000` | [`FailureKind::Internal`]    | no      | a bug in pg_jobs (a panic while making the request) |
//!
//! A spec that does not validate is a [`SpecError`], for which the caller
//! raises 22023 (invalid_parameter_value) when the handler calls `jobs.fetch`.

mod client;
mod hosts;
mod outcome;
mod request;
mod secrets;
mod spec;
#[cfg(test)]
mod test_server;

pub use client::Client;
pub use hosts::AllowedHosts;
pub use outcome::{Failure, FailureKind, Outcome};
pub use request::{idempotency_key, prepare, Policy, PreparedRequest, DEFAULT_MAX_RESPONSE_SIZE};
pub use secrets::{check_name as check_secret_name, Secrets, MAX_VALUE_LEN as MAX_SECRET_LEN};
pub use spec::FetchSpec;
