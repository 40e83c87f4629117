//! The routes of the admin listener and the OpenAPI document generated from them.
//!
//! The server API runs each call as a user ([`logic_api::Caller`]) through the same logic
//! tier a client's frame goes through: a send here is deduplicated by its `client_msg_id` and
//! fanned out exactly like a `SEND_REQ`, a group change is checked and announced like a
//! client's. Refusals carry the protocol's error code and name (SPEC §14).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use im_protocol::{Body, ErrorCodeExt as _, pb};
use logic_api::Caller;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AdminConfig;
use crate::backend::Backend;

/// The device id the API's calls are made from, unless a request names one.
pub const API_DEVICE: &str = "server-api";
/// Longest token lifetime the API issues: 30 days.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
/// Token lifetime when a request names none: one day.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    backend: Arc<dyn Backend>,
    metrics: Option<PrometheusHandle>,
    admin_key: Option<Arc<str>>,
    system_user: Arc<str>,
    openapi: Arc<str>,
}

impl ApiState {
    /// The state of a listener with these settings.
    pub fn new(
        config: AdminConfig,
        backend: Arc<dyn Backend>,
        metrics: Option<PrometheusHandle>,
    ) -> ApiState {
        ApiState {
            backend,
            metrics,
            admin_key: config.admin_key.map(Arc::from),
            system_user: Arc::from(config.system_user),
            openapi: Arc::from(""),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "IM server admin API",
        description = "Metrics, health and the server API for the app's backend. Every /v1 call needs `Authorization: Bearer <admin key>`."
    ),
    modifiers(&AdminKeyScheme),
    tags(
        (name = "operations", description = "Health, readiness, metrics, drain"),
        (name = "tokens", description = "Tokens for the app's users"),
        (name = "messages", description = "Sending and reading messages"),
        (name = "groups", description = "Groups and their members"),
        (name = "users", description = "Online devices and kicks"),
    )
)]
struct ApiDoc;

struct AdminKeyScheme;

impl Modify for AdminKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole admin router: operations routes open, `/v1` behind the admin key, and the
/// OpenAPI document of both.
pub fn router(mut state: ApiState) -> Router {
    let (open, open_doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
        .split_for_parts();
    let (api, api_doc) = OpenApiRouter::new()
        .routes(routes!(issue_token))
        .routes(routes!(send_message))
        .routes(routes!(create_group))
        .routes(routes!(add_members))
        .routes(routes!(remove_members))
        .routes(routes!(list_members))
        .routes(routes!(online_devices))
        .routes(routes!(kick_user))
        .routes(routes!(history))
        .routes(routes!(drain))
        .split_for_parts();
    let mut doc = open_doc;
    doc.merge(api_doc);
    state.openapi = Arc::from(doc.to_json().expect("the document serialises"));
    let api = api.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_admin_key,
    ));
    open.merge(api)
        .route("/openapi.json", axum::routing::get(openapi_json))
        .with_state(state)
}

async fn openapi_json(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
        .into_response()
}

/// Refuses a call without the admin key (compared in constant time).
async fn require_admin_key(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.admin_key else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "no admin key is configured: the server API is off",
        )
        .into_response();
    };
    let presented = bearer(request.headers()).unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), key.as_bytes()) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong admin key")
            .into_response();
    }
    next.run(request).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Equal contents, in a time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- Errors --------------------------------------------------------------------------------

/// A refused call: `{"error": {...}}` with an HTTP status that matches the protocol code.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: ErrorBody,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The protocol error code (SPEC §14), 0 when the refusal is the API's own (bad JSON, a
    /// missing key).
    code: i32,
    /// The code's name (`FORBIDDEN`), or `BAD_REQUEST` / `UNAUTHORIZED` for the API's own.
    name: String,
    /// English text for logs.
    message: String,
    /// Whether the same call may succeed later unchanged.
    retryable: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let name = status
            .canonical_reason()
            .unwrap_or("ERROR")
            .to_ascii_uppercase()
            .replace(' ', "_");
        ApiError {
            status,
            error: ErrorBody {
                code: 0,
                name,
                message: message.into(),
                retryable: false,
            },
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A protocol error, with the HTTP status closest to its meaning.
    fn protocol(error: pb::Error) -> ApiError {
        use pb::ErrorCode as C;
        let code = C::try_from(error.code).unwrap_or(C::Internal);
        let status = match code {
            C::InvalidArgument | C::BadBody | C::PageTooLarge => StatusCode::BAD_REQUEST,
            C::NotFound => StatusCode::NOT_FOUND,
            C::Forbidden | C::NotSender | C::NotOpen => StatusCode::FORBIDDEN,
            C::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            C::GroupFull | C::ClientMsgIdConflict | C::RecallWindowExpired => StatusCode::CONFLICT,
            C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            C::Unavailable | C::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ if error.code >= 500 => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let name = code.as_str_name();
        ApiError {
            status,
            error: ErrorBody {
                code: error.code,
                name: name.strip_prefix("ERROR_CODE_").unwrap_or(name).to_owned(),
                message: error.message,
                retryable: error.retryable,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

/// A JSON body whose refusal is an [`ApiError`] (axum's own is plain text).
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}

/// A query string whose refusal is an [`ApiError`].
struct QueryArgs<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryArgs(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}

type ApiResult<T> = Result<Json<T>, ApiError>;

// ---- Operations ----------------------------------------------------------------------------

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Whether the server takes traffic now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyStatus {
    /// Send new clients here.
    pub ready: bool,
    /// The store answers.
    pub store_ok: bool,
    /// Draining: accepting nothing new.
    pub draining: bool,
}

/// Ready for traffic: the store answers and the server is not draining (503 otherwise).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadyStatus),
        (status = 503, description = "Not ready (draining, or the store does not answer)", body = ReadyStatus),
    ))]
async fn readyz(State(state): State<ApiState>) -> Response {
    let readiness = state.backend.readiness();
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadyStatus {
        ready: readiness.ready(),
        store_ok: readiness.store_ok,
        draining: readiness.draining,
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are off in this process"),
    ))]
async fn metrics_text(State(state): State<ApiState>) -> Response {
    let Some(handle) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are off").into_response();
    };
    state.backend.refresh_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Whether the drain started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DrainStatus {
    /// Always true: the server is draining (again true when it already was).
    pub draining: bool,
}

/// Starts draining, as SIGTERM does: no new connections, clients sent away at the configured
/// rate (to the configured address), then the process exits.
#[utoipa::path(post, path = "/v1/drain", tag = "operations", security(("admin_key" = [])),
    responses((status = 202, description = "Draining", body = DrainStatus)))]
async fn drain(State(state): State<ApiState>) -> (StatusCode, Json<DrainStatus>) {
    tracing::info!("drain requested through the admin API");
    state.backend.start_drain();
    (StatusCode::ACCEPTED, Json(DrainStatus { draining: true }))
}

// ---- Tokens --------------------------------------------------------------------------------

/// A token to mint.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The user id.
    pub user: String,
    /// Bind the token to this device id (the handshake's must then equal it).
    #[serde(default)]
    pub device: Option<String>,
    /// Lifetime in seconds (default one day, at most 30 days).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A minted token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// Put it in `HandshakeReq.token`.
    pub token: String,
    /// The user id.
    pub user: String,
    /// The device it is bound to, if any.
    pub device: Option<String>,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// Issues a token for a user, so the app's backend needs no CLI.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("admin_key" = [])),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The token", body = TokenResponse),
        (status = 400, description = "Bad user id, device id or lifetime", body = ApiError),
    ))]
async fn issue_token(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<TokenRequest>,
) -> ApiResult<TokenResponse> {
    check_id(&request.user, "user")?;
    if let Some(device) = &request.device {
        check_id(device, "device")?;
    }
    let ttl = request.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be between 1 and {MAX_TOKEN_TTL_SECS}"
        )));
    }
    let issued = state
        .backend
        .issue_token(&request.user, request.device.as_deref(), ttl);
    Ok(Json(TokenResponse {
        token: issued.token,
        user: request.user,
        device: request.device,
        expires_at: issued.expires_at,
    }))
}

/// The cluster's presence registry did not answer.
fn registry_unavailable(error: String) -> ApiError {
    tracing::warn!(%error, "the presence registry did not answer an admin call");
    ApiError::protocol(pb::ErrorCode::Unavailable.to_error("the presence registry is unavailable"))
}

fn check_id(id: &str, what: &'static str) -> Result<(), ApiError> {
    im_protocol::ids::validate_id(id, what).map_err(|e| ApiError::bad_request(e.to_string()))
}

// ---- Messages ------------------------------------------------------------------------------

/// A message to send.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// The sender's user id; absent: the system sender (the server's `system-user`).
    #[serde(default)]
    pub from: Option<String>,
    /// The sending device id (default `server-api`).
    #[serde(default)]
    pub device: Option<String>,
    /// A direct message to this user (exactly one of `to_user`, `to_group`).
    #[serde(default)]
    pub to_user: Option<String>,
    /// A message to this group; the sender must be a member.
    #[serde(default)]
    pub to_group: Option<String>,
    /// The idempotency key, unique per sender: a retry with the same key is answered with
    /// the original message (`duplicate` true) and stored once.
    pub client_msg_id: String,
    /// App-defined content type (default 0, UTF-8 text).
    #[serde(default)]
    pub content_type: u32,
    /// The content as text (exactly one of `text`, `content_base64`).
    #[serde(default)]
    pub text: Option<String>,
    /// The content as base64 bytes.
    #[serde(default)]
    pub content_base64: Option<String>,
}

/// A stored message's place, as `SEND_ACK` reports it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SendMessageResponse {
    /// The request's idempotency key.
    pub client_msg_id: String,
    /// The conversation (`d:<a>:<b>` or `g:<group>`).
    pub conversation_id: String,
    /// Unique per deployment.
    pub server_msg_id: u64,
    /// Its seq in the conversation.
    pub conversation_seq: u64,
    /// When it was stored (Unix ms).
    pub server_time_ms: u64,
    /// The key was used before: this is the original message.
    pub duplicate: bool,
}

/// Sends a message as a user or as the system sender: the same path, idempotency and fan-out
/// as a client's send. Answered once the message is durable.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", security(("admin_key" = [])),
    request_body = SendMessageRequest,
    responses(
        (status = 200, description = "Stored (or a duplicate of a stored message)", body = SendMessageResponse),
        (status = 400, description = "Bad target, ids or content", body = ApiError),
        (status = 403, description = "The sender is not a member of the group", body = ApiError),
        (status = 409, description = "The client_msg_id was used for another message", body = ApiError),
        (status = 429, description = "The sender's storage budget is spent", body = ApiError),
        (status = 503, description = "The store is unavailable; retry with the same client_msg_id", body = ApiError),
    ))]
async fn send_message(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<SendMessageRequest>,
) -> ApiResult<SendMessageResponse> {
    let target = match (request.to_user, request.to_group) {
        (Some(user), None) => pb::send_req::Target::ToUser(user),
        (None, Some(group)) => pb::send_req::Target::ToGroup(group),
        _ => {
            return Err(ApiError::bad_request(
                "exactly one of to_user and to_group is required",
            ));
        }
    };
    let content = match (request.text, request.content_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => BASE64
            .decode(encoded.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("content_base64: {e}")))?,
        _ => {
            return Err(ApiError::bad_request(
                "exactly one of text and content_base64 is required",
            ));
        }
    };
    let caller = Caller {
        user: request
            .from
            .unwrap_or_else(|| state.system_user.to_string()),
        device: request.device.unwrap_or_else(|| API_DEVICE.to_owned()),
    };
    check_id(&caller.user, "from")?;
    check_id(&caller.device, "device")?;
    let ack = state
        .backend
        .send(
            caller,
            pb::SendReq {
                target: Some(target),
                client_msg_id: request.client_msg_id,
                content_type: request.content_type,
                content,
            },
        )
        .await
        .map_err(ApiError::protocol)?;
    Ok(Json(SendMessageResponse {
        client_msg_id: ack.client_msg_id,
        conversation_id: ack.conversation_id,
        server_msg_id: ack.server_msg_id,
        conversation_seq: ack.conversation_seq,
        server_time_ms: ack.server_time_ms,
        duplicate: ack.duplicate,
    }))
}

/// Where a history page starts.
#[derive(Debug, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Read as this user (a party of the conversation). Default: for a direct conversation,
    /// its first party; required for a group.
    #[serde(default)]
    pub as_user: Option<String>,
    /// Exclusive anchor seq; 0 (default) with `older` = from the newest message.
    #[serde(default)]
    pub anchor_seq: u64,
    /// `older` (default, newest first) or `newer` (oldest first).
    #[serde(default)]
    pub direction: Option<String>,
    /// Messages per page (default 50).
    #[serde(default)]
    pub limit: u32,
}

/// A stored message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageJson {
    /// The conversation.
    pub conversation_id: String,
    /// Who sent it.
    pub sender_user: String,
    /// From which device.
    pub sender_device: String,
    /// Unique per deployment.
    pub server_msg_id: u64,
    /// Its seq in the conversation.
    pub conversation_seq: u64,
    /// When it was stored (Unix ms).
    pub server_time_ms: u64,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// App-defined content type.
    pub content_type: u32,
    /// The content as text, when it is valid UTF-8.
    pub text: Option<String>,
    /// The content as base64.
    pub content_base64: String,
    /// Recalled (the content is then empty).
    pub recalled: bool,
}

impl From<pb::Message> for MessageJson {
    fn from(m: pb::Message) -> MessageJson {
        MessageJson {
            text: String::from_utf8(m.content.clone()).ok(),
            content_base64: BASE64.encode(&m.content),
            conversation_id: m.conversation_id,
            sender_user: m.sender_user,
            sender_device: m.sender_device,
            server_msg_id: m.server_msg_id,
            conversation_seq: m.conversation_seq,
            server_time_ms: m.server_time_ms,
            client_msg_id: m.client_msg_id,
            content_type: m.content_type,
            recalled: m.recalled,
        }
    }
}

/// A page of a conversation's history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryResponse {
    /// The conversation.
    pub conversation_id: String,
    /// In the requested direction's order.
    pub messages: Vec<MessageJson>,
    /// More messages lie beyond this page.
    pub has_more: bool,
    /// The conversation's highest seq now.
    pub last_seq: u64,
}

/// Reads a page of a conversation's history.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages", tag = "messages",
    security(("admin_key" = [])),
    params(("conversation_id" = String, Path, description = "`d:<a>:<b>` or `g:<group>`"), HistoryQuery),
    responses(
        (status = 200, description = "A page", body = HistoryResponse),
        (status = 400, description = "Bad conversation id or paging", body = ApiError),
        (status = 403, description = "as_user is not a party of the conversation", body = ApiError),
    ))]
async fn history(
    State(state): State<ApiState>,
    Path(conversation_id): Path<String>,
    QueryArgs(query): QueryArgs<HistoryQuery>,
) -> ApiResult<HistoryResponse> {
    let as_user = match query.as_user {
        Some(user) => user,
        None => match conversation_id
            .strip_prefix("d:")
            .and_then(|r| r.split_once(':'))
        {
            Some((first, _)) => first.to_owned(),
            None => {
                return Err(ApiError::bad_request(
                    "as_user is required for a group conversation",
                ));
            }
        },
    };
    let direction = match query.direction.as_deref() {
        None | Some("older") => pb::HistoryDirection::Older,
        Some("newer") => pb::HistoryDirection::Newer,
        Some(_) => return Err(ApiError::bad_request("direction is older or newer")),
    };
    let answer = call_as(
        &state,
        as_user,
        "as_user",
        Body::HistoryReq(pb::HistoryReq {
            conversation_id,
            anchor_seq: query.anchor_seq,
            direction: direction as i32,
            limit: query.limit,
        }),
    )
    .await?;
    match answer {
        Body::HistoryResp(page) => Ok(Json(HistoryResponse {
            conversation_id: page.conversation_id,
            messages: page.messages.into_iter().map(MessageJson::from).collect(),
            has_more: page.has_more,
            last_seq: page.last_seq,
        })),
        other => Err(unexpected(other)),
    }
}

/// Runs `body` as `user` (from the API's device) through the logic tier and returns its
/// answer; `field` names the request field `user` came from, for a refusal of a bad id.
async fn call_as(
    state: &ApiState,
    user: String,
    field: &'static str,
    body: Body,
) -> Result<Body, ApiError> {
    check_id(&user, field)?;
    let caller = Caller {
        user,
        device: API_DEVICE.to_owned(),
    };
    match state.backend.call(caller, body).await {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Err(ApiError::protocol(
            pb::ErrorCode::Internal.to_error("no answer"),
        )),
        Err(error) => Err(ApiError::protocol(error)),
    }
}

fn unexpected(body: Body) -> ApiError {
    tracing::error!(op = ?body.op(), "the logic tier answered with an unexpected body");
    ApiError::protocol(pb::ErrorCode::Internal.to_error("unexpected answer"))
}

// ---- Groups --------------------------------------------------------------------------------

/// A group to create.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// The owner (becomes a member).
    pub owner: String,
    /// The group's name.
    pub name: String,
    /// Further members.
    #[serde(default)]
    pub members: Vec<String>,
    /// Anyone may join.
    #[serde(default)]
    pub open: bool,
    /// Idempotency key: a retry with the same key returns the same group.
    #[serde(default)]
    pub client_request_id: String,
    /// A broadcast channel: only the owner posts and adds members (SPEC §13.8).
    #[serde(default)]
    pub broadcast: bool,
}

/// A group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupJson {
    /// Its id (the conversation is `g:<group_id>`).
    pub group_id: String,
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// How many members it has.
    pub member_count: u32,
    /// Anyone may join.
    pub open: bool,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// A broadcast channel: only the owner posts.
    #[serde(default)]
    pub broadcast: bool,
    /// Messages reach members by read fan-out (SPEC §13.12).
    #[serde(default)]
    pub read_fanout: bool,
}

impl From<pb::GroupInfo> for GroupJson {
    fn from(g: pb::GroupInfo) -> GroupJson {
        GroupJson {
            group_id: g.group_id,
            name: g.name,
            owner: g.owner,
            member_count: g.member_count,
            open: g.open,
            created_ms: g.created_ms,
            broadcast: g.broadcast,
            read_fanout: g.read_fanout,
        }
    }
}

/// Creates a group owned by a user. Its members are told as when a client creates one.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", security(("admin_key" = [])),
    request_body = CreateGroupRequest,
    responses(
        (status = 200, description = "The group (the same one for a repeated client_request_id)", body = GroupJson),
        (status = 400, description = "Bad ids or name", body = ApiError),
        (status = 409, description = "Too many members", body = ApiError),
    ))]
async fn create_group(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<CreateGroupRequest>,
) -> ApiResult<GroupJson> {
    let answer = call_as(
        &state,
        request.owner,
        "owner",
        Body::GroupCreateReq(pb::GroupCreateReq {
            name: request.name,
            members: request.members,
            open: request.open,
            client_request_id: request.client_request_id,
            broadcast: request.broadcast,
        }),
    )
    .await?;
    match answer {
        Body::GroupCreateResp(resp) => Ok(Json(resp.group.unwrap_or_default().into())),
        other => Err(unexpected(other)),
    }
}

/// A change of members, made as a member (adding) or as the owner (removing).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersChange {
    /// Who makes the change.
    pub as_user: String,
    /// The users added or removed.
    pub members: Vec<String>,
}

/// The group after a change of members.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembersChanged {
    /// The group now.
    pub group: GroupJson,
    /// Those whose membership changed (not already members / not members any more).
    pub changed: Vec<String>,
}

/// Adds members (as any member).
#[utoipa::path(post, path = "/v1/groups/{group_id}/members", tag = "groups",
    security(("admin_key" = [])),
    params(("group_id" = String, Path, description = "The group")),
    request_body = MembersChange,
    responses(
        (status = 200, description = "Added", body = MembersChanged),
        (status = 403, description = "as_user is not a member", body = ApiError),
        (status = 404, description = "No such group", body = ApiError),
        (status = 409, description = "The group would be too large", body = ApiError),
    ))]
async fn add_members(
    State(state): State<ApiState>,
    Path(group_id): Path<String>,
    JsonBody(change): JsonBody<MembersChange>,
) -> ApiResult<MembersChanged> {
    let answer = call_as(
        &state,
        change.as_user,
        "as_user",
        Body::GroupAddMembersReq(pb::GroupAddMembersReq {
            group_id,
            members: change.members,
        }),
    )
    .await?;
    match answer {
        Body::GroupAddMembersResp(resp) => Ok(Json(MembersChanged {
            group: resp.group.unwrap_or_default().into(),
            changed: resp.added,
        })),
        other => Err(unexpected(other)),
    }
}

/// Removes members (as the owner).
#[utoipa::path(post, path = "/v1/groups/{group_id}/members/remove", tag = "groups",
    security(("admin_key" = [])),
    params(("group_id" = String, Path, description = "The group")),
    request_body = MembersChange,
    responses(
        (status = 200, description = "Removed", body = MembersChanged),
        (status = 403, description = "as_user is not the owner", body = ApiError),
        (status = 404, description = "No such group", body = ApiError),
    ))]
async fn remove_members(
    State(state): State<ApiState>,
    Path(group_id): Path<String>,
    JsonBody(change): JsonBody<MembersChange>,
) -> ApiResult<MembersChanged> {
    let answer = call_as(
        &state,
        change.as_user,
        "as_user",
        Body::GroupRemoveMembersReq(pb::GroupRemoveMembersReq {
            group_id,
            members: change.members,
        }),
    )
    .await?;
    match answer {
        Body::GroupRemoveMembersResp(resp) => Ok(Json(MembersChanged {
            group: resp.group.unwrap_or_default().into(),
            changed: resp.removed,
        })),
        other => Err(unexpected(other)),
    }
}

/// Which page of members.
#[derive(Debug, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MembersQuery {
    /// Read as this member.
    pub as_user: String,
    /// Members per page (default 500).
    #[serde(default)]
    pub limit: u32,
    /// `next_cursor` of the previous page; empty for the first.
    #[serde(default)]
    pub cursor: String,
}

/// A group member.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberJson {
    /// The user.
    pub user_id: String,
    /// `owner` or `member`.
    pub role: String,
    /// When they joined (Unix ms).
    pub joined_ms: u64,
}

/// A page of members.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembersPage {
    /// The group.
    pub group: GroupJson,
    /// Ordered by user id.
    pub members: Vec<MemberJson>,
    /// Pass as `cursor` for the next page; empty when this is the last.
    pub next_cursor: String,
}

/// Lists a group's members, a page at a time.
#[utoipa::path(get, path = "/v1/groups/{group_id}/members", tag = "groups",
    security(("admin_key" = [])),
    params(("group_id" = String, Path, description = "The group"), MembersQuery),
    responses(
        (status = 200, description = "A page of members", body = MembersPage),
        (status = 403, description = "as_user is not a member", body = ApiError),
        (status = 404, description = "No such group", body = ApiError),
    ))]
async fn list_members(
    State(state): State<ApiState>,
    Path(group_id): Path<String>,
    QueryArgs(query): QueryArgs<MembersQuery>,
) -> ApiResult<MembersPage> {
    let answer = call_as(
        &state,
        query.as_user,
        "as_user",
        Body::GroupMembersReq(pb::GroupMembersReq {
            group_id,
            limit: query.limit,
            cursor: query.cursor,
        }),
    )
    .await?;
    match answer {
        Body::GroupMembersResp(resp) => Ok(Json(MembersPage {
            group: resp.group.unwrap_or_default().into(),
            members: resp
                .members
                .into_iter()
                .map(|m| MemberJson {
                    role: match pb::GroupRole::try_from(m.role) {
                        Ok(pb::GroupRole::Owner) => "owner".into(),
                        _ => "member".into(),
                    },
                    user_id: m.user_id,
                    joined_ms: m.joined_ms,
                })
                .collect(),
            next_cursor: resp.next_cursor,
        })),
        other => Err(unexpected(other)),
    }
}

// ---- Users ---------------------------------------------------------------------------------

/// A user's online devices.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OnlineDevices {
    /// The user.
    pub user: String,
    /// Their devices connected now (to any gateway of a cluster), sorted.
    pub devices: Vec<String>,
}

/// Looks up a user's online devices.
#[utoipa::path(get, path = "/v1/users/{user}/devices", tag = "users",
    security(("admin_key" = [])),
    params(("user" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The devices connected now", body = OnlineDevices),
        (status = 503, description = "The cluster's presence registry did not answer", body = ApiError),
    ))]
async fn online_devices(
    State(state): State<ApiState>,
    Path(user): Path<String>,
) -> ApiResult<OnlineDevices> {
    check_id(&user, "user")?;
    let devices = state
        .backend
        .online_devices(user.clone())
        .await
        .map_err(registry_unavailable)?;
    Ok(Json(OnlineDevices { user, devices }))
}

/// Whom to kick.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KickRequest {
    /// Only this device (default: all of the user's devices).
    #[serde(default)]
    pub device: Option<String>,
    /// `revoked` (default: the client stops and asks the app for a new token) or
    /// `reconnect` (the client reconnects by itself).
    #[serde(default)]
    pub reason: Option<String>,
}

/// How many connections were closed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KickResponse {
    /// Connections closed.
    pub kicked: usize,
}

/// Kicks a user (every device) or one device: each connection gets `KICK` and is closed.
#[utoipa::path(post, path = "/v1/users/{user}/kick", tag = "users",
    security(("admin_key" = [])),
    params(("user" = String, Path, description = "The user")),
    request_body = KickRequest,
    responses(
        (status = 200, description = "Kicked (0 when nothing was connected)", body = KickResponse),
        (status = 400, description = "Bad user, device or reason", body = ApiError),
    ))]
async fn kick_user(
    State(state): State<ApiState>,
    Path(user): Path<String>,
    JsonBody(request): JsonBody<KickRequest>,
) -> ApiResult<KickResponse> {
    check_id(&user, "user")?;
    if let Some(device) = &request.device {
        check_id(device, "device")?;
    }
    let reason = match request.reason.as_deref() {
        None | Some("revoked") => pb::KickReason::TokenRevoked,
        Some("reconnect") => pb::KickReason::Rebalance,
        Some(_) => return Err(ApiError::bad_request("reason is revoked or reconnect")),
    };
    let kicked = state
        .backend
        .kick(user.clone(), request.device.clone(), reason)
        .await
        .map_err(registry_unavailable)?;
    tracing::info!(%user, device = ?request.device, kicked, "kicked through the admin API");
    Ok(Json(KickResponse { kicked }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_key_compare_needs_every_byte() {
        assert!(constant_time_eq(b"secret-key", b"secret-key"));
        assert!(!constant_time_eq(b"secret-key", b"secret-kez"));
        assert!(!constant_time_eq(b"secret-key", b"secret-key-longer"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn protocol_refusals_keep_their_code_and_get_a_matching_status() {
        let error = ApiError::protocol(pb::ErrorCode::Forbidden.to_error("not a member"));
        assert_eq!(error.status, StatusCode::FORBIDDEN);
        assert_eq!(error.error.code, pb::ErrorCode::Forbidden as i32);
        assert_eq!(error.error.name, "FORBIDDEN");
        let error = ApiError::protocol(pb::ErrorCode::Unavailable.to_error("disk full"));
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(error.error.retryable);
    }
}
