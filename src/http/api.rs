//! The REST API of PROTOCOL.md, documented by poem-openapi. Every handler is
//! a thin call into `chat`.

use std::borrow::Cow;
use std::sync::Arc;

use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::auth::Bearer;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::MetaSchemaRef;
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme, Tags};

use super::State;
use crate::auth::Identity;
use crate::chat::{ListCursor, NewChat, Outgoing, Page, MAX_LOOKUP};
use crate::error::{ChatError, ErrorCode};
use crate::model::{
    ChangeRequest, ClientMsgId, ConnectionId, Conversation, ConversationId, Emoji, Message,
    MessageId, Seq, UsageTotals, User, UserId,
};
use crate::transport::sse;

#[derive(Tags)]
enum ApiTags {
    /// Conversations, messages and participants.
    Chats,
    /// The HTTP transport, where WebSockets are blocked: tickets for the
    /// event stream (`GET /api/v1/chat/events`) and frame POSTs.
    Transport,
    /// What assistants' answers cost the caller, in tokens.
    Assistants,
    /// The users directory: the display names of users who signed in.
    Users,
    /// Message search across the caller's conversations.
    Search,
}

/// `Authorization: Bearer <JWT>`, the same token a socket sends first.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(Identity);

/// poem-openapi's `Bearer` extractor has already refused a request without
/// a `Bearer` header, but it trims the token; the raw header is parsed again
/// by `Authenticator::verify_header`, so REST takes a token exactly as a
/// socket's `auth` frame does.
async fn check_bearer(req: &Request, _trimmed: Bearer) -> poem::Result<Identity> {
    let state = state(req).map_err(|e| poem::Error::from_response(e.into_response()))?;
    let header = req.headers().get(header::AUTHORIZATION);
    state
        .auth
        .verify_header(header.map(|v| v.as_bytes()))
        .map_err(|e| poem::Error::from_response(error_body(e)))
}

/// The body of every REST error.
#[derive(Debug, Object)]
pub struct ErrorBody {
    /// A protocol error code, e.g. `FORBIDDEN`.
    pub code: String,
    pub message: String,
}

/// A failed REST call: the status and body `ChatError` maps to.
#[derive(ApiResponse)]
pub enum ApiError {
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    #[oai(status = 422)]
    Invalid(Json<ErrorBody>),
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    #[oai(status = 502)]
    Upstream(Json<ErrorBody>),
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn body_of(e: &ChatError) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code_name(e.code()),
        message: e.client_message(),
    })
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        let body = body_of(&e);
        match e.status() {
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(body),
            StatusCode::FORBIDDEN => ApiError::Forbidden(body),
            StatusCode::NOT_FOUND => ApiError::NotFound(body),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(body),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Invalid(body),
            StatusCode::TOO_MANY_REQUESTS => {
                let ms = e.retry_after_ms().unwrap_or(1000);
                ApiError::RateLimited(body, ms.div_ceil(1000).max(1))
            }
            StatusCode::BAD_GATEWAY => ApiError::Upstream(body),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(body),
            _ => ApiError::Internal(body),
        }
    }
}

pub(super) fn error_body(e: ChatError) -> Response {
    ApiError::from(e).into_response()
}

/// Turns errors raised outside the handlers (bad JSON, missing auth, a body
/// over the size limit, an unknown route, a wrong method or content type)
/// into the same JSON shape, with the code `ErrorCode::of_status` gives.
pub async fn error_response(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let code = ErrorCode::of_status(err.status());
    let body = serde_json::json!({ "code": code_name(code), "message": err.to_string() });
    (code.status(), poem::web::Json(body)).into_response()
}

/// The methods each REST path takes, read from the API's own OpenAPI
/// description, so that a 405 can say them in `Allow` (RFC 9110 section
/// 15.5.6): poem's router refuses a method without naming the others.
pub struct AllowedMethods(Vec<(Vec<String>, HeaderValue)>);

impl AllowedMethods {
    /// Every path of `ChatApi`, with its methods (and HEAD wherever GET is).
    pub fn of_api() -> Self {
        let mut paths = Vec::new();
        for api in <ChatApi as OpenApi>::meta() {
            for path in api.paths {
                let mut methods: Vec<&str> = path
                    .operations
                    .iter()
                    .map(|op| op.method.as_str())
                    .collect();
                if methods.contains(&"GET") {
                    methods.push("HEAD");
                }
                let segments = path.path.split('/').map(str::to_owned).collect();
                // Method names are ASCII tokens, always a valid header value.
                if let Ok(value) = HeaderValue::from_str(&methods.join(", ")) {
                    paths.push((segments, value));
                }
            }
        }
        Self(paths)
    }

    /// The `Allow` value for a request path (`{name}` segments match any).
    fn of_path(&self, path: &str) -> Option<&HeaderValue> {
        let given: Vec<&str> = path.split('/').collect();
        self.0.iter().find_map(|(template, allow)| {
            let matches = template.len() == given.len()
                && template
                    .iter()
                    .zip(&given)
                    .all(|(t, g)| (t.starts_with('{') && !g.is_empty()) || t == g);
            matches.then_some(allow)
        })
    }
}

/// Adds `Allow` to a 405 answer of the REST API.
pub async fn with_allow<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    allowed: Arc<AllowedMethods>,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let mut resp = ep.call(req).await?.into_response();
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allow) = allowed.of_path(&path) {
            resp.headers_mut().insert(header::ALLOW, allow.clone());
        }
    }
    Ok(resp)
}

/// A JSON string and nothing else. poem-openapi's `String` also takes a
/// number or a boolean as text (`{"content": 5}` would be stored as "5"), so
/// every string of a REST body is a `Text`: a wrong type is a 422.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text(pub String);

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            Some(serde_json::Value::String(text)) => Ok(Text(text)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.0.clone()))
    }
}

/// The string of an optional `Text` field.
fn string_of(text: Option<Text>) -> Option<String> {
    text.map(|t| t.0)
}

/// `POST /chats` body.
#[derive(Debug, Object)]
pub struct CreateChatBody {
    pub title: Option<Text>,
    #[oai(default)]
    pub participant_ids: Vec<Text>,
    pub assistant_id: Option<Text>,
}

/// `POST /chats/{id}/messages` body.
#[derive(Debug, Object)]
pub struct SendBody {
    pub content: Text,
    pub client_msg_id: Option<Text>,
    /// The message this one answers, in the same conversation.
    pub reply_to: Option<MessageId>,
    /// At most 10.
    #[oai(default)]
    pub attachment_ids: Vec<Text>,
}

/// `PATCH /chats/{id}` body: one or both.
#[derive(Debug, Object)]
pub struct UpdateChatBody {
    /// 1 to 200 characters after trimming.
    pub title: Option<Text>,
    /// Hands ownership on to this participant (the owner only).
    pub owner_id: Option<Text>,
}

/// `POST /chats/{id}/read` body.
#[derive(Debug, Object)]
pub struct ReadBody {
    pub seq: i64,
}

/// `PATCH /chats/{id}/messages/{message_id}` body.
#[derive(Debug, Object)]
pub struct EditBody {
    pub content: Text,
}

/// The answer to a change: its seq (absent when it changed nothing) and
/// the message's state after it.
#[derive(Debug, Object)]
pub struct ChangeAnswer {
    #[oai(skip_serializing_if_is_none)]
    pub seq: Option<Seq>,
    pub message: Message,
}

#[derive(ApiResponse)]
pub enum Listed {
    #[oai(status = 200)]
    Page(
        Json<Vec<Conversation>>,
        /// The `cursor` of the next page, when more follow.
        #[oai(header = "Confab-Next-Cursor")]
        Option<String>,
        /// The next page's URL (RFC 8288), when more follow.
        #[oai(header = "Link")]
        Option<String>,
    ),
}

/// `POST /chats/{id}/participants` body.
#[derive(Debug, Object)]
pub struct AddParticipantBody {
    pub user_id: Text,
}

/// A conversation with one page of its history.
#[derive(Debug, Object)]
pub struct ChatWithHistory {
    pub conversation: Conversation,
    pub messages: Vec<Message>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum Created {
    #[oai(status = 201)]
    Chat(Json<Conversation>),
}

#[derive(ApiResponse)]
pub enum Sent {
    /// Stored and broadcast.
    #[oai(status = 201)]
    Stored(Json<Message>),
    /// A retry of a stored send (same `client_msg_id`): the original message.
    #[oai(status = 200)]
    Duplicate(Json<Message>),
}

#[derive(ApiResponse)]
pub enum NoContent {
    #[oai(status = 204)]
    Done,
}

type ApiResult<T> = Result<T, ApiError>;

/// The REST endpoints under `/api/v1/chat`.
pub struct ChatApi;

#[OpenApi(prefix_path = "/api/v1/chat", tag = "ApiTags::Chats")]
impl ChatApi {
    /// A page of the caller's conversations, newest activity first, each
    /// with `last_read_seq` and `unread_count`. When more follow, the
    /// `Confab-Next-Cursor` header holds the `cursor` of the next page.
    #[oai(path = "/chats", method = "get")]
    async fn list(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// 1 to 200, default 50.
        limit: Query<Option<u64>>,
        /// From `Confab-Next-Cursor`, to continue a listing.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Listed> {
        let state = state(req)?;
        let cursor = cursor.0.as_deref().map(parse_cursor).transpose()?;
        let page = state
            .chat
            .list(&auth.0.user_id, limit.0, cursor.as_ref())
            .await?;
        let next = page.next.as_ref().map(encode_cursor);
        let link = next.as_ref().map(|c| {
            let limit = limit.0.map(|l| format!("limit={l}&")).unwrap_or_default();
            format!("</api/v1/chat/chats?{limit}cursor={c}>; rel=\"next\"")
        });
        Ok(Listed::Page(Json(page.chats), next, link))
    }

    /// Renames the conversation (any participant) or hands its ownership
    /// on (the owner, to a participant).
    #[oai(path = "/chats/:id", method = "patch")]
    async fn update(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        body: Json<UpdateChatBody>,
    ) -> ApiResult<Json<Conversation>> {
        let state = state(req)?;
        let user = &auth.0.user_id;
        let body = body.0;
        if body.title.is_none() && body.owner_id.is_none() {
            return Err(ChatError::InvalidFrame("give `title` or `owner_id`".into()).into());
        }
        let owner = body.owner_id.map(|t| user_id(t.0)).transpose()?;
        let mut conv = None;
        if let Some(title) = body.title {
            conv = Some(state.chat.rename(user, id.0, &title.0).await?);
        }
        if let Some(owner) = owner {
            conv = Some(state.chat.hand_over(user, id.0, &owner).await?);
        }
        // One of the two ran (checked above).
        Ok(Json(conv.expect("title or owner_id was given")))
    }

    /// Marks the conversation read up to `seq` (as `mark_read`).
    #[oai(path = "/chats/:id/read", method = "post")]
    async fn mark_read(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        body: Json<ReadBody>,
    ) -> ApiResult<NoContent> {
        let state = state(req)?;
        state
            .chat
            .mark_read(&auth.0.user_id, id.0, Seq(body.0.seq))
            .await?;
        Ok(NoContent::Done)
    }

    /// Edits a message (its sender only).
    #[oai(path = "/chats/:id/messages/:message_id", method = "patch")]
    async fn edit(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        message_id: Path<MessageId>,
        body: Json<EditBody>,
    ) -> ApiResult<Json<ChangeAnswer>> {
        let request = ChangeRequest::Edit {
            content: body.0.content.0,
        };
        change(req, &auth, id.0, message_id.0, request).await
    }

    /// Deletes a message (its sender, or the conversation's owner).
    #[oai(path = "/chats/:id/messages/:message_id", method = "delete")]
    async fn delete(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        message_id: Path<MessageId>,
    ) -> ApiResult<Json<ChangeAnswer>> {
        change(req, &auth, id.0, message_id.0, ChangeRequest::Delete).await
    }

    /// Reacts to a message with `emoji` (percent-encoded).
    #[oai(
        path = "/chats/:id/messages/:message_id/reactions/:emoji",
        method = "put"
    )]
    async fn add_reaction(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        message_id: Path<MessageId>,
        emoji: Path<String>,
    ) -> ApiResult<Json<ChangeAnswer>> {
        react(req, &auth, id.0, message_id.0, emoji.0, true).await
    }

    /// Takes back a reaction.
    #[oai(
        path = "/chats/:id/messages/:message_id/reactions/:emoji",
        method = "delete"
    )]
    async fn remove_reaction(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        message_id: Path<MessageId>,
        emoji: Path<String>,
    ) -> ApiResult<Json<ChangeAnswer>> {
        react(req, &auth, id.0, message_id.0, emoji.0, false).await
    }

    /// Creates a conversation; the caller joins as owner.
    #[oai(path = "/chats", method = "post")]
    async fn create(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<CreateChatBody>,
    ) -> ApiResult<Created> {
        let state = state(req)?;
        let body = body.0;
        let conv = state
            .chat
            .create(
                &auth.0.user_id,
                NewChat {
                    title: string_of(body.title),
                    participant_ids: body
                        .participant_ids
                        .into_iter()
                        .map(|t| user_id(t.0))
                        .collect::<Result<_, _>>()?,
                    assistant_id: string_of(body.assistant_id),
                },
            )
            .await?;
        Ok(Created::Chat(Json(conv)))
    }

    /// A conversation and a page of its history (oldest first).
    #[oai(path = "/chats/:id", method = "get")]
    async fn get(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        before_seq: Query<Option<i64>>,
        after_seq: Query<Option<i64>>,
        limit: Query<Option<u64>>,
    ) -> ApiResult<Json<ChatWithHistory>> {
        let state = state(req)?;
        let user = &auth.0.user_id;
        // The conversation (and its `last_seq`) is read before the page, so
        // a client that counts every entry up to `last_seq` as held after
        // reading the page never runs ahead of what the page showed.
        let conversation = state.chat.get(user, id.0).await?;
        let page = Page {
            before: before_seq.0.map(Seq),
            after: after_seq.0.map(Seq),
            limit: limit.0,
        };
        let (messages, has_more) = state.chat.history(user, id.0, page).await?;
        Ok(Json(ChatWithHistory {
            conversation,
            messages,
            has_more,
        }))
    }

    /// Sends a message, broadcast exactly as a WebSocket `send_message`.
    #[oai(path = "/chats/:id/messages", method = "post")]
    async fn send(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        body: Json<SendBody>,
    ) -> ApiResult<Sent> {
        let state = state(req)?;
        let body = body.0;
        let appended = state
            .chat
            .send(
                &auth.0.user_id,
                id.0,
                Outgoing {
                    content: body.content.0,
                    message_type: None,
                    client_msg_id: string_of(body.client_msg_id)
                        .map(ClientMsgId::parse)
                        .transpose()
                        .map_err(|e| ChatError::InvalidFrame(e.to_string()))?,
                    reply_to: body.reply_to,
                    attachment_ids: body.attachment_ids.into_iter().map(|t| t.0).collect(),
                },
            )
            .await?;
        Ok(if appended.duplicate {
            Sent::Duplicate(Json(appended.message))
        } else {
            Sent::Stored(Json(appended.message))
        })
    }

    /// Archives the conversation (owner only).
    #[oai(path = "/chats/:id", method = "delete")]
    async fn archive(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
    ) -> ApiResult<NoContent> {
        state(req)?.chat.archive(&auth.0.user_id, id.0).await?;
        Ok(NoContent::Done)
    }

    /// Adds a participant (any participant may).
    #[oai(path = "/chats/:id/participants", method = "post")]
    async fn add_participant(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        body: Json<AddParticipantBody>,
    ) -> ApiResult<Json<Conversation>> {
        let state = state(req)?;
        let conv = state
            .chat
            .add_participant(&auth.0.user_id, id.0, user_id(body.0.user_id.0)?)
            .await?;
        Ok(Json(conv))
    }

    /// Removes a participant (the owner, or the participant themselves).
    #[oai(path = "/chats/:id/participants/:user_id", method = "delete")]
    async fn remove_participant(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
        user_id: Path<String>,
    ) -> ApiResult<Json<Conversation>> {
        let state = state(req)?;
        let conv = state
            .chat
            .remove_participant(&auth.0.user_id, id.0, self::user_id(user_id.0)?)
            .await?;
        Ok(Json(conv))
    }

    /// The conversation's present participants (a user is present while
    /// any connection of theirs, on any node, is joined to it).
    #[oai(path = "/chats/:id/presence", method = "get")]
    async fn presence(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<ConversationId>,
    ) -> ApiResult<Json<PresenceAnswer>> {
        let users = state(req)?.chat.presence(&auth.0.user_id, id.0).await?;
        Ok(Json(PresenceAnswer {
            conversation_id: id.0,
            users,
        }))
    }

    /// The caller's token usage: the tokens of the assistant answers to
    /// their messages, and how many answers, summed over the answers
    /// recorded at or after `since` (all of them without it).
    #[oai(path = "/usage", method = "get", tag = "ApiTags::Assistants")]
    async fn usage(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// An RFC 3339 timestamp, e.g. `2026-12-01T00:00:00Z` (a `+` of an
        /// offset percent-encoded as `%2B`).
        since: Query<Option<String>>,
    ) -> ApiResult<Json<UsageTotals>> {
        let state = state(req)?;
        let since = since.0.as_deref().map(parse_since).transpose()?;
        let totals = state.chat.usage(&auth.0.user_id, since).await?;
        Ok(Json(totals))
    }

    /// The users among `ids` who ever signed in (any signed-in caller may
    /// ask: names are not secret in a chat), in the order asked, each with
    /// the display name of their token's `name` claim when it had one. An
    /// id nobody signed in as is absent: clients say "has never signed in".
    #[oai(path = "/users", method = "get", tag = "ApiTags::Users")]
    async fn users(
        &self,
        req: &Request,
        _auth: BearerAuth,
        /// 1 to 100 user ids, comma separated.
        ids: Query<Option<String>>,
    ) -> ApiResult<Json<UsersAnswer>> {
        let state = state(req)?;
        let ids = parse_ids(ids.0.as_deref().unwrap_or_default())?;
        let users = state.users.lookup(&ids).await?;
        Ok(Json(UsersAnswer { users }))
    }

    /// Messages containing every word of `q`, each word matched as a
    /// prefix, ignoring case and accents ("cafe" finds "Café"), best match
    /// first, then newest; only from conversations the caller is a
    /// participant of now, never deleted messages, and an edited message by
    /// its current text only. Each result carries the message as history
    /// gives it and `snippet`, an excerpt of its content around the first
    /// match (plain text: render it as text, never as HTML). When more
    /// follow, `next_cursor` continues: an offset into the ranked results
    /// of this same query (messages arriving meanwhile may shift them).
    #[oai(path = "/search", method = "get", tag = "ApiTags::Search")]
    async fn search(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// The words to find: 1 to 200 characters, with at least one letter
        /// or digit; at most 10 words count.
        q: Query<Option<String>>,
        /// Only this conversation (the caller must be a participant).
        conversation_id: Query<Option<ConversationId>>,
        /// 1 to 50, default 20.
        limit: Query<Option<u64>>,
        /// `next_cursor` of the previous page, with the same `q` and
        /// `conversation_id`.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<SearchAnswer>> {
        let found = state(req)?
            .chat
            .search(
                &auth.0.user_id,
                q.0.as_deref().unwrap_or_default(),
                conversation_id.0,
                limit.0,
                cursor.0.as_deref(),
            )
            .await?;
        Ok(Json(SearchAnswer {
            results: found
                .hits
                .into_iter()
                .map(|hit| SearchResult {
                    conversation_id: hit.message.conversation_id,
                    message: hit.message,
                    snippet: hit.snippet,
                })
                .collect(),
            next_cursor: found.next_cursor,
        }))
    }

    /// A single-use ticket, valid 30 s, for opening the event stream with
    /// `EventSource` (`GET /api/v1/chat/events?ticket=...`), which cannot
    /// send an `Authorization` header.
    #[oai(path = "/tickets", method = "post", tag = "ApiTags::Transport")]
    async fn ticket(&self, req: &Request, auth: BearerAuth) -> ApiResult<TicketIssued> {
        let ticket = sse::issue_ticket(&state(req)?.sockets, &auth.0).await?;
        Ok(TicketIssued::Created(Json(TicketBody {
            ticket: ticket.ticket,
            expires_at: ticket.expires_at,
        })))
    }

    /// Client frames for an HTTP-transport connection (the
    /// `connection_id` of its stream's `auth_success`): one frame object
    /// or an array of them, handled in order as if they came on a socket.
    /// Their replies arrive on the event stream. Any node takes the POST.
    #[oai(
        path = "/connections/:connection_id/frames",
        method = "post",
        tag = "ApiTags::Transport"
    )]
    async fn frames(
        &self,
        req: &Request,
        auth: BearerAuth,
        connection_id: Path<ConnectionId>,
        body: Json<serde_json::Value>,
    ) -> ApiResult<Accepted> {
        let state = state(req)?;
        sse::post(&state.sockets, &auth.0.user_id, connection_id.0, body.0).await?;
        Ok(Accepted::Queued)
    }
}

/// `GET /chats/{id}/presence`.
#[derive(Debug, Object)]
pub struct PresenceAnswer {
    pub conversation_id: ConversationId,
    /// Sorted.
    pub users: Vec<UserId>,
}

/// `GET /users`.
#[derive(Debug, Object)]
pub struct UsersAnswer {
    /// In the order asked; ids nobody signed in as are absent.
    pub users: Vec<User>,
}

/// `GET /search`.
#[derive(Debug, Object)]
pub struct SearchAnswer {
    /// Best match first, then newest.
    pub results: Vec<SearchResult>,
    /// The `cursor` of the next page, when more follow.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// One message found.
#[derive(Debug, Object)]
pub struct SearchResult {
    pub conversation_id: ConversationId,
    /// The message as history gives it.
    pub message: Message,
    /// Up to about 160 characters of the message's content around its first
    /// match, with `…` where it was cut: plain text, to render as text.
    pub snippet: String,
}

/// A ticket for the event stream.
#[derive(Debug, Object)]
pub struct TicketBody {
    pub ticket: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(ApiResponse)]
pub enum TicketIssued {
    #[oai(status = 201)]
    Created(Json<TicketBody>),
}

#[derive(ApiResponse)]
pub enum Accepted {
    /// Queued for the connection's session; replies come on its stream.
    #[oai(status = 202)]
    Queued,
}

/// The routes' state, which `http::routes` gives every request.
fn state(req: &Request) -> Result<&Arc<State>, ApiError> {
    req.data::<Arc<State>>()
        .ok_or_else(|| ChatError::Internal("state missing from request".into()).into())
}

/// A change through REST: the same use case as a socket's frame.
async fn change(
    req: &Request,
    auth: &BearerAuth,
    conv: ConversationId,
    message: MessageId,
    request: ChangeRequest,
) -> ApiResult<Json<ChangeAnswer>> {
    let changed = state(req)?
        .chat
        .change(&auth.0.user_id, conv, message, request)
        .await?;
    Ok(Json(ChangeAnswer {
        seq: changed.seq(),
        message: changed.message().clone(),
    }))
}

/// A reaction added or taken back through REST; the emoji comes from the
/// path (percent-decoded) and is checked here.
async fn react(
    req: &Request,
    auth: &BearerAuth,
    conv: ConversationId,
    message: MessageId,
    emoji: String,
    add: bool,
) -> ApiResult<Json<ChangeAnswer>> {
    let emoji = Emoji::parse(emoji).map_err(|e| ChatError::InvalidFrame(e.to_string()))?;
    change(
        req,
        auth,
        conv,
        message,
        ChangeRequest::React { emoji, add },
    )
    .await
}

/// A listing cursor as clients hold it: opaque text.
fn encode_cursor(c: &ListCursor) -> String {
    format!(
        "{}.{}.{}",
        c.as_of.timestamp_millis(),
        c.activity.timestamp_millis(),
        c.id.0.simple()
    )
}

fn parse_cursor(text: &str) -> Result<ListCursor, ApiError> {
    let bad = || {
        ApiError::from(ChatError::InvalidFrame(
            "not a cursor this server gave".into(),
        ))
    };
    let mut parts = text.split('.');
    let mut millis = || {
        parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .and_then(chrono::DateTime::from_timestamp_millis)
    };
    let (Some(as_of), Some(activity)) = (millis(), millis()) else {
        return Err(bad());
    };
    let id = parts
        .next()
        .and_then(|p| uuid::Uuid::try_parse(p).ok())
        .ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(ListCursor {
        as_of,
        activity,
        id: ConversationId(id),
    })
}

/// `since` of a usage request: an RFC 3339 timestamp.
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|at| at.with_timezone(&chrono::Utc))
        .map_err(|e| {
            ChatError::InvalidFrame(format!("`since` is not an RFC 3339 timestamp: {e}")).into()
        })
}

/// The `ids` of a users lookup: 1 to `MAX_LOOKUP` user ids, comma
/// separated, each a valid one.
fn parse_ids(text: &str) -> Result<Vec<UserId>, ApiError> {
    let invalid = |why: String| ApiError::from(ChatError::InvalidFrame(why));
    if text.is_empty() || text.split(',').count() > MAX_LOOKUP {
        return Err(invalid(format!(
            "give 1 to {MAX_LOOKUP} user ids, comma separated"
        )));
    }
    text.split(',')
        .map(|id| UserId::parse(id).map_err(|e| invalid(format!("`ids`: {e}"))))
        .collect()
}

/// A user id given in a request, checked.
fn user_id(text: String) -> Result<UserId, ApiError> {
    UserId::parse(text).map_err(|e| ChatError::InvalidFrame(e.to_string()).into())
}
