//! The door every request passes before routing, as the API server's filter chain orders
//! it: authentication (a bearer token, or anonymous), then authorization (`AlwaysAllow` or
//! RBAC). A request without valid credentials gets `401 Unauthorized`; one the authorizer
//! refuses gets `403 Forbidden`. The `/emu/` test controls are for `system:masters` only.
//! With the default [`crate::Security`] nothing is checked, as before.

use std::collections::HashMap;

use hyper::Request;
use hyper::body::Incoming;

use crate::auth::{MASTERS, UserInfo, bearer_token};
use crate::rbac::{self, Attributes};
use crate::{ApiError, AuthorizationMode, Emulator};

/// Who sent the request, or 401.
fn authenticate(emu: &Emulator, req: &Request<Incoming>) -> Result<UserInfo, ApiError> {
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match token {
        Some(token) => emu
            .authenticate_token(token)
            .ok_or_else(ApiError::unauthorized),
        None if emu.inner.security.anonymous_auth => Ok(UserInfo::anonymous()),
        None => Err(ApiError::unauthorized()),
    }
}

/// Lets the request through with its user (`None` when nothing is checked), or answers 401
/// or 403.
pub(crate) fn check(
    emu: &Emulator,
    req: &Request<Incoming>,
    query: &HashMap<String, String>,
) -> Result<Option<UserInfo>, ApiError> {
    let security = &emu.inner.security;
    if !security.authenticates() {
        return Ok(None);
    }
    let user = authenticate(emu, req)?;
    let path = req.uri().path();
    let attrs = rbac::attributes(req.method().as_str(), path, query);
    if path == "/emu" || path.starts_with("/emu/") {
        return if user.in_group(MASTERS) {
            Ok(Some(user))
        } else {
            Err(rbac::forbidden(&user, &non_resource(&attrs), ""))
        };
    }
    decide(emu, &user, &attrs).map_err(|reason| rbac::forbidden(&user, &attrs, &reason))?;
    Ok(Some(user))
}

/// The configured authorizer's decision (`Err`: the reason for refusing, possibly empty).
pub(crate) fn decide(emu: &Emulator, user: &UserInfo, attrs: &Attributes) -> Result<(), String> {
    match emu.inner.security.authorization {
        AuthorizationMode::AlwaysAllow => Ok(()),
        AuthorizationMode::Rbac => rbac::authorize(&emu.store(), user, attrs),
    }
}

fn non_resource(a: &Attributes) -> Attributes {
    Attributes {
        verb: a.verb.clone(),
        path: a.path.clone(),
        ..Attributes::default()
    }
}
