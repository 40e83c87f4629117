//! `ImClient`: the client core behind one object, each command an async method, events to a
//! listener the app subscribes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdk_core::sqlite::SqliteStore;
use sdk_core::transport::fallback::{FallbackConnector, FallbackOptions};
use sdk_core::transport::routes::{Endpoints, standard_routes};
use sdk_core::{
    ClientConfig, ClientHandle, Connector, DriverOptions, HttpTunnelConnector, QuicConnector,
    ServerAddress, TcpConnector, TlsConnector, TlsTrust,
};

use crate::error::ImError;
use crate::events::{ClientListener, EventSlot, EventSubscription};
use crate::types::{ConnectionState, TEXT_CONTENT_TYPE};
use crate::types::{
    Conversation, ConversationPage, GroupInfo, GroupMembersChange, GroupMembersPage,
    HistoryDirection, HistoryPage, Message, Platform, PushPreview, PushService, ReadMarker, Recall,
    Recipient, conversations, messages,
};

/// How the client reaches the server.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Transport {
    /// Plain TCP to `server` (the server's port 8080). Only on trusted networks: the token
    /// crosses in clear.
    Tcp,
    /// TLS over TCP to `server` (port 443 in production).
    Tls,
    /// QUIC to `server` (UDP, the TLS port).
    Quic,
    /// The HTTP tunnel over plain HTTP to `server` (networks that pass only HTTP).
    Http,
    /// The HTTP tunnel over HTTPS to `server`.
    Https,
    /// Race the standard routes best first (QUIC, TLS, TLS through the proxy, the HTTPS
    /// tunnel, then the clear ones allowed), remembering per network what worked (SPEC §8.5).
    /// `server`'s port is the TLS (and QUIC) port.
    Auto {
        /// The server's plain port (8080), for the plain-HTTP tunnel and plain TCP.
        plain_port: Option<u16>,
        /// The device's HTTP proxy, `host:port`.
        proxy: Option<String>,
        /// Also try the routes that carry the token in clear.
        allow_plain: bool,
    },
}

/// Everything a client needs to start.
#[derive(Clone, Debug, uniffi::Record)]
pub struct ClientOptions {
    /// The server, `host:port` (`[v6-address]:port` for an IPv6 literal).
    pub server: String,
    /// The token (from the app's own server, or `im-server token`).
    pub token: String,
    /// The logged-in user: the token's subject.
    pub user_id: String,
    /// This device (each device of a user keeps its own session and cursor).
    pub device_id: String,
    /// A directory of the app's own where the client keeps its database (created if
    /// missing; one file per user and device).
    pub data_dir: String,
    /// How to reach the server (default: plain TCP).
    #[uniffi(default = None)]
    pub transport: Option<Transport>,
    /// A PEM CA certificate to trust instead of the public Web PKI (a private deployment, a
    /// development server). TLS, QUIC and HTTPS only.
    #[uniffi(default = None)]
    pub ca_cert_pem: Option<String>,
    /// The platform reported to the server (default: desktop).
    #[uniffi(default = None)]
    pub platform: Option<Platform>,
    /// Free text reported to the server, e.g. `myapp/2.3.1`.
    #[uniffi(default = None)]
    pub client_version: Option<String>,
    /// Events left unread before the client stops reading from the server (default 4096).
    /// A listener slower than the server then holds the server back instead of the client
    /// buffering without bound.
    #[uniffi(default = None)]
    pub event_capacity: Option<u32>,
}

/// The connection state and how far the inbox is applied.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ClientStatus {
    /// The connection state.
    pub state: ConnectionState,
    /// The inbox cursor: every inbox entry up to it is applied locally.
    pub inbox_cursor: u64,
}

/// Gives the client a fresh token when the server says the current one expired. Called on a
/// background thread; may block (e.g. on a request to the app's own server).
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    /// A fresh token, or `None` to give up (the client then stops with `TokenExpired` until
    /// `set_token`).
    fn fresh_token(&self) -> Option<String>;
}

struct ProvidedTokens(Arc<dyn TokenProvider>);

impl sdk_core::TokenRefresher for ProvidedTokens {
    fn refresh(&self) -> Option<String> {
        // An exception in the app's code must not take the client's thread down with it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.fresh_token()))
            .unwrap_or_else(|_| {
                tracing::warn!("the app's token provider failed; no fresh token");
                None
            })
    }
}

/// A running client: one user on one device. Create it with `ImClient(options)`; it connects at
/// once and keeps reconnecting on its own. Subscribe a listener to see what happens.
#[derive(uniffi::Object)]
pub struct ImClient {
    handle: ClientHandle,
    events: Arc<EventSlot>,
    /// The route racer, when the transport is `Auto` (told about network changes).
    fallback: Option<Arc<FallbackConnector>>,
}

/// The database file of `user` on `device` in `dir`: names made safe for any file system.
fn database_path(dir: &Path, user: &str, device: &str) -> PathBuf {
    let safe = |name: &str| -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_string()
                } else {
                    format!("%{:02X}", u32::from(c))
                }
            })
            .collect()
    };
    dir.join(format!("{}.{}.sqlite3", safe(user), safe(device)))
}

fn trust(ca_cert_pem: Option<&str>) -> Result<TlsTrust, ImError> {
    match ca_cert_pem {
        None => Ok(TlsTrust::default()),
        Some(pem) => TlsTrust::pinned_ca_pem(pem.as_bytes())
            .map_err(|e| ImError::invalid(format!("ca_cert_pem: {e}"))),
    }
}

fn address(text: &str, what: &str) -> Result<ServerAddress, ImError> {
    text.parse()
        .map_err(|e| ImError::invalid(format!("{what} {text:?}: {e}")))
}

type Connectors = (Arc<dyn Connector>, Option<Arc<FallbackConnector>>);

fn connector(
    server: &ServerAddress,
    transport: &Transport,
    ca_cert_pem: Option<&str>,
) -> Result<Connectors, ImError> {
    let tls_error = |e: sdk_core::TlsTrustError| ImError::invalid(format!("TLS: {e}"));
    let chosen: Arc<dyn Connector> = match transport {
        Transport::Tcp => Arc::new(TcpConnector),
        Transport::Tls => Arc::new(TlsConnector::new(&trust(ca_cert_pem)?).map_err(tls_error)?),
        Transport::Quic => Arc::new(QuicConnector::new(&trust(ca_cert_pem)?).map_err(tls_error)?),
        Transport::Http => Arc::new(HttpTunnelConnector::direct(Arc::new(TcpConnector))),
        Transport::Https => Arc::new(HttpTunnelConnector::direct(Arc::new(
            TlsConnector::new(&trust(ca_cert_pem)?).map_err(tls_error)?,
        ))),
        Transport::Auto {
            plain_port,
            proxy,
            allow_plain,
        } => {
            let endpoints = Endpoints {
                host: server.host.clone(),
                tls_port: server.port,
                plain_port: *plain_port,
                proxy: proxy.as_deref().map(|p| address(p, "proxy")).transpose()?,
                trust: trust(ca_cert_pem)?,
                allow_plain: *allow_plain,
            };
            let routes = standard_routes(&endpoints).map_err(tls_error)?;
            let fallback = Arc::new(FallbackConnector::new(routes, FallbackOptions::default()));
            return Ok((fallback.clone(), Some(fallback)));
        }
    };
    Ok((chosen, None))
}

#[uniffi::export]
impl ImClient {
    /// Starts a client: opens (or creates) its database in `options.data_dir` and connects.
    /// `token_provider` is asked for a fresh token when the current one expires.
    #[uniffi::constructor(default(token_provider = None))]
    pub fn new(
        options: ClientOptions,
        token_provider: Option<Arc<dyn TokenProvider>>,
    ) -> Result<Arc<ImClient>, ImError> {
        if options.user_id.is_empty() || options.device_id.is_empty() {
            return Err(ImError::invalid("user_id and device_id must not be empty"));
        }
        let server = address(&options.server, "server")?;
        let transport = options.transport.clone().unwrap_or(Transport::Tcp);
        let (connector, fallback) = connector(&server, &transport, options.ca_cert_pem.as_deref())?;

        let dir = PathBuf::from(&options.data_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ImError::invalid(format!("data_dir {:?}: {e}", options.data_dir)))?;
        let store = SqliteStore::open(&database_path(&dir, &options.user_id, &options.device_id))
            .map_err(|e| ImError::Store {
            reason: e.to_string(),
        })?;

        let mut config = ClientConfig::new(options.user_id, options.device_id);
        if let Some(platform) = options.platform {
            config.platform = platform.into();
        }
        if let Some(version) = options.client_version {
            config.client_version = version;
        }
        let mut driver = DriverOptions {
            connector,
            ..DriverOptions::default()
        };
        if let Some(capacity) = options.event_capacity {
            driver.event_capacity = capacity.max(1) as usize;
        }
        driver.token_refresher = token_provider.map(|provider| {
            Arc::new(ProvidedTokens(provider)) as Arc<dyn sdk_core::TokenRefresher>
        });
        let (handle, events) =
            sdk_core::driver::start_with_own_runtime(server, options.token, config, store, driver)?;
        Ok(Arc::new(ImClient {
            handle,
            events: Arc::new(EventSlot::new(events)),
            fallback,
        }))
    }

    /// Delivers every event, in order, to `listener` on a thread of the client's, until the
    /// returned subscription is cancelled (or the client stops). One subscription at a time;
    /// events that happen while there is none wait (up to `event_capacity`, then the client
    /// stops reading from the server until they are taken).
    pub fn subscribe(
        &self,
        listener: Arc<dyn ClientListener>,
    ) -> Result<Arc<EventSubscription>, ImError> {
        EventSubscription::start(self.events.clone(), listener)
    }

    /// Queues a message and returns at once with it in state `Sending`; it is retransmitted
    /// with the same id until the server acknowledges it (`MessageUpdated` then says `Sent`).
    pub async fn send(
        &self,
        recipient: Recipient,
        content_type: u32,
        content: Vec<u8>,
    ) -> Result<Message, ImError> {
        Ok(self
            .handle
            .send(recipient.into(), content_type, content)
            .await?
            .into())
    }

    /// Queues a text message (content type 0).
    pub async fn send_text(&self, recipient: Recipient, text: String) -> Result<Message, ImError> {
        self.send(recipient, TEXT_CONTENT_TYPE, text.into_bytes())
            .await
    }

    /// Puts a `Failed` message back into the outbox; false if there is no such message.
    pub async fn retry(&self, local_id: u64) -> Result<bool, ImError> {
        Ok(self.handle.retry(local_id).await?)
    }

    /// Marks a conversation read up to `seq` (locally at once, then on the server); the
    /// server's marker and unread count.
    pub async fn mark_read(
        &self,
        conversation_id: String,
        seq: u64,
    ) -> Result<ReadMarker, ImError> {
        Ok(self.handle.mark_read(&conversation_id, seq).await?.into())
    }

    /// Says the user is (or stopped) typing; dropped while offline.
    pub async fn typing(&self, conversation_id: String, typing: bool) -> Result<(), ImError> {
        Ok(self.handle.typing(&conversation_id, typing).await?)
    }

    /// Recalls one of the user's own messages: every participant's copy becomes a recalled
    /// placeholder.
    pub async fn recall(&self, conversation_id: String, seq: u64) -> Result<Recall, ImError> {
        Ok(self.handle.recall(&conversation_id, seq).await?.into())
    }

    /// Hides messages for this user on all of their devices; how many were newly hidden.
    pub async fn delete_for_me(
        &self,
        conversation_id: String,
        seqs: Vec<u64>,
    ) -> Result<u64, ImError> {
        Ok(self.handle.delete_for_me(&conversation_id, seqs).await?)
    }

    /// Locally stored messages below `before_seq` (0 = from the newest), newest first.
    pub async fn local_history(
        &self,
        conversation_id: String,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<Message>, ImError> {
        let list = self
            .handle
            .local_history(&conversation_id, before_seq, limit)
            .await?;
        Ok(messages(list))
    }

    /// History below `before_seq` (0 = from the newest), newest first: local first, paging
    /// the server (and storing what it returns) when the local copy has a gap or too few.
    pub async fn history(
        &self,
        conversation_id: String,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<Message>, ImError> {
        let list = self
            .handle
            .history(&conversation_id, before_seq, limit)
            .await?;
        Ok(messages(list))
    }

    /// One page of history straight from the server (also stored locally).
    pub async fn fetch_history(
        &self,
        conversation_id: String,
        anchor_seq: u64,
        direction: HistoryDirection,
        limit: u32,
    ) -> Result<HistoryPage, ImError> {
        Ok(self
            .handle
            .fetch_history(&conversation_id, anchor_seq, direction.into(), limit)
            .await?
            .into())
    }

    /// Locally stored conversations, most recent first, with their unread counts.
    pub async fn conversations(&self) -> Result<Vec<Conversation>, ImError> {
        Ok(conversations(self.handle.conversations().await?))
    }

    /// One page of the conversation list from the server (the local list is updated from it);
    /// `cursor` is empty for the first page.
    pub async fn fetch_conversations(
        &self,
        limit: u32,
        cursor: String,
    ) -> Result<ConversationPage, ImError> {
        Ok(self
            .handle
            .fetch_conversations(limit, &cursor)
            .await?
            .into())
    }

    /// Creates a group owned by this user. A non-empty `client_request_id` makes a retry
    /// return the same group instead of a second one.
    pub async fn create_group(
        &self,
        name: String,
        members: Vec<String>,
        open: bool,
        client_request_id: String,
    ) -> Result<GroupInfo, ImError> {
        Ok(self
            .handle
            .create_group(&name, members, open, &client_request_id)
            .await?
            .into())
    }

    /// Creates a broadcast channel owned by this user: only the owner posts and adds
    /// members; with `open`, anyone may join. Retried safely as `create_group`.
    pub async fn create_channel(
        &self,
        name: String,
        members: Vec<String>,
        open: bool,
        client_request_id: String,
    ) -> Result<GroupInfo, ImError> {
        Ok(self
            .handle
            .create_channel(&name, members, open, &client_request_id)
            .await?
            .into())
    }

    /// Adds members to a group; the change lists those who were not members before.
    pub async fn add_group_members(
        &self,
        group_id: String,
        members: Vec<String>,
    ) -> Result<GroupMembersChange, ImError> {
        Ok(self
            .handle
            .add_group_members(&group_id, members)
            .await?
            .into())
    }

    /// Removes members from a group (owner only); the change lists those removed.
    pub async fn remove_group_members(
        &self,
        group_id: String,
        members: Vec<String>,
    ) -> Result<GroupMembersChange, ImError> {
        Ok(self
            .handle
            .remove_group_members(&group_id, members)
            .await?
            .into())
    }

    /// Registers this device's push token (replacing the one it had), so the server wakes the
    /// app through `service` when messages arrive while it has no connection.
    pub async fn register_push_token(
        &self,
        service: PushService,
        token: String,
        preview: PushPreview,
    ) -> Result<(), ImError> {
        Ok(self
            .handle
            .register_push_token(service.into(), &token, preview.into())
            .await?)
    }

    /// Removes this device's push token (at logout).
    pub async fn unregister_push_token(&self) -> Result<(), ImError> {
        Ok(self.handle.unregister_push_token().await?)
    }

    /// Mutes (or unmutes) a conversation's push notifications on all of the user's devices.
    pub async fn mute(&self, conversation_id: String, muted: bool) -> Result<(), ImError> {
        Ok(self.handle.mute(&conversation_id, muted).await?)
    }

    /// Joins an open group.
    pub async fn join_group(&self, group_id: String) -> Result<GroupInfo, ImError> {
        Ok(self.handle.join_group(&group_id).await?.into())
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group_id: String) -> Result<(), ImError> {
        Ok(self.handle.leave_group(&group_id).await?)
    }

    /// One page of a group's members (ordered by user id) with the group's info; `limit` 0 =
    /// the server's default, `cursor` empty for the first page.
    pub async fn group_members(
        &self,
        group_id: String,
        limit: u32,
        cursor: String,
    ) -> Result<GroupMembersPage, ImError> {
        Ok(self
            .handle
            .group_members(&group_id, limit, &cursor)
            .await?
            .into())
    }

    /// A group's current info (members only).
    pub async fn group_info(&self, group_id: String) -> Result<GroupInfo, ImError> {
        Ok(self.handle.group_info(&group_id).await?.into())
    }

    /// The connection state and the inbox cursor.
    pub async fn status(&self) -> Result<ClientStatus, ImError> {
        let (state, inbox_cursor) = self.handle.state().await?;
        Ok(ClientStatus {
            state: state.into(),
            inbox_cursor,
        })
    }

    /// Replaces the token (after the app refreshed it); a client stopped for its token
    /// reconnects.
    pub async fn set_token(&self, token: String) -> Result<(), ImError> {
        Ok(self.handle.set_token(token).await?)
    }

    /// The device's network changed: reconnect now if waiting. `network_id` (a Wi-Fi network's
    /// name, "cellular") lets the `Auto` transport start with what worked there last time.
    #[uniffi::method(default(network_id = None))]
    pub async fn network_changed(&self, network_id: Option<String>) -> Result<(), ImError> {
        if let (Some(fallback), Some(id)) = (&self.fallback, network_id) {
            fallback.set_network(id);
        }
        Ok(self.handle.network_changed().await?)
    }

    /// The app moved to the background (true) or the foreground (false).
    pub async fn set_background(&self, background: bool) -> Result<(), ImError> {
        Ok(self.handle.set_background(background).await?)
    }

    /// Says goodbye to the server and stops the client; later calls fail with `Closed`.
    pub async fn shutdown(&self) -> Result<(), ImError> {
        match self.handle.shutdown().await {
            Ok(()) | Err(sdk_core::DriverError::Closed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The conversation id of the direct chat between two users (`d:` and the two ids in order).
#[uniffi::export]
pub fn direct_conversation_id(user_a: String, user_b: String) -> String {
    im_protocol::ids::direct_conversation_id(&user_a, &user_b)
}

/// The conversation id of a group (`g:` and the group id).
#[uniffi::export]
pub fn group_conversation_id(group_id: String) -> String {
    im_protocol::ids::group_conversation_id(&group_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_safe_for_any_file_system() {
        let path = database_path(Path::new("/data"), "alice/../x", "phone 1");
        assert_eq!(
            path,
            Path::new("/data/alice%2F%2E%2E%2Fx.phone%201.sqlite3")
        );
    }

    #[test]
    fn a_malformed_server_address_is_an_invalid_argument() {
        let error = address("no-port", "server").unwrap_err();
        assert!(
            matches!(error, ImError::InvalidArgument { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn a_certificate_that_is_not_pem_is_an_invalid_argument() {
        let error = trust(Some("not a certificate")).unwrap_err();
        assert!(
            matches!(error, ImError::InvalidArgument { .. }),
            "{error:?}"
        );
    }
}
