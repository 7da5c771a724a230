//! WeChat calls that need one of the tenant's tokens: the component APIs (the authorizer list,
//! the code exchange, profiles, pre-auth codes, authorizer tokens) need the component token,
//! the JS-SDK ticket an access token.
//!
//! Guarantee: a call that WeChat answers with a token error (40001/40014/42001) is made once
//! more with the replacement, and the token is replaced by compare (the value that failed), so
//! callers that saw one token fail together cost one refresh, and a token already replaced is
//! not refreshed again. Every failure returned is logged and quota exhaustion counted.
//!
//! The tokens come from a [`TokenSource`]: the refresh room implements it and hands itself down
//! to the rooms below it, which need tokens for their own WeChat calls (a reconcile, a re-list
//! after a store loss, an authorizer refresh). The trait keeps those rooms from depending on
//! the room that depends on them; the recursion itself is real (an authorizer token needs the
//! component token) and ends there, since a component token needs none.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use wxhub_runtime::{Secret, Tenant};

use super::credential::{Credential, Token};
use crate::error::{Error, note_failure};

/// A minute: what a token handed to a WeChat call must have left.
pub(crate) const CALL_MIN_REMAINING_MS: i64 = 60_000;

/// Where a WeChat call gets its token, and its replacement when WeChat rejected it.
pub(crate) trait TokenSource: Send + Sync {
    /// A token of `cred` with at least [`CALL_MIN_REMAINING_MS`] left.
    fn for_call<'a>(
        &'a self,
        tenant: &'a Arc<Tenant>,
        cred: &'a Credential,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Token, Error>>;

    /// WeChat rejected `rejected`: the replacement (refreshed once if `rejected` is still the
    /// stored token, else the stored one).
    fn replaced<'a>(
        &'a self,
        tenant: &'a Arc<Tenant>,
        cred: &'a Credential,
        rejected: &'a str,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Token, Error>>;

    /// An owned handle on this source, for work that outlives its caller (a flight's task).
    fn owned(&self) -> Arc<dyn TokenSource>;
}

/// `call` with a token of `cred`; on a token error, once more with its replacement.
pub(crate) async fn with_token<T, F, Fut>(
    tokens: &dyn TokenSource,
    tenant: &Arc<Tenant>,
    cred: &Credential,
    deadline: Instant,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut replaced = false;
    loop {
        let token = tokens.for_call(tenant, cred, deadline).await?;
        match call(token.value.clone()).await {
            Err(e) if e.token_rejected() && !replaced => {
                replaced = true;
                tokens
                    .replaced(tenant, cred, token.value.expose(), deadline)
                    .await?;
            }
            Err(e) => {
                if let Error::Wechat { cause, .. } = &e {
                    note_failure(tenant.id.as_str(), cause);
                }
                return Err(e);
            }
            Ok(answer) => return Ok(answer),
        }
    }
}

/// `call` with the component token (see [`with_token`]).
pub(crate) async fn with_component_token<T, F, Fut>(
    tokens: &dyn TokenSource,
    tenant: &Arc<Tenant>,
    deadline: Instant,
    call: F,
) -> Result<T, Error>
where
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    with_token(tokens, tenant, &Credential::Component, deadline, call).await
}
