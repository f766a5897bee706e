//! One QUIC endpoint per node: it dials peers and accepts them, and knows
//! each peer by the name in its verified certificate.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use rustls::pki_types::CertificateDer;

use crate::TransportError;
use crate::tls::{Identity, dns_names};

/// A connected, authenticated peer.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's node name, from its certificate (checked by the handshake).
    pub name: String,
    /// The wire version both sides chose (an entry of [`crate::WIRE_VERSIONS`]).
    pub version: String,
    /// The connection: streams are the protocol's business.
    pub connection: quinn::Connection,
}

/// A node's endpoint.
#[derive(Debug)]
pub struct Transport {
    endpoint: quinn::Endpoint,
    client: RwLock<Dialer>,
}

/// What dialing needs, swapped as a whole on reload.
#[derive(Debug)]
struct Dialer {
    identity: Arc<Identity>,
    named: quinn::ClientConfig,
    any: quinn::ClientConfig,
}

impl Dialer {
    fn new(identity: Identity) -> Result<Self, TransportError> {
        Ok(Dialer {
            named: identity.client_config(false)?,
            any: identity.client_config(true)?,
            identity: Arc::new(identity),
        })
    }
}

fn version(connection: &quinn::Connection) -> String {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .unwrap_or_default()
}

/// The node name in a connection's verified peer certificate.
fn peer_name(connection: &quinn::Connection) -> Option<String> {
    connection
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(dns_names))
        .and_then(|names| names.into_iter().next())
}

impl Transport {
    /// Listens on `addr` (UDP) as `identity`. Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr, identity: Identity) -> Result<Self, TransportError> {
        let server = identity.server_config()?;
        let endpoint = quinn::Endpoint::server(server, addr)?;
        Ok(Transport {
            endpoint,
            client: RwLock::new(Dialer::new(identity)?),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// This node's name.
    pub fn name(&self) -> String {
        self.client
            .read()
            .map(|c| c.identity.name().to_owned())
            .unwrap_or_default()
    }

    /// Swaps in a new identity (renewed certificate, rotated CA) without a
    /// restart: new connections use it; open ones keep theirs.
    pub fn reload(&self, identity: Identity) -> Result<(), TransportError> {
        let server = identity.server_config()?;
        let dialer = Dialer::new(identity)?;
        self.endpoint.set_server_config(Some(server));
        if let Ok(mut current) = self.client.write() {
            *current = dialer;
        }
        Ok(())
    }

    /// Dials node `name` at `addr`. The peer must present a certificate for
    /// `name` from the cluster CA, and accept ours.
    pub async fn connect(&self, addr: SocketAddr, name: &str) -> Result<Peer, TransportError> {
        let config = self.dialer(|d| d.named.clone())?;
        let connection = self.endpoint.connect_with(config, addr, name)?.await?;
        Ok(Peer {
            name: name.to_owned(),
            version: version(&connection),
            connection,
        })
    }

    /// Dials whatever node answers at `addr` (a seed, a DNS answer): its
    /// certificate must come from the cluster CA, and names it.
    pub async fn dial(&self, addr: SocketAddr) -> Result<Peer, TransportError> {
        let config = self.dialer(|d| d.any.clone())?;
        // This dialer checks the name the certificate carries, not this one.
        let connection = self
            .endpoint
            .connect_with(config, addr, "baton-node")?
            .await?;
        let name = peer_name(&connection).ok_or_else(|| {
            TransportError::Certificate("the peer's certificate names no node".into())
        })?;
        Ok(Peer {
            name,
            version: version(&connection),
            connection,
        })
    }

    fn dialer<T>(&self, pick: impl FnOnce(&Dialer) -> T) -> Result<T, TransportError> {
        self.client
            .read()
            .map(|d| pick(&d))
            .map_err(|_| TransportError::Certificate("identity lock poisoned".into()))
    }

    /// The next peer that connected and passed the handshake; `None` once
    /// the endpoint is closed. Handshakes that fail (no certificate, another
    /// CA, no common version) never come out of here: the peer could not
    /// send a single stream byte.
    pub async fn accept(&self) -> Option<Peer> {
        loop {
            let incoming = self.endpoint.accept().await?;
            let Ok(connection) = incoming.await else {
                continue;
            };
            let Some(name) = peer_name(&connection) else {
                connection.close(1u32.into(), b"no node name in the certificate");
                continue;
            };
            return Some(Peer {
                name,
                version: version(&connection),
                connection,
            });
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
    }
}
