//! Temporary media: `POST /cgi-bin/media/upload?type=` (multipart field `media`) and
//! `GET /cgi-bin/media/get?media_id=`, for Official Accounts, authorizers and WeCom apps, with
//! WeChat's size limits and codes: 40004 bad type, 40005 bad file type, 40006 bad size, 41005
//! no media, 40007 unknown or expired media_id. Media lives three days (sim time) and only
//! for the account that uploaded it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Multipart, RawQuery, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::Query;
use crate::codes::{ApiError, ApiResult};
use crate::endpoint::Endpoint;
use crate::sim::{Sim, lock};
use crate::state::{Owner, State};

/// Temporary media lives this long.
const LIFETIME_MS: i64 = 3 * 24 * 3600 * 1000;
/// The largest upload any account may make (WeCom files: 20 MB), plus multipart framing.
pub(crate) const MAX_UPLOAD: usize = 20 * 1024 * 1024 + 64 * 1024;

/// A stored piece of media.
#[derive(Debug, Clone)]
pub(crate) struct Media {
    pub owner: String,
    pub kind: String,
    pub filename: String,
    pub content_type: String,
    pub bytes: Bytes,
    pub created_ms: i64,
}

/// Size limit and allowed extensions of a media type.
fn rules(kind: &str, wecom: bool) -> Option<(usize, &'static [&'static str])> {
    const MB: usize = 1024 * 1024;
    Some(match (kind, wecom) {
        ("image", _) => (10 * MB, &["jpg", "jpeg", "png", "gif", "bmp"]),
        ("voice", false) => (2 * MB, &["amr", "mp3"]),
        ("voice", true) => (2 * MB, &["amr"]),
        ("video", _) => (10 * MB, &["mp4"]),
        ("thumb", false) => (64 * 1024, &["jpg", "jpeg"]),
        ("file", true) => (20 * MB, &[]),
        _ => return None,
    })
}

fn content_type(filename: &str) -> &'static str {
    match filename
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("amr") => "audio/amr",
        Some("mp3") => "audio/mpeg",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// The account a media token acts for, and whether it is WeCom's.
fn media_owner(state: &State, q: &Query, now: i64) -> ApiResult<(String, bool)> {
    match state.check_token(q.get("access_token"), now)? {
        Owner::Account(a) | Owner::Authorizer { appid: a, .. } => Ok((a.clone(), false)),
        Owner::Corp { corpid, .. } => Ok((corpid.clone(), true)),
        Owner::Component(_) => Err(ApiError::with(
            40001,
            "a component_access_token cannot call account APIs",
        )),
    }
}

fn answer(
    sim: &Sim,
    endpoint: Endpoint,
    appid: Option<&str>,
    result: ApiResult<Response>,
) -> Response {
    match result {
        Ok(r) => {
            sim.record_call(endpoint, appid, 0);
            r
        }
        Err(e) => {
            sim.record_call(endpoint, appid, e.code);
            e.into_response()
        }
    }
}

/// `POST /cgi-bin/media/upload`.
pub(crate) async fn upload(
    AxState(sim): AxState<Arc<Sim>>,
    RawQuery(raw): RawQuery,
    multipart: Option<Multipart>,
) -> Response {
    let q = Query::parse(raw.as_deref());
    let mut appid = None;
    let result = upload_inner(&sim, &q, multipart, &mut appid).await;
    answer(&sim, Endpoint::MediaUpload, appid.as_deref(), result)
}

async fn upload_inner(
    sim: &Arc<Sim>,
    q: &Query,
    multipart: Option<Multipart>,
    appid: &mut Option<String>,
) -> ApiResult<Response> {
    let now = sim.clock.now_ms();
    let (owner, wecom) = media_owner(&lock(&sim.state), q, now)?;
    *appid = Some(owner.clone());
    let kind = q.get("type").unwrap_or_default().to_owned();
    let (max, extensions) =
        rules(&kind, wecom).ok_or_else(|| ApiError::with(40004, format!("type {kind:?}")))?;
    let mut multipart =
        multipart.ok_or_else(|| ApiError::with(41005, "not multipart/form-data"))?;
    let mut file = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::with(41005, e.body_text()))?
    {
        if field.name() == Some("media") {
            let filename = field.file_name().unwrap_or("media").to_owned();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::with(41005, e.body_text()))?;
            file = Some((filename, bytes));
            break;
        }
    }
    let (filename, bytes) = file.ok_or_else(|| ApiError::with(41005, "no `media` field"))?;
    if bytes.len() < 5 || bytes.len() > max {
        return Err(ApiError::with(
            40006,
            format!("{} bytes; {kind} takes 5..={max}", bytes.len()),
        ));
    }
    let ext = filename
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !extensions.is_empty() && !extensions.contains(&ext.as_str()) {
        return Err(ApiError::with(
            40005,
            format!("{kind} takes {}", extensions.join(", ")),
        ));
    }
    let media_id = put(sim, &owner, &kind, &filename, bytes);
    let created = now / 1000;
    Ok(if wecom {
        axum::Json(json!({"errcode": 0, "errmsg": "ok", "type": kind, "media_id": media_id, "created_at": created.to_string()}))
            .into_response()
    } else {
        axum::Json(json!({"type": kind, "media_id": media_id, "created_at": created}))
            .into_response()
    })
}

/// Stores media for `owner` (an appid or corpid) and returns its media_id.
pub(crate) fn put(sim: &Sim, owner: &str, kind: &str, filename: &str, bytes: Bytes) -> String {
    let now = sim.clock.now_ms();
    let media_id = format!("{}_{}", kind, wxhub_crypto::random_nonce(48));
    let mut state = lock(&sim.state);
    state.media.retain(|_, m| now - m.created_ms < LIFETIME_MS);
    state.media.insert(
        media_id.clone(),
        Media {
            owner: owner.to_owned(),
            kind: kind.to_owned(),
            content_type: content_type(filename).to_owned(),
            filename: filename.to_owned(),
            bytes,
            created_ms: now,
        },
    );
    media_id
}

/// `GET /cgi-bin/media/get`: the bytes, with the type and a `Content-disposition` naming the
/// file (a video answers JSON with its URL, as WeChat does).
pub(crate) async fn get(AxState(sim): AxState<Arc<Sim>>, RawQuery(raw): RawQuery) -> Response {
    let q = Query::parse(raw.as_deref());
    let mut appid = None;
    let result = get_inner(&sim, &q, &mut appid);
    answer(&sim, Endpoint::MediaGet, appid.as_deref(), result)
}

fn get_inner(sim: &Arc<Sim>, q: &Query, appid: &mut Option<String>) -> ApiResult<Response> {
    let now = sim.clock.now_ms();
    let state = lock(&sim.state);
    let (owner, wecom) = media_owner(&state, q, now)?;
    *appid = Some(owner.clone());
    let id = q
        .get("media_id")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::with(40007, "missing media_id"))?;
    let media = state
        .media
        .get(id)
        .filter(|m| m.owner == owner && now - m.created_ms < LIFETIME_MS)
        .ok_or(ApiError::new(40007))?;
    if media.kind == "video" && !wecom {
        return Ok(
            axum::Json(json!({"video_url": format!("{}/sim/media/{id}", sim.base_url())}))
                .into_response(),
        );
    }
    Ok((
        [
            (header::CONTENT_TYPE, media.content_type.clone()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    media.filename.replace('"', "")
                ),
            ),
            (
                header::CACHE_CONTROL,
                "no-cache, must-revalidate".to_owned(),
            ),
        ],
        media.bytes.clone(),
    )
        .into_response())
}
